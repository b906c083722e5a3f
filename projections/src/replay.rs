//! Rebuilding a projection from the event store alone.
//!
//! The rebuild runs in one transaction that holds the projection's lock, so
//! readers see the old read model until the new one is complete and the live
//! consumer waits meanwhile. It reads the store in commit order below the
//! commit horizon (the oldest other transaction still in flight): every event
//! it does not see is committed later and reaches the live consumer through
//! the stream, where the version guard applies it exactly once. No gap, no
//! double.
//!
//! Events parked in `dead_letters` (by the relay, which never published
//! them, or by this projection) and the events behind them are left out, as
//! the live projection left them out; an event whose JSON cannot be read is
//! left out with its aggregate's later events, as the relay parks it.

use std::collections::HashMap;

use chronicle_nats::dead_letter::{AggregateKey, RELAY_STAGE};
use chronicle_nats::stored_event::read_committed_after;
use chronicle_nats::{EventCursor, EventEnvelope, ReadEvent};
use sqlx::PgPool;

use crate::projection::{lock_key, VersionGuard, MARK_AND_LOCK};
use crate::{Projection, ProjectionError, PROJECTED_CHANNEL};

const REPLAY_BATCH: i64 = 2_000;

/// Rebuilds `projection`; `progress(done, total)` is called after each batch.
/// Returns the number of events read.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, ProjectionError> {
    let name = projection.name();
    let types: Vec<String> = projection
        .aggregate_types()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let mut tx = pool.begin().await?;
    sqlx::query(MARK_AND_LOCK)
        .bind(lock_key(name))
        .execute(&mut *tx)
        .await?;
    let total: i64 = sqlx::query_scalar(
        "select count(*) from events where cardinality($1::text[]) = 0 or aggregate_type = any($1)",
    )
    .bind(&types)
    .fetch_one(&mut *tx)
    .await?;
    projection.reset(&mut tx).await?;
    sqlx::query("delete from read.aggregate_versions where projection = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;

    // The read model and its versions were just emptied, so the guard starts
    // from nothing and lives in memory: per batch, the projection's writes
    // (set-based where it has `apply_batch`) plus one for the versions.
    // Per aggregate, the first sequence the live side parked.
    let mut parked_from: HashMap<AggregateKey, i64> = sqlx::query_as(
        "select aggregate_type, aggregate_id, min(sequence) from dead_letters \
         where stage in ($1, $2) and released_at is null group by 1, 2",
    )
    .bind(name)
    .bind(RELAY_STAGE)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(kind, id, sequence): (String, String, i64)| ((kind, id), sequence))
    .collect();
    // Everything the relay has published is committed, whatever the horizon
    // says now: the rebuild must reach at least that far, or it would leave
    // out events the live consumer already applied (and will not see again).
    let published: Option<String> =
        sqlx::query_scalar("select max(transaction_id)::text from relay_checkpoints")
            .fetch_one(&mut *tx)
            .await?;
    let published = published.and_then(|id| id.parse::<u64>().ok());
    let mut guard = VersionGuard::empty(name);
    let mut cursor = EventCursor::default();
    let mut done = 0u64;
    loop {
        let batch = read_committed_after(&mut tx, cursor, REPLAY_BATCH, &types, published)
            .await
            .map_err(|err| ProjectionError::Stream(err.to_string()))?;
        let Some(last) = batch.last() else { break };
        cursor = last.cursor();
        let mut envelopes = Vec::with_capacity(batch.len());
        for read in &batch {
            let event = match read {
                ReadEvent::Event(event) => event,
                ReadEvent::Unreadable { parked, .. } => {
                    parked_from.entry(parked.key()).or_insert(parked.sequence);
                    continue;
                }
            };
            let held = !parked_from.is_empty()
                && parked_from
                    .get(&(event.aggregate_type.clone(), event.aggregate_id.clone()))
                    .is_some_and(|first| event.sequence >= *first);
            if !held {
                envelopes.push(EventEnvelope::from(event));
            }
        }
        let mut admitted = Vec::with_capacity(envelopes.len());
        for envelope in &envelopes {
            if guard.admit(envelope)? {
                admitted.push(envelope);
            }
        }
        projection.apply_batch(&mut tx, &admitted).await?;
        guard.store(&mut tx).await?;
        done += batch.len() as u64;
        progress(done, (total as u64).max(done));
    }
    sqlx::query(
        "update read.projection_checkpoints set failed_at = null, failure = null where projection = $1",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    sqlx::query("select pg_notify($1, $2)")
        .bind(PROJECTED_CHANNEL)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done)
}
