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

use crate::dead_letter::Parked;
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
///
/// `payload` and `metadata` come out as text too and are parsed here, one
/// row at a time: a row that the JSON parser refuses (nested deeper than its
/// limit) is then one bad event instead of a failed batch.
pub const EVENT_COLUMNS: &str = "global_position, transaction_id::text as transaction_id_text, \
     aggregate_type, aggregate_id, sequence, event_type, event_version, \
     payload::text as payload_text, metadata::text as metadata_text, recorded_at";

impl StoredEvent {
    /// Decodes a row selected with [`EVENT_COLUMNS`]; an unreadable payload
    /// or metadata is an error naming the event.
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, NatsError> {
        match Self::read_row(row)? {
            ReadEvent::Event(event) => Ok(event),
            ReadEvent::Unreadable { parked, .. } => Err(NatsError::MalformedEvent(
                parked.message_id(),
                parked.reason,
            )),
        }
    }

    /// Decodes a row selected with [`EVENT_COLUMNS`]. The error is a
    /// database failure; an event whose JSON cannot be read comes back as
    /// [`ReadEvent::Unreadable`], ready to be parked.
    pub fn read_row(row: &sqlx::postgres::PgRow) -> Result<ReadEvent, NatsError> {
        let global_position: i64 = row.try_get("global_position")?;
        let transaction_id: String = row.try_get("transaction_id_text")?;
        let transaction_id = transaction_id.parse::<u64>().map_err(|err| {
            NatsError::MalformedEvent(global_position.to_string(), err.to_string())
        })?;
        let aggregate_type: String = row.try_get("aggregate_type")?;
        let aggregate_id: String = row.try_get("aggregate_id")?;
        let sequence: i64 = row.try_get("sequence")?;
        let event_type: String = row.try_get("event_type")?;
        let payload_text: &str = row.try_get("payload_text")?;
        let metadata_text: &str = row.try_get("metadata_text")?;
        let json = serde_json::from_str::<Value>(payload_text)
            .map_err(|err| format!("payload is not readable JSON: {err}"))
            .and_then(|payload| {
                serde_json::from_str::<Value>(metadata_text)
                    .map(|metadata| (payload, metadata))
                    .map_err(|err| format!("metadata is not readable JSON: {err}"))
            });
        let cursor = EventCursor {
            transaction_id,
            global_position,
        };
        let (payload, metadata) = match json {
            Ok(json) => json,
            Err(reason) => {
                let parked = Parked {
                    aggregate_type,
                    aggregate_id,
                    sequence,
                    global_position,
                    event_type,
                    reason,
                };
                return Ok(ReadEvent::Unreadable { cursor, parked });
            }
        };
        Ok(ReadEvent::Event(Self {
            cursor,
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            event_version: row.try_get("event_version")?,
            payload,
            metadata,
            recorded_at: row.try_get("recorded_at")?,
        }))
    }

    /// This event as a dead letter, parked for `reason`.
    pub fn parked(&self, reason: String) -> Parked {
        Parked {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            global_position: self.cursor.global_position,
            event_type: self.event_type.clone(),
            reason,
        }
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

/// One row read in commit order: an event, or one whose JSON cannot be read.
#[derive(Debug, Clone)]
pub enum ReadEvent {
    Event(StoredEvent),
    Unreadable { cursor: EventCursor, parked: Parked },
}

impl ReadEvent {
    pub fn cursor(&self) -> EventCursor {
        match self {
            Self::Event(event) => event.cursor,
            Self::Unreadable { cursor, .. } => *cursor,
        }
    }

    /// `(aggregate_type, aggregate_id)`.
    pub fn aggregate(&self) -> (&str, &str) {
        match self {
            Self::Event(event) => (&event.aggregate_type, &event.aggregate_id),
            Self::Unreadable { parked, .. } => (&parked.aggregate_type, &parked.aggregate_id),
        }
    }
}

/// Reads up to `limit` committed events after `after`, in commit order.
///
/// Only rows below the oldest in-flight transaction are returned (see the
/// module docs), so the next call with the last returned cursor never misses a
/// row. `aggregate_types` restricts the read to some aggregate types (empty: all).
///
/// `known_committed`: a transaction id through which every transaction is
/// known to be over (the relay's checkpoint: it published only below an
/// earlier horizon). Rows up to it are read even when the horizon computed
/// now is lower: the horizon may dip for a moment (a transaction of another
/// database that ended between the snapshot and the activity check still
/// counts as running), and a rebuild that stopped below what the relay
/// already published would leave out events the live consumer has applied.
pub async fn read_committed_after(
    conn: &mut PgConnection,
    after: EventCursor,
    limit: i64,
    aggregate_types: &[String],
    known_committed: Option<u64>,
) -> Result<Vec<ReadEvent>, NatsError> {
    let sql = format!(
        "select {EVENT_COLUMNS} from events \
         where (transaction_id, global_position) > ($1::text::xid8, $2) \
           and (transaction_id < (select events_commit_horizon()) \
                or transaction_id <= $5::text::xid8) \
           and (cardinality($4::text[]) = 0 or aggregate_type = any($4)) \
         order by transaction_id, global_position \
         limit $3"
    );
    let rows = sqlx::query(&sql)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(limit)
        .bind(aggregate_types)
        .bind(known_committed.unwrap_or(0).to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(StoredEvent::read_row).collect()
}

/// True when rows exist after `after` that are not yet readable because a
/// transaction older than them is still in flight. The relay then retries
/// soon instead of waiting for the next notification.
pub async fn has_in_flight_after(
    conn: &mut PgConnection,
    after: EventCursor,
) -> Result<bool, NatsError> {
    // Not `exists(...)`: the planner expects a third of the table to match
    // and picks a sequential scan, which reads every event when none does
    // (the common answer). The first row in commit order is an index walk.
    let pending: bool = sqlx::query_scalar(
        "select coalesce((select true from events \
           where (transaction_id, global_position) > ($1::text::xid8, $2) \
             and transaction_id >= (select events_commit_horizon()) \
           order by transaction_id, global_position limit 1), false)",
    )
    .bind(after.transaction_id.to_string())
    .bind(after.global_position)
    .fetch_one(conn)
    .await?;
    Ok(pending)
}
