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

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use cqrs_es::DomainEvent;
    use serde_json::json;

    use super::*;
    use crate::validation::{FieldError, JSON_MAX_DEPTH};

    const OWNER: Uuid = Uuid::from_u128(0xA);
    const STRANGER: Uuid = Uuid::from_u128(0xB);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn project() -> TestFramework<Project> {
        TestFramework::with(())
    }

    fn created() -> ProjectEvent {
        ProjectEvent::ProjectCreated {
            owner_id: OWNER,
            name: "Chronicle".into(),
            description: Some("the backend".into()),
            settings: json!({"default_model": "claude"}),
            created_at: at(0),
        }
    }

    fn deleted() -> ProjectEvent {
        ProjectEvent::ProjectDeleted { deleted_at: at(5) }
    }

    fn create(
        name: &str,
        description: Option<&str>,
        settings: Option<serde_json::Value>,
    ) -> ProjectCommand {
        ProjectCommand::CreateProject {
            owner_id: OWNER,
            name: name.into(),
            description: description.map(Into::into),
            settings,
            at: at(0),
        }
    }

    fn update(
        actor: Uuid,
        name: &str,
        description: Option<&str>,
        settings: Option<serde_json::Value>,
    ) -> ProjectCommand {
        ProjectCommand::UpdateProject {
            actor,
            name: name.into(),
            description: description.map(Into::into),
            settings,
            at: at(10),
        }
    }

    /// An update that restates [`created`].
    fn update_unchanged(actor: Uuid) -> ProjectCommand {
        update(
            actor,
            "Chronicle",
            Some("the backend"),
            Some(json!({"default_model": "claude"})),
        )
    }

    fn delete(actor: Uuid) -> ProjectCommand {
        ProjectCommand::DeleteProject { actor, at: at(10) }
    }

    fn invalid_fields(error: ProjectError) -> Vec<&'static str> {
        match error {
            ProjectError::Invalid(errors) => errors.iter().map(|e| e.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    // ----- CreateProject -----

    #[test]
    fn creating_a_project_records_it_with_the_caller_as_owner_and_a_trimmed_name() {
        project()
            .given_no_previous_events()
            .when(create(
                "  Chronicle ",
                Some("the backend"),
                Some(json!({"default_model": "claude"})),
            ))
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn a_project_without_description_or_settings_gets_null_and_an_empty_object() {
        project()
            .given_no_previous_events()
            .when(create("Chronicle", None, None))
            .then_expect_events(vec![ProjectEvent::ProjectCreated {
                owner_id: OWNER,
                name: "Chronicle".into(),
                description: None,
                settings: json!({}),
                created_at: at(0),
            }]);
    }

    #[test]
    fn creating_a_project_that_already_exists_is_refused() {
        project()
            .given(vec![created()])
            .when(create("Chronicle", None, None))
            .then_expect_error(ProjectError::AlreadyExists);
        project()
            .given(vec![created(), deleted()])
            .when(create("Chronicle", None, None))
            .then_expect_error(ProjectError::AlreadyExists);
    }

    #[test]
    fn a_name_of_100_characters_is_accepted_and_101_refused() {
        project()
            .given_no_previous_events()
            .when(create(&"n".repeat(100), None, None))
            .inspect_result()
            .unwrap();
        project()
            .given_no_previous_events()
            .when(create(&"n".repeat(101), None, None))
            .then_expect_error(ProjectError::Invalid(vec![FieldError::new(
                "name",
                "name must be 1 to 100 characters",
            )]));
    }

    #[test]
    fn settings_that_are_not_a_json_object_are_refused() {
        for settings in [json!([1]), json!("dark"), json!(null), json!(3)] {
            let error = project()
                .given_no_previous_events()
                .when(create("Chronicle", None, Some(settings)))
                .inspect_result()
                .unwrap_err();
            assert_eq!(invalid_fields(error), ["settings"]);
        }
    }

    #[test]
    fn settings_nested_too_deep_are_refused() {
        let mut deep = json!({});
        for _ in 0..JSON_MAX_DEPTH {
            deep = json!({ "a": deep });
        }
        let error = project()
            .given_no_previous_events()
            .when(create("Chronicle", None, Some(deep)))
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["settings"]);
    }

    #[test]
    fn creating_with_every_field_invalid_reports_all_of_them() {
        let error = project()
            .given_no_previous_events()
            .when(create(" ", Some(&"d".repeat(1001)), Some(json!([]))))
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["name", "description", "settings"]);
    }

    // ----- UpdateProject -----

    #[test]
    fn updating_a_project_records_the_full_new_state() {
        project()
            .given(vec![created()])
            .when(update(
                OWNER,
                "Chronicle 2",
                Some("v2"),
                Some(json!({"x": 1})),
            ))
            .then_expect_events(vec![ProjectEvent::ProjectUpdated {
                name: "Chronicle 2".into(),
                description: Some("v2".into()),
                settings: json!({"x": 1}),
                updated_at: at(10),
            }]);
    }

    #[test]
    fn an_update_without_description_and_settings_clears_them_like_a_put() {
        project()
            .given(vec![created()])
            .when(update(OWNER, "Chronicle", None, None))
            .then_expect_events(vec![ProjectEvent::ProjectUpdated {
                name: "Chronicle".into(),
                description: None,
                settings: json!({}),
                updated_at: at(10),
            }]);
    }

    #[test]
    fn an_update_that_restates_the_current_state_records_nothing() {
        project()
            .given(vec![created()])
            .when(update(
                OWNER,
                "  Chronicle  ",
                Some("the backend"),
                Some(json!({"default_model": "claude"})),
            ))
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_update_with_invalid_fields_reports_all_of_them() {
        let error = project()
            .given(vec![created()])
            .when(update(OWNER, "", Some(&"d".repeat(1001)), Some(json!(1))))
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["name", "description", "settings"]);
    }

    #[test]
    fn updating_a_deleted_project_is_refused() {
        project()
            .given(vec![created(), deleted()])
            .when(update_unchanged(OWNER))
            .then_expect_error(ProjectError::Deleted);
    }

    // ----- DeleteProject -----

    #[test]
    fn deleting_a_project_records_the_deletion() {
        project()
            .given(vec![created()])
            .when(delete(OWNER))
            .then_expect_events(vec![ProjectEvent::ProjectDeleted { deleted_at: at(10) }]);
    }

    #[test]
    fn deleting_a_deleted_project_again_is_refused() {
        project()
            .given(vec![created(), deleted()])
            .when(delete(OWNER))
            .then_expect_error(ProjectError::Deleted);
    }

    // ----- Others' projects -----

    #[test]
    fn another_users_project_answers_not_found_to_every_command() {
        for given in [vec![created()], vec![created(), deleted()]] {
            for command in [update_unchanged(STRANGER), delete(STRANGER)] {
                project()
                    .given(given.clone())
                    .when(command)
                    .then_expect_error(ProjectError::NotFound);
            }
        }
    }

    #[test]
    fn a_project_that_was_never_created_answers_not_found() {
        for command in [update_unchanged(OWNER), delete(OWNER)] {
            project()
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ProjectError::NotFound);
        }
    }

    #[test]
    fn the_ownership_check_comes_before_validation() {
        project()
            .given(vec![created()])
            .when(update(STRANGER, "", None, Some(json!(1))))
            .then_expect_error(ProjectError::NotFound);
    }

    // ----- State and format -----

    #[test]
    fn applying_events_tracks_the_state_the_version_and_the_last_update_time() {
        let mut state = Project::default();
        state.apply(created());
        assert_eq!(
            state,
            Project {
                exists: true,
                owner_id: Some(OWNER),
                name: "Chronicle".into(),
                description: Some("the backend".into()),
                settings: json!({"default_model": "claude"}),
                created_at: Some(at(0)),
                updated_at: Some(at(0)),
                version: 1,
                ..Project::default()
            }
        );
        state.apply(ProjectEvent::ProjectUpdated {
            name: "C".into(),
            description: None,
            settings: json!({}),
            updated_at: at(3),
        });
        assert_eq!(state.name.as_str(), "C");
        assert_eq!(state.description, None);
        assert_eq!(state.settings, json!({}));
        state.apply(deleted());
        assert!(state.is_deleted);
        assert_eq!(state.deleted_at, Some(at(5)));
        assert_eq!(state.version, 3);
        assert_eq!(state.updated_at, Some(at(5)));
        assert_eq!(state.created_at, Some(at(0)));
    }

    #[test]
    fn project_events_are_stored_externally_tagged_with_personal_text_as_plain_strings() {
        let events = [
            created(),
            ProjectEvent::ProjectUpdated {
                name: "x".into(),
                description: None,
                settings: json!({}),
                updated_at: at(1),
            },
            deleted(),
        ];
        for event in events {
            assert_eq!(event.event_version(), "1.0");
            let json = serde_json::to_value(&event).unwrap();
            let object = json.as_object().unwrap();
            assert_eq!(object.len(), 1);
            assert!(object.contains_key(&event.event_type()), "{json}");
            let back: ProjectEvent = serde_json::from_value(json).unwrap();
            assert_eq!(back, event);
        }
        assert_eq!(
            serde_json::to_value(created()).unwrap(),
            json!({"ProjectCreated": {
                "owner_id": OWNER.to_string(),
                "name": "Chronicle",
                "description": "the backend",
                "settings": {"default_model": "claude"},
                "created_at": "2023-11-14T22:13:20Z",
            }})
        );
    }

    #[test]
    fn every_command_reports_its_actor() {
        assert_eq!(create("x", None, None).actor(), OWNER);
        assert_eq!(update_unchanged(STRANGER).actor(), STRANGER);
        assert_eq!(delete(STRANGER).actor(), STRANGER);
    }
}
