//! A fake MCP server on 127.0.0.1:0 speaking the real wire protocol, both
//! transports: Streamable HTTP at `/mcp` (JSON or SSE answers, sessions in
//! `Mcp-Session-Id`) and the legacy HTTP+SSE at `/sse` + `/messages`.
//!
//! It serves the configured tools page by page with an opaque
//! `nextCursor`, checks an optional required header (401 otherwise), records
//! every request, and misbehaves on cue ([`Behaviour`]) for negative tests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// How Streamable HTTP answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// `application/json`, the response alone.
    Json,
    /// `text/event-stream`: a log notification first, then the response.
    EventStream,
}

/// How the fake misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// `tools/list` answers with a 1 MiB tool description.
    HugeAnswer,
    /// `tools/list` is never answered.
    Hang,
    /// `initialize` answers a JSON-RPC error that quotes the request's
    /// headers (a careless server echoing credentials).
    JsonRpcError,
    /// The legacy `endpoint` event points to `localhost` instead of 127.0.0.1.
    ForeignEndpoint,
    /// `initialize` answers protocol version `1999-01-01`.
    OldProtocol,
}

pub struct FakeMcpOptions {
    /// A header every request must carry (name, value), else 401.
    pub required_header: Option<(String, String)>,
    pub tools: Vec<Value>,
    pub page_size: usize,
    pub streamable_answers: Answers,
    pub behaviour: Behaviour,
}

impl Default for FakeMcpOptions {
    fn default() -> Self {
        Self {
            required_header: None,
            tools: sample_tools(3),
            page_size: 100,
            streamable_answers: Answers::Json,
            behaviour: Behaviour::Normal,
        }
    }
}

/// `count` tools `tool_0`, `tool_1`, … with descriptions and schemas.
pub fn sample_tools(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({
                "name": format!("tool_{i}"),
                "description": format!("Tool number {i}"),
                "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}
            })
        })
        .collect()
}

/// One HTTP request the fake received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: HashMap<String, String>,
    /// The JSON-RPC method, for POSTs.
    pub rpc_method: Option<String>,
}

struct Inner {
    required_header: Mutex<Option<(String, String)>>,
    tools: Vec<Value>,
    page_size: usize,
    answers: Answers,
    behaviour: Mutex<Behaviour>,
    addr: SocketAddr,
    initialize_count: AtomicUsize,
    requests: Mutex<Vec<SeenRequest>>,
    /// Streamable HTTP sessions issued and not deleted.
    sessions: Mutex<Vec<String>>,
    /// Legacy SSE sessions: where their `message` events go.
    streams: Mutex<HashMap<String, mpsc::Sender<Event>>>,
}

pub struct FakeMcp {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMcp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeMcp {
    pub async fn start(options: FakeMcpOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            required_header: Mutex::new(options.required_header),
            tools: options.tools,
            page_size: options.page_size.max(1),
            answers: options.streamable_answers,
            behaviour: Mutex::new(options.behaviour),
            addr,
            initialize_count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
            streams: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/mcp", post(streamable_post).delete(streamable_delete))
            .route("/sse", get(legacy_stream))
            .route("/messages", post(legacy_post))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner, task }
    }

    /// The Streamable HTTP endpoint.
    pub fn http_url(&self) -> String {
        format!("http://{}/mcp", self.inner.addr)
    }

    /// The legacy HTTP+SSE stream.
    pub fn sse_url(&self) -> String {
        format!("http://{}/sse", self.inner.addr)
    }

    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    pub fn set_required_header(&self, name: &str, value: &str) {
        *self.inner.required_header.lock().unwrap() = Some((name.into(), value.into()));
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.inner.behaviour.lock().unwrap() = behaviour;
    }

    pub fn initialize_count(&self) -> usize {
        self.inner.initialize_count.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.inner.requests.lock().unwrap().len()
    }

    pub fn last_headers(&self) -> HashMap<String, String> {
        self.requests()
            .last()
            .map(|r| r.headers.clone())
            .unwrap_or_default()
    }

    /// Streamable HTTP sessions issued and not yet deleted.
    pub fn open_sessions(&self) -> Vec<String> {
        self.inner.sessions.lock().unwrap().clone()
    }
}

fn record(inner: &Inner, method: &Method, uri: &Uri, headers: &HeaderMap, rpc: Option<&Value>) {
    inner.requests.lock().unwrap().push(SeenRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        rpc_method: rpc
            .and_then(|m| m.get("method"))
            .and_then(Value::as_str)
            .map(str::to_string),
    });
}

/// A 401 unless the required header is there with its value.
fn unauthorized(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    let required = inner.required_header.lock().unwrap().clone();
    let (name, value) = required?;
    if headers.get(name.as_str()).and_then(|v| v.to_str().ok()) == Some(value.as_str()) {
        return None;
    }
    let body = json!({"jsonrpc": "2.0", "id": null,
        "error": {"code": -32001, "message": "Unauthorized"}});
    Some((StatusCode::UNAUTHORIZED, Json(body)).into_response())
}

