//! Parked events: what the relay could not publish, or a projection could not
//! apply, kept in the `dead_letters` table instead of stopping everything
//! behind them (migration 0300, `docs/architecture.md`, "Poison events").
//!
//! The rule that keeps per-aggregate order exact: once an event of an
//! aggregate is parked at a stage, every later event of that aggregate is
//! parked at that stage too ("held behind"), until an operator releases the
//! aggregate. Other aggregates flow on. A release retries the aggregate's
//! parked events in sequence order; one that still fails stays parked, and so
//! does everything behind it.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::stored_event::{ReadEvent, EVENT_COLUMNS};
use crate::{NatsError, StoredEvent};

/// Channel notified by `chronicle dead-letters release`.
pub const DEAD_LETTERS_CHANNEL: &str = "chronicle_dead_letters";
/// The stage name of the relay; projections use their own names.
pub const RELAY_STAGE: &str = "relay";

/// Deepest nesting of a payload or metadata object that is published.
///
/// The envelope adds two levels, and consumers that parse with a default
/// JSON parser (serde_json stops at 128) must be able to read every message.
pub const MAX_PUBLISHED_DEPTH: usize = 64;

/// `(aggregate_type, aggregate_id)`.
pub type AggregateKey = (String, String);

/// One event to park, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub global_position: i64,
    pub event_type: String,
    pub reason: String,
}

impl Parked {
    pub fn key(&self) -> AggregateKey {
        (self.aggregate_type.clone(), self.aggregate_id.clone())
    }

    /// `<AggregateType>:<id>:<sequence>`, as `Nats-Msg-Id`.
    pub fn message_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }
}

/// The aggregates a stage holds back, each with the message id of its first
/// parked event (named in the reason of the events parked behind it).
#[derive(Debug, Default, Clone)]
pub struct Blocked {
    /// The sequence and message id of each aggregate's first parked event.
    first_parked: HashMap<AggregateKey, (i64, String)>,
}

impl Blocked {
    /// The open dead letters of `stage`.
    pub async fn load(conn: &mut PgConnection, stage: &str) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "select aggregate_type, aggregate_id, min(sequence) from dead_letters \
             where stage = $1 and released_at is null group by 1, 2",
        )
        .bind(stage)
        .fetch_all(conn)
        .await?;
        let first_parked = rows
            .into_iter()
            .map(|(kind, id, sequence)| {
                let message_id = format!("{kind}:{id}:{sequence}");
                ((kind, id), (sequence, message_id))
            })
            .collect();
        Ok(Self { first_parked })
    }

    pub fn is_empty(&self) -> bool {
        self.first_parked.is_empty()
    }

    /// Why the event `sequence` of `key` must wait, if it must: only an
    /// event at or after the first parked one waits. An earlier event that
    /// arrives in the same batch as a poison event (or that the relay reads
    /// again after a crash, its poison event parked already) goes on, not
    /// held behind it.
    pub fn held_behind_at(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Option<String> {
        if self.first_parked.is_empty() {
            return None;
        }
        self.first_parked
            .get(&(aggregate_type.to_string(), aggregate_id.to_string()))
            .filter(|(first, _)| sequence >= *first)
            .map(|(_, first)| format!("held behind the parked event {first}"))
    }

    /// Holds back `parked`'s aggregate from now on (from its first parked event).
    pub fn block(&mut self, parked: &Parked) {
        let first = self
            .first_parked
            .entry(parked.key())
            .or_insert_with(|| (parked.sequence, parked.message_id()));
        if parked.sequence < first.0 {
            *first = (parked.sequence, parked.message_id());
        }
    }

    pub fn unblock(&mut self, key: &AggregateKey) {
        self.first_parked.remove(key);
    }
}

/// Stores `parked` for `stage` (a row already there is kept as it is, and
/// not logged or counted again: the relay parks a batch's rows again after
/// a crash before its checkpoint).
pub async fn park(
    conn: &mut PgConnection,
    stage: &str,
    parked: &[Parked],
) -> Result<(), sqlx::Error> {
    if parked.is_empty() {
        return Ok(());
    }
    let mut types = Vec::with_capacity(parked.len());
    let mut ids = Vec::with_capacity(parked.len());
    let mut sequences = Vec::with_capacity(parked.len());
    let mut positions = Vec::with_capacity(parked.len());
    let mut event_types = Vec::with_capacity(parked.len());
    let mut reasons = Vec::with_capacity(parked.len());
    for event in parked {
        types.push(event.aggregate_type.as_str());
        ids.push(event.aggregate_id.as_str());
        sequences.push(event.sequence);
        positions.push(event.global_position);
        event_types.push(event.event_type.as_str());
        reasons.push(event.reason.as_str());
    }
    let stored: Vec<(String, String, i64, String)> = sqlx::query_as(
        "insert into dead_letters (stage, aggregate_type, aggregate_id, sequence, global_position, event_type, reason) \
         select $1, * from unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[]) \
         on conflict (stage, aggregate_type, aggregate_id, sequence) do nothing \
         returning aggregate_type, aggregate_id, sequence, reason",
    )
    .bind(stage)
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(&positions)
    .bind(&event_types)
    .bind(&reasons)
    .fetch_all(conn)
    .await?;
    for (aggregate_type, aggregate_id, sequence, reason) in &stored {
        tracing::error!(
            stage,
            event = %format!("{aggregate_type}:{aggregate_id}:{sequence}"),
            reason = %reason,
            "event parked in dead_letters"
        );
    }
    metrics::counter!("chronicle_dead_letters_parked_total", "stage" => stage.to_string())
        .increment(stored.len() as u64);
    Ok(())
}

