//! The relay: the only path from the event store to JetStream.
//!
//! It reads committed events in commit order (see [`crate::stored_event`]),
//! publishes them in batches, waits for every ack and only then stores its
//! checkpoint. A crash between publish and checkpoint republishes the batch;
//! JetStream drops the copies by `Nats-Msg-Id`.
//!
//! Publishes are pipelined, each stating the stream sequence it expects to
//! follow (`Nats-Expected-Last-Sequence`). If one message of a batch is lost
//! in transit, every later one is refused instead of being stored ahead of it,
//! so per-aggregate order survives a broken connection. After any failure the
//! batch is republished one message at a time.
//!
//! Only one relay is active: the leader holds a Postgres advisory lock on the
//! connection it uses for all its reads and writes, so losing that connection
//! also means losing leadership. Standbys poll for the lock.
//!
//! An event that cannot be published as it is (its JSON cannot be read,
//! nests deeper than consumers can parse, or is larger than NATS takes) is
//! parked in `dead_letters` with every later event of its aggregate, and the
//! relay carries on with the others (see [`crate::dead_letter`]).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::{
    self, json_depth, AggregateKey, Blocked, Parked, DEAD_LETTERS_CHANNEL, MAX_PUBLISHED_DEPTH,
    RELAY_STAGE,
};
use crate::stored_event::{has_in_flight_after, read_committed_after, ReadEvent};
use crate::stream::ensure_stream;
use crate::{EventCursor, EventEnvelope, NatsError, StoredEvent, StreamSettings};

/// Channel notified by the events table's insert trigger.
pub const EVENTS_CHANNEL: &str = "chronicle_events";
/// Advisory lock key held by the active relay ("chronicle relay").
const RELAY_LOCK_KEY: i64 = 0x6368_726f_6e72_6c79;
/// Room left for the headers when comparing a body with NATS's `max_payload`
/// (ours take about 400 bytes).
const HEADER_ALLOWANCE: usize = 1024;

/// One event, encoded and checked, ready to publish.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A batch sorted into what goes to the stream and what is parked.
#[derive(Default)]
struct Sorted {
    outgoing: Vec<Outgoing>,
    parked: Vec<Parked>,
}

/// Tunables of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Events read and published per round trip.
    pub batch_size: i64,
    /// Fallback wake-up when no notification arrives.
    pub poll_interval: Duration,
    /// Name of this relay's checkpoint row.
    pub name: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            name: "main".into(),
        }
    }
}

/// Tails the events table and publishes to JetStream.
pub struct Relay {
    pool: PgPool,
    database_url: String,
    jetstream: jetstream::Context,
    stream: StreamSettings,
    config: RelayConfig,
}

impl Relay {
    pub fn new(
        pool: PgPool,
        database_url: String,
        jetstream: jetstream::Context,
        stream: StreamSettings,
        config: RelayConfig,
    ) -> Self {
        Self {
            pool,
            database_url,
            jetstream,
            stream,
            config,
        }
    }

    /// Runs until `shutdown` is cancelled, re-electing itself after any failure.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => return,
                Err(err) => {
                    metrics::counter!("chronicle_relay_errors_total").increment(1);
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "relay interrupted");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Waits for leadership, then relays until shutdown or the first error.
    async fn lead(&self, shutdown: &CancellationToken) -> Result<(), NatsError> {
        let mut conn = PgConnection::connect(&self.database_url).await?;
        if !self.acquire_leadership(&mut conn, shutdown).await? {
            return Ok(());
        }
        metrics::gauge!("chronicle_relay_leader").set(1.0);
        let result = self.relay_as_leader(&mut conn, shutdown).await;
        metrics::gauge!("chronicle_relay_leader").set(0.0);
        result
    }