fn behaviour(inner: &Inner) -> Behaviour {
    *inner.behaviour.lock().unwrap()
}

/// The response to a JSON-RPC request (`None`: never answered).
fn respond(inner: &Inner, request: &Value, headers: &HeaderMap) -> Option<Value> {
    let id = request["id"].clone();
    let method = request["method"].as_str().unwrap_or("");
    let behaviour = behaviour(inner);
    let result = match method {
        "initialize" => {
            inner.initialize_count.fetch_add(1, Ordering::SeqCst);
            if behaviour == Behaviour::JsonRpcError {
                let echoed: Vec<String> = headers
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("")))
                    .collect();
                return Some(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600,
                    "message": format!("initialize refused; you sent {}", echoed.join(", "))}}));
            }
            let version = if behaviour == Behaviour::OldProtocol {
                "1999-01-01"
            } else {
                request["params"]["protocolVersion"]
                    .as_str()
                    .unwrap_or("2025-06-18")
            };
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "fake-mcp", "version": "1.2.3"}
            })
        }
        "tools/list" => {
            if behaviour == Behaviour::Hang {
                return None;
            }
            let start: usize = request["params"]["cursor"]
                .as_str()
                .and_then(|c| c.strip_prefix("opaque-"))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let end = (start + inner.page_size).min(inner.tools.len());
            let mut page: Vec<Value> = inner.tools[start.min(end)..end].to_vec();
            if behaviour == Behaviour::HugeAnswer {
                page.push(json!({"name": "huge", "description": "x".repeat(1 << 20)}));
            }
            let mut result = json!({ "tools": page });
            if end < inner.tools.len() {
                result["nextCursor"] = json!(format!("opaque-{end}"));
            }
            result
        }
        _ => {
            return Some(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": "Method not found"}}))
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

async fn streamable_post(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let message: Option<Value> = serde_json::from_slice(&body).ok();
    record(&inner, &method, &uri, &headers, message.as_ref());
    if let Some(refused) = unauthorized(&inner, &headers) {
        return refused;
    }
    let Some(message) = message else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let is_initialize = message["method"] == "initialize";
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if !is_initialize {
        let known = session
            .as_ref()
            .is_some_and(|s| inner.sessions.lock().unwrap().contains(s));
        if !known {
            return (StatusCode::BAD_REQUEST, "missing or unknown Mcp-Session-Id").into_response();
        }
    }
    if message.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    let Some(response) = respond(&inner, &message, &headers) else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    let mut answer = match inner.answers {
        Answers::Json => Json(response).into_response(),
        Answers::EventStream => {
            let log = json!({"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "info", "data": "working on it"}});
            let body =
                format!("event: message\ndata: {log}\n\nevent: message\ndata: {response}\n\n");
            ([("content-type", "text/event-stream")], body).into_response()
        }
    };
    if is_initialize {
        let session = uuid::Uuid::new_v4().to_string();
        inner.sessions.lock().unwrap().push(session.clone());
        answer
            .headers_mut()
            .insert("mcp-session-id", session.parse().unwrap());
    }
    answer
}

async fn streamable_delete(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> StatusCode {
    record(&inner, &method, &uri, &headers, None);
    let session = headers.get("mcp-session-id").and_then(|v| v.to_str().ok());
    let mut sessions = inner.sessions.lock().unwrap();
    match sessions.iter().position(|s| Some(s.as_str()) == session) {
        Some(index) => {
            sessions.remove(index);
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn legacy_stream(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&inner, &method, &uri, &headers, None);
    if let Some(refused) = unauthorized(&inner, &headers) {
        return refused;
    }
    let session = uuid::Uuid::new_v4().simple().to_string();
    let (sender, receiver) = mpsc::channel::<Event>(16);
    inner
        .streams
        .lock()
        .unwrap()
        .insert(session.clone(), sender);
    let host = if behaviour(&inner) == Behaviour::ForeignEndpoint {
        format!("http://localhost:{}", inner.addr.port())
    } else {
        String::new()
    };
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("{host}/messages?session_id={session}"));
    let messages = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (event, receiver))
    });
    let events = futures::stream::once(async { endpoint })
        .chain(messages)
        .map(Ok::<_, Infallible>);
    Sse::new(events).into_response()
}

async fn legacy_post(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let message: Option<Value> = serde_json::from_slice(&body).ok();
    record(&inner, &method, &uri, &headers, message.as_ref());
    if let Some(refused) = unauthorized(&inner, &headers) {
        return refused;
    }
    let sender = query
        .get("session_id")
        .and_then(|s| inner.streams.lock().unwrap().get(s).cloned());
    let Some(sender) = sender else {
        return (StatusCode::NOT_FOUND, "unknown session").into_response();
    };
    let Some(message) = message else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if message.get("id").is_some() {
        if let Some(response) = respond(&inner, &message, &headers) {
            let event = Event::default().event("message").data(response.to_string());
            let _ = sender.send(event).await;
        }
    }
    StatusCode::ACCEPTED.into_response()
}
