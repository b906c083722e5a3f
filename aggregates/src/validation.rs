//! Input validation shared by the aggregates and the HTTP API.
//!
//! Every helper returns the *normalised* value on success (trimmed, lowercased
//! where that is part of the field's identity) so that what gets stored in an
//! event is exactly what was validated. Lengths are counted in `char`s rather
//! than bytes so that limits mean the same thing for every script.

use std::fmt;

use serde::Serialize;

/// Longest task title, in characters.
pub const TITLE_MAX_CHARS: usize = 200;
/// Longest task description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 1000;
/// Longest e-mail address, in characters (the RFC 5321 path limit).
pub const EMAIL_MAX_CHARS: usize = 254;
/// Shortest username, in characters.
pub const USERNAME_MIN_CHARS: usize = 3;
/// Longest username, in characters.
pub const USERNAME_MAX_CHARS: usize = 32;
/// Longest display name, in characters.
pub const NAME_MAX_CHARS: usize = 100;
/// Shortest password, in characters.
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Longest password, in characters; bounds the work a single login can cause
/// in the password hasher.
pub const PASSWORD_MAX_CHARS: usize = 128;

/// Deepest nesting of a free-form JSON document (`preferences`).
pub const JSON_MAX_DEPTH: usize = 16;
/// Largest free-form JSON document, in bytes as Postgres stores it.
pub const JSON_MAX_BYTES: usize = 16 * 1024;

/// Passwords that meet the length rule but appear at the top of every leaked
/// password list, so a credential-stuffing attack would guess them first.
/// Compared case-insensitively.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password123",
    "passw0rd",
    "12345678",
    "123456789",
    "1234567890",
    "87654321",
    "11111111",
    "00000000",
    "qwertyuiop",
    "qwertyui",
    "qwerty123",
    "asdfghjkl",
    "1q2w3e4r",
    "abc12345",
    "iloveyou",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "superman",
    "trustno1",
    "letmein1",
    "welcome1",
    "changeme",
];

/// One invalid input field and a human-readable reason.
///
/// Aggregates collect these into a `Vec` so a client learns about every bad
/// field in one round trip instead of fixing them one at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Name of the offending field as the client spells it (e.g. `"title"`).
    pub field: &'static str,
    /// Why the value was refused.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// The same problem reported under another field name.
    pub fn renamed(self, field: &'static str) -> Self {
        Self { field, ..self }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Renders a list of field errors as one line, for `Display` impls of the
/// aggregate error enums.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Validates a free-form JSON object (e.g. a user's preferences): an object,
/// nested at most [`JSON_MAX_DEPTH`] levels, at most [`JSON_MAX_BYTES`] as
/// stored.
///
/// "As stored" matters: Postgres keeps numbers as decimals and writes them
/// out in full, so `1e18` (4 bytes in the request) takes 19 in the event
/// store and on the bus. Every event must stay readable by any JSON parser
/// and publishable as one NATS message; these bounds keep it far from both.
pub fn validate_json_object(
    field: &'static str,
    value: serde_json::Value,
) -> Result<serde_json::Value, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new(
            field,
            format!("{field} must be a JSON object"),
        ));
    }
    let (depth, expansion) = json_shape(&value);
    if depth > JSON_MAX_DEPTH {
        return Err(FieldError::new(
            field,
            format!("{field} must be nested at most {JSON_MAX_DEPTH} levels deep"),
        ));
    }
    let stored = serde_json::to_string(&value).map_or(usize::MAX, |text| text.len()) + expansion;
    if stored > JSON_MAX_BYTES {
        return Err(FieldError::new(
            field,
            format!("{field} must be at most {JSON_MAX_BYTES} bytes (numbers counted in full)"),
        ));
    }
    Ok(value)
}

/// The nesting depth of `value`, and how many bytes its non-integer numbers
/// may grow by when written out in full (an upper bound: 20 for sign, point
/// and 17 significant digits, plus one per power of ten).
fn json_shape(value: &serde_json::Value) -> (usize, usize) {
    use serde_json::Value;
    // Iterative, so that no input can exhaust the stack.
    let (mut deepest, mut expansion) = (0, 0usize);
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|item| (item, depth + 1)));
            }
            Value::Object(fields) => {
                deepest = deepest.max(depth + 1);
                stack.extend(fields.values().map(|item| (item, depth + 1)));
            }
            Value::Number(number) if !number.is_i64() && !number.is_u64() => {
                let magnitude = number.as_f64().map_or(0.0, f64::abs);
                let exponent = if magnitude == 0.0 {
                    0
                } else {
                    magnitude.log10().floor().abs() as usize
                };
                expansion = expansion.saturating_add(20 + exponent);
            }
            _ => {}
        }
    }
    (deepest, expansion)
}

