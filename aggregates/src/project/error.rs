//! Errors returned by the [`Project`](super::Project) aggregate.

use crate::validation::{describe, FieldError};

/// Why a project command was refused.
#[derive(Debug, PartialEq, Eq, Clone, thiserror::Error)]
pub enum ProjectError {
    /// No such project, or owned by someone else. The two cases are
    /// deliberately indistinguishable so other users' projects look absent
    /// (HTTP 404).
    #[error("project not found")]
    NotFound,
    /// `CreateProject` for an id that is already taken (HTTP 409).
    #[error("project already exists")]
    AlreadyExists,
    /// The project is soft-deleted: no update, no second delete (HTTP 409).
    #[error("project is deleted")]
    Deleted,
    /// One or more fields failed validation; lists all of them (HTTP 422).
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}
