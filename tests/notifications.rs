//! `/v1/notifications`: a projection of task, account and login events, with
//! read/unread and deletion as commands to the caller's inbox.

mod common;

use common::{
    assert_read_models_equal_rebuild, hold_projection, release_projection, TestApp, TestUser,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// GET `path` as `user` (no consistency token, no retry): status, headers, body.
async fn get(
    app: &TestApp,
    user: &TestUser,
    path: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = app.send(Method::GET, path, user, None).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// The caller's notifications, newest first, read right away.
async fn list(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let (status, _, body) = get(app, user, "/v1/notifications").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

fn types(notifications: &[Value]) -> Vec<&str> {
    notifications
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect()
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> i64 {
    headers[name].to_str().unwrap().parse().unwrap()
}

async fn unread(app: &TestApp, user: &TestUser) -> i64 {
    let (status, _, body) = get(app, user, "/v1/notifications/unread/count").await;
    assert_eq!(status, StatusCode::OK);
    body["count"].as_i64().unwrap()
}

async fn expect_status(response: reqwest::Response, status: StatusCode, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    response.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn every_listed_action_notifies_its_user_and_the_next_query_sees_it() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.com").await;
    let first = list(&app, &user).await;
    assert_eq!(
        types(&first),
        ["SIGNUP"],
        "registration alone is a signup, not a login"
    );

    let user = app.login("ada@example.com").await;
    assert_eq!(types(&list(&app, &user).await)[0], "LOGIN");

    let profile = app
        .send(
            Method::PUT,
            "/v1/user/profile",
            &user,
            Some(json!({"name": "Ada"})),
        )
        .await;
    expect_status(profile, StatusCode::OK, "profile").await;
    assert_eq!(types(&list(&app, &user).await)[0], "PROFILE_UPDATED");

    // With the command's token, as a client behind a load balancer would.
    let created = app
        .send(
            Method::POST,
            "/v1/tasks",
            &user,
            Some(json!({"title": "Write it"})),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let token = created.headers()["x-consistency-token"].clone();
    let task: Value = created.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap().to_string();
    let listed: Vec<Value> = app
        .client
        .get(app.url("/v1/notifications"))
        .bearer_auth(&user.token)
        .header("x-consistency-token", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["type"], "TASK_CREATED");
    assert_eq!(listed[0]["task_id"], task_id.as_str());
    assert_eq!(listed[0]["message"], "Task \"Write it\" was created.");
    assert_eq!(listed[0]["is_read"], false);

    let steps: [(Method, String, Option<Value>, &str); 4] = [
        (
            Method::PATCH,
            format!("/v1/tasks/{task_id}"),
            Some(json!({"title": "Write it well"})),
            "TASK_UPDATED",
        ),
        (
            Method::PATCH,
            format!("/v1/tasks/{task_id}/complete"),
            Some(json!({"completed": true})),
            "TASK_COMPLETED",
        ),
        (
            Method::PATCH,
            format!("/v1/tasks/{task_id}/complete"),
            Some(json!({"completed": false})),
            "TASK_PENDING",
        ),
        (
            Method::DELETE,
            format!("/v1/tasks/{task_id}"),
            None,
            "TASK_DELETED",
        ),
    ];
    for (method, path, body, expected) in steps {
        let response = app.send(method, &path, &user, body).await;
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let newest = list(&app, &user).await;
        assert_eq!(newest[0]["type"], expected, "right after {path}");
        assert_eq!(newest[0]["task_id"], task_id.as_str());
    }
    let deleted = &list(&app, &user).await[0];
    assert_eq!(deleted["message"], "Task \"Write it well\" was deleted.");

    // Log out one session and read with another one, at once.
    let other = app.login("ada@example.com").await;
    let logout = app.send(Method::POST, "/v1/auth/logout", &user, None).await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let (status, headers, body) = get(&app, &other, "/v1/notifications?limit=100").await;
    assert_eq!(status, StatusCode::OK);
    let all = body.as_array().unwrap();
    assert_eq!(
        types(all),
        [
            "LOGOUT",
            "LOGIN",
            "TASK_DELETED",
            "TASK_PENDING",
            "TASK_COMPLETED",
            "TASK_UPDATED",
            "TASK_CREATED",
            "PROFILE_UPDATED",
            "LOGIN",
            "SIGNUP"
        ]
    );
    assert_eq!(header(&headers, "x-total-count"), 10);
    assert_eq!(header(&headers, "x-unread-count"), 10);

    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

#[tokio::test]
async fn another_users_notifications_answer_404_and_are_never_listed_or_counted() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    app.create_task(&alice, "Private plans").await;
    let bob = app.register("bob@example.com").await;
    let theirs = list(&app, &alice).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/notifications/{theirs}");

    let (status, _, body) = get(&app, &bob, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let put = app
        .send(Method::PUT, &path, &bob, Some(json!({"is_read": true})))
        .await;
    expect_status(put, StatusCode::NOT_FOUND, "PUT another's").await;
    let delete = app.send(Method::DELETE, &path, &bob, None).await;
    expect_status(delete, StatusCode::NOT_FOUND, "DELETE another's").await;
    // A bulk delete deletes only the caller's own and says nothing of the rest.
    let bulk = app
        .send(
            Method::DELETE,
            &format!("/v1/notifications?ids={theirs}"),
            &bob,
            None,
        )
        .await;
    expect_status(bulk, StatusCode::NO_CONTENT, "bulk delete of another's").await;
    let marked: Value = app
        .send_json(Method::PUT, "/v1/notifications/mark-all-read", &bob, None)
        .await;
    assert_eq!(marked, json!({"updated": 1}), "bob's own signup only");

    let (_, headers, body) = get(&app, &bob, "/v1/notifications").await;
    assert_eq!(types(body.as_array().unwrap()), ["SIGNUP"]);
    assert_eq!(header(&headers, "x-unread-count"), 0);
    let (status, _, mine) = get(&app, &alice, &path).await;
    assert_eq!(status, StatusCode::OK, "alice's notification is untouched");
    assert_eq!(mine["is_read"], false);
    assert_eq!(unread(&app, &alice).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn bad_pages_sorts_ids_and_bodies_answer_422() {
    let app = TestApp::spawn().await;
    let user = app.register("val@example.com").await;
    let own = list(&app, &user).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let hundred_and_one = vec![Uuid::new_v4().to_string(); 101].join(",");
    for path in [
        "/v1/notifications?limit=0".to_string(),
        "/v1/notifications?limit=101".to_string(),
        "/v1/notifications?offset=-1".to_string(),
        "/v1/notifications?sort=sideways".to_string(),
        "/v1/notifications?unread_only=maybe".to_string(),
        "/v1/notifications/not-a-uuid".to_string(),
    ] {
        let (status, _, body) = get(&app, &user, &path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{path}");
    }
    for path in [
        format!("/v1/notifications?ids={hundred_and_one}"),
        format!("/v1/notifications?ids={own},nope"),
        "/v1/notifications?ids=".to_string(),
        "/v1/notifications".to_string(),
    ] {
        let response = app.send(Method::DELETE, &path, &user, None).await;
        let body = expect_status(response, StatusCode::UNPROCESSABLE_ENTITY, &path).await;
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    }
    for body in [
        json!({}),
        json!({"is_read": "yes"}),
        json!({"is_read": true, "x": 1}),
    ] {
        let response = app
            .send(
                Method::PUT,
                &format!("/v1/notifications/{own}"),
                &user,
                Some(body.clone()),
            )
            .await;
        expect_status(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            &body.to_string(),
        )
        .await;
    }
    // Exactly 100 ids is fine, and nothing was deleted by the refusals.
    let hundred = vec![Uuid::new_v4().to_string(); 100].join(",");
    let response = app
        .send(
            Method::DELETE,
            &format!("/v1/notifications?ids={hundred}"),
            &user,
            None,
        )
        .await;
    expect_status(response, StatusCode::NO_CONTENT, "100 ids").await;
    assert_eq!(list(&app, &user).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn read_unread_mark_all_read_and_deletes_are_seen_by_the_next_query() {
    let app = TestApp::spawn().await;
    let user = app.register("inbox@example.com").await;
    for title in ["one", "two", "three"] {
        app.create_task(&user, title).await;
    }
    let all = list(&app, &user).await;
    assert_eq!(all.len(), 4);
    let ids: Vec<String> = all
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();

    let read: Value = app
        .send_json(
            Method::PUT,
            &format!("/v1/notifications/{}", ids[0]),
            &user,
            Some(json!({"is_read": true})),
        )
        .await;
    assert_eq!(read["is_read"], true);
    assert!(read["read_at"].is_string());
    assert_eq!(unread(&app, &user).await, 3);
    let (_, headers, body) = get(&app, &user, "/v1/notifications?unread_only=true").await;
    assert_eq!(body.as_array().unwrap().len(), 3);
    assert_eq!(header(&headers, "x-total-count"), 3);
    assert_eq!(header(&headers, "x-unread-count"), 3);
    let (_, _, got) = get(&app, &user, &format!("/v1/notifications/{}", ids[0])).await;
    assert_eq!(got["is_read"], true);
    assert_eq!(got["read_at"], read["read_at"]);

    let unread_again: Value = app
        .send_json(
            Method::PUT,
            &format!("/v1/notifications/{}", ids[0]),
            &user,
            Some(json!({"is_read": false})),
        )
        .await;
    assert_eq!(unread_again["is_read"], false);
    assert_eq!(unread_again["read_at"], Value::Null);
    assert_eq!(unread(&app, &user).await, 4);

    let marked: Value = app
        .send_json(Method::PUT, "/v1/notifications/mark-all-read", &user, None)
        .await;
    assert_eq!(marked, json!({"updated": 4}));
    assert_eq!(unread(&app, &user).await, 0);
    let (_, headers, _) = get(&app, &user, "/v1/notifications").await;
    assert_eq!(header(&headers, "x-unread-count"), 0);
    assert_eq!(header(&headers, "x-total-count"), 4);
    let again: Value = app
        .send_json(Method::PUT, "/v1/notifications/mark-all-read", &user, None)
        .await;
    assert_eq!(again, json!({"updated": 0}));

    let (_, _, oldest_first) =
        get(&app, &user, "/v1/notifications?sort=asc&limit=2&offset=0").await;
    assert_eq!(
        types(oldest_first.as_array().unwrap()),
        ["SIGNUP", "TASK_CREATED"]
    );

    let bulk = app
        .send(
            Method::DELETE,
            &format!("/v1/notifications?ids={},{}", ids[1], ids[2]),
            &user,
            None,
        )
        .await;
    expect_status(bulk, StatusCode::NO_CONTENT, "bulk delete").await;
    let (_, headers, _) = get(&app, &user, "/v1/notifications").await;
    assert_eq!(header(&headers, "x-total-count"), 2);
    let single = app
        .send(
            Method::DELETE,
            &format!("/v1/notifications/{}", ids[0]),
            &user,
            None,
        )
        .await;
    expect_status(single, StatusCode::NO_CONTENT, "delete").await;
    let (status, _, _) = get(&app, &user, &format!("/v1/notifications/{}", ids[0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let left = list(&app, &user).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], ids[3].as_str());

    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

/// Holds the `notifications` projection (its batches take this lock) while
/// `action` runs, then reads the caller's newest notification with `reader`,
/// releasing the projection only after the read has had every chance to
/// answer from the stale read model.
async fn newest_after_lagging(
    app: &TestApp,
    reader: &TestUser,
    action: impl std::future::Future<Output = StatusCode>,
) -> Value {
    let holder = hold_projection(&app.pool, "notifications").await;
    assert!(action.await.is_success());
    let client = app.client.clone();
    let url = app.url("/v1/notifications");
    let token = reader.token.clone();
    let read = tokio::spawn(async move {
        let response = client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Vec<Value>>().await.unwrap()
    });
    // Not a wait for something that could be polled: the window in which a
    // server that does not wait for the caller's write would answer stale.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    release_projection(holder, "notifications").await;
    read.await.unwrap()[0].clone()
}

#[tokio::test]
async fn a_profile_change_and_a_logout_are_read_back_without_a_token_while_the_projection_lags() {
    let app = TestApp::spawn().await;
    let user = app.register("lag@example.com").await;
    let other = app.login("lag@example.com").await;
    app.wait_for_projections().await;

    let newest = newest_after_lagging(&app, &user, async {
        app.send(
            Method::PUT,
            "/v1/user/profile",
            &user,
            Some(json!({"name": "Lag"})),
        )
        .await
        .status()
    })
    .await;
    assert_eq!(newest["type"], "PROFILE_UPDATED");

    let newest = newest_after_lagging(&app, &other, async {
        app.send(Method::POST, "/v1/auth/logout", &user, None)
            .await
            .status()
    })
    .await;
    assert_eq!(newest["type"], "LOGOUT");
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_description_covers_every_notifications_route_with_its_statuses() {
    let app = TestApp::spawn().await;
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, method, statuses) in [
        (
            "/v1/notifications",
            "get",
            &["200", "401", "422", "503"][..],
        ),
        ("/v1/notifications", "delete", &["204", "401", "422", "503"]),
        (
            "/v1/notifications/{id}",
            "get",
            &["200", "401", "404", "422", "503"],
        ),
        (
            "/v1/notifications/{id}",
            "put",
            &["200", "400", "401", "404", "422", "503"],
        ),
        (
            "/v1/notifications/{id}",
            "delete",
            &["204", "401", "404", "422", "503"],
        ),
        (
            "/v1/notifications/mark-all-read",
            "put",
            &["200", "401", "503"],
        ),
        (
            "/v1/notifications/unread/count",
            "get",
            &["200", "401", "503"],
        ),
    ] {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        let declared: Vec<&str> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for status in statuses {
            assert!(
                declared.contains(status),
                "{method} {path} does not declare {status}"
            );
        }
        assert!(
            operation["security"].is_array(),
            "{method} {path} needs a token"
        );
    }
    let headers = &spec["paths"]["/v1/notifications"]["get"]["responses"]["200"]["headers"];
    assert!(headers["X-Total-Count"].is_object());
    assert!(headers["X-Unread-Count"].is_object());
    app.stop().await;
}
