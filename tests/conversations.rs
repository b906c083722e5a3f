//! Projects and chat sessions over HTTP: lifecycle, ownership, read models
//! equal to a rebuild, and every message an event on the bus.

mod common;

use std::time::Duration;

use common::fake_llm::{self, reply_for, FakeLlm};
use common::{
    assert_read_models_equal_rebuild, eventually, hold_projection, release_projection,
    test_settings, TestApp, TestUser,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn a_project_is_created_listed_replaced_and_deleted_and_others_see_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.register("projects@example.com").await;
    let other = app.register("other-projects@example.com").await;

    let created = app
        .send(
            Method::POST,
            "/v1/projects",
            &owner,
            Some(json!({"name": "  Compiler  ", "description": "a toy", "settings": {"lang": "rust"}})),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(created.headers().contains_key("x-consistency-token"));
    let project: Value = created.json().await.unwrap();
    assert_eq!(project["name"], "Compiler");
    assert_eq!(project["settings"]["lang"], "rust");
    let id = project["id"].as_str().unwrap();
    let path = format!("/v1/projects/{id}");

    let list = app.send(Method::GET, "/v1/projects", &owner, None).await;
    assert_eq!(list.headers()["x-total-count"], "1");
    let list: Value = list.json().await.unwrap();
    assert_eq!(list[0]["id"], id);

    // PUT replaces: the absent description becomes null, settings `{}`.
    let replaced: Value = app
        .send_json(
            Method::PUT,
            &path,
            &owner,
            Some(json!({"name": "Interpreter"})),
        )
        .await;
    assert_eq!(replaced["name"], "Interpreter");
    assert_eq!(replaced["description"], Value::Null);
    assert_eq!(replaced["settings"], json!({}));
    let read: Value = app.send_json(Method::GET, &path, &owner, None).await;
    assert_eq!(read["name"], "Interpreter");

    // Someone else's project does not exist for them, whatever they try.
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"name": "mine now"}))),
        (Method::DELETE, None),
    ] {
        let response = app.send(method.clone(), &path, &other, body).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method}");
    }
    let theirs = app.send(Method::GET, "/v1/projects", &other, None).await;
    assert_eq!(theirs.headers()["x-total-count"], "0");

    // Bad input is a 422 naming the field, and changes nothing.
    for body in [
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "ok", "settings": ["not", "an", "object"]}),
        json!({"name": "ok", "extra": 1}),
    ] {
        let response = app
            .send(Method::PUT, &path, &owner, Some(body.clone()))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }
    let limit = app
        .send(Method::GET, "/v1/projects?limit=0", &owner, None)
        .await;
    assert_eq!(limit.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let deleted = app.send(Method::DELETE, &path, &owner, None).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.send(Method::GET, &path, &owner, None).await.status(),
        StatusCode::NOT_FOUND
    );
    let list = app.send(Method::GET, "/v1/projects", &owner, None).await;
    assert_eq!(list.headers()["x-total-count"], "0");

    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

/// Server-Sent Events of a response, as `(event, data, id)`, until the
/// stream ends or `until` says stop.
async fn read_sse(
    response: reqwest::Response,
    mut until: impl FnMut(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let mut events = response.bytes_stream().eventsource();
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(20), events.next()).await {
        let Ok(event) = event else { break };
        seen.push((event.event, event.data, event.id));
        if until(&seen) {
            break;
        }
    }
    seen
}

async fn app_with_fake_llm() -> (TestApp, FakeLlm) {
    let fake = FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    (TestApp::spawn_with(settings).await, fake)
}

async fn start_session(app: &TestApp, user: &TestUser, body: Value) -> String {
    let response = app
        .send(Method::POST, "/v1/sessions", user, Some(body))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let session: Value = response.json().await.unwrap();
    session["id"].as_str().unwrap().to_string()
}

