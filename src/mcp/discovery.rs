//! Tool discovery: connect to a user's MCP server, `initialize`, and page
//! through `tools/list`, within one deadline and a byte cap per answer.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{redirect, Client, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::address_guard::{self, GuardedResolver};
use super::error::{DiscoveryError, Redactor};
use super::legacy_sse::LegacySse;
use super::streamable_http::StreamableHttp;
use super::wire::{self, Exchange};
use crate::config::McpSettings;

/// The version we ask for, and every version we accept in answer.
const PROTOCOL_VERSION: &str = "2025-06-18";
const SUPPORTED_VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];
/// Bounds on `tools/list`, so a server that pages forever cannot hold us.
const MAX_PAGES: usize = 100;
const MAX_TOOLS: usize = 1000;
/// JSON-RPC's "Method not found".
const METHOD_NOT_FOUND: i64 = -32601;

/// How an MCP server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McpTransport {
    /// Streamable HTTP (2025-03-26 and later): POSTs to one URL.
    Http,
    /// The legacy HTTP+SSE transport (2024-11-05): a GET stream and POSTs.
    Sse,
}

/// Where and how to discover: the URL and the headers (credentials) to send.
#[derive(Debug, Clone)]
pub struct DiscoveryTarget {
    pub transport: McpTransport,
    pub url: String,
    pub headers: Vec<(String, SecretString)>,
}

/// One tool a server offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredTool {
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Value,
}

/// What a server told us about itself and its tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discovery {
    pub protocol_version: String,
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    pub tools: Vec<DiscoveredTool>,
}

/// The MCP client: one HTTP client, built at start-up, that only connects
/// to public addresses unless `allow_private` is set. Cheap to clone.
#[derive(Clone)]
pub struct McpClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    guard: bool,
    timeout: Duration,
    max_response_bytes: usize,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("guard", &self.inner.guard)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// What a transport does for the protocol steps.
pub(crate) trait Transport {
    /// Sends request `method` and returns the server's JSON-RPC response.
    async fn request(
        &mut self,
        method: &'static str,
        params: Value,
    ) -> Result<Value, DiscoveryError>;
    /// Sends notification `method`, without parameters.
    async fn notify(&mut self, method: &'static str) -> Result<(), DiscoveryError>;
    /// The protocol version both sides agreed on.
    fn negotiated(&mut self, version: &str);
    /// Ends the session, best effort.
    async fn close(&mut self);
}

impl McpClient {
    pub fn new(settings: &McpSettings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let guard = !settings.allow_private;
        let client = Client::builder()
            // A redirect could lead anywhere, the guard's checks on IP literals included.
            .redirect(redirect::Policy::none())
            // A proxy would resolve the name itself, out of the guard's reach.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { guard }))
            .connect_timeout(settings.discovery_timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0)
            .user_agent(concat!("chronicle/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the MCP discovery HTTP client")?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                guard,
                timeout: settings.discovery_timeout,
                max_response_bytes: settings.max_response_bytes,
            }),
        })
    }

    /// Connects to `target`, speaks MCP and returns its tools; the whole
    /// exchange is bounded by the configured discovery timeout.
    pub async fn discover(&self, target: &DiscoveryTarget) -> Result<Discovery, DiscoveryError> {
        let inner = &self.inner;
        let url = parse_url(&target.url)?;
        if inner.guard {
            address_guard::check_url(&url)?;
        }
        let exchange = Exchange {
            client: inner.client.clone(),
            headers: headers(&target.headers)?,
            limit: inner.max_response_bytes,
            host: url.host_str().unwrap_or_default().to_string(),
            redactor: Redactor::new(
                target
                    .headers
                    .iter()
                    .map(|(_, value)| value.expose_secret().to_string()),
            ),
        };
        let deadline = tokio::time::Instant::now() + inner.timeout;
        let timed_out = || DiscoveryError::Timeout(inner.timeout);
        let outcome = match target.transport {
            McpTransport::Http => {
                let mut transport = StreamableHttp::new(&exchange, url);
                let outcome =
                    tokio::time::timeout_at(deadline, run(&mut transport, &exchange)).await;
                let _ = tokio::time::timeout_at(deadline, transport.close()).await;
                outcome
            }
            McpTransport::Sse => {
                tokio::time::timeout_at(deadline, async {
                    let mut transport = LegacySse::connect(&exchange, url, inner.guard).await?;
                    run(&mut transport, &exchange).await
                })
                .await
            }
        };
        let outcome = outcome.unwrap_or_else(|_| Err(timed_out()));
        match &outcome {
            Ok(discovery) => tracing::debug!(
                mcp.host = %exchange.host,
                mcp.tools = discovery.tools.len(),
                "mcp discovery succeeded"
            ),
            Err(err) => {
                tracing::debug!(mcp.host = %exchange.host, error = %err, "mcp discovery failed")
            }
        }
        outcome
    }
}

