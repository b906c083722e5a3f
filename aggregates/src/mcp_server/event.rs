//! Events recorded by the [`McpServer`](super::McpServer) aggregate.
//!
//! Variant and field names are part of the stored format and of the public
//! contract with projections and analytics consumers; do not rename them.
//! Values of `env` and `headers` are sealed before they reach a command, so
//! no event ever holds one in the clear.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::spec::McpServerConfig;

/// A tool an MCP server offers, as its `tools/list` described it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpTool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object for the tool's arguments.
    pub input_schema: serde_json::Value,
}

/// Something that happened to an MCP server configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum McpServerEvent {
    /// The server was configured.
    McpServerConfigured {
        /// The user who configured, and owns, it.
        owner_id: Uuid,
        config: McpServerConfig,
        /// Whether clients are offered it.
        enabled: bool,
        configured_at: DateTime<Utc>,
    },
    /// The configuration was replaced (`PUT`); carries all of it, and is
    /// recorded only when something changed.
    McpServerUpdated {
        config: McpServerConfig,
        updated_at: DateTime<Utc>,
    },
    /// Clients are offered the server again.
    McpServerEnabled { enabled_at: DateTime<Utc> },
    /// Clients are no longer offered the server.
    McpServerDisabled { disabled_at: DateTime<Utc> },
    /// A discovery listed the server's tools; replaces any earlier list.
    McpToolsDiscovered {
        tools: Vec<McpTool>,
        protocol_version: String,
        server_name: Option<String>,
        server_version: Option<String>,
        discovered_at: DateTime<Utc>,
    },
    /// A discovery failed; the last tool list stays.
    McpDiscoveryFailed {
        /// Why, as the API answered it (no secret in it).
        reason: String,
        failed_at: DateTime<Utc>,
    },
    /// The configuration was removed; its name is free again.
    McpServerRemoved { removed_at: DateTime<Utc> },
}

impl McpServerEvent {
    /// The time the event happened, whichever variant it is.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::McpServerConfigured {
                configured_at: t, ..
            }
            | Self::McpServerUpdated { updated_at: t, .. }
            | Self::McpServerEnabled { enabled_at: t }
            | Self::McpServerDisabled { disabled_at: t }
            | Self::McpToolsDiscovered {
                discovered_at: t, ..
            }
            | Self::McpDiscoveryFailed { failed_at: t, .. }
            | Self::McpServerRemoved { removed_at: t } => *t,
        }
    }
}

impl DomainEvent for McpServerEvent {
    fn event_type(&self) -> String {
        match self {
            Self::McpServerConfigured { .. } => "McpServerConfigured",
            Self::McpServerUpdated { .. } => "McpServerUpdated",
            Self::McpServerEnabled { .. } => "McpServerEnabled",
            Self::McpServerDisabled { .. } => "McpServerDisabled",
            Self::McpToolsDiscovered { .. } => "McpToolsDiscovered",
            Self::McpDiscoveryFailed { .. } => "McpDiscoveryFailed",
            Self::McpServerRemoved { .. } => "McpServerRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
