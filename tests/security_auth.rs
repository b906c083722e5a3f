//! Holes found by review in the auth surface (issue 15), each closed and
//! attacked again: demotion, password guessing through change-password,
//! username squatting, immortal API keys, unmetered paths.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chronicle::auth::PasswordService;
use chronicle::commands::CommandExecutor;
use chronicle::http::error::ApiError;
use chronicle_aggregates::user::{User, UserCommand, UserServices};
use common::{test_settings, TestApp, TestUser, TEST_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("JSON error body");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

async fn set_roles(app: &TestApp, by: &TestUser, of: &TestUser, roles: Value) -> StatusCode {
    app.send(
        Method::POST,
        &format!("/v1/admin/users/{}/roles", of.id),
        by,
        Some(json!({ "roles": roles })),
    )
    .await
    .status()
}

#[tokio::test]
async fn a_demoted_admin_is_refused_on_her_very_next_request_and_cannot_regrant_herself() {
    let app = TestApp::spawn().await;
    let alice = app.user_with_role("alice@example.com", "admin").await;
    let bob = app.register("bob@example.com").await;

    assert_eq!(
        set_roles(&app, &alice, &bob, json!(["admin"])).await,
        StatusCode::OK
    );
    // Bob's token was issued before his promotion and lists only `user`:
    // the read model, not the token, says what he may do.
    assert_eq!(
        set_roles(&app, &bob, &alice, json!([])).await,
        StatusCode::OK,
        "the promotion counts at once"
    );

    // Alice's token still lists `admin`; her very next request is refused.
    let listed = app.send(Method::GET, "/v1/admin/users", &alice, None).await;
    assert_eq!(
        error_of(listed).await,
        (StatusCode::FORBIDDEN, "FORBIDDEN".into())
    );
    let regrant = app
        .send(
            Method::POST,
            &format!("/v1/admin/users/{}/roles", alice.id),
            &alice,
            Some(json!({"roles": ["admin"]})),
        )
        .await;
    assert_eq!(
        error_of(regrant).await,
        (StatusCode::FORBIDDEN, "FORBIDDEN".into())
    );
    let demote_back = set_roles(&app, &alice, &bob, json!([])).await;
    assert_eq!(demote_back, StatusCode::FORBIDDEN);
    let me: Value = app
        .send_json(Method::GET, "/v1/auth/me", &alice, None)
        .await;
    assert_eq!(me["roles"], json!(["user"]));
    let still_admin: Value = app.send_json(Method::GET, "/v1/auth/me", &bob, None).await;
    assert_eq!(still_admin["roles"], json!(["user", "admin"]));
    app.stop().await;
}

async fn change_password(app: &TestApp, user: &TestUser, current: &str) -> reqwest::Response {
    app.send(
        Method::POST,
        "/v1/auth/change-password",
        user,
        Some(json!({"current_password": current, "new_password": "a brand new secret"})),
    )
    .await
}

#[tokio::test]
async fn wrong_current_passwords_lock_the_account_like_failed_logins() {
    let app = TestApp::spawn().await;
    let user = app.register("oracle@example.com").await;
    for attempt in 1..=5 {
        assert_eq!(
            error_of(change_password(&app, &user, &format!("guess number {attempt}")).await).await,
            (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS".into()),
            "attempt {attempt}"
        );
    }
    let login = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": "oracle@example.com", "password": TEST_PASSWORD}),
        )
        .await;
    assert!(login.headers().contains_key("retry-after"));
    assert_eq!(
        error_of(login).await,
        (StatusCode::LOCKED, "ACCOUNT_LOCKED".into()),
        "five wrong current passwords lock the account"
    );
    assert_eq!(
        error_of(change_password(&app, &user, TEST_PASSWORD).await).await,
        (StatusCode::LOCKED, "ACCOUNT_LOCKED".into()),
        "no more guessing, not even the right password"
    );
    let kinds: Vec<String> = sqlx::query_scalar(
        "select event_type from events where aggregate_id = $1 order by sequence",
    )
    .bind(user.id.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds.iter().filter(|k| *k == "LoginFailed").count(),
        5,
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "AccountLocked"), "{kinds:?}");
    assert!(!kinds.iter().any(|k| k == "PasswordChanged"), "{kinds:?}");
    app.stop().await;
}

