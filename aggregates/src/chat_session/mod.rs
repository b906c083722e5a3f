//! The `ChatSession` aggregate: one conversation with a model, owned by one
//! user.
//!
//! The aggregate guards the session (ownership, soft delete, validation)
//! and records what happened in it. It deliberately does **not** keep the
//! conversation: the history needed to build an upstream request is served
//! by the read model, so the state stays a few hundred bytes however long
//! the conversation (a cheap snapshot: a session's event count grows with
//! every message, so it belongs in `snapshot_every` in `src/commands.rs`),
//! and personal text is not copied into aggregate state beyond the
//! session's own settings.
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
                // A JSON `null` output is no output: stored, both read back
                // as `None`, so the event must say `None` to replay equal.
                let output = errors.check(
                    output
                        .filter(|output| !output.is_null())
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

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use cqrs_es::DomainEvent;
    use serde_json::json;

    use super::*;
    use crate::validation::{FieldError, JSON_MAX_BYTES, JSON_MAX_DEPTH};

    const OWNER: Uuid = Uuid::from_u128(0xA);
    const STRANGER: Uuid = Uuid::from_u128(0xB);
    const PROJECT: Uuid = Uuid::from_u128(0xC);
    const OTHER_PROJECT: Uuid = Uuid::from_u128(0xD);
    const MESSAGE: Uuid = Uuid::from_u128(0xE);
    const EXECUTION: Uuid = Uuid::from_u128(0xF);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn session() -> TestFramework<ChatSession> {
        TestFramework::with(())
    }

    fn started() -> ChatSessionEvent {
        ChatSessionEvent::ChatSessionStarted {
            owner_id: OWNER,
            project_id: Some(PROJECT),
            title: Some("Trip plans".into()),
            model: "claude-sonnet".into(),
            system_prompt: Some("Be brief.".into()),
            created_at: at(0),
        }
    }

    fn deleted() -> ChatSessionEvent {
        ChatSessionEvent::ChatSessionDeleted { deleted_at: at(5) }
    }

    fn start(title: Option<&str>, model: &str, system_prompt: Option<&str>) -> ChatSessionCommand {
        ChatSessionCommand::StartChatSession {
            owner_id: OWNER,
            project_id: Some(PROJECT),
            title: title.map(Into::into),
            model: model.into(),
            system_prompt: system_prompt.map(Into::into),
            at: at(0),
        }
    }

    fn empty_update(actor: Uuid) -> ChatSessionCommand {
        ChatSessionCommand::UpdateChatSession {
            actor,
            title: None,
            project_id: None,
            model: None,
            system_prompt: None,
            at: at(10),
        }
    }

    fn add_message(actor: Uuid, content: &str) -> ChatSessionCommand {
        ChatSessionCommand::AddMessage {
            actor,
            message_id: MESSAGE,
            role: Role::User,
            content: content.into(),
            model: None,
            usage: None,
            at: at(10),
        }
    }

    fn record_failure(actor: Uuid, reason: &str, model: &str) -> ChatSessionCommand {
        ChatSessionCommand::RecordExchangeFailure {
            actor,
            reason: reason.into(),
            model: model.into(),
            at: at(10),
        }
    }

    fn record_tool(
        actor: Uuid,
        tool_name: &str,
        input: serde_json::Value,
        output: Option<serde_json::Value>,
    ) -> ChatSessionCommand {
        ChatSessionCommand::RecordToolExecution {
            actor,
            execution_id: EXECUTION,
            tool_name: tool_name.into(),
            tool_type: ToolType::Mcp,
            input,
            output,
            status: ToolStatus::Success,
            duration_ms: Some(42),
            at: at(10),
        }
    }

    /// One valid command of every kind but the start, issued by `actor`.
    fn every_command_but_start(actor: Uuid) -> Vec<ChatSessionCommand> {
        vec![
            empty_update(actor),
            ChatSessionCommand::UpdateChatSession {
                actor,
                title: Some(Some("New".into())),
                project_id: None,
                model: None,
                system_prompt: None,
                at: at(10),
            },
            ChatSessionCommand::DeleteChatSession { actor, at: at(10) },
            add_message(actor, "hello"),
            record_failure(actor, "upstream timed out", "claude-sonnet"),
            record_tool(actor, "read_file", json!({"path": "a"}), None),
        ]
    }

    fn invalid_fields(error: ChatSessionError) -> Vec<&'static str> {
        match error {
            ChatSessionError::Invalid(errors) => errors.iter().map(|e| e.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn refused_fields(
        given: Vec<ChatSessionEvent>,
        command: ChatSessionCommand,
    ) -> Vec<&'static str> {
        invalid_fields(
            session()
                .given(given)
                .when(command)
                .inspect_result()
                .unwrap_err(),
        )
    }

    // ----- StartChatSession -----

    #[test]
    fn starting_a_session_records_it_with_the_caller_as_owner_and_a_trimmed_title() {
        session()
            .given_no_previous_events()
            .when(start(
                Some("  Trip plans "),
                " claude-sonnet ",
                Some("Be brief."),
            ))
            .then_expect_events(vec![started()]);
    }

    #[test]
    fn a_session_needs_only_a_model_and_a_blank_title_or_prompt_is_none() {
        session()
            .given_no_previous_events()
            .when(ChatSessionCommand::StartChatSession {
                owner_id: OWNER,
                project_id: None,
                title: Some("   ".into()),
                model: "gpt".into(),
                system_prompt: Some("\n".into()),
                at: at(0),
            })
            .then_expect_events(vec![ChatSessionEvent::ChatSessionStarted {
                owner_id: OWNER,
                project_id: None,
                title: None,
                model: "gpt".into(),
                system_prompt: None,
                created_at: at(0),
            }]);
    }

    #[test]
    fn the_system_prompt_is_kept_verbatim() {
        let events = session()
            .given_no_previous_events()
            .when(start(None, "gpt", Some("  Line one\n  Line two\n")))
            .inspect_result()
            .unwrap();
        let [ChatSessionEvent::ChatSessionStarted { system_prompt, .. }] = &events[..] else {
            panic!("expected one ChatSessionStarted");
        };
        assert_eq!(
            system_prompt.as_ref().map(PersonalText::as_str),
            Some("  Line one\n  Line two\n")
        );
    }

    #[test]
    fn starting_a_session_that_already_exists_is_refused() {
        for given in [vec![started()], vec![started(), deleted()]] {
            session()
                .given(given)
                .when(start(None, "gpt", None))
                .then_expect_error(ChatSessionError::AlreadyExists);
        }
    }

    #[test]
    fn the_longest_title_and_system_prompt_are_accepted() {
        session()
            .given_no_previous_events()
            .when(start(
                Some(&"t".repeat(200)),
                &"m".repeat(100),
                Some(&"p".repeat(20_000)),
            ))
            .inspect_result()
            .unwrap();
    }

    #[test]
    fn starting_with_every_field_invalid_reports_all_of_them() {
        let fields = refused_fields(
            vec![],
            start(Some(&"t".repeat(201)), "", Some(&"p".repeat(20_001))),
        );
        assert_eq!(fields, ["title", "model", "system_prompt"]);
    }

    #[test]
    fn a_model_id_with_spaces_or_over_100_characters_is_refused() {
        for model in ["two words", &"m".repeat(101)] {
            session()
                .given_no_previous_events()
                .when(start(None, model, None))
                .then_expect_error(ChatSessionError::Invalid(vec![FieldError::new(
                    "model",
                    "model must be 1 to 100 characters without spaces",
                )]));
        }
    }

    // ----- UpdateChatSession -----

    #[test]
    fn updating_one_field_records_the_full_settings_after_the_change() {
        session()
            .given(vec![started()])
            .when(ChatSessionCommand::UpdateChatSession {
                actor: OWNER,
                title: None,
                project_id: None,
                model: Some("gpt".into()),
                system_prompt: None,
                at: at(10),
            })
            .then_expect_events(vec![ChatSessionEvent::ChatSessionUpdated {
                title: Some("Trip plans".into()),
                project_id: Some(PROJECT),
                model: "gpt".into(),
                system_prompt: Some("Be brief.".into()),
                updated_at: at(10),
            }]);
    }

    #[test]
    fn updating_every_field_records_the_new_values() {
        session()
            .given(vec![started()])
            .when(ChatSessionCommand::UpdateChatSession {
                actor: OWNER,
                title: Some(Some(" Holidays ".into())),
                project_id: Some(Some(OTHER_PROJECT)),
                model: Some("gpt".into()),
                system_prompt: Some(Some("Be thorough.".into())),
                at: at(10),
            })
            .then_expect_events(vec![ChatSessionEvent::ChatSessionUpdated {
                title: Some("Holidays".into()),
                project_id: Some(OTHER_PROJECT),
                model: "gpt".into(),
                system_prompt: Some("Be thorough.".into()),
                updated_at: at(10),
            }]);
    }

    #[test]
    fn null_clears_the_title_the_project_and_the_system_prompt() {
        session()
            .given(vec![started()])
            .when(ChatSessionCommand::UpdateChatSession {
                actor: OWNER,
                title: Some(None),
                project_id: Some(None),
                model: None,
                system_prompt: Some(None),
                at: at(10),
            })
            .then_expect_events(vec![ChatSessionEvent::ChatSessionUpdated {
                title: None,
                project_id: None,
                model: "claude-sonnet".into(),
                system_prompt: None,
                updated_at: at(10),
            }]);
    }

    #[test]
    fn a_blank_title_clears_the_title() {
        session()
            .given(vec![started()])
            .when(ChatSessionCommand::UpdateChatSession {
                actor: OWNER,
                title: Some(Some("  ".into())),
                project_id: None,
                model: None,
                system_prompt: None,
                at: at(10),
            })
            .then_expect_events(vec![ChatSessionEvent::ChatSessionUpdated {
                title: None,
                project_id: Some(PROJECT),
                model: "claude-sonnet".into(),
                system_prompt: Some("Be brief.".into()),
                updated_at: at(10),
            }]);
    }

    #[test]
    fn an_empty_update_records_nothing() {
        session()
            .given(vec![started()])
            .when(empty_update(OWNER))
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_update_that_restates_the_current_values_records_nothing() {
        session()
            .given(vec![started()])
            .when(ChatSessionCommand::UpdateChatSession {
                actor: OWNER,
                title: Some(Some(" Trip plans ".into())),
                project_id: Some(Some(PROJECT)),
                model: Some("claude-sonnet".into()),
                system_prompt: Some(Some("Be brief.".into())),
                at: at(10),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_update_reports_every_invalid_field() {
        let fields = refused_fields(
            vec![started()],
            ChatSessionCommand::UpdateChatSession {
                actor: OWNER,
                title: Some(Some("t".repeat(201))),
                project_id: None,
                model: Some(String::new()),
                system_prompt: Some(Some("p".repeat(20_001))),
                at: at(10),
            },
        );
        assert_eq!(fields, ["title", "model", "system_prompt"]);
    }

    #[test]
    fn one_invalid_field_refuses_the_whole_update() {
        let fields = refused_fields(
            vec![started()],
            ChatSessionCommand::UpdateChatSession {
                actor: OWNER,
                title: Some(Some("Fine".into())),
                project_id: Some(None),
                model: Some("bad model".into()),
                system_prompt: None,
                at: at(10),
            },
        );
        assert_eq!(fields, ["model"]);
    }

    // ----- DeleteChatSession -----

    #[test]
    fn deleting_a_session_records_the_deletion() {
        session()
            .given(vec![started()])
            .when(ChatSessionCommand::DeleteChatSession {
                actor: OWNER,
                at: at(10),
            })
            .then_expect_events(vec![ChatSessionEvent::ChatSessionDeleted {
                deleted_at: at(10),
            }]);
    }

    #[test]
    fn a_deleted_session_refuses_every_command_a_second_delete_included() {
        for command in every_command_but_start(OWNER) {
            session()
                .given(vec![started(), deleted()])
                .when(command)
                .then_expect_error(ChatSessionError::Deleted);
        }
    }

    // ----- AddMessage -----

    #[test]
    fn adding_a_user_message_records_it_verbatim() {
        session()
            .given(vec![started()])
            .when(add_message(OWNER, "  Where to in May?\n"))
            .then_expect_events(vec![ChatSessionEvent::MessageAdded {
                message_id: MESSAGE,
                role: Role::User,
                content: "  Where to in May?\n".into(),
                model: None,
                usage: None,
                created_at: at(10),
            }]);
    }

    #[test]
    fn adding_an_assistant_reply_records_its_model_and_usage() {
        let usage = Usage {
            prompt_tokens: 12,
            completion_tokens: 30,
            total_tokens: 42,
        };
        session()
            .given(vec![started()])
            .when(ChatSessionCommand::AddMessage {
                actor: OWNER,
                message_id: MESSAGE,
                role: Role::Assistant,
                content: "Lisbon.".into(),
                model: Some("claude-sonnet".into()),
                usage: Some(usage),
                at: at(10),
            })
            .then_expect_events(vec![ChatSessionEvent::MessageAdded {
                message_id: MESSAGE,
                role: Role::Assistant,
                content: "Lisbon.".into(),
                model: Some("claude-sonnet".into()),
                usage: Some(usage),
                created_at: at(10),
            }]);
    }

    #[test]
    fn a_message_of_100000_characters_is_accepted() {
        session()
            .given(vec![started()])
            .when(add_message(OWNER, &"ü".repeat(100_000)))
            .inspect_result()
            .unwrap();
    }

    #[test]
    fn an_empty_blank_or_oversized_message_is_refused() {
        for content in ["", " \n\t", &"x".repeat(100_001)] {
            assert_eq!(
                refused_fields(vec![started()], add_message(OWNER, content)),
                ["content"]
            );
        }
    }

    #[test]
    fn a_message_with_bad_content_and_a_bad_model_reports_both() {
        let fields = refused_fields(
            vec![started()],
            ChatSessionCommand::AddMessage {
                actor: OWNER,
                message_id: MESSAGE,
                role: Role::Assistant,
                content: String::new(),
                model: Some(String::new()),
                usage: None,
                at: at(10),
            },
        );
        assert_eq!(fields, ["content", "model"]);
    }

    #[test]
    fn messages_are_counted_but_not_kept_in_the_aggregate() {
        let mut state = ChatSession::default();
        state.apply(started());
        for n in 0..3 {
            state.apply(ChatSessionEvent::MessageAdded {
                message_id: Uuid::from_u128(n),
                role: Role::User,
                content: "a long personal message".into(),
                model: None,
                usage: None,
                created_at: at(1 + n as i64),
            });
        }
        assert_eq!(state.message_count, 3);
        assert_eq!(state.version, 4);
        let stored = serde_json::to_string(&state).unwrap();
        assert!(!stored.contains("personal message"), "{stored}");
    }

    // ----- RecordExchangeFailure -----

    #[test]
    fn recording_an_exchange_failure_records_the_reason_and_the_model() {
        session()
            .given(vec![started()])
            .when(record_failure(
                OWNER,
                "upstream answered 529",
                "claude-sonnet",
            ))
            .then_expect_events(vec![ChatSessionEvent::ExchangeFailed {
                reason: "upstream answered 529".into(),
                model: "claude-sonnet".into(),
                failed_at: at(10),
            }]);
    }

    #[test]
    fn a_long_failure_reason_is_cut_to_2000_characters_not_refused() {
        let events = session()
            .given(vec![started()])
            .when(record_failure(OWNER, &"é".repeat(5000), "claude-sonnet"))
            .inspect_result()
            .unwrap();
        let [ChatSessionEvent::ExchangeFailed { reason, .. }] = &events[..] else {
            panic!("expected one ExchangeFailed");
        };
        assert_eq!(reason.chars().count(), 2000);
    }

    #[test]
    fn an_exchange_failure_with_an_invalid_model_is_refused() {
        assert_eq!(
            refused_fields(vec![started()], record_failure(OWNER, "x", "")),
            ["model"]
        );
    }

    // ----- RecordToolExecution -----

    #[test]
    fn recording_a_tool_execution_records_every_field() {
        session()
            .given(vec![started()])
            .when(record_tool(
                OWNER,
                " read_file ",
                json!({"path": "notes.md"}),
                Some(json!("# Notes")),
            ))
            .then_expect_events(vec![ChatSessionEvent::ToolExecutionRecorded {
                execution_id: EXECUTION,
                tool_name: "read_file".into(),
                tool_type: ToolType::Mcp,
                input: json!({"path": "notes.md"}).into(),
                output: Some(json!("# Notes").into()),
                status: ToolStatus::Success,
                duration_ms: Some(42),
                recorded_at: at(10),
            }]);
    }

    #[test]
    fn a_running_builtin_tool_without_output_can_be_recorded() {
        session()
            .given(vec![started()])
            .when(ChatSessionCommand::RecordToolExecution {
                actor: OWNER,
                execution_id: EXECUTION,
                tool_name: "web_search".into(),
                tool_type: ToolType::Builtin,
                input: json!("lisbon weather"),
                output: None,
                status: ToolStatus::Running,
                duration_ms: None,
                at: at(10),
            })
            .then_expect_events(vec![ChatSessionEvent::ToolExecutionRecorded {
                execution_id: EXECUTION,
                tool_name: "web_search".into(),
                tool_type: ToolType::Builtin,
                input: json!("lisbon weather").into(),
                output: None,
                status: ToolStatus::Running,
                duration_ms: None,
                recorded_at: at(10),
            }]);
    }

    #[test]
    fn a_null_tool_output_is_recorded_as_no_output() {
        let events = session()
            .given(vec![started()])
            .when(record_tool(OWNER, "t", json!(null), Some(json!(null))))
            .inspect_result()
            .unwrap();
        let [ChatSessionEvent::ToolExecutionRecorded { output, .. }] = &events[..] else {
            panic!("expected one ToolExecutionRecorded");
        };
        assert_eq!(*output, None);
        let stored = serde_json::to_value(&events[0]).unwrap();
        let back: ChatSessionEvent = serde_json::from_value(stored).unwrap();
        assert_eq!(back, events[0]);
    }

    #[test]
    fn a_tool_execution_with_a_bad_name_and_unbounded_json_reports_every_field() {
        let mut deep = json!(1);
        for _ in 0..=JSON_MAX_DEPTH {
            deep = json!([deep]);
        }
        let big = json!("x".repeat(JSON_MAX_BYTES + 1));
        let fields = refused_fields(vec![started()], record_tool(OWNER, "", deep, Some(big)));
        assert_eq!(fields, ["tool_name", "input", "output"]);
        let fields = refused_fields(
            vec![started()],
            record_tool(OWNER, &"t".repeat(201), json!({}), None),
        );
        assert_eq!(fields, ["tool_name"]);
    }

    // ----- Others' sessions -----

    #[test]
    fn another_users_session_answers_not_found_to_every_command() {
        for given in [vec![started()], vec![started(), deleted()]] {
            for command in every_command_but_start(STRANGER) {
                session()
                    .given(given.clone())
                    .when(command)
                    .then_expect_error(ChatSessionError::NotFound);
            }
        }
    }

    #[test]
    fn a_session_that_was_never_started_answers_not_found_to_every_command() {
        for command in every_command_but_start(OWNER) {
            session()
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ChatSessionError::NotFound);
        }
    }

    #[test]
    fn the_ownership_check_comes_before_validation() {
        session()
            .given(vec![started()])
            .when(add_message(STRANGER, ""))
            .then_expect_error(ChatSessionError::NotFound);
    }

    // ----- State and format -----

    #[test]
    fn applying_events_tracks_the_state_the_version_and_the_last_update_time() {
        let mut state = ChatSession::default();
        state.apply(started());
        assert_eq!(
            state,
            ChatSession {
                exists: true,
                owner_id: Some(OWNER),
                project_id: Some(PROJECT),
                title: Some("Trip plans".into()),
                model: "claude-sonnet".into(),
                system_prompt: Some("Be brief.".into()),
                created_at: Some(at(0)),
                updated_at: Some(at(0)),
                version: 1,
                ..ChatSession::default()
            }
        );
        state.apply(ChatSessionEvent::ChatSessionUpdated {
            title: None,
            project_id: None,
            model: "gpt".into(),
            system_prompt: None,
            updated_at: at(2),
        });
        assert_eq!((state.title.clone(), state.project_id), (None, None));
        assert_eq!(state.model, "gpt");
        state.apply(ChatSessionEvent::ExchangeFailed {
            reason: "x".into(),
            model: "gpt".into(),
            failed_at: at(3),
        });
        state.apply(deleted());
        assert!(state.is_deleted);
        assert_eq!(state.deleted_at, Some(at(5)));
        assert_eq!(state.message_count, 0);
        assert_eq!(state.version, 4);
        assert_eq!(state.updated_at, Some(at(5)));
    }

    fn one_of_each() -> Vec<ChatSessionEvent> {
        vec![
            started(),
            ChatSessionEvent::ChatSessionUpdated {
                title: None,
                project_id: None,
                model: "gpt".into(),
                system_prompt: None,
                updated_at: at(1),
            },
            deleted(),
            ChatSessionEvent::MessageAdded {
                message_id: MESSAGE,
                role: Role::System,
                content: "hi".into(),
                model: None,
                usage: Some(Usage::default()),
                created_at: at(1),
            },
            ChatSessionEvent::ExchangeFailed {
                reason: "r".into(),
                model: "gpt".into(),
                failed_at: at(1),
            },
            ChatSessionEvent::ToolExecutionRecorded {
                execution_id: EXECUTION,
                tool_name: "t".into(),
                tool_type: ToolType::Builtin,
                input: json!(null).into(),
                output: None,
                status: ToolStatus::Error,
                duration_ms: Some(1),
                recorded_at: at(1),
            },
        ]
    }

    #[test]
    fn chat_session_events_are_stored_externally_tagged_under_their_contract_names() {
        let names: Vec<_> = one_of_each().iter().map(DomainEvent::event_type).collect();
        assert_eq!(
            names,
            [
                "ChatSessionStarted",
                "ChatSessionUpdated",
                "ChatSessionDeleted",
                "MessageAdded",
                "ExchangeFailed",
                "ToolExecutionRecorded",
            ]
        );
        for event in one_of_each() {
            assert_eq!(event.event_version(), "1.0");
            let json = serde_json::to_value(&event).unwrap();
            let object = json.as_object().unwrap();
            assert_eq!(object.len(), 1);
            assert!(object.contains_key(&event.event_type()), "{json}");
            let back: ChatSessionEvent = serde_json::from_value(json).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn payloads_use_lowercase_enum_names_and_plain_strings_for_personal_text() {
        let message = serde_json::to_value(ChatSessionEvent::MessageAdded {
            message_id: MESSAGE,
            role: Role::Assistant,
            content: "Lisbon.".into(),
            model: Some("gpt".into()),
            usage: Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            }),
            created_at: at(0),
        })
        .unwrap();
        assert_eq!(
            message,
            json!({"MessageAdded": {
                "message_id": MESSAGE.to_string(),
                "role": "assistant",
                "content": "Lisbon.",
                "model": "gpt",
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                "created_at": "2023-11-14T22:13:20Z",
            }})
        );
        let tool = serde_json::to_value(&one_of_each()[5]).unwrap();
        assert_eq!(tool["ToolExecutionRecorded"]["tool_type"], "builtin");
        assert_eq!(tool["ToolExecutionRecorded"]["status"], "error");
        assert_eq!(tool["ToolExecutionRecorded"]["input"], json!(null));
        let started = serde_json::to_value(started()).unwrap();
        assert_eq!(started["ChatSessionStarted"]["title"], "Trip plans");
        assert_eq!(started["ChatSessionStarted"]["system_prompt"], "Be brief.");
        for (role, name) in [
            (Role::User, "user"),
            (Role::Assistant, "assistant"),
            (Role::System, "system"),
        ] {
            assert_eq!(serde_json::to_value(role).unwrap(), name);
            assert_eq!(role.as_str(), name);
        }
        for (status, name) in [
            (ToolStatus::Success, "success"),
            (ToolStatus::Error, "error"),
            (ToolStatus::Running, "running"),
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), name);
            assert_eq!(status.as_str(), name);
        }
        for (kind, name) in [(ToolType::Mcp, "mcp"), (ToolType::Builtin, "builtin")] {
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
            assert_eq!(kind.as_str(), name);
        }
    }

    #[test]
    fn every_command_reports_its_actor() {
        assert_eq!(start(None, "gpt", None).actor(), OWNER);
        for command in every_command_but_start(STRANGER) {
            assert_eq!(command.actor(), STRANGER);
        }
    }
}
