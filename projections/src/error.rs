//! Errors of the projection runtime, split by what the runtime does about them.

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Transient: the batch is retried after a pause.
    #[error("read-model database: {0}")]
    Database(#[from] sqlx::Error),
    /// Transient: the consumer is recreated after a pause.
    #[error("jetstream: {0}")]
    Stream(String),
    /// Permanent: this event can never be applied as it is. The projection
    /// stops and says so (metric, `/ready`, log) rather than skip it.
    #[error("event {message_id} cannot be applied: {reason}")]
    Poison { message_id: String, reason: String },
}

impl ProjectionError {
    pub fn poison(message_id: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Poison {
            message_id: message_id.into(),
            reason: reason.to_string(),
        }
    }
}
