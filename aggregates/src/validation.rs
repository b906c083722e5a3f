//! Input validation shared by the aggregates and the HTTP API.
//!
//! Every helper returns the *normalised* value on success (trimmed, lowercased
//! where that is part of the field's identity) so that what gets stored in an
//! event is exactly what was validated. Lengths are counted in `char`s rather
//! than bytes so that limits mean the same thing for every script.
//!
//! The rules are the ones the OpenAPI document states, so that a client
//! validating against it and the server never disagree: lengths apply to the
//! text as sent (before trimming), "not blank" means holding a character other
//! than [`BLANK`] (the document's pattern `[^ \t\n\r]`), and trimming removes
//! exactly those characters.

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

/// Longest project name, in characters.
pub const PROJECT_NAME_MAX_CHARS: usize = 100;
/// Longest chat-session title, in characters.
pub const SESSION_TITLE_MAX_CHARS: usize = 200;
/// Longest system prompt, in characters.
pub const SYSTEM_PROMPT_MAX_CHARS: usize = 20_000;
/// Longest chat message, in characters. At 4 bytes per character the event
/// still fits a NATS message (1 MiB by default) with room to spare.
pub const MESSAGE_MAX_CHARS: usize = 100_000;
/// Longest model id, in characters.
pub const MODEL_ID_MAX_CHARS: usize = 100;
/// Longest tool name, in characters.
pub const TOOL_NAME_MAX_CHARS: usize = 200;
/// Longest recorded failure reason, in characters; longer ones are cut.
pub const FAILURE_REASON_MAX_CHARS: usize = 2000;

/// Deepest nesting of a free-form JSON document (`preferences`).
pub const JSON_MAX_DEPTH: usize = 16;
/// Largest free-form JSON document, in bytes as Postgres stores it.
pub const JSON_MAX_BYTES: usize = 16 * 1024;

/// Passwords that meet the length rule but appear at the top of every leaked
/// password list, so a credential-stuffing attack would guess them first.
/// Compared case-insensitively.
pub const COMMON_PASSWORDS: &[&str] = &[
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
    validate_json_value(field, value)
}

/// Validates a free-form JSON value of any kind (a tool's input or output):
/// the same bounds as [`validate_json_object`], nested at most
/// [`JSON_MAX_DEPTH`] levels and at most [`JSON_MAX_BYTES`] as stored.
pub fn validate_json_value(
    field: &'static str,
    value: serde_json::Value,
) -> Result<serde_json::Value, FieldError> {
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

/// What "blank" text consists of, and what trimming removes: the JSON
/// whitespace characters (space, tab, line feed, carriage return).
pub const BLANK: [char; 4] = [' ', '\t', '\n', '\r'];

/// Whether `text` holds nothing but [`BLANK`] characters.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| BLANK.contains(&c))
}

/// `text` without leading and trailing [`BLANK`] characters.
pub fn trim_blank(text: &str) -> &str {
    text.trim_matches(&BLANK[..])
}

/// Required text of 1 to `max` characters as sent, not blank; returned trimmed.
fn required_text(field: &'static str, text: &str, max: usize) -> Result<String, FieldError> {
    if is_blank(text) || text.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("{field} must be 1 to {max} characters"),
        ));
    }
    Ok(trim_blank(text).to_owned())
}

/// Optional text of at most `max` characters as sent; blank text is no text.
fn optional_text(
    field: &'static str,
    text: Option<String>,
    max: usize,
) -> Result<Option<String>, FieldError> {
    let Some(text) = text else {
        return Ok(None);
    };
    if text.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok((!is_blank(&text)).then(|| trim_blank(&text).to_owned()))
}

