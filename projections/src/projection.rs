//! What a projection is, and the version guard every projection goes through.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chronicle_nats::EventEnvelope;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ProjectionError;

/// A read model built from events.
#[async_trait]
pub trait Projection: Send + Sync {
    /// Stable name: durable consumer name, checkpoint key, `replay --projection`.
    fn name(&self) -> &'static str;
    /// The aggregate types whose events it consumes; empty: every type.
    fn aggregate_types(&self) -> &'static [&'static str];
    /// Applies one event; called inside the batch's transaction, at most once
    /// per (aggregate, sequence) thanks to [`apply_guarded`].
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), ProjectionError>;
    /// Applies a run of events that the version guard admitted, in order,
    /// inside the batch's transaction. One at a time unless the projection
    /// can do better: a live batch or a rebuild then costs a few set-based
    /// statements instead of a round trip per event. A poison error names
    /// the event it could not apply (its message id).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        for event in events {
            self.apply(&mut *conn, event).await?;
        }
        Ok(())
    }

    /// Empties the read model before a rebuild.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError>;
}

/// A read model of one aggregate type: its table and what each event does to
/// it. The runtime parses the aggregate id and decodes the event (an event
/// that does not decode is poison, parked like any other); every read model
/// is a [`Projection`] through the blanket impl below.
#[async_trait]
pub trait ReadModel: Send + Sync {
    /// The aggregate's event enum, as stored.
    type Event: DeserializeOwned + Send;
    /// Stable name: durable consumer, checkpoint key, `replay --projection`.
    const NAME: &'static str;
    /// The aggregate type whose events it reads.
    const AGGREGATE_TYPE: &'static str;

    /// Applies one event of aggregate `event.id`, inside the batch's transaction.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: Decoded<'_, Self::Event>,
    ) -> Result<(), ProjectionError>;

    /// Applies a run of admitted events in order (see
    /// [`Projection::apply_batch`]); one at a time unless overridden.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: Vec<Decoded<'_, Self::Event>>,
    ) -> Result<(), ProjectionError> {
        for event in events {
            self.apply(&mut *conn, event).await?;
        }
        Ok(())
    }

    /// Empties the read model before a rebuild.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError>;
}

/// An event as a [`ReadModel`] receives it.
pub struct Decoded<'a, E> {
    /// The aggregate id.
    pub id: Uuid,
    /// The event's sequence in its aggregate: the version after it.
    pub version: i64,
    pub event: E,
    /// The rest of the envelope (metadata, recorded_at), for the few that need it.
    pub envelope: &'a EventEnvelope,
}

#[async_trait]
impl<R: ReadModel> Projection for R {
    fn name(&self) -> &'static str {
        R::NAME
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        std::slice::from_ref(&R::AGGREGATE_TYPE)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &EventEnvelope,
    ) -> Result<(), ProjectionError> {
        ReadModel::apply(self, conn, decoded::<R::Event>(envelope)?).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let decoded = events
            .iter()
            .map(|envelope| decoded::<R::Event>(envelope))
            .collect::<Result<Vec<_>, _>>()?;
        ReadModel::apply_batch(self, conn, decoded).await
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        ReadModel::reset(self, conn).await
    }
}

/// Parses the aggregate id and decodes the event; either failing is poison.
fn decoded<E: DeserializeOwned>(
    envelope: &EventEnvelope,
) -> Result<Decoded<'_, E>, ProjectionError> {
    let id = Uuid::parse_str(&envelope.aggregate_id)
        .map_err(|err| ProjectionError::poison(envelope.message_id(), err))?;
    Ok(Decoded {
        id,
        version: envelope.sequence,
        event: decode_event::<E>(envelope)?,
        envelope,
    })
}

/// Applies `event` unless this projection already has it.
///
/// Returns whether it was applied. An event more than one step ahead of the
/// stored version means an earlier one never arrived: that is a poison
/// condition, not something to paper over.
///
/// One event at a time (three round trips); batches go through [`VersionGuard`].
pub async fn apply_guarded(
    projection: &dyn Projection,
    conn: &mut PgConnection,
    event: &EventEnvelope,
) -> Result<bool, ProjectionError> {
    let mut guard = VersionGuard::load(&mut *conn, projection.name(), [event]).await?;
    let applied = guard.apply(projection, &mut *conn, event).await?;
    guard.store(conn).await?;
    Ok(applied)
}

