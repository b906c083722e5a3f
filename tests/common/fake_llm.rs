//! A fake language-model upstream speaking Anthropic's `/v1/messages` and
//! OpenAI's `/v1/chat/completions`, JSON and SSE, on 127.0.0.1:0.
//!
//! Deterministic: the reply is `echo: <last user message> [<n> messages; system: <system>]`,
//! streamed one word per delta, so tests can check that history and system
//! prompt arrived. Every request is recorded with its headers.
//!
//! Failing on cue, by a word in the last user message:
//! `FAIL500` (always 500), `CUTSTREAM` (two deltas, then the connection is
//! cut), `SLOWSTREAM` (300 ms between events),
//! `STALLSTREAM` (two deltas, then silence), `SLOWHEAD` (silence before anything); or by [`FakeLlm::fail_next`], which answers the next requests with
//! the given statuses (429 with `Retry-After: 0`) before answering normally.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chronicle::config::{ModelSpec, ProviderKind, Settings};
use secrecy::SecretString;
use serde_json::{json, Value};

/// Recognisable keys that must never appear in any answer or event.
pub const ANTHROPIC_KEY: &str = "sk-ant-FAKEKEY-never-leak-7f3a";
pub const OPENAI_KEY: &str = "sk-oai-FAKEKEY-never-leak-9c2e";
/// In every error body the fake sends: must never reach our clients.
pub const UPSTREAM_SECRET_DETAIL: &str = "upstream-internal-detail-4412";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<RecordedRequest>>,
    failures: Mutex<VecDeque<u16>>,
}

pub struct FakeLlm {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLlm {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/messages", post(anthropic))
            .route("/v1/chat/completions", post(openai))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Answers the next requests with these statuses, one each, before answering normally.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.inner.failures.lock().unwrap().extend(statuses);
    }

    /// Points `settings` at this fake: models `claude-test` (Anthropic) and
    /// `gpt-test` (OpenAI), both with keys.
    pub fn configure(&self, settings: &mut Settings) {
        let llm = &mut settings.llm;
        llm.models = vec![
            ModelSpec {
                id: "claude-test".into(),
                provider: ProviderKind::Anthropic,
                upstream_model: "claude-upstream-1".into(),
            },
            ModelSpec {
                id: "gpt-test".into(),
                provider: ProviderKind::OpenAi,
                upstream_model: "gpt-upstream-1".into(),
            },
        ];
        llm.anthropic.base_url = self.url();
        llm.anthropic.api_key = Some(SecretString::from(ANTHROPIC_KEY));
        llm.openai.base_url = format!("{}/v1", self.url());
        llm.openai.api_key = Some(SecretString::from(OPENAI_KEY));
    }
}

/// Records the request; answers a queued failure if there is one.
fn record(inner: &Inner, path: &str, headers: &HeaderMap, body: &Value) -> Option<Response> {
    inner.requests.lock().unwrap().push(RecordedRequest {
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.clone(),
    });
    let queued = inner.failures.lock().unwrap().pop_front();
    let status = queued.or_else(|| (last_user(body).contains("FAIL500")).then_some(500))?;
    let error = json!({"type": "error", "error": {"type": "api_error", "code": "api_error",
        "message": format!("boom {UPSTREAM_SECRET_DETAIL}")}});
    let mut response = (StatusCode::from_u16(status).unwrap(), Json(error)).into_response();
    if status == 429 {
        response
            .headers_mut()
            .insert("retry-after", "0".parse().unwrap());
    }
    Some(response)
}

fn last_user(body: &Value) -> String {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string()
}

/// The deterministic reply to `messages` with system prompt `system`.
pub fn reply_for(last_user: &str, message_count: usize, system: &str) -> String {
    format!("echo: {last_user} [{message_count} messages; system: {system}]")
}

