//! Personal content in events: the one type that wraps it.
//!
//! What users write (chat messages, session titles and system prompts,
//! project names and descriptions, the inputs and outputs of the tools they
//! run) is personal data. Events are kept forever and cannot be edited, so
//! the way to honour an erasure request is crypto-shredding: seal each
//! user's personal fields with a per-user key and destroy the key on erasure.
//!
//! Every personal field of every event payload is a [`Personal<T>`] (usually
//! [`PersonalText`]), and nothing else is. Sealing then means changing this
//! type's `Serialize`/`Deserialize` impls (plus a new event version and an
//! upcaster for the plaintext ones), not hunting through event enums. Today
//! the serde form is transparent: a `PersonalText` is a JSON string, a
//! [`PersonalJson`] is the JSON value itself. One reader relies on that and
//! must change with it: an exchange's history read (`load_history` in
//! `src/http/chat_sessions/exchange.rs`) takes `MessageAdded.content` out of
//! the stored JSON in SQL, to cut it to the token budget there.
//!
//! `Debug` never prints the content, so a `{:?}` of an event or a command
//! outcome cannot leak it into a log.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Personal content of type `T`; see the module documentation.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Personal<T>(T);

/// Personal free text: a message, a title, a system prompt, a name.
pub type PersonalText = Personal<String>;

/// Personal structured data: a tool's input or output.
pub type PersonalJson = Personal<serde_json::Value>;

impl<T> Personal<T> {
    /// Marks `value` as personal content.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The content, borrowed.
    pub fn get(&self) -> &T {
        &self.0
    }

    /// The content, owned.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl Personal<String> {
    /// The text, borrowed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for PersonalText {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for PersonalText {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl From<serde_json::Value> for PersonalJson {
    fn from(value: serde_json::Value) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Personal(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn personal_text_is_stored_as_a_plain_json_string() {
        let text = PersonalText::from("Hello, Ada");
        assert_eq!(serde_json::to_value(&text).unwrap(), json!("Hello, Ada"));
        let back: PersonalText = serde_json::from_value(json!("Hello, Ada")).unwrap();
        assert_eq!(back, text);
        assert_eq!(back.as_str(), "Hello, Ada");
        assert_eq!(back.into_string(), "Hello, Ada");
    }

    #[test]
    fn personal_json_is_stored_as_the_value_itself() {
        let value = PersonalJson::from(json!({"path": "/home/ada"}));
        assert_eq!(
            serde_json::to_value(&value).unwrap(),
            json!({"path": "/home/ada"})
        );
        assert_eq!(value.get()["path"], "/home/ada");
    }

    #[test]
    fn debug_output_never_shows_personal_content() {
        let text = PersonalText::from("my secret diagnosis");
        let rendered = format!("{text:?} {:?}", Some(&text));
        assert!(!rendered.contains("diagnosis"), "{rendered}");
        assert!(rendered.contains("redacted"));
    }
}
