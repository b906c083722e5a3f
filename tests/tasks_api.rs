//! The tasks and auth API over real HTTP, against real Postgres and NATS.

mod common;

use std::time::Duration;

use common::{eventually, TestApp, TestUser};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

async fn event_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(
        body["error"]["request_id"].as_str(),
        request_id.as_deref(),
        "request_id matches the header"
    );
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test]
async fn a_task_goes_through_its_whole_lifecycle_over_http() {
    let app = TestApp::spawn().await;
    let user = app.register("life@example.com").await;

    let created = app.create_task(&user, "Write the report").await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["version"], 1);
    assert_eq!(created["completed"], false);
    assert_eq!(created["is_deleted"], false);

    let got: Value = app
        .send_json(Method::GET, &format!("/v1/tasks/{id}"), &user, None)
        .await;
    assert_eq!(
        got, created,
        "the read model answers what the command returned"
    );

    let replaced = app
        .send(
            Method::PUT,
            &format!("/v1/tasks/{id}"),
            &user,
            Some(json!({
                "title": "Write the final report", "description": "by Friday", "project_id": null,
                "due_at": "2030-01-01T00:00:00Z", "completed": false
            })),
        )
        .await;
    assert_eq!(replaced.status(), StatusCode::OK);
    let replaced: Value = replaced.json().await.unwrap();
    assert_eq!(replaced["description"], "by Friday");
    assert_eq!(replaced["version"], 2);

    let untitled = app
        .send(
            Method::PUT,
            &format!("/v1/tasks/{id}"),
            &user,
            Some(json!({"description": "no title"})),
        )
        .await;
    assert_eq!(
        untitled.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "PUT needs a title"
    );

    let patched: Value = app
        .send_json(
            Method::PATCH,
            &format!("/v1/tasks/{id}"),
            &user,
            Some(json!({"description": null})),
        )
        .await;
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["title"], "Write the final report");

    let completed: Value = app
        .send_json(
            Method::PATCH,
            &format!("/v1/tasks/{id}/complete"),
            &user,
            Some(json!({"completed": true})),
        )
        .await;
    assert_eq!(completed["completed"], true);

    let restore_live = app
        .send(
            Method::POST,
            &format!("/v1/tasks/{id}/restore"),
            &user,
            None,
        )
        .await;
    assert_eq!(
        error_code(restore_live).await,
        (StatusCode::BAD_REQUEST, "BAD_REQUEST".into())
    );

    let deleted = app
        .send(Method::DELETE, &format!("/v1/tasks/{id}"), &user, None)
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let got: Value = app
        .send_json(Method::GET, &format!("/v1/tasks/{id}"), &user, None)
        .await;
    assert_eq!(got["is_deleted"], true);
    assert!(got["deleted_at"].is_string());
    let listed: Vec<Value> = app.send_json(Method::GET, "/v1/tasks", &user, None).await;
    assert!(listed.is_empty(), "deleted tasks are not listed by default");
    let patch_deleted = app
        .send(
            Method::PATCH,
            &format!("/v1/tasks/{id}"),
            &user,
            Some(json!({"title": "x"})),
        )
        .await;
    assert_eq!(patch_deleted.status(), StatusCode::CONFLICT);

    let restored = app
        .send(
            Method::POST,
            &format!("/v1/tasks/{id}/restore"),
            &user,
            None,
        )
        .await;
    assert_eq!(restored.status(), StatusCode::OK);
    let listed: Vec<Value> = app.send_json(Method::GET, "/v1/tasks", &user, None).await;
    assert_eq!(listed.len(), 1);

    let purged = app
        .send(
            Method::DELETE,
            &format!("/v1/tasks/{id}?permanent=true"),
            &user,
            None,
        )
        .await;
    assert_eq!(purged.status(), StatusCode::NO_CONTENT);
    let gone = app
        .send(Method::GET, &format!("/v1/tasks/{id}"), &user, None)
        .await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let listed: Vec<Value> = app
        .send_json(Method::GET, "/v1/tasks?status=all", &user, None)
        .await;
    assert!(listed.is_empty(), "a purged task is in no read model");
    let history: i64 = sqlx::query_scalar("select count(*) from events where aggregate_id = $1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        history, 7,
        "the history keeps that it existed: create, put, patch, complete, delete, restore, purge"
    );
    app.stop().await;
}

