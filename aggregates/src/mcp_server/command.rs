//! Commands accepted by the [`McpServer`](super::McpServer) aggregate.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::event::McpTool;
use super::spec::McpServerInput;

/// A request to change an MCP server configuration.
///
/// Every command names the caller, because only the owner may see or change
/// a configuration, and carries the time it was issued (`at`).
#[derive(Debug, Clone, PartialEq)]
pub enum McpServerCommand {
    /// Configure a new server, owned by `owner_id` (the caller).
    Configure {
        owner_id: Uuid,
        /// Secret values already sealed; `"***"` keeps nothing here.
        input: McpServerInput,
        /// Whether it is offered to clients (in the export) at once.
        enabled: bool,
        at: DateTime<Utc>,
    },
    /// Replace the configuration (HTTP `PUT`); `enabled: None` leaves it as is.
    Update {
        actor: Uuid,
        input: McpServerInput,
        enabled: Option<bool>,
        at: DateTime<Utc>,
    },
    /// Offer the server to clients again.
    Enable { actor: Uuid, at: DateTime<Utc> },
    /// Stop offering the server to clients; its configuration stays.
    Disable { actor: Uuid, at: DateTime<Utc> },
    /// Record the tools a discovery found.
    RecordDiscovery {
        actor: Uuid,
        tools: Vec<McpTool>,
        /// The protocol version the server and Chronicle agreed on.
        protocol_version: String,
        server_name: Option<String>,
        server_version: Option<String>,
        at: DateTime<Utc>,
    },
    /// Record that a discovery failed, and why.
    RecordDiscoveryFailure {
        actor: Uuid,
        reason: String,
        at: DateTime<Utc>,
    },
    /// Remove the configuration; its history stays, its name is freed.
    Remove { actor: Uuid, at: DateTime<Utc> },
}

impl McpServerCommand {
    /// The caller issuing this command.
    pub fn actor(&self) -> Uuid {
        match self {
            Self::Configure {
                owner_id: actor, ..
            }
            | Self::Update { actor, .. }
            | Self::Enable { actor, .. }
            | Self::Disable { actor, .. }
            | Self::RecordDiscovery { actor, .. }
            | Self::RecordDiscoveryFailure { actor, .. }
            | Self::Remove { actor, .. } => *actor,
        }
    }
}