/// A list's body and its `X-Total-Count`.
async fn listed(app: &TestApp, user: &TestUser, path: &str) -> (Value, i64) {
    let response = app.send(Method::GET, path, user, None).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let total = response.headers()["x-total-count"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (response.json().await.unwrap(), total)
}

/// The `id` of each item of a list.
fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_chat_session_is_started_changed_and_deleted_and_others_get_404_everywhere() {
    let (app, _fake) = app_with_fake_llm().await;
    let owner = app.register("sessions@example.com").await;
    let other = app.register("other-sessions@example.com").await;
    let project: Value = app
        .send_json(
            Method::POST,
            "/v1/projects",
            &owner,
            Some(json!({"name": "Chat"})),
        )
        .await;
    let project_id = project["id"].as_str().unwrap();

    let created = app
        .send(
            Method::POST,
            "/v1/sessions",
            &owner,
            Some(json!({"title": "First", "project_id": project_id, "system_prompt": "Be brief"})),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let session: Value = created.json().await.unwrap();
    assert_eq!(
        session["model"], "claude-test",
        "the first configured model by default"
    );
    assert_eq!(session["message_count"], 0);
    let id = session["id"].as_str().unwrap();
    let path = format!("/v1/sessions/{id}");
    start_session(&app, &owner, json!({"model": "gpt-test"})).await;

    let (in_project, total) = listed(
        &app,
        &owner,
        &format!("/v1/sessions?project_id={project_id}"),
    )
    .await;
    assert_eq!((ids(&in_project), total), (vec![id], 1));
    let (all, total) = listed(&app, &owner, "/v1/sessions").await;
    assert_eq!((all.as_array().unwrap().len(), total), (2, 2));
    // Paged, with the filter and without: newest first, the total unpaged.
    let (older, total) = listed(&app, &owner, "/v1/sessions?offset=1").await;
    assert_eq!((ids(&older), total), (vec![id], 2));
    let (past_the_end, total) = listed(
        &app,
        &owner,
        &format!("/v1/sessions?project_id={project_id}&offset=1"),
    )
    .await;
    assert_eq!((past_the_end, total), (json!([]), 1));

    let patched: Value = app
        .send_json(
            Method::PATCH,
            &path,
            &owner,
            Some(json!({"title": null, "model": "gpt-test"})),
        )
        .await;
    assert_eq!(patched["title"], Value::Null);
    assert_eq!(patched["model"], "gpt-test");
    assert_eq!(patched["system_prompt"], "Be brief", "untouched");
    for (body, status) in [
        (json!({"model": null}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"title": "x".repeat(201)}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"title": "a\u{0}b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // Outside the schema's bounds before it is looked up.
        (json!({"model": ""}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"model": "m".repeat(101)}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // What the caller has not got is missing: 404, naming the field.
        (json!({"model": "no-such-model"}), StatusCode::NOT_FOUND),
        (
            json!({"project_id": uuid::Uuid::new_v4()}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let response = app
            .send(Method::PATCH, &path, &owner, Some(body.clone()))
            .await;
        assert_eq!(response.status(), status, "{body}");
        if status == StatusCode::NOT_FOUND {
            let error: Value = response.json().await.unwrap();
            let field = body.as_object().unwrap().keys().next().unwrap().clone();
            assert_eq!(
                error["error"]["details"][0]["field"],
                field.as_str(),
                "{body}"
            );
        }
    }

    // Someone else's session does not exist for them, on every route.
    for (method, suffix, body) in [
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({"title": "mine"}))),
        (Method::DELETE, "", None),
        (Method::GET, "/messages", None),
        (Method::POST, "/messages", Some(json!({"content": "hi"}))),
        (Method::GET, "/tools", None),
        (
            Method::POST,
            "/tools",
            Some(
                json!({"tool_name": "t", "tool_type": "builtin", "input": {}, "status": "success"}),
            ),
        ),
        (Method::GET, "/events", None),
    ] {
        let response = app
            .send(method.clone(), &format!("{path}{suffix}"), &other, body)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{method} {suffix}"
        );
    }

    assert_eq!(
        app.send(Method::DELETE, &path, &owner, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.send(Method::GET, &path, &owner, None).await.status(),
        StatusCode::NOT_FOUND
    );
    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

#[tokio::test]
async fn without_an_upstream_sessions_cannot_be_started() {
    let app = TestApp::spawn().await;
    let user = app.register("no-llm@example.com").await;
    let response = app
        .send(Method::POST, "/v1/sessions", &user, Some(json!({})))
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_NOT_CONFIGURED");
    app.stop().await;
}

#[tokio::test]
async fn an_exchange_sends_the_system_prompt_and_history_and_stores_the_reply_as_events() {
    let (app, fake) = app_with_fake_llm().await;
    let user = app.register("exchange@example.com").await;
    let id = start_session(&app, &user, json!({"system_prompt": "Be brief"})).await;
    let path = format!("/v1/sessions/{id}/messages");

    let first = app
        .send(
            Method::POST,
            &path,
            &user,
            Some(json!({"content": "hello"})),
        )
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["user_message"]["role"], "user");
    assert_eq!(first["user_message"]["content"], "hello");
    assert_eq!(
        first["assistant_message"]["content"],
        reply_for("hello", 1, "Be brief")
    );
    assert_eq!(first["assistant_message"]["model"], "claude-test");
    assert!(
        first["assistant_message"]["usage"]["total_tokens"]
            .as_i64()
            .unwrap()
            > 0
    );

    let second: Value = app
        .send_json(
            Method::POST,
            &path,
            &user,
            Some(json!({"content": "again"})),
        )
        .await;
    // The history went upstream: hello, its reply, and the new message.
    assert_eq!(
        second["assistant_message"]["content"],
        reply_for("again", 3, "Be brief")
    );
    let sent = fake.requests().last().unwrap().clone();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body["system"], "Be brief");
    assert_eq!(sent.body["messages"][0]["content"], "hello");

    let messages = app.send(Method::GET, &path, &user, None).await;
    assert_eq!(messages.headers()["x-total-count"], "4");
    let messages: Vec<Value> = messages.json().await.unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "user", "assistant"],
        "chronological"
    );
    let replies: Vec<Value> = app
        .send_json(Method::GET, &format!("{path}?role=assistant"), &user, None)
        .await;
    assert_eq!(replies.len(), 2);
    let session: Value = app
        .send_json(Method::GET, &format!("/v1/sessions/{id}"), &user, None)
        .await;
    assert_eq!(session["message_count"], 4);
    let tokens = session["usage"]["total_tokens"].as_i64().unwrap();
    assert!(tokens > 0);
    let profile: Value = app
        .send_json(Method::GET, "/v1/user/profile", &user, None)
        .await;
    assert_eq!(profile["usage"]["sessions"], 1);
    assert_eq!(profile["usage"]["messages"], 4);
    assert_eq!(profile["usage"]["tokens"], tokens);

    // Each message is an event analytics consumers can subscribe to.
    let stream = &app.settings.nats.stream;
    let subject = format!("{}.ChatSession.{id}.MessageAdded", stream.subject_prefix);
    let on_bus = eventually(
        Duration::from_secs(20),
        "four MessageAdded on the bus",
        || {
            let subject = subject.clone();
            let nats = app.nats.clone();
            let name = stream.name.clone();
            async move {
                let jetstream = async_nats::jetstream::new(nats);
                use futures::StreamExt;
                let stream = jetstream.get_stream(&name).await.ok()?;
                let count = stream
                    .info_with_subjects(subject.clone())
                    .await
                    .ok()?
                    .next()
                    .await
                    .and_then(|entry| entry.ok())
                    .map(|(_, count)| count)
                    .unwrap_or(0);
                (count == 4).then_some(count)
            }
        },
    )
    .await;
    assert_eq!(on_bus, 4);
    assert_no_key_anywhere(&app).await;
    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

/// Upstream goes the newest turns whose estimated tokens (four characters
/// each) fit the budget of 16,000 beside the new message; the first turn that
/// does not fit ends the history, shorter older ones included.
#[tokio::test]
async fn the_history_sent_upstream_is_the_newest_turns_that_fit_the_token_budget() {
    let (app, fake) = app_with_fake_llm().await;
    let user = app.register("budget-history@example.com").await;
    let id = start_session(&app, &user, json!({"system_prompt": "Be brief"})).await;
    let path = format!("/v1/sessions/{id}/messages");
    // The fake's replies quote the message, so each reply costs a little
    // more than its message.
    let five_thousand_tokens = "a".repeat(20_000);
    let three_thousand_tokens = "b".repeat(12_000);
    let mut sent = Vec::new();
    for content in ["first", &five_thousand_tokens, &three_thousand_tokens] {
        let exchanged: Value = app
            .send_json(
                Method::POST,
                &path,
                &user,
                Some(json!({"content": content})),
            )
            .await;
        let reply = exchanged["assistant_message"]["content"].as_str().unwrap();
        sent.push((content.to_string(), reply.to_string()));
    }
    app.send_json::<Value>(Method::POST, &path, &user, Some(json!({"content": "last"})))
        .await;

    let request = fake.requests().last().unwrap().clone();
    assert_eq!(request.body["system"], "Be brief");
    let upstream: Vec<(String, String)> = request.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().into(),
                m["content"].as_str().unwrap().into(),
            )
        })
        .collect();
    // Newest first: the third reply (~3,000), its message (3,000) and the
    // second reply (~5,000) fit; the second message (5,000 more) does not, so
    // it stays behind with "first" and its reply.
    let expected = vec![
        ("assistant".to_string(), sent[1].1.clone()),
        ("user".to_string(), sent[2].0.clone()),
        ("assistant".to_string(), sent[2].1.clone()),
        ("user".to_string(), "last".to_string()),
    ];
    let summary = |messages: &[(String, String)]| -> Vec<(String, usize)> {
        messages
            .iter()
            .map(|(role, content)| (role.clone(), content.len()))
            .collect()
    };
    assert!(
        upstream == expected,
        "sent {:?}, expected {:?}",
        summary(&upstream),
        summary(&expected)
    );
    app.stop().await;
}