/// `GET /v1/tasks{query}`: the page and its `X-Total-Count`.
async fn list_page(app: &TestApp, user: &TestUser, query: &str) -> (Vec<Value>, i64) {
    let response = app
        .send(Method::GET, &format!("/v1/tasks{query}"), user, None)
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let total: i64 = response.headers()["x-total-count"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (response.json().await.unwrap(), total)
}

#[tokio::test]
async fn lists_filter_and_paginate_newest_first() {
    let app = TestApp::spawn().await;
    let user = app.register("lists@example.com").await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            app.create_task(&user, &format!("task {n}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids[0..2] {
        app.send(
            Method::PATCH,
            &format!("/v1/tasks/{id}/complete"),
            &user,
            Some(json!({"completed": true})),
        )
        .await;
    }
    app.send(
        Method::DELETE,
        &format!("/v1/tasks/{}", ids[5]),
        &user,
        None,
    )
    .await;

    let count = |query: &'static str| async {
        let (page, total) = list_page(&app, &user, query).await;
        (page.len(), total)
    };
    assert_eq!(count("").await, (5, 5));
    assert_eq!(count("?status=all").await, (6, 6));
    assert_eq!(count("?status=completed").await, (2, 2));
    assert_eq!(count("?status=pending").await, (3, 3));
    assert_eq!(count("?status=deleted").await, (1, 1));
    assert_eq!(count("?include_deleted=true").await, (6, 6));
    assert_eq!(count("?limit=2").await, (2, 5));
    assert_eq!(count("?limit=2&offset=4").await, (1, 5));
    // A page past the end is empty and still says how many there are.
    assert_eq!(count("?offset=10").await, (0, 5));
    assert_eq!(
        count("?status=all&offset=10&date_to=2999-01-01T00:00:00Z").await,
        (0, 6)
    );
    assert_eq!(count("?date_from=2999-01-01T00:00:00Z").await, (0, 0));

    let page: Vec<Value> = app
        .send_json(Method::GET, "/v1/tasks?limit=100", &user, None)
        .await;
    assert_eq!(page[0]["id"].as_str().unwrap(), ids[4], "newest first");

    for bad in [
        "?limit=0",
        "?limit=101",
        "?offset=-1",
        "?status=maybe",
        "?date_from=yesterday",
        "?sort=up",
    ] {
        let response = app
            .send(Method::GET, &format!("/v1/tasks{bad}"), &user, None)
            .await;
        assert_eq!(
            error_code(response).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR".into()),
            "{bad}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn another_users_task_answers_404_to_every_route() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@example.com").await;
    let other = app.register("other@example.com").await;
    let id = app.create_task(&owner, "private").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = event_count(&app).await;

    let attempts = [
        (Method::GET, format!("/v1/tasks/{id}"), None),
        (
            Method::PUT,
            format!("/v1/tasks/{id}"),
            Some(
                json!({"title": "x", "description": null, "project_id": null, "due_at": null, "completed": true}),
            ),
        ),
        (
            Method::PATCH,
            format!("/v1/tasks/{id}"),
            Some(json!({"title": "mine now"})),
        ),
        (
            Method::PATCH,
            format!("/v1/tasks/{id}/complete"),
            Some(json!({"completed": true})),
        ),
        (Method::DELETE, format!("/v1/tasks/{id}"), None),
        (
            Method::DELETE,
            format!("/v1/tasks/{id}?permanent=true"),
            None,
        ),
        (Method::POST, format!("/v1/tasks/{id}/restore"), None),
    ];
    for (method, path, body) in attempts {
        let response = app.send(method.clone(), &path, &other, body).await;
        assert_eq!(
            error_code(response).await,
            (StatusCode::NOT_FOUND, "NOT_FOUND".into()),
            "{method} {path}"
        );
    }
    let listed: Vec<Value> = app.send_json(Method::GET, "/v1/tasks", &other, None).await;
    assert!(listed.is_empty());
    assert_eq!(event_count(&app).await, before, "nothing was written");
    app.stop().await;
}

/// method, path, content type, body, expected status, expected code
type BadRequestCase = (
    Method,
    String,
    Option<&'static str>,
    Vec<u8>,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let user = app.register("bad@example.com").await;
    let id = app.create_task(&user, "target").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = event_count(&app).await;
    let raw = |method: Method, path: String, content_type: Option<&'static str>, body: Vec<u8>| {
        let mut request = app
            .client
            .request(method, app.url(&path))
            .bearer_auth(&user.token)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    let json_type = Some("application/json");
    let cases: Vec<BadRequestCase> = vec![
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            b"{\"title\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            b"{\"title\": 42}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            b"{}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            br#"{"title": ""}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            json!({"title": "x".repeat(201)}).to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            json!({"title": "ok", "description": "d".repeat(1001)})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            br#"{"title": "ok", "colour": "red"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            br#"{"title": "ok", "due_at": "soon"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            None,
            br#"{"title": "ok"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            Method::POST,
            "/v1/tasks".into(),
            json_type,
            json!({"title": "x".repeat(2 * 1024 * 1024)})
                .to_string()
                .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            Method::PATCH,
            format!("/v1/tasks/{id}"),
            json_type,
            br#"{"title": null}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::PATCH,
            format!("/v1/tasks/{id}"),
            json_type,
            br#"{"completed": "yes"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::PATCH,
            "/v1/tasks/not-a-uuid".into(),
            json_type,
            br#"{"title": "x"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
        (
            Method::PATCH,
            format!("/v1/tasks/{id}/complete"),
            json_type,
            br#"[]"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
        ),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let response = raw(method.clone(), path.clone(), content_type, body)
            .await
            .unwrap();
        assert_eq!(
            error_code(response).await,
            (status, code.to_string()),
            "{method} {path}"
        );
    }
    let title_200 = app
        .send(
            Method::POST,
            "/v1/tasks",
            &user,
            Some(json!({"title": "x".repeat(200)})),
        )
        .await;
    assert_eq!(
        title_200.status(),
        StatusCode::CREATED,
        "200 characters is the limit, inclusive"
    );
    assert_eq!(
        event_count(&app).await,
        before + 1,
        "only the valid command wrote"
    );

    let anonymous = app.client.get(app.url("/v1/tasks")).send().await.unwrap();
    assert_eq!(
        error_code(anonymous).await,
        (StatusCode::UNAUTHORIZED, "AUTH_REQUIRED".into())
    );
    let forged = app
        .client
        .get(app.url("/v1/tasks"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(forged).await,
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_error_format() {
    let app = TestApp::spawn().await;
    let user = app.register("routes@example.com").await;
    let missing = app
        .client
        .get(app.url("/v1/nothing-here"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.headers()["x-request-id"],
        "trace-me-42",
        "a client's request id is echoed"
    );
    assert_eq!(
        error_code(missing).await,
        (StatusCode::NOT_FOUND, "NOT_FOUND".into())
    );
    let with_token = app.send(Method::GET, "/v1/nothing-here", &user, None).await;
    assert_eq!(with_token.status(), StatusCode::NOT_FOUND);
    let wrong_method = app.send(Method::DELETE, "/v1/tasks", &user, None).await;
    let allow = wrong_method
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow lists the methods: {allow}"
    );
    assert_eq!(
        error_code(wrong_method).await,
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn registration_and_login_follow_the_contract() {
    let app = TestApp::spawn().await;
    let response = app.post_anonymous("/v1/auth/register", json!({"email": "Ada@Example.com", "password": "analytical engine", "username": "ada", "name": "Ada"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["user"]["roles"], json!(["user"]));

    let again = app
        .post_anonymous(
            "/v1/auth/register",
            json!({"email": "ada@example.com", "password": "another password"}),
        )
        .await;
    assert_eq!(
        error_code(again).await,
        (StatusCode::CONFLICT, "CONFLICT".into())
    );
    let taken = app.post_anonymous("/v1/auth/register", json!({"email": "other@example.com", "password": "another password", "username": "ADA"})).await;
    assert_eq!(
        error_code(taken).await,
        (StatusCode::CONFLICT, "CONFLICT".into())
    );
    let weak = app
        .post_anonymous(
            "/v1/auth/register",
            json!({"email": "weak@example.com", "password": "short"}),
        )
        .await;
    assert_eq!(
        error_code(weak).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR".into())
    );

    let by_email = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": "ada@example.com", "password": "analytical engine"}),
        )
        .await;
    assert_eq!(by_email.status(), StatusCode::OK);
    let by_form = app
        .client
        .post(app.url("/v1/auth/login"))
        .form(&[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", "analytical engine"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(by_form.status(), StatusCode::OK);
    let token = by_form.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let wrong = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": "ada@example.com", "password": "wrong password"}),
        )
        .await;
    let unknown = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": "nobody@example.com", "password": "wrong password"}),
        )
        .await;
    let wrong = (
        wrong.status(),
        wrong.json::<Value>().await.unwrap()["error"]["message"].clone(),
    );
    let unknown = (
        unknown.status(),
        unknown.json::<Value>().await.unwrap()["error"]["message"].clone(),
    );
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong, unknown,
        "an unknown user gets the same answer as a wrong password"
    );

    let me: Value = app
        .client
        .get(app.url("/v1/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "ada");
    assert_eq!(me["name"], "Ada");

    let events: Vec<Value> =
        sqlx::query_scalar("select payload from events where aggregate_type = 'User'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    for payload in events {
        let text = payload.to_string();
        assert!(
            !text.contains("analytical engine") && !text.contains("$argon2"),
            "no secret in {text}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_client_reads_its_own_write_200_times_in_a_row() {
    let app = TestApp::spawn().await;
    let user = app.register("ryw@example.com").await;
    for n in 0..200 {
        let response = app
            .send(
                Method::POST,
                "/v1/tasks",
                &user,
                Some(json!({"title": format!("task {n}")})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let token = response.headers()["x-consistency-token"]
            .to_str()
            .unwrap()
            .to_string();
        let id = response.json::<Value>().await.unwrap()["id"].clone();
        // Half the reads send the token back, half rely on the server remembering the write.
        let mut request = app
            .client
            .get(app.url("/v1/tasks?limit=1"))
            .bearer_auth(&user.token);
        if n % 2 == 0 {
            request = request.header("x-consistency-token", token);
        }
        let page: Vec<Value> = request.send().await.unwrap().json().await.unwrap();
        assert_eq!(
            page.first().map(|t| &t["id"]),
            Some(&id),
            "read {n} reflects its write"
        );
    }
    app.stop().await;
}

/// Every filter of the list at once, and each with the others absent: only
/// the filters that are set go into the list's SQL (change 20 of
/// docs/performance.md), so each combination is a statement of its own.
#[tokio::test]
async fn lists_filter_by_project_together_with_every_other_filter() {
    let app = TestApp::spawn().await;
    let user = app.register("project-lists@example.com").await;
    let project: Value = app
        .send_json(
            Method::POST,
            "/v1/projects",
            &user,
            Some(json!({"name": "Filtered"})),
        )
        .await;
    let project_id = project["id"].as_str().unwrap().to_string();
    let mut in_project = Vec::new();
    for n in 0..3 {
        let task: Value = app
            .send_json(
                Method::POST,
                "/v1/tasks",
                &user,
                Some(json!({"title": format!("in project {n}"), "project_id": project_id})),
            )
            .await;
        in_project.push(task["id"].as_str().unwrap().to_string());
    }
    for n in 0..2 {
        app.create_task(&user, &format!("elsewhere {n}")).await;
    }
    app.send(
        Method::PATCH,
        &format!("/v1/tasks/{}/complete", in_project[0]),
        &user,
        Some(json!({"completed": true})),
    )
    .await;

    let count = |query: String| {
        let (app, user, project_id) = (&app, &user, project_id.as_str());
        async move {
            let (page, total) = list_page(app, user, &query).await;
            assert!(
                page.iter().all(|task| task["project_id"] == project_id),
                "{query}: only the project's tasks"
            );
            (page.len(), total)
        }
    };
    let range = "date_from=2000-01-01T00:00:00Z&date_to=2999-01-01T00:00:00Z";
    assert_eq!(count(format!("?project_id={project_id}")).await, (3, 3));
    assert_eq!(
        count(format!("?project_id={project_id}&status=pending")).await,
        (2, 2)
    );
    assert_eq!(
        count(format!(
            "?project_id={project_id}&status=completed&{range}&limit=1"
        ))
        .await,
        (1, 1)
    );
    assert_eq!(
        count(format!(
            "?project_id={project_id}&status=pending&{range}&limit=1&offset=1"
        ))
        .await,
        (1, 2)
    );
    assert_eq!(
        count(format!(
            "?project_id={project_id}&status=all&include_deleted=true&date_to=2000-01-01T00:00:00Z"
        ))
        .await,
        (0, 0)
    );
    app.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_patches_lose_no_update() {
    let app = TestApp::spawn().await;
    let user = app.register("race@example.com").await;
    let id = app.create_task(&user, "contended").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let patches = (0..50).map(|n| {
        let request = app
            .client
            .patch(app.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(&user.token)
            .json(&json!({"title": format!("title {n}")}));
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(patches).await;
    let successes = statuses.iter().filter(|s| **s == StatusCode::OK).count() as i64;
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count() as i64;
    assert_eq!(
        successes + conflicts,
        50,
        "every PATCH succeeded or got 409: {statuses:?}"
    );
    assert!(successes > 0);
    let task: Value = app
        .send_json(Method::GET, &format!("/v1/tasks/{id}"), &user, None)
        .await;
    assert_eq!(
        task["version"].as_i64().unwrap(),
        1 + successes,
        "one event per successful PATCH, after the create"
    );
    app.stop().await;
}

#[tokio::test]
async fn service_routes_describe_and_expose_the_server() {
    let app = TestApp::spawn().await;
    let index: Value = app
        .client
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index["name"], "chronicle");
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ready: Value = eventually(Duration::from_secs(30), "readiness", || async {
        let response = app.client.get(app.url("/ready")).send().await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.json().await.ok()
    })
    .await;
    assert_eq!(ready["status"], "ready");
    for component in ["postgres", "nats", "projections", "dead_letters"] {
        assert!(
            ready["checks"][component]
                .as_str()
                .unwrap()
                .starts_with("ok"),
            "/ready names what it checked: {ready}"
        );
    }
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    assert!(jwks["keys"][0]["kid"].is_string());

    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/",
        "/health",
        "/ready",
        "/metrics",
        "/.well-known/jwks.json",
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/auth/me",
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/complete",
        "/v1/tasks/{id}/restore",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    // Every operation declares the answers the shared layers can give it,
    // each error with the error body's schema.
    let public = [
        "/",
        "/health",
        "/ready",
        "/metrics",
        "/.well-known/jwks.json",
        "/v1/environment",
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/auth/verify-token",
    ];
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let declares = |status: &str| responses.contains_key(status);
            let mut expected = vec!["500", "503"];
            // Every path but these two counts against the per-address limits.
            if !["/health", "/metrics"].contains(&path.as_str()) {
                expected.push("429");
            }
            if !public.contains(&path.as_str()) {
                expected.push("401");
                if method != "get" {
                    expected.push("409");
                }
            }
            if operation.get("requestBody").is_some() {
                expected.extend(["400", "413", "415", "422"]);
            }
            if path.contains('{') {
                expected.extend(["404", "422"]);
            }
            for status in expected {
                assert!(
                    declares(status),
                    "{method} {path} does not declare {status}"
                );
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]["application/json"]["schema"]["$ref"]
                            .as_str()
                            .is_some_and(|r| r.ends_with("/ErrorBody")),
                        "{method} {path} {status} has no error schema"
                    );
                }
            }
        }
    }
    // It answers `valid: false` for any bad token: never a 401.
    assert!(spec["paths"]["/v1/auth/verify-token"]["post"]["responses"]
        .get("401")
        .is_none());
    let user = app.register("metrics@example.com").await;
    app.create_task(&user, "counted").await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("chronicle_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("chronicle_events_appended_total"));
    assert!(metrics.contains("chronicle_commands_total"));
    app.stop().await;
}

/// Two API replicas over one database with the projections stopped: a token
/// names a write the read model will not reach, so honouring it is a 503 and
/// ignoring it is a prompt 200.
#[tokio::test]
async fn a_consistency_token_is_honoured_for_the_caller_it_was_issued_to_and_nobody_else() {
    let mut settings = common::test_settings().await;
    settings.http.consistency_wait = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings.clone()).await;
    let alice = app.register("alice-token@example.com").await;
    let bob = app.register("bob-token@example.com").await;
    app.stop_keeping_data().await;
    let no_projections = chronicle::Components {
        api: true,
        relay: true,
        projections: false,
    };
    let writer = TestApp::spawn_components(settings.clone(), no_projections).await;
    let reader = TestApp::spawn_components(
        settings,
        chronicle::Components {
            relay: false,
            ..no_projections
        },
    )
    .await;

    let response = writer
        .send(
            Method::POST,
            "/v1/tasks",
            &alice,
            Some(json!({"title": "never projected"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let token = response.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_string();
    let get_tasks = |user: &common::TestUser, token: Option<&str>| {
        let mut request = reader
            .client
            .get(reader.url("/v1/tasks"))
            .bearer_auth(&user.token);
        if let Some(token) = token {
            request = request.header("x-consistency-token", token);
        }
        request.send()
    };

    // Its owner's token is honoured by the other replica: the read model
    // lacks the write, so the answer is 503 rather than stale data.
    let response = get_tasks(&alice, Some(&token)).await.unwrap();
    assert_eq!(
        error_code(response).await,
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE".into())
    );
    // Without it, that replica knows of no write of hers.
    assert_eq!(
        get_tasks(&alice, None).await.unwrap().status(),
        StatusCode::OK
    );

    // The same text from another account is ignored: no wait, no 503, so
    // the answer tells Bob nothing about Alice's task.
    let started = std::time::Instant::now();
    let response = get_tasks(&bob, Some(&token)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Vec<Value>>().await.unwrap(),
        Vec::<Value>::new()
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "Bob did not wait"
    );

    // Forged tokens naming Alice's account (its id is a UUID v5 of her
    // email, so anyone can compute it), with or without a made-up seal, with
    // a sequence it will never reach: no wait either.
    for forged in [
        format!("User:{}:999999999", alice.id),
        format!("User:{}:999999999.AAAAAAAAAAAAAAAAAAAAAA", alice.id),
        format!("User:{}:1", Uuid::new_v4()),
    ] {
        let started = std::time::Instant::now();
        let response = reader
            .client
            .get(reader.url("/v1/auth/me"))
            .bearer_auth(&bob.token)
            .header("x-consistency-token", &forged)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{forged}");
        assert!(started.elapsed() < Duration::from_millis(900), "{forged}");
    }
    // Text that is not a token at all is still a 422.
    let response = get_tasks(&bob, Some("not a token")).await.unwrap();
    assert_eq!(
        error_code(response).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR".into())
    );
    reader.stop_keeping_data().await;
    writer.stop().await;
}

/// With the projections stopped, a user's honest token makes a query wait;
/// one wait per user is allowed here, so a second one is refused at once.
#[tokio::test]
async fn a_wait_beyond_the_per_user_cap_is_refused_at_once_and_others_are_not_held_up() {
    let mut settings = common::test_settings().await;
    settings.http.consistency_wait = Duration::from_secs(2);
    settings.http.consistency_max_waiters_per_user = 1;
    let app = TestApp::spawn_with(settings.clone()).await;
    let alice = app.register("alice-waits@example.com").await;
    let bob = app.register("bob-waits@example.com").await;
    app.stop_keeping_data().await;
    let app = TestApp::spawn_components(
        settings,
        chronicle::Components {
            api: true,
            relay: true,
            projections: false,
        },
    )
    .await;
    let response = app
        .send(
            Method::POST,
            "/v1/tasks",
            &alice,
            Some(json!({"title": "never projected"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let token = response.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_string();
    let timed = |user: &common::TestUser, token: Option<&str>| {
        let mut request = app
            .client
            .get(app.url("/v1/tasks"))
            .bearer_auth(&user.token);
        if let Some(token) = token {
            request = request.header("x-consistency-token", token);
        }
        async move {
            let started = std::time::Instant::now();
            let response = request.send().await.unwrap();
            (
                response.status(),
                response.headers().contains_key("retry-after"),
                started.elapsed(),
            )
        }
    };
    let (first, second, bob_reads) = tokio::join!(
        timed(&alice, Some(&token)),
        timed(&alice, Some(&token)),
        timed(&bob, None),
    );
    let (mut waited, mut refused) = (first, second);
    if refused.2 > waited.2 {
        std::mem::swap(&mut waited, &mut refused);
    }
    assert_eq!(
        (waited.0, waited.1),
        (StatusCode::SERVICE_UNAVAILABLE, true)
    );
    assert!(
        waited.2 >= Duration::from_millis(1900),
        "one query waited: {waited:?}"
    );
    assert_eq!(
        (refused.0, refused.1),
        (StatusCode::SERVICE_UNAVAILABLE, true)
    );
    assert!(
        refused.2 < Duration::from_secs(1),
        "the other was refused at once: {refused:?}"
    );
    assert_eq!(bob_reads.0, StatusCode::OK);
    assert!(
        bob_reads.2 < Duration::from_secs(1),
        "Bob was not held up: {bob_reads:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_task_loaded_from_its_snapshot_counts_each_event_once() {
    let app = TestApp::spawn().await;
    let user = app.register("snapshot-version@example.com").await;
    let task = app.create_task(&user, "v1").await;
    let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
    // 1 + 24 events: the snapshot is taken at 20, then loaded.
    let mut last = Value::Null;
    for n in 2..=25 {
        last = app
            .send_json(
                Method::PATCH,
                &path,
                &user,
                Some(json!({"title": format!("v{n}")})),
            )
            .await;
    }
    assert_eq!(
        last["version"], 25,
        "one version per event, snapshot or not"
    );
    let read: Value = app.send_json(Method::GET, &path, &user, None).await;
    assert_eq!(read["version"], 25);
    app.stop().await;
}

#[tokio::test]
async fn a_put_with_only_title_and_description_nulls_the_rest_and_keeps_completed() {
    let app = TestApp::spawn().await;
    let user = app.register("partial-put@example.com").await;
    let task = app.create_task(&user, "complete me").await;
    let id = task["id"].as_str().unwrap();
    let due: Value = app
        .send_json(
            Method::PATCH,
            &format!("/v1/tasks/{id}"),
            &user,
            Some(json!({"due_at": "2030-01-01T00:00:00Z", "completed": true})),
        )
        .await;
    assert_eq!(due["completed"], true);
    let replaced: Value = app
        .send_json(
            Method::PUT,
            &format!("/v1/tasks/{id}"),
            &user,
            Some(json!({"title": "only a title", "description": "and a description"})),
        )
        .await;
    assert_eq!(replaced["title"], "only a title");
    assert_eq!(replaced["description"], "and a description");
    assert_eq!(replaced["due_at"], Value::Null);
    assert_eq!(replaced["project_id"], Value::Null);
    assert_eq!(
        replaced["completed"], true,
        "absent `completed` is unchanged"
    );
    app.stop().await;
}

#[tokio::test]
async fn docs_serve_swagger_ui_from_this_server_alone_under_a_policy_that_lets_it_run() {
    let app = TestApp::spawn().await;
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // The API's `default-src 'none'` kept the viewer from running at all
    // (found with headless Chromium): scripts, styles, icons and "Try it out"
    // come from this server, and from nowhere else.
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    let api = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(
        api.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'",
        "API answers keep the strict policy"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://"),
        "no asset from another origin: {html}"
    );
    let initializer = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        let response = app.client.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 10_000, "{asset}");
    }
    app.stop().await;
}

/// A task's `project_id` must name one of the caller's live projects: a
/// project that does not exist, is someone else's or was deleted answers 404
/// naming the field, on create, PUT and PATCH, and changes nothing. Keeping
/// the project a task already has is always allowed.
#[tokio::test]
async fn a_task_can_only_be_put_in_a_live_project_of_ones_own() {
    let app = TestApp::spawn().await;
    let user = app.register("project-owner@example.com").await;
    let other = app.register("project-other@example.com").await;
    let create_project = |owner: &TestUser, name: &str| {
        let (app, owner, name) = (&app, owner.clone(), name.to_string());
        async move {
            let project: Value = app
                .send_json(
                    Method::POST,
                    "/v1/projects",
                    &owner,
                    Some(json!({"name": name})),
                )
                .await;
            project["id"].as_str().unwrap().to_string()
        }
    };
    let mine = create_project(&user, "Mine").await;
    let theirs = create_project(&other, "Theirs").await;
    let deleted = create_project(&user, "Deleted").await;
    let response = app
        .send(
            Method::DELETE,
            &format!("/v1/projects/{deleted}"),
            &user,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let task: Value = app
        .send_json(
            Method::POST,
            "/v1/tasks",
            &user,
            Some(json!({"title": "in mine", "project_id": mine})),
        )
        .await;
    assert_eq!(task["project_id"], mine.as_str());
    let path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());

    let missing = Uuid::new_v4().to_string();
    for project_id in [missing.as_str(), theirs.as_str(), deleted.as_str()] {
        for (method, path, body) in [
            (
                Method::POST,
                "/v1/tasks",
                json!({"title": "t", "project_id": project_id}),
            ),
            (
                Method::PUT,
                path.as_str(),
                json!({"title": "t", "project_id": project_id}),
            ),
            (
                Method::PATCH,
                path.as_str(),
                json!({"project_id": project_id}),
            ),
        ] {
            let response = app.send(method.clone(), path, &user, Some(body)).await;
            assert_eq!(
                response.status(),
                StatusCode::NOT_FOUND,
                "{method} {project_id}"
            );
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "NOT_FOUND");
            assert_eq!(error["error"]["details"][0]["field"], "project_id");
        }
    }
    let unchanged: Value = app.send_json(Method::GET, &path, &user, None).await;
    assert_eq!(unchanged["version"], task["version"]);
    assert_eq!(unchanged["project_id"], mine.as_str());
    let listed = app.send(Method::GET, "/v1/tasks", &user, None).await;
    assert_eq!(
        listed.headers()["x-total-count"],
        "1",
        "no task was created"
    );

    // A task sent back as it was read keeps its project, deleted or not.
    let response = app
        .send(Method::DELETE, &format!("/v1/projects/{mine}"), &user, None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let kept: Value = app
        .send_json(
            Method::PUT,
            &path,
            &user,
            Some(json!({"title": "renamed", "project_id": mine})),
        )
        .await;
    assert_eq!(kept["title"], "renamed");
    assert_eq!(kept["project_id"], mine.as_str());
    let response = app
        .send(
            Method::PATCH,
            &path,
            &user,
            Some(json!({"project_id": mine})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await;
}
