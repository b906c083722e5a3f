//! Following events as they reach the stream, for the SSE and WebSocket
//! feeds: an ordered JetStream consumer on one subject filter, each message
//! decoded into its envelope, with its stream sequence.
//!
//! The stream keeps every event, in commit order and without gaps (the
//! relay's promise), so a resume reads it from a start and skips what the
//! client has: one source, so no gap and no duplicate where a replay would
//! hand over to a live feed.

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use chronicle_nats::EventEnvelope;
use futures::{Stream, StreamExt};

use crate::http::error::{ApiError, Result};
use crate::state::AppState;

/// Where a feed starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// With the next event to reach the stream.
    Live,
    /// From the first event on the filter; those at or before this global
    /// position are skipped (exact within one aggregate, whose positions
    /// grow with its sequence).
    AfterPosition(i64),
    /// After this stream sequence: exact across aggregates, since the
    /// stream is in commit order.
    AfterSequence(u64),
}

/// One event of a feed: its stream sequence and its envelope.
pub type FeedItem = (u64, EventEnvelope);

/// Where the consumer of a feed starting at `start` begins. A resume after
/// the largest sequence there is (`u64::MAX`, which a client may send) starts
/// there and so waits for ever, rather than overflowing.
pub fn deliver_policy(start: Start) -> DeliverPolicy {
    match start {
        Start::Live => DeliverPolicy::New,
        Start::AfterPosition(_) => DeliverPolicy::All,
        Start::AfterSequence(sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: sequence.saturating_add(1),
        },
    }
}

/// Events on `filter_subject` from `start` on.
pub async fn follow(
    state: &AppState,
    filter_subject: String,
    start: Start,
) -> Result<impl Stream<Item = FeedItem> + Send + 'static> {
    let jetstream = async_nats::jetstream::new(state.nats.clone());
    let unavailable = |err: &dyn std::fmt::Display| {
        tracing::warn!(error = %err, "event feed unavailable");
        ApiError::Unavailable("the event stream is not reachable".into())
    };
    let stream = jetstream
        .get_stream(&state.settings.nats.stream.name)
        .await
        .map_err(|err| unavailable(&err))?;
    let deliver_policy = deliver_policy(start);
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(&err))?;
    let messages = consumer.messages().await.map_err(|err| unavailable(&err))?;
    let after = match start {
        Start::AfterPosition(position) => position,
        _ => i64::MIN,
    };
    Ok(messages
        // An ordered consumer recreates itself after a hiccup; an error that
        // ends it ends the feed, and the client resumes with its last id.
        .take_while(|message| futures::future::ready(message.is_ok()))
        .filter_map(move |message| async move {
            let message = message.ok()?;
            let sequence = message.info().ok()?.stream_sequence;
            let envelope: EventEnvelope = serde_json::from_slice(&message.payload).ok()?;
            (envelope.global_position > after).then_some((sequence, envelope))
        }))
}
