//! Commands accepted by the [`Project`](super::Project) aggregate.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A request to change a project.
///
/// Every command names the caller, because only a project's owner may see or
/// change it, and carries the time it was issued (`at`) so that handling it
/// is deterministic.
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectCommand {
    /// Create the project, owned by `owner_id` (the caller).
    CreateProject {
        /// The caller, who becomes the owner.
        owner_id: Uuid,
        /// Name; trimmed, 1 to 100 characters.
        name: String,
        /// Optional description, at most 1000 characters, kept verbatim.
        description: Option<String>,
        /// Free-form settings: a JSON object (bounded in depth and size);
        /// `None` means `{}`.
        settings: Option<serde_json::Value>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Overwrite every editable field (HTTP `PUT`): an absent description
    /// becomes null, absent settings become `{}`.
    UpdateProject {
        /// The caller; must be the owner.
        actor: Uuid,
        /// New name.
        name: String,
        /// New description (`None` clears it).
        description: Option<String>,
        /// New settings (`None` resets them to `{}`).
        settings: Option<serde_json::Value>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Soft-delete the project; its history stays.
    DeleteProject {
        /// The caller; must be the owner.
        actor: Uuid,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
}

impl ProjectCommand {
    /// The caller issuing this command.
    pub fn actor(&self) -> Uuid {
        match self {
            Self::CreateProject {
                owner_id: actor, ..
            }
            | Self::UpdateProject { actor, .. }
            | Self::DeleteProject { actor, .. } => *actor,
        }
    }
}
