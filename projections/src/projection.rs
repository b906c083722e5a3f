//! What a projection is, and the version guard every projection goes through.

use async_trait::async_trait;
use chronicle_nats::EventEnvelope;
use sqlx::PgConnection;

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
    /// Empties the read model before a rebuild.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError>;
}

/// Applies `event` unless this projection already has it.
///
/// Returns whether it was applied. An event more than one step ahead of the
/// stored version means an earlier one never arrived: that is a poison
/// condition, not something to paper over.
pub async fn apply_guarded(
    projection: &dyn Projection,
    conn: &mut PgConnection,
    event: &EventEnvelope,
) -> Result<bool, ProjectionError> {
    let applied: Option<i64> = sqlx::query_scalar(
        "select version from read.aggregate_versions \
         where projection = $1 and aggregate_type = $2 and aggregate_id = $3",
    )
    .bind(projection.name())
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .fetch_optional(&mut *conn)
    .await?;
    let applied = applied.unwrap_or(0);
    if event.sequence <= applied {
        return Ok(false);
    }
    if event.sequence != applied + 1 {
        return Err(ProjectionError::poison(
            event.message_id(),
            format!(
                "sequence {} follows {applied}: events are missing (run `chronicle replay --projection {}`)",
                event.sequence,
                projection.name()
            ),
        ));
    }
    projection.apply(conn, event).await?;
    sqlx::query(
        "insert into read.aggregate_versions (projection, aggregate_type, aggregate_id, version) \
         values ($1, $2, $3, $4) \
         on conflict (projection, aggregate_type, aggregate_id) do update set version = excluded.version",
    )
    .bind(projection.name())
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .bind(event.sequence)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Decodes an envelope's payload into the aggregate's event enum, which is
/// externally tagged in storage (`{"TaskCreated": {...}}`).
pub fn decode_event<E: serde::de::DeserializeOwned>(
    event: &EventEnvelope,
) -> Result<E, ProjectionError> {
    let tagged = serde_json::json!({ event.event_type.as_str(): event.payload });
    serde_json::from_value(tagged).map_err(|err| ProjectionError::poison(event.message_id(), err))
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
