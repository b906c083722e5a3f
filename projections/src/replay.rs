//! Rebuilding projections from the event store alone.
//!
//! Each rebuild runs in one transaction that holds its projection's lock, so
//! readers see the old read model until the new one is complete and the live
//! consumer waits meanwhile. The store is read in commit order below the
//! commit horizon (the oldest other transaction still in flight): every event
//! the rebuild does not see is committed later and reaches the live consumer
//! through the stream, where the version guard applies it exactly once. No
//! gap, no double.
//!
//! Projections rebuilt together share one read of the store: one reader
//! hands each batch to every projection, and each applies the events of its
//! aggregate types in its own transaction. The store is read and decoded
//! once, not once per projection (docs/performance.md, change 21).
//!
//! Events parked in `dead_letters` (by the relay, which never published
//! them, or by the projection) and the events behind them are left out, as
//! the live projection left them out; an event whose JSON cannot be read is
//! left out with its aggregate's later events, as the relay parks it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_nats::dead_letter::{AggregateKey, RELAY_STAGE};
use chronicle_nats::stored_event::read_committed_after;
use chronicle_nats::{EventCursor, EventEnvelope, ReadEvent};
use futures::future::try_join_all;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::mpsc;

use crate::projection::{lock_key, VersionGuard, MARK_AND_LOCK};
use crate::{Projection, ProjectionError, PROJECTED_CHANNEL};

const REPLAY_BATCH: i64 = 2_000;

/// The transaction-local setting in which a rebuild leaves the snapshot it
/// read the parked events in (migration 1100).
pub const PARKED_SNAPSHOT_SETTING: &str = "chronicle.parked_snapshot";

/// Batches read ahead of the slowest projection: enough to keep the others
/// busy, few enough that memory stays a handful of batches.
const READ_AHEAD: usize = 2;

/// What one rebuild did.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub projection: &'static str,
    /// Events of the projection's aggregate types that were read.
    pub events: u64,
    /// From the start of its group's rebuild to its last batch applied.
    pub elapsed: Duration,
}

/// Rebuilds `projection`; `progress(done, total)` is called after each batch.
/// Returns the number of events read.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, ProjectionError> {
    let rebuilt =
        rebuild_together(pool, &[projection], &|_, done, total| progress(done, total)).await?;
    Ok(rebuilt.iter().map(|rebuilt| rebuilt.events).sum())
}

