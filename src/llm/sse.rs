//! Turns an upstream's SSE body into [`ChatChunk`]s: `eventsource-stream`
//! parses the events, a provider's [`EventParser`] reads each one. The
//! stream ends after the parser reports completion, at the first error, or
//! with an error if the body ends before completion (a cut connection must
//! not look like a finished reply).

use std::collections::VecDeque;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::stream::{self, BoxStream};
use futures::StreamExt;

use super::{ChatChunk, ChunkStream, UpstreamError};

/// The most we read of one streamed answer.
const MAX_STREAM_BYTES: usize = 32 * 1024 * 1024;

/// What one upstream event means.
pub(crate) trait EventParser: Send + 'static {
    /// The chunks `event` yields, and whether the reply is now complete.
    fn on_event(&mut self, event: &Event) -> Result<(Vec<ChatChunk>, bool), UpstreamError>;
}

struct State<P> {
    events: BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>,
    parser: P,
    pending: VecDeque<ChatChunk>,
    finished: bool,
    provider: &'static str,
}

/// The chunks of `response`'s SSE body, as they arrive.
pub(crate) fn chunks<P: EventParser>(
    provider: &'static str,
    response: reqwest::Response,
    parser: P,
) -> ChunkStream {
    // An upstream that never ends an event must not grow our memory without
    // bound: past the cap the bytes stop, which reads as an early end.
    let capped = response.bytes_stream().scan(0usize, |total, chunk| {
        if let Ok(bytes) = &chunk {
            *total += bytes.len();
        }
        futures::future::ready((*total <= MAX_STREAM_BYTES).then_some(chunk))
    });
    let state = State {
        events: capped.eventsource().boxed(),
        parser,
        pending: VecDeque::new(),
        finished: false,
        provider,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.pending.pop_front() {
                return Some((Ok(chunk), state));
            }
            if state.finished {
                return None;
            }
            let failure = match state.events.next().await {
                Some(Ok(event)) => match state.parser.on_event(&event) {
                    Ok((chunks, done)) => {
                        state.pending.extend(chunks);
                        state.finished = done;
                        continue;
                    }
                    Err(err) => err,
                },
                Some(Err(EventStreamError::Transport(err))) => {
                    super::http::transport_error(state.provider, &err)
                }
                Some(Err(_)) => UpstreamError::failed(format!(
                    "{} sent a malformed event stream",
                    state.provider
                )),
                None => UpstreamError::failed(format!(
                    "{} ended the stream before the reply was complete",
                    state.provider
                )),
            };
            state.finished = true;
            return Some((Err(failure), state));
        }
    })
    .boxed()
}

/// `data` as JSON of type `T`, or a short error naming the provider.
pub(crate) fn json<T: serde::de::DeserializeOwned>(
    provider: &str,
    event: &Event,
) -> Result<T, UpstreamError> {
    serde_json::from_str(&event.data)
        .map_err(|_| UpstreamError::failed(format!("{provider} sent an event we cannot read")))
}
