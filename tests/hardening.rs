//! Faults a hostile or broken client can cause: connections that never finish
//! their request head or never read their answer, methods invented to grow
//! `/metrics`, formulas smuggled into the CSV export, and streams that hold
//! database connections; a Postgres that is not up yet when the server starts.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chronicle::{Components, Settings};
use common::{
    eventually, test_settings, wait_for_audit, wait_for_projections, TestApp, TestUser,
    TEST_PASSWORD,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const API_ONLY: Components = Components {
    api: true,
    relay: false,
    projections: false,
};

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// A connection with a small receive buffer, so that a response it does not
/// read fills up quickly.
async fn connect(app: &TestApp) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr(app)).await.unwrap()
}

/// A client that sends half a header line and then nothing.
async fn half_sent_header(app: &TestApp) -> TcpStream {
    let mut stream = connect(app).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaa")
        .await
        .unwrap();
    stream
}

/// Reads until the server closes the connection; `None` if it is still
/// open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    tokio::time::timeout(within, async {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| received)
}

/// `GET /health` with a fresh client (no pooled connection) and a deadline.
async fn health(app: &TestApp, within: Duration) -> Result<StatusCode, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(within)
        .build()
        .unwrap()
        .get(app.url("/health"))
        .send()
        .await
        .map(|response| response.status())
}