async fn register_named(app: &TestApp, email: &str, username: &str) -> reqwest::Response {
    app.post_anonymous(
        "/v1/auth/register",
        json!({"email": email, "password": TEST_PASSWORD, "username": username}),
    )
    .await
}

async fn login_by_username(app: &TestApp, username: &str) -> StatusCode {
    app.post_anonymous(
        "/v1/auth/login",
        json!({"username": username, "password": TEST_PASSWORD}),
    )
    .await
    .status()
}

#[tokio::test]
async fn a_claim_left_by_a_registration_that_never_committed_does_not_block_the_name_for_ever() {
    let app = TestApp::spawn().await;
    // What a registration cancelled between its claim and its event leaves
    // behind: a claim whose user never came to exist. One is fresh (its
    // request might still commit), one is older than the grace period.
    for (username, age_secs) in [("fresh_claim", 1), ("stale_claim", 120)] {
        sqlx::query(
            "insert into username_claims (username, user_id, claimed_at) \
             values ($1, $2, now() - make_interval(secs => $3))",
        )
        .bind(username)
        .bind(Uuid::new_v4())
        .bind(f64::from(age_secs))
        .execute(&app.pool)
        .await
        .unwrap();
    }
    assert_eq!(
        error_of(register_named(&app, "early@example.com", "fresh_claim").await).await,
        (StatusCode::CONFLICT, "CONFLICT".into()),
        "a claim within its grace period still holds"
    );
    let late = register_named(&app, "late@example.com", "stale_claim").await;
    assert_eq!(
        late.status(),
        StatusCode::CREATED,
        "the stale claim is taken over"
    );
    let body: Value = late.json().await.unwrap();
    assert_eq!(body["user"]["username"], "stale_claim");
    assert_eq!(login_by_username(&app, "stale_claim").await, StatusCode::OK);
    // Now confirmed by the event: no grace period frees it any more.
    sqlx::query("update username_claims set claimed_at = now() - interval '1 day'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        error_of(register_named(&app, "third@example.com", "stale_claim").await).await,
        (StatusCode::CONFLICT, "CONFLICT".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn two_users_renaming_to_one_name_at_once_get_one_winner_and_the_loser_keeps_his_name() {
    let app = TestApp::spawn().await;
    for round in 0..5 {
        let mut users = Vec::new();
        for side in ["a", "b"] {
            let email = format!("{side}{round}@example.com");
            let response = register_named(&app, &email, &format!("old_{side}{round}")).await;
            assert_eq!(response.status(), StatusCode::CREATED);
            let body: Value = response.json().await.unwrap();
            users.push(TestUser {
                id: body["user"]["id"].as_str().unwrap().parse().unwrap(),
                email,
                token: body["access_token"].as_str().unwrap().to_string(),
                refresh_token: body["refresh_token"].as_str().unwrap().to_string(),
            });
        }
        let wanted = json!({"username": format!("wanted_{round}")});
        let (first, second) = tokio::join!(
            app.send(
                Method::PUT,
                "/v1/user/profile",
                &users[0],
                Some(wanted.clone())
            ),
            app.send(
                Method::PUT,
                "/v1/user/profile",
                &users[1],
                Some(wanted.clone())
            ),
        );
        let mut statuses = [first.status(), second.status()];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}"
        );
        let (winner, loser, loser_side) = if first.status() == StatusCode::OK {
            (&users[0], &users[1], "b")
        } else {
            (&users[1], &users[0], "a")
        };
        let winner: Value = app
            .send_json(Method::GET, "/v1/user/profile", winner, None)
            .await;
        assert_eq!(winner["username"], format!("wanted_{round}"));
        let loser_profile: Value = app
            .send_json(Method::GET, "/v1/user/profile", loser, None)
            .await;
        let old_name = format!("old_{loser_side}{round}");
        assert_eq!(loser_profile["username"], old_name.as_str());
        assert_eq!(
            login_by_username(&app, &old_name).await,
            StatusCode::OK,
            "the loser's old username is still his"
        );
        assert_eq!(
            login_by_username(&app, &format!("wanted_{round}")).await,
            StatusCode::OK
        );
    }
    app.stop().await;
}

/// The metadata every command records, for commands run outside a request.
fn operator_metadata() -> HashMap<String, String> {
    HashMap::from([
        ("actor_id".to_string(), "operator-cli".to_string()),
        ("actor_roles".to_string(), String::new()),
        ("request_id".to_string(), Uuid::new_v4().to_string()),
        ("correlation_id".to_string(), Uuid::new_v4().to_string()),
        ("causation_id".to_string(), Uuid::new_v4().to_string()),
        ("client_ip".to_string(), String::new()),
        ("user_agent".to_string(), "test".to_string()),
        (
            "occurred_at".to_string(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    ])
}

fn rename(username: &str) -> UserCommand {
    UserCommand::UpdateProfile {
        username: Some(Some(username.to_string())),
        name: None,
        preferences: None,
        at: chronicle::commands::now(),
    }
}

#[tokio::test]
async fn the_event_store_moves_username_claims_with_the_event_itself() {
    let app = TestApp::spawn().await;
    assert_eq!(
        register_named(&app, "mover@example.com", "before_move")
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        register_named(&app, "holder@example.com", "held_name")
            .await
            .status(),
        StatusCode::CREATED
    );
    let passwords = PasswordService::new(app.pool.clone(), app.settings.auth.argon2).unwrap();
    let users = CommandExecutor::<User>::new(app.pool.clone(), passwords as Arc<dyn UserServices>);
    let mover = chronicle_aggregates::user::user_id_for_email("mover@example.com").to_string();

    // A rename whose request died right after the commit: no claim taken
    // before, no release after. The claims follow the event all the same.
    users
        .execute(&mover, rename("after_move"), operator_metadata())
        .await
        .expect("rename");
    app.wait_for_projections().await;
    assert_eq!(
        register_named(&app, "newcomer@example.com", "before_move")
            .await
            .status(),
        StatusCode::CREATED,
        "the old name is free at once"
    );
    assert_eq!(
        error_of(register_named(&app, "other@example.com", "after_move").await).await,
        (StatusCode::CONFLICT, "CONFLICT".into()),
        "the new name is taken"
    );

    // An event that would give a held name to someone else is refused.
    let refused = users
        .execute(&mover, rename("held_name"), operator_metadata())
        .await
        .expect_err("the name is held");
    let answer = chronicle::http::auth::user_error(refused);
    assert!(matches!(answer, ApiError::Conflict(_)), "{answer:?}");
    let current = users.load(&mover).await.unwrap();
    assert_eq!(current.username.as_deref(), Some("after_move"));
    assert_eq!(login_by_username(&app, "held_name").await, StatusCode::OK);
    app.stop().await;
}

async fn reset_api_key(app: &TestApp, user: &TestUser, body: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/user/profile/reset-api-key"))
        .bearer_auth(&user.token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    request.send().await.unwrap()
}

async fn tasks_with_key(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .get(app.url("/v1/tasks"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_password_change_revokes_the_api_key() {
    let app = TestApp::spawn().await;
    let user = app.register("rotate@example.com").await;
    let issued: Value = reset_api_key(&app, &user, None).await.json().await.unwrap();
    let key = issued["api_key"].as_str().unwrap();
    assert_eq!(tasks_with_key(&app, key).await.status(), StatusCode::OK);
    assert_eq!(
        change_password(&app, &user, TEST_PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        error_of(tasks_with_key(&app, key).await).await,
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn an_api_key_may_be_given_a_lifetime_and_stops_working_when_it_ends() {
    let app = TestApp::spawn().await;
    let user = app.register("expiry@example.com").await;

    for (body, expected) in [
        (
            Some(r#"{"expires_in_days": 0}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
        ),
        (
            Some(r#"{"expires_in_days": 366}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
        ),
        (
            Some(r#"{"expires_in_days": -3}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
        ),
        (
            Some(r#"{"expires_in_days": "soon"}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
        ),
        (
            Some(r#"{"expires_in": 3}"#),
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
        ),
        (
            Some("[1]"),
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
        ),
        (Some("not json"), (StatusCode::BAD_REQUEST, "BAD_REQUEST")),
    ] {
        assert_eq!(
            error_of(reset_api_key(&app, &user, body).await).await,
            (expected.0, expected.1.to_string()),
            "{body:?}"
        );
    }

    for body in [
        None,
        Some(""),
        Some("{}"),
        Some(r#"{"expires_in_days": null}"#),
    ] {
        let response = reset_api_key(&app, &user, body).await;
        assert_eq!(response.status(), StatusCode::OK, "{body:?}");
        let issued: Value = response.json().await.unwrap();
        assert!(issued["expires_at"].is_null(), "{body:?}: {issued}");
        let key = issued["api_key"].as_str().unwrap();
        assert_eq!(tasks_with_key(&app, key).await.status(), StatusCode::OK);
    }

    let response = reset_api_key(&app, &user, Some(r#"{"expires_in_days": 30}"#)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let issued: Value = response.json().await.unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> =
        issued["expires_at"].as_str().unwrap().parse().unwrap();
    let in_30_days = chrono::Utc::now() + chrono::Duration::days(30);
    assert!(
        (expires_at - in_30_days).num_seconds().abs() < 60,
        "{expires_at} is 30 days from now"
    );
    let key = issued["api_key"].as_str().unwrap();
    assert_eq!(tasks_with_key(&app, key).await.status(), StatusCode::OK);

    // Thirty days later.
    sqlx::query("update api_keys set expires_at = now() - interval '1 second' where user_id = $1")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        error_of(tasks_with_key(&app, key).await).await,
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_description_of_the_changed_routes_is_exact() {
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
    let reset = &spec["paths"]["/v1/user/profile/reset-api-key"]["post"];
    assert_ne!(
        reset["requestBody"]["required"],
        json!(true),
        "the body is optional: {reset}"
    );
    assert!(reset["requestBody"]["content"]["application/json"].is_object());
    for status in ["200", "400", "401", "422"] {
        assert!(
            reset["responses"][status].is_object(),
            "reset-api-key {status}"
        );
    }
    let schemas = &spec["components"]["schemas"];
    assert!(schemas["ApiKeyResponse"]["properties"]["expires_at"].is_object());
    assert!(schemas["ResetApiKeyRequest"]["properties"]["expires_in_days"].is_object());
    let change = &spec["paths"]["/v1/auth/change-password"]["post"];
    for status in ["204", "401", "422", "423"] {
        assert!(
            change["responses"][status].is_object(),
            "change-password {status}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn an_address_past_its_limit_is_refused_on_every_path_before_any_credential_is_looked_up() {
    let mut settings = test_settings().await;
    settings.rate_limit.per_ip_per_minute = 3;
    let app = TestApp::spawn_with(settings).await;
    let random_key = || format!("ck_{}", Uuid::new_v4().simple());
    for n in 0..3 {
        let response = app
            .client
            .get(app.url("/"))
            .header("x-api-key", random_key())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            response.headers()["x-ratelimit-remaining"],
            (2 - n).to_string().as_str()
        );
    }

    // Any API-key lookup now blocks until this transaction ends: a request
    // that answers at all did not look its key up.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("lock table api_keys in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for path in [
        "/",
        "/openapi.json",
        "/ready",
        "/no/such/route",
        "/v1/tasks",
    ] {
        let response = client
            .get(app.url(path))
            .header("x-api-key", random_key())
            .send()
            .await
            .unwrap_or_else(|err| panic!("{path} answered nothing (a key lookup?): {err}"));
        assert!(response.headers().contains_key("retry-after"), "{path}");
        assert_eq!(
            error_of(response).await,
            (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED".into()),
            "{path}"
        );
    }
    // A load balancer's probe and a Prometheus scraper are never locked out,
    // and never look a credential up either.
    for path in ["/health", "/metrics"] {
        let response = client
            .get(app.url(path))
            .header("x-api-key", random_key())
            .send()
            .await
            .unwrap_or_else(|err| panic!("{path}: {err}"));
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    lock.rollback().await.unwrap();
    app.stop().await;
}
