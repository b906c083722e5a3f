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

/// The position a `Last-Event-ID` header asks to resume after: `None`
/// without the header, a 422 unless it is a global position (an integer
/// ≥ 0, surrounding spaces allowed), as the `id:` of an event gives it.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .filter(|position| *position >= 0)
        .map(Some)
        .ok_or_else(|| ApiError::invalid_field("Last-Event-ID", "must be a global position (≥ 0)"))
}

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
    let after = last_event_id(&headers)?;
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

/// Proptest-driven fuzzing of `Last-Event-ID` (docs/testing.md, "Parsers of
/// untrusted input").
#[cfg(test)]
mod fuzz {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;
    use crate::http::event_feed::deliver_policy;
    use crate::http::extract::fuzz::{config, corpus};

    fn read(bytes: &[u8]) -> Option<Result<Option<i64>>> {
        let value = HeaderValue::from_bytes(bytes).ok()?;
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", value);
        let read = last_event_id(&headers);
        if let Ok(Some(position)) = read {
            // What the feed then does with it.
            let _ = deliver_policy(Start::AfterPosition(position));
        }
        Some(read)
    }

    fn check_refusal(err: &ApiError) {
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.code(), "VALIDATION_ERROR");
    }

    fn header() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            "[ 0-9+-.eE]{0,24}".prop_map(String::into_bytes),
            any::<i128>().prop_map(|n| n.to_string().into_bytes()),
            any::<i64>().prop_map(|n| n.to_string().into_bytes()),
            any::<String>().prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any header a client can send: a position ≥ 0, or a 422.
        #[test]
        fn any_last_event_id_is_a_position_or_a_422(bytes in header()) {
            match read(&bytes) {
                // Not a header value at all: the HTTP layer refuses it first.
                None => {}
                Some(Ok(position)) => {
                    let position = position.expect("the header was there");
                    prop_assert!(position >= 0);
                    let text = std::str::from_utf8(&bytes).unwrap().trim();
                    prop_assert_eq!(text.parse::<i64>().ok(), Some(position));
                }
                Some(Err(err)) => check_refusal(&err),
            }
        }

        /// Every `id:` the stream writes (a global position) resumes after
        /// itself, however spaced.
        #[test]
        fn every_event_id_round_trips(position in 0..=i64::MAX, space in "[ \t]{0,2}") {
            let header = format!("{space}{position}{space}");
            prop_assert_eq!(read(header.as_bytes()).unwrap().ok(), Some(Some(position)));
        }
    }

    #[test]
    fn no_header_means_live() {
        assert!(matches!(last_event_id(&HeaderMap::new()), Ok(None)));
    }

    /// `tests/corpus/last_event_id/`: `ok-*` are positions, `err-*` a 422.
    #[test]
    fn the_corpus_of_last_event_ids_is_read_or_refused_as_named() {
        for (name, bytes) in corpus("last_event_id") {
            match read(&bytes).unwrap_or_else(|| panic!("{name} is not a header value")) {
                Ok(_) => assert!(name.starts_with("ok-"), "{name} was read"),
                Err(err) => {
                    assert!(name.starts_with("err-"), "{name} refused");
                    check_refusal(&err);
                }
            }
        }
    }
}
