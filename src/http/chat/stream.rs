//! The SSE answer of a streamed chat completion, following the Streams rule
//! of `docs/architecture.md`: a per-user slot is taken before the upstream
//! is called (none free: 429 at once), one task reads the upstream and
//! feeds the body through a bounded channel, and gives up when the client
//! takes no event within the send timeout. Nothing here is stored, so when
//! the client leaves the task stops and the upstream call is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::openai_type;
use crate::http::error::{ApiError, Result};
use crate::http::extract::AuthUser;
use crate::http::request_id::current_request_id;
use crate::llm::{ChatChunk, ChatRequest, Provider, UpstreamError, Usage};
use crate::state::AppState;

/// Events buffered between the upstream reader and the client.
const EVENTS_IN_FLIGHT: usize = 16;
/// Comments sent on a quiet stream, well within the connection idle timeout.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// What every chunk of one answer repeats.
pub(crate) struct ChunkHeader {
    pub id: String,
    pub created: i64,
    pub model: String,
}

impl ChunkHeader {
    pub(crate) fn chunk(
        &self,
        delta: Value,
        finish_reason: Option<&str>,
        usage: Option<Usage>,
    ) -> Event {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        if let Some(usage) = usage {
            chunk["usage"] = json!(usage);
        }
        Event::default().data(chunk.to_string())
    }
}

/// Starts the upstream stream (failures before its first byte answer as
/// ordinary errors) and answers with the SSE body it feeds.
pub async fn stream_completion(
    state: &AppState,
    user: &AuthUser,
    provider: Arc<dyn Provider>,
    upstream_model: &str,
    request: ChatRequest,
    id: String,
    created: i64,
) -> Result<Response> {
    let permit = state.llm.streams.try_acquire(user.id).ok_or_else(|| {
        metrics::counter!("chronicle_chat_streams_refused_total").increment(1);
        ApiError::RateLimited {
            retry_after_secs: 1,
        }
    })?;
    let mut upstream = provider.stream(upstream_model, &request).await?;
    let header = ChunkHeader {
        id,
        created,
        model: request.model,
    };
    let request_id = current_request_id();
    let send_timeout = state.settings.http.stream_send_timeout;
    let (sender, receiver) = mpsc::channel::<Event>(EVENTS_IN_FLIGHT);
    let abandoned = Arc::new(AtomicBool::new(false));
    let producer_abandoned = abandoned.clone();
    tokio::spawn(async move {
        // Held until the upstream is dropped, whatever becomes of the body.
        let _permit = permit;
        let mut role = Some("assistant");
        loop {
            let next = tokio::select! {
                // The client left: stop waiting for the upstream at once.
                _ = sender.closed() => return,
                next = upstream.next() => next,
            };
            let (events, last) = match next {
                Some(Ok(ChatChunk::Delta(text))) => {
                    let delta = match role.take() {
                        Some(role) => json!({"role": role, "content": text}),
                        None => json!({"content": text}),
                    };
                    (vec![header.chunk(delta, None, None)], false)
                }
                Some(Ok(ChatChunk::Finished {
                    finish_reason,
                    usage,
                })) => {
                    let delta = match role.take() {
                        Some(role) => json!({"role": role}),
                        None => json!({}),
                    };
                    let done = Event::default().data("[DONE]");
                    (
                        vec![header.chunk(delta, Some(&finish_reason), usage), done],
                        true,
                    )
                }
                Some(Err(err)) => (vec![error_event(&err, &request_id)], true),
                None => {
                    let err = UpstreamError::failed("the upstream stream ended early");
                    (vec![error_event(&err, &request_id)], true)
                }
            };
            for event in events {
                match tokio::time::timeout(send_timeout, sender.send(event)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::warn!(
                            send_timeout_ms = send_timeout.as_millis() as u64,
                            "the client took no chat chunk in time; the stream is abandoned"
                        );
                        producer_abandoned.store(true, Ordering::Release);
                        return;
                    }
                }
            }
            if last {
                return;
            }
        }
    });
    // Abandoned: the body ends with an error (the connection is cut), not
    // as if the reply were complete.
    let body = futures::stream::unfold(
        (receiver, abandoned, false),
        |(mut receiver, abandoned, ended)| async move {
            if ended {
                return None;
            }
            match receiver.recv().await {
                Some(event) => Some((Ok(event), (receiver, abandoned, false))),
                None if abandoned.load(Ordering::Acquire) => Some((
                    Err(std::io::Error::other("the stream was abandoned")),
                    (receiver, abandoned, true),
                )),
                None => None,
            }
        },
    );
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response())
}

/// `event: error` with our error body (and OpenAI's `type`).
pub(crate) fn error_event(err: &UpstreamError, request_id: &str) -> Event {
    tracing::warn!(error = %err, "upstream failed mid-stream");
    let api_error = ApiError::from(err.clone());
    let data = json!({
        "error": {
            "code": api_error.code(),
            "message": api_error.to_string(),
            "details": [],
            "request_id": request_id,
            "type": openai_type(api_error.status()),
        }
    });
    Event::default().event("error").data(data.to_string())
}
