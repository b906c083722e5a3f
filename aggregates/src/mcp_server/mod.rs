//! The `McpServer` aggregate: one MCP (Model Context Protocol) server a user
//! lets their assistant use, the tools it was last seen to offer, and
//! whether clients are offered it.
//!
//! Same rules as [`Task`](crate::task::Task): ownership is checked inside
//! the aggregate, so someone else's server answers exactly like a missing
//! one; a command that changes nothing records nothing. A removed server
//! refuses every further command. Values of `env` and `headers` arrive
//! sealed ([`spec::SEALED_PREFIX`]) and stay opaque here. Names are unique
//! per owner; that is enforced where the events are stored (the
//! `mcp_server_names` table of migration 0510), because no single
//! aggregate sees its owner's other servers.

mod command;
mod error;
mod event;
pub mod spec;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::McpServerCommand;
pub use error::McpServerError;
pub use event::{McpServerEvent, McpTool};
pub use spec::{McpServerConfig, McpServerInput, McpTransport, SealedSecret, SecretInput};

use crate::validation::{validate_json_object, validate_tool_name, FieldError};

/// Most tools one discovery may record.
pub const TOOLS_MAX: usize = 1000;
/// Most bytes a recorded tool list may take as JSON: the event must stay far
/// below a NATS message's size limit (1 MiB by default).
pub const TOOLS_MAX_BYTES: usize = 512 * 1024;

/// Current state of an MCP server configuration, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct McpServer {
    /// Whether `McpServerConfigured` has happened.
    pub exists: bool,
    pub owner_id: Option<Uuid>,
    /// `None` only before configuration.
    pub config: Option<McpServerConfig>,
    pub enabled: bool,
    pub is_removed: bool,
    /// The tools of the last successful discovery.
    pub tools: Vec<McpTool>,
    /// How the last discovery went, if there was one.
    pub last_discovery: Option<LastDiscovery>,
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the most recent event.
    pub updated_at: Option<DateTime<Utc>>,
    /// Number of events applied, i.e. the aggregate's sequence number.
    pub version: u64,
}

/// The outcome of the most recent discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastDiscovery {
    pub succeeded: bool,
    pub at: DateTime<Utc>,
    /// Why it failed (failures only).
    pub error: Option<String>,
    /// What the server said of itself (successes only).
    pub protocol_version: Option<String>,
    pub server_name: Option<String>,
    pub server_version: Option<String>,
}

/// Whether a discovered tool list may be recorded; the reason if not.
pub fn check_discovered_tools(tools: &[McpTool]) -> Result<(), String> {
    if tools.len() > TOOLS_MAX {
        return Err(format!(
            "the server lists {} tools; at most {TOOLS_MAX} are recorded",
            tools.len()
        ));
    }
    for tool in tools {
        validate_tool_name(&tool.name)
            .and_then(|_| validate_json_object("input_schema", tool.input_schema.clone()))
            .map_err(|error| {
                format!(
                    "tool `{}`: {}",
                    tool.name.chars().take(100).collect::<String>(),
                    error.message
                )
            })?;
    }
    let bytes = serde_json::to_string(tools).map_or(usize::MAX, |text| text.len());
    if bytes > TOOLS_MAX_BYTES {
        return Err(format!(
            "the tool list takes {bytes} bytes; at most {TOOLS_MAX_BYTES} are recorded"
        ));
    }
    Ok(())
}

impl McpServer {
    /// The server as the caller may see it: configured, not removed, theirs.
    fn check_visible_to(&self, actor: Uuid) -> Result<&McpServerConfig, McpServerError> {
        match &self.config {
            Some(config) if self.owner_id == Some(actor) && !self.is_removed => Ok(config),
            _ => Err(McpServerError::NotFound),
        }
    }

    fn set_enabled(&self, enabled: bool, at: DateTime<Utc>) -> Option<McpServerEvent> {
        match (self.enabled, enabled) {
            (false, true) => Some(McpServerEvent::McpServerEnabled { enabled_at: at }),
            (true, false) => Some(McpServerEvent::McpServerDisabled { disabled_at: at }),
            _ => None,
        }
    }
}

