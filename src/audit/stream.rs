//! Streams query results as an HTTP body or a file with flat memory: a task
//! reads rows from Postgres as they arrive and renders them into chunks of
//! about 64 KiB, handed over through a channel of a few chunks. A slow
//! reader slows the query down (backpressure); a reader that goes away stops it.
//!
//! A running stream holds a database connection, so streams served over
//! HTTP are bounded (see "Streams" in `docs/architecture.md`): each needs a
//! [`StreamSlot`] from the [`StreamBudget`], taken before the query starts
//! (none free: answer 503 at once), and a reader that takes no chunk for the
//! send timeout is abandoned: the query is dropped, its connection and slot
//! freed, and the body ends with an error rather than looking complete.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

const CHUNK_BYTES: usize = 64 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

/// Renders one row into the output buffer.
pub type Render = Box<dyn FnMut(&PgRow, &mut Vec<u8>) -> anyhow::Result<()> + Send>;

/// How many streams may run at once and how long one may wait for its reader.
#[derive(Debug, Clone)]
pub struct StreamBudget {
    slots: Arc<Semaphore>,
    send_timeout: Duration,
}

impl StreamBudget {
    pub fn new(slots: usize, send_timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            send_timeout,
        }
    }

    /// A free slot, or `None` at once when every slot is taken.
    pub fn try_acquire(&self) -> Option<StreamSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(StreamSlot {
            _permit: Some(permit),
            send_timeout: Some(self.send_timeout),
        })
    }

    /// Slots not taken right now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// The right to run one stream; held by its producer until the query ends.
#[derive(Debug)]
pub struct StreamSlot {
    _permit: Option<OwnedSemaphorePermit>,
    send_timeout: Option<Duration>,
}

impl StreamSlot {
    /// No budget and no send timeout: for the CLI, whose only reader is a
    /// local file or pipe and whose pool is its own.
    pub fn unbounded() -> Self {
        Self {
            _permit: None,
            send_timeout: None,
        }
    }
}

/// Why the producer stopped sending.
enum SendFailed {
    /// The reader dropped the stream.
    Gone,
    /// The reader took no chunk within the send timeout.
    Stalled,
}

/// Runs `query` and streams `header` followed by every rendered row.
pub fn stream_rows(
    pool: PgPool,
    mut query: QueryBuilder<'static, Postgres>,
    header: Option<Bytes>,
    mut render: Render,
    slot: StreamSlot,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let abandoned = Arc::new(AtomicBool::new(false));
    let producer_abandoned = abandoned.clone();
    tokio::spawn(async move {
        // The whole slot moves in (not only the field used below): its permit
        // is held until the query ends, whatever becomes of the body.
        let slot = slot;
        let deliver = |item| send(&sender, item, slot.send_timeout);
        let outcome = async {
            let mut rows = query.build().fetch(&pool);
            let mut buffer = Vec::with_capacity(CHUNK_BYTES + 4096);
            if let Some(header) = header {
                buffer.extend_from_slice(&header);
            }
            loop {
                let failure = match rows.try_next().await {
                    Ok(Some(row)) => render(&row, &mut buffer).err(),
                    Ok(None) => break,
                    Err(err) => Some(anyhow::Error::new(err).context("reading rows")),
                };
                if let Some(err) = failure {
                    tracing::error!(error = ?err, "streamed query failed; the response is cut short");
                    return deliver(Err(std::io::Error::other("the stream failed"))).await;
                }
                if buffer.len() >= CHUNK_BYTES {
                    let chunk = Bytes::from(std::mem::replace(
                        &mut buffer,
                        Vec::with_capacity(CHUNK_BYTES + 4096),
                    ));
                    deliver(Ok(chunk)).await?;
                }
            }
            // The query is done: its connection goes back before the last chunk waits.
            drop(rows);
            if buffer.is_empty() {
                return Ok(());
            }
            deliver(Ok(Bytes::from(buffer))).await
        }
        .await;
        if let Err(SendFailed::Stalled) = outcome {
            tracing::warn!(
                send_timeout_ms = slot.send_timeout.unwrap_or_default().as_millis() as u64,
                "the reader took no chunk in time; the stream is abandoned"
            );
            producer_abandoned.store(true, Ordering::Release);
        }
        // `sender`, the rows and the slot are dropped here.
    });
    futures::stream::unfold(
        (receiver, abandoned, false),
        |(mut receiver, abandoned, ended)| async move {
            if ended {
                return None;
            }
            match receiver.recv().await {
                Some(item) => Some((item, (receiver, abandoned, false))),
                // Abandoned: end with an error, so the body is cut short
                // (no final chunk) instead of looking complete.
                None if abandoned.load(Ordering::Acquire) => Some((
                    Err(std::io::Error::other("the stream was abandoned")),
                    (receiver, abandoned, true),
                )),
                None => None,
            }
        },
    )
}

async fn send(
    sender: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    item: Result<Bytes, std::io::Error>,
    timeout: Option<Duration>,
) -> Result<(), SendFailed> {
    match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, sender.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendFailed::Gone),
            Err(_) => Err(SendFailed::Stalled),
        },
        None => sender.send(item).await.map_err(|_| SendFailed::Gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_hands_out_as_many_slots_as_it_has_and_takes_them_back() {
        let budget = StreamBudget::new(2, Duration::from_secs(1));
        let first = budget.try_acquire().expect("a slot");
        let second = budget.try_acquire().expect("a second slot");
        assert!(budget.try_acquire().is_none(), "no third slot");
        drop(first);
        assert!(budget.try_acquire().is_some(), "a freed slot is free again");
        drop(second);
        assert_eq!(budget.available(), 2);
    }

    #[tokio::test]
    async fn a_stalled_send_gives_up_after_the_timeout() {
        let (sender, _receiver) = mpsc::channel(1);
        assert!(
            send(&sender, Ok(Bytes::new()), Some(Duration::from_millis(10)))
                .await
                .is_ok()
        );
        let stalled = send(&sender, Ok(Bytes::new()), Some(Duration::from_millis(10))).await;
        assert!(matches!(stalled, Err(SendFailed::Stalled)));
    }
}
