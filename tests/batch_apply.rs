//! Set-based batches (`Projection::apply_batch`): a projection folds a batch
//! of events into its final rows in memory and writes them with a few
//! statements. Wherever the batch boundaries fall, the result must be the
//! one of applying each event on its own.

mod common;

use chronicle_nats::stored_event::read_committed_after;
use chronicle_nats::{EventCursor, EventEnvelope, ReadEvent};
use chronicle_projections::projection::{lock_key, MARK_AND_LOCK};
use chronicle_projections::{all_projections, apply_guarded, Projection};
use common::{
    assert_audit_rebuild_identical, assert_audit_trail_complete, read_model_rows, TestApp,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_model_is_the_same_whether_its_events_come_one_at_a_time_or_in_one_batch() {
    let app = TestApp::spawn().await;
    let ada = app.register("batch-ada@example.com").await;
    let bob = app.register("batch-bob@example.com").await;

    // Every task transition, some tasks created and purged, some touched
    // after other users' events (several batches of the live side).
    let mut tasks = Vec::new();
    for n in 0..6 {
        let owner = if n % 2 == 0 { &ada } else { &bob };
        let task = app.create_task(owner, &format!("task {n}")).await;
        tasks.push((owner, task["id"].as_str().unwrap().to_string()));
    }
    for (n, (owner, id)) in tasks.iter().enumerate() {
        let path = format!("/v1/tasks/{id}");
        let ok = |response: reqwest::Response| {
            assert!(response.status().is_success(), "{}", response.status());
        };
        ok(app
            .send(
                Method::PATCH,
                &path,
                owner,
                Some(json!({"title": format!("renamed {n}")})),
            )
            .await);
        ok(app
            .send(
                Method::PATCH,
                &format!("{path}/complete"),
                owner,
                Some(json!({"completed": true})),
            )
            .await);
        if n % 3 == 1 {
            ok(app
                .send(
                    Method::PATCH,
                    &format!("{path}/complete"),
                    owner,
                    Some(json!({"completed": false})),
                )
                .await);
            ok(app.send(Method::DELETE, &path, owner, None).await);
            ok(app
                .send(Method::POST, &format!("{path}/restore"), owner, None)
                .await);
        }
        if n % 3 == 2 {
            ok(app
                .send(
                    Method::DELETE,
                    &format!("{path}?permanent=true"),
                    owner,
                    None,
                )
                .await);
        }
    }
    // Logins and a logout (auth sessions and their notifications), then the
    // inbox: events that name notifications the events above created.
    let ada_again = app.login(&ada.email).await;
    let response = app
        .send(Method::POST, "/v1/auth/logout", &ada_again, None)
        .await;
    assert!(
        response.status().is_success(),
        "logout: {}",
        response.status()
    );
    app.wait_for_projections().await;
    let listed: Value = app
        .send_json(Method::GET, "/v1/notifications?limit=100", &ada, None)
        .await;
    let ids: Vec<&str> = listed
        .as_array()
        .expect("notifications")
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    assert!(ids.len() >= 4, "ada has notifications: {listed}");
    let read = app
        .send(
            Method::PUT,
            &format!("/v1/notifications/{}", ids[0]),
            &ada,
            Some(json!({"is_read": true})),
        )
        .await;
    assert_eq!(read.status(), StatusCode::OK);
    let deleted = app
        .send(
            Method::DELETE,
            &format!("/v1/notifications?ids={},{}", ids[1], ids[2]),
            &ada,
            None,
        )
        .await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    app.create_task(&ada, "after the inbox").await;
    let all_read = app
        .send(Method::PUT, "/v1/notifications/mark-all-read", &bob, None)
        .await;
    assert_eq!(all_read.status(), StatusCode::OK);
    app.wait_for_projections().await;

    for projection in all_projections() {
        rebuild_one_event_at_a_time(&app.pool, projection.as_ref()).await;
    }
    let one_at_a_time = read_model_rows(&app.pool).await;
    let trail = assert_audit_trail_complete(&app.pool).await;

    // The store holds a few hundred events: one batch per projection.
    for projection in all_projections() {
        chronicle_projections::replay::rebuild(&app.pool, projection.as_ref(), &|_, _| {})
            .await
            .expect("rebuild");
    }
    assert_eq!(
        read_model_rows(&app.pool).await,
        one_at_a_time,
        "a batch gives other rows than its events one at a time"
    );
    assert_audit_rebuild_identical(&app.pool, &trail).await;
    app.stop().await;
}

/// Rebuilds `projection` in one transaction as `replay` does, but applying
/// each event on its own (`apply_guarded`, a batch of one).
async fn rebuild_one_event_at_a_time(pool: &PgPool, projection: &dyn Projection) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(MARK_AND_LOCK)
        .bind(lock_key(projection.name()))
        .execute(&mut *tx)
        .await
        .unwrap();
    projection.reset(&mut tx).await.unwrap();
    sqlx::query("delete from read.aggregate_versions where projection = $1")
        .bind(projection.name())
        .execute(&mut *tx)
        .await
        .unwrap();
    let types: Vec<String> = projection
        .aggregate_types()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let mut cursor = EventCursor::default();
    loop {
        let batch = read_committed_after(&mut tx, cursor, 500, &types, None)
            .await
            .unwrap();
        let Some(last) = batch.last() else { break };
        cursor = last.cursor();
        for read in &batch {
            let ReadEvent::Event(event) = read else {
                panic!("an unreadable event in the store")
            };
            apply_guarded(projection, &mut tx, &EventEnvelope::from(event))
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
}