#[tokio::test]
async fn a_client_that_sends_half_a_header_line_is_disconnected_after_the_header_read_timeout() {
    let mut settings = test_settings().await;
    settings.http.header_read_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_components(settings, API_ONLY).await;

    let started = Instant::now();
    let mut stalled = half_sent_header(&app).await;
    let received = closed_within(&mut stalled, Duration::from_secs(10))
        .await
        .expect("the server closes a connection whose head never completes");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after the timeout, not before ({waited:?})"
    );
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "the half-sent request was not served"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_connection_that_moves_no_byte_for_the_idle_timeout_is_closed() {
    let mut settings = test_settings().await;
    settings.http.idle_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_components(settings, API_ONLY).await;

    // A complete head announcing a body that never comes: the handler waits
    // for it (up to the 30 s request timeout), no byte moves.
    let mut stalled = connect(&app).await;
    stalled
        .write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\"",
        )
        .await
        .unwrap();
    let received = closed_within(&mut stalled, Duration::from_secs(10))
        .await
        .expect("the idle connection is closed well before the request timeout");
    assert!(received.is_empty(), "closed without an answer");
    app.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_another_client_waits_until_a_connection_closes() {
    let mut settings = test_settings().await;
    settings.http.max_connections = 2;
    settings.http.header_read_timeout = Duration::from_secs(60);
    let app = TestApp::spawn_components(settings, API_ONLY).await;
    assert_eq!(
        health(&app, Duration::from_secs(5)).await.unwrap(),
        StatusCode::OK
    );

    let first = half_sent_header(&app).await;
    let second = half_sent_header(&app).await;
    let refused = health(&app, Duration::from_millis(700)).await;
    assert!(
        refused.is_err(),
        "two stalled connections fill a cap of two: {refused:?}"
    );

    drop(first);
    let status = eventually(
        Duration::from_secs(10),
        "a free connection slot",
        || async { health(&app, Duration::from_secs(1)).await.ok() },
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    drop(second);
    app.stop().await;
}

#[tokio::test]
async fn stalled_clients_filling_the_cap_are_dropped_by_the_header_timeout_and_health_answers() {
    let mut settings = test_settings().await;
    settings.http.max_connections = 4;
    settings.http.header_read_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_components(settings, API_ONLY).await;

    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(half_sent_header(&app).await);
    }
    let started = Instant::now();
    assert_eq!(
        health(&app, Duration::from_secs(15)).await.unwrap(),
        StatusCode::OK
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(stalled);
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the app stops");
}

#[tokio::test]
async fn a_stalled_half_sent_header_does_not_hold_shutdown_beyond_the_grace_period() {
    let mut settings = test_settings().await;
    settings.http.header_read_timeout = Duration::from_secs(600);
    settings.http.shutdown_grace = Duration::from_secs(1);
    let app = TestApp::spawn_components(settings, API_ONLY).await;
    let _stalled = half_sent_header(&app).await;
    // The server has the connection before shutdown starts.
    assert_eq!(
        health(&app, Duration::from_secs(5)).await.unwrap(),
        StatusCode::OK
    );

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("shutdown completes despite the stalled connection");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn requests_with_many_invented_methods_leave_only_a_fixed_set_of_method_labels() {
    let app = TestApp::spawn_components(test_settings().await, API_ONLY).await;
    for index in 0..300 {
        let invented = format!("X{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let method = Method::from_bytes(invented.to_uppercase().as_bytes()).unwrap();
        let path = if index % 2 == 0 {
            "/health"
        } else {
            "/v1/tasks"
        };
        let response = app
            .client
            .request(method, app.url(path))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
    }
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let allowed = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (start, _) in metrics.match_indices("method=\"") {
        let value = &metrics[start + 8..];
        let value = &value[..value.find('"').unwrap()];
        seen.insert(value.to_string());
    }
    assert!(
        seen.contains("OTHER"),
        "invented methods are counted: {seen:?}"
    );
    for value in &seen {
        assert!(allowed.contains(&value.as_str()), "unbounded label {value}");
    }
    app.stop().await;
}

/// Parses a CSV export into its header and records.
fn parse_csv(text: &str) -> (Vec<String>, Vec<csv::StringRecord>) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let records = reader.records().map(|r| r.unwrap()).collect();
    (header, records)
}

#[tokio::test]
async fn a_user_agent_formula_is_neutralised_in_the_csv_export_and_verbatim_in_ndjson() {
    let app = TestApp::spawn().await;
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    let user_agent = r#"=HYPERLINK("http://evil.example/","click")"#;
    let correlation = "@SUM(1+1)*cmd|' /C calc'!A0";
    let response = app
        .client
        .post(app.url("/v1/auth/register"))
        .header("user-agent", user_agent)
        .header("x-correlation-id", correlation)
        .json(&json!({"email": "mallory@example.com", "password": TEST_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let response = app
        .client
        .get(app.url("/v1/audit/export?format=csv"))
        .bearer_auth(&auditor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(",=HYPERLINK") && !text.contains(",\"=HYPERLINK"),
        "no cell starts with the formula"
    );
    let (header, records) = parse_csv(&text);
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (agent, correlation_id) = (column("actor_user_agent"), column("correlation_id"));
    let mallory: Vec<_> = records
        .iter()
        .filter(|r| r[agent].contains("HYPERLINK"))
        .collect();
    assert!(!mallory.is_empty(), "the registration is exported");
    for record in &mallory {
        assert_eq!(record[agent], format!("'{user_agent}"));
        assert_eq!(record[correlation_id], format!("'{correlation}"));
    }
    for record in &records {
        for cell in record {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a cell a spreadsheet would evaluate: {cell}"
            );
        }
    }

    // NDJSON stays verbatim: its values are what the digests are over.
    let text = app
        .client
        .get(app.url("/v1/audit/export?format=ndjson"))
        .bearer_auth(&auditor.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["actor_user_agent"] == user_agent && l["correlation_id"] == correlation));
    app.stop().await;
}

const BULK_EVENTS: i64 = 20_000;

/// An app (relay, projections, API) with `settings` whose event store holds
/// enough events that an export a client does not read stalls with its query
/// running. The bulk is inserted while the app is stopped and the relay's
/// checkpoint moved past it, so only exports see it.
async fn app_with_a_large_export(settings: Settings) -> (TestApp, TestUser) {
    let app = TestApp::spawn_with(settings.clone()).await;
    let auditor = app.user_with_role("auditor@example.com", "auditor").await;
    wait_for_projections(&app.pool).await;
    wait_for_audit(&app.pool).await;
    app.stop_keeping_data().await;

    let pool = PgPool::connect(secrecy::ExposeSecret::expose_secret(&settings.database.url))
        .await
        .unwrap();
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         select 'Task', gen_random_uuid()::text, 1, 'TaskCreated', '1.0', \
           jsonb_build_object('TaskCreated', jsonb_build_object('owner_id', $1::text, \
             'title', 'bulk task ' || n || repeat('.', 400), 'description', null, \
             'project_id', null, 'due_at', null, 'created_at', '2026-01-01T00:00:00.000000Z')), \
           jsonb_build_object('actor_id', $1::text, 'actor_roles', 'user', \
             'request_id', gen_random_uuid()::text, 'client_ip', '127.0.0.1', \
             'user_agent', 'bulk', 'occurred_at', '2026-01-01T00:00:00.000000Z') \
         from generate_series(1, $2) n",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(BULK_EVENTS)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "update relay_checkpoints set (transaction_id, global_position) = \
           (select transaction_id, global_position from events \
             order by transaction_id desc, global_position desc limit 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let app = TestApp::spawn_with(settings).await;
    (app, auditor)
}

/// Sends `GET path` and reads only the response head; the body is left
/// unread. Returns the head and the connection.
async fn open_unread(app: &TestApp, user: &TestUser, path: &str) -> (String, TcpStream) {
    let mut stream = connect(app).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        user.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert!(n > 0, "closed before the head");
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap(), stream)
}

fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Export queries running in the app's database.
async fn running_exports(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
           and state = 'active' and query like '%left join audit.entries a%' \
           and pid <> pg_backend_pid()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn more_unread_exports_than_the_pool_has_connections_leave_logins_working() {
    let mut settings = test_settings().await;
    settings.database.max_connections = 8;
    settings.http.shutdown_grace = Duration::from_secs(1);
    let (app, auditor) = app_with_a_large_export(settings).await;

    let mut open = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (head, stream) = open_unread(&app, &auditor, "/v1/audit/export?format=csv").await;
        let status = status_of(&head);
        if status == 503 {
            assert!(
                head.to_ascii_lowercase().contains("retry-after:"),
                "503 with Retry-After: {head}"
            );
        }
        statuses.push(status);
        open.push(stream);
    }
    let login = app
        .post_anonymous(
            "/v1/auth/login",
            json!({"email": auditor.email, "password": TEST_PASSWORD}),
        )
        .await;
    assert_eq!(login.status(), StatusCode::OK);
    let registration = app
        .post_anonymous(
            "/v1/auth/register",
            json!({"email": "newcomer@example.com", "password": TEST_PASSWORD}),
        )
        .await;
    assert_eq!(registration.status(), StatusCode::CREATED);
    let streaming = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        streaming, 2,
        "a quarter of the 8-connection pool streams: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    eventually(Duration::from_secs(10), "two stalled exports", || async {
        (running_exports(&app.pool).await == 2).then_some(())
    })
    .await;

    drop(open);
    app.stop().await;
}

#[tokio::test]
async fn an_unread_export_is_abandoned_after_the_send_timeout_freeing_its_connection_and_slot() {
    let mut settings = test_settings().await;
    settings.database.max_connections = 8;
    settings.http.max_streams = Some(1);
    settings.http.stream_send_timeout = Duration::from_secs(3);
    settings.http.shutdown_grace = Duration::from_secs(1);
    let (app, auditor) = app_with_a_large_export(settings).await;

    let (head, mut stalled) = open_unread(&app, &auditor, "/v1/audit/export?format=csv").await;
    assert_eq!(status_of(&head), 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    eventually(Duration::from_secs(10), "the export to stall", || async {
        (running_exports(&app.pool).await == 1).then_some(())
    })
    .await;

    // Abandoned once a chunk waits the send timeout: its slot (the only
    // one) is free again and a one-row export is answered instead of 503.
    // Not the query ending: Postgres may have sent every row into the socket
    // buffers long before that (it did once, and the client then read a
    // complete answer from a producer that was still waiting, not abandoned).
    let next_export = eventually(
        Duration::from_secs(20),
        "the stalled export to be abandoned",
        || async {
            let probe = app
                .client
                .get(app.url("/v1/audit/export?format=ndjson&limit=1"))
                .bearer_auth(&auditor.token)
                .send()
                .await
                .unwrap();
            match probe.status() {
                StatusCode::SERVICE_UNAVAILABLE => None,
                StatusCode::OK => Some(probe.text().await.unwrap()),
                other => panic!("the probing export answered {other}"),
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the stalled export's query to end",
        || async { (running_exports(&app.pool).await == 0).then_some(()) },
    )
    .await;
    // The body the client still has buffered ends without the last chunk:
    // it cannot be mistaken for a complete export.
    let rest = closed_within(&mut stalled, Duration::from_secs(20))
        .await
        .expect("the abandoned answer's connection is closed");
    assert!(!rest.ends_with(b"\r\n0\r\n\r\n"), "cut short, not complete");
    // Its slot was free again: the next export was answered in full.
    assert_eq!(next_export.lines().count(), 1, "{next_export}");
    app.stop().await;
}

#[tokio::test]
async fn when_every_stream_slot_is_busy_an_ndjson_history_answers_503_at_once() {
    let mut settings = test_settings().await;
    settings.database.max_connections = 8;
    settings.http.max_streams = Some(1);
    settings.http.shutdown_grace = Duration::from_secs(1);
    let (app, auditor) = app_with_a_large_export(settings).await;

    let (head, _stalled) = open_unread(&app, &auditor, "/v1/audit/export?format=csv").await;
    assert_eq!(status_of(&head), 200);
    let started = Instant::now();
    let response = app
        .client
        .get(app.url("/v1/audit/events"))
        .bearer_auth(&auditor.token)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "at once");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    // A JSON page needs no stream slot.
    let page = app
        .client
        .get(app.url("/v1/audit/events?limit=5"))
        .bearer_auth(&auditor.token)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_json_body_that_is_not_an_object_is_a_422_on_every_route_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let user = app.register("not-an-object@example.com").await;
    let task = app.create_task(&user, "stays as it is").await;
    let task_path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
    let events_before: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let routes = [
        (Method::POST, "/v1/auth/register".to_string()),
        (Method::POST, "/v1/auth/login".to_string()),
        (Method::POST, "/v1/auth/refresh".to_string()),
        (Method::POST, "/v1/auth/logout".to_string()),
        (Method::POST, "/v1/auth/change-password".to_string()),
        (Method::PUT, "/v1/user/profile".to_string()),
        (Method::POST, "/v1/user/profile/reset-api-key".to_string()),
        (Method::POST, "/v1/tasks".to_string()),
        (Method::PUT, task_path.clone()),
        (Method::PATCH, task_path.clone()),
        (Method::PATCH, format!("{task_path}/complete")),
        (Method::POST, "/v1/projects".to_string()),
        (Method::POST, "/v1/sessions".to_string()),
        (Method::POST, "/v1/mcp/servers".to_string()),
    ];
    for (method, path) in &routes {
        for body in [
            json!(["stays as it is"]),
            json!("a string"),
            json!(42),
            json!(null),
        ] {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(&user.token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{method} {path} {body}"
            );
            let error: Value = response.json().await.unwrap();
            assert_eq!(
                error["error"]["code"], "VALIDATION_ERROR",
                "{method} {path}"
            );
        }
    }
    let events_after: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events_before, events_after, "a refused body wrote an event");
    app.stop().await;
}

#[tokio::test]
async fn every_metric_on_metrics_is_described_with_help_and_type() {
    let app = TestApp::spawn().await;
    let user = app.register("metrics-help@example.com").await;
    app.create_task(&user, "counted").await;
    app.wait_for_projections().await;
    let metrics = eventually(
        Duration::from_secs(20),
        "relay and projection metrics",
        || async {
            let text = app
                .client
                .get(app.url("/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (text.contains("chronicle_relay_published_events_total")
                && text.contains("chronicle_projection_events_total"))
            .then_some(text)
        },
    )
    .await;
    let typed: Vec<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(typed.len() >= 8, "{metrics}");
    for name in typed {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no # HELP line"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_detailed_health_shows_each_component_the_relay_and_every_projection() {
    let app = TestApp::spawn().await;
    let developer = app.register("developer-health@example.com").await;
    let developer = app.grant_role(&developer, "developer").await;
    app.create_task(&developer, "something to relay").await;
    app.wait_for_projections().await;
    let health: Value = eventually(Duration::from_secs(20), "the relay caught up", || async {
        let health: Value = app
            .send_json(Method::GET, "/v1/debug/health/detailed", &developer, None)
            .await;
        (health["relay"]["lag_events"] == 0).then_some(health)
    })
    .await;
    for component in ["postgres", "nats"] {
        assert_eq!(health[component]["status"], "ok", "{health}");
        assert!(health[component]["latency_ms"].as_f64().unwrap() >= 0.0);
    }
    assert!(health["relay"]["global_position"].as_i64().unwrap() > 0);
    assert_eq!(
        health["relay"]["global_position"],
        health["relay"]["head_position"]
    );
    assert_eq!(health["pool"]["max"], app.settings.database.max_connections);
    let listed: Vec<&str> = health["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["state"], "running", "{p}");
            p["name"].as_str().unwrap()
        })
        .collect();
    for projection in chronicle_projections::all_projections() {
        assert!(
            listed.contains(&projection.name()),
            "{} missing",
            projection.name()
        );
    }
    assert_eq!(health["build"]["version"], env!("CARGO_PKG_VERSION"));
    app.stop().await;
}

#[tokio::test]
async fn one_user_holds_at_most_the_configured_event_feeds_and_a_closed_one_frees_its_place() {
    let fake = common::fake_llm::FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    settings.http.max_feeds_per_user = 2;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("feeds@example.com").await;
    let other = app.register("feeds-other@example.com").await;
    let session = |who: TestUser| {
        let app = &app;
        async move {
            let created: Value = app
                .send_json(Method::POST, "/v1/sessions", &who, Some(json!({})))
                .await;
            format!("/v1/sessions/{}/events", created["id"].as_str().unwrap())
        }
    };
    let mine = session(user.clone()).await;
    let theirs = session(other.clone()).await;

    let mut open = Vec::new();
    for _ in 0..2 {
        let feed = app.send(Method::GET, &mine, &user, None).await;
        assert_eq!(feed.status(), StatusCode::OK);
        open.push(feed);
    }
    let refused = app.send(Method::GET, &mine, &user, None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    // Others are not affected.
    let their_feed = app.send(Method::GET, &theirs, &other, None).await;
    assert_eq!(their_feed.status(), StatusCode::OK);

    // A client that goes away gives its place back, with no event to notice it by.
    drop(open.pop());
    let reopened = eventually(Duration::from_secs(40), "a freed feed place", || async {
        let feed = app.send(Method::GET, &mine, &user, None).await;
        (feed.status() == StatusCode::OK).then_some(feed)
    })
    .await;
    drop(reopened);
    drop(open);
    drop(their_feed);
    app.stop().await;
}

/// Postgres stores no U+0000 in text or jsonb: such a string used to reach the
/// event store and answer 500. It is refused at the door, changing nothing.
#[tokio::test]
async fn a_string_holding_nul_is_refused_with_422_in_a_body_or_a_query_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let user = app.register("nul@example.com").await;
    let auditor = app
        .user_with_role("nul-auditor@example.com", "auditor")
        .await;
    for (path, body) in [
        (
            "/v1/projects",
            json!({"name": "p", "settings": {"a\u{0}": 1}}),
        ),
        (
            "/v1/projects",
            json!({"name": "p", "settings": {"k": ["a\u{0}b"]}}),
        ),
        ("/v1/tasks", json!({"title": "a\u{0}b"})),
    ] {
        let response = app
            .send(Method::POST, path, &user, Some(body.clone()))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "VALIDATION_ERROR");
    }
    // An escaped backslash before `u0000` is text, not NUL: accepted.
    let response = app
        .send(
            Method::POST,
            "/v1/tasks",
            &user,
            Some(json!({"title": "a\\u0000b"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let response = app
        .send(
            Method::GET,
            "/v1/audit/events?event_type=%00",
            &auditor,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let events_after: i64 = sqlx::query_scalar(
        "select count(*) from events where aggregate_type not in ('User', 'AuthSession')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(events_after, 1, "only the task with the escaped backslash");
    app.stop().await;
}

/// Forwards every connection to `127.0.0.1:listen_port` to `target`.
async fn forward(listen_port: u16, target: String) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen_port))
        .await
        .expect("the port is free again");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
}

#[tokio::test]
async fn start_up_waits_for_a_postgres_that_is_not_up_yet() {
    use secrecy::{ExposeSecret, SecretString};
    let log = common::log_capture::LogCapture::install();
    let mut settings = test_settings().await;
    let real = reqwest::Url::parse(settings.database.url.expose_secret()).unwrap();
    // A port nothing listens on, for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut late = real.clone();
    late.set_host(Some("127.0.0.1")).unwrap();
    late.set_port(Some(port)).unwrap();
    let real_settings = settings.clone();
    settings.database.url = SecretString::from(late.to_string());

    let connecting = tokio::spawn({
        let settings = settings.clone();
        async move { chronicle::startup::connect_database(&settings).await }
    });
    eventually(
        Duration::from_secs(10),
        "a refused attempt, logged",
        || async {
            log.contents()
                .contains("Postgres is not reachable yet; retrying")
                .then_some(())
        },
    )
    .await;
    assert!(!connecting.is_finished(), "still trying");
    // Postgres "comes up" at the configured address.
    forward(
        port,
        format!(
            "{}:{}",
            real.host_str().unwrap(),
            real.port().unwrap_or(5432)
        ),
    )
    .await;
    let pool = connecting.await.unwrap().expect("connected once it was up");
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
    pool.close().await;

    // A database that is up but refuses (one that does not exist) fails at once.
    let mut missing = real.clone();
    missing.set_path("/test_no_such_database");
    settings.database.url = SecretString::from(missing.to_string());
    let started = Instant::now();
    let err = chronicle::startup::connect_database(&settings)
        .await
        .expect_err("no such database");
    assert!(started.elapsed() < Duration::from_secs(5), "{err:#}");
    common::remove_test_resources(&real_settings).await;
}
