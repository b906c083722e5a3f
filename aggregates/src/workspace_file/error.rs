//! Errors returned by the [`WorkspaceFile`](super::WorkspaceFile) aggregate.

use crate::validation::{describe, FieldError};

/// Why a file command was refused.
#[derive(Debug, PartialEq, Eq, Clone, thiserror::Error)]
pub enum WorkspaceFileError {
    /// No such file, deleted, or owned by someone else: indistinguishable on
    /// purpose, so other users' files look absent.
    #[error("file not found")]
    NotFound,
    /// `Upload` for an id that is already taken.
    #[error("file already exists")]
    AlreadyExists,
    /// One or more fields failed validation; lists all of them.
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}
