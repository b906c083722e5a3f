//! `GET /v1/ws`: a WebSocket with the events of all of the caller's tasks
//! and chat sessions, `{"position", "event_type", "envelope"}` each, live.
//! The client may send `{"resume_after": N}` at any time: the feed restarts
//! after position N.
//!
//! `position` is the event's sequence on the stream, which is commit order
//! across aggregates, so a resume is exact (a global position is not commit
//! order across aggregates; see `docs/architecture.md`, "Event feeds").
//! Tasks and chat sessions are commanded only by their owner, so the
//! caller's events are those whose metadata names the caller as the actor.

use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use chronicle_nats::EventEnvelope;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::http::error::{ApiError, Result};
use crate::http::event_feed::{self, Start};
use crate::http::extract::{AuthUser, Query};
use crate::http::identity::{identify, Identity};
use crate::state::AppState;

/// A ping this often; a client silent for three of them is let go.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// The aggregate types whose events the feed carries.
const FEED_TYPES: [&str; 2] = ["Task", "ChatSession"];

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/ws", get(open_feed))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct FeedQuery {
    /// An access token, for clients that cannot set `Authorization` on a
    /// WebSocket (browsers).
    pub access_token: Option<String>,
}

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    resume_after: u64,
}

/// The position a client's text message asks to resume after, or the
/// error message (`VALIDATION_ERROR`, in the API's error format) to send
/// back; the socket stays open either way.
fn resume_request(text: &str) -> std::result::Result<u64, String> {
    // serde would read `[5]` into the struct field by field: an object only.
    let is_object = text.trim_start().starts_with('{');
    is_object
        .then(|| serde_json::from_str::<ClientMessage>(text).ok())
        .flatten()
        .map(|ClientMessage { resume_after }| resume_after)
        .ok_or_else(|| {
            json!({"error": {"code": "VALIDATION_ERROR",
                "message": "expected {\"resume_after\": <position>}"}})
            .to_string()
        })
}

/// Opens the caller's event feed.
#[utoipa::path(get, path = "/v1/ws", tag = "sessions", security(("bearer" = [])), params(
    FeedQuery,
    ("Upgrade" = String, Header, description = "`websocket`", pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"),
    ("Connection" = String, Header, description = "Includes `Upgrade`"),
    ("Sec-WebSocket-Version" = String, Header, description = "`13`", pattern = "^13$"),
    ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes, base64", pattern = "^[A-Za-z0-9+/]{22}==$"),
), responses(
    (status = 101, description = "WebSocket: `{\"position\", \"event_type\", \"envelope\"}` per event; send `{\"resume_after\": N}` to replay after position N"),
    (status = 400, description = "Not a WebSocket upgrade"), (status = 401, description = "No or invalid token"),
    (status = 503, description = "Credentials cannot be checked right now"),
))]
pub async fn open_feed(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Query(query): Query<FeedQuery>,
    // Checked after the credentials, so that a caller without any learns that first.
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let identity = match (identity, query.access_token) {
        (Identity::Anonymous, Some(token)) => identify(&state, &token).await,
        (identity, _) => identity,
    };
    let user = match identity {
        Identity::User(user) => user,
        Identity::Anonymous => return Err(ApiError::AuthRequired),
        Identity::Invalid => return Err(ApiError::InvalidToken),
        Identity::Unknown => {
            return Err(ApiError::Unavailable(
                "cannot check credentials right now".into(),
            ))
        }
    };
    let upgrade =
        upgrade.map_err(|_| ApiError::BadRequest("this route takes a WebSocket upgrade".into()))?;
    // Each feed is a NATS consumer and a task: one user may not hold them all.
    let permit = state
        .feeds
        .try_acquire(user.id)
        .ok_or(ApiError::RateLimited {
            retry_after_secs: 5,
        })?;
    // Fail before the upgrade if the stream is not reachable.
    let filter = format!("{}.>", state.settings.nats.stream.subject_prefix);
    let feed = event_feed::follow(&state, filter.clone(), Start::Live).await?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        run_feed(socket, state, user, filter, feed).await;
        drop(permit);
    }))
}