/// Validates a task title: 1 to 200 characters, not blank; stored trimmed.
pub fn validate_title(title: &str) -> Result<String, FieldError> {
    required_text("title", title, TITLE_MAX_CHARS)
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

/// Validates a project name: 1 to 100 characters, not blank; stored trimmed.
pub fn validate_project_name(name: &str) -> Result<String, FieldError> {
    required_text("name", name, PROJECT_NAME_MAX_CHARS)
}

/// Validates an optional chat-session title: at most 200 characters; a
/// blank title is no title; stored trimmed.
pub fn validate_session_title(title: Option<String>) -> Result<Option<String>, FieldError> {
    optional_text("title", title, SESSION_TITLE_MAX_CHARS)
}

/// Validates an optional system prompt: at most 20,000 characters, kept
/// verbatim (layout matters in prompts); a blank prompt is no prompt, since
/// upstreams refuse blank text.
pub fn validate_system_prompt(prompt: Option<String>) -> Result<Option<String>, FieldError> {
    match prompt {
        Some(text) if text.chars().count() > SYSTEM_PROMPT_MAX_CHARS => Err(FieldError::new(
            "system_prompt",
            format!("system_prompt must be at most {SYSTEM_PROMPT_MAX_CHARS} characters"),
        )),
        Some(text) if is_blank(&text) => Ok(None),
        other => Ok(other),
    }
}

/// Validates a chat message: 1 to 100,000 characters, not blank (model
/// upstreams refuse blank text), kept verbatim.
pub fn validate_message_content(content: String) -> Result<String, FieldError> {
    if is_blank(&content) || content.chars().count() > MESSAGE_MAX_CHARS {
        return Err(FieldError::new(
            "content",
            format!("content must be 1 to {MESSAGE_MAX_CHARS} characters and not blank"),
        ));
    }
    Ok(content)
}

/// Validates a model id (e.g. `claude-sonnet`): trimmed, 1 to 100
/// characters, no whitespace or control characters inside.
pub fn validate_model_id(model: &str) -> Result<String, FieldError> {
    let model = model.trim();
    let len = model.chars().count();
    if len == 0
        || len > MODEL_ID_MAX_CHARS
        || model.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(FieldError::new(
            "model",
            format!("model must be 1 to {MODEL_ID_MAX_CHARS} characters without spaces"),
        ));
    }
    Ok(model.to_owned())
}

/// Validates a tool name: 1 to 200 characters, no control characters, not
/// only spaces; stored trimmed.
pub fn validate_tool_name(name: &str) -> Result<String, FieldError> {
    let len = name.chars().count();
    if len == 0
        || len > TOOL_NAME_MAX_CHARS
        || name.chars().any(char::is_control)
        || name.chars().all(|c| c == ' ')
    {
        return Err(FieldError::new(
            "tool_name",
            format!(
                "tool_name must be 1 to {TOOL_NAME_MAX_CHARS} characters, without control characters and not blank"
            ),
        ));
    }
    Ok(name.trim_matches(' ').to_owned())
}

/// Cuts a server-side failure reason to at most 2000 characters. Never
/// refuses: the reason comes from the server (an upstream's error), and
/// losing the record of a failure because its text was long would be worse.
pub fn truncate_reason(reason: &str) -> String {
    let reason = reason.trim();
    match reason.char_indices().nth(FAILURE_REASON_MAX_CHARS) {
        Some((cut, _)) => reason[..cut].to_owned(),
        None => reason.to_owned(),
    }
}

/// Collects field errors so that a command reports every bad field in one
/// answer.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// The value if `result` is valid; otherwise remembers the error and
    /// answers `None`.
    pub fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.0.push(error);
                None
            }
        }
    }

    /// Every error collected, in the order checked.
    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }
}

/// Canonical form of an e-mail address: trimmed and lowercased.
///
/// Used both by [`validate_email`] and to derive the user aggregate id, so
/// the two can never disagree about which addresses are "the same".
pub fn normalize_email(email: &str) -> String {
    trim_blank(email).to_lowercase()
}