/// The URL, if it is an http(s) URL with a host.
fn parse_url(text: &str) -> Result<Url, DiscoveryError> {
    let url = Url::parse(text.trim())
        .map_err(|_| DiscoveryError::InvalidTarget("the server URL is not a valid URL".into()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DiscoveryError::InvalidTarget(
            "the server URL must be http or https".into(),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(DiscoveryError::InvalidTarget(
            "the server URL has no host".into(),
        ));
    }
    Ok(url)
}

/// Headers a configuration may not set: they frame the request or belong
/// to the transport.
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "mcp-session-id",
    "mcp-protocol-version",
];

/// The configured headers as a header map, values marked sensitive; an
/// error names the header, never its value.
fn headers(configured: &[(String, SecretString)]) -> Result<HeaderMap, DiscoveryError> {
    let mut headers = HeaderMap::new();
    for (name, value) in configured {
        let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            DiscoveryError::InvalidTarget("a configured header name is not valid".into())
        })?;
        if RESERVED_HEADERS.contains(&header.as_str()) || header.as_str().starts_with("proxy-") {
            return Err(DiscoveryError::InvalidTarget(format!(
                "header {header} cannot be configured"
            )));
        }
        let mut value = HeaderValue::from_str(value.expose_secret()).map_err(|_| {
            DiscoveryError::InvalidTarget(format!("the value of header {header} is not valid"))
        })?;
        value.set_sensitive(true);
        headers.append(header, value);
    }
    Ok(headers)
}

/// `initialize`, `notifications/initialized`, then `tools/list` page by page.
async fn run<T: Transport>(
    transport: &mut T,
    exchange: &Exchange,
) -> Result<Discovery, DiscoveryError> {
    let redactor = &exchange.redactor;
    let params = json!({
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "chronicle", "version": env!("CARGO_PKG_VERSION")},
    });
    let response = transport.request("initialize", params).await?;
    let init = wire::into_result(&response, "initialize", redactor)?;
    let version = init
        .get("protocolVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| DiscoveryError::NotMcp("initialize answered no protocolVersion".into()))?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(DiscoveryError::UnsupportedProtocol(redactor.clean(version)));
    }
    transport.negotiated(version);
    let server_info = |field: &str| {
        init.pointer(&format!("/serverInfo/{field}"))
            .and_then(Value::as_str)
            .map(|text| redactor.clean(text))
    };
    let declares_tools = init.pointer("/capabilities/tools").is_some();
    transport.notify("notifications/initialized").await?;

    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..MAX_PAGES {
        let params = match &cursor {
            Some(cursor) => json!({ "cursor": cursor }),
            None => json!({}),
        };
        let response = transport.request("tools/list", params).await?;
        let result = match wire::into_result(&response, "tools/list", redactor) {
            // A server without tools may not implement tools/list at all.
            Err(DiscoveryError::Refused { code, .. })
                if code == METHOD_NOT_FOUND && !declares_tools && page == 0 =>
            {
                break;
            }
            other => other?,
        };
        let listed = result
            .get("tools")
            .and_then(Value::as_array)
            .ok_or_else(|| DiscoveryError::NotMcp("tools/list answered no tools array".into()))?;
        for tool in listed {
            if tools.len() == MAX_TOOLS {
                return Err(DiscoveryError::TooManyTools(MAX_TOOLS));
            }
            tools.push(tool_from(tool, redactor)?);
        }
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .filter(|cursor| !cursor.is_empty())
            .map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    if cursor.is_some() {
        return Err(DiscoveryError::TooManyPages(MAX_PAGES));
    }
    Ok(Discovery {
        protocol_version: version.to_string(),
        server_name: server_info("name"),
        server_version: server_info("version"),
        tools,
    })
}

/// One entry of `tools/list`: `name` is required, `inputSchema` must be an
/// object (`{"type":"object"}` when a server leaves it out).
fn tool_from(tool: &Value, redactor: &Redactor) -> Result<DiscoveredTool, DiscoveryError> {
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            DiscoveryError::NotMcp("tools/list answered a tool without a name".into())
        })?;
    let input_schema = match tool.get("inputSchema") {
        None | Some(Value::Null) => json!({"type": "object"}),
        Some(schema @ Value::Object(_)) => schema.clone(),
        Some(_) => {
            return Err(DiscoveryError::NotMcp(format!(
                "tool {} has an inputSchema that is not an object",
                redactor.clean(name)
            )))
        }
    };
    Ok(DiscoveredTool {
        name: name.to_string(),
        description: tool
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
        input_schema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(parse_url("https://mcp.example.com/mcp").is_ok());
        assert!(parse_url(" http://mcp.example.com:8080/ ").is_ok());
        for bad in [
            "ftp://mcp.example.com/",
            "file:///etc/passwd",
            "not a url",
            "http://",
        ] {
            assert!(
                matches!(parse_url(bad), Err(DiscoveryError::InvalidTarget(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn header_errors_name_the_header_and_never_its_value() {
        let value = SecretString::from("Bearer sk-very-secret\n");
        let err = headers(&[("Authorization".into(), value)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the value of header authorization is not valid"
        );
        let err = headers(&[("Host".into(), SecretString::from("x"))]).unwrap_err();
        assert_eq!(err.to_string(), "header host cannot be configured");
        let ok = headers(&[("X-Api-Key".into(), SecretString::from("k"))]).unwrap();
        assert!(ok["x-api-key"].is_sensitive());
    }

    #[test]
    fn a_tool_needs_a_name_and_gets_an_object_schema_by_default() {
        let redactor = Redactor::default();
        let tool = tool_from(&json!({"name": "echo"}), &redactor).unwrap();
        assert_eq!(tool.input_schema, json!({"type": "object"}));
        assert_eq!(tool.description, None);
        assert!(tool_from(&json!({"description": "x"}), &redactor).is_err());
        assert!(tool_from(&json!({"name": "x", "inputSchema": "no"}), &redactor).is_err());
    }
}
