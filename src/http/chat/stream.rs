//! The SSE answer of a streamed chat completion, following the Streams rule
//! of `docs/architecture.md`: a per-user slot is taken before the upstream
//! is called (none free: 429 at once), one task reads the upstream and
//! feeds the body through a bounded channel, and gives up when the client
//! takes no event within the send timeout. Nothing here is stored, so when
//! the client leaves the task stops and the upstream call is dropped;
//! [`sse_relay`] can instead finish reading and hand the outcome to a
//! callback (for a caller that stores the reply).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::openai_type;
use crate::http::error::{ApiError, Result};
use crate::http::extract::AuthUser;
use crate::http::request_id::current_request_id;
use crate::llm::{
    ChatChunk, ChatRequest, ChunkStream, Provider, StreamPermit, UpstreamError, Usage,
};
use crate::state::AppState;

/// Events buffered between the upstream reader and the client.
const EVENTS_IN_FLIGHT: usize = 16;
/// Comments sent on a quiet stream, well within the connection idle timeout.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// What every chunk of one answer repeats, and how the relay behaves.
pub struct SseRelay {
    /// `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// The model id the client asked for.
    pub model: String,
    /// Put in `event: error` bodies.
    pub request_id: String,
    /// A client that takes no event for this long is abandoned.
    pub send_timeout: Duration,
    /// Keep reading the upstream after the client left (so that
    /// `on_finished` sees the whole reply, e.g. to store it); otherwise the
    /// upstream call is dropped as soon as the client leaves.
    pub finish_after_client_leaves: bool,
    /// Runs once in the relay task when the upstream has ended, before the
    /// client gets `[DONE]`: a caller that stores the reply has stored it by
    /// then, so the client's next query reads it. An error it returns is sent
    /// as the `event: error` that ends the body instead of `[DONE]`.
    pub on_finished: Option<OnFinished>,
}

/// What a relayed stream ended with.
#[derive(Debug, Default)]
pub struct StreamOutcome {
    /// The text forwarded (or, after the client left, read) so far.
    pub content: String,
    /// Set when the upstream finished.
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// Set when the upstream failed mid-stream.
    pub error: Option<UpstreamError>,
    /// The client went away or stalled before the end.
    pub client_left: bool,
}

/// Called with the outcome when a relayed stream ends.
pub type OnFinished =
    Box<dyn FnOnce(StreamOutcome) -> BoxFuture<'static, Result<(), UpstreamError>> + Send>;

impl SseRelay {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>, usage: Option<Usage>) -> Event {
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
    let permit = stream_permit(state, user)?;
    let upstream = provider.stream(upstream_model, &request).await?;
    let (tokens, user_id) = (state.llm.tokens.clone(), user.id);
    let relay = SseRelay {
        id,
        created,
        model: request.model,
        request_id: current_request_id(),
        send_timeout: state.settings.http.stream_send_timeout,
        finish_after_client_leaves: false,
        // Count what the upstream reported (nothing when the client left early).
        on_finished: Some(Box::new(move |outcome| {
            Box::pin(async move {
                let used = outcome
                    .usage
                    .map_or(0, |usage| u64::from(usage.total_tokens));
                tokens.spend(user_id, used);
                Ok(())
            })
        })),
    };
    Ok(sse_relay(upstream, permit, relay))
}

/// A slot for one more stream of `user`, or 429 with `Retry-After`.
pub fn stream_permit(state: &AppState, user: &AuthUser) -> Result<StreamPermit> {
    state.llm.streams.try_acquire(user.id).ok_or_else(|| {
        metrics::counter!("chronicle_chat_streams_refused_total").increment(1);
        ApiError::RateLimited {
            retry_after_secs: 1,
        }
    })
}

