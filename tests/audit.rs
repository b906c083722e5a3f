//! The compliance audit trail: one hash-chained entry per event in commit
//! order, tamper evidence against the event store and signed checkpoints,
//! time travel, streamed exports, and who may look.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use chronicle::Components;
use chronicle_nats::stored_event::read_committed_after;
use chronicle_nats::{EventCursor, EventEnvelope, ReadEvent};
use chronicle_projections::audit::AuditProjection;
use chronicle_projections::Projection;
use chrono::{DateTime, SecondsFormat, Utc};
use common::{
    eventually, test_settings, wait_for_audit, wait_for_projections, TestApp, TestUser,
    TEST_PASSWORD,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

async fn get(app: &TestApp, user: &TestUser, path: &str) -> reqwest::Response {
    app.send(Method::GET, path, user, None).await
}

async fn get_json(app: &TestApp, user: &TestUser, path: &str) -> Value {
    let response = get(app, user, path).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn verify(app: &TestApp, auditor: &TestUser) -> Value {
    get_json(app, auditor, "/v1/audit/verify").await
}

/// `(aggregate_type, aggregate_id, sequence)` of every event, in commit order.
async fn events_in_commit_order(pool: &PgPool) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "select aggregate_type, aggregate_id, sequence from events \
         order by transaction_id, global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `(seq, aggregate_type, aggregate_id, sequence)` of the newest generation, by seq.
async fn entries_in_seq_order(pool: &PgPool) -> Vec<(i64, String, String, i64)> {
    sqlx::query_as(
        "select seq, aggregate_type, aggregate_id, aggregate_sequence from audit.entries \
         where generation = (select max(generation) from audit.generations) order by seq",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Runs `statement` with the append-only trigger of `table` disabled, as a
/// superuser could.
async fn as_superuser(pool: &PgPool, table: &str, trigger: &str, statement: &str, bind: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("alter table {table} disable trigger {trigger}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let changed = sqlx::query(statement)
        .bind(bind)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1, "{statement}");
    sqlx::query(&format!("alter table {table} enable trigger {trigger}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// The seq of the entry of one event.
async fn seq_of(pool: &PgPool, aggregate_id: &str, sequence: i64) -> i64 {
    sqlx::query_scalar(
        "select seq from audit.entries where generation = (select max(generation) from audit.generations) \
         and aggregate_id = $1 and aggregate_sequence = $2",
    )
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn rebuild_audit(pool: &PgPool) {
    chronicle_projections::replay::rebuild(pool, &AuditProjection::default(), &|_, _| {})
        .await
        .expect("rebuild the audit trail");
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every kind of event the API produces today, plus two raw events whose
/// commit order differs from their position order.
async fn busy_flow(app: &TestApp) -> Vec<String> {
    let alice = app.register("alice@example.com").await;
    let bob = app.register("bob@example.com").await;
    app.login("alice@example.com").await;
    let mut tasks = Vec::new();
    for user in [&alice, &bob] {
        let id = app.create_task(user, "write the report").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("/v1/tasks/{id}");
        for (method, path, body) in [
            (
                Method::PATCH,
                path.clone(),
                Some(json!({"title": "write the final report"})),
            ),
            (
                Method::PATCH,
                format!("{path}/complete"),
                Some(json!({"completed": true})),
            ),
            (
                Method::PATCH,
                format!("{path}/complete"),
                Some(json!({"completed": false})),
            ),
            (Method::DELETE, path.clone(), None),
            (Method::POST, format!("{path}/restore"), None),
        ] {
            let response = app.send(method, &path, user, body).await;
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
        }
        tasks.push(id);
    }
    let purge = app
        .send(
            Method::DELETE,
            &format!("/v1/tasks/{}?permanent=true", tasks[1]),
            &bob,
            None,
        )
        .await;
    assert!(purge.status().is_success());

    // `first` takes its transaction id before `second` inserts, and commits
    // after it: commit (transaction) order puts it first, position order last.
    let insert = "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                  values ('Probe', $1, 1, 'ProbeHappened', '1.0', '{\"ProbeHappened\": {}}', '{}')";
    let mut first = app.pool.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *first)
        .await
        .unwrap();
    sqlx::query(insert)
        .bind("second")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(insert)
        .bind("first")
        .execute(&mut *first)
        .await
        .unwrap();
    first.commit().await.unwrap();
    tasks
}

#[tokio::test]
async fn every_event_has_exactly_one_audit_entry_in_commit_order_and_the_chain_verifies() {
    let app = TestApp::spawn().await;
    busy_flow(&app).await;
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    let count = wait_for_audit(&app.pool).await;

    let events = events_in_commit_order(&app.pool).await;
    let entries = entries_in_seq_order(&app.pool).await;
    assert_eq!(entries.len(), events.len(), "one entry per event");
    for (index, ((seq, kind, id, sequence), event)) in entries.iter().zip(&events).enumerate() {
        assert_eq!(*seq, index as i64 + 1, "seq counts 1, 2, 3…");
        assert_eq!(
            &(kind.clone(), id.clone(), *sequence),
            event,
            "entry {seq} in commit order"
        );
    }
    let kinds: std::collections::HashSet<&str> =
        entries.iter().map(|(_, kind, ..)| kind.as_str()).collect();
    for kind in ["User", "Task", "AuthSession", "Probe"] {
        assert!(kinds.contains(kind), "{kind} events are audited too");
    }
    let probes: Vec<&str> = entries
        .iter()
        .filter(|(_, kind, ..)| kind == "Probe")
        .map(|(_, _, id, _)| id.as_str())
        .collect();
    assert_eq!(
        probes,
        ["first", "second"],
        "commit order, not position order"
    );

    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["entries_checked"].as_i64().unwrap() >= count);
    assert!(report.get("first_bad_seq").is_none(), "{report}");

    // Offline, with nothing but a JSON library and SHA-256: each entry's hash
    // is over its own canonical JSON, and each links to the one before.
    let log = get_json(&app, &auditor, "/v1/audit/log?limit=100").await;
    let log = log.as_array().unwrap();
    assert!(log.len() as i64 >= count.min(100));
    let mut previous = "0".repeat(64);
    for entry in log {
        let mut body = entry.as_object().unwrap().clone();
        let hash = body.remove("hash").unwrap();
        assert_eq!(body["prev_hash"], json!(previous), "entry {}", entry["seq"]);
        let canonical = serde_json::to_string(&body).unwrap(); // sorted keys, no spaces
        assert_eq!(
            json!(sha256_hex(canonical.as_bytes())),
            hash,
            "entry {}",
            entry["seq"]
        );
        previous = hash.as_str().unwrap().to_string();
        for field in [
            "actor",
            "aggregate",
            "action",
            "payload_digest",
            "occurred_at",
            "request_id",
        ] {
            assert!(entry.get(field).is_some(), "{field} in {entry}");
        }
    }
    let task_entry = log
        .iter()
        .find(|e| e["aggregate"]["type"] == "Task")
        .unwrap();
    assert_eq!(task_entry["actor"]["roles"], json!(["user"]));
    assert_eq!(task_entry["actor"]["ip"], "127.0.0.1");

    // No secret in the trail: no password, no password hash.
    let trail: Vec<String> = sqlx::query_scalar("select to_jsonb(e)::text from audit.entries e")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let hashes: Vec<String> = sqlx::query_scalar("select password_hash from credentials")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(!hashes.is_empty());
    for row in &trail {
        assert!(
            !row.contains(TEST_PASSWORD),
            "a password in the trail: {row}"
        );
        for hash in &hashes {
            assert!(!row.contains(hash.as_str()), "a password hash in the trail");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_changed_event_payload_fails_verification_at_its_entry() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            app.create_task(&alice, &format!("task {n}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    wait_for_audit(&app.pool).await;
    assert_eq!(verify(&app, &auditor).await["ok"], true);

    let seq = seq_of(&app.pool, &ids[1], 1).await;
    as_superuser(
        &app.pool,
        "events",
        "events_append_only",
        "update events set payload = jsonb_set(payload, '{TaskCreated,title}', '\"forged\"') \
         where aggregate_type = 'Task' and aggregate_id = $1 and sequence = 1",
        &ids[1],
    )
    .await;
    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], seq, "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("payload"),
        "{report}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_changed_or_removed_audit_entry_fails_verification_at_its_seq() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    for n in 0..4 {
        app.create_task(&alice, &format!("task {n}")).await;
    }
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    let count = wait_for_audit(&app.pool).await;
    assert!(count >= 8);
    let generation = "(select max(generation) from audit.generations)";

    // Someone edits where an event came from.
    let original: String = sqlx::query_scalar(&format!(
        "select actor_ip from audit.entries where generation = {generation} and seq = 4"
    ))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let set_ip = format!(
        "update audit.entries set actor_ip = $1 where generation = {generation} and seq = 4"
    );
    as_superuser(
        &app.pool,
        "audit.entries",
        "audit_entries_append_only",
        &set_ip,
        "203.0.113.9",
    )
    .await;
    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], 4, "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("altered"),
        "{report}"
    );

    // Put back, it verifies again; then an entry disappears.
    as_superuser(
        &app.pool,
        "audit.entries",
        "audit_entries_append_only",
        &set_ip,
        &original,
    )
    .await;
    assert_eq!(verify(&app, &auditor).await["ok"], true);
    as_superuser(
        &app.pool,
        "audit.entries",
        "audit_entries_append_only",
        &format!("delete from audit.entries where generation = {generation} and seq = $1::bigint"),
        "6",
    )
    .await;
    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], 6, "{report}");
    app.stop().await;
}

#[tokio::test]
async fn a_consistent_rewrite_of_the_whole_chain_fails_against_the_signed_checkpoints() {
    let mut settings = test_settings().await;
    settings.audit.checkpoint_every = 3;
    let app = TestApp::spawn_with(settings).await;
    let alice = app.register("alice@example.com").await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            app.create_task(&alice, &format!("task {n}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    let count = wait_for_audit(&app.pool).await;

    // Checkpoints verify offline with any JWT library and the public JWKS.
    let checkpoints = get_json(&app, &auditor, "/v1/audit/checkpoints?limit=100").await;
    let checkpoints = checkpoints.as_array().unwrap().clone();
    assert!(checkpoints.len() as i64 >= count / 3, "{checkpoints:?}");
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let log = get_json(&app, &auditor, "/v1/audit/log?limit=100").await;
    for checkpoint in &checkpoints {
        let jws = checkpoint["signature"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(jws).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), checkpoint["kid"].as_str());
        let jwk = jwks
            .find(header.kid.as_deref().unwrap())
            .expect("kid in the JWKS");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(
            jws,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .expect("a valid signature")
        .claims;
        let seq = checkpoint["seq"].as_i64().unwrap();
        assert_eq!(seq % 3, 0);
        assert_eq!(claims["seq"], seq);
        assert_eq!(claims["head_hash"], checkpoint["head_hash"]);
        let signed_at: DateTime<Utc> = claims["signed_at"].as_str().unwrap().parse().unwrap();
        let listed: DateTime<Utc> = checkpoint["signed_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(signed_at, listed);
        assert_eq!(log[seq as usize - 1]["hash"], checkpoint["head_hash"]);
    }
    assert_eq!(verify(&app, &auditor).await["ok"], true);

    // Change an old event and rebuild the trail from the store: the new chain
    // is consistent with itself and with the store, but not with what was signed.
    let seq = seq_of(&app.pool, &ids[3], 1).await;
    assert!(
        seq > 3 && seq <= count / 3 * 3,
        "a checkpoint before and after entry {seq}"
    );
    as_superuser(
        &app.pool,
        "events",
        "events_append_only",
        "update events set payload = jsonb_set(payload, '{TaskCreated,title}', '\"forged\"') \
         where aggregate_type = 'Task' and aggregate_id = $1 and sequence = 1",
        &ids[3],
    )
    .await;
    rebuild_audit(&app.pool).await;
    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["generation"], 2, "{report}");
    let last_good = (seq - 1) / 3 * 3;
    assert_eq!(report["first_bad_seq"], last_good + 1, "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("checkpoint"),
        "{report}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rebuild_of_the_audit_trail_gives_byte_identical_entries_and_the_live_trail_carries_on() {
    let app = TestApp::spawn().await;
    busy_flow(&app).await;
    // Roles that an array literal must quote and escape reach the trail as
    // they are, live and rebuilt.
    let odd_roles = r#"a"b,c\d,{e},NULL, spaced ,"#;
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         values ('Probe', 'odd-roles', 1, 'ProbeHappened', '1.0', '{\"ProbeHappened\": {}}', \
                 jsonb_build_object('actor_roles', $1::text))",
    )
    .bind(odd_roles)
    .execute(&app.pool)
    .await
    .unwrap();
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    wait_for_audit(&app.pool).await;
    let stored_roles = || async {
        sqlx::query_scalar::<_, Vec<String>>(
            "select actor_roles from audit.entries where aggregate_id = 'odd-roles' \
             and generation = (select max(generation) from audit.generations)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let expected_roles = ["a\"b", "c\\d", "{e}", "NULL", " spaced "];
    assert_eq!(stored_roles().await, expected_roles);
    let rows = |generation: i32| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "select (to_jsonb(e) - 'generation')::text from audit.entries e \
                 where generation = $1 order by seq",
            )
            .bind(generation)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let live = rows(1).await;
    rebuild_audit(&app.pool).await;
    let rebuilt = rows(2).await;
    assert!(!live.is_empty());
    assert_eq!(&rebuilt[..live.len()], &live[..], "byte-identical entries");
    assert_eq!(stored_roles().await, expected_roles);

    let alice = app.login("alice@example.com").await;
    app.create_task(&alice, "after the rebuild").await;
    wait_for_audit(&app.pool).await;
    let report = verify(&app, &auditor).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["generation"], 2);
    assert!(report["entries_checked"].as_u64().unwrap() > live.len() as u64);
    let generation_one: i64 =
        sqlx::query_scalar("select count(*) from audit.entries where generation = 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        generation_one,
        live.len() as i64,
        "the old generation stays as it was"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_event_that_already_has_an_entry_halts_the_trail_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let ada = app.register("twice-ada@example.com").await;
    app.create_task(&ada, "recorded once").await;
    let entries = wait_for_audit(&app.pool).await;
    let mut conn = app.pool.acquire().await.unwrap();
    let first = read_committed_after(&mut conn, EventCursor::default(), 1, &[], None)
        .await
        .unwrap();
    let Some(ReadEvent::Event(first)) = first.first() else {
        panic!("the store has a readable first event")
    };
    let envelope = EventEnvelope::from(first);
    let mut tx = app.pool.begin().await.unwrap();
    let refused = AuditProjection::default()
        .apply_batch(&mut tx, &[&envelope])
        .await
        .expect_err("the event is in this generation already");
    assert!(
        refused.to_string().contains("already has an audit entry"),
        "{refused}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(wait_for_audit(&app.pool).await, entries);
    app.stop().await;
}

#[tokio::test]
async fn the_audit_tables_refuse_update_delete_and_truncate() {
    let app = TestApp::spawn().await;
    app.user_with_role("auditor@example.com", "auditor").await;
    wait_for_audit(&app.pool).await;
    sqlx::query(
        "insert into audit.checkpoints (seq, head_hash, signed_at, kid, signature) \
         values (1, 'x', now(), 'k', 's')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    for (table, column) in [
        ("audit.entries", "hash"),
        ("audit.checkpoints", "head_hash"),
        ("audit.generations", "reason"),
    ] {
        for statement in [
            format!("update {table} set {column} = 'rewritten'"),
            format!("delete from {table}"),
            format!("truncate {table} cascade"),
        ] {
            let err = sqlx::query(&statement)
                .execute(&app.pool)
                .await
                .expect_err(&statement);
            assert!(
                err.to_string().contains("append-only"),
                "{statement}: {err}"
            );
        }
    }
    let entries: i64 = sqlx::query_scalar("select count(*) from audit.entries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(entries > 0, "every entry is still there");
    app.stop().await;
}

#[tokio::test]
async fn a_task_as_of_a_moment_between_two_updates_is_what_the_api_answered_then() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    let before_creation = Utc::now();
    let id = app.create_task(&alice, "first title").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/tasks/{id}");
    let mut seen: Vec<(DateTime<Utc>, Value)> = Vec::new();
    for change in [
        Some((
            Method::PATCH,
            path.clone(),
            json!({"title": "second title"}),
        )),
        Some((
            Method::PATCH,
            format!("{path}/complete"),
            json!({"completed": true}),
        )),
        None,
    ] {
        let answered = get_json(&app, &alice, &path).await;
        seen.push((Utc::now(), answered));
        if let Some((method, path, body)) = change {
            let response = app.send(method, &path, &alice, Some(body)).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    }
    let fields = [
        "title",
        "description",
        "completed",
        "is_deleted",
        "deleted_at",
        "project_id",
        "due_at",
        "created_at",
        "updated_at",
        "version",
    ];
    for (at, answered) in &seen {
        let as_of = at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let past = get_json(
            &app,
            &auditor,
            &format!("/v1/audit/aggregates/Task/{id}?as_of={as_of}"),
        )
        .await;
        assert_eq!(past["aggregate_type"], "Task");
        assert_eq!(past["sequence"], answered["version"]);
        for field in fields {
            assert_eq!(
                past["state"][field], answered[field],
                "{field} as of {as_of}"
            );
        }
    }
    let by_sequence = get_json(
        &app,
        &auditor,
        &format!("/v1/audit/aggregates/Task/{id}?sequence=2"),
    )
    .await;
    assert_eq!(by_sequence["state"]["title"], "second title");
    assert_eq!(by_sequence["state"]["completed"], false);
    let latest = get_json(&app, &auditor, &format!("/v1/audit/aggregates/Task/{id}")).await;
    assert_eq!(latest["sequence"], 3);
    assert_eq!(latest["state"]["completed"], true);
    let before = get_json(
        &app,
        &auditor,
        &format!(
            "/v1/audit/aggregates/Task/{id}?as_of={}",
            before_creation.to_rfc3339_opts(SecondsFormat::Micros, true)
        ),
    )
    .await;
    assert_eq!(before["sequence"], 0);
    assert_eq!(before["state"]["exists"], false);

    // Both bounds: the events that meet both.
    let both = get_json(
        &app,
        &auditor,
        &format!("/v1/audit/aggregates/Task/{id}?sequence=2&as_of=2999-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(both["sequence"], 2);
    assert_eq!(both["state"]["title"], "second title");

    for (query, status) in [
        (
            format!("/v1/audit/aggregates/Task/{id}?sequence=0"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/v1/audit/aggregates/Task/{id}?as_of=yesterday"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/v1/audit/aggregates/Nope/{id}"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/v1/audit/aggregates/Task/{}", uuid::Uuid::new_v4()),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let response = get(&app, &auditor, &query).await;
        assert_eq!(response.status(), status, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    app.stop().await;
}

/// The resident set size of this process (the server runs in it too).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Reads a streamed body chunk by chunk into `sink`; returns bytes read and
/// the highest RSS seen on the way.
async fn drain(mut response: reqwest::Response, mut sink: impl FnMut(&[u8])) -> (u64, u64) {
    let (mut bytes, mut peak) = (0u64, rss_bytes());
    let mut since_sample = 0usize;
    while let Some(chunk) = response.chunk().await.expect("body chunk") {
        bytes += chunk.len() as u64;
        since_sample += chunk.len();
        if since_sample > 512 * 1024 {
            peak = peak.max(rss_bytes());
            since_sample = 0;
        }
        sink(&chunk);
    }
    (bytes, peak.max(rss_bytes()))
}

const BULK_EVENTS: i64 = 100_000;
const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn an_export_of_100k_events_streams_with_flat_memory_and_parses_as_csv() {
    // Sign an auditor up with the whole pipeline, then fill the store behind
    // an API-only server: no relay, so the bulk never reaches the projections.
    let app = TestApp::spawn().await;
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    wait_for_projections(&app.pool).await;
    wait_for_audit(&app.pool).await;
    let settings = app.settings.clone();
    app.stop_keeping_data().await;
    let pool = PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.database.url))
        .await
        .unwrap();
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         select 'Task', gen_random_uuid()::text, 1, 'TaskCreated', '1.0', \
           jsonb_build_object('TaskCreated', jsonb_build_object( \
             'owner_id', $1::text, 'title', 'bulk, \"quoted\" task ' || n, 'description', null, \
             'project_id', null, 'due_at', null, \
             'created_at', to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))), \
           jsonb_build_object('actor_id', $1::text, 'actor_roles', 'user', \
             'request_id', gen_random_uuid()::text, 'correlation_id', gen_random_uuid()::text, \
             'causation_id', gen_random_uuid()::text, 'client_ip', '127.0.0.1', \
             'user_agent', 'Mozilla/5.0 (X11; Linux), \"bulk\"', \
             'occurred_at', to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) \
         from generate_series(1, $2) n",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(BULK_EVENTS)
    .execute(&pool)
    .await
    .unwrap();
    let app = TestApp::spawn_components(
        settings,
        Components {
            api: true,
            relay: false,
            projections: false,
        },
    )
    .await;
    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    // CSV export, written to a file as it arrives.
    let baseline = rss_bytes();
    let response = get(&app, &auditor, "/v1/audit/export?format=csv").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let path = std::env::temp_dir().join(format!("chronicle-export-{}.csv", uuid::Uuid::new_v4()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let (bytes, peak) = drain(response, |chunk| file.write_all(chunk).unwrap()).await;
    file.flush().unwrap();
    drop(file);
    assert!(bytes > 80 * MIB, "the export is large ({bytes} bytes)");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 40 * MIB,
        "memory grew by {} MiB while streaming {} MiB",
        growth / MIB,
        bytes / MIB
    );

    let mut reader = csv::Reader::from_path(&path).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header, chronicle::audit::export::COLUMNS);
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (payload, user_agent, seq) = (column("payload"), column("actor_user_agent"), column("seq"));
    let mut records = 0i64;
    let mut bulk = 0i64;
    for record in reader.records() {
        let record = record.expect("a well-formed CSV record");
        assert_eq!(record.len(), header.len());
        let body: Value = serde_json::from_str(&record[payload]).expect("payload is JSON");
        if body["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("bulk, \"quoted\" task "))
        {
            bulk += 1;
            assert_eq!(&record[user_agent], "Mozilla/5.0 (X11; Linux), \"bulk\"");
            assert_eq!(&record[seq], "", "not in the trail yet");
        } else if &record[column("event_type")] != "AuditQueried" {
            // This server runs no projection: only its own audit queries are not in the trail.
            assert!(
                !record[seq].is_empty(),
                "audited before the bulk: {record:?}"
            );
        }
        records += 1;
    }
    std::fs::remove_file(&path).unwrap();
    assert_eq!(bulk, BULK_EVENTS);
    assert!(records >= total, "{records} of {total} events");

    // The event history as NDJSON, parsed line by line as it arrives.
    let baseline = rss_bytes();
    let response = app
        .client
        .get(app.url("/v1/audit/events?aggregate_type=Task"))
        .bearer_auth(&auditor.token)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut partial = Vec::new();
    let (mut lines, mut last_position) = (0i64, 0i64);
    let (bytes, peak) = drain(response, |chunk| {
        partial.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = partial[start..].iter().position(|b| *b == b'\n') {
            let envelope: Value = serde_json::from_slice(&partial[start..start + end]).unwrap();
            let position = envelope["global_position"].as_i64().unwrap();
            assert!(position > last_position, "oldest first");
            last_position = position;
            lines += 1;
            start += end + 1;
        }
        partial.drain(..start);
    })
    .await;
    assert!(partial.is_empty());
    assert_eq!(lines, BULK_EVENTS);
    assert!(bytes > 40 * MIB);
    assert!(peak.saturating_sub(baseline) < 40 * MIB, "flat memory");

    // NDJSON export: same lines, JSON objects.
    let response = get(&app, &auditor, "/v1/audit/export?format=ndjson&limit=1000").await;
    let text = response.text().await.unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1000);
    assert!(rows
        .iter()
        .all(|r| r["payload"].is_object() && r["metadata"].is_object()));
    app.stop().await;
}

#[tokio::test]
async fn only_auditors_and_admins_reach_the_audit_routes_and_every_query_is_recorded() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let task = app.create_task(&alice, "private").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    let admin = app.user_with_role("admin@example.com", "admin").await;
    let routes = [
        "/v1/audit/events".to_string(),
        "/v1/audit/log".to_string(),
        "/v1/audit/verify".to_string(),
        "/v1/audit/checkpoints".to_string(),
        format!("/v1/audit/aggregates/Task/{task}"),
        "/v1/audit/export?format=csv".to_string(),
    ];
    for route in &routes {
        let anonymous = app.client.get(app.url(route)).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{route}");
        let body: Value = anonymous.json().await.unwrap();
        assert_eq!(body["error"]["code"], "AUTH_REQUIRED");
        let plain = get(&app, &alice, route).await;
        assert_eq!(plain.status(), StatusCode::FORBIDDEN, "{route}");
        let body: Value = plain.json().await.unwrap();
        assert_eq!(body["error"]["code"], "FORBIDDEN");
    }
    let recorded = || async {
        sqlx::query_as::<_, (Value, Value)>(
            "select payload -> 'AuditQueried', metadata from events \
             where event_type = 'AuditQueried' order by global_position",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    assert!(
        recorded().await.is_empty(),
        "refused attempts are not queries"
    );

    for user in [&auditor, &admin] {
        for route in &routes {
            let response = get(&app, user, route).await;
            assert_eq!(response.status(), StatusCode::OK, "{route}");
            response.bytes().await.unwrap();
        }
    }
    let filtered = get(
        &app,
        &auditor,
        "/v1/audit/events?aggregate_type=Task&limit=5",
    )
    .await;
    assert_eq!(filtered.status(), StatusCode::OK);

    let queries = recorded().await;
    assert_eq!(
        queries.len(),
        routes.len() * 2 + 1,
        "each query is an event"
    );
    let (payload, metadata) = queries.last().unwrap();
    assert_eq!(payload["auditor_id"], json!(auditor.id));
    assert_eq!(payload["route"], "GET /v1/audit/events");
    assert_eq!(
        payload["filters"],
        json!({"aggregate_type": "Task", "limit": "5", "offset": "0"})
    );
    assert_eq!(metadata["actor_id"], json!(auditor.id.to_string()));
    assert!(metadata["actor_roles"]
        .as_str()
        .unwrap()
        .contains("auditor"));
    let routes_recorded: Vec<&str> = queries
        .iter()
        .map(|(p, _)| p["route"].as_str().unwrap())
        .collect();
    assert!(routes_recorded.contains(&"GET /v1/audit/aggregates/{aggregate_type}/{aggregate_id}"));
    assert!(routes_recorded.contains(&"GET /v1/audit/export"));
    app.stop().await;
}

#[tokio::test]
async fn audit_queries_filter_page_and_refuse_bad_parameters() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let bob = app.register("bob@example.com").await;
    let mine = app.create_task(&alice, "alice's").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.send(
        Method::PATCH,
        &format!("/v1/tasks/{mine}"),
        &alice,
        Some(json!({"title": "alice's, renamed"})),
    )
    .await;
    app.create_task(&bob, "bob's").await;
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    wait_for_audit(&app.pool).await;

    let response = get(
        &app,
        &auditor,
        &format!("/v1/audit/log?aggregate_id={mine}"),
    )
    .await;
    assert_eq!(response.headers()["x-total-count"], "2");
    let entries: Vec<Value> = response.json().await.unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["TaskCreated", "TaskUpdated"]);
    assert!(entries[0]["seq"].as_i64() < entries[1]["seq"].as_i64());

    let by_actor: Vec<Value> = get_json(
        &app,
        &auditor,
        &format!(
            "/v1/audit/events?actor_id={}&event_type=TaskCreated",
            bob.id
        ),
    )
    .await
    .as_array()
    .unwrap()
    .clone();
    assert_eq!(by_actor.len(), 1);
    assert_eq!(by_actor[0]["payload"]["title"], "bob's");
    assert_eq!(
        by_actor[0]["metadata"]["actor_id"],
        json!(bob.id.to_string())
    );

    // Paging by position sees every Task event once.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = get_json(
            &app,
            &auditor,
            &format!("/v1/audit/events?aggregate_type=Task&limit=1&after_position={after}"),
        )
        .await;
        let Some(event) = page.as_array().unwrap().first().cloned() else {
            break;
        };
        after = event["global_position"].as_i64().unwrap();
        seen.push(event["event_type"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["TaskCreated", "TaskUpdated", "TaskCreated"]);

    let future = get_json(&app, &auditor, "/v1/audit/log?from=2999-01-01T00:00:00Z").await;
    assert_eq!(future, json!([]));
    let inverted = get_json(
        &app,
        &auditor,
        "/v1/audit/events?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(inverted, json!([]), "an inverted range is empty");
    for bad in [
        "/v1/audit/log?limit=0",
        "/v1/audit/log?limit=101",
        "/v1/audit/log?offset=-1",
        "/v1/audit/log?colour=blue",
        "/v1/audit/events?after_position=-5",
        "/v1/audit/export?format=xml",
        "/v1/audit/export",
        "/v1/audit/checkpoints?limit=1000",
    ] {
        let response = get(&app, &auditor, bad).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{bad}");
    }

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
        "/v1/audit/events",
        "/v1/audit/log",
        "/v1/audit/verify",
        "/v1/audit/checkpoints",
        "/v1/audit/aggregates/{aggregate_type}/{aggregate_id}",
        "/v1/audit/export",
    ] {
        let operation = &spec["paths"][path]["get"];
        assert!(operation.is_object(), "{path} in the spec");
        assert_eq!(operation["security"], json!([{"bearer": []}]), "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_cli_verifies_with_a_saved_jwks_names_the_first_bad_seq_and_exports() {
    let mut settings = test_settings().await;
    settings.audit.checkpoint_every = 2;
    let app = TestApp::spawn_with(settings).await;
    let alice = app.register("alice@example.com").await;
    for n in 0..3 {
        app.create_task(&alice, &format!("task {n}")).await;
    }
    let count = wait_for_audit(&app.pool).await;
    eventually(Duration::from_secs(10), "a checkpoint", || async {
        let n: i64 = sqlx::query_scalar("select count(*) from audit.checkpoints")
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (n > 0).then_some(())
    })
    .await;
    let jwks = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = app.settings.data_dir.join("auditor");
    std::fs::create_dir_all(&dir).unwrap();
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks).unwrap();
    let cli = |args: &[&str]| {
        use secrecy::ExposeSecret;
        Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(args)
            .env("DATABASE_URL", app.settings.database.url.expose_secret())
            .env("CHRONICLE_DATA_DIR", &app.settings.data_dir)
            .env("CHRONICLE_LOG", "warn")
            .output()
            .expect("run chronicle")
    };
    let jwks_arg = jwks_file.to_str().unwrap();
    let ok = cli(&["audit", "verify", "--jwks", jwks_arg]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("ok: the audit trail verifies"), "{stdout}");

    let export = dir.join("export.csv");
    let exported = cli(&[
        "audit",
        "export",
        "--format",
        "csv",
        "--output",
        export.to_str().unwrap(),
    ]);
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let mut reader = csv::Reader::from_path(&export).unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert!(records.len() as i64 >= count);
    let seqs: Vec<i64> = records.iter().filter_map(|r| r[0].parse().ok()).collect();
    assert_eq!(seqs[..count as usize], (1..=count).collect::<Vec<_>>()[..]);

    as_superuser(
        &app.pool,
        "audit.entries",
        "audit_entries_append_only",
        "update audit.entries set hash = $1 where seq = 3 \
           and generation = (select max(generation) from audit.generations)",
        &"f".repeat(64),
    )
    .await;
    let failed = cli(&["audit", "verify", "--jwks", jwks_arg, "--json"]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("first bad seq 3"), "{stderr}");
    let report: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(report["first_bad_seq"], 3);

    // Both CLI runs were recorded as audit queries too.
    let cli_queries: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "select payload -> 'AuditQueried' ->> 'route', count(*) from events \
         where event_type = 'AuditQueried' group by 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(cli_queries.get("cli audit verify"), Some(&2));
    assert_eq!(cli_queries.get("cli audit export"), Some(&1));
    app.stop().await;
}

/// Time travel covers every aggregate, not only the first four.
#[tokio::test]
async fn a_project_is_rebuilt_at_a_past_sequence_like_the_first_four_aggregate_types() {
    let app = TestApp::spawn().await;
    let user = app.register("travel-project@example.com").await;
    let auditor = app
        .user_with_role("travel-auditor@example.com", "auditor")
        .await;
    let created = app
        .send(
            Method::POST,
            "/v1/projects",
            &user,
            Some(json!({"name": "First name"})),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let renamed = app
        .send(
            Method::PUT,
            &format!("/v1/projects/{id}"),
            &user,
            Some(json!({"name": "Second name"})),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);

    let first = get_json(
        &app,
        &auditor,
        &format!("/v1/audit/aggregates/Project/{id}?sequence=1"),
    )
    .await;
    assert_eq!(first["sequence"], 1);
    assert_eq!(first["state"]["name"], "First name");
    let latest = get_json(
        &app,
        &auditor,
        &format!("/v1/audit/aggregates/Project/{id}"),
    )
    .await;
    assert_eq!(latest["state"]["name"], "Second name");
    app.stop().await;
}
