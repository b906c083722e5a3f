//! Commands accepted by the [`User`](super::User) aggregate.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::PhotoInfo;

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
    /// Lifts a lockout (administrators).
    Unlock {
        at: DateTime<Utc>,
    },
    /// Replaces the password after checking the current one.
    ChangePassword {
        current_password: String,
        new_password: String,
        at: DateTime<Utc>,
    },
    /// Replaces the role set; `user` is always kept.
    SetRoles {
        roles: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Outer `None`: leave unchanged; `Some(None)`: clear.
    UpdateProfile {
        username: Option<Option<String>>,
        name: Option<Option<String>>,
        preferences: Option<serde_json::Value>,
        at: DateTime<Utc>,
    },
    ResetApiKey {
        key_id: Uuid,
        at: DateTime<Utc>,
    },
    SetPhoto {
        photo: Option<PhotoInfo>,
        at: DateTime<Utc>,
    },
    Deactivate {
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
            Self::ChangePassword { at, .. } => f
                .debug_struct("ChangePassword")
                .field("current_password", &"***")
                .field("new_password", &"***")
                .field("at", at)
                .finish(),
            Self::Unlock { at } => f.debug_struct("Unlock").field("at", at).finish(),
            Self::SetRoles { roles, at } => f
                .debug_struct("SetRoles")
                .field("roles", roles)
                .field("at", at)
                .finish(),
            Self::UpdateProfile {
                username,
                name,
                preferences,
                at,
            } => f
                .debug_struct("UpdateProfile")
                .field("username", username)
                .field("name", name)
                .field("preferences", preferences)
                .field("at", at)
                .finish(),
            Self::ResetApiKey { key_id, at } => f
                .debug_struct("ResetApiKey")
                .field("key_id", key_id)
                .field("at", at)
                .finish(),
            Self::SetPhoto { photo, at } => f
                .debug_struct("SetPhoto")
                .field("photo", photo)
                .field("at", at)
                .finish(),
            Self::Deactivate { at } => f.debug_struct("Deactivate").field("at", at).finish(),
        }
    }
}
