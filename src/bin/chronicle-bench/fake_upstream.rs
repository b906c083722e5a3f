//! A fake OpenAI-compatible upstream for the chat scenarios: `POST
//! /v1/chat/completions` answers a fixed short reply, as JSON or as SSE
//! chunks, at once. It runs on a thread and runtime of its own, so that the
//! load generator's thread is not also the upstream's.
//!
//! A last user message containing `PACED` is streamed one chunk every
//! [`PACED_GAP`], and the instant each chunk was handed to the connection
//! is recorded: the bench compares it with when the chunk reached the client
//! through Chronicle, to check that chunks are relayed as they arrive.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Value};

/// The model name the server is configured to ask for.
pub const UPSTREAM_MODEL: &str = "fake-model";
/// The reply, one chunk per word when streamed.
const REPLY: [&str; 8] = [
    "Hello ",
    "from ",
    "the ",
    "bench ",
    "upstream, ",
    "a ",
    "short ",
    "reply.",
];
/// Chunks of a `PACED` stream, and the pause before each.
pub const PACED_CHUNKS: usize = 5;
pub const PACED_GAP: Duration = Duration::from_millis(50);

/// When each chunk of the last `PACED` stream was handed over (by index).
pub type PacedLog = Arc<Mutex<Vec<(usize, Instant)>>>;

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub paced: PacedLog,
}

impl FakeUpstream {
    /// Binds 127.0.0.1:0 and serves on a thread of its own until the process ends.
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let paced = PacedLog::default();
        let state = paced.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the fake upstream's runtime")?;
        std::thread::Builder::new()
            .name("fake-upstream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    let app = Router::new()
                        .route("/v1/chat/completions", post(completions))
                        .with_state(state);
                    let _ = axum::serve(listener, app).await;
                });
            })?;
        Ok(Self { addr, paced })
    }

    /// What the server's `OPENAI_BASE_URL` is.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

async fn completions(State(paced): State<PacedLog>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let model = request["model"].clone();
    let usage = json!({"prompt_tokens": 10, "completion_tokens": REPLY.len(), "total_tokens": 10 + REPLY.len()});
    if request["stream"] != true {
        let answer = json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY.concat()}, "finish_reason": "stop"}],
            "usage": usage,
        });
        return ([(CONTENT_TYPE, "application/json")], answer.to_string()).into_response();
    }
    let chunk = |choices: Value, usage: Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": choices, "usage": usage})
        ))
    };
    let is_paced = body.windows(5).any(|w| w == b"PACED");
    let words: Vec<String> = if is_paced {
        (0..PACED_CHUNKS).map(|i| format!("tok{i} ")).collect()
    } else {
        REPLY.iter().map(|w| w.to_string()).collect()
    };
    let mut frames: Vec<Bytes> = words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": word})
            } else {
                json!({"content": word})
            };
            chunk(
                json!([{"index": 0, "delta": delta, "finish_reason": null}]),
                Value::Null,
            )
        })
        .collect();
    frames.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        Value::Null,
    ));
    frames.push(chunk(json!([]), usage));
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let response = Response::builder().header(CONTENT_TYPE, "text/event-stream");
    let built = if is_paced {
        if let Ok(mut log) = paced.lock() {
            log.clear();
        }
        let stream =
            futures::stream::iter(frames.into_iter().enumerate()).then(move |(i, frame)| {
                let paced = paced.clone();
                async move {
                    tokio::time::sleep(PACED_GAP).await;
                    if let Ok(mut log) = paced.lock() {
                        log.push((i, Instant::now()));
                    }
                    Ok::<_, std::io::Error>(frame)
                }
            });
        response.body(Body::from_stream(stream))
    } else {
        let stream = futures::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>));
        response.body(Body::from_stream(stream))
    };
    built.unwrap_or_else(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
