//! The `Project` aggregate: a named group of chat sessions (and tasks) owned
//! by one user.
//!
//! Same rules as [`Task`](crate::task::Task): ownership is checked inside
//! the aggregate, so a project that belongs to someone else answers exactly
//! like one that does not exist; an update that changes nothing records
//! nothing. Unlike a task, a deleted project cannot be restored, so it
//! refuses every further command, a second delete included.

mod command;
mod error;
mod event;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::ProjectCommand;
pub use error::ProjectError;
pub use event::ProjectEvent;

use crate::personal::PersonalText;
use crate::validation::{
    validate_description, validate_json_object, validate_project_name, FieldErrors,
};

/// Current state of a project, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// Whether `ProjectCreated` has happened.
    pub exists: bool,
    /// The user who owns the project.
    pub owner_id: Option<Uuid>,
    /// Name.
    pub name: PersonalText,
    /// Description, if any.
    pub description: Option<PersonalText>,
    /// Settings, a JSON object (`null` only before creation).
    pub settings: serde_json::Value,
    /// Whether the project is soft-deleted.
    pub is_deleted: bool,
    /// When the project was soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the project was created.
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the most recent event.
    pub updated_at: Option<DateTime<Utc>>,
    /// Number of events applied, i.e. the aggregate's sequence number.
    pub version: u64,
}

/// The editable fields, validated.
#[derive(PartialEq)]
struct Content {
    name: PersonalText,
    description: Option<PersonalText>,
    settings: serde_json::Value,
}

/// Validates every editable field, reporting all bad ones together.
fn validate(
    name: &str,
    description: Option<String>,
    settings: Option<serde_json::Value>,
) -> Result<Content, ProjectError> {
    let mut errors = FieldErrors::default();
    let name = errors.check(validate_project_name(name));
    let description = errors.check(validate_description(description));
    let settings = errors.check(match settings {
        Some(settings) => validate_json_object("settings", settings),
        None => Ok(serde_json::Value::Object(serde_json::Map::new())),
    });
    let (Some(name), Some(description), Some(settings)) = (name, description, settings) else {
        return Err(ProjectError::Invalid(errors.into_vec()));
    };
    Ok(Content {
        name: name.into(),
        description: description.map(PersonalText::from),
        settings,
    })
}

impl Project {
    /// The project as the caller may see it: present and theirs.
    fn check_visible_to(&self, actor: Uuid) -> Result<(), ProjectError> {
        if self.exists && self.owner_id == Some(actor) {
            Ok(())
        } else {
            Err(ProjectError::NotFound)
        }
    }

    /// Visible and not deleted, as every command but creation requires.
    fn check_editable_by(&self, actor: Uuid) -> Result<(), ProjectError> {
        self.check_visible_to(actor)?;
        if self.is_deleted {
            return Err(ProjectError::Deleted);
        }
        Ok(())
    }

    fn is_unchanged(&self, content: &Content) -> bool {
        self.name == content.name
            && self.description == content.description
            && self.settings == content.settings
    }
}

impl Aggregate for Project {
    const TYPE: &'static str = "Project";
    type Command = ProjectCommand;
    type Event = ProjectEvent;
    type Error = ProjectError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ProjectCommand::CreateProject {
                owner_id,
                name,
                description,
                settings,
                at,
            } => {
                if self.exists {
                    return Err(ProjectError::AlreadyExists);
                }
                let content = validate(&name, description, settings)?;
                let event = ProjectEvent::ProjectCreated {
                    owner_id,
                    name: content.name,
                    description: content.description,
                    settings: content.settings,
                    created_at: at,
                };
                sink.write(event, self).await;
            }
            ProjectCommand::UpdateProject {
                actor,
                name,
                description,
                settings,
                at,
            } => {
                self.check_editable_by(actor)?;
                let content = validate(&name, description, settings)?;
                if !self.is_unchanged(&content) {
                    let event = ProjectEvent::ProjectUpdated {
                        name: content.name,
                        description: content.description,
                        settings: content.settings,
                        updated_at: at,
                    };
                    sink.write(event, self).await;
                }
            }
            ProjectCommand::DeleteProject { actor, at } => {
                self.check_editable_by(actor)?;
                sink.write(ProjectEvent::ProjectDeleted { deleted_at: at }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        self.updated_at = Some(event.occurred_at());
        match event {
            ProjectEvent::ProjectCreated {
                owner_id,
                name,
                description,
                settings,
                created_at,
            } => {
                self.exists = true;
                self.owner_id = Some(owner_id);
                self.name = name;
                self.description = description;
                self.settings = settings;
                self.created_at = Some(created_at);
            }
            ProjectEvent::ProjectUpdated {
                name,
                description,
                settings,
                updated_at: _,
            } => {
                self.name = name;
                self.description = description;
                self.settings = settings;
            }
            ProjectEvent::ProjectDeleted { deleted_at } => {
                self.is_deleted = true;
                self.deleted_at = Some(deleted_at);
            }
        }
    }
}
