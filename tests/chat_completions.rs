//! `/v1/models` and `/v1/chat/completions` against a fake upstream, through
//! the real `async-openai` SDK and raw HTTP.

mod common;

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs, FinishReason,
};
use async_openai::Client;
use common::fake_llm::{reply_for, FakeLlm, ANTHROPIC_KEY, OPENAI_KEY, UPSTREAM_SECRET_DETAIL};
use common::{eventually, test_settings, TestApp, TestUser};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn app_with_fake() -> (TestApp, FakeLlm) {
    let fake = FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    (TestApp::spawn_with(settings).await, fake)
}

fn sdk(app: &TestApp, credential: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(app.url("/v1"))
            .with_api_key(credential),
    )
}

fn messages(system: Option<&str>, user: &str) -> Vec<ChatCompletionRequestMessage> {
    let mut out: Vec<ChatCompletionRequestMessage> = Vec::new();
    if let Some(system) = system {
        out.push(
            ChatCompletionRequestSystemMessageArgs::default()
                .content(system)
                .build()
                .unwrap()
                .into(),
        );
    }
    out.push(
        ChatCompletionRequestUserMessageArgs::default()
            .content(user)
            .build()
            .unwrap()
            .into(),
    );
    out
}

async fn chat(app: &TestApp, user: &TestUser, body: Value) -> reqwest::Response {
    app.send(Method::POST, "/v1/chat/completions", user, Some(body))
        .await
}

#[tokio::test]
async fn models_are_listed_in_openai_format_and_an_unknown_one_is_404() {
    let (app, _fake) = app_with_fake().await;
    let user = app.register("models@example.com").await;
    let list: Value = app.send_json(Method::GET, "/v1/models", &user, None).await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude-test", "gpt-test"]);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["owned_by"], "anthropic");
    assert!(list["data"][0]["created"].as_i64().unwrap() > 0);

    let sdk_list = sdk(&app, &user.token)
        .models()
        .list()
        .await
        .expect("SDK lists models");
    assert_eq!(sdk_list.data.len(), 2);
    let one = sdk(&app, &user.token)
        .models()
        .retrieve("gpt-test")
        .await
        .expect("SDK gets a model");
    assert_eq!(one.owned_by, "openai");

    let missing = app.send(Method::GET, "/v1/models/nope", &user, None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    app.stop().await;
}

#[tokio::test]
async fn a_completion_through_the_openai_sdk_reaches_the_openai_upstream_with_history_and_key() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("sdk@example.com").await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-test")
        .messages(messages(Some("Be brief."), "hello there"))
        .max_tokens(50u32)
        .temperature(0.5)
        .build()
        .unwrap();
    let answer = sdk(&app, &user.token)
        .chat()
        .create(request)
        .await
        .expect("completion");
    assert!(answer.id.starts_with("chatcmpl-"));
    assert_eq!(answer.model, "gpt-test");
    let choice = &answer.choices[0];
    assert_eq!(
        choice.message.content.as_deref(),
        Some(reply_for("hello there", 2, "Be brief.").as_str())
    );
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    let usage = answer.usage.expect("usage");
    assert_eq!(
        (usage.prompt_tokens, usage.total_tokens),
        (20, 20 + usage.completion_tokens)
    );

    let sent = fake.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v1/chat/completions");
    assert_eq!(
        sent[0].headers["authorization"],
        format!("Bearer {OPENAI_KEY}")
    );
    assert_eq!(sent[0].body["model"], "gpt-upstream-1");
    assert_eq!(sent[0].body["max_tokens"], 50);
    assert_eq!(
        sent[0].body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    app.stop().await;
}

#[tokio::test]
async fn a_streamed_completion_through_the_sdk_with_an_api_key_yields_the_whole_reply_then_usage() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("stream@example.com").await;
    let key: Value = app
        .send_json(Method::POST, "/v1/user/profile/reset-api-key", &user, None)
        .await;
    let key = key["api_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("ck_"));
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-test")
        .messages(messages(None, "stream me"))
        .build()
        .unwrap();
    let mut stream = sdk(&app, &key)
        .chat()
        .create_stream(request)
        .await
        .expect("stream");
    let (mut text, mut finish, mut usage, mut chunks) = (String::new(), None, None, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        chunks += 1;
        for choice in chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(choice.finish_reason);
        }
        usage = usage.or(chunk.usage);
    }
    assert_eq!(text, reply_for("stream me", 1, "none"));
    assert!(chunks > 3, "the reply came in pieces, not at once");
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(usage.expect("usage").prompt_tokens, 10);
    assert_eq!(
        fake.requests()[0].body["stream_options"],
        json!({"include_usage": true})
    );
    app.stop().await;
}

