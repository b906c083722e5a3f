//! Events recorded by the [`ChatSession`](super::ChatSession) aggregate.
//!
//! Variant and field names are part of the stored format and of the public
//! contract with projections and analytics consumers (who subscribe to e.g.
//! `chronicle.events.ChatSession.<id>.MessageAdded`); do not rename them.
//! Lifecycle events are `ChatSession`-prefixed so they never collide with
//! `AuthSession`'s `SessionStarted`/`SessionRevoked`.
//!
//! What users write (titles, system prompts, message text, tool inputs and
//! outputs) is [`Personal`](crate::personal::Personal), so that sealing it
//! later touches one type only.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::personal::{PersonalJson, PersonalText};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The session's owner.
    User,
    /// The model.
    Assistant,
    /// An instruction to the model.
    System,
}

impl Role {
    /// The wire name: `user`, `assistant` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::System => "system",
        }
    }
}

/// Token usage of one model reply, as the upstream reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the request.
    pub prompt_tokens: u32,
    /// Tokens in the reply.
    pub completion_tokens: u32,
    /// Both together.
    pub total_tokens: u32,
}

/// Where a tool comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolType {
    /// A tool of a configured MCP server.
    Mcp,
    /// A tool built into Chronicle or the client.
    Builtin,
}

impl ToolType {
    /// The wire name: `mcp` or `builtin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mcp => "mcp",
            Self::Builtin => "builtin",
        }
    }
}

/// How a tool execution went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolStatus {
    /// Finished and succeeded.
    Success,
    /// Finished and failed.
    Error,
    /// Not finished yet.
    Running,
}

impl ToolStatus {
    /// The wire name: `success`, `error` or `running`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Running => "running",
        }
    }
}

/// Something that happened to a chat session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChatSessionEvent {
    /// The session was started.
    ChatSessionStarted {
        /// The user who started, and owns, the session.
        owner_id: Uuid,
        /// Project, if any.
        project_id: Option<Uuid>,
        /// Title, if any.
        title: Option<PersonalText>,
        /// Model id.
        model: String,
        /// System prompt, if any.
        system_prompt: Option<PersonalText>,
        /// When the session was started.
        created_at: DateTime<Utc>,
    },
    /// One or more editable fields changed. Carries the full editable state
    /// after the change; recorded only when something changed.
    ChatSessionUpdated {
        /// Title after the change.
        title: Option<PersonalText>,
        /// Project after the change.
        project_id: Option<Uuid>,
        /// Model after the change.
        model: String,
        /// System prompt after the change.
        system_prompt: Option<PersonalText>,
        /// When the change happened.
        updated_at: DateTime<Utc>,
    },
    /// The session was soft-deleted; it accepts no further command.
    ChatSessionDeleted {
        /// When it was deleted.
        deleted_at: DateTime<Utc>,
    },
    /// A message was added to the conversation.
    MessageAdded {
        /// The message's id.
        message_id: Uuid,
        /// Who wrote it.
        role: Role,
        /// The text, verbatim.
        content: PersonalText,
        /// The model that wrote it, if any.
        model: Option<String>,
        /// Token usage, if reported.
        usage: Option<Usage>,
        /// When it was added.
        created_at: DateTime<Utc>,
    },
    /// Asking the model failed.
    ExchangeFailed {
        /// What went wrong (at most 2000 characters).
        reason: String,
        /// The model that was asked.
        model: String,
        /// When it failed.
        failed_at: DateTime<Utc>,
    },
    /// A tool execution was recorded. A later record with the same
    /// `execution_id` supersedes this one.
    ToolExecutionRecorded {
        /// The execution's id.
        execution_id: Uuid,
        /// The tool's name.
        tool_name: String,
        /// `mcp` or `builtin`.
        tool_type: ToolType,
        /// The tool's input.
        input: PersonalJson,
        /// The tool's output, if any.
        output: Option<PersonalJson>,
        /// How it went.
        status: ToolStatus,
        /// How long it ran, if known.
        duration_ms: Option<u64>,
        /// When it was recorded.
        recorded_at: DateTime<Utc>,
    },
}

impl ChatSessionEvent {
    /// The time the event happened, whichever variant it is.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::ChatSessionStarted { created_at: t, .. }
            | Self::ChatSessionUpdated { updated_at: t, .. }
            | Self::ChatSessionDeleted { deleted_at: t }
            | Self::MessageAdded { created_at: t, .. }
            | Self::ExchangeFailed { failed_at: t, .. }
            | Self::ToolExecutionRecorded { recorded_at: t, .. } => *t,
        }
    }
}

impl DomainEvent for ChatSessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ChatSessionStarted { .. } => "ChatSessionStarted",
            Self::ChatSessionUpdated { .. } => "ChatSessionUpdated",
            Self::ChatSessionDeleted { .. } => "ChatSessionDeleted",
            Self::MessageAdded { .. } => "MessageAdded",
            Self::ExchangeFailed { .. } => "ExchangeFailed",
            Self::ToolExecutionRecorded { .. } => "ToolExecutionRecorded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
