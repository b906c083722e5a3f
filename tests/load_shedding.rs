//! Overload as a designed behaviour: beyond the in-flight cap the API answers
//! 503 at once, an exhausted database pool answers 503 within its acquire
//! timeout, and a request body that trickles is cut at its deadline.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chronicle::Components;
use common::{eventually, test_settings, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

const API_ONLY: Components = Components {
    api: true,
    relay: false,
    projections: false,
};

/// A client that gives up after `within`, so "at once" is checked.
fn client(within: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(within).build().unwrap()
}

/// Status, error code and `Retry-After` of an error answer.
async fn error_of(response: reqwest::Response) -> (StatusCode, Value, Option<String>) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = response.json().await.expect("JSON error body");
    (status, body["error"].clone(), retry_after)
}

/// Backends of this test's database waiting for a lock.
async fn waiting_on_a_lock(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity \
         where datname = current_database() and wait_event_type = 'Lock'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn beyond_the_in_flight_cap_requests_get_503_at_once_while_health_answers_and_the_cap_frees_after(
) {
    let mut settings = test_settings().await;
    settings.http.max_in_flight = 2;
    let app = TestApp::spawn_components(settings, API_ONLY).await;

    // Any API-key lookup blocks until this transaction ends: two requests
    // with a key stay in flight, deterministically.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("lock table api_keys in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let request = client(Duration::from_secs(30))
                .get(app.url("/v1/tasks"))
                .header("x-api-key", format!("ck_{}", Uuid::new_v4().simple()));
            tokio::spawn(async move { request.send().await.map(|r| r.status()) })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "two requests held in flight",
        || async { (waiting_on_a_lock(&app).await >= 2).then_some(()) },
    )
    .await;

    let started = Instant::now();
    let shed = client(Duration::from_secs(3))
        .get(app.url("/v1/tasks"))
        .send()
        .await
        .expect("a request beyond the cap is answered at once, not queued");
    let (status, error, retry_after) = error_of(shed).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error["code"], "UNAVAILABLE");
    assert!(error["request_id"].is_string(), "the API's error format");
    assert!(retry_after.is_some(), "Retry-After on a shed request");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The OpenAI-compatible route sheds in OpenAI's shape too.
    let shed_chat = client(Duration::from_secs(3))
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let (status, error, retry_after) = error_of(shed_chat).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error["code"], "UNAVAILABLE");
    assert_eq!(error["type"], "api_error");
    assert!(retry_after.is_some());

    // Probes and the scraper are exempt, and the scraper sees the shedding.
    let health = client(Duration::from_secs(3))
        .get(app.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = client(Duration::from_secs(3))
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("# HELP chronicle_http_requests_shed_total"),
        "the shed counter is described"
    );
    let shed_count = metrics
        .lines()
        .find(|line| line.starts_with("chronicle_http_requests_shed_total"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse::<f64>().ok())
        .expect("chronicle_http_requests_shed_total on /metrics");
    assert!(
        shed_count >= 2.0,
        "both shed requests counted: {shed_count}"
    );

    // The held requests finish (they are answered, not shed), and the cap
    // admits requests again.
    lock.rollback().await.unwrap();
    for request in held {
        let status = request.await.unwrap().expect("a held request is answered");
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "an unknown key, not a 503"
        );
    }
    let admitted = client(Duration::from_secs(5))
        .get(app.url("/v1/tasks"))
        .send()
        .await
        .unwrap();
    let (status, error, _) = error_of(admitted).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["code"], "AUTH_REQUIRED");
    app.stop().await;
}

