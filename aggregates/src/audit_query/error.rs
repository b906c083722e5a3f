//! Errors returned by the [`AuditQuery`](super::AuditQuery) aggregate.

use crate::validation::{describe, FieldError};

/// Why an audit query could not be recorded.
#[derive(Debug, PartialEq, Eq, Clone, thiserror::Error)]
pub enum AuditQueryError {
    /// This query id was recorded already.
    #[error("audit query already recorded")]
    AlreadyRecorded,
    /// The route or the filters are unacceptable; lists every problem.
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}
