//! RFC 8785 JSON Canonicalization Scheme (JCS): the byte string the audit
//! trail hashes. Any JCS library reproduces it, so an auditor can recompute a
//! digest or an entry hash offline without our code.
//!
//! Object keys are sorted by their UTF-16 code units, there is no whitespace,
//! strings use the minimal JSON escapes (lowercase `\u00xx` for other control
//! characters) and numbers are written as ECMAScript writes doubles. One
//! documented departure: integers beyond 2^53, which JCS would round through a
//! double, are written exactly (no Chronicle event carries one).

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// The canonical bytes of `value`.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out);
    out
}

/// Lowercase hex SHA-256 of the canonical bytes of `value`.
pub fn digest(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out);
    sha256_hex(&out)
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hex = [0u8; 64];
    sha256_hex_into(bytes, &mut hex);
    // Hex digits are ASCII.
    String::from_utf8_lossy(&hex).into_owned()
}

/// Lowercase hex SHA-256 of `bytes`, written into `hex` (no allocation).
pub fn sha256_hex_into(bytes: &[u8], hex: &mut [u8; 64]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    for (index, byte) in digest.iter().enumerate() {
        hex[2 * index] = DIGITS[usize::from(byte >> 4)];
        hex[2 * index + 1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// Appends the canonical form of `value` to `out`.
pub fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(number, out),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // serde_json's map is already sorted by bytes; UTF-16 order differs
            // only for characters above U+FFFF against U+E000..U+FFFF.
            if !map.keys().all(|key| key.is_ascii()) {
                entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            }
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Appends `text` as a JSON string with JCS's escapes.
pub fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Most strings need no escape at all: copy them in one go.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_number(number: &Number, out: &mut Vec<u8>) {
    if let Some(n) = number.as_i64() {
        out.extend_from_slice(n.to_string().as_bytes());
    } else if let Some(n) = number.as_u64() {
        out.extend_from_slice(n.to_string().as_bytes());
    } else if let Some(n) = number.as_f64() {
        out.extend_from_slice(ecmascript_number(n).as_bytes());
    }
}

/// ECMAScript's `Number.prototype.toString()` for a finite double
/// (ECMA-262 Number::toString, which JCS adopts).
pub fn ecmascript_number(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        // serde_json never holds NaN or infinities; -0 is written as 0.
        return "0".into();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    // Rust's `{:e}` gives the shortest digits that round-trip, e.g. "1.5e-7".
    let formatted = format!("{:e}", value.abs());
    let (mantissa, exponent) = formatted.split_once('e').unwrap_or((&formatted, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i64;
    // value = 0.d1d2…dk × 10^n
    let n = exponent.parse::<i64>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let exp = n - 1;
        let exp_sign = if exp < 0 { "-" } else { "+" };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{exp_sign}{}", exp.abs())
        } else {
            format!("{first}.{rest}e{exp_sign}{}", exp.abs())
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(value: &Value) -> String {
        String::from_utf8(canonical(value)).unwrap()
    }

    #[test]
    fn keys_are_sorted_and_whitespace_removed() {
        let value = json!({"b": [1, {"z": null, "a": true}], "a": "x"});
        assert_eq!(text(&value), r#"{"a":"x","b":[1,{"a":true,"z":null}]}"#);
    }

    #[test]
    fn strings_use_minimal_escapes() {
        let value = json!("a\"b\\c\n\u{1}\u{7f}é€😀");
        assert_eq!(text(&value), "\"a\\\"b\\\\c\\n\\u0001\u{7f}é€😀\"");
    }

    #[test]
    fn non_ascii_keys_sort_by_utf16_code_units() {
        // RFC 8785 §3.2.3's example: U+1F600 (surrogates D83D…) sorts before U+FB33.
        let value = json!({"\u{fb33}": 1, "\u{1f600}": 2, "a": 3});
        assert_eq!(text(&value), "{\"a\":3,\"\u{1f600}\":2,\"\u{fb33}\":1}");
    }

    #[test]
    #[expect(
        clippy::excessive_precision,
        reason = "RFC 8785's test vectors, digit for digit"
    )]
    fn numbers_are_written_as_ecmascript_does() {
        // Values from RFC 8785 appendix B and ECMA-262.
        for (value, expected) in [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (4.5, "4.5"),
            (0.002, "0.002"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e30, "1e+30"),
            (333333333.33333329, "333333333.3333333"),
            (-1.25, "-1.25"),
            (9007199254740992.0, "9007199254740992"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ] {
            assert_eq!(ecmascript_number(value), expected, "{value:e}");
        }
        assert_eq!(text(&json!([1, -7, 1.5])), "[1,-7,1.5]");
    }

    #[test]
    fn the_digest_is_sha256_of_the_canonical_bytes() {
        assert_eq!(
            digest(&json!({})),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
