//! The event envelope: the public wire format on NATS (see `docs/events.md`).

use async_nats::header::HeaderValue;
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
    ///
    /// Refused when a field holds a line break, which a NATS header cannot
    /// carry: async-nats panics on one, and a poison event must be parked by
    /// the relay, not stop it (found by `nats/tests/envelope_decoder.rs`).
    pub fn headers(&self) -> Result<HeaderMap, String> {
        let message_id = self.message_id();
        let sequence = self.sequence.to_string();
        let global_position = self.global_position.to_string();
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("Nats-Msg-Id", message_id.as_str()),
            ("Chronicle-Aggregate-Type", self.aggregate_type.as_str()),
            ("Chronicle-Aggregate-Id", self.aggregate_id.as_str()),
            ("Chronicle-Event-Type", self.event_type.as_str()),
            ("Chronicle-Event-Version", self.event_version.as_str()),
            ("Chronicle-Sequence", sequence.as_str()),
            ("Chronicle-Global-Position", global_position.as_str()),
            ("Content-Type", "application/json"),
        ] {
            let value = value.parse::<HeaderValue>().map_err(|_| {
                format!("the `{name}` header cannot be sent: its value holds a line break")
            })?;
            headers.insert(name, value);
        }
        Ok(headers)
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
        let headers = envelope.headers().unwrap();
        assert_eq!(
            headers.get("Chronicle-Global-Position").map(|v| v.as_str()),
            Some("42")
        );
    }

    #[test]
    fn an_identity_field_with_a_line_break_is_refused_as_a_header_not_a_panic() {
        let mut event = stored();
        event.aggregate_id = "a\r\nNats-Msg-Id: forged".into();
        let err = EventEnvelope::from(&event).headers().unwrap_err();
        assert!(err.contains("Nats-Msg-Id"), "{err}");
    }
}
