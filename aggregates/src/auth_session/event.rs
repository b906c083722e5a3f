//! Events recorded by the [`AuthSession`](super::AuthSession) aggregate.
//! Variant and field names are a stored contract; do not rename them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AuthSessionEvent {
    SessionStarted {
        user_id: Uuid,
        started_at: DateTime<Utc>,
    },
    /// The token of `generation - 1` was spent; `generation` is now valid.
    SessionRefreshed {
        generation: u32,
        refreshed_at: DateTime<Utc>,
    },
    /// A spent token of `generation` was presented again.
    RefreshTokenReused {
        generation: u32,
        detected_at: DateTime<Utc>,
    },
    SessionRevoked {
        reason: String,
        revoked_at: DateTime<Utc>,
    },
}

impl DomainEvent for AuthSessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionStarted { .. } => "SessionStarted",
            Self::SessionRefreshed { .. } => "SessionRefreshed",
            Self::RefreshTokenReused { .. } => "RefreshTokenReused",
            Self::SessionRevoked { .. } => "SessionRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
