//! Commands accepted by the [`WorkspaceFile`](super::WorkspaceFile) aggregate.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A request about one file of a user's workspace.
///
/// The bytes themselves never pass through the aggregate: the HTTP layer
/// stores them under their SHA-256 first and records here what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceFileCommand {
    /// Record an uploaded file, owned by `actor_id`.
    Upload {
        /// The caller, who becomes the owner.
        actor_id: Uuid,
        /// The name to show (already stripped of directories by
        /// [`display_name`](super::display_name)); 1–255 bytes.
        name: String,
        /// Size in bytes, at least 1.
        size: u64,
        /// Lower-case hex SHA-256 of the bytes: names the stored blob.
        sha256: String,
        /// The type judged from the bytes.
        content_type: String,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Soft-delete the file; it then answers as absent.
    Delete {
        /// The caller; must be the owner.
        actor_id: Uuid,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
}

impl WorkspaceFileCommand {
    /// The caller issuing this command.
    pub fn actor_id(&self) -> Uuid {
        match self {
            Self::Upload { actor_id, .. } | Self::Delete { actor_id, .. } => *actor_id,
        }
    }
}
