//! One audit-trail entry: what it says about its event, how it is derived
//! from the event alone, and the hash that chains it to the previous entry.
//!
//! Everything here is a function of event-store data (never of the time the
//! projection ran), so a rebuild from the store gives byte-identical hashes.

use chronicle_nats::EventEnvelope;
use chrono::{DateTime, Datelike, SecondsFormat, SubsecRound, Timelike, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::canonical::{self, sha256_hex, write_string};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who caused the event, from its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub id: Option<String>,
    pub roles: Vec<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Which aggregate, and its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AggregateRef {
    #[serde(rename = "type")]
    pub aggregate_type: String,
    pub id: String,
    pub sequence: i64,
}

/// An entry of the audit trail, as stored and as `/v1/audit/log` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub global_position: i64,
    /// When the command ran (`metadata.occurred_at`), microseconds.
    pub occurred_at: Option<DateTime<Utc>>,
    /// When the event store committed it.
    pub recorded_at: DateTime<Utc>,
    pub actor: Actor,
    /// The event type.
    pub action: String,
    pub event_version: String,
    pub aggregate: AggregateRef,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    /// SHA-256 of the canonical JSON of the payload as published (untagged).
    pub payload_digest: String,
    /// SHA-256 of the canonical JSON of the whole metadata object.
    pub metadata_digest: String,
    pub prev_hash: String,
    /// SHA-256 of the canonical JSON of every field above.
    pub hash: String,
}

/// The parts of an event an entry is derived from, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub global_position: i64,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub recorded_at: DateTime<Utc>,
    pub metadata: &'a Value,
    /// As published: the stored payload without cqrs-es's variant tag.
    pub payload: &'a Value,
}

impl<'a> From<&'a EventEnvelope> for EventView<'a> {
    fn from(envelope: &'a EventEnvelope) -> Self {
        Self {
            global_position: envelope.global_position,
            aggregate_type: &envelope.aggregate_type,
            aggregate_id: &envelope.aggregate_id,
            sequence: envelope.sequence,
            event_type: &envelope.event_type,
            event_version: &envelope.event_version,
            recorded_at: envelope.recorded_at,
            metadata: &envelope.metadata,
            payload: &envelope.payload,
        }
    }
}

/// The stored payload as the envelope publishes it: `{"TaskCreated": {...}}`
/// becomes `{...}` (same rule as `StoredEvent::untagged_payload`, borrowed).
///
/// Consequence for the digest: a stored payload `X` and `{"<event_type>": X}`
/// digest alike; both publish the same envelope, so they are the same event
/// to every consumer.
pub fn untagged<'a>(payload: &'a Value, event_type: &str) -> &'a Value {
    match payload {
        Value::Object(map) if map.len() == 1 => map.get(event_type).unwrap_or(payload),
        _ => payload,
    }
}

fn metadata_text(metadata: &Value, key: &str) -> Option<String> {
    metadata.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Times in entries have the precision Postgres stores.
fn micros(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(6)
}

/// RFC 3339, UTC, always six fractional digits: `2026-01-01T00:00:00.000000Z`.
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// [`format_time`] appended to `out` without formatting machinery (the
/// verifier writes four times per entry). Falls back to chrono outside
/// years 0–9999 and for leap seconds.
pub fn write_time(time: &DateTime<Utc>, out: &mut Vec<u8>) {
    let naive = time.naive_utc();
    let year = naive.year();
    let nanos = naive.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.extend_from_slice(format_time(time).as_bytes());
        return;
    }
    fn digits(value: u32, width: usize, out: &mut Vec<u8>) {
        let mut buffer = [b'0'; 6];
        let mut rest = value;
        for slot in buffer[..width].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend_from_slice(&buffer[..width]);
    }
    digits(year as u32, 4, out);
    out.push(b'-');
    digits(naive.month(), 2, out);
    out.push(b'-');
    digits(naive.day(), 2, out);
    out.push(b'T');
    digits(naive.hour(), 2, out);
    out.push(b':');
    digits(naive.minute(), 2, out);
    out.push(b':');
    digits(naive.second(), 2, out);
    out.push(b'.');
    digits(nanos / 1_000, 6, out);
    out.push(b'Z');
}

/// Every field of an entry but `hash`, borrowed: what the hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFields<'a> {
    pub seq: i64,
    pub global_position: i64,
    pub occurred_at: Option<DateTime<Utc>>,
    pub recorded_at: DateTime<Utc>,
    pub actor_id: Option<&'a str>,
    pub actor_roles: Vec<&'a str>,
    pub actor_ip: Option<&'a str>,
    pub actor_user_agent: Option<&'a str>,
    pub action: &'a str,
    pub event_version: &'a str,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub aggregate_sequence: i64,
    pub request_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    pub payload_digest: &'a str,
    pub metadata_digest: &'a str,
    pub prev_hash: &'a str,
}

