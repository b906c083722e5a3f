//! Proptest-driven fuzzing of the event envelope decoder (issue 16; no
//! nightly toolchain, so no cargo-fuzz). Projections decode every NATS
//! message body with `serde_json::from_slice::<EventEnvelope>`
//! (`projections/src/runtime.rs`, `apply_batch`): any bytes must give `Ok` or
//! `Err`, never a panic, and whatever decodes must be usable (message id,
//! subject, headers) without a panic either. A valid envelope round-trips.
//! `tests/corpus/` holds interesting inputs, replayed by a test: `ok-*` must
//! decode and round-trip, `err-*` must be refused. See `docs/testing.md`.
//! `PROPTEST_CASES` sets the number of cases (256 by default).

use std::path::PathBuf;

use chronicle_nats::EventEnvelope;
use chrono::{DateTime, Utc};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Number, Value};

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The decoder, exactly as the projection runtime calls it.
fn decode(bytes: &[u8]) -> Result<EventEnvelope, serde_json::Error> {
    serde_json::from_slice::<EventEnvelope>(bytes)
}

/// What a consumer does with a decoded envelope; none of it may panic.
fn use_envelope(envelope: &EventEnvelope) {
    let _ = envelope.message_id();
    let _ = envelope.subject("chronicle.events");
    let _ = envelope.headers();
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn identity() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9-]{1,36}",
        1 => any::<String>(),
        1 => Just("a\r\nNats-Msg-Id: forged".to_owned()),
    ]
}

/// Any time Postgres' `timestamptz` holds in the years chrono writes as
/// RFC 3339 (0001 to 9999), to the nanosecond.
fn recorded_at() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(seconds, nanos)| DateTime::from_timestamp(seconds, nanos).expect("in range"))
}

fn envelope() -> impl Strategy<Value = EventEnvelope> {
    (
        (identity(), identity(), any::<i64>(), any::<i64>()),
        (identity(), identity(), recorded_at(), json(), json()),
    )
        .prop_map(
            |(
                (aggregate_type, aggregate_id, sequence, global_position),
                (event_type, event_version, recorded_at, metadata, payload),
            )| EventEnvelope {
                aggregate_type,
                aggregate_id,
                sequence,
                global_position,
                event_type,
                event_version,
                recorded_at,
                metadata,
                payload,
            },
        )
}

/// One way of damaging a message body.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
    Duplicate(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\":,\\0123456789-+.eEtrufalsn \x00\xff".to_vec())
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), byte.clone()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<prop::sample::Index>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(from, to)| Mutation::Duplicate(from, to)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Flip(at, b) => {
            let at = at.index(bytes.len());
            bytes[at] = *b;
        }
        Mutation::Insert(at, b) => {
            let at = at.index(bytes.len() + 1);
            bytes.insert(at, *b);
        }
        Mutation::Remove(at) => {
            bytes.remove(at.index(bytes.len()));
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Mutation::Duplicate(from, to) => {
            let from = from.index(bytes.len());
            let to = to.index(bytes.len());
            let (start, end) = (from.min(to), from.max(to));
            let copy = bytes[start..end].to_vec();
            bytes.splice(end..end, copy);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes decode or are refused, never a panic.
    #[test]
    fn arbitrary_bytes_decode_or_are_refused_without_panicking(bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(envelope) = decode(&bytes) {
            use_envelope(&envelope);
        }
    }

    /// A valid envelope damaged anywhere decodes or is refused, never a
    /// panic; what still decodes is usable.
    #[test]
    fn a_damaged_envelope_decodes_or_is_refused_without_panicking(
        envelope in envelope(),
        mutations in vec(mutation(), 1..6),
    ) {
        let mut bytes = serde_json::to_vec(&envelope).expect("an envelope encodes");
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        if let Ok(envelope) = decode(&bytes) {
            use_envelope(&envelope);
        }
    }

    /// What the relay publishes reads back as itself, and is usable.
    #[test]
    fn a_valid_envelope_round_trips_through_its_message_body(envelope in envelope()) {
        let bytes = serde_json::to_vec(&envelope).expect("an envelope encodes");
        let decoded = decode(&bytes).expect("a published envelope decodes");
        prop_assert_eq!(&decoded, &envelope);
        use_envelope(&decoded);
    }
}

#[test]
fn the_corpus_of_interesting_envelopes_is_decoded_as_expected() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the corpus directory")
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    entries.sort();
    assert!(entries.len() >= 10, "the corpus is missing");
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).expect("a corpus file");
        let decoded = decode(&bytes);
        if name.starts_with("ok-") {
            let envelope = decoded.unwrap_or_else(|err| panic!("{name}: {err}"));
            use_envelope(&envelope);
            let again = decode(&serde_json::to_vec(&envelope).unwrap()).unwrap();
            assert_eq!(again, envelope, "{name} does not round-trip");
        } else if name.starts_with("err-") {
            assert!(decoded.is_err(), "{name} decoded: {decoded:?}");
        } else {
            panic!("{name}: corpus files are named ok-* or err-*");
        }
    }
}
