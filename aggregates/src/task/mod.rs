//! The `Task` aggregate: a to-do item owned by one user.
//!
//! Ownership is checked inside the aggregate (every command carries
//! `actor_id`), so no caller can forget it. A task that belongs to someone
//! else answers exactly like a task that does not exist.
//!
//! Edits are change-detected: a command that would leave the task as it is
//! records no event, so retries and no-op `PATCH`es do not grow the log or
//! wake up projections.

mod command;
mod error;
mod event;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::TaskCommand;
pub use error::TaskError;
pub use event::TaskEvent;

use crate::validation::{validate_description, validate_title, FieldError};

/// Current state of a task, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Whether `TaskCreated` has happened.
    pub exists: bool,
    /// The user who owns the task.
    pub owner_id: Option<Uuid>,
    /// Title.
    pub title: String,
    /// Description, if any.
    pub description: Option<String>,
    /// Project, if any.
    pub project_id: Option<Uuid>,
    /// Deadline, if any.
    pub due_at: Option<DateTime<Utc>>,
    /// Whether the task is done.
    pub completed: bool,
    /// Whether the task is soft-deleted.
    pub is_deleted: bool,
    /// When the task was soft-deleted, while it is.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Whether the task was purged; a purged task is gone for every command.
    pub purged: bool,
    /// When the task was created.
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the most recent event.
    pub updated_at: Option<DateTime<Utc>>,
    /// Number of events applied, i.e. the aggregate's sequence number.
    pub version: u64,
}

/// The fields that `Replace` and `Patch` edit, compared as a whole to decide
/// whether a `TaskUpdated` is needed.
#[derive(PartialEq)]
struct Content {
    title: String,
    description: Option<String>,
    project_id: Option<Uuid>,
    due_at: Option<DateTime<Utc>>,
}

impl Task {
    fn content(&self) -> Content {
        Content {
            title: self.title.clone(),
            description: self.description.clone(),
            project_id: self.project_id,
            due_at: self.due_at,
        }
    }

    /// The task as the caller may see it: present, not purged, and theirs.
    fn check_visible_to(&self, actor_id: Uuid) -> Result<(), TaskError> {
        if self.exists && !self.purged && self.owner_id == Some(actor_id) {
            Ok(())
        } else {
            Err(TaskError::NotFound)
        }
    }

    /// Visible and not soft-deleted, as required for editing.
    fn check_editable_by(&self, actor_id: Uuid) -> Result<(), TaskError> {
        self.check_visible_to(actor_id)?;
        if self.is_deleted {
            return Err(TaskError::Deleted);
        }
        Ok(())
    }

    /// Records a `TaskUpdated` if `content` differs from the current content
    /// and a completion event if `completed` differs from the current state;
    /// nothing otherwise.
    async fn write_changes(
        &mut self,
        content: Content,
        completed: Option<bool>,
        at: DateTime<Utc>,
        sink: &EventSink<Self>,
    ) {
        if content != self.content() {
            let event = TaskEvent::TaskUpdated {
                title: content.title,
                description: content.description,
                project_id: content.project_id,
                due_at: content.due_at,
                updated_at: at,
            };
            sink.write(event, self).await;
        }
        if let Some(completed) = completed {
            self.write_completion(completed, at, sink).await;
        }
    }

    async fn write_completion(
        &mut self,
        completed: bool,
        at: DateTime<Utc>,
        sink: &EventSink<Self>,
    ) {
        if completed == self.completed {
            return;
        }
        let event = if completed {
            TaskEvent::TaskCompleted { completed_at: at }
        } else {
            TaskEvent::TaskReopened { reopened_at: at }
        };
        sink.write(event, self).await;
    }
}

/// Combines two field validations, reporting both failures if both fail.
fn both<T, U>(
    first: Result<T, FieldError>,
    second: Result<U, FieldError>,
) -> Result<(T, U), TaskError> {
    match (first, second) {
        (Ok(first), Ok(second)) => Ok((first, second)),
        (first, second) => Err(TaskError::Invalid(
            [first.err(), second.err()].into_iter().flatten().collect(),
        )),
    }
}