/// Whether an event at `sequence` is new (`Ok(true)`), a redelivery
/// (`Ok(false)`), or proof that events are missing (poison).
fn admit(projection: &str, event: &EventEnvelope, applied: i64) -> Result<bool, ProjectionError> {
    if event.sequence <= applied {
        return Ok(false);
    }
    if event.sequence != applied + 1 {
        return Err(ProjectionError::poison(
            event.message_id(),
            format!(
                "sequence {} follows {applied}: events are missing (run `chronicle replay --projection {projection}`)",
                event.sequence,
            ),
        ));
    }
    Ok(true)
}

/// The upsert of [`ChangedVersions`]: `$1` the projection, `$2`–`$4` the
/// types, ids and versions. A macro, so that the live batch can make it one
/// part of its closing statement (`concat!`).
macro_rules! upsert_versions {
    () => {
        "insert into read.aggregate_versions (projection, aggregate_type, aggregate_id, version) \
         select $1, * from unnest($2::text[], $3::text[], $4::bigint[]) \
         on conflict (projection, aggregate_type, aggregate_id) do update set version = excluded.version"
    };
}
pub(crate) use upsert_versions;

/// The applied versions of some aggregates: `$1` the projection, `$2` and
/// `$3` their types and ids.
///
/// One primary-key probe per aggregate, whatever the statistics say. As a
/// plain join, a plan made while the table was small (a fresh database;
/// statistics from before this projection had rows) hashed every version of
/// the projection on each batch until autovacuum's next ANALYZE: 0.65–0.75 ms
/// a batch at 15k rows, and growing (docs/performance.md, change 19). The
/// lateral `limit 1` keeps the probe a nested loop; planning each batch (not
/// once per connection, hence `persistent(false)`) keeps it off a sequential
/// scan chosen when the table had one page.
const VERSIONS_OF: &str = "select k.aggregate_type, k.aggregate_id, v.version \
     from unnest($2::text[], $3::text[]) as k(aggregate_type, aggregate_id) \
     cross join lateral ( \
       select version from read.aggregate_versions v \
        where v.projection = $1 and v.aggregate_type = k.aggregate_type \
          and v.aggregate_id = k.aggregate_id \
        limit 1) v";

/// The distinct aggregates of `events`, as parallel lists of types and ids.
fn aggregate_keys<'e>(
    events: impl IntoIterator<Item = &'e EventEnvelope>,
) -> (Vec<String>, Vec<String>) {
    let mut seen = HashSet::new();
    let (mut types, mut ids) = (Vec::new(), Vec::new());
    for event in events {
        if seen.insert((event.aggregate_type.as_str(), event.aggregate_id.as_str())) {
            types.push(event.aggregate_type.clone());
            ids.push(event.aggregate_id.clone());
        }
    }
    (types, ids)
}

/// The version guard for a whole batch: the applied versions of the batch's
/// aggregates are read in one query, checked and advanced in memory as the
/// batch is applied, and written back in one statement before the batch
/// commits. Same rule as [`apply_guarded`], two round trips per batch instead
/// of two per event. Use it inside the batch's transaction only.
pub struct VersionGuard {
    projection: &'static str,
    applied: HashMap<(String, String), i64>,
    changed: HashSet<(String, String)>,
}

impl VersionGuard {
    /// A guard that knows no applied version: a rebuild, which starts from
    /// an emptied read model.
    pub fn empty(projection: &'static str) -> Self {
        Self {
            projection,
            applied: HashMap::new(),
            changed: HashSet::new(),
        }
    }

