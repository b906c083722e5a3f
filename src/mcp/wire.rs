//! What both transports share: the request context, bodies read under a
//! byte budget, SSE parsing, and JSON-RPC 2.0 messages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Client, Response};
use serde_json::{json, Value};

use super::error::{DiscoveryError, Redactor};

/// One discovery's client, configured headers and limits.
pub(crate) struct Exchange {
    pub client: Client,
    /// The configured headers, marked sensitive.
    pub headers: HeaderMap,
    /// The most bytes read from one answer.
    pub limit: usize,
    /// The server's host, for error messages.
    pub host: String,
    pub redactor: Redactor,
}

impl Exchange {
    pub fn transport_error(&self, err: &reqwest::Error) -> DiscoveryError {
        DiscoveryError::from_reqwest(&self.host, err)
    }

    pub fn body_error(&self, err: BodyError) -> DiscoveryError {
        match err {
            BodyError::Transport(err) => self.transport_error(&err),
            BodyError::TooLarge => DiscoveryError::TooLarge { limit: self.limit },
        }
    }

    /// Fails on a non-2xx answer.
    pub fn check_status(&self, response: &Response) -> Result<(), DiscoveryError> {
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DiscoveryError::Status { status })
        }
    }

    /// A failure to read an event stream.
    pub fn event_error(&self, err: EventStreamError<BodyError>) -> DiscoveryError {
        match err {
            EventStreamError::Transport(err) => self.body_error(err),
            _ => DiscoveryError::NotMcp("the server sent a malformed event stream".into()),
        }
    }
}

/// Bytes read so far against a limit, shared by a body's stream and its owner.
#[derive(Clone)]
pub(crate) struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Starts counting again (a new answer on a long-lived stream).
    pub fn reset(&self) {
        self.used.store(0, Ordering::Relaxed);
    }
}

/// Why reading a body stopped.
#[derive(Debug)]
pub(crate) enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(_) => f.write_str("the connection broke off"),
            Self::TooLarge => f.write_str("the answer is too large"),
        }
    }
}

/// `response`'s body, failing once it passes the budget.
pub(crate) fn capped(
    response: Response,
    budget: Budget,
) -> BoxStream<'static, Result<Bytes, BodyError>> {
    response
        .bytes_stream()
        .map(move |chunk| {
            let chunk = chunk.map_err(BodyError::Transport)?;
            let used = budget.used.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
            if used > budget.limit {
                Err(BodyError::TooLarge)
            } else {
                Ok(chunk)
            }
        })
        .boxed()
}

/// The SSE events of `response`, under `budget`.
pub(crate) type Events = BoxStream<'static, Result<Event, EventStreamError<BodyError>>>;

pub(crate) fn events(response: Response, budget: Budget) -> Events {
    capped(response, budget).eventsource().boxed()
}

/// A whole JSON body, read under the exchange's limit.
pub(crate) async fn read_json(
    exchange: &Exchange,
    response: Response,
) -> Result<Value, DiscoveryError> {
    let mut body = Vec::new();
    let mut chunks = capped(response, Budget::new(exchange.limit));
    while let Some(chunk) = chunks.next().await {
        body.extend_from_slice(&chunk.map_err(|err| exchange.body_error(err))?);
    }
    serde_json::from_slice(&body).map_err(|_| {
        DiscoveryError::NotMcp("the server answered something that is not JSON".into())
    })
}

/// The media type of `response`, lowercase, without parameters.
pub(crate) fn media_type(response: &Response) -> String {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// A JSON-RPC request.
pub(crate) fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// A JSON-RPC notification without parameters.
pub(crate) fn notification(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": method})
}

/// The response to request `id` in `message`, a single message or a batch;
/// requests and notifications from the server are not responses.
pub(crate) fn find_response(message: &Value, id: u64) -> Option<&Value> {
    let is_response = |m: &&Value| {
        m.get("id").and_then(Value::as_u64) == Some(id)
            && m.get("method").is_none()
            && (m.get("result").is_some() || m.get("error").is_some())
    };
    match message {
        Value::Array(batch) => batch.iter().find(is_response),
        single => Some(single).filter(is_response),
    }
}

/// The `result` of `response`, or its JSON-RPC error.
pub(crate) fn into_result(
    response: &Value,
    method: &'static str,
    redactor: &Redactor,
) -> Result<Value, DiscoveryError> {
    if let Some(error) = response.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(DiscoveryError::Refused {
            method,
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: redactor.clean(message),
        });
    }
    Ok(response.get("result").cloned().unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_response_to_our_id_is_taken_from_a_message_or_batch() {
        let response = json!({"jsonrpc": "2.0", "id": 2, "result": {}});
        assert_eq!(find_response(&response, 2), Some(&response));
        assert_eq!(find_response(&response, 3), None);
        let server_request = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
        assert_eq!(find_response(&server_request, 2), None);
        let log = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {}});
        let batch = json!([log, response]);
        assert_eq!(find_response(&batch, 2), Some(&response));
    }

    #[test]
    fn a_json_rpc_error_becomes_a_refusal_with_its_message_cleaned() {
        let redactor = Redactor::new(["s3cret".to_string()]);
        let response = json!({"jsonrpc": "2.0", "id": 1,
            "error": {"code": -32602, "message": "bad key s3cret"}});
        let err = into_result(&response, "initialize", &redactor).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server refused initialize: bad key [redacted]"
        );
    }
}
