//! Commands accepted by the [`User`](super::User) aggregate.

use std::fmt;

use chrono::{DateTime, Utc};

/// A request to change a user account.
///
/// Every command carries the time it was issued (`at`) so that handling it is
/// deterministic and replayable in tests.
#[derive(Clone, PartialEq, Eq)]
pub enum UserCommand {
    /// Create the account. The aggregate id must be
    /// [`user_id_for_email`](super::user_id_for_email) of `email`.
    Register {
        /// E-mail address; normalised (trimmed, lowercased) before storing.
        email: String,
        /// Optional public handle; stored lowercased.
        username: Option<String>,
        /// Optional display name.
        name: Option<String>,
        /// Plaintext password; handed to the password service, never stored in an event.
        password: String,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Check a password and record a successful login.
    LogIn {
        /// Plaintext password to check.
        password: String,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
}

/// Written by hand so that a command ending up in a log or a panic message
/// never reveals the password.
impl fmt::Debug for UserCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Register {
                email,
                username,
                name,
                password: _,
                at,
            } => f
                .debug_struct("Register")
                .field("email", email)
                .field("username", username)
                .field("name", name)
                .field("password", &"***")
                .field("at", at)
                .finish(),
            Self::LogIn { password: _, at } => f
                .debug_struct("LogIn")
                .field("password", &"***")
                .field("at", at)
                .finish(),
        }
    }
}