    /// Reads the applied versions of the aggregates of `events`.
    pub async fn load<'e>(
        conn: &mut PgConnection,
        projection: &'static str,
        events: impl IntoIterator<Item = &'e EventEnvelope>,
    ) -> Result<Self, ProjectionError> {
        // The checkpoint comes with it: one primary-key probe more, on
        // paths (a released event, a single apply) that are rare.
        Ok(Self::load_with_checkpoint(conn, projection, events)
            .await?
            .0)
    }

    /// [`load`](Self::load), and in the same round trip the projection's
    /// stored checkpoint (`read.projection_checkpoints.stream_sequence`).
    pub async fn load_with_checkpoint<'e>(
        conn: &mut PgConnection,
        projection: &'static str,
        events: impl IntoIterator<Item = &'e EventEnvelope>,
    ) -> Result<(Self, Option<i64>), ProjectionError> {
        let mut guard = Self::empty(projection);
        let (types, ids) = aggregate_keys(events);
        let rows: Vec<(bool, Option<String>, Option<String>, i64)> = sqlx::query_as(&format!(
            "select true, null, null, stream_sequence from read.projection_checkpoints \
              where projection = $1 \
             union all \
             select false, * from ({VERSIONS_OF}) versions"
        ))
        .bind(projection)
        .bind(&types)
        .bind(&ids)
        .persistent(false)
        .fetch_all(conn)
        .await?;
        let mut checkpoint = None;
        for row in rows {
            match row {
                (true, _, _, stream_sequence) => checkpoint = Some(stream_sequence),
                (false, Some(aggregate_type), Some(aggregate_id), version) => {
                    guard
                        .applied
                        .insert((aggregate_type, aggregate_id), version);
                }
                (false, ..) => {}
            }
        }
        Ok((guard, checkpoint))
    }

    /// Applies `event` through `projection` unless it already has it (see
    /// [`apply_guarded`] for the rule). Returns whether it was applied.
    pub async fn apply(
        &mut self,
        projection: &dyn Projection,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<bool, ProjectionError> {
        if !self.admit(event)? {
            return Ok(false);
        }
        projection.apply(conn, event).await?;
        Ok(true)
    }

    /// Whether `event` is the next one of its aggregate (see [`apply_guarded`]
    /// for the rule); if so, it counts as applied from now on, so the caller
    /// must apply it in this transaction (or roll the transaction back).
    pub fn admit(&mut self, event: &EventEnvelope) -> Result<bool, ProjectionError> {
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let applied = self.applied.get(&key).copied().unwrap_or(0);
        if !admit(self.projection, event, applied)? {
            return Ok(false);
        }
        self.applied.insert(key.clone(), event.sequence);
        self.changed.insert(key);
        Ok(true)
    }

    /// Writes the versions advanced since the last call, in one statement.
    pub async fn store(&mut self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let changed = self.take_changed();
        if changed.types.is_empty() {
            return Ok(());
        }
        sqlx::query(upsert_versions!())
            .bind(self.projection)
            .bind(&changed.types)
            .bind(&changed.ids)
            .bind(&changed.versions)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The versions advanced since the last call, as [`store`](Self::store)
    /// writes them; for a caller that writes them within a statement of its own.
    pub fn take_changed(&mut self) -> ChangedVersions {
        let mut changed = ChangedVersions::default();
        for key in self.changed.drain() {
            changed
                .versions
                .push(self.applied.get(&key).copied().unwrap_or(0));
            changed.types.push(key.0);
            changed.ids.push(key.1);
        }
        changed
    }
}

/// Versions to write to `read.aggregate_versions`, one entry per aggregate.
#[derive(Debug, Default)]
pub struct ChangedVersions {
    pub types: Vec<String>,
    pub ids: Vec<String>,
    pub versions: Vec<i64>,
}

/// Decodes an envelope's payload into the aggregate's event enum, which is
/// externally tagged in storage (`{"TaskCreated": {...}}`).
pub fn decode_event<E: serde::de::DeserializeOwned>(
    event: &EventEnvelope,
) -> Result<E, ProjectionError> {
    let tagged = serde_json::json!({ event.event_type.as_str(): event.payload });
    serde_json::from_value(tagged).map_err(|err| ProjectionError::poison(event.message_id(), err))
}

/// The settings [`MARK_AND_LOCK`] makes, for both of its forms.
macro_rules! mark {
    () => {
        "set_config('application_name', 'chronicle projection', true), \
         set_config('synchronous_commit', 'off', true)"
    };
}

/// First statement of every projection transaction (live batch or rebuild):
/// marks it as one that writes no events, so the relay's commit horizon does
/// not wait for it (migration 0100, which also refuses event inserts from a
/// transaction so marked), then takes the projection's lock (`$1`, [`lock_key`]).
///
/// It also commits without waiting for the WAL flush: a read model is derived
/// data, and its checkpoint is in the same transaction, so a batch lost in a
/// crash is simply consumed and applied again (the version guard keeps that
/// exact). Commands, which write the source of truth, keep durable commits.
pub const MARK_AND_LOCK: &str = concat!("select ", mark!(), ", pg_advisory_xact_lock($1)");

/// `BEGIN` and [`MARK_AND_LOCK`] as one simple query, for `begin_with`: one
/// round trip where a live batch took two. The simple protocol takes no
/// parameters, so the key is written in (an integer of our own making).
pub fn begin_marked_and_locked(projection: &str) -> String {
    format!(
        concat!("begin; select ", mark!(), ", pg_advisory_xact_lock({})"),
        lock_key(projection)
    )
}

/// The advisory-lock key that serialises a projection's live batches and its rebuild.
pub fn lock_key(projection: &str) -> i64 {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in projection.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}
