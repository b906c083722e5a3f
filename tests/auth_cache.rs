//! The caches of verified tokens and live sessions (`src/auth/cache.rs`)
//! never outlive a revocation: on the replica that made it, the very next
//! request is refused; on another replica, within `LIVENESS_TTL`.

mod common;

use std::time::{Duration, Instant};

use chronicle::auth::cache::LIVENESS_TTL;
use chronicle::startup::Components;
use common::{eventually, TestApp, TestUser, TEST_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Two authenticated requests, so the token and its session are cached.
async fn warm(app: &TestApp, user: &TestUser) {
    for _ in 0..2 {
        let response = app.send(Method::GET, "/v1/tasks", user, None).await;
        assert_eq!(response.status(), StatusCode::OK, "warm-up");
    }
}

async fn status_of(app: &TestApp, user: &TestUser, path: &str) -> StatusCode {
    app.send(Method::GET, path, user, None).await.status()
}

#[tokio::test]
async fn a_cached_token_is_refused_on_the_very_next_request_after_its_logout() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    warm(&app, &alice).await;
    let out = app
        .send(Method::POST, "/v1/auth/logout", &alice, None)
        .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of(&app, &alice, "/v1/tasks").await,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

#[tokio::test]
async fn a_cached_token_of_another_session_is_refused_at_once_when_logout_names_that_session() {
    let app = TestApp::spawn().await;
    let phone = app.register("alice@example.com").await;
    let laptop = app.login("alice@example.com").await;
    warm(&app, &phone).await;
    warm(&app, &laptop).await;
    let out = app
        .send(
            Method::POST,
            "/v1/auth/logout",
            &phone,
            Some(json!({"refresh_token": laptop.refresh_token})),
        )
        .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    for session in [&phone, &laptop] {
        assert_eq!(
            status_of(&app, session, "/v1/tasks").await,
            StatusCode::UNAUTHORIZED
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_cached_token_of_another_session_is_refused_at_once_after_a_password_change() {
    let app = TestApp::spawn().await;
    let phone = app.register("alice@example.com").await;
    let laptop = app.login("alice@example.com").await;
    warm(&app, &laptop).await;
    let changed = app
        .send(
            Method::POST,
            "/v1/auth/change-password",
            &phone,
            Some(json!({"current_password": TEST_PASSWORD, "new_password": "another horse battery staple"})),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status_of(&app, &laptop, "/v1/tasks").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status_of(&app, &phone, "/v1/tasks").await, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn every_cached_token_of_an_account_is_refused_at_once_after_its_deactivation() {
    let app = TestApp::spawn().await;
    let phone = app.register("alice@example.com").await;
    let laptop = app.login("alice@example.com").await;
    warm(&app, &phone).await;
    warm(&app, &laptop).await;
    let gone = app
        .send(Method::DELETE, "/v1/user/profile", &phone, None)
        .await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    for session in [&phone, &laptop] {
        assert_eq!(
            status_of(&app, session, "/v1/tasks").await,
            StatusCode::UNAUTHORIZED
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_cached_admin_is_refused_on_her_very_next_request_after_her_demotion() {
    let app = TestApp::spawn().await;
    let alice = app.user_with_role("alice@example.com", "admin").await;
    let bob = app.user_with_role("bob@example.com", "admin").await;
    for _ in 0..2 {
        assert_eq!(
            status_of(&app, &alice, "/v1/admin/users").await,
            StatusCode::OK
        );
    }
    let demoted = app
        .send(
            Method::POST,
            &format!("/v1/admin/users/{}/roles", alice.id),
            &bob,
            Some(json!({"roles": []})),
        )
        .await;
    assert_eq!(demoted.status(), StatusCode::OK);
    assert_eq!(
        status_of(&app, &alice, "/v1/admin/users").await,
        StatusCode::FORBIDDEN
    );
    app.stop().await;
}

#[tokio::test]
async fn another_replica_refuses_a_cached_token_within_the_liveness_bound_after_a_logout() {
    let app = TestApp::spawn().await;
    // A second replica on the same database: the API alone, with its own caches.
    let replica = TestApp::spawn_components(
        app.settings.clone(),
        Components {
            api: true,
            relay: false,
            projections: false,
        },
    )
    .await;
    let alice = app.register("alice@example.com").await;
    warm(&replica, &alice).await;
    let out = app
        .send(Method::POST, "/v1/auth/logout", &alice, None)
        .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let logged_out = Instant::now();
    eventually(
        LIVENESS_TTL + Duration::from_secs(2),
        "the replica to refuse the token",
        || async {
            (status_of(&replica, &alice, "/v1/tasks").await == StatusCode::UNAUTHORIZED)
                .then_some(())
        },
    )
    .await;
    // The bound, with room for a busy machine's scheduling.
    assert!(
        logged_out.elapsed() < LIVENESS_TTL + Duration::from_millis(1500),
        "refused after {:?}",
        logged_out.elapsed()
    );
    replica.stop_keeping_data().await;
    app.stop().await;
}