    async fn acquire_leadership(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<bool, NatsError> {
        loop {
            let acquired: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if acquired {
                tracing::info!("relay is the leader");
                return Ok(true);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    async fn relay_as_leader(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), NatsError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([EVENTS_CHANNEL, DEAD_LETTERS_CHANNEL])
            .await?;
        let stream = ensure_stream(&self.jetstream, &self.stream).await?;
        let mut last_stream_sequence = stream_last_sequence(stream).await?;
        let mut cursor = self.load_checkpoint(conn).await?;
        let mut blocked = Blocked::load(conn, RELAY_STAGE).await?;
        self.release_requested(conn, &mut blocked, &mut last_stream_sequence)
            .await?;
        let mut retry_soon = Duration::from_millis(1);

        while !shutdown.is_cancelled() {
            let batch =
                read_committed_after(conn, cursor, self.config.batch_size, &[], None).await?;
            if batch.is_empty() {
                // Rows held back by an older in-flight transaction become
                // readable when it ends, which sends no notification of its own.
                let wait = if has_in_flight_after(conn, cursor).await? {
                    retry_soon = (retry_soon * 2).min(self.config.poll_interval);
                    retry_soon
                } else {
                    retry_soon = Duration::from_millis(1);
                    self.config.poll_interval
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    notification = listener.recv() => {
                        if notification?.channel() == DEAD_LETTERS_CHANNEL {
                            self.release_requested(conn, &mut blocked, &mut last_stream_sequence)
                                .await?;
                        }
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            retry_soon = Duration::from_millis(1);
            let started = Instant::now();
            let sorted = self.sort(&batch, &mut blocked);
            // Parked before anything behind them is published: once a later
            // event can reach a consumer, the gap must show in
            // `dead_letters` (the audit trail signs no checkpoint over it,
            // `audit::checkpoints_paused`). A crash before the checkpoint
            // reads the batch again and parks the same rows again.
            dead_letter::park(conn, RELAY_STAGE, &sorted.parked).await?;
            last_stream_sequence = self
                .publish_batch(&sorted.outgoing, last_stream_sequence)
                .await?;
            let last = batch.last().map(ReadEvent::cursor).unwrap_or(cursor);
            write_checkpoint(conn, &self.config.name, last).await?;
            cursor = last;
            record_batch_metrics(&batch, sorted.outgoing.len(), started);
            // A release asked for while busy is taken between batches.
            let mut release = false;
            while let Some(notification) = listener.next_buffered() {
                release |= notification.channel() == DEAD_LETTERS_CHANNEL;
            }
            if release {
                self.release_requested(conn, &mut blocked, &mut last_stream_sequence)
                    .await?;
            }
        }
        Ok(())
    }

    /// Encodes each event of `batch`, in order, unless its aggregate is held
    /// back or the event cannot be published: those are parked.
    fn sort(&self, batch: &[ReadEvent], blocked: &mut Blocked) -> Sorted {
        let mut sorted = Sorted::default();
        for read in batch {
            let (aggregate_type, aggregate_id) = read.aggregate();
            // By sequence: after a crash the batch is read again with its
            // poison event parked already, and what came before it goes out.
            let sequence = match read {
                ReadEvent::Event(event) => event.sequence,
                ReadEvent::Unreadable { parked, .. } => parked.sequence,
            };
            let held = blocked.held_behind_at(aggregate_type, aggregate_id, sequence);
            let parked = match (held, read) {
                (Some(reason), ReadEvent::Event(event)) => event.parked(reason),
                (Some(reason), ReadEvent::Unreadable { parked, .. }) => Parked {
                    reason,
                    ..parked.clone()
                },
                (None, ReadEvent::Unreadable { parked, .. }) => parked.clone(),
                (None, ReadEvent::Event(event)) => match self.encode(event) {
                    Ok(outgoing) => {
                        sorted.outgoing.push(outgoing);
                        continue;
                    }
                    Err(reason) => event.parked(reason),
                },
            };
            blocked.block(&parked);
            sorted.parked.push(parked);
        }
        sorted
    }

    /// The message for `event`, or why it cannot be published as it is.
    fn encode(&self, event: &StoredEvent) -> Result<Outgoing, String> {
        for (part, value) in [("payload", &event.payload), ("metadata", &event.metadata)] {
            let depth = json_depth(value);
            if depth > MAX_PUBLISHED_DEPTH {
                return Err(format!(
                    "{part} nests {depth} levels deep; at most {MAX_PUBLISHED_DEPTH} are published"
                ));
            }
        }
        let envelope = EventEnvelope::from(event);
        let body = serde_json::to_vec(&envelope)
            .map_err(|err| format!("the envelope cannot be encoded: {err}"))?;
        let max_payload = self.jetstream.client().max_payload();
        if body.len() + HEADER_ALLOWANCE > max_payload {
            return Err(format!(
                "the message of {} bytes exceeds what NATS takes ({max_payload} bytes with headers)",
                body.len()
            ));
        }
        Ok(Outgoing {
            subject: envelope.subject(&self.stream.subject_prefix),
            headers: envelope.headers()?,
            body: body.into(),
        })
    }

    /// Publishes the parked events of every aggregate whose release was
    /// asked for, in sequence order, unless one of them still fails, and
    /// moves `last_stream_sequence` past them: the next pipelined batch
    /// expects the stream's real last sequence, or its first messages are
    /// refused while later ones are taken, out of their aggregate's order.
    async fn release_requested(
        &self,
        conn: &mut PgConnection,
        blocked: &mut Blocked,
        last_stream_sequence: &mut u64,
    ) -> Result<(), NatsError> {
        for key in dead_letter::release_requests(conn, RELAY_STAGE).await? {
            let outgoing = match self.encode_parked(conn, &key).await? {
                Ok(outgoing) => outgoing,
                Err((sequence, reason)) => {
                    dead_letter::refuse_release(conn, RELAY_STAGE, &key, sequence, &reason).await?;
                    continue;
                }
            };
            *last_stream_sequence = self.publish_one_by_one(&outgoing).await?;
            dead_letter::mark_released(conn, RELAY_STAGE, &key).await?;
            blocked.unblock(&key);
            tracing::info!(aggregate_type = %key.0, aggregate_id = %key.1, events = outgoing.len(), "parked events released");
        }
        Ok(())
    }

    /// The parked events of `key`, encoded in order, or the first that still
    /// cannot be published and why.
    async fn encode_parked(
        &self,
        conn: &mut PgConnection,
        key: &AggregateKey,
    ) -> Result<Result<Vec<Outgoing>, (i64, String)>, NatsError> {
        let events = match dead_letter::parked_events(conn, RELAY_STAGE, key).await? {
            Ok(events) => events,
            Err(refused) => return Ok(Err(refused)),
        };
        let mut outgoing = Vec::with_capacity(events.len());
        for event in &events {
            match self.encode(event) {
                Ok(message) => outgoing.push(message),
                Err(reason) => return Ok(Err((event.sequence, reason))),
            }
        }
        Ok(Ok(outgoing))
    }

    /// Publishes a batch and returns the stream's last sequence afterwards.
    async fn publish_batch(
        &self,
        batch: &[Outgoing],
        last_stream_sequence: u64,
    ) -> Result<u64, NatsError> {
        if batch.is_empty() {
            return Ok(last_stream_sequence);
        }
        match self.publish_pipelined(batch, last_stream_sequence).await {
            Ok(last) => Ok(last),
            Err(err) => {
                tracing::debug!(error = %err, "pipelined publish failed, republishing one by one");
                self.publish_one_by_one(batch).await
            }
        }
    }

    async fn publish_pipelined(
        &self,
        batch: &[Outgoing],
        last_stream_sequence: u64,
    ) -> Result<u64, NatsError> {
        let mut pending = Vec::with_capacity(batch.len());
        for (offset, message) in batch.iter().enumerate() {
            let expected = last_stream_sequence + offset as u64;
            pending.push(self.publish(message, expected).await?);
        }
        let mut last = last_stream_sequence;
        // Every message is already on the wire; awaiting the acks in order
        // costs no extra round trips.
        for ack in pending {
            let ack = ack
                .await
                .map_err(|err| NatsError::jetstream("publish ack", err))?;
            if ack.duplicate {
                return Err(NatsError::jetstream("publish", "duplicate in a new batch"));
            }
            last = ack.sequence;
        }
        Ok(last)
    }

    /// The slow, always-correct path: learn the stream's real last sequence
    /// and publish each event only after the previous one was acknowledged.
    async fn publish_one_by_one(&self, batch: &[Outgoing]) -> Result<u64, NatsError> {
        let stream = ensure_stream(&self.jetstream, &self.stream).await?;
        let mut last = stream_last_sequence(stream).await?;
        for message in batch {
            let ack = self
                .publish(message, last)
                .await?
                .await
                .map_err(|err| NatsError::jetstream("publish ack", err));
            match ack {
                Ok(ack) if ack.duplicate => {}
                Ok(ack) => last = ack.sequence,
                Err(err) => return Err(err),
            }
        }
        Ok(last)
    }

    async fn publish(
        &self,
        message: &Outgoing,
        expected_last_sequence: u64,
    ) -> Result<jetstream::context::PublishAckFuture, NatsError> {
        let mut headers = message.headers.clone();
        headers.insert(
            "Nats-Expected-Last-Sequence",
            expected_last_sequence.to_string().as_str(),
        );
        self.jetstream
            .publish_with_headers(message.subject.clone(), headers, message.body.clone())
            .await
            .map_err(|err| match err.kind() {
                PublishErrorKind::StreamNotFound => {
                    NatsError::jetstream("publish", "stream not found")
                }
                _ => NatsError::jetstream("publish", err),
            })
    }

    async fn load_checkpoint(&self, conn: &mut PgConnection) -> Result<EventCursor, NatsError> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "select transaction_id::text, global_position from relay_checkpoints where name = $1",
        )
        .bind(&self.config.name)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((transaction_id, global_position)) = row else {
            return Ok(EventCursor::default());
        };
        let transaction_id = transaction_id
            .parse()
            .map_err(|_| NatsError::MalformedEvent("relay checkpoint".into(), transaction_id))?;
        Ok(EventCursor {
            transaction_id,
            global_position,
        })
    }
}

async fn write_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    cursor: EventCursor,
) -> Result<(), NatsError> {
    sqlx::query(
        "insert into relay_checkpoints (name, transaction_id, global_position, updated_at) \
         values ($1, $2::text::xid8, $3, now()) \
         on conflict (name) do update set transaction_id = excluded.transaction_id, \
           global_position = excluded.global_position, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(cursor.transaction_id.to_string())
    .bind(cursor.global_position)
    .execute(conn)
    .await?;
    Ok(())
}

async fn stream_last_sequence(mut stream: jetstream::stream::Stream) -> Result<u64, NatsError> {
    let info = stream
        .info()
        .await
        .map_err(|err| NatsError::jetstream("stream info", err))?;
    Ok(info.state.last_sequence)
}

fn record_batch_metrics(batch: &[ReadEvent], published: usize, started: Instant) {
    metrics::counter!("chronicle_relay_published_events_total").increment(published as u64);
    metrics::histogram!("chronicle_relay_batch_seconds").record(started.elapsed().as_secs_f64());
    if let Some(last) = batch.last() {
        if let ReadEvent::Event(event) = last {
            let lag = chrono::Utc::now() - event.recorded_at;
            metrics::gauge!("chronicle_relay_lag_seconds")
                .set(lag.num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        metrics::gauge!("chronicle_relay_position").set(last.cursor().global_position as f64);
    }
}