/// The upstream keys are in no stored event (payload or metadata).
/// An exchange reads its session and history from the event store: it
/// neither waits for nor needs the `chat_sessions` read model (before, each
/// exchange waited for the previous one to be projected, which was most of
/// its latency under load).
#[tokio::test]
async fn exchanges_go_on_with_their_whole_history_while_the_read_model_is_held_back() {
    let (app, fake) = app_with_fake_llm().await;
    let user = app.register("no-wait@example.com").await;
    let other = app.register("no-wait-other@example.com").await;
    let holder = hold_projection(&app.pool, "chat_sessions").await;

    let id = start_session(&app, &user, json!({"system_prompt": "Be brief"})).await;
    let path = format!("/v1/sessions/{id}/messages");
    for (content, count) in [("hello", 1), ("again", 3)] {
        let response = app
            .send(
                Method::POST,
                &path,
                &user,
                Some(json!({"content": content})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{content}");
        let exchange: Value = response.json().await.unwrap();
        assert_eq!(
            exchange["assistant_message"]["content"],
            reply_for(content, count, "Be brief"),
            "the history so far went upstream"
        );
    }
    let completion = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            &user,
            Some(json!({"model": "claude-test", "session_id": id,
                        "messages": [{"role": "user", "content": "third"}]})),
        )
        .await;
    assert_eq!(completion.status(), StatusCode::OK);
    // Someone else's session is still nobody else's.
    let theirs = app
        .send(Method::POST, &path, &other, Some(json!({"content": "hi"})))
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let projected: i64 =
        sqlx::query_scalar("select count(*) from read.chat_messages where session_id = $1")
            .bind(uuid::Uuid::parse_str(&id).unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        projected, 0,
        "all of it happened while the read model was held"
    );
    assert_eq!(fake.requests().len(), 3);

    release_projection(holder, "chat_sessions").await;
    let messages: Vec<Value> = app.send_json(Method::GET, &path, &user, None).await;
    assert_eq!(messages.len(), 6, "{messages:?}");
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

async fn assert_no_key_anywhere(app: &TestApp) {
    let leaked: i64 = sqlx::query_scalar(
        "select count(*) from events where payload::text like any($1) or metadata::text like any($1)",
    )
    .bind(vec![
        format!("%{}%", fake_llm::ANTHROPIC_KEY),
        format!("%{}%", fake_llm::OPENAI_KEY),
    ])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "an upstream key reached the event store");
}

#[tokio::test]
async fn a_streamed_reply_arrives_in_openai_chunks_and_equals_the_stored_message() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("stream@example.com").await;
    let id = start_session(&app, &user, json!({"model": "gpt-test"})).await;
    let path = format!("/v1/sessions/{id}/messages");
    let response = app
        .send(
            Method::POST,
            &path,
            &user,
            Some(json!({"content": "tell me", "stream": true})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = read_sse(response, |_| false).await;
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let mut text = String::new();
    let mut finish = None;
    for (_, data, _) in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(delta);
        }
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(reason.to_string());
        }
    }
    assert_eq!(finish.as_deref(), Some("stop"));
    assert_eq!(text, reply_for("tell me", 1, "none"));
    let stored: Vec<Value> = app
        .send_json(Method::GET, &format!("{path}?role=assistant"), &user, None)
        .await;
    assert_eq!(
        stored[0]["content"], text,
        "what streamed is what is stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_still_gets_its_reply_stored() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("leaver@example.com").await;
    let id = start_session(&app, &user, json!({})).await;
    let path = format!("/v1/sessions/{id}/messages");
    let response = app
        .send(
            Method::POST,
            &path,
            &user,
            Some(json!({"content": "SLOWSTREAM please", "stream": true})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Take the first chunk, then hang up.
    let first = read_sse(response, |seen| !seen.is_empty()).await;
    assert_eq!(first.len(), 1);
    let stored = eventually(
        Duration::from_secs(30),
        "the reply to be stored",
        || async {
            let replies: Vec<Value> = app
                .send_json(Method::GET, &format!("{path}?role=assistant"), &user, None)
                .await;
            replies.first().cloned()
        },
    )
    .await;
    assert_eq!(stored["content"], reply_for("SLOWSTREAM please", 1, "none"));
    app.stop().await;
}

#[tokio::test]
async fn upstream_failures_answer_502_or_an_sse_error_event_and_are_recorded() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("failures@example.com").await;
    let id = start_session(&app, &user, json!({})).await;
    let path = format!("/v1/sessions/{id}/messages");

    let failed = app
        .send(
            Method::POST,
            &path,
            &user,
            Some(json!({"content": "FAIL500"})),
        )
        .await;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_ERROR");
    assert!(!body.to_string().contains(fake_llm::UPSTREAM_SECRET_DETAIL));

    let cut = app
        .send(
            Method::POST,
            &path,
            &user,
            Some(json!({"content": "CUTSTREAM now", "stream": true})),
        )
        .await;
    assert_eq!(cut.status(), StatusCode::OK);
    let events = read_sse(cut, |_| false).await;
    let (event, data, _) = events.last().unwrap();
    assert_eq!(event, "error");
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["error"]["code"], "UPSTREAM_ERROR");

    let failures: i64 = eventually(Duration::from_secs(10), "two recorded failures", || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from events where aggregate_id = $1 and event_type = 'ExchangeFailed'",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .ok()?;
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(failures, 2);
    // The user messages stay; no reply was stored.
    let replies: Vec<Value> = app
        .send_json(Method::GET, &format!("{path}?role=assistant"), &user, None)
        .await;
    assert!(replies.is_empty());
    assert_no_key_anywhere(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn tool_executions_are_recorded_filtered_and_totalled() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("tools@example.com").await;
    let id = start_session(&app, &user, json!({})).await;
    let path = format!("/v1/sessions/{id}/tools");
    for (name, kind, status) in [
        ("read_file", "builtin", "success"),
        ("search", "mcp", "success"),
        ("search", "mcp", "error"),
        ("build", "builtin", "running"),
    ] {
        let response = app
            .send(
                Method::POST,
                &path,
                &user,
                Some(json!({"tool_name": name, "tool_type": kind, "input": {"q": 1}, "status": status, "duration_ms": 12})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let bad = app
        .send(
            Method::POST,
            &path,
            &user,
            Some(json!({"tool_name": "", "tool_type": "other", "input": {}, "status": "success"})),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Another session's execution is in none of this session's lists.
    let elsewhere = start_session(&app, &user, json!({})).await;
    let response = app
        .send(
            Method::POST,
            &format!("/v1/sessions/{elsewhere}/tools"),
            &user,
            Some(
                json!({"tool_name": "search", "tool_type": "mcp", "input": {}, "status": "error"}),
            ),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let all = app.send(Method::GET, &path, &user, None).await;
    assert_eq!(all.headers()["x-total-count"], "4");
    let all: Value = all.json().await.unwrap();
    assert_eq!(all["total"], 4);
    // Two of the three finished ones succeeded.
    assert!((all["success_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(all["items"][0]["tool_name"], "read_file", "oldest first");
    let mcp: Value = app
        .send_json(Method::GET, &format!("{path}?tool_type=mcp"), &user, None)
        .await;
    assert_eq!(mcp["total"], 2);
    assert_eq!(mcp["success_rate"], 0.5);
    let running: Value = app
        .send_json(Method::GET, &format!("{path}?status=running"), &user, None)
        .await;
    assert_eq!(running["total"], 1);
    assert_eq!(running["success_rate"], 0.0);

    // Both filters at once, and with a page: the same rows in the page, the
    // total and the rate.
    let executions = |query: &'static str| {
        let (app, user, path) = (&app, &user, &path);
        async move {
            let (page, total) = listed(app, user, &format!("{path}{query}")).await;
            assert_eq!(page["total"], total, "{query}");
            let items: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| {
                    format!(
                        "{} {} {}",
                        item["tool_name"].as_str().unwrap(),
                        item["tool_type"].as_str().unwrap(),
                        item["status"].as_str().unwrap()
                    )
                })
                .collect();
            (items, total, page["success_rate"].as_f64().unwrap())
        }
    };
    assert_eq!(
        executions("?tool_type=mcp").await,
        (
            vec!["search mcp success".into(), "search mcp error".into()],
            2,
            0.5
        )
    );
    assert_eq!(
        executions("?tool_type=mcp&status=error").await,
        (vec!["search mcp error".into()], 1, 0.0)
    );
    assert_eq!(
        executions("?status=success&tool_type=builtin").await,
        (vec!["read_file builtin success".into()], 1, 1.0)
    );
    assert_eq!(
        executions("?tool_type=builtin&offset=1").await,
        (vec!["build builtin running".into()], 2, 1.0)
    );
    assert_eq!(
        executions("?tool_type=builtin&status=error").await,
        (vec![], 0, 0.0)
    );
    app.stop().await;
}

/// The role filter holds for the page and the total alike, with a page too,
/// and a session lists its own messages only.
#[tokio::test]
async fn messages_are_filtered_by_role_in_the_page_and_the_total() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("message-roles@example.com").await;
    let id = start_session(&app, &user, json!({"system_prompt": "Be brief"})).await;
    let path = format!("/v1/sessions/{id}/messages");
    for content in ["hello", "again"] {
        let response = app
            .send(
                Method::POST,
                &path,
                &user,
                Some(json!({"content": content})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{content}");
    }
    let elsewhere = start_session(&app, &user, json!({})).await;
    let response = app
        .send(
            Method::POST,
            &format!("/v1/sessions/{elsewhere}/messages"),
            &user,
            Some(json!({"content": "not here"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let messages = |query: &'static str| {
        let (app, user, path) = (&app, &user, &path);
        async move {
            let (page, total) = listed(app, user, &format!("{path}{query}")).await;
            let contents: Vec<String> = page
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m["role"].as_str().unwrap(),
                        m["content"].as_str().unwrap()
                    )
                })
                .collect();
            (contents, total)
        }
    };
    let first_reply = format!("assistant: {}", reply_for("hello", 1, "Be brief"));
    let second_reply = format!("assistant: {}", reply_for("again", 3, "Be brief"));
    assert_eq!(
        messages("").await,
        (
            vec![
                "user: hello".to_string(),
                first_reply.clone(),
                "user: again".to_string(),
                second_reply.clone()
            ],
            4
        )
    );
    assert_eq!(
        messages("?role=assistant").await,
        (vec![first_reply, second_reply.clone()], 2)
    );
    assert_eq!(
        messages("?role=user&limit=1").await,
        (vec!["user: hello".to_string()], 2)
    );
    assert_eq!(
        messages("?role=assistant&offset=1").await,
        (vec![second_reply], 2)
    );
    assert_eq!(messages("?role=system").await, (vec![], 0));
    app.stop().await;
}

#[tokio::test]
async fn the_event_feed_replays_after_last_event_id_then_goes_on_live() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("feed@example.com").await;
    let id = start_session(&app, &user, json!({})).await;
    let path = format!("/v1/sessions/{id}/messages");
    app.send(Method::POST, &path, &user, Some(json!({"content": "one"})))
        .await;
    let feed = format!("/v1/sessions/{id}/events");

    // From the start: the three events so far.
    let replay = app
        .client
        .get(app.url(&feed))
        .bearer_auth(&user.token)
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    let first = read_sse(replay, |seen| seen.len() == 3).await;
    let kinds: Vec<&str> = first.iter().map(|(event, _, _)| event.as_str()).collect();
    assert_eq!(
        kinds,
        ["ChatSessionStarted", "MessageAdded", "MessageAdded"]
    );
    let envelope: Value = serde_json::from_str(&first[1].1).unwrap();
    assert_eq!(envelope["aggregate_id"], id);
    assert_eq!(
        envelope["global_position"].to_string(),
        first[1].2,
        "id: is the global position"
    );

    // Resume after the first: exactly the other two, then live ones.
    let resumed = app
        .client
        .get(app.url(&feed))
        .bearer_auth(&user.token)
        .header("last-event-id", first[0].2.as_str())
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(read_sse(resumed, |seen| seen.len() == 4));
    app.send(Method::POST, &path, &user, Some(json!({"content": "two"})))
        .await;
    let rest = reader.await.unwrap();
    let ids: Vec<&str> = rest.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(
        &ids[..2],
        [first[1].2.as_str(), first[2].2.as_str()],
        "no gap, no duplicate"
    );
    assert_eq!(rest.len(), 4);
    let bad = app
        .client
        .get(app.url(&feed))
        .bearer_auth(&user.token)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

#[tokio::test]
async fn a_chat_completion_with_a_session_id_is_recorded_in_that_session_only_for_its_owner() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("completions-session@example.com").await;
    let other = app.register("completions-other@example.com").await;
    let id = start_session(&app, &user, json!({})).await;
    let body = |stream: bool| {
        json!({"model": "gpt-test", "session_id": id, "stream": stream,
               "messages": [{"role": "system", "content": "Terse"}, {"role": "user", "content": "ping"}]})
    };

    let answer = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            &user,
            Some(body(false)),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let answer: Value = answer.json().await.unwrap();
    let reply = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(reply, reply_for("ping", 2, "Terse"));

    let streamed = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            &user,
            Some(body(true)),
        )
        .await;
    assert_eq!(streamed.status(), StatusCode::OK);
    let events = read_sse(streamed, |_| false).await;
    assert_eq!(events.last().unwrap().1, "[DONE]");

    // Both exchanges are in the session, readable at once.
    let messages: Vec<Value> = app
        .send_json(
            Method::GET,
            &format!("/v1/sessions/{id}/messages"),
            &user,
            None,
        )
        .await;
    let stored: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stored,
        [
            ("user", "ping"),
            ("assistant", reply.as_str()),
            ("user", "ping"),
            ("assistant", reply.as_str())
        ]
    );

    // Someone else's session: 404, nothing recorded.
    let theirs = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            &other,
            Some(body(false)),
        )
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let after: Vec<Value> = app
        .send_json(
            Method::GET,
            &format!("/v1/sessions/{id}/messages"),
            &user,
            None,
        )
        .await;
    assert_eq!(after.len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn a_long_session_loads_from_its_snapshot_and_keeps_every_message() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("long@example.com").await;
    let id = start_session(&app, &user, json!({})).await;
    // 1 + 2 × 12 events: past the snapshot taken every 20.
    for n in 0..12 {
        let response = app
            .send(
                Method::POST,
                &format!("/v1/sessions/{id}/messages"),
                &user,
                Some(json!({"content": format!("turn {n}")})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "turn {n}");
    }
    let snapshots: i64 = sqlx::query_scalar(
        "select count(*) from snapshots where aggregate_type = 'ChatSession' and aggregate_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(snapshots, 1, "the session was snapshotted");
    let patched: Value = app
        .send_json(
            Method::PATCH,
            &format!("/v1/sessions/{id}"),
            &user,
            Some(json!({"title": "Long"})),
        )
        .await;
    assert_eq!(
        patched["message_count"], 24,
        "state from the snapshot and the events after it"
    );
    let messages = app
        .send(
            Method::GET,
            &format!("/v1/sessions/{id}/messages?limit=100"),
            &user,
            None,
        )
        .await;
    assert_eq!(messages.headers()["x-total-count"], "24");
    app.stop().await;
}

#[tokio::test]
async fn a_user_who_spent_this_minutes_tokens_gets_429_and_nothing_is_stored() {
    let fake = FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    // The fake's first exchange costs about 20 tokens, the second about 40.
    settings.llm.tokens_per_minute = 40;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("budget@example.com").await;
    let other = app.register("budget-other@example.com").await;
    let id = start_session(&app, &user, json!({})).await;
    let path = format!("/v1/sessions/{id}/messages");
    for turn in ["one", "two"] {
        let response = app
            .send(Method::POST, &path, &user, Some(json!({"content": turn})))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{turn}");
    }
    let refused = app
        .send(
            Method::POST,
            &path,
            &user,
            Some(json!({"content": "three"})),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    let completion = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            &user,
            Some(json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(
        completion.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "every chat route"
    );
    let messages = app.send(Method::GET, &path, &user, None).await;
    assert_eq!(
        messages.headers()["x-total-count"],
        "4",
        "the refused message was not stored"
    );

    // Another user's budget is their own.
    let theirs = start_session(&app, &other, json!({})).await;
    let response = app
        .send(
            Method::POST,
            &format!("/v1/sessions/{theirs}/messages"),
            &other,
            Some(json!({"content": "hi"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    app.stop().await;
}

mod websocket {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

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

    /// The next event message, `(position, event_type, aggregate_id)`.
    async fn next_event(socket: &mut Socket) -> (u64, String, String) {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
                .await
                .expect("an event in time")
                .expect("open")
                .expect("a message");
            if let Message::Text(text) = message {
                let event: Value = serde_json::from_str(&text).unwrap();
                return (
                    event["position"].as_u64().unwrap(),
                    event["event_type"].as_str().unwrap().to_string(),
                    event["envelope"]["aggregate_id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }

    #[tokio::test]
    async fn the_websocket_carries_the_callers_task_and_session_events_and_resumes_after_a_position(
    ) {
        let (app, _fake) = app_with_fake_llm().await;
        let user = app.register("ws@example.com").await;
        let other = app.register("ws-other@example.com").await;
        let mut socket = connect(&app, &user).await;

        // Someone else's task first: the caller must not see it.
        app.create_task(&other, "not yours").await;
        let task = app.create_task(&user, "yours").await;
        let task_id = task["id"].as_str().unwrap().to_string();
        let (first, kind, id) = next_event(&mut socket).await;
        assert_eq!(
            (kind.as_str(), id.as_str()),
            ("TaskCreated", task_id.as_str())
        );
        let session = start_session(&app, &user, json!({})).await;
        let (second, kind, id) = next_event(&mut socket).await;
        assert_eq!(
            (kind.as_str(), id.as_str()),
            ("ChatSessionStarted", session.as_str())
        );
        assert!(second > first, "positions follow the stream");
        drop(socket);

        // A new connection resumes after the first: it gets the second again.
        let mut resumed = connect(&app, &user).await;
        resumed
            .send(Message::Text(
                json!({"resume_after": first}).to_string().into(),
            ))
            .await
            .unwrap();
        let (position, kind, _) = next_event(&mut resumed).await;
        assert_eq!((position, kind.as_str()), (second, "ChatSessionStarted"));

        // Without a token there is no feed.
        let anonymous = format!("{}/v1/ws", app.base.replacen("http", "ws", 1));
        assert!(tokio_tungstenite::connect_async(anonymous).await.is_err());
        let plain = app.client.get(app.url("/v1/ws")).send().await.unwrap();
        assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
        let not_upgraded = app.send(Method::GET, "/v1/ws", &user, None).await;
        assert_eq!(not_upgraded.status(), StatusCode::BAD_REQUEST);
        app.stop().await;
    }
}

#[tokio::test]
async fn the_environment_names_the_models_and_features_without_any_secret() {
    let (app, _fake) = app_with_fake_llm().await;
    let response = app
        .client
        .get(app.url("/v1/environment"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "public");
    let text = response.text().await.unwrap();
    assert!(!text.contains(fake_llm::ANTHROPIC_KEY) && !text.contains(fake_llm::OPENAI_KEY));
    assert!(!text.contains("127.0.0.1"), "no upstream address: {text}");
    let environment: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(environment["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        environment["models"],
        json!([{"id": "claude-test", "provider": "anthropic"}, {"id": "gpt-test", "provider": "openai"}])
    );
    assert_eq!(environment["features"]["chat"], true);
    assert_eq!(environment["features"]["mcp_servers"], true);
    app.stop().await;

    let bare = TestApp::spawn().await;
    let environment: Value = bare
        .client
        .get(bare.url("/v1/environment"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(environment["models"], json!([]));
    assert_eq!(environment["features"]["chat"], false);
    bare.stop().await;
}

#[tokio::test]
async fn errors_raised_before_the_chat_route_runs_also_carry_openai_type() {
    let fake = FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    settings.rate_limit.per_ip_per_minute = 3;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("limited-chat@example.com").await;
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});
    let mut last = None;
    for _ in 0..3 {
        last = Some(
            app.send(
                Method::POST,
                "/v1/chat/completions",
                &user,
                Some(body.clone()),
            )
            .await,
        );
    }
    let refused = last.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "RATE_LIMITED");
    assert_eq!(error["error"]["type"], "rate_limit_error", "{error}");
    // Other routes keep our format alone.
    let other = app.send(Method::GET, "/v1/tasks", &user, None).await;
    assert_eq!(other.status(), StatusCode::TOO_MANY_REQUESTS);
    let error: Value = other.json().await.unwrap();
    assert!(error["error"].get("type").is_none());
    app.stop().await;
}

#[tokio::test]
async fn analytics_figures_equal_the_counts_of_the_event_store_for_the_same_window() {
    let (app, _fake) = app_with_fake_llm().await;
    let analyst = app.register("analyst@example.com").await;
    let analyst = app.grant_role(&analyst, "analyst").await;
    let user = app.register("counted@example.com").await;
    for title in ["one", "two", "three"] {
        let task = app.create_task(&user, title).await;
        if title != "two" {
            app.send(
                Method::PATCH,
                &format!("/v1/tasks/{}/complete", task["id"].as_str().unwrap()),
                &user,
                Some(json!({"completed": true})),
            )
            .await;
        }
    }
    let session = start_session(&app, &user, json!({})).await;
    for content in ["hello", "again"] {
        let response = app
            .send(
                Method::POST,
                &format!("/v1/sessions/{session}/messages"),
                &user,
                Some(json!({"content": content})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    // A window of whole hours around now, counted straight from the events.
    let now = chrono::Utc::now();
    let hour = now - chrono::Duration::seconds(i64::from(now.timestamp() as u32 % 3600));
    let from =
        (hour - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (hour + chrono::Duration::hours(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let expected: Value = sqlx::query_scalar(
        "select jsonb_build_object( \
           'users', count(*) filter (where event_type = 'UserRegistered'), \
           'tasks', count(*) filter (where event_type = 'TaskCreated'), \
           'tasks_completed', count(*) filter (where event_type = 'TaskCompleted'), \
           'sessions', count(*) filter (where event_type = 'ChatSessionStarted'), \
           'messages', count(*) filter (where event_type = 'MessageAdded'), \
           'tokens', coalesce(sum((payload -> 'MessageAdded' -> 'usage' ->> 'total_tokens')::bigint), 0)) \
         from events where recorded_at >= $1::timestamptz and recorded_at < $2::timestamptz",
    )
    .bind(&from)
    .bind(&to)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(expected["users"], 2);
    assert!(expected["tokens"].as_i64().unwrap() > 0);

    let path = format!("/v1/analytics?bucket=hour&from={from}&to={to}").replace('+', "%2B");
    let analytics: Value = eventually(Duration::from_secs(20), "analytics caught up", || async {
        let analytics: Value = app.send_json(Method::GET, &path, &analyst, None).await;
        (analytics["totals"] == expected).then_some(analytics)
    })
    .await;
    assert_eq!(
        analytics["series"].as_array().unwrap().len(),
        3,
        "{analytics}"
    );
    let summed: i64 = analytics["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["messages"].as_i64().unwrap())
        .sum();
    assert_eq!(summed, 4);

    for bad in [
        format!("/v1/analytics?from={to}&to={from}"),
        "/v1/analytics?bucket=minute".to_string(),
        "/v1/analytics?bucket=hour&from=2000-01-01T00:00:00Z".to_string(),
    ] {
        let response = app.send(Method::GET, &bad, &analyst, None).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let plain = app.send(Method::GET, "/v1/analytics", &user, None).await;
    assert_eq!(plain.status(), StatusCode::FORBIDDEN);
    app.wait_for_projections().await;
    assert_read_models_equal_rebuild(&app.pool).await;
    app.stop().await;
}

/// `chronicle_aggregate_loads_total` of chat sessions, from `/metrics`.
async fn chat_session_loads(app: &TestApp) -> u64 {
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find(|line| {
            line.starts_with("chronicle_aggregate_loads_total")
                && line.contains(r#"aggregate="ChatSession""#)
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_exchange_reads_its_session_from_the_event_store_once_not_once_per_command() {
    let (app, _fake) = app_with_fake_llm().await;
    let user = app.register("one-load@example.com").await;
    let id = start_session(&app, &user, json!({"model": "gpt-test"})).await;
    let path = format!("/v1/sessions/{id}/messages");
    let exchange = |content: &'static str, stream: bool| {
        app.send(
            Method::POST,
            &path,
            &user,
            Some(json!({"content": content, "stream": stream})),
        )
    };
    assert_eq!(
        exchange("warm up", false).await.status(),
        StatusCode::CREATED
    );

    let before = chat_session_loads(&app).await;
    assert_eq!(exchange("hello", false).await.status(), StatusCode::CREATED);
    assert_eq!(
        chat_session_loads(&app).await - before,
        1,
        "the session is read once; the user message and the reply commit from there"
    );

    let before = chat_session_loads(&app).await;
    let streamed = exchange("and again", true).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    // `[DONE]` comes after the reply is stored.
    let events = read_sse(streamed, |_| false).await;
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert_eq!(chat_session_loads(&app).await - before, 1, "streamed too");

    // Every message is stored once, in order, after the session started.
    let sequences: Vec<i64> = sqlx::query_scalar(
        "select sequence from events where aggregate_type = 'ChatSession' \
         and aggregate_id = $1 order by sequence",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(sequences, (1..=7).collect::<Vec<i64>>());
    let stored: Vec<Value> = app
        .send_json(Method::GET, &format!("{path}?limit=100"), &user, None)
        .await;
    let contents: Vec<&str> = stored
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 3, "{stored:?}");
    app.stop().await;
}

/// At most 1,000 buckets, counted as the series is (aligned on the bucket):
/// exactly 1,000 answer, one more is a 422 naming `bucket`, however the
/// window's start falls.
#[tokio::test]
async fn analytics_answers_up_to_a_thousand_buckets_and_refuses_one_more() {
    let app = TestApp::spawn().await;
    let analyst = app.register("buckets@example.com").await;
    let analyst = app.grant_role(&analyst, "analyst").await;
    let get = |from: &str, to: &str, bucket: &str| {
        let path = format!("/v1/analytics?bucket={bucket}&from={from}&to={to}");
        let (app, analyst) = (&app, &analyst);
        async move { app.send(Method::GET, &path, analyst, None).await }
    };
    // 1,000 whole hours: 1,000 points.
    let response = get("2026-01-01T00:00:00Z", "2026-02-11T16:00:00Z", "hour").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["series"].as_array().unwrap().len(), 1000);
    for (from, to, bucket, why) in [
        // One second into a 1,001st hour.
        (
            "2026-01-01T00:00:00Z",
            "2026-02-11T16:00:01Z",
            "hour",
            "1,001 hours",
        ),
        // Under 1,000 weeks long, but from a Sunday: the series starts on
        // the Monday before, so it holds 1,001 weeks.
        (
            "2026-01-04T00:00:00Z",
            "2045-03-04T00:00:00Z",
            "week",
            "1,001 aligned weeks",
        ),
    ] {
        let response = get(from, to, bucket).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{why}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["details"][0]["field"], "bucket", "{why}");
    }
    app.stop().await;
}
