//! `format=ndjson|csv`: one line per event, in commit order (the order of the
//! trail), with its audit entry: enough to read the history and to recompute
//! every digest and hash offline (see `docs/audit.md`). Events the trail has
//! not reached yet have empty `seq`, digests and hashes.

use bytes::Bytes;
use chronicle_projections::audit::canonical::write_string;
use chronicle_projections::audit::entry::format_time;
use chrono::{DateTime, Utc};
use futures::Stream;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use crate::audit::filters::CURRENT_GENERATION;
use crate::audit::stream::{stream_rows, StreamSlot};
use crate::audit::Filters;

/// An export's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Csv => "csv",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "ndjson" => Ok(Self::Ndjson),
            "csv" => Ok(Self::Csv),
            other => Err(format!("`{other}` is neither ndjson nor csv")),
        }
    }
}

/// The columns of an export, in order (the CSV header row).
pub const COLUMNS: [&str; 22] = [
    "seq",
    "global_position",
    "recorded_at",
    "occurred_at",
    "aggregate_type",
    "aggregate_id",
    "aggregate_sequence",
    "event_type",
    "event_version",
    "actor_id",
    "actor_roles",
    "actor_ip",
    "actor_user_agent",
    "request_id",
    "correlation_id",
    "causation_id",
    "payload",
    "metadata",
    "payload_digest",
    "metadata_digest",
    "prev_hash",
    "hash",
];

/// Entry fields where the trail has them, the event's metadata otherwise;
/// the payload as published (without cqrs-es's variant tag), as JSON text.
const SELECT: &str = "select a.seq, e.global_position, e.recorded_at, a.occurred_at, \
       e.metadata ->> 'occurred_at', e.aggregate_type, e.aggregate_id, e.sequence, \
       e.event_type, e.event_version, \
       coalesce(a.actor_id, e.metadata ->> 'actor_id'), \
       coalesce(a.actor_roles, string_to_array(nullif(e.metadata ->> 'actor_roles', ''), ',')), \
       coalesce(a.actor_ip, e.metadata ->> 'client_ip'), \
       coalesce(a.actor_user_agent, e.metadata ->> 'user_agent'), \
       coalesce(a.request_id, e.metadata ->> 'request_id'), \
       coalesce(a.correlation_id, e.metadata ->> 'correlation_id'), \
       coalesce(a.causation_id, e.metadata ->> 'causation_id'), \
       (case when jsonb_typeof(e.payload) = 'object' and e.payload ? e.event_type \
                  and (e.payload - e.event_type) = '{}'::jsonb \
             then e.payload -> e.event_type else e.payload end)::text, \
       e.metadata::text, a.payload_digest, a.metadata_digest, a.prev_hash, a.hash ";

/// The export query: matching events in commit order, joined to their entries.
pub fn query(filters: &Filters, limit: Option<i64>) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new(format!(
        "{SELECT} from events e left join audit.entries a \
           on a.generation = {CURRENT_GENERATION} and a.global_position = e.global_position \
         where true"
    ));
    filters.push_event_conditions(&mut query);
    query.push(" order by e.transaction_id, e.global_position");
    if let Some(limit) = limit {
        query.push(" limit ").push_bind(limit);
    }
    query
}

/// The export as a stream of bytes, running in `slot`.
pub fn stream(
    pool: PgPool,
    filters: &Filters,
    format: Format,
    limit: Option<i64>,
    slot: StreamSlot,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let header = match format {
        Format::Csv => Some(Bytes::from(format!("{}\r\n", COLUMNS.join(",")))),
        Format::Ndjson => None,
    };
    let render: crate::audit::stream::Render = match format {
        Format::Csv => Box::new(|row, out| Line::read(row).map(|line| line.csv(out))),
        Format::Ndjson => Box::new(|row, out| Line::read(row).map(|line| line.ndjson(out))),
    };
    stream_rows(pool, query(filters, limit), header, render, slot)
}

