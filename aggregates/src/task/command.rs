//! Commands accepted by the [`Task`](super::Task) aggregate.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A request to change a task.
///
/// Every command names the caller (`actor_id`), because only a task's owner
/// may see or change it, and carries the time it was issued (`at`) so that
/// handling it is deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskCommand {
    /// Create the task, owned by `actor_id`.
    Create {
        /// The caller, who becomes the owner.
        actor_id: Uuid,
        /// Title; trimmed, 1 to 200 characters.
        title: String,
        /// Optional description, at most 1000 characters.
        description: Option<String>,
        /// Optional project the task belongs to.
        project_id: Option<Uuid>,
        /// Optional deadline.
        due_at: Option<DateTime<Utc>>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Overwrite every editable field (HTTP `PUT`).
    Replace {
        /// The caller; must be the owner.
        actor_id: Uuid,
        /// New title.
        title: String,
        /// New description (`None` clears it).
        description: Option<String>,
        /// New project (`None` clears it).
        project_id: Option<Uuid>,
        /// New deadline (`None` clears it).
        due_at: Option<DateTime<Utc>>,
        /// New completion state; `None` leaves it as it is.
        completed: Option<bool>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Change some fields (HTTP `PATCH`). An outer `None` leaves the field
    /// unchanged; `Some(None)` clears an optional field.
    Patch {
        /// The caller; must be the owner.
        actor_id: Uuid,
        /// New title, if changing.
        title: Option<String>,
        /// New description, if changing.
        description: Option<Option<String>>,
        /// New project, if changing.
        project_id: Option<Option<Uuid>>,
        /// New deadline, if changing.
        due_at: Option<Option<DateTime<Utc>>>,
        /// New completion state, if changing.
        completed: Option<bool>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Mark the task done or not done.
    SetCompleted {
        /// The caller; must be the owner.
        actor_id: Uuid,
        /// Desired completion state.
        completed: bool,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Soft-delete the task; it can be restored until purged.
    Delete {
        /// The caller; must be the owner.
        actor_id: Uuid,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Undo a soft delete.
    Restore {
        /// The caller; must be the owner.
        actor_id: Uuid,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Remove the task for good; every later command answers `NotFound`.
    Purge {
        /// The caller; must be the owner.
        actor_id: Uuid,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
}

impl TaskCommand {
    /// The caller issuing this command.
    pub fn actor_id(&self) -> Uuid {
        match self {
            Self::Create { actor_id, .. }
            | Self::Replace { actor_id, .. }
            | Self::Patch { actor_id, .. }
            | Self::SetCompleted { actor_id, .. }
            | Self::Delete { actor_id, .. }
            | Self::Restore { actor_id, .. }
            | Self::Purge { actor_id, .. } => *actor_id,
        }
    }
}
