//! A small JSON reader for the verifier: it borrows from the text it reads
//! (no map, no owned strings unless a string has escapes) and writes the RFC
//! 8785 canonical form directly. The verifier reads every payload and
//! metadata object of the event store, so this is its hot path.
//!
//! Its canonical output equals `canonical::canonical(&serde_json::from_str(text))`
//! byte for byte (same duplicate-key rule, same number parsing): the live
//! projection digests `serde_json::Value`s and the two must agree. Tests
//! below check that on tricky inputs.

use std::borrow::Cow;

use serde_json::Value;

use super::canonical::{ecmascript_number, write_string};

/// Containers nested this deep are refused: serde_json reads at most 127
/// (its recursion limit of 128 counts the one it refuses).
const MAX_NESTED: usize = 127;

/// A JSON value borrowed from its text.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// The number's literal text.
    Number(&'a str),
    String(JsonStr<'a>),
    Array(Vec<Json<'a>>),
    /// Members in text order, duplicates included.
    Object(Vec<(JsonStr<'a>, Json<'a>)>),
}

/// A string as written between its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonStr<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// The string's value.
    pub fn decode(&self) -> Result<Cow<'a, str>, String> {
        if !self.escaped {
            return Ok(Cow::Borrowed(self.raw));
        }
        serde_json::from_str::<String>(&format!("\"{}\"", self.raw))
            .map(Cow::Owned)
            .map_err(|err| err.to_string())
    }
}

/// Parses `text`, which must hold exactly one JSON value.
pub fn parse(text: &str) -> Result<Json<'_>, String> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos != parser.bytes.len() {
        return Err(format!("trailing characters at {}", parser.pos));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.bytes.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at {}", byte as char, self.pos))
        }
    }

    fn literal(&mut self, word: &str, value: Json<'a>) -> Result<Json<'a>, String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(format!("invalid literal at {}", self.pos))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, String> {
        match self.bytes.get(self.pos) {
            Some(b'{' | b'[') if depth >= MAX_NESTED => Err("nested too deeply".into()),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => Ok(self.number()),
            _ => Err(format!("unexpected input at {}", self.pos)),
        }
    }

    fn string(&mut self) -> Result<JsonStr<'a>, String> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.bytes.get(self.pos) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 2;
                }
                Some(byte) if *byte < 0x20 => {
                    return Err(format!("control character in a string at {}", self.pos))
                }
                Some(_) => self.pos += 1,
                None => return Err("unterminated string".into()),
            }
        }
        // Split only at ASCII quotes, so both ends are character boundaries.
        let raw = &self.text[start..self.pos];
        self.pos += 1;
        Ok(JsonStr { raw, escaped })
    }

    fn number(&mut self) -> Json<'a> {
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        Json::Number(&self.text[start..self.pos])
    }

    fn array(&mut self, depth: usize) -> Result<Json<'a>, String> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.bytes.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(format!("expected ',' or ']' at {}", self.pos)),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, String> {
        self.expect(b'{')?;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_whitespace();
            let key = self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            members.push((key, self.value(depth + 1)?));
            self.skip_whitespace();
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(format!("expected ',' or '}}' at {}", self.pos)),
            }
        }
    }
}

impl<'a> Json<'a> {
    /// The members of an object as `serde_json` keeps them: the last of
    /// duplicate keys wins, sorted by key in JCS order.
    fn members<'m>(
        members: &'m [(JsonStr<'a>, Json<'a>)],
    ) -> Result<Vec<(Cow<'a, str>, &'m Json<'a>)>, String> {
        let mut decoded = members
            .iter()
            .map(|(key, value)| key.decode().map(|key| (key, value)))
            .collect::<Result<Vec<_>, _>>()?;
        // Stable: among equal keys the text order stays, so the last is kept below.
        if decoded.iter().all(|(key, _)| key.is_ascii()) {
            decoded.sort_by(|(a, _), (b, _)| a.cmp(b));
        } else {
            decoded.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
        }
        let mut unique: Vec<(Cow<'a, str>, &'m Json<'a>)> = Vec::with_capacity(decoded.len());
        for (key, value) in decoded {
            match unique.last_mut() {
                Some(last) if last.0 == key => last.1 = value,
                _ => unique.push((key, value)),
            }
        }
        Ok(unique)
    }

    /// The string value at `key` of an object (the last one if repeated).
    pub fn get_str(&self, key: &str) -> Option<Cow<'a, str>> {
        let Json::Object(members) = self else {
            return None;
        };
        members
            .iter()
            .rev()
            .find(|(name, _)| name.decode().is_ok_and(|name| name == key))
            .and_then(|(_, value)| match value {
                Json::String(text) => text.decode().ok(),
                _ => None,
            })
    }

    /// The payload as published: `{"<event_type>": inner}` becomes `inner`
    /// (the rule of `entry::untagged`, for a map of exactly one key).
    pub fn untagged(&self, event_type: &str) -> &Json<'a> {
        if let Json::Object(members) = self {
            let only_key = members
                .iter()
                .all(|(key, _)| key.decode().is_ok_and(|key| key == event_type));
            if only_key {
                if let Some((_, inner)) = members.last() {
                    return inner;
                }
            }
        }
        self
    }

    /// Appends the canonical (RFC 8785) form.
    pub fn write_canonical(&self, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Json::Null => out.extend_from_slice(b"null"),
            Json::Bool(true) => out.extend_from_slice(b"true"),
            Json::Bool(false) => out.extend_from_slice(b"false"),
            Json::Number(literal) => write_number_literal(literal, out)?,
            Json::String(text) if !text.escaped => {
                // Valid JSON without escapes has no quote, backslash or
                // control character inside: it is already canonical.
                out.push(b'"');
                out.extend_from_slice(text.raw.as_bytes());
                out.push(b'"');
            }
            Json::String(text) => write_string(&text.decode()?, out),
            Json::Array(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    item.write_canonical(out)?;
                }
                out.push(b']');
            }
            Json::Object(members) => {
                out.push(b'{');
                for (index, (key, value)) in Self::members(members)?.into_iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write_string(&key, out);
                    out.push(b':');
                    value.write_canonical(out)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }
}

