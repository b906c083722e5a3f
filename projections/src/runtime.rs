//! The live side of a projection: a durable JetStream consumer feeding batches
//! into one Postgres transaction each, acknowledged only after commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use chronicle_nats::stream::ensure_stream;
use chronicle_nats::{EventEnvelope, StreamSettings};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::projection::{lock_key, VersionGuard, MARK_AND_LOCK};
use crate::{Projection, ProjectionError, PROJECTED_CHANNEL};

/// What a running projection reports to `/ready` and `/metrics`.
#[derive(Debug, Default)]
pub struct ProjectionStatus {
    failure: Mutex<Option<String>>,
    stream_sequence: AtomicU64,
}

impl ProjectionStatus {
    /// Why the projection stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().map(|f| f.clone()).unwrap_or(None)
    }

    /// The last stream sequence applied.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence.load(Ordering::Relaxed)
    }
}

/// Runs one projection against the events stream.
pub struct ProjectionRunner {
    pool: PgPool,
    jetstream: jetstream::Context,
    stream: StreamSettings,
    projection: Arc<dyn Projection>,
    status: Arc<ProjectionStatus>,
    batch_size: usize,
}

impl ProjectionRunner {
    pub fn new(
        pool: PgPool,
        jetstream: jetstream::Context,
        stream: StreamSettings,
        projection: Arc<dyn Projection>,
    ) -> Self {
        Self {
            pool,
            jetstream,
            stream,
            projection,
            status: Arc::default(),
            batch_size: 500,
        }
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    pub fn status(&self) -> Arc<ProjectionStatus> {
        self.status.clone()
    }

    /// Consumes until `shutdown`; transient failures are retried, a poison
    /// event stops the projection until it is fixed and replayed.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.projection.name();
        if let Err(err) = self.clear_failure().await {
            tracing::warn!(projection = name, error = %err, "could not clear the failure mark");
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consume(&shutdown).await {
                Ok(()) => return,
                Err(ProjectionError::Poison { message_id, reason }) => {
                    self.mark_failed(&message_id, &reason).await;
                    shutdown.cancelled().await;
                    return;
                }
                Err(err) => {
                    tracing::warn!(projection = name, error = %err, retry_in_ms = backoff.as_millis() as u64, "projection interrupted");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), ProjectionError> {
        let stream = ensure_stream(&self.jetstream, &self.stream)
            .await
            .map_err(|err| ProjectionError::Stream(err.to_string()))?;
        let name = self.projection.name();
        // nats-server 2.9 takes a single filter subject: one aggregate type is
        // filtered by the server, several are filtered here.
        let filter_subject = match self.projection.aggregate_types() {
            [only] => self.stream.aggregate_filter(only),
            _ => String::new(),
        };
        // Our checkpoint, committed with the read model, is where to resume.
        // Messages a dead worker received but never applied would otherwise be
        // redelivered only after `ack_wait`, behind newer ones: recreating the
        // consumer at the checkpoint keeps per-aggregate order after a crash.
        let checkpoint: Option<i64> = sqlx::query_scalar(
            "select stream_sequence from read.projection_checkpoints where projection = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let deliver_policy = match checkpoint.unwrap_or(0) {
            0 => DeliverPolicy::All,
            applied => DeliverPolicy::ByStartSequence {
                start_sequence: applied as u64 + 1,
            },
        };
        if let Err(err) = stream.delete_consumer(name).await {
            tracing::debug!(projection = name, error = %err, "no consumer to replace");
        }
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.to_string()),
                filter_subject,
                deliver_policy,
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .map_err(|err| ProjectionError::Stream(err.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|err| ProjectionError::Stream(err.to_string()))?;
        // Whatever is ready at once goes into one batch: one message when idle
        // (low latency), up to `batch_size` under load (few transactions).
        let mut batches = messages.ready_chunks(self.batch_size);
        loop {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                chunk = batches.next() => chunk,
            };
            let Some(chunk) = chunk else {
                return Err(ProjectionError::Stream("message stream ended".into()));
            };
            let batch = chunk
                .into_iter()
                .collect::<Result<Vec<Message>, _>>()
                .map_err(|err| ProjectionError::Stream(err.to_string()))?;
            self.apply_with_retry(&batch, shutdown).await?;
            if let Some(last) = batch.last() {
                // AckPolicy::All: acknowledging the last acknowledges the batch.
                last.ack()
                    .await
                    .map_err(|err| ProjectionError::Stream(err.to_string()))?;
            }
        }
    }

    async fn apply_with_retry(
        &self,
        batch: &[Message],
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectionError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.apply_batch(batch).await {
                Err(ProjectionError::Database(err)) if !shutdown.is_cancelled() => {
                    tracing::warn!(projection = self.projection.name(), error = %err, "batch failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn apply_batch(&self, batch: &[Message]) -> Result<(), ProjectionError> {
        let started = Instant::now();
        let name = self.projection.name();
        // Decode before taking the lock: a poison message needs no transaction.
        let mut decoded = Vec::with_capacity(batch.len());
        for message in batch {
            let stream_sequence = message
                .info()
                .map(|info| info.stream_sequence)
                .map_err(|err| ProjectionError::poison("?", err))?;
            let envelope: EventEnvelope = serde_json::from_slice(&message.payload)
                .map_err(|err| ProjectionError::poison(format!("stream#{stream_sequence}"), err))?;
            decoded.push((stream_sequence, envelope));
        }
        let Some((stream_sequence, last_recorded_at)) = decoded
            .last()
            .map(|(sequence, envelope)| (*sequence, envelope.recorded_at))
        else {
            return Ok(());
        };
        let types = self.projection.aggregate_types();
        let wanted: Vec<&EventEnvelope> = decoded
            .iter()
            .map(|(_, envelope)| envelope)
            .filter(|e| types.is_empty() || types.contains(&e.aggregate_type.as_str()))
            .collect();

        let mut tx = self.pool.begin().await?;
        sqlx::query(MARK_AND_LOCK)
            .bind(lock_key(name))
            .execute(&mut *tx)
            .await?;
        // The version guard for the whole batch: one read and one write of
        // `read.aggregate_versions` instead of two per event.
        let mut guard = VersionGuard::load(&mut tx, name, wanted.iter().copied()).await?;
        for envelope in &wanted {
            guard
                .apply(self.projection.as_ref(), &mut tx, envelope)
                .await?;
        }
        guard.store(&mut tx).await?;
        // Checkpoint and wake-up of waiting queries in one round trip.
        sqlx::query(
            "with checkpoint as ( \
               insert into read.projection_checkpoints (projection, stream_sequence, last_recorded_at, updated_at) \
               values ($1, $2, $3, now()) \
               on conflict (projection) do update set stream_sequence = excluded.stream_sequence, \
                 last_recorded_at = excluded.last_recorded_at, updated_at = excluded.updated_at \
               returning 1) \
             select pg_notify($4, $1) from checkpoint",
        )
        .bind(name)
        .bind(stream_sequence as i64)
        .bind(last_recorded_at)
        .bind(PROJECTED_CHANNEL)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;

        self.status
            .stream_sequence
            .store(stream_sequence, Ordering::Relaxed);
        let lag = chrono::Utc::now() - last_recorded_at;
        metrics::counter!("chronicle_projection_events_total", "projection" => name)
            .increment(batch.len() as u64);
        metrics::histogram!("chronicle_projection_batch_seconds", "projection" => name)
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!("chronicle_projection_lag_seconds", "projection" => name)
            .set(lag.num_microseconds().unwrap_or(0) as f64 / 1e6);
        Ok(())
    }

    async fn mark_failed(&self, message_id: &str, reason: &str) {
        let name = self.projection.name();
        let failure = format!("{message_id}: {reason}");
        tracing::error!(
            projection = name,
            event = message_id,
            reason,
            "projection stopped on an event it cannot apply"
        );
        metrics::gauge!("chronicle_projection_failed", "projection" => name).set(1.0);
        if let Ok(mut slot) = self.status.failure.lock() {
            *slot = Some(failure.clone());
        }
        let stored = sqlx::query(
            "insert into read.projection_checkpoints (projection, failed_at, failure) values ($1, now(), $2) \
             on conflict (projection) do update set failed_at = now(), failure = excluded.failure",
        )
        .bind(name)
        .bind(&failure)
        .execute(&self.pool)
        .await;
        if let Err(err) = stored {
            tracing::error!(projection = name, error = %err, "could not record the failure");
        }
    }

    async fn clear_failure(&self) -> Result<(), sqlx::Error> {
        metrics::gauge!("chronicle_projection_failed", "projection" => self.projection.name())
            .set(0.0);
        sqlx::query(
            "update read.projection_checkpoints set failed_at = null, failure = null where projection = $1",
        )
        .bind(self.projection.name())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
