//! Chronicle on NATS JetStream: the wire format of an event (envelope, subject,
//! headers), provisioning of the `CHRONICLE_EVENTS` stream, and the relay that
//! tails the Postgres event store in commit order and publishes what it finds.
#![forbid(unsafe_code)]

pub mod dead_letter;
pub mod envelope;
pub mod error;
pub mod relay;
pub mod stored_event;
pub mod stream;

pub use envelope::EventEnvelope;
pub use error::NatsError;
pub use relay::{Relay, RelayConfig};
pub use stored_event::{EventCursor, ReadEvent, StoredEvent};
pub use stream::StreamSettings;
