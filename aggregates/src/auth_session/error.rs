//! Errors returned by the [`AuthSession`](super::AuthSession) aggregate.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthSessionError {
    #[error("session already started")]
    AlreadyStarted,
    #[error("no such session")]
    NotFound,
    #[error("session is revoked")]
    Revoked,
    #[error("refresh token generation is unknown")]
    UnknownGeneration,
}
