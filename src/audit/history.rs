//! Reads of the event history (the event store itself, which audit queries
//! may read on purpose) and of the audit trail, with [`Filters`].

use bytes::Bytes;
use chronicle_nats::stored_event::EVENT_COLUMNS;
use chronicle_nats::{EventEnvelope, StoredEvent};
use chronicle_projections::audit::entry::entry_select_list;
use chronicle_projections::audit::AuditEntry;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::audit::filters::CURRENT_GENERATION;
use crate::audit::stream::{stream_rows, StreamSlot};
use crate::audit::Filters;

/// Only events whose transaction is below the oldest one in flight: they are
/// final, so paging with `after_position` cannot step over one that commits
/// late with a lower position (see `nats/src/stored_event.rs`).
const FINAL_EVENTS: &str =
    " from events e where e.transaction_id < (select events_commit_horizon())";

fn events_query(select: &str, filters: &Filters) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new(format!("select {select}{FINAL_EVENTS}"));
    filters.push_event_conditions(&mut query);
    query
}

fn page(query: &mut QueryBuilder<'static, Postgres>, limit: Option<i64>, offset: i64) {
    if let Some(limit) = limit {
        query.push(" limit ").push_bind(limit);
    }
    if offset > 0 {
        query.push(" offset ").push_bind(offset);
    }
}

/// A page of events, oldest first (by global position), and the total matching.
pub async fn list_events(
    pool: &PgPool,
    filters: &Filters,
    limit: i64,
    offset: i64,
) -> anyhow::Result<(Vec<EventEnvelope>, i64)> {
    let mut query = events_query(EVENT_COLUMNS, filters);
    query.push(" order by e.global_position");
    page(&mut query, Some(limit), offset);
    let rows = query.build().fetch_all(pool).await?;
    let events = rows
        .iter()
        .map(|row| StoredEvent::from_row(row).map(|event| EventEnvelope::from(&event)))
        .collect::<Result<Vec<_>, _>>()?;
    let total: i64 = events_query("count(*)", filters)
        .build_query_scalar()
        .fetch_one(pool)
        .await?;
    Ok((events, total))
}

/// Every matching event as NDJSON envelopes, oldest first, streamed in `slot`.
pub fn stream_events(
    pool: PgPool,
    filters: &Filters,
    limit: Option<i64>,
    slot: StreamSlot,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut query = events_query(EVENT_COLUMNS, filters);
    query.push(" order by e.global_position");
    page(&mut query, limit, 0);
    stream_rows(
        pool,
        query,
        None,
        Box::new(|row, out| {
            let event = StoredEvent::from_row(row)?;
            serde_json::to_writer(&mut *out, &EventEnvelope::from(&event))?;
            out.push(b'\n');
            Ok(())
        }),
        slot,
    )
}

fn entries_query(select: &str, filters: &Filters) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new(format!(
        "select {select} from audit.entries a where a.generation = {CURRENT_GENERATION}"
    ));
    filters.push_entry_conditions(&mut query);
    query
}

/// A page of audit entries of the newest generation, ascending seq, and the total matching.
pub async fn list_entries(
    pool: &PgPool,
    filters: &Filters,
    limit: i64,
    offset: i64,
) -> anyhow::Result<(Vec<AuditEntry>, i64)> {
    let mut query = entries_query(&entry_select_list("a"), filters);
    query.push(" order by a.seq");
    page(&mut query, Some(limit), offset);
    let rows = query.build().fetch_all(pool).await?;
    let entries = rows
        .iter()
        .map(|row| AuditEntry::from_row(row, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let total: i64 = entries_query("count(*)", filters)
        .build_query_scalar()
        .fetch_one(pool)
        .await?;
    Ok((entries, total))
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Checkpoint {
    pub seq: i64,
    pub head_hash: String,
    pub signed_at: DateTime<Utc>,
    pub kid: String,
    /// Compact JWS (RS256) over `{"seq", "head_hash", "signed_at"}`.
    pub signature: String,
}

/// A page of checkpoints, newest first, and how many there are.
pub async fn list_checkpoints(
    pool: &PgPool,
    limit: i64,
    offset: i64,
) -> anyhow::Result<(Vec<Checkpoint>, i64)> {
    let checkpoints = sqlx::query_as(
        "select seq, head_hash, signed_at, kid, signature from audit.checkpoints \
         order by seq desc limit $1 offset $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from audit.checkpoints")
        .fetch_one(pool)
        .await?;
    Ok((checkpoints, total))
}

/// Every checkpoint, ascending seq.
pub async fn all_checkpoints(pool: &PgPool) -> Result<Vec<Checkpoint>, sqlx::Error> {
    sqlx::query_as(
        "select seq, head_hash, signed_at, kid, signature from audit.checkpoints order by seq",
    )
    .fetch_all(pool)
    .await
}
