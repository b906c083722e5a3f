//! The compliance audit trail from the server's side: signing checkpoints
//! with the server key, verifying the chain and the signatures, the event
//! history and its filters, streamed exports, time travel, and recording who
//! queried what. The trail itself is written by the `audit` projection
//! (`chronicle_projections::audit`); `docs/audit.md` is the auditor's guide.

pub mod checkpointer;
pub mod cli;
pub mod export;
pub mod filters;
pub mod history;
pub mod record;
pub mod signer;
pub mod stream;
pub mod time_travel;
pub mod verify;

use std::time::Duration;

pub use filters::Filters;
pub use signer::ServerSigner;
pub use verify::{verify, VerifyReport, VerifyingKeys};

/// When the chain head is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// A checkpoint at every seq that is a multiple of this
    /// (`CHRONICLE_AUDIT_CHECKPOINT_EVERY`, default 1000).
    pub checkpoint_every: u64,
    /// And the head, if it moved, at least this often
    /// (`CHRONICLE_AUDIT_CHECKPOINT_INTERVAL_SECS`, default 60).
    pub checkpoint_interval: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}
