//! Errors returned by the [`User`](super::User) aggregate.

use crate::validation::{describe, FieldError};

/// Why a user command was refused.
#[derive(Debug, PartialEq, Eq, Clone, thiserror::Error)]
pub enum UserError {
    /// An account already exists for this e-mail address.
    #[error("user is already registered")]
    AlreadyRegistered,
    /// No account exists. Not returned by `LogIn`, which answers
    /// [`InvalidCredentials`](Self::InvalidCredentials) instead so that
    /// accounts cannot be enumerated.
    #[error("user is not registered")]
    NotRegistered,
    /// Unknown account or wrong password; deliberately indistinguishable.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Too many failed logins; refused until `until`.
    #[error("account locked until {until}")]
    Locked {
        until: chrono::DateTime<chrono::Utc>,
    },
    #[error("account is deactivated")]
    Deactivated,
    /// One or more fields failed validation; lists all of them.
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// The password service failed; the command may be retried.
    #[error("service failure: {0}")]
    Service(String),
}

/// Failure of a [`UserServices`](super::UserServices) call (storage or
/// hashing unavailable), as opposed to a business-rule refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service failure: {0}")]
pub struct ServiceFailure(pub String);

impl From<ServiceFailure> for UserError {
    fn from(failure: ServiceFailure) -> Self {
        Self::Service(failure.0)
    }
}
