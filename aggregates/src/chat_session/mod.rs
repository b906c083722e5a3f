//! The `ChatSession` aggregate: one conversation with a model, owned by one
//! user.
//!
//! The aggregate guards the session (ownership, soft delete, validation)
//! and records what happened in it. It deliberately does **not** keep the
//! conversation: the history needed to build an upstream request is served
//! by the read model, so loading a session costs the same after ten
//! messages as after ten thousand, and personal text is not copied into
//! aggregate state beyond the session's own settings.
//!
//! As with [`Task`](crate::task::Task), a session that belongs to someone
//! else answers exactly like one that does not exist, and an update that
//! changes nothing records nothing. A deleted session accepts no command.

mod command;
mod error;
mod event;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::ChatSessionCommand;
pub use error::ChatSessionError;
pub use event::{ChatSessionEvent, Role, ToolStatus, ToolType, Usage};

use crate::personal::{PersonalJson, PersonalText};
use crate::validation::{
    truncate_reason, validate_json_value, validate_message_content, validate_model_id,
    validate_session_title, validate_system_prompt, validate_tool_name, FieldErrors,
};

/// Current state of a chat session, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatSession {
    /// Whether `ChatSessionStarted` has happened.
    pub exists: bool,
    /// The user who owns the session.
    pub owner_id: Option<Uuid>,
    /// Project, if any.
    pub project_id: Option<Uuid>,
    /// Title, if any.
    pub title: Option<PersonalText>,
    /// Model id.
    pub model: String,
    /// System prompt, if any.
    pub system_prompt: Option<PersonalText>,
    /// Whether the session is soft-deleted.
    pub is_deleted: bool,
    /// When the session was soft-deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Number of `MessageAdded` events.
    pub message_count: u64,
    /// When the session was started.
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the most recent event.
    pub updated_at: Option<DateTime<Utc>>,
    /// Number of events applied, i.e. the sequence of the last event.
    pub version: u64,
}

/// The fields that `UpdateChatSession` edits, compared as a whole to decide
/// whether a `ChatSessionUpdated` is needed.
#[derive(PartialEq)]
struct Settings {
    title: Option<PersonalText>,
    project_id: Option<Uuid>,
    model: String,
    system_prompt: Option<PersonalText>,
}

impl ChatSession {
    fn settings(&self) -> Settings {
        Settings {
            title: self.title.clone(),
            project_id: self.project_id,
            model: self.model.clone(),
            system_prompt: self.system_prompt.clone(),
        }
    }

    /// The session as the caller may see it: present and theirs.
    fn check_visible_to(&self, actor: Uuid) -> Result<(), ChatSessionError> {
        if self.exists && self.owner_id == Some(actor) {
            Ok(())
        } else {
            Err(ChatSessionError::NotFound)
        }
    }

    /// Visible and not deleted, as every command but the start requires.
    fn check_usable_by(&self, actor: Uuid) -> Result<(), ChatSessionError> {
        self.check_visible_to(actor)?;
        if self.is_deleted {
            return Err(ChatSessionError::Deleted);
        }
        Ok(())
    }
}