fn reply_words(body: &Value, system: &str) -> Vec<String> {
    let count = body["messages"].as_array().map_or(0, Vec::len);
    let reply = reply_for(&last_user(body), count, system);
    let words: Vec<&str> = reply.split(' ').collect();
    let n = words.len();
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            if i + 1 < n {
                format!("{w} ")
            } else {
                w.to_string()
            }
        })
        .collect()
}

fn prompt_tokens(body: &Value) -> u32 {
    10 * body["messages"].as_array().map_or(0, Vec::len) as u32
}

fn sse(frames: Vec<String>, cut: bool, body: &Value) -> Response {
    let slow = last_user(body).contains("SLOWSTREAM");
    let stall = last_user(body).contains("STALLSTREAM");
    let pause = std::time::Duration::from_millis(if slow { 300 } else { 2 });
    let mut items: Vec<Result<Bytes, std::io::Error>> =
        frames.into_iter().map(|f| Ok(Bytes::from(f))).collect();
    if cut {
        items.push(Err(std::io::Error::other("cut")));
    }
    let stream = futures::stream::iter(items)
        .then(move |item| async move {
            tokio::time::sleep(pause).await;
            item
        })
        // STALLSTREAM: the connection stays open and silent.
        .chain(
            futures::stream::pending()
                .take_while(move |_: &Result<Bytes, std::io::Error>| std::future::ready(stall)),
        );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures::StreamExt;

async fn anthropic(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(failure) = record(&inner, "/v1/messages", &headers, &body) {
        return failure;
    }
    if last_user(&body).contains("SLOWHEAD") {
        // Nothing at all for 30 s: longer than any test's idle timeout.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
    let system = body["system"].as_str().unwrap_or("none").to_string();
    let words = reply_words(&body, &system);
    let input = prompt_tokens(&body);
    let output = words.len() as u32;
    if body["stream"] != true {
        return Json(json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": words.concat()}],
            "stop_reason": "end_turn", "usage": {"input_tokens": input, "output_tokens": output}
        }))
        .into_response();
    }
    let cut = ["CUTSTREAM", "STALLSTREAM"]
        .iter()
        .any(|w| last_user(&body).contains(w));
    let frame = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![
        frame(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "model": body["model"], "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        frame(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        frame("ping", json!({"type": "ping"})),
    ];
    let deltas = if cut { &words[..2] } else { &words[..] };
    for word in deltas {
        frames.push(frame("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})));
    }
    if !cut {
        frames.push(frame(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        frames.push(frame("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}})));
        frames.push(frame("message_stop", json!({"type": "message_stop"})));
    }
    sse(frames, cut, &body)
}

async fn openai(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(failure) = record(&inner, "/v1/chat/completions", &headers, &body) {
        return failure;
    }
    if last_user(&body).contains("SLOWHEAD") {
        // Nothing at all for 30 s: longer than any test's idle timeout.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
    let system = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let system = if system.is_empty() {
        "none".to_string()
    } else {
        system
    };
    let words = reply_words(&body, &system);
    let usage = json!({"prompt_tokens": prompt_tokens(&body), "completion_tokens": words.len(),
        "total_tokens": prompt_tokens(&body) as usize + words.len()});
    if body["stream"] != true {
        return Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"}],
            "usage": usage
        }))
        .into_response();
    }
    let cut = ["CUTSTREAM", "STALLSTREAM"]
        .iter()
        .any(|w| last_user(&body).contains(w));
    let chunk = |choices: Value, usage: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": 1, "model": body["model"], "choices": choices, "usage": usage})
        )
    };
    let mut frames = Vec::new();
    let deltas = if cut { &words[..2] } else { &words[..] };
    for (i, word) in deltas.iter().enumerate() {
        let delta = if i == 0 {
            json!({"role": "assistant", "content": word})
        } else {
            json!({"content": word})
        };
        frames.push(chunk(
            json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            Value::Null,
        ));
    }
    if !cut {
        frames.push(chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            Value::Null,
        ));
        frames.push(chunk(json!([]), usage));
        frames.push("data: [DONE]\n\n".to_string());
    }
    sse(frames, cut, &body)
}
