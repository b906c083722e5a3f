//! Live event feeds under a bad resume: while one client's SSE stream
//! (`GET /v1/sessions/{id}/events`) and WebSocket (`GET /v1/ws`) carry live
//! events, a second client resumes with garbage, negative and huge
//! positions. It gets a clear answer (422 `VALIDATION_ERROR` on SSE; the
//! `VALIDATION_ERROR` reply on the WebSocket, which stays open), no refusal
//! holds a feed slot, and the first client's streams receive every event,
//! in order. The parsers themselves are fuzzed (`docs/testing.md`, "Parsers
//! of untrusted input"); this is their behaviour beside a live stream.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_llm::FakeLlm;
use common::{eventually, test_settings, TestApp, TestUser};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, user: &TestUser) -> Socket {
    let url = format!(
        "{}/v1/ws?access_token={}",
        app.base.replacen("http", "ws", 1),
        user.token
    );
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    socket
}

/// The next error reply on `socket`, past the live events queued before it.
async fn next_error(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a reply in time")
            .expect("the socket stays open")
            .expect("a message");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value.get("error").is_some() {
                return value;
            }
        }
    }
}

/// `Last-Event-ID` values that are not a position: garbage, negative, past
/// `i64`, empty, and bytes that are not ASCII.
const BAD_LAST_EVENT_IDS: [&[u8]; 10] = [
    b"yesterday",
    b"-1",
    b"-9223372036854775808",
    b"9223372036854775808",
    b"99999999999999999999999999",
    b"1e3",
    b"0x10",
    b"",
    b"NaN",
    "\u{ff11}".as_bytes(),
];

/// Resume messages a WebSocket client may send that are not
/// `{"resume_after": <u64>}`.
const BAD_RESUMES: [&str; 8] = [
    "garbage",
    r#"{"resume_after": -1}"#,
    r#"{"resume_after": 18446744073709551616}"#,
    r#"{"resume_after": 1e30}"#,
    r#"{"resume_after": "5"}"#,
    r#"{"resume_after": 5, "also": 1}"#,
    "[5]",
    "",
];