impl Aggregate for ChatSession {
    const TYPE: &'static str = "ChatSession";
    type Command = ChatSessionCommand;
    type Event = ChatSessionEvent;
    type Error = ChatSessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            ChatSessionCommand::StartChatSession {
                owner_id,
                project_id,
                title,
                model,
                system_prompt,
                at,
            } => {
                if self.exists {
                    return Err(ChatSessionError::AlreadyExists);
                }
                let mut errors = FieldErrors::default();
                let title = errors.check(validate_session_title(title));
                let model = errors.check(validate_model_id(&model));
                let system_prompt = errors.check(validate_system_prompt(system_prompt));
                let (Some(title), Some(model), Some(system_prompt)) = (title, model, system_prompt)
                else {
                    return Err(ChatSessionError::Invalid(errors.into_vec()));
                };
                ChatSessionEvent::ChatSessionStarted {
                    owner_id,
                    project_id,
                    title: title.map(PersonalText::from),
                    model,
                    system_prompt: system_prompt.map(PersonalText::from),
                    created_at: at,
                }
            }
            ChatSessionCommand::UpdateChatSession {
                actor,
                title,
                project_id,
                model,
                system_prompt,
                at,
            } => {
                self.check_usable_by(actor)?;
                let mut errors = FieldErrors::default();
                let title = title.map(|title| errors.check(validate_session_title(title)));
                let model = model.map(|model| errors.check(validate_model_id(&model)));
                let system_prompt =
                    system_prompt.map(|prompt| errors.check(validate_system_prompt(prompt)));
                // Each is `None` (unchanged) or `Some(validated)`; a
                // `Some(None)` here means that field failed.
                let (Some(title), Some(model), Some(system_prompt)) = (
                    title.map_or(Some(None), |v| v.map(Some)),
                    model.map_or(Some(None), |v| v.map(Some)),
                    system_prompt.map_or(Some(None), |v| v.map(Some)),
                ) else {
                    return Err(ChatSessionError::Invalid(errors.into_vec()));
                };
                let current = self.settings();
                let next = Settings {
                    title: title.map_or(current.title.clone(), |t| t.map(PersonalText::from)),
                    project_id: project_id.unwrap_or(current.project_id),
                    model: model.unwrap_or_else(|| current.model.clone()),
                    system_prompt: system_prompt
                        .map_or(current.system_prompt.clone(), |p| p.map(PersonalText::from)),
                };
                if next == current {
                    return Ok(());
                }
                ChatSessionEvent::ChatSessionUpdated {
                    title: next.title,
                    project_id: next.project_id,
                    model: next.model,
                    system_prompt: next.system_prompt,
                    updated_at: at,
                }
            }
            ChatSessionCommand::DeleteChatSession { actor, at } => {
                self.check_usable_by(actor)?;
                ChatSessionEvent::ChatSessionDeleted { deleted_at: at }
            }
            ChatSessionCommand::AddMessage {
                actor,
                message_id,
                role,
                content,
                model,
                usage,
                at,
            } => {
                self.check_usable_by(actor)?;
                let mut errors = FieldErrors::default();
                let content = errors.check(validate_message_content(content));
                let model = errors.check(model.as_deref().map(validate_model_id).transpose());
                let (Some(content), Some(model)) = (content, model) else {
                    return Err(ChatSessionError::Invalid(errors.into_vec()));
                };
                ChatSessionEvent::MessageAdded {
                    message_id,
                    role,
                    content: content.into(),
                    model,
                    usage,
                    created_at: at,
                }
            }
            ChatSessionCommand::RecordExchangeFailure {
                actor,
                reason,
                model,
                at,
            } => {
                self.check_usable_by(actor)?;
                let model = validate_model_id(&model)
                    .map_err(|error| ChatSessionError::Invalid(vec![error]))?;
                ChatSessionEvent::ExchangeFailed {
                    reason: truncate_reason(&reason),
                    model,
                    failed_at: at,
                }
            }
            ChatSessionCommand::RecordToolExecution {
                actor,
                execution_id,
                tool_name,
                tool_type,
                input,
                output,
                status,
                duration_ms,
                at,
            } => {
                self.check_usable_by(actor)?;
                let mut errors = FieldErrors::default();
                let tool_name = errors.check(validate_tool_name(&tool_name));
                let input = errors.check(validate_json_value("input", input));
                let output = errors.check(
                    output
                        .map(|output| validate_json_value("output", output))
                        .transpose(),
                );
                let (Some(tool_name), Some(input), Some(output)) = (tool_name, input, output)
                else {
                    return Err(ChatSessionError::Invalid(errors.into_vec()));
                };
                ChatSessionEvent::ToolExecutionRecorded {
                    execution_id,
                    tool_name,
                    tool_type,
                    input: PersonalJson::from(input),
                    output: output.map(PersonalJson::from),
                    status,
                    duration_ms,
                    recorded_at: at,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        self.updated_at = Some(event.occurred_at());
        match event {
            ChatSessionEvent::ChatSessionStarted {
                owner_id,
                project_id,
                title,
                model,
                system_prompt,
                created_at,
            } => {
                self.exists = true;
                self.owner_id = Some(owner_id);
                self.project_id = project_id;
                self.title = title;
                self.model = model;
                self.system_prompt = system_prompt;
                self.created_at = Some(created_at);
            }
            ChatSessionEvent::ChatSessionUpdated {
                title,
                project_id,
                model,
                system_prompt,
                updated_at: _,
            } => {
                self.title = title;
                self.project_id = project_id;
                self.model = model;
                self.system_prompt = system_prompt;
            }
            ChatSessionEvent::ChatSessionDeleted { deleted_at } => {
                self.is_deleted = true;
                self.deleted_at = Some(deleted_at);
            }
            ChatSessionEvent::MessageAdded { .. } => self.message_count += 1,
            ChatSessionEvent::ExchangeFailed { .. }
            | ChatSessionEvent::ToolExecutionRecorded { .. } => {}
        }
    }
}
