//! An event as the event store holds it, and the commit-ordered cursor used to
//! read the store without ever skipping a late-committing transaction.
//!
//! `global_position` is assigned when a row is inserted, which is *not* commit
//! order: a transaction that inserted position 10 may commit after the one
//! that inserted 11. Every row also records the inserting transaction's id
//! (`xid8`). Reading only rows whose transaction id is below
//! `events_commit_horizon()` (the oldest transaction still in flight in this
//! database, see migration 0005) means every row we can see is final: nothing
//! can later appear behind the cursor `(transaction_id, global_position)`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use crate::NatsError;

/// A position in commit order: the inserting transaction and the row's global position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub transaction_id: u64,
    pub global_position: i64,
}

/// One row of the events table.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub cursor: EventCursor,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// Columns selected by every reader of the events table, in one place.
///
/// `transaction_id` comes out as text under another name: an alias named
/// like the column would make `order by transaction_id` sort by that text
/// (`"10" < "9"`), which is neither the index order nor commit order.
pub const EVENT_COLUMNS: &str = "global_position, transaction_id::text as transaction_id_text, \
     aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at";

impl StoredEvent {
    /// Decodes a row selected with [`EVENT_COLUMNS`].
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, NatsError> {
        let global_position: i64 = row.try_get("global_position")?;
        let transaction_id: String = row.try_get("transaction_id_text")?;
        let transaction_id = transaction_id.parse::<u64>().map_err(|err| {
            NatsError::MalformedEvent(global_position.to_string(), err.to_string())
        })?;
        Ok(Self {
            cursor: EventCursor {
                transaction_id,
                global_position,
            },
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }

    /// The payload without cqrs-es's enum tag: stored payloads look like
    /// `{"TaskCreated": {...}}`; consumers get the inner object.
    pub fn untagged_payload(&self) -> Value {
        match &self.payload {
            Value::Object(map) if map.len() == 1 => match map.get(&self.event_type) {
                Some(inner) => inner.clone(),
                None => self.payload.clone(),
            },
            _ => self.payload.clone(),
        }
    }
}

/// Reads up to `limit` committed events after `after`, in commit order.
///
/// Only rows below the oldest in-flight transaction are returned (see the
/// module docs), so the next call with the last returned cursor never misses a
/// row. `aggregate_types` restricts the read to some aggregate types (empty: all).
pub async fn read_committed_after(
    conn: &mut PgConnection,
    after: EventCursor,
    limit: i64,
    aggregate_types: &[String],
) -> Result<Vec<StoredEvent>, NatsError> {
    let sql = format!(
        "select {EVENT_COLUMNS} from events \
         where (transaction_id, global_position) > ($1::text::xid8, $2) \
           and transaction_id < (select events_commit_horizon()) \
           and (cardinality($4::text[]) = 0 or aggregate_type = any($4)) \
         order by transaction_id, global_position \
         limit $3"
    );
    let rows = sqlx::query(&sql)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(limit)
        .bind(aggregate_types)
        .fetch_all(conn)
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// True when rows exist after `after` that are not yet readable because a
/// transaction older than them is still in flight. The relay then retries
/// soon instead of waiting for the next notification.
pub async fn has_in_flight_after(
    conn: &mut PgConnection,
    after: EventCursor,
) -> Result<bool, NatsError> {
    let pending: bool = sqlx::query_scalar(
        "select exists(select 1 from events \
         where (transaction_id, global_position) > ($1::text::xid8, $2) \
           and transaction_id >= (select events_commit_horizon()))",
    )
    .bind(after.transaction_id.to_string())
    .bind(after.global_position)
    .fetch_one(conn)
    .await?;
    Ok(pending)
}