/// Rebuilds `projections` side by side on one read of the store;
/// `progress(projection, done, total)` is called after each of their batches.
/// They are rebuilt in groups that leave the pool a connection for the
/// reader. A rebuild that fails rolls back every rebuild of its group (they
/// commit once all have applied everything); groups before it stay rebuilt.
pub async fn rebuild_together(
    pool: &PgPool,
    projections: &[&dyn Projection],
    progress: &(dyn Fn(&'static str, u64, u64) + Sync),
) -> Result<Vec<Rebuilt>, ProjectionError> {
    let per_group = (pool.options().get_max_connections() as usize)
        .saturating_sub(1)
        .max(1);
    let mut rebuilt = Vec::with_capacity(projections.len());
    for group in projections.chunks(per_group) {
        rebuilt.extend(rebuild_group(pool, group, progress).await?);
    }
    Ok(rebuilt)
}

/// One event of a shared batch, decoded once for every projection.
enum Replayed {
    Event(EventEnvelope),
    /// Its JSON cannot be read: the relay parks it and its aggregate's later
    /// events.
    Unreadable {
        key: AggregateKey,
        sequence: i64,
    },
}

impl Replayed {
    fn aggregate_type(&self) -> &str {
        match self {
            Self::Event(event) => &event.aggregate_type,
            Self::Unreadable { key, .. } => &key.0,
        }
    }
}

impl From<&ReadEvent> for Replayed {
    fn from(read: &ReadEvent) -> Self {
        match read {
            ReadEvent::Event(event) => Self::Event(EventEnvelope::from(event)),
            ReadEvent::Unreadable { parked, .. } => Self::Unreadable {
                key: parked.key(),
                sequence: parked.sequence,
            },
        }
    }
}

async fn rebuild_group(
    pool: &PgPool,
    projections: &[&dyn Projection],
    progress: &(dyn Fn(&'static str, u64, u64) + Sync),
) -> Result<Vec<Rebuilt>, ProjectionError> {
    let started = Instant::now();
    // For the progress bars only: counted before the locks, so it may be
    // short of what is read.
    let per_type: HashMap<String, i64> =
        sqlx::query_as("select aggregate_type, count(*) from events group by 1")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    // Every connection of the group before any lock: a live batch that
    // waits for one of these locks holds a connection of the same pool
    // (when the rebuild runs inside the server's process, as tests do), so
    // asking the pool for more while holding a lock could wait on it.
    let mut reader = pool.acquire().await?;
    let mut transactions = Vec::with_capacity(projections.len());
    for _ in projections {
        transactions.push(pool.begin().await?);
    }
    let mut rebuilds = Vec::with_capacity(projections.len());
    for (projection, tx) in projections.iter().zip(transactions) {
        let total = per_type
            .iter()
            .filter(|(kind, _)| concerns(*projection, kind))
            .map(|(_, count)| *count as u64)
            .sum();
        rebuilds.push(Rebuilding::begin(tx, *projection, total).await?);
    }
    // Every lock is held now: no live batch of these projections commits
    // until the rebuilds do. Everything the relay has published is
    // committed, whatever the horizon says: the rebuild must reach at least
    // that far, or it would leave out events the live consumer already
    // applied (and will not see again).
    let published: Option<String> =
        sqlx::query_scalar("select max(transaction_id)::text from relay_checkpoints")
            .fetch_one(&mut *reader)
            .await?;
    let published = published.and_then(|id| id.parse::<u64>().ok());
    // The union of the aggregate types; empty (every type) when one of the
    // projections takes them all.
    let mut types: Vec<String> = Vec::new();
    if projections
        .iter()
        .all(|projection| !projection.aggregate_types().is_empty())
    {
        types = projections
            .iter()
            .flat_map(|projection| projection.aggregate_types())
            .map(|kind| kind.to_string())
            .collect();
        types.sort();
        types.dedup();
    }

    let (senders, receivers): (Vec<_>, Vec<_>) = projections
        .iter()
        .map(|_| mpsc::channel::<Arc<Vec<Replayed>>>(READ_AHEAD))
        .unzip();
    let read = async move {
        let mut cursor = EventCursor::default();
        loop {
            let batch = read_committed_after(&mut reader, cursor, REPLAY_BATCH, &types, published)
                .await
                .map_err(|err| ProjectionError::Stream(err.to_string()))?;
            let Some(last) = batch.last() else { break };
            cursor = last.cursor();
            let batch: Arc<Vec<Replayed>> = Arc::new(batch.iter().map(Replayed::from).collect());
            for sender in &senders {
                // A closed receiver means its rebuild failed, and that
                // failure is what the group returns.
                if sender.send(batch.clone()).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok::<_, ProjectionError>(())
    };
    let apply = try_join_all(rebuilds.into_iter().zip(receivers).map(
        |(mut rebuilding, mut batches)| async move {
            let name = rebuilding.name();
            let named = |err| ProjectionError::halt(format!("rebuilding {name}"), err);
            while let Some(batch) = batches.recv().await {
                rebuilding.apply(&batch).await.map_err(named)?;
                progress(name, rebuilding.done, rebuilding.total);
            }
            rebuilding.elapsed = started.elapsed();
            Ok(rebuilding)
        },
    ));
    let ((), rebuilds) = tokio::try_join!(read, apply)?;
    // Commits only once every rebuild of the group has applied everything,
    // so that one that fails leaves all of them uncommitted.
    let mut rebuilt = Vec::with_capacity(rebuilds.len());
    for rebuilding in rebuilds {
        let name = rebuilding.name();
        rebuilt.push(
            rebuilding
                .commit()
                .await
                .map_err(|err| ProjectionError::halt(format!("committing {name}"), err))?,
        );
    }
    Ok(rebuilt)
}

/// Whether `projection` takes events of `aggregate_type`.
fn concerns(projection: &dyn Projection, aggregate_type: &str) -> bool {
    let types = projection.aggregate_types();
    types.is_empty() || types.contains(&aggregate_type)
}

/// One projection's rebuild: its transaction, from the emptied read model to
/// the commit.
struct Rebuilding<'p> {
    projection: &'p dyn Projection,
    tx: Transaction<'static, Postgres>,
    /// Per aggregate, the first sequence that is parked (left out with
    /// everything after it).
    parked_from: HashMap<AggregateKey, i64>,
    /// The read model and its versions were just emptied, so the guard
    /// starts from nothing and lives in memory: per batch, the projection's
    /// writes (set-based where it has `apply_batch`) plus one for the
    /// versions.
    guard: VersionGuard,
    done: u64,
    total: u64,
    /// From the start of the group's rebuild to this one's last batch.
    elapsed: Duration,
}

impl<'p> Rebuilding<'p> {
    /// Takes the projection's lock in `tx` and empties its read model.
    async fn begin(
        mut tx: Transaction<'static, Postgres>,
        projection: &'p dyn Projection,
        total: u64,
    ) -> Result<Self, ProjectionError> {
        let name = projection.name();
        sqlx::query(MARK_AND_LOCK)
            .bind(lock_key(name))
            .execute(&mut *tx)
            .await?;
        // What is parked, in one statement with the snapshot it was read in:
        // the audit trail's new generation records that snapshot, to tell
        // later which releases this rebuild saw (`checkpoints_paused`).
        let (_, kinds, ids, sequences): (String, Vec<String>, Vec<String>, Vec<i64>) =
            sqlx::query_as(
                "select set_config($3, pg_current_snapshot()::text, true), \
                   coalesce(array_agg(aggregate_type), '{}'), \
                   coalesce(array_agg(aggregate_id), '{}'), \
                   coalesce(array_agg(first), '{}') \
                 from (select aggregate_type, aggregate_id, min(sequence) as first \
                       from dead_letters where stage in ($1, $2) and released_at is null \
                       group by 1, 2) as parked",
            )
            .bind(name)
            .bind(RELAY_STAGE)
            .bind(PARKED_SNAPSHOT_SETTING)
            .fetch_one(&mut *tx)
            .await?;
        let parked_from = kinds.into_iter().zip(ids).zip(sequences).collect();
        projection.reset(&mut tx).await?;
        sqlx::query("delete from read.aggregate_versions where projection = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        Ok(Self {
            projection,
            tx,
            parked_from,
            guard: VersionGuard::empty(name),
            done: 0,
            total,
            elapsed: Duration::ZERO,
        })
    }

    fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Applies the events of `batch` this projection takes and has not parked.
    async fn apply(&mut self, batch: &[Replayed]) -> Result<(), ProjectionError> {
        let mut admitted = Vec::with_capacity(batch.len());
        for replayed in batch {
            if !concerns(self.projection, replayed.aggregate_type()) {
                continue;
            }
            self.done += 1;
            let event = match replayed {
                Replayed::Event(event) => event,
                Replayed::Unreadable { key, sequence } => {
                    self.parked_from.entry(key.clone()).or_insert(*sequence);
                    continue;
                }
            };
            let held = !self.parked_from.is_empty()
                && self
                    .parked_from
                    .get(&(event.aggregate_type.clone(), event.aggregate_id.clone()))
                    .is_some_and(|first| event.sequence >= *first);
            if !held && self.guard.admit(event)? {
                admitted.push(event);
            }
        }
        self.total = self.total.max(self.done);
        if admitted.is_empty() {
            return Ok(());
        }
        self.projection.apply_batch(&mut self.tx, &admitted).await?;
        self.guard.store(&mut self.tx).await
    }

    /// Clears the projection's failure mark, tells waiting queries, commits.
    async fn commit(mut self) -> Result<Rebuilt, ProjectionError> {
        let name = self.name();
        sqlx::query(
            "update read.projection_checkpoints set failed_at = null, failure = null where projection = $1",
        )
        .bind(name)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query("select pg_notify($1, $2)")
            .bind(PROJECTED_CHANNEL)
            .bind(name)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(Rebuilt {
            projection: name,
            events: self.done,
            elapsed: self.elapsed,
        })
    }
}
