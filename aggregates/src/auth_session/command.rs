//! Commands accepted by the [`AuthSession`](super::AuthSession) aggregate.

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSessionCommand {
    /// A login opens a family at generation 1.
    Start { user_id: Uuid, at: DateTime<Utc> },
    /// A refresh token of `generation` was presented.
    Refresh { generation: u32, at: DateTime<Utc> },
    /// Logout, password change elsewhere, deactivation…
    Revoke { reason: String, at: DateTime<Utc> },
}
