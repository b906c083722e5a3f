//! The lossless pipeline: event store → relay → JetStream → projections, under
//! concurrency, late commits, NATS outages and a killed server.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronicle_nats::stored_event::has_in_flight_after;
use chronicle_nats::EventCursor;
use common::{
    assert_read_models_equal_rebuild, assert_stream_matches_store, eventually, free_port,
    read_stream, remove_test_resources, stored_event_ids, test_settings, wait_for_port,
    wait_for_projections, OwnNats, TestApp,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

#[tokio::test]
async fn an_analytics_consumer_gets_every_task_event_once_and_in_order() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let bob = app.register("bob@example.com").await;
    for user in [&alice, &bob] {
        for n in 0..3 {
            let id = app.create_task(user, &format!("task {n}")).await["id"]
                .as_str()
                .unwrap()
                .to_string();
            app.send(
                Method::PATCH,
                &format!("/v1/tasks/{id}"),
                user,
                Some(json!({"title": "renamed"})),
            )
            .await;
            app.send(
                Method::PATCH,
                &format!("/v1/tasks/{id}/complete"),
                user,
                Some(json!({"completed": true})),
            )
            .await;
            app.send(Method::DELETE, &format!("/v1/tasks/{id}"), user, None)
                .await;
        }
    }
    let expected: i64 =
        sqlx::query_scalar("select count(*) from events where aggregate_type = 'Task'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(expected, 24);
    let stream = &app.settings.nats.stream;
    let received = read_stream(
        &app.nats,
        stream,
        stream.aggregate_filter("Task"),
        expected as usize,
    )
    .await;

    let mut last_sequence: HashMap<String, i64> = HashMap::new();
    let mut unique = HashSet::new();
    for (message_id, envelope) in &received {
        if !unique.insert(message_id.clone()) {
            continue; // a redelivery: consumers dedupe by Nats-Msg-Id
        }
        assert_eq!(
            message_id,
            &format!("Task:{}:{}", envelope.aggregate_id, envelope.sequence)
        );
        let previous = last_sequence
            .insert(envelope.aggregate_id.clone(), envelope.sequence)
            .unwrap_or(0);
        assert_eq!(
            envelope.sequence,
            previous + 1,
            "per-aggregate order for {}",
            envelope.aggregate_id
        );
        assert_eq!(envelope.aggregate_type, "Task");
        assert_eq!(envelope.event_version, "1.0");
        assert!(envelope.global_position > 0);
        for key in [
            "actor_id",
            "actor_roles",
            "request_id",
            "correlation_id",
            "causation_id",
            "client_ip",
            "user_agent",
            "occurred_at",
        ] {
            assert!(
                envelope.metadata.get(key).is_some(),
                "metadata.{key} in {}",
                envelope.metadata
            );
        }
        assert!(
            envelope.payload.get(&envelope.event_type).is_none(),
            "payload is untagged"
        );
    }
    assert_eq!(unique.len(), 24, "every task event exactly once");
    let first = &received[0].1;
    assert_eq!(first.event_type, "TaskCreated");
    assert_eq!(first.payload["title"], "task 0");
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_that_commits_after_a_later_one_is_still_published() {
    let app = TestApp::spawn().await;
    let insert = "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                  values ('Probe', $1, 1, 'ProbeHappened', '1.0', '{\"ProbeHappened\": {}}', '{}') returning global_position";
    let mut early = app.pool.begin().await.unwrap();
    let early_position: i64 = sqlx::query_scalar(insert)
        .bind("early")
        .fetch_one(&mut *early)
        .await
        .unwrap();
    let late_position: i64 = sqlx::query_scalar(insert)
        .bind("late")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        late_position > early_position,
        "the late-committing row has the lower position"
    );

    let stream = &app.settings.nats.stream;
    // The relay must not publish past the open transaction, and must not skip it once it commits.
    early.commit().await.unwrap();
    let received = read_stream(&app.nats, stream, stream.aggregate_filter("Probe"), 2).await;
    let ids: Vec<&str> = received
        .iter()
        .map(|(_, e)| e.aggregate_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["early", "late"],
        "commit order: the held-back event first, none skipped"
    );
    app.stop().await;
}

/// Inserts a `Probe` event with the bound aggregate id, as a command would.
const PROBE_INSERT: &str = "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                            values ('Probe', $1, 1, 'ProbeHappened', '1.0', '{\"ProbeHappened\": {}}', '{}')";

/// The relay's "retry soon" check: a committed row held back by an older open
/// transaction is in flight until that transaction ends (an index walk since
/// change 18 of docs/performance.md; this pins down what it answers).
#[tokio::test]
async fn rows_behind_an_open_transaction_are_in_flight_until_it_ends() {
    let app = TestApp::spawn().await;
    let in_flight = || async {
        let mut conn = app.pool.acquire().await.unwrap();
        has_in_flight_after(&mut conn, EventCursor::default())
            .await
            .unwrap()
    };
    assert!(!in_flight().await, "nothing is held back yet");
    let mut open = app.pool.begin().await.unwrap();
    sqlx::query(PROBE_INSERT)
        .bind("held")
        .execute(&mut *open)
        .await
        .unwrap();
    assert!(
        !in_flight().await,
        "an uncommitted row alone is invisible, not in flight"
    );
    sqlx::query(PROBE_INSERT)
        .bind("behind")
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(
        in_flight().await,
        "a committed row behind the open transaction is in flight"
    );
    open.commit().await.unwrap();
    assert!(!in_flight().await, "both rows are final once it commits");
    app.stop().await;
}

#[tokio::test]
async fn a_late_commit_is_published_even_after_later_events_went_out() {
    let app = TestApp::spawn().await;
    let mut open = app.pool.begin().await.unwrap();
    sqlx::query(PROBE_INSERT)
        .bind("held")
        .execute(&mut *open)
        .await
        .unwrap();
    // Another event is committed while the first transaction stays open: it is
    // held back behind it, so nothing is published out of commit order.
    sqlx::query(PROBE_INSERT)
        .bind("free")
        .execute(&app.pool)
        .await
        .unwrap();
    let relayed: i64 =
        sqlx::query_scalar("select coalesce(max(global_position), 0) from relay_checkpoints")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(relayed, 0, "nothing relayed past an open transaction");
    open.commit().await.unwrap();
    let stream = &app.settings.nats.stream;
    let received = read_stream(&app.nats, stream, stream.aggregate_filter("Probe"), 2).await;
    let ids: HashSet<&str> = received
        .iter()
        .map(|(_, e)| e.aggregate_id.as_str())
        .collect();
    assert_eq!(ids, HashSet::from(["held", "free"]));
    app.stop().await;
}

#[tokio::test]
async fn the_events_table_refuses_update_delete_and_truncate() {
    let app = TestApp::spawn().await;
    let user = app.register("append@example.com").await;
    app.create_task(&user, "immutable").await;
    let stored = stored_event_ids(&app.pool).await;
    for statement in [
        "update events set payload = '{}'",
        "delete from events",
        "truncate events",
    ] {
        let err = sqlx::query(statement)
            .execute(&app.pool)
            .await
            .expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    assert_eq!(
        stored_event_ids(&app.pool).await,
        stored,
        "every event is still there"
    );
    let payloads_intact: bool =
        sqlx::query_scalar("select bool_and(payload <> '{}'::jsonb) from events")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(payloads_intact);
    app.stop().await;
}

#[tokio::test]
async fn read_models_equal_a_rebuild_and_the_live_consumer_carries_on_after_it() {
    let app = TestApp::spawn().await;
    let user = app.register("rebuild@example.com").await;
    for n in 0..10 {
        let id = app.create_task(&user, &format!("task {n}")).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        if n % 2 == 0 {
            app.send(
                Method::PATCH,
                &format!("/v1/tasks/{id}/complete"),
                &user,
                Some(json!({"completed": true})),
            )
            .await;
        }
        if n % 3 == 0 {
            app.send(
                Method::DELETE,
                &format!("/v1/tasks/{id}?permanent=true"),
                &user,
                None,
            )
            .await;
        }
    }
    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    let after = app.create_task(&user, "after the rebuild").await;
    let got = app
        .send(
            Method::GET,
            &format!("/v1/tasks/{}", after["id"].as_str().unwrap()),
            &user,
            None,
        )
        .await;
    assert_eq!(
        got.status(),
        StatusCode::OK,
        "the live consumer applies new events after a rebuild"
    );
    let listed: Vec<Value> = app
        .send_json(Method::GET, "/v1/tasks?status=all", &user, None)
        .await;
    assert_eq!(listed.len(), 7, "10 created, 4 purged, 1 more");
    app.stop().await;
}

/// Keeps creating tasks until `stop`; returns the ids that got a 201.
fn create_tasks_until(
    app_base: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut created = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let response = client
                .post(format!("{app_base}/v1/tasks"))
                .bearer_auth(&token)
                .json(&json!({"title": format!("during the outage {n}")}))
                .send()
                .await;
            if let Ok(response) = response {
                if response.status() == StatusCode::CREATED {
                    created.push(
                        response.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // pacing, not waiting
        }
        created
    })
}

#[tokio::test]
async fn commands_keep_succeeding_through_a_nats_outage_and_nothing_is_lost() {
    let port = free_port();
    let mut nats = OwnNats::start(
        port,
        std::env::temp_dir().join(format!("chronicle-nats-{}", uuid::Uuid::new_v4())),
    );
    wait_for_port(port).await;
    let mut settings = test_settings().await;
    settings.nats.url = nats.url();
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("outage@example.com").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = create_tasks_until(app.base.clone(), user.token.clone(), stop.clone());
    let before_outage: i64 = eventually(Duration::from_secs(10), "some commands", || async {
        let n: i64 = sqlx::query_scalar("select count(*) from events")
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (n >= 10).then_some(n)
    })
    .await;
    nats.stop();
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself
    let during: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        during > before_outage + 20,
        "commands kept succeeding while NATS was down ({before_outage} → {during})"
    );
    nats.restart();
    wait_for_port(port).await;
    // Keep writing across the reconnect.
    eventually(
        Duration::from_secs(10),
        "writes after NATS returned",
        || async {
            let n: i64 = sqlx::query_scalar("select count(*) from events")
                .fetch_one(&app.pool)
                .await
                .ok()?;
            (n >= during + 10).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let created = writer.await.unwrap();
    assert!(!created.is_empty());

    let stored: HashSet<String> =
        sqlx::query_scalar("select aggregate_id from events where aggregate_type = 'Task'")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for id in &created {
        assert!(
            stored.contains(id),
            "acknowledged task {id} is in the store"
        );
    }
    assert_stream_matches_store(&app.pool, &app.nats, &app.settings.nats.stream).await;
    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

/// The real binary, started as a separate process.
struct ServerProcess {
    child: Child,
    base: String,
}

impl ServerProcess {
    fn start(settings: &chronicle::Settings, port: u16) -> Self {
        use secrecy::ExposeSecret;
        let child = Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(["serve", "--all"])
            .env("DATABASE_URL", settings.database.url.expose_secret())
            .env("NATS_URL", &settings.nats.url)
            .env("CHRONICLE_STREAM", &settings.nats.stream.name)
            .env(
                "CHRONICLE_SUBJECT_PREFIX",
                &settings.nats.stream.subject_prefix,
            )
            .env("CHRONICLE_ADDR", format!("127.0.0.1:{port}"))
            .env("CHRONICLE_DATA_DIR", &settings.data_dir)
            .env("CHRONICLE_ARGON2_MEMORY_KIB", "1024")
            .env("CHRONICLE_ARGON2_ITERATIONS", "1")
            .env("CHRONICLE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chronicle");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_server_killed_mid_stream_loses_no_acknowledged_command() {
    let settings = test_settings().await;
    let port = free_port();
    let mut server = ServerProcess::start(&settings, port);
    wait_for_port(port).await;
    let client = reqwest::Client::new();
    let register: Value = client
        .post(format!("{}/v1/auth/register", server.base))
        .json(&json!({"email": "crash@example.com", "password": "survives a crash"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = register["access_token"].as_str().unwrap().to_string();

    // Four writers; acknowledged results are recorded as they arrive.
    let acknowledged: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (base, token, acknowledged, stop) = (
            server.base.clone(),
            token.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let Ok(response) = client
                    .post(format!("{base}/v1/tasks"))
                    .bearer_auth(&token)
                    .json(&json!({"title": format!("writer {writer} task {n}")}))
                    .send()
                    .await
                else {
                    return;
                };
                if response.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(task) = response.json::<Value>().await else {
                    return;
                };
                let id = task["id"].as_str().unwrap().to_string();
                acknowledged.lock().unwrap().insert(id.clone(), 1);
                let Ok(response) = client
                    .patch(format!("{base}/v1/tasks/{id}/complete"))
                    .bearer_auth(&token)
                    .json(&json!({"completed": true}))
                    .send()
                    .await
                else {
                    return;
                };
                if response.status() == StatusCode::OK {
                    acknowledged.lock().unwrap().insert(id, 2);
                }
            }
        }));
    }
    let pool = PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.database.url))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "a stream of commands", || async {
        (acknowledged.lock().unwrap().len() >= 40).then_some(())
    })
    .await;
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    let port = free_port();
    let server = ServerProcess::start(&settings, port);
    wait_for_port(port).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    for (id, version) in &acknowledged {
        let stored: Option<i64> =
            sqlx::query_scalar("select max(sequence) from events where aggregate_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(
            stored.unwrap_or(0) >= *version,
            "task {id} has its acknowledged events (v{version})"
        );
    }
    let nats = async_nats::connect(&settings.nats.url).await.unwrap();
    assert_stream_matches_store(&pool, &nats, &settings.nats.stream).await;
    wait_for_projections(&pool).await;
    assert_read_models_equal_rebuild(&pool).await;
    drop(server);
    pool.close().await;
    remove_test_resources(&settings).await;
}

#[tokio::test]
async fn a_relay_that_lost_its_checkpoint_republishes_without_duplicating() {
    let app = TestApp::spawn().await;
    let user = app.register("republish@example.com").await;
    for n in 0..5 {
        app.create_task(&user, &format!("task {n}")).await;
    }
    assert_stream_matches_store(&app.pool, &app.nats, &app.settings.nats.stream).await;
    let settings = app.settings.clone();
    let pool = app.pool.clone();
    app.stop_keeping_data().await;

    // As if the relay died after publishing but before storing its checkpoint.
    let pool = PgPool::connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    sqlx::query("delete from relay_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("after-restart@example.com").await;
    app.create_task(&user, "after the restart").await;
    assert_stream_matches_store(&app.pool, &app.nats, &app.settings.nats.stream).await;
    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

#[tokio::test]
async fn events_are_read_in_numeric_transaction_order_across_a_digit_boundary() {
    let app = TestApp::spawn().await;
    // Explicit, old transaction ids on either side of a digit boundary: in
    // text order "100" sorts before "99", which would skip the 99 row.
    for (transaction_id, id) in [("100", "second"), ("99", "first")] {
        sqlx::query(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, transaction_id) \
             values ('Probe', $1, 1, 'ProbeHappened', '1.0', '{\"ProbeHappened\": {}}', '{}', $2::text::xid8)",
        )
        .bind(id)
        .bind(transaction_id)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let mut conn = app.pool.acquire().await.unwrap();
    let mut cursor = chronicle_nats::EventCursor::default();
    let mut order = Vec::new();
    loop {
        let batch = chronicle_nats::stored_event::read_committed_after(
            &mut conn,
            cursor,
            1,
            &["Probe".to_string()],
            None,
        )
        .await
        .unwrap();
        let Some(event) = batch.first() else { break };
        order.push(event.aggregate().1.to_string());
        cursor = event.cursor();
    }
    assert_eq!(order, ["first", "second"], "one row per read, none skipped");
    drop(conn);
    app.stop().await;
}

#[tokio::test]
async fn a_transaction_marked_as_a_projection_cannot_write_events() {
    let app = TestApp::spawn().await;
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("select set_config('application_name', 'chronicle projection', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         values ('Probe', 'marked', 1, 'ProbeHappened', '1.0', '{\"ProbeHappened\": {}}', '{}')",
    )
    .execute(&mut *tx)
    .await
    .expect_err("the commit horizon skips marked transactions, so they must not write events");
    assert!(refused.to_string().contains("projection"), "{refused}");
    tx.rollback().await.unwrap();
    app.stop().await;
}
