//! MCP (Model Context Protocol) client side: tool discovery against the
//! servers users configure.
//!
//! [`McpClient::discover`] speaks both HTTP transports (Streamable HTTP and
//! the legacy HTTP+SSE), bounded by one deadline and a byte cap per answer,
//! and only reaches public addresses unless `CHRONICLE_MCP_ALLOW_PRIVATE`
//! is set (see `address_guard`).

mod address_guard;
mod discovery;
mod error;
mod legacy_sse;
mod streamable_http;
mod wire;

pub use address_guard::{AddressKind, RefusedAddress};
pub use discovery::{DiscoveredTool, Discovery, DiscoveryTarget, McpClient, McpTransport};
pub use error::DiscoveryError;
