//! Set-based batches (`Projection::apply_batch`): a projection folds a batch
//! of events into its final rows in memory and writes them with a few
//! statements. Wherever the batch boundaries fall, the result must be the
//! one of applying each event on its own.

mod common;

use chronicle_nats::stored_event::read_committed_after;
use chronicle_nats::{EventCursor, EventEnvelope, ReadEvent};
use chronicle_projections::projection::{lock_key, MARK_AND_LOCK};
use chronicle_projections::replay::rebuild_together;
use chronicle_projections::{all_projections, apply_guarded, Projection};
use common::{
    assert_audit_rebuild_identical, assert_audit_trail_complete, read_model_rows, TestApp,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
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

    // Together on one read of the store, in groups of two on a pool of
    // three connections (two rebuild transactions and the reader).
    let small = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(app.pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let projections = all_projections();
    let together: Vec<&dyn Projection> = projections.iter().map(|p| p.as_ref()).collect();
    let rebuilt = rebuild_together(&small, &together, &|_, _, _| {})
        .await
        .expect("rebuild together");
    let names: Vec<&str> = rebuilt.iter().map(|r| r.projection).collect();
    let expected: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    assert_eq!(names, expected, "every projection rebuilt once, in order");
    assert_eq!(
        read_model_rows(&app.pool).await,
        one_at_a_time,
        "rebuilt together, the read models differ from one event at a time"
    );
    assert_audit_rebuild_identical(&app.pool, &trail).await;

    // A rebuild that fails takes the others of its group down with it: none
    // of them commits. A task row changed behind the projection's back shows
    // it: a committed rebuild of `tasks` would have put it right.
    let (marked, title): (uuid::Uuid, String) =
        sqlx::query_as("update read.tasks set title = 'not from any event' where id = (select id from read.tasks order by id limit 1) returning id, title")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let tasks = chronicle_projections::projection_named("tasks").unwrap();
    let failed = rebuild_together(&small, &[tasks.as_ref(), &FailsOnFirstBatch], &|_, _, _| {})
        .await
        .expect_err("one projection of the group fails");
    assert!(
        failed
            .to_string()
            .contains("rebuilding fails_on_first_batch"),
        "{failed}"
    );
    let after: String = sqlx::query_scalar("select title from read.tasks where id = $1")
        .bind(marked)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(after, title, "the failed group's tasks rebuild committed");
    small.close().await;
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

/// A projection of tasks whose every batch fails.
struct FailsOnFirstBatch;

#[async_trait::async_trait]
impl Projection for FailsOnFirstBatch {
    fn name(&self) -> &'static str {
        "fails_on_first_batch"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Task"]
    }

    async fn apply(
        &self,
        _conn: &mut sqlx::PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), chronicle_projections::ProjectionError> {
        Err(chronicle_projections::ProjectionError::halt(
            "test projection",
            format!("refuses {}", event.message_id()),
        ))
    }

    async fn reset(
        &self,
        _conn: &mut sqlx::PgConnection,
    ) -> Result<(), chronicle_projections::ProjectionError> {
        Ok(())
    }
}
