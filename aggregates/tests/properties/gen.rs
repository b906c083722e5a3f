//! Value strategies the command strategies share: valid and invalid inputs
//! mixed, with the boundaries of the validation rules.

use chrono::{DateTime, Utc};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use uuid::Uuid;

/// The owner every strategy mostly acts as.
pub const OWNER: Uuid = Uuid::from_u128(0xA);
/// Someone else, to whom the aggregate must look absent.
pub const STRANGER: Uuid = Uuid::from_u128(0xB);

/// Mostly the owner, sometimes a stranger.
pub fn actor() -> impl Strategy<Value = Uuid> {
    prop_oneof![4 => Just(OWNER), 1 => Just(STRANGER)]
}

/// A few ids, so that repeats happen.
pub fn id() -> impl Strategy<Value = Uuid> {
    (1u128..6).prop_map(Uuid::from_u128)
}

/// Any time around 2023, to the nanosecond.
pub fn at() -> impl Strategy<Value = DateTime<Utc>> {
    (-10_000_000i64..10_000_000, 0u32..1_000_000_000).prop_map(|(seconds, nanos)| {
        DateTime::from_timestamp(1_700_000_000 + seconds, nanos).expect("in range")
    })
}

/// Text around a rule's limit of `max` characters: valid ones mostly,
/// empty, blank, too long, control characters and any Unicode too.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9 _-]{1,12}",
        1 => Just(String::new()),
        1 => Just("   ".to_owned()),
        1 => Just("é".repeat(max)),
        1 => Just("x".repeat(max + 1)),
        1 => Just("a\0b\r\n".to_owned()),
        2 => any::<String>(),
    ]
}

pub fn opt<T: std::fmt::Debug + Clone>(
    inner: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop::option::of(inner)
}

/// A JSON number as different producers write it.
pub fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        Just(Value::from(1.0)),
        Just(Value::from(-0.0)),
        Just(Value::from(1e300)),
        Just(Value::from(0.1)),
    ]
}

pub fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        ".{0,8}".prop_map(Value::from),
    ]
}

/// Any JSON value: broad and shallow, or a narrow one nested deeper than
/// the 16 levels the validation allows.
pub fn json() -> impl Strategy<Value = Value> {
    let broad = leaf().prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(".{0,6}", inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    });
    let deep = (0usize..24, vec(any::<bool>(), 24), leaf()).prop_map(|(depth, kinds, leaf)| {
        let mut value = leaf;
        for array in kinds.into_iter().take(depth) {
            value = if array {
                Value::Array(vec![value])
            } else {
                Value::Object(Map::from_iter([("k".to_owned(), value)]))
            };
        }
        value
    });
    prop_oneof![4 => broad, 1 => deep]
}

/// Mostly objects (what settings and preferences must be), any JSON else.
pub fn json_object() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => btree_map("[a-z]{1,6}", json(), 0..4)
            .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        1 => json(),
    ]
}

thread_local! {
    /// What a damaged or hand-written stored field might hold: the edge
    /// values of every JSON type.
    pub static EDGE_VALUES: Vec<Value> = vec![
        Value::Null,
        Value::from(""),
        Value::from(" "),
        Value::from("x".repeat(100_001)),
        Value::from("not-a-uuid"),
        Value::from("2026-13-45T99:99:99Z"),
        Value::from(0),
        Value::from(-1),
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::from(1.5),
        Value::from(true),
        Value::Array(Vec::new()),
        Value::Object(Map::new()),
    ];
}
