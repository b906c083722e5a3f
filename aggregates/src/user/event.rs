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
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::UserLoggedIn { .. } => "UserLoggedIn",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
