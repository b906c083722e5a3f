//! Properties of the audit chain's canonical JSON (issue 16), as
//! `projections/src/audit/canonical.rs` and `docs/audit.md` promise it:
//! RFC 8785 (keys sorted by UTF-16 code units, no whitespace, minimal string
//! escapes, numbers as ECMAScript writes doubles), integers beyond 2^53
//! written exactly (the one documented departure). The verifier's reader
//! (`audit/json.rs`) must give the same bytes as `canonical` on the
//! `serde_json::Value` of the same text. See `docs/testing.md`.
//! `PROPTEST_CASES` sets the number of cases (256 by default).

use chronicle_projections::audit::canonical::canonical;
use chronicle_projections::audit::json;
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

/// Integers JCS writes the same whether a producer wrote `n`, `n.0` or `ne0`.
const EXACT: i64 = 1 << 53;

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-EXACT..=EXACT).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        (-1000i32..1000, -30i32..30).prop_map(|(m, e)| Value::from(f64::from(m) * 10f64.powi(e))),
        prop_oneof![
            Just(0.1),
            Just(-0.0),
            Just(1e21),
            Just(1e-7),
            Just(5e-324),
            Just(1.0)
        ]
        .prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_]{0,6}",
        1 => Just("\u{fb33}".to_owned()),
        1 => Just("\u{1f600}".to_owned()),
        1 => Just("\u{e000}x".to_owned()),
        2 => any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        any::<String>().prop_map(Value::from),
        Just(Value::from("\"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}/")),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value nested `depth` levels, arrays and objects mixed.
fn nested(depth: usize, kinds: &[bool], leaf: Value) -> Value {
    let mut value = leaf;
    for index in 0..depth {
        value = if kinds[index % kinds.len()] {
            Value::Array(vec![value, Value::from(index)])
        } else {
            Value::Object(Map::from_iter([
                (format!("k{index}"), value),
                ("a".to_owned(), Value::Null),
            ]))
        };
    }
    value
}

/// A tiny deterministic generator, so one seed drives every choice a
/// producer makes (member order, number form, escapes, whitespace).
struct Producer(u64);

impl Producer {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn space(&mut self, out: &mut String) {
        out.push_str(["", "", " ", "\n  ", "\t", "\r\n"][self.pick(6)]);
    }

    /// `value` written as some producer might: members in any order,
    /// numbers in any of the forms that denote the same double, strings
    /// escaped minimally or every character as `\uXXXX`, any whitespace.
    fn write(&mut self, value: &Value, out: &mut String) {
        self.space(out);
        match value {
            Value::Null | Value::Bool(_) => out.push_str(&value.to_string()),
            Value::Number(number) => out.push_str(&self.number(number)),
            Value::String(text) => self.string(text, out),
            Value::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    self.write(item, out);
                }
                self.space(out);
                out.push(']');
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                for index in (1..entries.len()).rev() {
                    let other = self.pick(index + 1);
                    entries.swap(index, other);
                }
                out.push('{');
                for (index, (key, item)) in entries.into_iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    self.space(out);
                    self.string(key, out);
                    self.space(out);
                    out.push(':');
                    self.write(item, out);
                }
                self.space(out);
                out.push('}');
            }
        }
        self.space(out);
    }

    fn number(&mut self, number: &Number) -> String {
        if let Some(n) = number
            .as_i64()
            .map(i128::from)
            .or(number.as_u64().map(i128::from))
        {
            if n.abs() <= i128::from(EXACT) {
                return match self.pick(4) {
                    0 => format!("{n}"),
                    1 => format!("{n}.0"),
                    2 => format!("{n}e0"),
                    _ => format!("{n}.000E+0"),
                };
            }
            return format!("{n}");
        }
        let x = number.as_f64().expect("a double");
        match self.pick(5) {
            0 => format!("{x}"),
            1 => format!("{x:e}"),
            2 => format!("{x:E}"),
            3 => format!("{x:?}"),
            _ => number.to_string(),
        }
    }

    fn string(&mut self, text: &str, out: &mut String) {
        if self.pick(3) > 0 {
            out.push_str(&serde_json::to_string(text).expect("a string prints"));
            return;
        }
        out.push('"');
        for unit in text.encode_utf16() {
            out.push_str(&format!("\\u{unit:04X}"));
        }
        out.push('"');
    }
}

fn canonical_text(value: &Value) -> String {
    String::from_utf8(canonical(value)).expect("canonical JSON is UTF-8")
}

/// The verifier's canonical bytes of `text`.
fn fast(text: &str) -> Result<String, String> {
    let mut out = Vec::new();
    json::parse(text)?.write_canonical(&mut out)?;
    Ok(String::from_utf8(out).expect("canonical JSON is UTF-8"))
}

