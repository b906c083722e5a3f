//! Errors of the NATS side: talking to JetStream and reading the event store.

/// Everything that can go wrong while provisioning streams or relaying events.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("event store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("jetstream {operation}: {message}")]
    JetStream {
        operation: &'static str,
        message: String,
    },
    #[error("stored event {0} is malformed: {1}")]
    MalformedEvent(String, String),
}

impl NatsError {
    pub(crate) fn jetstream(operation: &'static str, err: impl std::fmt::Display) -> Self {
        Self::JetStream {
            operation,
            message: err.to_string(),
        }
    }
}