#[tokio::test]
async fn with_every_pooled_connection_taken_a_request_answers_503_within_the_acquire_timeout() {
    let mut settings = test_settings().await;
    settings.database.acquire_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("pool@example.com").await;
    let token = user.token.clone();
    let list = |within| {
        client(within)
            .get(app.url("/v1/tasks"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(
        list(Duration::from_secs(5)).await.unwrap().status(),
        StatusCode::OK
    );

    // Take every connection the pool will give: the last attempt is the
    // pool's own acquire timeout running out.
    let mut taken = Vec::new();
    loop {
        match app.pool.acquire().await {
            Ok(connection) => taken.push(connection),
            Err(sqlx::Error::PoolTimedOut) => break,
            Err(other) => panic!("acquiring: {other}"),
        }
    }

    let started = Instant::now();
    let listed = list(Duration::from_secs(10))
        .await
        .expect("answered within the acquire timeout, not left waiting");
    let (status, error, retry_after) = error_of(listed).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["code"], "UNAVAILABLE");
    assert!(retry_after.is_some(), "Retry-After on an exhausted pool");
    assert!(waited < Duration::from_secs(4), "bounded wait: {waited:?}");

    // Routes that reach the database without an identity check first
    // (which has its own 503) get the same answer from their own queries.
    for (path, body) in [
        (
            "/v1/auth/login",
            json!({"email": "pool@example.com", "password": common::TEST_PASSWORD}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "other@example.com", "password": common::TEST_PASSWORD}),
        ),
    ] {
        let started = Instant::now();
        let answered = client(Duration::from_secs(10))
            .post(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, error, retry_after) = error_of(answered).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {error}");
        assert_eq!(error["code"], "UNAVAILABLE", "{path}");
        assert!(retry_after.is_some(), "{path}");
        assert!(started.elapsed() < Duration::from_secs(4), "{path}");
    }

    drop(taken);
    assert_eq!(
        list(Duration::from_secs(5)).await.unwrap().status(),
        StatusCode::OK,
        "connections given back serve requests again"
    );
    app.stop().await;
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

/// Sends a login head announcing 1000 bytes and a few of them, then one
/// byte every 100 ms (`trickle`) or nothing more; returns what the server
/// answered before closing, and when it closed. `None`: still open after 10 s.
async fn slow_body(app: &TestApp, trickle: bool) -> Option<(String, Duration)> {
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"email\"",
        )
        .await
        .unwrap();
    let started = Instant::now();
    // A byte every 100 ms keeps the connection busy (the idle timeout never
    // fires) while the body would take 100 s to arrive.
    let sender = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            if trickle && writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    sender.abort();
    received.ok().map(|bytes| {
        (
            String::from_utf8_lossy(&bytes).into_owned(),
            started.elapsed(),
        )
    })
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_or_stalled_is_cut_with_503_at_the_body_read_timeout() {
    let mut settings = test_settings().await;
    settings.http.body_read_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_components(settings, API_ONLY).await;

    for trickle in [true, false] {
        let (text, waited) = slow_body(&app, trickle)
            .await
            .expect("the slow request is cut well before the request and idle timeouts");
        assert!(
            text.starts_with("HTTP/1.1 503"),
            "a 503 answer before the close (trickle: {trickle}): {text}"
        );
        assert!(
            text.contains("\"UNAVAILABLE\""),
            "the API's error format: {text}"
        );
        assert!(text.to_ascii_lowercase().contains("connection: close"));
        assert!(
            waited >= Duration::from_millis(900),
            "not before the deadline ({waited:?})"
        );
        assert!(
            waited < Duration::from_secs(5),
            "at the deadline ({waited:?})"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_body_sent_in_pieces_within_the_body_read_timeout_is_served() {
    let mut settings = test_settings().await;
    settings.http.body_read_timeout = Duration::from_secs(5);
    let app = TestApp::spawn_components(settings, API_ONLY).await;
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();

    let body = br#"{"email": "nobody@example.com", "password": "wrong password"}"#;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/auth/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(8) {
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
    }
    let received = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 401"),
        "the login is handled (wrong credentials): {text}"
    );
    app.stop().await;
}

/// Guards a design choice rather than a fix: a slot is held until the
/// answer's head, so open event feeds (their own budget) never starve the
/// in-flight cap.
#[tokio::test]
async fn open_event_feeds_do_not_count_against_the_in_flight_cap() {
    let fake = common::fake_llm::FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    settings.http.max_in_flight = 1;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("feeds@example.com").await;
    let created: Value = app
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            &user,
            Some(json!({})),
        )
        .await;
    let feed = format!("/v1/sessions/{}/events", created["id"].as_str().unwrap());

    let mut open = Vec::new();
    for _ in 0..3 {
        let stream = app.send(reqwest::Method::GET, &feed, &user, None).await;
        assert_eq!(stream.status(), StatusCode::OK);
        open.push(stream);
    }
    let listed = app
        .send(reqwest::Method::GET, "/v1/tasks", &user, None)
        .await;
    assert_eq!(
        listed.status(),
        StatusCode::OK,
        "three open feeds, cap of one"
    );
    drop(open);
    app.stop().await;
}

/// Sets `default_transaction_read_only` for this test's database and ends
/// its sessions, so that every connection the app makes next has it: writes
/// are refused (SQLSTATE 25006) as on a standby or a server switched to
/// read-only to save its disk. Only this database is touched.
async fn set_read_only(app: &TestApp, on: bool) {
    let database: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(&common::admin_database_url())
        .await
        .unwrap();
    sqlx::query(&format!(
        "alter database {database} set default_transaction_read_only = {on}"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    end_sessions(&mut admin, &database).await;
}

/// Ends every session of `database` but the caller's, as a Postgres restart
/// or a dropped socket would.
async fn end_sessions(admin: &mut sqlx::PgConnection, database: &str) {
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = $1 and pid <> pg_backend_pid()",
    )
    .bind(database)
    .execute(admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_database_that_refuses_writes_for_now_answers_503_to_writes_while_reads_are_served() {
    let app = TestApp::spawn().await;
    let user = app.register("readonly@example.com").await;
    let task = app.create_task(&user, "before").await;
    let task_path = format!("/v1/tasks/{}", task["id"].as_str().unwrap());
    app.wait_for_projections().await;
    let events_before: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let create = || {
        client(Duration::from_secs(10))
            .post(app.url("/v1/tasks"))
            .bearer_auth(&user.token)
            .json(&json!({"title": "while read-only"}))
            .send()
    };

    set_read_only(&app, true).await;
    // The first request after the sessions ended may meet a connection
    // that is being replaced; the answer settles on the refusal.
    let (error, retry_after) = eventually(
        Duration::from_secs(20),
        "writes refused with 503",
        || async {
            let (status, error, retry_after) = error_of(create().await.unwrap()).await;
            (status == StatusCode::SERVICE_UNAVAILABLE
                && error["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("try again"))
            .then_some((error, retry_after))
        },
    )
    .await;
    assert_eq!(error["code"], "UNAVAILABLE", "{error}");
    assert!(error["request_id"].is_string(), "the API's error format");
    assert!(retry_after.is_some(), "Retry-After on a read-only database");
    let read = client(Duration::from_secs(10))
        .get(app.url(&task_path))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK, "reads are served meanwhile");
    let events_while: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        events_while, events_before,
        "a refused write changed nothing"
    );

    set_read_only(&app, false).await;
    eventually(Duration::from_secs(20), "writes accepted again", || async {
        (create().await.unwrap().status() == StatusCode::CREATED).then_some(())
    })
    .await;
    app.stop().await;
}
