//! Errors returned by the [`Task`](super::Task) aggregate.

use crate::validation::{describe, FieldError};

/// Why a task command was refused.
#[derive(Debug, PartialEq, Eq, Clone, thiserror::Error)]
pub enum TaskError {
    /// No such task, purged, or owned by someone else. The three cases are
    /// deliberately indistinguishable so other users' tasks look absent.
    #[error("task not found")]
    NotFound,
    /// `Create` for an id that is already taken.
    #[error("task already exists")]
    AlreadyExists,
    /// The task is soft-deleted and must be restored before editing.
    #[error("task is deleted")]
    Deleted,
    /// `Restore` for a task that is not deleted.
    #[error("task is not deleted")]
    NotDeleted,
    /// One or more fields failed validation; lists all of them.
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}
