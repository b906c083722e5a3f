//! `GET /v1/sessions/{id}/events`: the session's events as Server-Sent
//! Events. `id:` is the global position, `event:` the event type, `data:`
//! the envelope as on NATS. With `Last-Event-ID` it first replays what came
//! after that position, then goes on live; a comment every 15 s keeps
//! proxies from closing it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::load_session;
use crate::http::error::{ApiError, Result};
use crate::http::event_feed::{self, Start};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath};
use crate::state::AppState;

/// Events buffered for a client; one that falls further behind is dropped.
const EVENTS_IN_FLIGHT: usize = 256;
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The session's events, live, or replayed from `Last-Event-ID` on.
#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "sessions", security(("bearer" = [])),
    params(("id" = Uuid, Path), ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "Replay the events after this global position first")),
    responses(
        (status = 200, content_type = "text/event-stream", description = "`id:` global position, `event:` event type, `data:` the envelope"),
        (status = 401), (status = 404, description = "No such session of yours"),
        (status = 422, description = "Last-Event-ID is not a position, or the id is not a UUID"),
        (status = 503, description = "The event stream is not reachable"),
))]
pub async fn session_events(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Response> {
    load_session(&state, &user, token, id).await?;
    let after = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .filter(|position| *position >= 0)
                .ok_or_else(|| {
                    ApiError::invalid_field("Last-Event-ID", "must be a global position (≥ 0)")
                })?,
        ),
    };
    // Each feed is a NATS consumer and a task: one user may not hold them all.
    let permit = state
        .feeds
        .try_acquire(user.id)
        .ok_or(ApiError::RateLimited {
            retry_after_secs: 5,
        })?;
    let stream = &state.settings.nats.stream;
    let filter = format!("{}.ChatSession.{id}.*", stream.subject_prefix);
    let start = after.map_or(Start::Live, Start::AfterPosition);
    let mut feed = Box::pin(event_feed::follow(&state, filter, start).await?);
    let (sender, receiver) = mpsc::channel::<Event>(EVENTS_IN_FLIGHT);
    let send_timeout = state.settings.http.stream_send_timeout;
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            // A client that left is noticed at once, not at the next event.
            let next = tokio::select! {
                _ = sender.closed() => return,
                next = feed.next() => next,
            };
            let Some((_, envelope)) = next else { return };
            let Ok(data) = serde_json::to_string(&envelope) else {
                continue;
            };
            let event = Event::default()
                .id(envelope.global_position.to_string())
                .event(envelope.event_type.as_str())
                .data(data);
            // A client that stops reading is let go, not buffered for.
            match tokio::time::timeout(send_timeout, sender.send(event)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    });
    let events = ReceiverStream::new(receiver).map(Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response())
}
