//! The event store's repository: postgres-es's, except that a commit without
//! a snapshot is one statement.
//!
//! postgres-es commits in an explicit transaction: `BEGIN`, one `INSERT` per
//! event, `COMMIT`, three round trips for a command of one event. A single
//! multi-row `INSERT` is atomic on its own (Postgres runs it in an implicit
//! transaction), so the same rows, the same all-or-nothing and the same
//! conflict on the primary key cost one round trip (docs/performance.md,
//! change 23). Commits that write a snapshot keep postgres-es's transaction.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

/// Appends in one statement; reads and snapshots as postgres-es does.
pub struct EventRepository {
    postgres_es: PostgresEventRepository,
    pool: PgPool,
}

impl EventRepository {
    pub fn new(pool: PgPool) -> Self {
        Self {
            postgres_es: PostgresEventRepository::new(pool.clone()),
            pool,
        }
    }

    /// Inserts `events` of one aggregate in one statement. The rows enter
    /// in the order given (`unnest` yields its elements in order), so their
    /// global positions rise with their sequences, as one insert per event
    /// gave them.
    async fn append(
        &self,
        aggregate_type: &str,
        events: &[SerializedEvent],
    ) -> Result<(), PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let mut sequences = Vec::with_capacity(events.len());
        let mut event_types = Vec::with_capacity(events.len());
        let mut event_versions = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        let mut metadata = Vec::with_capacity(events.len());
        for event in events {
            sequences.push(
                i64::try_from(event.sequence)
                    .map_err(|err| PersistenceError::UnknownError(Box::new(err)))?,
            );
            event_types.push(event.event_type.as_str());
            event_versions.push(event.event_version.as_str());
            payloads.push(&event.payload);
            metadata.push(&event.metadata);
        }
        sqlx::query(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             select $1, $2, * from unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])",
        )
        .bind(aggregate_type)
        .bind(first.aggregate_id.as_str())
        .bind(sequences)
        .bind(event_types)
        .bind(event_versions)
        .bind(payloads)
        .bind(metadata)
        .execute(&self.pool)
        .await
        .map_err(persistence_error)?;
        Ok(())
    }
}

/// As postgres-es maps its errors: a unique violation (the primary key:
/// another command took this sequence) is the optimistic-lock conflict.
fn persistence_error(err: sqlx::Error) -> PersistenceError {
    match &err {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            PersistenceError::ConnectionError(Box::new(err))
        }
        _ => PersistenceError::UnknownError(Box::new(err)),
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.postgres_es.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.postgres_es
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.postgres_es.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match snapshot_update {
            None => self.append(A::TYPE, events).await,
            Some(_) => self.postgres_es.persist::<A>(events, snapshot_update).await,
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.postgres_es.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.postgres_es.stream_all_events::<A>().await
    }
}