/// The aggregates of `stage` whose release was asked for.
pub async fn release_requests(
    conn: &mut PgConnection,
    stage: &str,
) -> Result<Vec<AggregateKey>, sqlx::Error> {
    sqlx::query_as(
        "select distinct aggregate_type, aggregate_id from dead_letters \
         where stage = $1 and released_at is null and release_requested_at is not null \
         order by 1, 2",
    )
    .bind(stage)
    .fetch_all(conn)
    .await
}

/// The open parked sequences of one aggregate at `stage`, in order.
pub async fn parked_sequences(
    conn: &mut PgConnection,
    stage: &str,
    key: &AggregateKey,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "select sequence from dead_letters \
         where stage = $1 and aggregate_type = $2 and aggregate_id = $3 and released_at is null \
         order by sequence",
    )
    .bind(stage)
    .bind(&key.0)
    .bind(&key.1)
    .fetch_all(conn)
    .await
}

/// The open parked events of `key` at `stage`, read from the event store in
/// sequence order; or the first whose JSON cannot be read, as
/// `(sequence, reason)`.
pub async fn parked_events(
    conn: &mut PgConnection,
    stage: &str,
    key: &AggregateKey,
) -> Result<Result<Vec<StoredEvent>, (i64, String)>, NatsError> {
    let sequences = parked_sequences(conn, stage, key).await?;
    let rows = sqlx::query(&format!(
        "select {EVENT_COLUMNS} from events \
         where aggregate_type = $1 and aggregate_id = $2 and sequence = any($3) \
         order by sequence"
    ))
    .bind(&key.0)
    .bind(&key.1)
    .bind(&sequences)
    .fetch_all(&mut *conn)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        match StoredEvent::read_row(row)? {
            ReadEvent::Event(event) => events.push(event),
            ReadEvent::Unreadable { parked, .. } => {
                return Ok(Err((parked.sequence, parked.reason)))
            }
        }
    }
    Ok(Ok(events))
}

/// Marks every open dead letter of `key` at `stage` released.
pub async fn mark_released(
    conn: &mut PgConnection,
    stage: &str,
    key: &AggregateKey,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update dead_letters set released_at = now() \
         where stage = $1 and aggregate_type = $2 and aggregate_id = $3 and released_at is null",
    )
    .bind(stage)
    .bind(&key.0)
    .bind(&key.1)
    .execute(conn)
    .await?;
    Ok(())
}

/// A release that failed again: the event keeps its place, with the new
/// reason, and the aggregate waits for the next release request.
pub async fn refuse_release(
    conn: &mut PgConnection,
    stage: &str,
    key: &AggregateKey,
    sequence: i64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update dead_letters set release_requested_at = null, \
           reason = case when sequence = $4 then $5 else reason end \
         where stage = $1 and aggregate_type = $2 and aggregate_id = $3 and released_at is null",
    )
    .bind(stage)
    .bind(&key.0)
    .bind(&key.1)
    .bind(sequence)
    .bind(reason)
    .execute(conn)
    .await?;
    tracing::error!(stage, aggregate_type = %key.0, aggregate_id = %key.1, sequence, reason, "release refused: the event still fails");
    Ok(())
}

/// Asks `stage` (or every stage) to retry the open dead letters of one
/// aggregate (or of all). Returns how many rows were marked.
pub async fn request_release(
    conn: &mut PgConnection,
    stage: Option<&str>,
    aggregate: Option<&AggregateKey>,
) -> Result<u64, NatsError> {
    let (marked, _notified): (i64, i64) = sqlx::query_as(
        "with marked as ( \
           update dead_letters set release_requested_at = now() \
           where released_at is null and ($1::text is null or stage = $1) \
             and ($2::text is null or (aggregate_type = $2 and aggregate_id = $3)) \
           returning stage), \
         notified as (select pg_notify($4, stage) from (select distinct stage from marked) s) \
         select (select count(*) from marked), (select count(*) from notified)",
    )
    .bind(stage)
    .bind(aggregate.map(|key| key.0.as_str()))
    .bind(aggregate.map(|key| key.1.as_str()))
    .bind(DEAD_LETTERS_CHANNEL)
    .fetch_one(conn)
    .await?;
    Ok(marked as u64)
}

/// How deeply `value` nests (a scalar is 0, `[]` is 1, `[[1]]` is 2).
pub fn json_depth(value: &serde_json::Value) -> usize {
    // Iterative, so that no input can exhaust the stack.
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            serde_json::Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|item| (item, depth + 1)));
            }
            serde_json::Value::Object(fields) => {
                deepest = deepest.max(depth + 1);
                stack.extend(fields.values().map(|item| (item, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!([])), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn an_aggregate_is_held_behind_its_first_parked_event() {
        let mut blocked = Blocked::default();
        let parked = Parked {
            aggregate_type: "User".into(),
            aggregate_id: "u1".into(),
            sequence: 3,
            global_position: 10,
            event_type: "ProfileUpdated".into(),
            reason: "too large".into(),
        };
        assert_eq!(blocked.held_behind_at("User", "u1", 3), None);
        blocked.block(&parked);
        blocked.block(&Parked {
            sequence: 4,
            ..parked.clone()
        });
        assert_eq!(
            blocked.held_behind_at("User", "u1", 4).as_deref(),
            Some("held behind the parked event User:u1:3")
        );
        assert_eq!(blocked.held_behind_at("User", "u2", 4), None);
        // An earlier event of the aggregate is not held behind a later one.
        assert_eq!(blocked.held_behind_at("User", "u1", 2), None);
        assert_eq!(
            blocked.held_behind_at("User", "u1", 3).as_deref(),
            Some("held behind the parked event User:u1:3")
        );
        blocked.unblock(&parked.key());
        assert!(blocked.is_empty());
    }
}
