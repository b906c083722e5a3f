//! Following events as they reach the stream, for the SSE and WebSocket
//! feeds: an ordered JetStream consumer on one subject filter, each message
//! decoded into its envelope.
//!
//! The stream keeps every event, in commit order and without gaps (the
//! relay's promise), so a resume reads it from the start of the filter and
//! skips what the client has: one source, so no gap and no duplicate where a
//! replay would hand over to a live feed.

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use chronicle_nats::EventEnvelope;
use futures::{Stream, StreamExt};

use crate::http::error::{ApiError, Result};
use crate::state::AppState;

/// Events on `filter_subject`: those after global position `after` (all
/// earlier ones skipped), or with `after: None` only those still to come.
pub async fn follow(
    state: &AppState,
    filter_subject: String,
    after: Option<i64>,
) -> Result<impl Stream<Item = EventEnvelope> + Send + 'static> {
    let jetstream = async_nats::jetstream::new(state.nats.clone());
    let unavailable = |err: &dyn std::fmt::Display| {
        tracing::warn!(error = %err, "event feed unavailable");
        ApiError::Unavailable("the event stream is not reachable".into())
    };
    let stream = jetstream
        .get_stream(&state.settings.nats.stream.name)
        .await
        .map_err(|err| unavailable(&err))?;
    let deliver_policy = match after {
        Some(_) => DeliverPolicy::All,
        None => DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(&err))?;
    let messages = consumer.messages().await.map_err(|err| unavailable(&err))?;
    let after = after.unwrap_or(i64::MIN);
    Ok(messages
        // An ordered consumer recreates itself after a hiccup; an error that
        // ends it ends the feed, and the client resumes with its last id.
        .take_while(|message| futures::future::ready(message.is_ok()))
        .filter_map(move |message| async move {
            let message = message.ok()?;
            let envelope: EventEnvelope = serde_json::from_slice(&message.payload).ok()?;
            (envelope.global_position > after).then_some(envelope)
        }))
}
