//! Provisioning of the events stream. Tests give every run its own stream name
//! and subject prefix so that parallel tests never see each other's events.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::NatsError;

/// Which stream to publish to and under which subject prefix.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Stream name, `CHRONICLE_EVENTS` in production.
    pub name: String,
    /// Subject prefix, `chronicle.events` in production.
    pub subject_prefix: String,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a republished event.
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "CHRONICLE_EVENTS".into(),
            subject_prefix: "chronicle.events".into(),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl StreamSettings {
    /// Subject filter for every event of one aggregate type.
    pub fn aggregate_filter(&self, aggregate_type: &str) -> String {
        format!("{}.{aggregate_type}.>", self.subject_prefix)
    }
}

/// Creates the stream if it does not exist yet and returns it.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<stream::Stream, NatsError> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: settings.name.clone(),
            subjects: vec![format!("{}.>", settings.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            description: Some("Chronicle domain events, in commit order".into()),
            ..Default::default()
        })
        .await
        .map_err(|err| NatsError::jetstream("create stream", err))
}
