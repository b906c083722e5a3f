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
    /// Permanent for this event: it can never be applied as it is. The
    /// runtime parks it, with every later event of its aggregate, in
    /// `dead_letters`, and goes on with the other aggregates.
    #[error("event {message_id} cannot be applied: {reason}")]
    Poison { message_id: String, reason: String },
    /// Permanent for the projection, whatever the event (a signer that
    /// fails, a read model that disagrees with its own versions): it stops
    /// and says so (metric, `/ready`, log) until fixed and replayed.
    #[error("{what}: {reason}")]
    Halt { what: String, reason: String },
}

impl ProjectionError {
    pub fn poison(message_id: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Poison {
            message_id: message_id.into(),
            reason: reason.to_string(),
        }
    }

    pub fn halt(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Halt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