impl EntryFields<'_> {
    /// Appends the RFC 8785 canonical JSON of the entry without `hash`:
    /// `{"action","actor":{"id","ip","roles","user_agent"},"aggregate":{"id","sequence","type"},
    /// "causation_id","correlation_id","event_version","global_position","metadata_digest",
    /// "occurred_at","payload_digest","prev_hash","recorded_at","request_id","seq"}`, times as
    /// [`format_time`] writes them, absent values as `null`. Written by hand (keys in
    /// sorted order) because the verifier does this for every entry; a test checks it
    /// against the generic canonicaliser.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        fn opt(value: Option<&str>, out: &mut Vec<u8>) {
            match value {
                Some(text) => write_string(text, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        fn time(value: Option<&DateTime<Utc>>, out: &mut Vec<u8>) {
            match value {
                Some(time) => {
                    out.push(b'"');
                    write_time(time, out);
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b"{\"action\":");
        write_string(self.action, out);
        out.extend_from_slice(b",\"actor\":{\"id\":");
        opt(self.actor_id, out);
        out.extend_from_slice(b",\"ip\":");
        opt(self.actor_ip, out);
        out.extend_from_slice(b",\"roles\":[");
        for (index, role) in self.actor_roles.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_string(role, out);
        }
        out.extend_from_slice(b"],\"user_agent\":");
        opt(self.actor_user_agent, out);
        out.extend_from_slice(b"},\"aggregate\":{\"id\":");
        write_string(self.aggregate_id, out);
        out.extend_from_slice(b",\"sequence\":");
        out.extend_from_slice(self.aggregate_sequence.to_string().as_bytes());
        out.extend_from_slice(b",\"type\":");
        write_string(self.aggregate_type, out);
        out.extend_from_slice(b"},\"causation_id\":");
        opt(self.causation_id, out);
        out.extend_from_slice(b",\"correlation_id\":");
        opt(self.correlation_id, out);
        out.extend_from_slice(b",\"event_version\":");
        write_string(self.event_version, out);
        out.extend_from_slice(b",\"global_position\":");
        out.extend_from_slice(self.global_position.to_string().as_bytes());
        out.extend_from_slice(b",\"metadata_digest\":");
        write_string(self.metadata_digest, out);
        out.extend_from_slice(b",\"occurred_at\":");
        time(self.occurred_at.as_ref(), out);
        out.extend_from_slice(b",\"payload_digest\":");
        write_string(self.payload_digest, out);
        out.extend_from_slice(b",\"prev_hash\":");
        write_string(self.prev_hash, out);
        out.extend_from_slice(b",\"recorded_at\":");
        time(Some(&self.recorded_at), out);
        out.extend_from_slice(b",\"request_id\":");
        opt(self.request_id, out);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(self.seq.to_string().as_bytes());
        out.push(b'}');
    }

    /// The first field in which the two differ, for messages.
    pub fn first_difference(&self, other: &EntryFields<'_>) -> Option<&'static str> {
        let checks: [(&'static str, bool); 17] = [
            ("seq", self.seq == other.seq),
            (
                "global_position",
                self.global_position == other.global_position,
            ),
            ("action", self.action == other.action),
            ("event_version", self.event_version == other.event_version),
            (
                "aggregate",
                (
                    self.aggregate_type,
                    self.aggregate_id,
                    self.aggregate_sequence,
                ) == (
                    other.aggregate_type,
                    other.aggregate_id,
                    other.aggregate_sequence,
                ),
            ),
            (
                "payload_digest",
                self.payload_digest == other.payload_digest,
            ),
            (
                "metadata_digest",
                self.metadata_digest == other.metadata_digest,
            ),
            ("recorded_at", self.recorded_at == other.recorded_at),
            ("occurred_at", self.occurred_at == other.occurred_at),
            ("actor.id", self.actor_id == other.actor_id),
            ("actor.roles", self.actor_roles == other.actor_roles),
            ("actor.ip", self.actor_ip == other.actor_ip),
            (
                "actor.user_agent",
                self.actor_user_agent == other.actor_user_agent,
            ),
            ("request_id", self.request_id == other.request_id),
            (
                "correlation_id",
                self.correlation_id == other.correlation_id,
            ),
            ("causation_id", self.causation_id == other.causation_id),
            ("prev_hash", self.prev_hash == other.prev_hash),
        ];
        checks
            .into_iter()
            .find(|(_, same)| !same)
            .map(|(field, _)| field)
    }
}

impl AuditEntry {
    /// The entry at `seq` for `event`, chained to `prev_hash`.
    pub fn derive(seq: i64, prev_hash: &str, event: EventView<'_>) -> Self {
        let metadata = event.metadata;
        let roles = metadata_text(metadata, "actor_roles")
            .map(|roles| {
                roles
                    .split(',')
                    .filter(|role| !role.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let occurred_at = metadata
            .get("occurred_at")
            .and_then(Value::as_str)
            .and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
            .map(|time| micros(time.with_timezone(&Utc)));
        let mut entry = Self {
            seq,
            global_position: event.global_position,
            occurred_at,
            recorded_at: micros(event.recorded_at),
            actor: Actor {
                id: metadata_text(metadata, "actor_id"),
                roles,
                ip: metadata_text(metadata, "client_ip"),
                user_agent: metadata_text(metadata, "user_agent"),
            },
            action: event.event_type.to_owned(),
            event_version: event.event_version.to_owned(),
            aggregate: AggregateRef {
                aggregate_type: event.aggregate_type.to_owned(),
                id: event.aggregate_id.to_owned(),
                sequence: event.sequence,
            },
            request_id: metadata_text(metadata, "request_id"),
            correlation_id: metadata_text(metadata, "correlation_id"),
            causation_id: metadata_text(metadata, "causation_id"),
            payload_digest: canonical::digest(event.payload),
            metadata_digest: canonical::digest(metadata),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// The entry for an envelope from the stream.
    pub fn from_envelope(seq: i64, prev_hash: &str, envelope: &EventEnvelope) -> Self {
        Self::derive(seq, prev_hash, EventView::from(envelope))
    }

    /// SHA-256 (hex) of [`AuditEntry::canonical_bytes`].
    pub fn compute_hash(&self) -> String {
        sha256_hex(&self.canonical_bytes())
    }

    /// The RFC 8785 canonical JSON of every field but `hash`
    /// (see [`EntryFields::write_canonical`]).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(768);
        self.fields().write_canonical(&mut out);
        out
    }

    /// Every field but `hash`, borrowed.
    pub fn fields(&self) -> EntryFields<'_> {
        EntryFields {
            seq: self.seq,
            global_position: self.global_position,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            actor_id: self.actor.id.as_deref(),
            actor_roles: self.actor.roles.iter().map(String::as_str).collect(),
            actor_ip: self.actor.ip.as_deref(),
            actor_user_agent: self.actor.user_agent.as_deref(),
            action: &self.action,
            event_version: &self.event_version,
            aggregate_type: &self.aggregate.aggregate_type,
            aggregate_id: &self.aggregate.id,
            aggregate_sequence: self.aggregate.sequence,
            request_id: self.request_id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            causation_id: self.causation_id.as_deref(),
            payload_digest: &self.payload_digest,
            metadata_digest: &self.metadata_digest,
            prev_hash: &self.prev_hash,
        }
    }

    /// The first field in which `self` and `other` differ, for messages.
    pub fn first_difference(&self, other: &Self) -> Option<&'static str> {
        self.fields()
            .first_difference(&other.fields())
            .or((self.hash != other.hash).then_some("hash"))
    }

    /// Decodes the [`ENTRY_COLUMNS`] of a row, starting at column `offset`
    /// (by index: the verifier decodes every entry of the trail).
    pub fn from_row(row: &PgRow, offset: usize) -> Result<Self, sqlx::Error> {
        let at = |n: usize| offset + n;
        Ok(Self {
            seq: row.try_get(at(0))?,
            global_position: row.try_get(at(1))?,
            occurred_at: row.try_get(at(2))?,
            recorded_at: row.try_get(at(3))?,
            actor: Actor {
                id: row.try_get(at(4))?,
                roles: row.try_get(at(5))?,
                ip: row.try_get(at(6))?,
                user_agent: row.try_get(at(7))?,
            },
            action: row.try_get(at(8))?,
            event_version: row.try_get(at(9))?,
            aggregate: AggregateRef {
                aggregate_type: row.try_get(at(10))?,
                id: row.try_get(at(11))?,
                sequence: row.try_get(at(12))?,
            },
            request_id: row.try_get(at(13))?,
            correlation_id: row.try_get(at(14))?,
            causation_id: row.try_get(at(15))?,
            payload_digest: row.try_get(at(16))?,
            metadata_digest: row.try_get(at(17))?,
            prev_hash: row.try_get(at(18))?,
            hash: row.try_get(at(19))?,
        })
    }
}

/// The columns of `audit.entries` that [`AuditEntry::from_row`] reads, in its order.
pub const ENTRY_COLUMNS: [&str; 20] = [
    "seq",
    "global_position",
    "occurred_at",
    "recorded_at",
    "actor_id",
    "actor_roles",
    "actor_ip",
    "actor_user_agent",
    "action",
    "event_version",
    "aggregate_type",
    "aggregate_id",
    "aggregate_sequence",
    "request_id",
    "correlation_id",
    "causation_id",
    "payload_digest",
    "metadata_digest",
    "prev_hash",
    "hash",
];

/// `a.seq, a.global_position, …` for a select with table alias `alias`.
pub fn entry_select_list(alias: &str) -> String {
    ENTRY_COLUMNS
        .iter()
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            aggregate_type: "Task".into(),
            aggregate_id: "7d3c".into(),
            sequence: 2,
            global_position: 41,
            event_type: "TaskCompleted".into(),
            event_version: "1.0".into(),
            recorded_at: "2026-03-01T10:00:00.123456Z".parse().unwrap(),
            metadata: json!({
                "actor_id": "u-1",
                "actor_roles": "user,auditor",
                "request_id": "r-1",
                "correlation_id": "c-1",
                "causation_id": "k-1",
                "client_ip": "127.0.0.1",
                "user_agent": "curl/8 \"quoted\"",
                "occurred_at": "2026-03-01T10:00:00.1234567Z",
            }),
            payload: json!({"completed_at": "2026-03-01T10:00:00.123Z"}),
        }
    }

    #[test]
    fn the_hand_written_encoding_equals_the_canonical_json_of_the_entry() {
        let entry = AuditEntry::from_envelope(7, GENESIS_HASH, &envelope());
        let mut value = serde_json::to_value(&entry).unwrap();
        value.as_object_mut().unwrap().remove("hash");
        for time in ["occurred_at", "recorded_at"] {
            let parsed: DateTime<Utc> = serde_json::from_value(value[time].clone()).unwrap();
            value[time] = json!(format_time(&parsed));
        }
        assert_eq!(
            String::from_utf8(entry.canonical_bytes()).unwrap(),
            String::from_utf8(canonical::canonical(&value)).unwrap()
        );
    }

    #[test]
    fn an_entry_is_derived_from_the_event_alone() {
        let event = envelope();
        let entry = AuditEntry::from_envelope(7, GENESIS_HASH, &event);
        assert_eq!(entry, AuditEntry::from_envelope(7, GENESIS_HASH, &event));
        assert_eq!(entry.actor.roles, ["user", "auditor"]);
        assert_eq!(
            entry.occurred_at.map(|t| format_time(&t)).as_deref(),
            Some("2026-03-01T10:00:00.123456Z")
        );
        assert_eq!(entry.hash, entry.compute_hash());
        assert_eq!(entry.hash.len(), 64);
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_hash() {
        let base = AuditEntry::from_envelope(7, GENESIS_HASH, &envelope());
        let mut changed = envelope();
        changed.payload = json!({"completed_at": "2026-03-01T10:00:00.124Z"});
        assert_ne!(
            AuditEntry::from_envelope(7, GENESIS_HASH, &changed).hash,
            base.hash
        );
        let mut changed = envelope();
        changed.metadata["client_ip"] = json!("10.0.0.1");
        assert_ne!(
            AuditEntry::from_envelope(7, GENESIS_HASH, &changed).hash,
            base.hash
        );
        let relinked = AuditEntry::from_envelope(7, &"1".repeat(64), &envelope());
        assert_ne!(relinked.hash, base.hash);
        assert_eq!(relinked.first_difference(&base), Some("prev_hash"));
    }

    #[test]
    fn times_are_written_with_six_digits_without_chrono_formatting() {
        for raw in [
            "2026-03-01T10:00:00.123456Z",
            "1999-12-31T23:59:59Z",
            "0001-01-01T00:00:00.000001Z",
            "9999-12-31T23:59:59.999999Z",
        ] {
            let time: DateTime<Utc> = raw.parse().unwrap();
            let mut out = Vec::new();
            write_time(&time, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), format_time(&time));
        }
    }

    #[test]
    fn a_tagged_payload_is_digested_as_published() {
        let stored = json!({"TaskCompleted": {"completed_at": "x"}});
        assert_eq!(
            untagged(&stored, "TaskCompleted"),
            &json!({"completed_at": "x"})
        );
        assert_eq!(untagged(&stored, "Other"), &stored);
    }
}
