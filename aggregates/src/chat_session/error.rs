//! Errors returned by the [`ChatSession`](super::ChatSession) aggregate.

use crate::validation::{describe, FieldError};

/// Why a chat-session command was refused.
#[derive(Debug, PartialEq, Eq, Clone, thiserror::Error)]
pub enum ChatSessionError {
    /// No such session, or owned by someone else. The two cases are
    /// deliberately indistinguishable so other users' sessions look absent
    /// (HTTP 404).
    #[error("chat session not found")]
    NotFound,
    /// `StartChatSession` for an id that is already taken (HTTP 409).
    #[error("chat session already exists")]
    AlreadyExists,
    /// The session is soft-deleted and accepts no further command
    /// (HTTP 409).
    #[error("chat session is deleted")]
    Deleted,
    /// One or more fields failed validation; lists all of them (HTTP 422).
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}
