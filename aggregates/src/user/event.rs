//! Events recorded by the [`User`](super::User) aggregate.
//!
//! Variant and field names are part of the stored format and of the public
//! contract with projections; do not rename them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Something that happened to a user account.
///
/// No variant carries the password or its hash: the hash lives behind
/// [`UserServices`](super::UserServices) and is referenced by `credential_id`,
/// so it can be rotated or erased without rewriting the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// The account was created.
    UserRegistered {
        /// Normalised e-mail address.
        email: String,
        /// Lowercased handle, if one was chosen.
        username: Option<String>,
        /// Display name, if one was given.
        name: Option<String>,
        /// Roles granted at registration (`["user"]`).
        roles: Vec<String>,
        /// Reference to the stored password hash.
        credential_id: Uuid,
        /// When the account was created.
        registered_at: DateTime<Utc>,
    },
    /// The user presented a correct password.
    UserLoggedIn {
        /// When the login happened.
        logged_in_at: DateTime<Utc>,
    },
    /// A wrong password; `consecutive_failures` counts since the last success.
    LoginFailed {
        failed_at: DateTime<Utc>,
        consecutive_failures: u32,
    },
    /// Too many failures in a row: logins are refused until `locked_until`.
    AccountLocked {
        locked_at: DateTime<Utc>,
        locked_until: DateTime<Utc>,
    },
    /// An administrator lifted a lock (and the failure count).
    AccountUnlocked { unlocked_at: DateTime<Utc> },
    /// The password changed; the new hash is stored under `credential_id`.
    PasswordChanged {
        credential_id: Uuid,
        changed_at: DateTime<Utc>,
    },
    /// The same password, hashed again with the current parameters.
    PasswordRehashed {
        credential_id: Uuid,
        rehashed_at: DateTime<Utc>,
    },
    /// The full set of roles after the change (always includes `user`).
    RolesChanged {
        roles: Vec<String>,
        changed_at: DateTime<Utc>,
    },
    /// The profile after the change.
    ProfileUpdated {
        username: Option<String>,
        name: Option<String>,
        preferences: serde_json::Value,
        updated_at: DateTime<Utc>,
    },
    /// A new API key replaced the previous one; only its id is recorded.
    ApiKeyReset {
        key_id: Uuid,
        reset_at: DateTime<Utc>,
    },
    /// A new profile photo, or none.
    ProfilePhotoChanged {
        photo: Option<PhotoInfo>,
        changed_at: DateTime<Utc>,
    },
    /// The account can no longer log in; its history stays.
    UserDeactivated { deactivated_at: DateTime<Utc> },
}

/// What is known of a stored profile photo (the bytes live outside events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoInfo {
    pub content_type: String,
    pub size_bytes: u64,
    pub sha256: String,
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::UserLoggedIn { .. } => "UserLoggedIn",
            Self::LoginFailed { .. } => "LoginFailed",
            Self::AccountLocked { .. } => "AccountLocked",
            Self::AccountUnlocked { .. } => "AccountUnlocked",
            Self::PasswordChanged { .. } => "PasswordChanged",
            Self::PasswordRehashed { .. } => "PasswordRehashed",
            Self::RolesChanged { .. } => "RolesChanged",
            Self::ProfileUpdated { .. } => "ProfileUpdated",
            Self::ApiKeyReset { .. } => "ApiKeyReset",
            Self::ProfilePhotoChanged { .. } => "ProfilePhotoChanged",
            Self::UserDeactivated { .. } => "UserDeactivated",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