async fn run_feed(
    socket: WebSocket,
    state: AppState,
    user: AuthUser,
    filter: String,
    feed: impl futures::Stream<Item = event_feed::FeedItem> + Send + 'static,
) {
    let (mut to_client, mut from_client) = socket.split();
    let send_timeout = state.settings.http.stream_send_timeout;
    let mut feed = feed.boxed();
    let mut ping = tokio::time::interval(HEARTBEAT);
    let mut last_heard = Instant::now();
    let reason = loop {
        let outgoing = tokio::select! {
            item = feed.next() => match item {
                Some((position, envelope)) if is_callers(&envelope, user.id) => {
                    let event_type = envelope.event_type.clone();
                    let text = json!({"position": position, "event_type": event_type, "envelope": envelope});
                    Message::Text(text.to_string().into())
                }
                Some(_) => continue,
                None => break "the event stream ended; reconnect with resume_after",
            },
            incoming = from_client.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    match resume_request(&text) {
                        Ok(resume_after) => {
                            match event_feed::follow(&state, filter.clone(), Start::AfterSequence(resume_after)).await {
                                Ok(resumed) => feed = resumed.boxed(),
                                Err(_) => break "the event stream is not reachable",
                            }
                            continue;
                        }
                        Err(reply) => Message::Text(reply.into()),
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {
                    last_heard = Instant::now();
                    continue;
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > 3 * HEARTBEAT {
                    break "no answer to pings";
                }
                Message::Ping(Default::default())
            }
        };
        // A client that stops reading is let go, not buffered for.
        match tokio::time::timeout(send_timeout, to_client.send(outgoing)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => break "too slow: events were not read in time",
        }
    };
    let close = Message::Close(Some(CloseFrame {
        code: axum::extract::ws::close_code::AGAIN,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(send_timeout, to_client.send(close)).await;
}

/// Whether `envelope` is an event of one of `user`'s tasks or chat sessions.
fn is_callers(envelope: &EventEnvelope, user: Uuid) -> bool {
    FEED_TYPES.contains(&envelope.aggregate_type.as_str())
        && envelope
            .metadata
            .get("actor_id")
            .and_then(|actor| actor.as_str())
            == Some(user.to_string().as_str())
}

/// Proptest-driven fuzzing of the resume message (docs/testing.md,
/// "Parsers of untrusted input").
#[cfg(test)]
mod fuzz {
    use async_nats::jetstream::consumer::DeliverPolicy;
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::http::extract::fuzz::{config, corpus, json_value};

    /// Where the feed resumed by `text` starts, as the socket would do it.
    fn resume(text: &str) -> std::result::Result<u64, String> {
        let after = resume_request(text)?;
        match event_feed::deliver_policy(Start::AfterSequence(after)) {
            DeliverPolicy::ByStartSequence { start_sequence } => {
                assert!(start_sequence > after || start_sequence == u64::MAX);
            }
            other => panic!("{other:?}"),
        }
        Ok(after)
    }

    fn check_refusal(reply: &str) {
        let reply: Value = serde_json::from_str(reply).expect("the reply is JSON");
        assert_eq!(reply["error"]["code"], "VALIDATION_ERROR");
        assert!(reply["error"]["message"].is_string());
    }

    fn message() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ \\[\\]{}:,\"a-z_0-9.eE+-]{0,40}",
            json_value().prop_map(|value| serde_json::json!({ "resume_after": value }).to_string()),
            json_value().prop_map(|value| value.to_string()),
            any::<i128>().prop_map(|n| format!("{{\"resume_after\":{n}}}")),
        ]
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any text: a position, or the VALIDATION_ERROR reply; accepted only
        /// as `{"resume_after": <u64>}` and nothing else.
        #[test]
        fn any_message_resumes_or_gets_the_validation_error_reply(text in message()) {
            match resume(&text) {
                Ok(after) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    prop_assert_eq!(value, serde_json::json!({ "resume_after": after }));
                }
                Err(reply) => check_refusal(&reply),
            }
        }

        /// Every position, however spaced, resumes after itself.
        #[test]
        fn a_valid_resume_message_round_trips(after in any::<u64>(), space in "[ \t\r\n]{0,3}") {
            let text = format!("{space}{{{space}\"resume_after\"{space}:{space}{after}{space}}}{space}");
            prop_assert_eq!(resume(&text), Ok(after));
        }
    }

    #[test]
    fn a_resume_after_the_largest_sequence_starts_there_instead_of_overflowing() {
        let text = format!("{{\"resume_after\": {}}}", u64::MAX);
        assert_eq!(resume(&text), Ok(u64::MAX));
    }

    /// `tests/corpus/ws_resume/`: `ok-*` resume, `err-*` get the reply.
    #[test]
    fn the_corpus_of_resume_messages_is_read_or_refused_as_named() {
        for (name, bytes) in corpus("ws_resume") {
            // A WebSocket text message is UTF-8 by the protocol.
            let text = String::from_utf8(bytes).expect(&name);
            match resume(&text) {
                Ok(_) => assert!(name.starts_with("ok-"), "{name} resumed"),
                Err(reply) => {
                    assert!(name.starts_with("err-"), "{name} refused");
                    check_refusal(&reply);
                }
            }
        }
    }
}