/// Validates an e-mail address and returns its canonical form.
///
/// Deliberately shallow: one `@`, a non-empty local part, a dotted domain,
/// no whitespace or control characters inside ([`BLANK`] around it is
/// trimmed, as a phone keyboard adds it). Whether the mailbox exists is not
/// our question.
pub fn validate_email(email: &str) -> Result<String, FieldError> {
    let invalid = || FieldError::new("email", "email must be a valid e-mail address");
    if email.is_empty() || email.chars().count() > EMAIL_MAX_CHARS {
        return Err(FieldError::new(
            "email",
            format!("email must be 1 to {EMAIL_MAX_CHARS} characters"),
        ));
    }
    let email = normalize_email(email);
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
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

/// Validates an optional display name: at most 100 characters; a blank
/// name is no name; stored trimmed.
pub fn validate_name(name: Option<String>) -> Result<Option<String>, FieldError> {
    optional_text("name", name, NAME_MAX_CHARS)
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
    fn a_project_name_is_trimmed_and_limited_to_100_characters() {
        assert_eq!(validate_project_name("  Chronicle ").unwrap(), "Chronicle");
        assert!(validate_project_name(" ").is_err());
        assert!(validate_project_name(&"ж".repeat(100)).is_ok());
        assert_eq!(
            validate_project_name(&"x".repeat(101)).unwrap_err().field,
            "name"
        );
    }

    #[test]
    fn a_blank_session_title_becomes_no_title_and_long_ones_are_refused() {
        assert_eq!(validate_session_title(None).unwrap(), None);
        assert_eq!(validate_session_title(Some("  ".into())).unwrap(), None);
        assert_eq!(
            validate_session_title(Some(" Plans ".into())).unwrap(),
            Some("Plans".into())
        );
        assert!(validate_session_title(Some("é".repeat(200))).is_ok());
        assert_eq!(
            validate_session_title(Some("x".repeat(201)))
                .unwrap_err()
                .field,
            "title"
        );
    }

    #[test]
    fn a_system_prompt_is_kept_verbatim_up_to_20000_characters() {
        assert_eq!(
            validate_system_prompt(Some("  be brief\n".into())).unwrap(),
            Some("  be brief\n".into())
        );
        assert_eq!(validate_system_prompt(Some(" \n".into())).unwrap(), None);
        assert!(validate_system_prompt(Some("p".repeat(20_000))).is_ok());
        assert_eq!(
            validate_system_prompt(Some("p".repeat(20_001)))
                .unwrap_err()
                .field,
            "system_prompt"
        );
    }

    #[test]
    fn a_message_is_1_to_100000_characters_and_not_blank() {
        assert_eq!(validate_message_content(" hi ".into()).unwrap(), " hi ");
        assert!(validate_message_content(String::new()).is_err());
        assert!(validate_message_content(" \n\t".into()).is_err());
        assert!(validate_message_content("ü".repeat(100_000)).is_ok());
        assert_eq!(
            validate_message_content("x".repeat(100_001))
                .unwrap_err()
                .field,
            "content"
        );
    }

    #[test]
    fn a_model_id_is_1_to_100_characters_without_spaces() {
        assert_eq!(
            validate_model_id(" claude-sonnet ").unwrap(),
            "claude-sonnet"
        );
        assert!(validate_model_id("").is_err());
        assert!(validate_model_id("two words").is_err());
        assert!(validate_model_id("bell\u{7}").is_err());
        assert!(validate_model_id(&"m".repeat(100)).is_ok());
        assert_eq!(
            validate_model_id(&"m".repeat(101)).unwrap_err().field,
            "model"
        );
    }

    #[test]
    fn a_tool_name_is_1_to_200_characters() {
        assert_eq!(validate_tool_name(" read_file ").unwrap(), "read_file");
        assert!(validate_tool_name(" ").is_err());
        assert!(validate_tool_name("a\nb").is_err());
        assert!(validate_tool_name(&"t".repeat(200)).is_ok());
        assert_eq!(
            validate_tool_name(&"t".repeat(201)).unwrap_err().field,
            "tool_name"
        );
    }

    #[test]
    fn a_failure_reason_is_cut_to_2000_characters_never_refused() {
        assert_eq!(truncate_reason(" timeout "), "timeout");
        let long = "ñ".repeat(2500);
        let cut = truncate_reason(&long);
        assert_eq!(cut.chars().count(), 2000);
        assert!(long.starts_with(&cut));
        assert_eq!(truncate_reason(&"r".repeat(2000)).len(), 2000);
    }

    #[test]
    fn field_errors_are_collected_in_the_order_checked() {
        let mut errors = FieldErrors::default();
        assert_eq!(errors.check(validate_project_name("ok")), Some("ok".into()));
        assert_eq!(errors.check(validate_model_id("")), None);
        assert_eq!(errors.check(validate_tool_name("")), None);
        let fields: Vec<_> = errors.into_vec().iter().map(|e| e.field).collect();
        assert_eq!(fields, ["model", "tool_name"]);
    }

    #[test]
    fn any_json_value_is_accepted_within_the_same_bounds_as_an_object() {
        use serde_json::json;
        for ok in [json!(null), json!("text"), json!([1, 2]), json!({"a": 1})] {
            assert_eq!(validate_json_value("input", ok.clone()).unwrap(), ok);
        }
        let mut deep = json!(1);
        for _ in 0..=JSON_MAX_DEPTH {
            deep = json!([deep]);
        }
        assert_eq!(
            validate_json_value("input", deep).unwrap_err().field,
            "input"
        );
        let big = json!("x".repeat(JSON_MAX_BYTES));
        assert!(validate_json_value("output", big)
            .unwrap_err()
            .message
            .contains("bytes"));
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