/// Validates a task title: trimmed, then 1 to 200 characters.
pub fn validate_title(title: &str) -> Result<String, FieldError> {
    let title = title.trim();
    let len = title.chars().count();
    if len == 0 || len > TITLE_MAX_CHARS {
        return Err(FieldError::new(
            "title",
            format!("title must be 1 to {TITLE_MAX_CHARS} characters"),
        ));
    }
    Ok(title.to_owned())
}

/// Validates an optional task description: at most 1000 characters.
///
/// The text is kept verbatim (not trimmed) because descriptions are free-form
/// and leading whitespace can be meaningful (indented lists, code).
pub fn validate_description(description: Option<String>) -> Result<Option<String>, FieldError> {
    match description {
        Some(text) if text.chars().count() > DESCRIPTION_MAX_CHARS => Err(FieldError::new(
            "description",
            format!("description must be at most {DESCRIPTION_MAX_CHARS} characters"),
        )),
        other => Ok(other),
    }
}

/// Canonical form of an e-mail address: trimmed and lowercased.
///
/// Used both by [`validate_email`] and to derive the user aggregate id, so
/// the two can never disagree about which addresses are "the same".
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Validates an e-mail address and returns its canonical form.
///
/// Deliberately shallow: one `@`, a non-empty local part, a dotted domain,
/// no whitespace. Whether the mailbox exists is not our question.
pub fn validate_email(email: &str) -> Result<String, FieldError> {
    let email = normalize_email(email);
    let invalid = || FieldError::new("email", "email must be a valid e-mail address");
    if email.is_empty() || email.chars().count() > EMAIL_MAX_CHARS {
        return Err(FieldError::new(
            "email",
            format!("email must be 1 to {EMAIL_MAX_CHARS} characters"),
        ));
    }
    if email.chars().any(char::is_whitespace) {
        return Err(invalid());
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let domain_ok = domain.contains('.') && domain.split('.').all(|label| !label.is_empty());
    if local.is_empty() || !domain_ok {
        return Err(invalid());
    }
    Ok(email)
}

/// Validates a username: 3 to 32 characters of `[A-Za-z0-9_.-]`, returned
/// lowercased so that `Alice` and `alice` cannot both exist as handles.
pub fn validate_username(username: &str) -> Result<String, FieldError> {
    let username = username.trim();
    let len = username.chars().count();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !(USERNAME_MIN_CHARS..=USERNAME_MAX_CHARS).contains(&len) || !username.chars().all(allowed) {
        return Err(FieldError::new(
            "username",
            format!(
                "username must be {USERNAME_MIN_CHARS} to {USERNAME_MAX_CHARS} characters of letters, digits, '_', '.' or '-'"
            ),
        ));
    }
    Ok(username.to_ascii_lowercase())
}

/// Validates an optional display name: trimmed, at most 100 characters; an
/// empty or all-blank name is treated as no name.
pub fn validate_name(name: Option<String>) -> Result<Option<String>, FieldError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(FieldError::new(
            "name",
            format!("name must be at most {NAME_MAX_CHARS} characters"),
        ));
    }
    Ok(Some(name.to_owned()))
}

