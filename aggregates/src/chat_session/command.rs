//! Commands accepted by the [`ChatSession`](super::ChatSession) aggregate.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::event::{Role, ToolStatus, ToolType, Usage};

/// A request to change a chat session.
///
/// Every command names the caller, because only a session's owner may see or
/// change it, and carries the time it was issued (`at`) so that handling it
/// is deterministic.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatSessionCommand {
    /// Start the conversation, owned by `owner_id` (the caller).
    StartChatSession {
        /// The caller, who becomes the owner.
        owner_id: Uuid,
        /// Optional project the session belongs to.
        project_id: Option<Uuid>,
        /// Optional title; trimmed, at most 200 characters, blank = none.
        title: Option<String>,
        /// Model id; 1 to 100 characters without spaces.
        model: String,
        /// Optional system prompt, at most 20,000 characters, verbatim.
        system_prompt: Option<String>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Change some fields (HTTP `PATCH`). An outer `None` leaves the field
    /// unchanged; `Some(None)` clears a nullable field.
    UpdateChatSession {
        /// The caller; must be the owner.
        actor: Uuid,
        /// New title, if changing (`Some(None)` or blank clears it).
        title: Option<Option<String>>,
        /// New project, if changing (`Some(None)` clears it).
        project_id: Option<Option<Uuid>>,
        /// New model, if changing.
        model: Option<String>,
        /// New system prompt, if changing (`Some(None)` clears it).
        system_prompt: Option<Option<String>>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Soft-delete the session; its history stays in the event store.
    DeleteChatSession {
        /// The caller; must be the owner.
        actor: Uuid,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Append one message to the conversation.
    AddMessage {
        /// The caller; must be the owner (also for assistant replies, which
        /// the server stores on the owner's behalf).
        actor: Uuid,
        /// The message's id, chosen by the caller (the HTTP layer).
        message_id: Uuid,
        /// Who wrote it.
        role: Role,
        /// The text; 1 to 100,000 characters, not blank, verbatim.
        content: String,
        /// The model that wrote it (assistant messages).
        model: Option<String>,
        /// Token usage reported by the upstream (assistant messages).
        usage: Option<Usage>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Record that asking the model failed (upstream error, timeout…).
    RecordExchangeFailure {
        /// The caller; must be the owner.
        actor: Uuid,
        /// What went wrong; cut to 2000 characters, never refused.
        reason: String,
        /// The model that was asked.
        model: String,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
    /// Record one tool execution (MCP or built-in).
    RecordToolExecution {
        /// The caller; must be the owner.
        actor: Uuid,
        /// The execution's id, chosen by the caller. Recording the same id
        /// again (e.g. `running`, then `success`) supersedes the earlier
        /// record.
        execution_id: Uuid,
        /// The tool's name; 1 to 200 characters.
        tool_name: String,
        /// `mcp` or `builtin`.
        tool_type: ToolType,
        /// The tool's input, any JSON value (bounded in depth and size).
        input: serde_json::Value,
        /// The tool's output, if any (same bounds).
        output: Option<serde_json::Value>,
        /// `success`, `error` or `running`.
        status: ToolStatus,
        /// How long it ran, if finished.
        duration_ms: Option<u64>,
        /// When the command was issued.
        at: DateTime<Utc>,
    },
}

impl ChatSessionCommand {
    /// The caller issuing this command.
    pub fn actor(&self) -> Uuid {
        match self {
            Self::StartChatSession {
                owner_id: actor, ..
            }
            | Self::UpdateChatSession { actor, .. }
            | Self::DeleteChatSession { actor, .. }
            | Self::AddMessage { actor, .. }
            | Self::RecordExchangeFailure { actor, .. }
            | Self::RecordToolExecution { actor, .. } => *actor,
        }
    }
}