/// Relays `upstream` as OpenAI chunk SSE: one task reads the upstream and
/// feeds the body through a bounded channel; `permit` is held until the
/// task ends.
pub fn sse_relay(mut upstream: ChunkStream, permit: StreamPermit, mut relay: SseRelay) -> Response {
    let (sender, receiver) = mpsc::channel::<Event>(EVENTS_IN_FLIGHT);
    let abandoned = Arc::new(AtomicBool::new(false));
    let producer_abandoned = abandoned.clone();
    tokio::spawn(async move {
        // Held until the upstream is dropped, whatever becomes of the body.
        let _permit = permit;
        let mut client = Some(sender);
        let mut outcome = StreamOutcome::default();
        let mut role = Some("assistant");
        loop {
            let next = match &client {
                Some(sender) if !relay.finish_after_client_leaves => tokio::select! {
                    // The client left: stop waiting for the upstream at once.
                    _ = sender.closed() => {
                        outcome.client_left = true;
                        break;
                    }
                    next = upstream.next() => next,
                },
                _ => upstream.next().await,
            };
            let (events, last) = match next {
                Some(Ok(ChatChunk::Delta(text))) => {
                    outcome.content.push_str(&text);
                    let delta = match role.take() {
                        Some(role) => json!({"role": role, "content": text}),
                        None => json!({"content": text}),
                    };
                    (vec![relay.chunk(delta, None, None)], false)
                }
                Some(Ok(ChatChunk::Finished {
                    finish_reason,
                    usage,
                })) => {
                    let delta = match role.take() {
                        Some(role) => json!({"role": role}),
                        None => json!({}),
                    };
                    let last = relay.chunk(delta, Some(&finish_reason), usage);
                    outcome.finish_reason = Some(finish_reason);
                    outcome.usage = usage;
                    // `[DONE]` follows once `on_finished` is done.
                    (vec![last], true)
                }
                Some(Err(err)) => {
                    let event = error_event(&err, &relay.request_id);
                    outcome.error = Some(err);
                    (vec![event], true)
                }
                None => {
                    let err = UpstreamError::failed("the upstream stream ended early");
                    let event = error_event(&err, &relay.request_id);
                    outcome.error = Some(err);
                    (vec![event], true)
                }
            };
            if let Some(sender) = &client {
                let mut gone = false;
                for event in events {
                    match tokio::time::timeout(relay.send_timeout, sender.send(event)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => gone = true,
                        Err(_) => {
                            tracing::warn!(
                                send_timeout_ms = relay.send_timeout.as_millis() as u64,
                                "the client took no chat chunk in time; the stream is abandoned"
                            );
                            producer_abandoned.store(true, Ordering::Release);
                            gone = true;
                        }
                    }
                    if gone {
                        break;
                    }
                }
                if gone {
                    outcome.client_left = true;
                    client = None;
                    if !relay.finish_after_client_leaves {
                        break;
                    }
                }
            }
            if last {
                break;
            }
        }
        drop(upstream);
        let completed = outcome.error.is_none() && outcome.finish_reason.is_some();
        let finished = match relay.on_finished.take() {
            Some(on_finished) => on_finished(outcome).await,
            None => Ok(()),
        };
        if let (true, Some(sender)) = (completed, &client) {
            let last = match finished {
                Ok(()) => Event::default().data("[DONE]"),
                Err(err) => error_event(&err, &relay.request_id),
            };
            let _ = tokio::time::timeout(relay.send_timeout, sender.send(last)).await;
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
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response()
}

/// `event: error` with our error body (and OpenAI's `type`).
fn error_event(err: &UpstreamError, request_id: &str) -> Event {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::StreamLimiter;
    use http_body_util::BodyExt;
    use tokio::sync::oneshot;
    use uuid::Uuid;

    fn upstream(pieces: &[&str], finish: bool) -> ChunkStream {
        let mut items: Vec<Result<ChatChunk, UpstreamError>> = pieces
            .iter()
            .map(|p| Ok(ChatChunk::Delta(p.to_string())))
            .collect();
        items.push(match finish {
            true => Ok(ChatChunk::Finished {
                finish_reason: "stop".into(),
                usage: Some(Usage::new(3, pieces.len() as u32)),
            }),
            false => Err(UpstreamError::failed("cut")),
        });
        futures::stream::iter(items).boxed()
    }

    fn relay(finish_after_client_leaves: bool) -> (SseRelay, oneshot::Receiver<StreamOutcome>) {
        let (tell, told) = oneshot::channel();
        let relay = SseRelay {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            request_id: "r".into(),
            send_timeout: Duration::from_secs(5),
            finish_after_client_leaves,
            on_finished: Some(Box::new(move |outcome| {
                Box::pin(async move {
                    let _ = tell.send(outcome);
                    Ok(())
                })
            })),
        };
        (relay, told)
    }

    #[tokio::test]
    async fn a_relayed_stream_sends_role_first_then_finish_usage_and_done() {
        let limiter = StreamLimiter::new(1);
        let permit = limiter.try_acquire(Uuid::nil()).unwrap();
        let (relay, told) = relay(false);
        let response = sse_relay(upstream(&["a", "b"], true), permit, relay);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let first_data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let first_chunk: Value = serde_json::from_str(first_data).unwrap();
        assert_eq!(
            first_chunk["choices"][0]["delta"],
            json!({"role": "assistant", "content": "a"})
        );
        let first = text.find(first_data).unwrap();
        let finish = text.find(r#""finish_reason":"stop""#).expect("finish");
        let done = text.find("data: [DONE]").expect("done");
        assert!(first < finish && finish < done, "{text}");
        assert!(
            text.contains(r#""usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":5}"#)
        );
        let outcome = told.await.unwrap();
        assert_eq!(outcome.content, "ab");
        assert_eq!(outcome.finish_reason.as_deref(), Some("stop"));
        assert!(!outcome.client_left && outcome.error.is_none());
        assert_eq!(limiter.open_for(Uuid::nil()), 0, "the permit is released");
    }

    #[tokio::test]
    async fn a_relay_told_to_finish_reads_the_whole_reply_after_the_client_left() {
        let limiter = StreamLimiter::new(1);
        let pieces: Vec<String> = (0..100).map(|i| format!("{i} ")).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (relay, told) = relay(true);
        let response = sse_relay(
            upstream(&pieces, true),
            limiter.try_acquire(Uuid::nil()).unwrap(),
            relay,
        );
        drop(response);
        let outcome = told.await.unwrap();
        assert_eq!(outcome.content, pieces.concat());
        assert!(outcome.client_left);
        assert_eq!(outcome.finish_reason.as_deref(), Some("stop"));
    }

    #[tokio::test]
    async fn a_mid_stream_failure_becomes_an_error_event_without_done() {
        let limiter = StreamLimiter::new(1);
        let (relay, told) = relay(false);
        let response = sse_relay(
            upstream(&["a"], false),
            limiter.try_acquire(Uuid::nil()).unwrap(),
            relay,
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("event: error\ndata: {\"error\":"), "{text}");
        assert!(text.contains("UPSTREAM_ERROR") && !text.contains("[DONE]"));
        assert!(told.await.unwrap().error.is_some());
    }
}