/// One exported line, borrowed from its row where possible.
struct Line<'r> {
    seq: Option<i64>,
    global_position: i64,
    recorded_at: DateTime<Utc>,
    occurred_at: Option<String>,
    aggregate_type: &'r str,
    aggregate_id: &'r str,
    aggregate_sequence: i64,
    event_type: &'r str,
    event_version: &'r str,
    actor_id: Option<&'r str>,
    actor_roles: Vec<String>,
    actor_ip: Option<&'r str>,
    actor_user_agent: Option<&'r str>,
    request_id: Option<&'r str>,
    correlation_id: Option<&'r str>,
    causation_id: Option<&'r str>,
    payload: &'r str,
    metadata: &'r str,
    payload_digest: Option<&'r str>,
    metadata_digest: Option<&'r str>,
    prev_hash: Option<&'r str>,
    hash: Option<&'r str>,
}

impl<'r> Line<'r> {
    fn read(row: &'r PgRow) -> anyhow::Result<Self> {
        let entry_occurred_at: Option<DateTime<Utc>> = row.try_get(3)?;
        let metadata_occurred_at: Option<&str> = row.try_get(4)?;
        Ok(Self {
            seq: row.try_get(0)?,
            global_position: row.try_get(1)?,
            recorded_at: row.try_get(2)?,
            occurred_at: entry_occurred_at
                .as_ref()
                .map(format_time)
                .or_else(|| metadata_occurred_at.map(str::to_owned)),
            aggregate_type: row.try_get(5)?,
            aggregate_id: row.try_get(6)?,
            aggregate_sequence: row.try_get(7)?,
            event_type: row.try_get(8)?,
            event_version: row.try_get(9)?,
            actor_id: row.try_get(10)?,
            actor_roles: row
                .try_get::<Option<Vec<String>>, _>(11)?
                .unwrap_or_default(),
            actor_ip: row.try_get(12)?,
            actor_user_agent: row.try_get(13)?,
            request_id: row.try_get(14)?,
            correlation_id: row.try_get(15)?,
            causation_id: row.try_get(16)?,
            payload: row.try_get(17)?,
            metadata: row.try_get(18)?,
            payload_digest: row.try_get(19)?,
            metadata_digest: row.try_get(20)?,
            prev_hash: row.try_get(21)?,
            hash: row.try_get(22)?,
        })
    }