proptest! {
    #![proptest_config(config())]

    /// Key order, number forms (1, 1.0, 1e0…), string escapes and
    /// whitespace chosen by the producer do not change the canonical form,
    /// through `serde_json::Value` or through the verifier's reader.
    #[test]
    fn the_canonical_form_does_not_depend_on_how_a_producer_wrote_the_json(
        value in value(),
        seed in 1u64..,
    ) {
        let expected = canonical_text(&value);
        let mut text = String::new();
        Producer(seed).write(&value, &mut text);
        let read: Value = serde_json::from_str(&text).expect("the producer writes JSON");
        prop_assert_eq!(&canonical_text(&read), &expected, "text: {}", text);
        prop_assert_eq!(&fast(&text).expect("the verifier reads it"), &expected, "text: {}", text);
    }

    /// Canonicalising the canonical form again changes nothing, and the
    /// canonical form is JSON that denotes the same value.
    #[test]
    fn canonicalisation_is_idempotent(value in value()) {
        let once = canonical_text(&value);
        let read: Value = serde_json::from_str(&once).expect("canonical JSON parses");
        prop_assert_eq!(&canonical_text(&read), &once);
        prop_assert_eq!(&fast(&once).expect("the verifier reads it"), &once);
    }

    /// Nesting up to the parsers' limit (128 levels, serde_json's and the
    /// verifier's) canonicalises without panicking, the same both ways.
    #[test]
    fn deeply_nested_values_canonicalise_without_panicking(
        depth in 0usize..=127,
        kinds in vec(any::<bool>(), 1..8),
        leaf in number(),
    ) {
        let value = nested(depth, &kinds, leaf);
        let text = serde_json::to_string(&value).expect("prints");
        let read: Value = serde_json::from_str(&text).expect("within serde_json's limit");
        let expected = canonical_text(&value);
        prop_assert_eq!(&canonical_text(&read), &expected);
        prop_assert_eq!(&fast(&text).expect("within the verifier's limit"), &expected);
    }

    /// Any text at all: both readers answer without panicking, the verifier
    /// reads exactly what serde_json reads, and gives the same canonical bytes.
    #[test]
    fn any_text_is_read_or_refused_without_panicking(
        text in prop_oneof![
            any::<String>(),
            "[\\[\\]{}\":,0-9eE.+\\- \\\\ntrufalsu]{0,40}",
            // Nesting around the parsers' limit of 128 levels.
            (120usize..136, prop_oneof![Just(""), Just("1"), Just("{}"), Just("[]")]).prop_map(
                |(depth, leaf)| format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
            ),
            (120usize..136).prop_map(|depth| format!("{}1{}", "{\"k\":".repeat(depth), "}".repeat(depth))),
            // Number literals, valid or not, alone and in an array.
            "[-+0-9eE.]{1,8}",
            "-?0[0-9]{1,4}",
            "\\[[-+0-9eE.]{1,8}\\]",
            // Objects with repeated keys (serde_json keeps the last one).
            vec((prop_oneof![Just("a"), Just("b"), Just("\u{e9}"), Just("\u{1f600}")], value()), 0..6)
                .prop_map(|members| {
                    let members: Vec<String> = members
                        .iter()
                        .map(|(key, value)| format!("{}:{value}", serde_json::to_string(key).unwrap()))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            (value(), 1u64.., vec((any::<prop::sample::Index>(), any::<char>()), 1..4)).prop_map(
                |(value, seed, edits)| {
                    let mut text = String::new();
                    Producer(seed).write(&value, &mut text);
                    let mut chars: Vec<char> = text.chars().collect();
                    for (at, with) in edits {
                        if chars.is_empty() {
                            break;
                        }
                        let at = at.index(chars.len());
                        chars[at] = with;
                    }
                    chars.into_iter().collect()
                }
            ),
        ],
    ) {
        let fast = fast(&text);
        match serde_json::from_str::<Value>(&text) {
            Ok(read) => prop_assert_eq!(&fast.expect("serde_json read it"), &canonical_text(&read)),
            Err(err) => prop_assert!(fast.is_err(), "serde_json refused ({}) what the verifier read: {:?}", err, fast),
        }
    }
}

/// The verifier reads exactly the nesting serde_json reads (127 containers).
#[test]
fn the_verifier_reads_exactly_the_nesting_serde_json_reads() {
    for depth in 120..=135 {
        for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
            let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let serde = serde_json::from_str::<Value>(&text).is_ok();
            assert_eq!(fast(&text).is_ok(), serde, "{depth} levels of {open}");
        }
    }
}

/// Past the limit the verifier refuses rather than recursing without bound.
#[test]
fn nesting_past_the_limit_is_refused_not_a_stack_overflow() {
    let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(json::parse(&text).is_err());
    assert!(serde_json::from_str::<Value>(&text).is_err());
}