#[tokio::test]
async fn the_anthropic_path_streams_the_joined_deltas_maps_end_turn_to_stop_and_passes_usage() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("claude@example.com").await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("claude-test")
        .messages(messages(Some("You are terse."), "hi claude"))
        .build()
        .unwrap();
    let client = sdk(&app, &user.token);
    let mut stream = client
        .chat()
        .create_stream(request.clone())
        .await
        .expect("stream");
    let (mut text, mut finish, mut usage, mut first_role) = (String::new(), None, None, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        for choice in chunk.choices {
            first_role = first_role.or(choice.delta.role);
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(choice.finish_reason);
        }
        usage = usage.or(chunk.usage);
    }
    let expected = reply_for("hi claude", 1, "You are terse.");
    assert_eq!(
        text, expected,
        "system prompt and history reached Anthropic's fields"
    );
    assert_eq!(finish, Some(FinishReason::Stop), "end_turn maps to stop");
    assert!(first_role.is_some(), "the first chunk names the role");
    let usage = usage.expect("usage");
    assert_eq!(usage.prompt_tokens, 10);
    assert_eq!(
        usage.completion_tokens as usize,
        expected.split(' ').count()
    );

    let whole = client.chat().create(request).await.expect("non-streamed");
    assert_eq!(
        whole.choices[0].message.content.as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(whole.choices[0].finish_reason, Some(FinishReason::Stop));

    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(!sent.headers.contains_key("authorization"));
    assert_eq!(sent.body["system"], "You are terse.");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "user", "content": "hi claude"}])
    );
    assert_eq!(sent.body["max_tokens"], 1024);
    assert_eq!(sent.body["model"], "claude-upstream-1");
    app.stop().await;
}

