//! Events recorded by the [`Task`](super::Task) aggregate.
//!
//! Variant and field names are part of the stored format and of the public
//! contract with projections; do not rename them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Something that happened to a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskEvent {
    /// The task was created.
    TaskCreated {
        /// The user who created, and owns, the task.
        owner_id: Uuid,
        /// Validated title.
        title: String,
        /// Description, if any.
        description: Option<String>,
        /// Project, if any.
        project_id: Option<Uuid>,
        /// Deadline, if any.
        due_at: Option<DateTime<Utc>>,
        /// When the task was created.
        created_at: DateTime<Utc>,
    },
    /// One or more editable fields changed. Carries the full editable state
    /// after the change, so consumers never need the previous event to
    /// interpret this one.
    TaskUpdated {
        /// Title after the change.
        title: String,
        /// Description after the change.
        description: Option<String>,
        /// Project after the change.
        project_id: Option<Uuid>,
        /// Deadline after the change.
        due_at: Option<DateTime<Utc>>,
        /// When the change happened.
        updated_at: DateTime<Utc>,
    },
    /// The task was marked done.
    TaskCompleted {
        /// When it was marked done.
        completed_at: DateTime<Utc>,
    },
    /// A done task was marked not done.
    TaskReopened {
        /// When it was reopened.
        reopened_at: DateTime<Utc>,
    },
    /// The task was soft-deleted.
    TaskDeleted {
        /// When it was deleted.
        deleted_at: DateTime<Utc>,
    },
    /// A soft-deleted task was brought back.
    TaskRestored {
        /// When it was restored.
        restored_at: DateTime<Utc>,
    },
    /// The task was removed for good.
    TaskPurged {
        /// When it was purged.
        purged_at: DateTime<Utc>,
    },
}

impl TaskEvent {
    /// The time the event happened, whichever variant it is.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::TaskCreated { created_at: t, .. }
            | Self::TaskUpdated { updated_at: t, .. }
            | Self::TaskCompleted { completed_at: t }
            | Self::TaskReopened { reopened_at: t }
            | Self::TaskDeleted { deleted_at: t }
            | Self::TaskRestored { restored_at: t }
            | Self::TaskPurged { purged_at: t } => *t,
        }
    }
}

impl DomainEvent for TaskEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TaskCreated { .. } => "TaskCreated",
            Self::TaskUpdated { .. } => "TaskUpdated",
            Self::TaskCompleted { .. } => "TaskCompleted",
            Self::TaskReopened { .. } => "TaskReopened",
            Self::TaskDeleted { .. } => "TaskDeleted",
            Self::TaskRestored { .. } => "TaskRestored",
            Self::TaskPurged { .. } => "TaskPurged",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