#[tokio::test]
async fn a_bad_resume_from_a_second_client_is_refused_clearly_and_the_live_streams_miss_nothing() {
    let fake = FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    // Few feed slots, so that a refusal that kept one would show.
    settings.http.max_feeds_per_user = 5;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("live@example.com").await;
    let created: Value = app
        .send_json(Method::POST, "/v1/sessions", &user, Some(json!({})))
        .await;
    let session = created["id"].as_str().unwrap().to_string();
    let feed = format!("/v1/sessions/{session}/events");

    // The first client: the session's SSE stream from the start, and the
    // WebSocket, live. Each reader keeps what arrives.
    let sse = app
        .client
        .get(app.url(&feed))
        .bearer_auth(&user.token)
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let sse_seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let sse_reader = {
        let seen = sse_seen.clone();
        tokio::spawn(async move {
            use eventsource_stream::Eventsource;
            let mut events = sse.bytes_stream().eventsource();
            while let Some(Ok(event)) = events.next().await {
                seen.lock().unwrap().push(event.id.parse().unwrap());
            }
        })
    };
    let socket = connect(&app, &user).await;
    let ws_seen: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let ws_reader = {
        let seen = ws_seen.clone();
        tokio::spawn(async move {
            let mut socket = socket;
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let event: Value = serde_json::from_str(&text).unwrap();
                    let envelope = &event["envelope"];
                    seen.lock().unwrap().push((
                        envelope["aggregate_id"].as_str().unwrap().to_string(),
                        envelope["sequence"].as_i64().unwrap(),
                    ));
                }
            }
        })
    };
    // The WebSocket is live from its consumer's creation: wait until it
    // carries an event before counting on it.
    let warm_up = app.create_task(&user, "warm up").await;
    eventually(
        Duration::from_secs(20),
        "the websocket to go live",
        || async { (!ws_seen.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    assert_eq!(
        ws_seen.lock().unwrap()[0].0,
        warm_up["id"].as_str().unwrap(),
        "the first event on the WebSocket is the caller's task"
    );

    // The second client, on its own WebSocket.
    let mut second = connect(&app, &user).await;
    for round in 0..3 {
        // Live events for the first client's streams...
        app.send(
            Method::POST,
            &format!("/v1/sessions/{session}/messages"),
            &user,
            Some(json!({"content": format!("round {round}")})),
        )
        .await;
        app.create_task(&user, &format!("round {round}")).await;

        // ...while the second client resumes with every bad position, each
        // answered at once, in the error format.
        for bad in BAD_LAST_EVENT_IDS {
            let response = app
                .client
                .get(app.url(&feed))
                .bearer_auth(&user.token)
                .header(
                    "last-event-id",
                    reqwest::header::HeaderValue::from_bytes(bad).unwrap(),
                )
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("an answer, not a hang");
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "Last-Event-ID {:?}",
                String::from_utf8_lossy(bad)
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Last-Event-ID"),
                "{body}"
            );
        }
        for bad in BAD_RESUMES {
            second.send(Message::Text(bad.into())).await.unwrap();
            let reply = next_error(&mut second).await;
            assert_eq!(reply["error"]["code"], "VALIDATION_ERROR", "{bad:?}");
        }
    }
    // A position past the end of the stream is a position: the second
    // client waits there, and the first client is not affected.
    second
        .send(Message::Text(
            json!({"resume_after": u64::MAX}).to_string().into(),
        ))
        .await
        .unwrap();
    let far = app
        .client
        .get(app.url(&feed))
        .bearer_auth(&user.token)
        .header("last-event-id", i64::MAX.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(far.status(), StatusCode::OK);
    app.send(
        Method::POST,
        &format!("/v1/sessions/{session}/messages"),
        &user,
        Some(json!({"content": "after the far resumes"})),
    )
    .await;
    drop(far);

    // The refusals held no feed slot: with two streams of the first client,
    // the second socket and perhaps the far one open, a valid resume is
    // still served.
    let valid = eventually(Duration::from_secs(10), "a feed slot", || async {
        let response = app
            .client
            .get(app.url(&feed))
            .bearer_auth(&user.token)
            .header("last-event-id", "0")
            .send()
            .await
            .ok()?;
        (response.status() == StatusCode::OK).then_some(response)
    })
    .await;
    drop(valid);
    // And the second socket still answers.
    second.send(Message::Text("again".into())).await.unwrap();
    let reply = next_error(&mut second).await;
    assert_eq!(reply["error"]["code"], "VALIDATION_ERROR");

    // Every event reached the first client's streams, in order.
    let stored_session: Vec<i64> = sqlx::query_scalar(
        "select global_position from events where aggregate_type = 'ChatSession' \
         and aggregate_id = $1 order by sequence",
    )
    .bind(&session)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        stored_session.len(),
        1 + 4 * 2,
        "started, then two per message"
    );
    let sse_events = eventually(
        Duration::from_secs(30),
        "every session event on SSE",
        || async {
            let seen = sse_seen.lock().unwrap().clone();
            (seen.len() >= stored_session.len()).then_some(seen)
        },
    )
    .await;
    assert_eq!(sse_events, stored_session, "no gap, no duplicate, in order");

    let mut stored_callers: Vec<(String, i64)> = sqlx::query_as(
        "select aggregate_id, sequence from events where aggregate_type in ('Task', 'ChatSession') \
         and metadata->>'actor_id' = $1 order by global_position",
    )
    .bind(user.id.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // The WebSocket went live after the session was started.
    stored_callers.retain(|(id, sequence)| !(id == &session && *sequence == 1));
    let ws_events = eventually(
        Duration::from_secs(30),
        "every event on the WebSocket",
        || async {
            let seen = ws_seen.lock().unwrap().clone();
            (seen.len() >= stored_callers.len()).then_some(seen)
        },
    )
    .await;
    let sorted = |mut events: Vec<(String, i64)>| {
        events.sort();
        events
    };
    assert_eq!(
        sorted(ws_events.clone()),
        sorted(stored_callers),
        "every event of the caller, once"
    );
    // The session was started before the WebSocket went live.
    let mut last = std::collections::HashMap::from([(session.clone(), 1)]);
    for (id, sequence) in &ws_events {
        let previous = last.insert(id.clone(), *sequence).unwrap_or(0);
        assert_eq!(*sequence, previous + 1, "{id}: in order on the WebSocket");
    }
    sse_reader.abort();
    ws_reader.abort();
    app.stop().await;
}
