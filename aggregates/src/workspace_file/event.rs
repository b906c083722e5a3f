//! Events recorded by the [`WorkspaceFile`](super::WorkspaceFile) aggregate.
//!
//! Variant and field names are part of the stored format and of the public
//! contract with projections; do not rename them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Something that happened to a file of a user's workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkspaceFileEvent {
    /// A file was uploaded.
    FileUploaded {
        /// The user who uploaded, and owns, the file.
        owner_id: Uuid,
        /// Display name (no directories, no control characters).
        name: String,
        /// Size in bytes.
        size: u64,
        /// Lower-case hex SHA-256 of the bytes.
        sha256: String,
        /// Media type judged from the bytes.
        content_type: String,
        /// When the file was uploaded.
        uploaded_at: DateTime<Utc>,
    },
    /// The file was soft-deleted.
    FileDeleted {
        /// When it was deleted.
        deleted_at: DateTime<Utc>,
    },
}

impl WorkspaceFileEvent {
    /// The time the event happened, whichever variant it is.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::FileUploaded { uploaded_at: t, .. } | Self::FileDeleted { deleted_at: t } => *t,
        }
    }
}

impl DomainEvent for WorkspaceFileEvent {
    fn event_type(&self) -> String {
        match self {
            Self::FileUploaded { .. } => "FileUploaded",
            Self::FileDeleted { .. } => "FileDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