    fn ndjson(&self, out: &mut Vec<u8>) {
        fn key(out: &mut Vec<u8>, name: &str) {
            if out.last() != Some(&b'{') {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
        }
        fn text(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
            key(out, name);
            match value {
                Some(value) => write_string(value, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        fn number(out: &mut Vec<u8>, name: &str, value: Option<i64>) {
            key(out, name);
            match value {
                Some(value) => out.extend_from_slice(value.to_string().as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'{');
        number(out, "seq", self.seq);
        number(out, "global_position", Some(self.global_position));
        text(out, "recorded_at", Some(&format_time(&self.recorded_at)));
        text(out, "occurred_at", self.occurred_at.as_deref());
        text(out, "aggregate_type", Some(self.aggregate_type));
        text(out, "aggregate_id", Some(self.aggregate_id));
        number(out, "aggregate_sequence", Some(self.aggregate_sequence));
        text(out, "event_type", Some(self.event_type));
        text(out, "event_version", Some(self.event_version));
        text(out, "actor_id", self.actor_id);
        key(out, "actor_roles");
        out.push(b'[');
        for (index, role) in self.actor_roles.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_string(role, out);
        }
        out.push(b']');
        text(out, "actor_ip", self.actor_ip);
        text(out, "actor_user_agent", self.actor_user_agent);
        text(out, "request_id", self.request_id);
        text(out, "correlation_id", self.correlation_id);
        text(out, "causation_id", self.causation_id);
        key(out, "payload");
        out.extend_from_slice(self.payload.as_bytes());
        key(out, "metadata");
        out.extend_from_slice(self.metadata.as_bytes());
        text(out, "payload_digest", self.payload_digest);
        text(out, "metadata_digest", self.metadata_digest);
        text(out, "prev_hash", self.prev_hash);
        text(out, "hash", self.hash);
        out.extend_from_slice(b"}\n");
    }

    fn csv(&self, out: &mut Vec<u8>) {
        let roles = self.actor_roles.join(",");
        let recorded_at = format_time(&self.recorded_at);
        let seq = self.seq.map(|seq| seq.to_string());
        let fields: [Option<&str>; 22] = [
            seq.as_deref(),
            Some(&self.global_position.to_string()),
            Some(&recorded_at),
            self.occurred_at.as_deref(),
            Some(self.aggregate_type),
            Some(self.aggregate_id),
            Some(&self.aggregate_sequence.to_string()),
            Some(self.event_type),
            Some(self.event_version),
            self.actor_id,
            Some(&roles),
            self.actor_ip,
            self.actor_user_agent,
            self.request_id,
            self.correlation_id,
            self.causation_id,
            Some(self.payload),
            Some(self.metadata),
            self.payload_digest,
            self.metadata_digest,
            self.prev_hash,
            self.hash,
        ];
        for (index, field) in fields.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            if let Some(field) = field {
                csv_field(field, out);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// First characters that make a spreadsheet read a cell as a formula
/// (OWASP "CSV injection"), plus the quote that marks a neutralised cell, so
/// that the marking can always be undone.
const FORMULA_STARTS: [u8; 7] = [b'=', b'+', b'-', b'@', b'\t', b'\r', b'\''];

/// RFC 4180: quoted (inner quotes doubled) when it holds a comma, quote or
/// line break. A value starting with `=`, `+`, `-`, `@`, tab, CR or `'` is
/// neutralised: quoted, with one `'` put in front, which a spreadsheet shows
/// as text and an auditor removes to get the stored value back (every cell
/// that starts with `'` had exactly one added; see `docs/audit.md`).
fn csv_field(field: &str, out: &mut Vec<u8>) {
    let neutralise = field
        .as_bytes()
        .first()
        .is_some_and(|first| FORMULA_STARTS.contains(first));
    if neutralise
        || field
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.push(b'"');
        if neutralise {
            out.push(b'\'');
        }
        for byte in field.bytes() {
            if byte == b'"' {
                out.push(b'"');
            }
            out.push(byte);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        csv_field("plain", &mut out);
        out.push(b',');
        csv_field("{\"a\": 1, \"b\": \"x\"}", &mut out);
        out.push(b',');
        csv_field("two\nlines", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain,\"{\"\"a\"\": 1, \"\"b\"\": \"\"x\"\"}\",\"two\nlines\""
        );
    }

    fn field(value: &str) -> String {
        let mut out = Vec::new();
        csv_field(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cells_a_spreadsheet_would_read_as_formulas_are_neutralised() {
        assert_eq!(
            field("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(field("+1"), "\"'+1\"");
        assert_eq!(field("-2"), "\"'-2\"");
        assert_eq!(field("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(field("\tx"), "\"'\tx\"");
        assert_eq!(field("\rx"), "\"'\rx\"");
        // A value that already starts with the marker gets one more, so
        // removing exactly one leading quote always restores the value.
        assert_eq!(field("'=x"), "\"''=x\"");
        assert_eq!(field("a=b"), "a=b", "only the first character counts");
        assert_eq!(field(""), "");
    }

    #[test]
    fn removing_one_leading_quote_restores_every_neutralised_value() {
        for value in [
            "=1+2",
            "+x",
            "-",
            "@a",
            "\tt",
            "\rr",
            "'",
            "''=",
            "plain",
            "{\"a\":1}",
        ] {
            let line = field(value);
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(line.as_bytes());
            let record = reader.records().next().unwrap().unwrap();
            let cell = &record[0];
            let restored = cell.strip_prefix('\'').unwrap_or(cell);
            assert_eq!(restored, value);
        }
    }
}
