//! Errors returned by the [`NotificationInbox`](super::NotificationInbox) aggregate.

/// Why an inbox command was refused (HTTP 422 for both).
#[derive(Debug, PartialEq, Eq, Clone, thiserror::Error)]
pub enum NotificationInboxError {
    /// A command about some notifications named none.
    #[error("name at least one notification")]
    NoIds,
    /// More ids than one command may carry.
    #[error("at most {max} notifications at once, {given} given")]
    TooManyIds { max: usize, given: usize },
}
