//! The event envelope: the public wire format on NATS (see `docs/events.md`).

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::StoredEvent;

/// What analytics consumers receive as the message body, one per event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub global_position: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub metadata: Value,
    pub payload: Value,
}

impl From<&StoredEvent> for EventEnvelope {
    fn from(event: &StoredEvent) -> Self {
        Self {
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            global_position: event.cursor.global_position,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            recorded_at: event.recorded_at,
            metadata: event.metadata.clone(),
            payload: event.untagged_payload(),
        }
    }
}

impl EventEnvelope {
    /// JetStream's de-duplication id: one per aggregate and sequence, so a
    /// republished event is dropped by the stream within its duplicate window.
    pub fn message_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }

    /// `<prefix>.<AggregateType>.<aggregate_id>.<EventType>`.
    pub fn subject(&self, prefix: &str) -> String {
        format!(
            "{prefix}.{}.{}.{}",
            self.aggregate_type, self.aggregate_id, self.event_type
        )
    }

    /// The identity fields as headers, so consumers can route without parsing the body.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", self.message_id().as_str());
        headers.insert("Chronicle-Aggregate-Type", self.aggregate_type.as_str());
        headers.insert("Chronicle-Aggregate-Id", self.aggregate_id.as_str());
        headers.insert("Chronicle-Event-Type", self.event_type.as_str());
        headers.insert("Chronicle-Event-Version", self.event_version.as_str());
        headers.insert("Chronicle-Sequence", self.sequence.to_string().as_str());
        headers.insert(
            "Chronicle-Global-Position",
            self.global_position.to_string().as_str(),
        );
        headers.insert("Content-Type", "application/json");
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventCursor;
    use serde_json::json;

    fn stored() -> StoredEvent {
        StoredEvent {
            cursor: EventCursor {
                transaction_id: 7,
                global_position: 42,
            },
            aggregate_type: "Task".into(),
            aggregate_id: "0b7e".into(),
            sequence: 3,
            event_type: "TaskCompleted".into(),
            event_version: "1.0".into(),
            payload: json!({"TaskCompleted": {"completed_at": "2026-01-01T00:00:00Z"}}),
            metadata: json!({"actor_id": "u1"}),
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn the_envelope_carries_the_untagged_payload_and_identity() {
        let envelope = EventEnvelope::from(&stored());
        assert_eq!(
            envelope.payload,
            json!({"completed_at": "2026-01-01T00:00:00Z"})
        );
        assert_eq!(envelope.message_id(), "Task:0b7e:3");
        assert_eq!(
            envelope.subject("chronicle.events"),
            "chronicle.events.Task.0b7e.TaskCompleted"
        );
        let headers = envelope.headers();
        assert_eq!(
            headers.get("Chronicle-Global-Position").map(|v| v.as_str()),
            Some("42")
        );
    }
}