/// Validates a new password: 8 to 128 characters and not one of a small list
/// of very common passwords.
///
/// The password is not trimmed: whitespace is a legitimate password character.
pub fn validate_password(password: &str) -> Result<(), FieldError> {
    let len = password.chars().count();
    if len < PASSWORD_MIN_CHARS {
        return Err(FieldError::new(
            "password",
            format!("password must be at least {PASSWORD_MIN_CHARS} characters"),
        ));
    }
    if len > PASSWORD_MAX_CHARS {
        return Err(FieldError::new(
            "password",
            format!("password must be at most {PASSWORD_MAX_CHARS} characters"),
        ));
    }
    let lowered = password.to_lowercase();
    if COMMON_PASSWORDS.contains(&lowered.as_str()) {
        return Err(FieldError::new("password", "password is too common"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_is_trimmed_and_limited_to_200_characters() {
        assert_eq!(validate_title("  Buy milk ").unwrap(), "Buy milk");
        assert!(validate_title("").is_err());
        assert!(validate_title("   ").is_err());
        assert!(validate_title(&"é".repeat(200)).is_ok());
        let err = validate_title(&"x".repeat(201)).unwrap_err();
        assert_eq!(err.field, "title");
        assert_eq!(err.message, "title must be 1 to 200 characters");
    }

    #[test]
    fn a_description_is_limited_to_1000_characters() {
        assert_eq!(validate_description(None).unwrap(), None);
        assert!(validate_description(Some("ü".repeat(1000))).is_ok());
        assert_eq!(
            validate_description(Some("x".repeat(1001)))
                .unwrap_err()
                .field,
            "description"
        );
    }

    #[test]
    fn an_email_is_normalised_and_needs_a_local_part_and_a_dotted_domain() {
        assert_eq!(
            validate_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@example",
            "alice@@example.com",
            "a@b@example.com",
            "al ice@example.com",
            "alice@.com",
            "alice@example.",
        ] {
            assert_eq!(validate_email(bad).unwrap_err().field, "email", "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(validate_email(&long).is_err());
    }

    #[test]
    fn a_username_is_lowercased_and_restricted_to_a_safe_alphabet() {
        assert_eq!(validate_username("Alice_B.c-1").unwrap(), "alice_b.c-1");
        assert!(validate_username("ab").is_err());
        assert!(validate_username(&"a".repeat(33)).is_err());
        assert!(validate_username(&"a".repeat(32)).is_ok());
        assert!(validate_username("al ice").is_err());
        assert!(validate_username("alice!").is_err());
        assert!(validate_username("ålice").is_err());
    }

    #[test]
    fn a_blank_name_becomes_no_name_and_long_names_are_refused() {
        assert_eq!(validate_name(None).unwrap(), None);
        assert_eq!(validate_name(Some("   ".into())).unwrap(), None);
        assert_eq!(
            validate_name(Some(" Ada Lovelace ".into())).unwrap(),
            Some("Ada Lovelace".into())
        );
        assert!(validate_name(Some("x".repeat(101))).is_err());
    }

    #[test]
    fn short_long_and_common_passwords_are_refused() {
        assert_eq!(
            validate_password("short").unwrap_err().message,
            "password must be at least 8 characters"
        );
        assert!(validate_password(&"x".repeat(129)).is_err());
        assert!(validate_password(&"x".repeat(128)).is_ok());
        for common in ["password", "12345678", "qwertyuiop", "Password123"] {
            assert_eq!(
                validate_password(common).unwrap_err().message,
                "password is too common",
                "{common}"
            );
        }
        assert!(validate_password("correct horse battery staple").is_ok());
    }

    #[test]
    fn field_errors_render_as_one_line() {
        let errors = [
            FieldError::new("title", "too long"),
            FieldError::new("description", "too long"),
        ];
        assert_eq!(describe(&errors), "title: too long; description: too long");
    }

    #[test]
    fn free_form_json_is_bounded_in_depth_and_in_size_as_stored() {
        use serde_json::json;
        assert!(
            validate_json_object("preferences", json!({"theme": "dark", "n": [1, 2.5]})).is_ok()
        );
        assert!(validate_json_object("preferences", json!(["theme"])).is_err());
        let mut deep = json!({});
        for _ in 0..JSON_MAX_DEPTH {
            deep = json!({ "a": deep });
        }
        assert!(validate_json_object("preferences", deep).is_err());
        // 1,000 times `1e18`: about 5 KB in the request, 19 KB once Postgres
        // writes each number out in full.
        let numbers: Vec<f64> = vec![1e18; 1000];
        let text_len = serde_json::to_string(&numbers).unwrap().len();
        assert!(text_len < JSON_MAX_BYTES);
        let refused = validate_json_object("preferences", json!({ "n": numbers })).unwrap_err();
        assert!(refused.message.contains("bytes"), "{refused}");
        let big = "x".repeat(JSON_MAX_BYTES);
        assert!(validate_json_object("preferences", json!({ "s": big })).is_err());
    }
}