impl Aggregate for McpServer {
    const TYPE: &'static str = "McpServer";
    type Command = McpServerCommand;
    type Event = McpServerEvent;
    type Error = McpServerError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            McpServerCommand::Configure {
                owner_id,
                input,
                enabled,
                at,
            } => {
                if self.exists {
                    return Err(McpServerError::AlreadyExists);
                }
                let config = spec::validate(input, None).map_err(McpServerError::Invalid)?;
                vec![McpServerEvent::McpServerConfigured {
                    owner_id,
                    config,
                    enabled,
                    configured_at: at,
                }]
            }
            McpServerCommand::Update {
                actor,
                input,
                enabled,
                at,
            } => {
                let stored = self.check_visible_to(actor)?;
                let config =
                    spec::validate(input, Some(stored)).map_err(McpServerError::Invalid)?;
                let mut events = Vec::new();
                if &config != stored {
                    events.push(McpServerEvent::McpServerUpdated {
                        config,
                        updated_at: at,
                    });
                }
                events.extend(enabled.and_then(|enabled| self.set_enabled(enabled, at)));
                events
            }
            McpServerCommand::Enable { actor, at } => {
                self.check_visible_to(actor)?;
                self.set_enabled(true, at).into_iter().collect()
            }
            McpServerCommand::Disable { actor, at } => {
                self.check_visible_to(actor)?;
                self.set_enabled(false, at).into_iter().collect()
            }
            McpServerCommand::RecordDiscovery {
                actor,
                tools,
                protocol_version,
                server_name,
                server_version,
                at,
            } => {
                if !self.check_visible_to(actor)?.transport.is_remote() {
                    return Err(McpServerError::NotDiscoverable);
                }
                check_discovered_tools(&tools).map_err(|reason| {
                    McpServerError::Invalid(vec![FieldError::new("tools", reason)])
                })?;
                vec![McpServerEvent::McpToolsDiscovered {
                    tools,
                    protocol_version,
                    server_name,
                    server_version,
                    discovered_at: at,
                }]
            }
            McpServerCommand::RecordDiscoveryFailure { actor, reason, at } => {
                if !self.check_visible_to(actor)?.transport.is_remote() {
                    return Err(McpServerError::NotDiscoverable);
                }
                vec![McpServerEvent::McpDiscoveryFailed {
                    reason: crate::validation::truncate_reason(&reason),
                    failed_at: at,
                }]
            }
            McpServerCommand::Remove { actor, at } => {
                self.check_visible_to(actor)?;
                vec![McpServerEvent::McpServerRemoved { removed_at: at }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        self.updated_at = Some(event.occurred_at());
        match event {
            McpServerEvent::McpServerConfigured {
                owner_id,
                config,
                enabled,
                configured_at,
            } => {
                self.exists = true;
                self.owner_id = Some(owner_id);
                self.config = Some(config);
                self.enabled = enabled;
                self.created_at = Some(configured_at);
            }
            McpServerEvent::McpServerUpdated { config, .. } => self.config = Some(config),
            McpServerEvent::McpServerEnabled { .. } => self.enabled = true,
            McpServerEvent::McpServerDisabled { .. } => self.enabled = false,
            McpServerEvent::McpToolsDiscovered {
                tools,
                protocol_version,
                server_name,
                server_version,
                discovered_at,
            } => {
                self.tools = tools;
                self.last_discovery = Some(LastDiscovery {
                    succeeded: true,
                    at: discovered_at,
                    error: None,
                    protocol_version: Some(protocol_version),
                    server_name,
                    server_version,
                });
            }
            McpServerEvent::McpDiscoveryFailed { reason, failed_at } => {
                self.last_discovery = Some(LastDiscovery {
                    succeeded: false,
                    at: failed_at,
                    error: Some(reason),
                    protocol_version: None,
                    server_name: None,
                    server_version: None,
                });
            }
            McpServerEvent::McpServerRemoved { .. } => {
                self.is_removed = true;
                self.enabled = false;
            }
        }
    }
}

#[cfg(test)]
mod tests;