/// A number as `serde_json::Value` holds it, written the JCS way: integer
/// literals that fit 64 bits stay integers, anything else is a double parsed
/// by serde_json itself.
fn write_number_literal(literal: &str, out: &mut Vec<u8>) -> Result<(), String> {
    // JSON has no leading zeros (`01`, `-00`), which Rust's integer parsing
    // would accept; serde_json refuses them.
    let unsigned = literal.strip_prefix('-').unwrap_or(literal).as_bytes();
    if unsigned.len() > 1 && unsigned[0] == b'0' && unsigned[1].is_ascii_digit() {
        return Err(format!("invalid number {literal}"));
    }
    if !literal.contains(['.', 'e', 'E']) {
        if let Ok(n) = literal.parse::<u64>() {
            out.extend_from_slice(n.to_string().as_bytes());
            return Ok(());
        }
        if let Ok(n) = literal.parse::<i64>() {
            if n != 0 {
                out.extend_from_slice(n.to_string().as_bytes());
                return Ok(());
            }
        }
    }
    match serde_json::from_str::<Value>(literal) {
        Ok(Value::Number(number)) => {
            if let Some(n) = number.as_i64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else if let Some(n) = number.as_u64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                let n = number.as_f64().ok_or("not a number")?;
                out.extend_from_slice(ecmascript_number(n).as_bytes());
            }
            Ok(())
        }
        _ => Err(format!("invalid number {literal}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::canonical::canonical;

    fn both(text: &str) -> (String, String) {
        let value: Value = serde_json::from_str(text).unwrap();
        let reference = String::from_utf8(canonical(&value)).unwrap();
        let mut fast = Vec::new();
        parse(text).unwrap().write_canonical(&mut fast).unwrap();
        (String::from_utf8(fast).unwrap(), reference)
    }

    #[test]
    fn the_canonical_form_equals_the_one_of_serde_json_values() {
        for text in [
            r#"{"title": "write the report", "owner_id": "7d3c", "due_at": null, "n": 3}"#,
            r#"{"b": [1, -2, 3.5, 1e3, -0, 0.000001, 1E-7, 12345678901234567890, -9223372036854775809], "a": {}}"#,
            r#"{"esc": "quote \" backslash \\ tab \t nl \n uni \u00e9 \u0001 \ud83d\ude00 \/", "k\u00e9y": true}"#,
            r#"{"é": 1, "😀": 2, "דּ": 3, "z": 4, "a": [[], {}, [null, false]]}"#,
            r#"{"dup": 1, "a": 0, "dup": 2}"#,
            "  [ 1 , \"x\" ,{ \"y\" : [ ] } ]  ",
            r#""just a string""#,
            "-0.0",
            "18446744073709551615",
            r#"{"TaskCreated": {"created_at": "2026-01-01T00:00:00Z", "title": "bulk, \"quoted\""}}"#,
        ] {
            let (fast, reference) = both(text);
            assert_eq!(fast, reference, "{text}");
        }
    }

    #[test]
    fn untagging_and_lookups_follow_serde_json() {
        let json = parse(r#"{"TaskCreated": {"title": "t"}}"#).unwrap();
        let mut out = Vec::new();
        json.untagged("TaskCreated")
            .write_canonical(&mut out)
            .unwrap();
        assert_eq!(out, br#"{"title":"t"}"#);
        assert_eq!(json.untagged("Other"), &json);
        let metadata = parse(r#"{"actor_id": "a\u00e9", "n": 1, "actor_id": "b"}"#).unwrap();
        assert_eq!(metadata.get_str("actor_id").as_deref(), Some("b"));
        assert_eq!(metadata.get_str("n"), None);
        assert_eq!(metadata.get_str("missing"), None);
    }

    #[test]
    fn malformed_input_is_refused() {
        for text in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "\"open",
            "nul",
            "{} x",
            "\"a\u{1}\"",
            "01",
            "-01",
            "[00]",
        ] {
            assert!(
                parse(text).is_err() || {
                    let mut out = Vec::new();
                    parse(text).unwrap().write_canonical(&mut out).is_err()
                },
                "{text:?}"
            );
        }
    }
}