impl Aggregate for Task {
    const TYPE: &'static str = "Task";
    type Command = TaskCommand;
    type Event = TaskEvent;
    type Error = TaskError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            TaskCommand::Create {
                actor_id,
                title,
                description,
                project_id,
                due_at,
                at,
            } => {
                // A purged task still "exists" here: its id stays taken so
                // that a new task can never inherit an old event stream.
                if self.exists {
                    return Err(TaskError::AlreadyExists);
                }
                let (title, description) =
                    both(validate_title(&title), validate_description(description))?;
                let event = TaskEvent::TaskCreated {
                    owner_id: actor_id,
                    title,
                    description,
                    project_id,
                    due_at,
                    created_at: at,
                };
                sink.write(event, self).await;
            }
            TaskCommand::Replace {
                actor_id,
                title,
                description,
                project_id,
                due_at,
                completed,
                at,
            } => {
                self.check_editable_by(actor_id)?;
                let (title, description) =
                    both(validate_title(&title), validate_description(description))?;
                let content = Content {
                    title,
                    description,
                    project_id,
                    due_at,
                };
                self.write_changes(content, completed, at, sink).await;
            }
            TaskCommand::Patch {
                actor_id,
                title,
                description,
                project_id,
                due_at,
                completed,
                at,
            } => {
                self.check_editable_by(actor_id)?;
                let (title, description) = both(
                    title.as_deref().map(validate_title).transpose(),
                    description.map(validate_description).transpose(),
                )?;
                let current = self.content();
                let content = Content {
                    title: title.unwrap_or(current.title),
                    description: description.unwrap_or(current.description),
                    project_id: project_id.unwrap_or(current.project_id),
                    due_at: due_at.unwrap_or(current.due_at),
                };
                self.write_changes(content, completed, at, sink).await;
            }
            TaskCommand::SetCompleted {
                actor_id,
                completed,
                at,
            } => {
                self.check_editable_by(actor_id)?;
                self.write_completion(completed, at, sink).await;
            }
            TaskCommand::Delete { actor_id, at } => {
                self.check_visible_to(actor_id)?;
                // Deleting twice is not an error: DELETE is idempotent.
                if !self.is_deleted {
                    sink.write(TaskEvent::TaskDeleted { deleted_at: at }, self)
                        .await;
                }
            }
            TaskCommand::Restore { actor_id, at } => {
                self.check_visible_to(actor_id)?;
                if !self.is_deleted {
                    return Err(TaskError::NotDeleted);
                }
                sink.write(TaskEvent::TaskRestored { restored_at: at }, self)
                    .await;
            }
            TaskCommand::Purge { actor_id, at } => {
                self.check_visible_to(actor_id)?;
                sink.write(TaskEvent::TaskPurged { purged_at: at }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        self.updated_at = Some(event.occurred_at());
        match event {
            TaskEvent::TaskCreated {
                owner_id,
                title,
                description,
                project_id,
                due_at,
                created_at,
            } => {
                self.exists = true;
                self.owner_id = Some(owner_id);
                self.title = title;
                self.description = description;
                self.project_id = project_id;
                self.due_at = due_at;
                self.created_at = Some(created_at);
            }
            TaskEvent::TaskUpdated {
                title,
                description,
                project_id,
                due_at,
                updated_at: _,
            } => {
                self.title = title;
                self.description = description;
                self.project_id = project_id;
                self.due_at = due_at;
            }
            TaskEvent::TaskCompleted { .. } => self.completed = true,
            TaskEvent::TaskReopened { .. } => self.completed = false,
            TaskEvent::TaskDeleted { deleted_at } => {
                self.is_deleted = true;
                self.deleted_at = Some(deleted_at);
            }
            TaskEvent::TaskRestored { .. } => {
                self.is_deleted = false;
                self.deleted_at = None;
            }
            TaskEvent::TaskPurged { .. } => self.purged = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use cqrs_es::DomainEvent;

    use super::*;

    const OWNER: Uuid = Uuid::from_u128(0xA);
    const STRANGER: Uuid = Uuid::from_u128(0xB);
    const PROJECT: Uuid = Uuid::from_u128(0xC);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn task() -> TestFramework<Task> {
        TestFramework::with(())
    }

    fn created() -> TaskEvent {
        TaskEvent::TaskCreated {
            owner_id: OWNER,
            title: "Buy milk".into(),
            description: Some("semi-skimmed".into()),
            project_id: Some(PROJECT),
            due_at: Some(at(86_400)),
            created_at: at(0),
        }
    }

    fn create(title: &str, description: Option<String>) -> TaskCommand {
        TaskCommand::Create {
            actor_id: OWNER,
            title: title.into(),
            description,
            project_id: Some(PROJECT),
            due_at: Some(at(86_400)),
            at: at(0),
        }
    }

    /// A `Replace` that restates the current content of [`created`].
    fn replace_unchanged(actor_id: Uuid) -> TaskCommand {
        TaskCommand::Replace {
            actor_id,
            title: "Buy milk".into(),
            description: Some("semi-skimmed".into()),
            project_id: Some(PROJECT),
            due_at: Some(at(86_400)),
            completed: Some(false),
            at: at(10),
        }
    }

    fn empty_patch(actor_id: Uuid) -> TaskCommand {
        TaskCommand::Patch {
            actor_id,
            title: None,
            description: None,
            project_id: None,
            due_at: None,
            completed: None,
            at: at(10),
        }
    }

    /// Every command except `Create`, issued by `actor_id`.
    fn every_command_but_create(actor_id: Uuid) -> Vec<TaskCommand> {
        vec![
            replace_unchanged(actor_id),
            empty_patch(actor_id),
            TaskCommand::SetCompleted {
                actor_id,
                completed: true,
                at: at(10),
            },
            TaskCommand::Delete {
                actor_id,
                at: at(10),
            },
            TaskCommand::Restore {
                actor_id,
                at: at(10),
            },
            TaskCommand::Purge {
                actor_id,
                at: at(10),
            },
        ]
    }

    fn invalid_fields(error: TaskError) -> Vec<&'static str> {
        match error {
            TaskError::Invalid(errors) => errors.iter().map(|e| e.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    // ----- Create -----

    #[test]
    fn creating_a_task_records_it_with_the_caller_as_owner() {
        task()
            .given_no_previous_events()
            .when(create("  Buy milk ", Some("semi-skimmed".into())))
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn creating_a_task_that_already_exists_is_refused() {
        task()
            .given(vec![created()])
            .when(create("Buy milk", None))
            .then_expect_error(TaskError::AlreadyExists);
    }

    #[test]
    fn creating_a_task_over_a_purged_one_is_refused_because_ids_are_never_reused() {
        task()
            .given(vec![created(), TaskEvent::TaskPurged { purged_at: at(5) }])
            .when(create("Buy milk", None))
            .then_expect_error(TaskError::AlreadyExists);
    }

    #[test]
    fn a_title_of_200_characters_is_accepted() {
        let title = "t".repeat(200);
        let events = task()
            .given_no_previous_events()
            .when(create(&title, None))
            .inspect_result()
            .unwrap();
        assert!(matches!(&events[..], [TaskEvent::TaskCreated { title: t, .. }] if *t == title));
    }

    #[test]
    fn an_empty_title_is_refused() {
        task()
            .given_no_previous_events()
            .when(create("   ", None))
            .then_expect_error(TaskError::Invalid(vec![FieldError::new(
                "title",
                "title must be 1 to 200 characters",
            )]));
    }

    #[test]
    fn a_title_of_201_characters_is_refused() {
        let error = task()
            .given_no_previous_events()
            .when(create(&"t".repeat(201), None))
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["title"]);
    }

    #[test]
    fn a_description_of_1001_characters_is_refused() {
        let error = task()
            .given_no_previous_events()
            .when(create("Buy milk", Some("d".repeat(1001))))
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["description"]);
    }

    #[test]
    fn a_create_reports_title_and_description_errors_together() {
        let error = task()
            .given_no_previous_events()
            .when(create("", Some("d".repeat(1001))))
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["title", "description"]);
    }

    // ----- Visibility -----

    #[test]
    fn every_command_on_a_task_that_does_not_exist_answers_not_found() {
        for command in every_command_but_create(OWNER) {
            task()
                .given_no_previous_events()
                .when(command)
                .then_expect_error(TaskError::NotFound);
        }
    }

    #[test]
    fn another_users_task_looks_absent_to_every_command() {
        for command in every_command_but_create(STRANGER) {
            task()
                .given(vec![created()])
                .when(command)
                .then_expect_error(TaskError::NotFound);
        }
    }

    #[test]
    fn another_users_deleted_task_looks_absent_too() {
        for command in every_command_but_create(STRANGER) {
            task()
                .given(vec![
                    created(),
                    TaskEvent::TaskDeleted { deleted_at: at(5) },
                ])
                .when(command)
                .then_expect_error(TaskError::NotFound);
        }
    }

    // ----- Replace -----

    #[test]
    fn a_replace_without_completed_leaves_the_completion_as_it_is() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskCompleted {
                    completed_at: at(5),
                },
            ])
            .when(TaskCommand::Replace {
                actor_id: OWNER,
                title: "Buy milk".into(),
                description: Some("semi-skimmed".into()),
                project_id: Some(PROJECT),
                due_at: Some(at(86_400)),
                completed: None,
                at: at(10),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn replacing_a_task_records_its_full_new_content() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Replace {
                actor_id: OWNER,
                title: " Buy oat milk ".into(),
                description: None,
                project_id: None,
                due_at: Some(at(172_800)),
                completed: Some(false),
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskUpdated {
                title: "Buy oat milk".into(),
                description: None,
                project_id: None,
                due_at: Some(at(172_800)),
                updated_at: at(10),
            }]);
    }

    #[test]
    fn replacing_a_task_with_its_current_content_records_nothing() {
        task()
            .given(vec![created()])
            .when(replace_unchanged(OWNER))
            .then_expect_events(vec![]);
    }

    #[test]
    fn replacing_only_the_completion_state_records_only_the_completion() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Replace {
                actor_id: OWNER,
                title: "Buy milk".into(),
                description: Some("semi-skimmed".into()),
                project_id: Some(PROJECT),
                due_at: Some(at(86_400)),
                completed: Some(true),
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskCompleted {
                completed_at: at(10),
            }]);
    }

    #[test]
    fn replacing_content_and_reopening_records_both_in_order() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskCompleted {
                    completed_at: at(5),
                },
            ])
            .when(TaskCommand::Replace {
                actor_id: OWNER,
                title: "Buy milk".into(),
                description: Some("whole".into()),
                project_id: Some(PROJECT),
                due_at: Some(at(86_400)),
                completed: Some(false),
                at: at(10),
            })
            .then_expect_events(vec![
                TaskEvent::TaskUpdated {
                    title: "Buy milk".into(),
                    description: Some("whole".into()),
                    project_id: Some(PROJECT),
                    due_at: Some(at(86_400)),
                    updated_at: at(10),
                },
                TaskEvent::TaskReopened {
                    reopened_at: at(10),
                },
            ]);
    }

    #[test]
    fn replacing_a_deleted_task_is_refused() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskDeleted { deleted_at: at(5) },
            ])
            .when(replace_unchanged(OWNER))
            .then_expect_error(TaskError::Deleted);
    }

    #[test]
    fn replacing_with_invalid_fields_reports_all_of_them() {
        let error = task()
            .given(vec![created()])
            .when(TaskCommand::Replace {
                actor_id: OWNER,
                title: "t".repeat(201),
                description: Some("d".repeat(1001)),
                project_id: None,
                due_at: None,
                completed: Some(false),
                at: at(10),
            })
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["title", "description"]);
    }

    // ----- Patch -----

    #[test]
    fn patching_one_field_records_the_full_content_after_the_change() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Patch {
                actor_id: OWNER,
                title: Some("Buy bread".into()),
                description: None,
                project_id: None,
                due_at: None,
                completed: None,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskUpdated {
                title: "Buy bread".into(),
                description: Some("semi-skimmed".into()),
                project_id: Some(PROJECT),
                due_at: Some(at(86_400)),
                updated_at: at(10),
            }]);
    }

    #[test]
    fn patching_can_clear_optional_fields() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Patch {
                actor_id: OWNER,
                title: None,
                description: Some(None),
                project_id: Some(None),
                due_at: Some(None),
                completed: None,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskUpdated {
                title: "Buy milk".into(),
                description: None,
                project_id: None,
                due_at: None,
                updated_at: at(10),
            }]);
    }

    #[test]
    fn an_empty_patch_records_nothing() {
        task()
            .given(vec![created()])
            .when(empty_patch(OWNER))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_patch_that_restates_the_current_values_records_nothing() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Patch {
                actor_id: OWNER,
                title: Some("  Buy milk  ".into()),
                description: Some(Some("semi-skimmed".into())),
                project_id: Some(Some(PROJECT)),
                due_at: Some(Some(at(86_400))),
                completed: Some(false),
                at: at(10),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn patching_only_completed_records_only_the_completion() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Patch {
                actor_id: OWNER,
                title: None,
                description: None,
                project_id: None,
                due_at: None,
                completed: Some(true),
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskCompleted {
                completed_at: at(10),
            }]);
    }

    #[test]
    fn patching_a_deleted_task_is_refused() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskDeleted { deleted_at: at(5) },
            ])
            .when(empty_patch(OWNER))
            .then_expect_error(TaskError::Deleted);
    }

    #[test]
    fn a_patch_reports_every_invalid_field() {
        let error = task()
            .given(vec![created()])
            .when(TaskCommand::Patch {
                actor_id: OWNER,
                title: Some(String::new()),
                description: Some(Some("d".repeat(1001))),
                project_id: None,
                due_at: None,
                completed: None,
                at: at(10),
            })
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["title", "description"]);
    }

    // ----- SetCompleted -----

    #[test]
    fn completing_an_open_task_records_the_completion() {
        task()
            .given(vec![created()])
            .when(TaskCommand::SetCompleted {
                actor_id: OWNER,
                completed: true,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskCompleted {
                completed_at: at(10),
            }]);
    }

    #[test]
    fn reopening_a_done_task_records_the_reopening() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskCompleted {
                    completed_at: at(5),
                },
            ])
            .when(TaskCommand::SetCompleted {
                actor_id: OWNER,
                completed: false,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskReopened {
                reopened_at: at(10),
            }]);
    }

    #[test]
    fn setting_the_completion_state_the_task_already_has_records_nothing() {
        task()
            .given(vec![created()])
            .when(TaskCommand::SetCompleted {
                actor_id: OWNER,
                completed: false,
                at: at(10),
            })
            .then_expect_events(vec![]);
        task()
            .given(vec![
                created(),
                TaskEvent::TaskCompleted {
                    completed_at: at(5),
                },
            ])
            .when(TaskCommand::SetCompleted {
                actor_id: OWNER,
                completed: true,
                at: at(10),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn completing_a_deleted_task_is_refused() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskDeleted { deleted_at: at(5) },
            ])
            .when(TaskCommand::SetCompleted {
                actor_id: OWNER,
                completed: true,
                at: at(10),
            })
            .then_expect_error(TaskError::Deleted);
    }

    // ----- Delete / Restore -----

    #[test]
    fn deleting_a_task_records_the_deletion() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Delete {
                actor_id: OWNER,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskDeleted { deleted_at: at(10) }]);
    }

    #[test]
    fn deleting_a_deleted_task_again_records_nothing() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskDeleted { deleted_at: at(5) },
            ])
            .when(TaskCommand::Delete {
                actor_id: OWNER,
                at: at(10),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn restoring_a_deleted_task_records_the_restore() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskDeleted { deleted_at: at(5) },
            ])
            .when(TaskCommand::Restore {
                actor_id: OWNER,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskRestored {
                restored_at: at(10),
            }]);
    }

    #[test]
    fn restoring_a_task_that_is_not_deleted_is_refused() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Restore {
                actor_id: OWNER,
                at: at(10),
            })
            .then_expect_error(TaskError::NotDeleted);
    }

    #[test]
    fn a_restored_task_can_be_edited_again() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskDeleted { deleted_at: at(5) },
                TaskEvent::TaskRestored { restored_at: at(6) },
            ])
            .when(TaskCommand::SetCompleted {
                actor_id: OWNER,
                completed: true,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskCompleted {
                completed_at: at(10),
            }]);
    }

    // ----- Purge -----

    #[test]
    fn purging_a_task_records_the_purge() {
        task()
            .given(vec![created()])
            .when(TaskCommand::Purge {
                actor_id: OWNER,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskPurged { purged_at: at(10) }]);
    }

    #[test]
    fn purging_a_deleted_task_is_allowed() {
        task()
            .given(vec![
                created(),
                TaskEvent::TaskDeleted { deleted_at: at(5) },
            ])
            .when(TaskCommand::Purge {
                actor_id: OWNER,
                at: at(10),
            })
            .then_expect_events(vec![TaskEvent::TaskPurged { purged_at: at(10) }]);
    }

    #[test]
    fn a_purged_task_answers_not_found_to_every_command_but_create() {
        for command in every_command_but_create(OWNER) {
            task()
                .given(vec![created(), TaskEvent::TaskPurged { purged_at: at(5) }])
                .when(command)
                .then_expect_error(TaskError::NotFound);
        }
    }

    // ----- State and format -----

    #[test]
    fn applying_events_tracks_the_state_the_version_and_the_last_update_time() {
        let mut state = Task::default();
        state.apply(created());
        assert_eq!(
            state,
            Task {
                exists: true,
                owner_id: Some(OWNER),
                title: "Buy milk".into(),
                description: Some("semi-skimmed".into()),
                project_id: Some(PROJECT),
                due_at: Some(at(86_400)),
                created_at: Some(at(0)),
                updated_at: Some(at(0)),
                version: 1,
                ..Task::default()
            }
        );

        state.apply(TaskEvent::TaskCompleted {
            completed_at: at(5),
        });
        assert!(state.completed);
        state.apply(TaskEvent::TaskDeleted { deleted_at: at(6) });
        assert!(state.is_deleted);
        assert_eq!(state.deleted_at, Some(at(6)));
        state.apply(TaskEvent::TaskRestored { restored_at: at(7) });
        assert!(!state.is_deleted);
        assert_eq!(state.deleted_at, None);
        state.apply(TaskEvent::TaskReopened { reopened_at: at(8) });
        assert!(!state.completed);
        state.apply(TaskEvent::TaskPurged { purged_at: at(9) });
        assert!(state.purged);
        assert_eq!(state.version, 6);
        assert_eq!(state.updated_at, Some(at(9)));
        assert_eq!(state.created_at, Some(at(0)));
    }

    #[test]
    fn task_events_are_stored_externally_tagged_under_their_variant_name() {
        let events = [
            created(),
            TaskEvent::TaskUpdated {
                title: "x".into(),
                description: None,
                project_id: None,
                due_at: None,
                updated_at: at(1),
            },
            TaskEvent::TaskCompleted {
                completed_at: at(1),
            },
            TaskEvent::TaskReopened { reopened_at: at(1) },
            TaskEvent::TaskDeleted { deleted_at: at(1) },
            TaskEvent::TaskRestored { restored_at: at(1) },
            TaskEvent::TaskPurged { purged_at: at(1) },
        ];
        for event in events {
            assert_eq!(event.event_version(), "1.0");
            let json = serde_json::to_value(&event).unwrap();
            let object = json.as_object().unwrap();
            assert_eq!(object.len(), 1);
            assert!(object.contains_key(&event.event_type()), "{json}");
            let back: TaskEvent = serde_json::from_value(json).unwrap();
            assert_eq!(back, event);
        }
        let json = serde_json::to_value(created()).unwrap();
        assert_eq!(json["TaskCreated"]["owner_id"], OWNER.to_string());
    }

    #[test]
    fn every_command_reports_its_actor() {
        assert_eq!(create("x", None).actor_id(), OWNER);
        for command in every_command_but_create(STRANGER) {
            assert_eq!(command.actor_id(), STRANGER);
        }
    }
}
