//! The live side of a projection: a durable JetStream consumer feeding batches
//! into one Postgres transaction each, acknowledged only after commit.
//!
//! An event the projection cannot apply is parked in `dead_letters` with
//! every later event of its aggregate (`chronicle_nats::dead_letter`); the
//! batch is applied again without it and the other aggregates flow on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use chronicle_nats::dead_letter::{self, AggregateKey, Blocked, Parked, DEAD_LETTERS_CHANNEL};
use chronicle_nats::stream::ensure_stream;
use chronicle_nats::{EventEnvelope, StreamSettings};
use futures::StreamExt;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::projection::{
    begin_marked_and_locked, lock_key, upsert_versions, VersionGuard, MARK_AND_LOCK,
};
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

/// Release requests (`chronicle dead-letters release`) for the projections
/// of this process: one `LISTEN` connection shared by every runner, each of
/// which picks the requests naming it.
#[derive(Clone)]
pub struct ReleaseRequests {
    stages: broadcast::Sender<String>,
}

impl ReleaseRequests {
    /// Listens on `chronicle_dead_letters` until `shutdown`.
    pub async fn start(pool: &PgPool, shutdown: CancellationToken) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(DEAD_LETTERS_CHANNEL).await?;
        let (stages, _) = broadcast::channel(64);
        let sender = stages.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = listener.recv() => match received {
                        Ok(notification) => {
                            let _ = sender.send(notification.payload().to_string());
                        }
                        // PgListener reconnects on the next call; a request
                        // missed meanwhile is taken when the runner restarts.
                        Err(err) => tracing::warn!(error = %err, "dead-letter listener interrupted"),
                    },
                }
            }
        });
        Ok(Self { stages })
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
    releases: Option<ReleaseRequests>,
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
            releases: None,
        }
    }

    /// Takes release requests while running; without them, parked events
    /// are retried only when the runner (re)starts.
    pub fn with_release_requests(mut self, releases: ReleaseRequests) -> Self {
        self.releases = Some(releases);
        self
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    pub fn status(&self) -> Arc<ProjectionStatus> {
        self.status.clone()
    }

    /// Consumes until `shutdown`; transient failures are retried, a poison
    /// event is parked, and a failure of the projection itself
    /// ([`ProjectionError::Halt`]) stops it until it is fixed and replayed.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.projection.name();
        if let Err(err) = self.clear_failure().await {
            tracing::warn!(projection = name, error = %err, "could not clear the failure mark");
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consume(&shutdown).await {
                Ok(()) => return,
                Err(ProjectionError::Halt { what, reason }) => {
                    self.mark_failed(&what, &reason).await;
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
        // What this consumer has committed so far: a batch that finds the
        // stored checkpoint behind it knows commits were lost (below).
        self.status
            .stream_sequence
            .store(checkpoint.unwrap_or(0) as u64, Ordering::Relaxed);
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
        let mut blocked = Blocked::load(&mut *self.pool.acquire().await?, name).await?;
        let mut releases = self.releases.as_ref().map(|r| r.stages.subscribe());
        self.release_requested(&mut blocked).await?;
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
                stage = next_release(&mut releases) => {
                    // Lagged: some requests were dropped; look anyway.
                    if stage.as_deref().is_none_or(|stage| stage == name) {
                        self.release_requested(&mut blocked).await?;
                    }
                    continue;
                }
                chunk = batches.next() => chunk,
            };
            let Some(chunk) = chunk else {
                return Err(ProjectionError::Stream("message stream ended".into()));
            };
            let batch = chunk
                .into_iter()
                .collect::<Result<Vec<Message>, _>>()
                .map_err(|err| ProjectionError::Stream(err.to_string()))?;
            self.apply_with_retry(&batch, &mut blocked, shutdown)
                .await?;
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
        blocked: &mut Blocked,
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectionError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.apply_batch(batch, blocked).await {
                Err(ProjectionError::Database(err)) if !shutdown.is_cancelled() => {
                    tracing::warn!(projection = self.projection.name(), error = %err, "batch failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Applies a batch; a poison event is parked (with its aggregate held
    /// back) and the batch applied again without it.
    async fn apply_batch(
        &self,
        batch: &[Message],
        blocked: &mut Blocked,
    ) -> Result<(), ProjectionError> {
        let started = Instant::now();
        let name = self.projection.name();
        // Decode before taking the lock: a poison message needs no transaction.
        let mut decoded = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::new();
        for message in batch {
            let stream_sequence = message
                .info()
                .map(|info| info.stream_sequence)
                .map_err(|err| ProjectionError::Stream(err.to_string()))?;
            match serde_json::from_slice::<EventEnvelope>(&message.payload) {
                Ok(envelope) => decoded.push((stream_sequence, envelope)),
                // Not ours to read: it names no aggregate to hold back.
                Err(err) => unreadable.push(Parked {
                    aggregate_type: "(unreadable message)".into(),
                    aggregate_id: format!("stream#{stream_sequence}"),
                    sequence: stream_sequence as i64,
                    global_position: 0,
                    event_type: String::new(),
                    reason: format!("not an event envelope: {err}"),
                }),
            }
        }
        let Some(stream_sequence) = batch
            .last()
            .and_then(|message| message.info().ok())
            .map(|info| info.stream_sequence)
        else {
            return Ok(());
        };
        let last_recorded_at = decoded.last().map(|(_, envelope)| envelope.recorded_at);
        let types = self.projection.aggregate_types();
        let wanted: Vec<&EventEnvelope> = decoded
            .iter()
            .map(|(_, envelope)| envelope)
            .filter(|e| types.is_empty() || types.contains(&e.aggregate_type.as_str()))
            .collect();

        let applied = loop {
            match self
                .apply_in_transaction(
                    &wanted,
                    blocked,
                    &unreadable,
                    stream_sequence,
                    last_recorded_at,
                )
                .await?
            {
                Ok(applied) => break applied,
                Err(poison) => {
                    // Park it on its own: the batch's transaction is gone.
                    let mut conn = self.pool.acquire().await?;
                    dead_letter::park(&mut conn, name, std::slice::from_ref(&poison)).await?;
                    blocked.block(&poison);
                }
            }
        };

        self.status
            .stream_sequence
            .store(stream_sequence, Ordering::Relaxed);
        metrics::counter!("chronicle_projection_events_total", "projection" => name)
            .increment(applied as u64);
        metrics::histogram!("chronicle_projection_batch_seconds", "projection" => name)
            .record(started.elapsed().as_secs_f64());
        if let Some(recorded_at) = last_recorded_at {
            let lag = chrono::Utc::now() - recorded_at;
            metrics::gauge!("chronicle_projection_lag_seconds", "projection" => name)
                .set(lag.num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        Ok(())
    }

    /// One attempt at a batch. The inner error is the first event that turned
    /// out to be poison; the transaction is then rolled back, nothing applied.
    async fn apply_in_transaction(
        &self,
        wanted: &[&EventEnvelope],
        blocked: &Blocked,
        unreadable: &[Parked],
        stream_sequence: u64,
        last_recorded_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Result<usize, Parked>, ProjectionError> {
        let name = self.projection.name();
        let mut tx = self.pool.begin_with(begin_marked_and_locked(name)).await?;
        // Batches commit without waiting for the WAL flush (MARK_AND_LOCK):
        // a Postgres crash can lose the last ones after their messages were
        // acknowledged, and this consumer would go on after them, leaving a
        // gap. The stored checkpoint then lags what this consumer committed:
        // resume from it (a new consumer at checkpoint + 1, `consume`).
        // The version guard for the whole batch comes in the same round trip:
        // one read and one write of `read.aggregate_versions` instead of two
        // per event.
        let (mut guard, stored) =
            VersionGuard::load_with_checkpoint(&mut tx, name, wanted.iter().copied()).await?;
        let committed = self.status.stream_sequence();
        if (stored.unwrap_or(0) as u64) < committed {
            return Err(ProjectionError::Stream(format!(
                "the checkpoint is at {} but this consumer committed up to {committed}: \
                 batches were lost (a database crash); resuming from the checkpoint",
                stored.unwrap_or(0)
            )));
        }
        let mut parked = unreadable.to_vec();
        let mut admitted = Vec::with_capacity(wanted.len());
        for envelope in wanted {
            if let Some(reason) = blocked.held_behind_at(
                &envelope.aggregate_type,
                &envelope.aggregate_id,
                envelope.sequence,
            ) {
                parked.push(parked_envelope(envelope, reason));
                continue;
            }
            match guard.admit(envelope) {
                Ok(true) => admitted.push(*envelope),
                Ok(false) => {}
                Err(ProjectionError::Poison { reason, .. }) => {
                    return Ok(Err(parked_envelope(envelope, reason)))
                }
                Err(err) => return Err(err),
            }
        }
        match self.projection.apply_batch(&mut tx, &admitted).await {
            Ok(()) => {}
            Err(ProjectionError::Poison { message_id, reason }) => {
                let Some(envelope) = admitted.iter().find(|e| e.message_id() == message_id) else {
                    return Err(ProjectionError::halt(
                        message_id,
                        format!("poison outside the batch: {reason}"),
                    ));
                };
                return Ok(Err(parked_envelope(envelope, reason)));
            }
            Err(err) => return Err(err),
        }
        let applied = admitted.len();
        dead_letter::park(&mut tx, name, &parked).await?;
        // Versions, checkpoint and the wake-up of waiting queries in one
        // round trip.
        let versions = guard.take_changed();
        sqlx::query(concat!(
            "with versions as (",
            upsert_versions!(),
            "), checkpoint as ( \
               insert into read.projection_checkpoints (projection, stream_sequence, last_recorded_at, updated_at) \
               values ($1, $5, $6, now()) \
               on conflict (projection) do update set stream_sequence = excluded.stream_sequence, \
                 last_recorded_at = coalesce(excluded.last_recorded_at, read.projection_checkpoints.last_recorded_at), \
                 updated_at = excluded.updated_at \
               returning 1) \
             select pg_notify($7, $1) from checkpoint"
        ))
        .bind(name)
        .bind(&versions.types)
        .bind(&versions.ids)
        .bind(&versions.versions)
        .bind(stream_sequence as i64)
        .bind(last_recorded_at)
        .bind(PROJECTED_CHANNEL)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(applied))
    }

    /// Applies the parked events of every aggregate whose release was asked
    /// for, read from the event store in sequence order, unless one of them
    /// is still poison.
    async fn release_requested(&self, blocked: &mut Blocked) -> Result<(), ProjectionError> {
        let name = self.projection.name();
        let mut conn = self.pool.acquire().await?;
        for key in dead_letter::release_requests(&mut conn, name).await? {
            match self.apply_parked(&key).await? {
                Ok(count) => {
                    blocked.unblock(&key);
                    tracing::info!(projection = name, aggregate_type = %key.0, aggregate_id = %key.1, events = count, "parked events released");
                }
                Err((sequence, reason)) => {
                    dead_letter::refuse_release(&mut conn, name, &key, sequence, &reason).await?;
                }
            }
        }
        Ok(())
    }

    async fn apply_parked(
        &self,
        key: &AggregateKey,
    ) -> Result<Result<usize, (i64, String)>, ProjectionError> {
        let name = self.projection.name();
        let mut tx = self.pool.begin().await?;
        sqlx::query(MARK_AND_LOCK)
            .bind(lock_key(name))
            .execute(&mut *tx)
            .await?;
        let envelopes: Vec<EventEnvelope> = match dead_letter::parked_events(&mut tx, name, key)
            .await
            .map_err(|err| ProjectionError::Stream(err.to_string()))?
        {
            Ok(events) => events.iter().map(EventEnvelope::from).collect(),
            Err(refused) => return Ok(Err(refused)),
        };
        let mut guard = VersionGuard::load(&mut tx, name, envelopes.iter()).await?;
        for envelope in &envelopes {
            match guard
                .apply(self.projection.as_ref(), &mut tx, envelope)
                .await
            {
                Ok(_) => {}
                Err(ProjectionError::Poison { reason, .. }) => {
                    return Ok(Err((envelope.sequence, reason)))
                }
                Err(err) => return Err(err),
            }
        }
        guard.store(&mut tx).await?;
        dead_letter::mark_released(&mut tx, name, key).await?;
        sqlx::query("select pg_notify($1, $2)")
            .bind(PROJECTED_CHANNEL)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(envelopes.len()))
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

/// The next stage named in a release request; never, without a listener.
async fn next_release(releases: &mut Option<broadcast::Receiver<String>>) -> Option<String> {
    match releases {
        Some(receiver) => match receiver.recv().await {
            Ok(stage) => Some(stage),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

fn parked_envelope(envelope: &EventEnvelope, reason: String) -> Parked {
    Parked {
        aggregate_type: envelope.aggregate_type.clone(),
        aggregate_id: envelope.aggregate_id.clone(),
        sequence: envelope.sequence,
        global_position: envelope.global_position,
        event_type: envelope.event_type.clone(),
        reason,
    }
}