#[tokio::test]
async fn a_429_and_a_503_before_the_first_byte_are_retried_until_success() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("retry@example.com").await;
    fake.fail_next(&[429, 503]);
    let response = chat(
        &app,
        &user,
        json!({"model": "claude-test", "messages": [{"role": "user", "content": "again"}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        reply_for("again", 1, "none")
    );
    assert_eq!(fake.requests().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_500_answers_502_with_openai_type_and_nothing_of_the_upstream_body() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("fail@example.com").await;
    for stream in [false, true] {
        let before = fake.requests().len();
        let response = chat(
            &app,
            &user,
            json!({"model": "gpt-test", "stream": stream,
            "messages": [{"role": "user", "content": "FAIL500"}]}),
        )
        .await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_GATEWAY,
            "stream: {stream}"
        );
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let text = response.text().await.unwrap();
        assert!(
            !text.contains(UPSTREAM_SECRET_DETAIL) && !text.contains("boom"),
            "{text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "UPSTREAM_ERROR");
        assert_eq!(body["error"]["type"], "api_error");
        assert_eq!(body["error"]["request_id"], request_id);
        assert_eq!(
            fake.requests().len() - before,
            3,
            "two retries, then give up"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_sse_error_event_and_no_done() {
    let (app, _fake) = app_with_fake().await;
    let user = app.register("cut@example.com").await;
    for model in ["claude-test", "gpt-test"] {
        let response = chat(
            &app,
            &user,
            json!({"model": model, "stream": true,
            "messages": [{"role": "user", "content": "CUTSTREAM please"}]}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = response.text().await.unwrap();
        assert!(
            text.contains("\"content\":\"echo: \""),
            "the first deltas were forwarded: {text}"
        );
        let (_, error) = text.split_once("event: error\n").expect("an error event");
        let data: Value =
            serde_json::from_str(error.trim().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["error"]["code"], "UPSTREAM_ERROR", "{model}");
        assert_eq!(data["error"]["type"], "api_error");
        assert!(
            !text.contains("[DONE]"),
            "a cut stream must not look complete"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn without_an_upstream_chat_answers_503_upstream_not_configured() {
    let app = TestApp::spawn().await;
    let user = app.register("none@example.com").await;
    let response = chat(
        &app,
        &user,
        json!({"model": "anything", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_NOT_CONFIGURED");
    assert_eq!(body["error"]["type"], "api_error");
    let list: Value = app.send_json(Method::GET, "/v1/models", &user, None).await;
    assert_eq!(list["data"], json!([]));
    app.stop().await;

    // A model whose provider has no key answers 503 too.
    let fake = FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    settings.llm.openai.api_key = None;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("keyless@example.com").await;
    let response = chat(
        &app,
        &user,
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_NOT_CONFIGURED");
    assert!(fake.requests().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn every_error_of_these_routes_carries_openai_type_including_401_and_422() {
    let (app, fake) = app_with_fake().await;
    let anonymous = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-test", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "AUTH_REQUIRED");
    assert_eq!(body["error"]["type"], "authentication_error");
    let models = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::UNAUTHORIZED);
    let body: Value = models.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_TOKEN");
    assert_eq!(body["error"]["type"], "authentication_error");

    let user = app.register("types@example.com").await;
    // A model that is not configured is missing, as OpenAI's `model_not_found`.
    let unknown = chat(
        &app,
        &user,
        json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let answer: Value = unknown.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "NOT_FOUND");
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    assert_eq!(answer["error"]["details"][0]["field"], "model");
    let cases = [
        (json!({"model": "gpt-test", "messages": []}), "messages"),
        (
            json!({"model": "gpt-test", "messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "gpt-test", "temperature": 3, "messages": [{"role": "user", "content": "x"}]}),
            "temperature",
        ),
        (
            json!({"model": "gpt-test", "session_id": "not-a-uuid",
            "messages": [{"role": "user", "content": "x"}]}),
            "session_id",
        ),
        (json!({"messages": [{"role": "user", "content": "x"}]}), ""),
    ];
    for (body, field) in cases {
        let response = chat(&app, &user, body.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "VALIDATION_ERROR", "{body}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        if !field.is_empty() {
            assert_eq!(answer["error"]["details"][0]["field"], field, "{body}");
        }
    }
    // Extra fields SDKs send are ignored; text parts are accepted.
    let response = chat(&app, &user, json!({"model": "gpt-test", "user": "u1", "logprobs": false,
        "messages": [{"role": "developer", "content": "sys"},
                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        reply_for("ab", 2, "sys")
    );
    assert_eq!(
        fake.requests().len(),
        1,
        "no invalid request reached the upstream"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_user_holding_the_maximum_of_streams_gets_429_until_one_ends() {
    let fake = FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    settings.llm.max_streams_per_user = 1;
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("limit@example.com").await;
    let other = app.register("other@example.com").await;
    let slow = json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "SLOWSTREAM go"}]});
    let held = chat(&app, &user, slow.clone()).await;
    assert_eq!(held.status(), StatusCode::OK);
    let refused = chat(&app, &user, slow.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        chat(&app, &other, slow.clone()).await.status(),
        StatusCode::OK,
        "another user is not affected"
    );
    drop(held);
    eventually(Duration::from_secs(10), "the slot is freed when the client leaves", || async {
        let quick = json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        (chat(&app, &user, quick).await.status() == StatusCode::OK).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_upstream_keys_never_appear_in_any_answer_or_stored_event() {
    let (app, fake) = app_with_fake().await;
    let user = app.register("leak@example.com").await;
    let mut seen = String::new();
    for (model, content, stream) in [
        ("gpt-test", "hello", false),
        ("claude-test", "hello", true),
        ("gpt-test", "FAIL500", false),
        ("claude-test", "CUTSTREAM", true),
        ("claude-test", "FAIL500", true),
    ] {
        let response = chat(
            &app,
            &user,
            json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": content}]}),
        )
        .await;
        seen.push_str(&format!("{:?}", response.headers()));
        seen.push_str(&response.text().await.unwrap());
    }
    for path in ["/v1/models", "/v1/models/gpt-test", "/openapi.json"] {
        seen.push_str(
            &app.send(Method::GET, path, &user, None)
                .await
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(fake.requests().len() >= 5);
    app.wait_for_projections().await;
    let events: Vec<String> =
        sqlx::query_scalar("select payload::text || metadata::text from events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(!events.is_empty());
    for secret in [ANTHROPIC_KEY, OPENAI_KEY, "FAKEKEY", UPSTREAM_SECRET_DETAIL] {
        assert!(!seen.contains(secret), "{secret} leaked into an answer");
        assert!(
            events.iter().all(|e| !e.contains(secret)),
            "{secret} leaked into an event"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_silent_upstream_fails_within_the_idle_timeout_before_and_during_the_stream() {
    let fake = FakeLlm::start().await;
    let mut settings = test_settings().await;
    fake.configure(&mut settings);
    settings.llm.idle_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings).await;
    let user = app.register("silent@example.com").await;

    let started = std::time::Instant::now();
    let response = chat(
        &app,
        &user,
        json!({"model": "claude-test",
        "messages": [{"role": "user", "content": "SLOWHEAD"}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_ERROR");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(fake.requests().len(), 1, "a timeout is not retried");

    for model in ["claude-test", "gpt-test"] {
        let started = std::time::Instant::now();
        let response = chat(
            &app,
            &user,
            json!({"model": model, "stream": true,
            "messages": [{"role": "user", "content": "STALLSTREAM"}]}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        assert!(text.contains("\"content\":\"echo: \""), "{text}");
        assert!(text.contains("event: error"), "{model}: {text}");
        assert!(!text.contains("[DONE]"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_description_covers_the_chat_routes_with_their_security_and_statuses() {
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
    for (path, method, statuses) in [
        ("/v1/models", "get", &["200", "401", "429"][..]),
        ("/v1/models/{id}", "get", &["200", "401", "404", "429"][..]),
        (
            "/v1/chat/completions",
            "post",
            &[
                "200", "400", "401", "404", "409", "413", "415", "422", "429", "502", "503",
            ][..],
        ),
    ] {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{path} in the spec");
        assert_eq!(operation["security"], json!([{"bearer": []}]), "{path}");
        let documented: Vec<&str> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for status in statuses {
            assert!(
                documented.contains(status),
                "{path} does not declare {status}"
            );
        }
    }
    assert!(spec["components"]["schemas"]["ChatCompletionRequest"].is_object());
    app.stop().await;
}
