//! Events recorded by the [`Project`](super::Project) aggregate.
//!
//! Variant and field names are part of the stored format and of the public
//! contract with projections and analytics consumers; do not rename them.
//! The name and the description are [`PersonalText`]: users write anything
//! in them, so they will be sealed with the rest of a user's personal data.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::personal::PersonalText;

/// Something that happened to a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProjectEvent {
    /// The project was created.
    ProjectCreated {
        /// The user who created, and owns, the project.
        owner_id: Uuid,
        /// Validated name.
        name: PersonalText,
        /// Description, if any.
        description: Option<PersonalText>,
        /// Settings, a JSON object (`{}` when none were given).
        settings: serde_json::Value,
        /// When the project was created.
        created_at: DateTime<Utc>,
    },
    /// The project was replaced (`PUT`). Carries the full editable state
    /// after the change; recorded only when something changed.
    ProjectUpdated {
        /// Name after the change.
        name: PersonalText,
        /// Description after the change.
        description: Option<PersonalText>,
        /// Settings after the change.
        settings: serde_json::Value,
        /// When the change happened.
        updated_at: DateTime<Utc>,
    },
    /// The project was soft-deleted.
    ProjectDeleted {
        /// When it was deleted.
        deleted_at: DateTime<Utc>,
    },
}

impl ProjectEvent {
    /// The time the event happened, whichever variant it is.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::ProjectCreated { created_at: t, .. }
            | Self::ProjectUpdated { updated_at: t, .. }
            | Self::ProjectDeleted { deleted_at: t } => *t,
        }
    }
}

impl DomainEvent for ProjectEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ProjectCreated { .. } => "ProjectCreated",
            Self::ProjectUpdated { .. } => "ProjectUpdated",
            Self::ProjectDeleted { .. } => "ProjectDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
