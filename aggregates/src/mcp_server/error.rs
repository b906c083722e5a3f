//! Errors returned by the [`McpServer`](super::McpServer) aggregate.

use crate::validation::{describe, FieldError};

/// Why an MCP server command was refused.
#[derive(Debug, PartialEq, Eq, Clone, thiserror::Error)]
pub enum McpServerError {
    /// No such server, someone else's, or removed (HTTP 404): the cases are
    /// deliberately indistinguishable.
    #[error("MCP server not found")]
    NotFound,
    /// `Configure` for an id that is already taken (HTTP 409).
    #[error("MCP server already exists")]
    AlreadyExists,
    /// A `stdio` server is run by clients only; Chronicle never starts it,
    /// so it cannot be discovered (HTTP 422).
    #[error("stdio servers are never executed by Chronicle, so they cannot be discovered")]
    NotDiscoverable,
    /// One or more fields failed validation; lists all of them (HTTP 422).
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}
