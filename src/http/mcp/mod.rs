//! `/v1/mcp/servers`: MCP server configurations. Commands go to the
//! McpServer aggregate, queries read `read.mcp_servers` and `read.mcp_tools`.
//! One file per concern: configurations here, `discovery.rs` (discover and
//! the tool list), `export.rs` (the client document).
//!
//! Values of `env` and `headers` are sealed by [`crate::secrets::SecretBox`]
//! before they reach a command and are answered as `"***"`; only the export
//! and discovery open them.

pub mod discovery;
pub mod export;
pub mod servers;

use std::collections::{BTreeMap, HashMap};

use axum::routing::{get, post};
use axum::Router;
use chronicle_aggregates::mcp_server::{
    McpServer, McpServerCommand, McpServerError, McpTransport, SecretInput,
};
use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::commands::Executed;
use crate::http::error::{infrastructure_error, is_sqlstate, ApiError, Result};
use crate::http::extract::{AuthUser, RequestContext};
use crate::http::write;
use crate::state::AppState;

pub(crate) const PROJECTION: &str = "mcp_servers";

/// What answers show in place of every secret value, and what a PUT sends to
/// keep one.
pub const REDACTED: &str = "***";

/// SQLSTATE raised by the `events` trigger of migration 0510 when a server
/// would take a name another server of its owner holds.
const NAME_TAKEN_SQLSTATE: &str = "CU409";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/mcp/servers",
            get(servers::list_servers).post(servers::create_server),
        )
        .route("/v1/mcp/servers/export", get(export::export_servers))
        .route(
            "/v1/mcp/servers/{id}",
            get(servers::get_server)
                .put(servers::replace_server)
                .delete(servers::remove_server),
        )
        .route("/v1/mcp/servers/{id}/enable", post(servers::enable_server))
        .route(
            "/v1/mcp/servers/{id}/disable",
            post(servers::disable_server),
        )
        .route(
            "/v1/mcp/servers/{id}/discover",
            post(discovery::discover_tools),
        )
        .route("/v1/mcp/servers/{id}/tools", get(discovery::list_tools))
}

/// How clients reach a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    /// A local process started by the client; never run by Chronicle.
    Stdio,
    /// The legacy HTTP+SSE transport.
    Sse,
    /// Streamable HTTP.
    Http,
}

impl From<TransportName> for McpTransport {
    fn from(name: TransportName) -> Self {
        match name {
            TransportName::Stdio => Self::Stdio,
            TransportName::Sse => Self::Sse,
            TransportName::Http => Self::Http,
        }
    }
}

impl TransportName {
    fn parse(name: &str) -> Self {
        match name {
            "stdio" => Self::Stdio,
            "sse" => Self::Sse,
            _ => Self::Http,
        }
    }
}

/// How the last discovery went.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct LastDiscoveryResponse {
    /// `succeeded` or `failed`.
    pub status: String,
    pub at: DateTime<Utc>,
    /// Why it failed.
    pub error: Option<String>,
    pub protocol_version: Option<String>,
    pub server_name: Option<String>,
    pub server_version: Option<String>,
}

/// An MCP server configuration as clients see it: every secret value is `"***"`.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct McpServerResponse {
    pub id: Uuid,
    pub name: String,
    pub transport: TransportName,
    pub command: Option<String>,
    pub args: Vec<String>,
    /// Variable names; every value is `"***"`.
    pub env: BTreeMap<String, String>,
    pub url: Option<String>,
    /// Header names; every value is `"***"`.
    pub headers: BTreeMap<String, String>,
    pub enabled: bool,
    pub project_id: Option<Uuid>,
    /// Tools of the last successful discovery.
    pub tool_count: i64,
    pub last_discovery: Option<LastDiscoveryResponse>,
    /// Set for `stdio` servers: who runs them.
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Said of every `stdio` server, in answers and in the docs.
const STDIO_NOTE: &str = "stdio servers are started by MCP clients from the export; \
                          Chronicle never executes them";

fn redacted<'a>(keys: impl Iterator<Item = &'a String>) -> BTreeMap<String, String> {
    keys.map(|key| (key.clone(), REDACTED.to_string()))
        .collect()
}

fn note_for(transport: TransportName) -> Option<String> {
    (transport == TransportName::Stdio).then(|| STDIO_NOTE.to_string())
}

impl McpServerResponse {
    fn from_aggregate(id: Uuid, server: &McpServer) -> Result<Self> {
        let config = server
            .config
            .as_ref()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("MCP server {id} has no config")))?;
        let created_at = server.created_at.unwrap_or_else(Utc::now);
        let transport = TransportName::parse(config.transport.as_str());
        Ok(Self {
            id,
            name: config.name.clone(),
            transport,
            command: config.command.clone(),
            args: config.args.clone(),
            env: redacted(config.env.keys()),
            url: config.url.clone(),
            headers: redacted(config.headers.keys()),
            enabled: server.enabled,
            project_id: config.project_id,
            tool_count: server.tools.len() as i64,
            last_discovery: server
                .last_discovery
                .as_ref()
                .map(|last| LastDiscoveryResponse {
                    status: if last.succeeded {
                        "succeeded"
                    } else {
                        "failed"
                    }
                    .into(),
                    at: last.at,
                    error: last.error.clone(),
                    protocol_version: last.protocol_version.clone(),
                    server_name: last.server_name.clone(),
                    server_version: last.server_version.clone(),
                }),
            note: note_for(transport),
            created_at,
            updated_at: server.updated_at.unwrap_or(created_at),
        })
    }
}

/// The columns [`ServerRow`] reads.
pub(crate) const SERVER_COLUMNS: &str = "id, name, transport, command, args, env, url, headers, \
    enabled, project_id, tool_count, protocol_version, server_name, server_version, \
    last_discovery_status, last_discovery_error, last_discovery_at, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct ServerRow {
    pub id: Uuid,
    pub name: String,
    pub transport: String,
    pub command: Option<String>,
    pub args: sqlx::types::Json<Vec<String>>,
    /// Sealed values.
    pub env: sqlx::types::Json<BTreeMap<String, String>>,
    pub url: Option<String>,
    /// Sealed values.
    pub headers: sqlx::types::Json<BTreeMap<String, String>>,
    pub enabled: bool,
    pub project_id: Option<Uuid>,
    pub tool_count: i64,
    pub protocol_version: Option<String>,
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    pub last_discovery_status: Option<String>,
    pub last_discovery_error: Option<String>,
    pub last_discovery_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ServerRow> for McpServerResponse {
    fn from(row: ServerRow) -> Self {
        let transport = TransportName::parse(&row.transport);
        let last_discovery = match (row.last_discovery_status, row.last_discovery_at) {
            (Some(status), Some(at)) => Some(LastDiscoveryResponse {
                status,
                at,
                error: row.last_discovery_error,
                protocol_version: row.protocol_version,
                server_name: row.server_name,
                server_version: row.server_version,
            }),
            _ => None,
        };
        Self {
            id: row.id,
            name: row.name,
            transport,
            command: row.command,
            args: row.args.0,
            env: redacted(row.env.0.keys()),
            url: row.url,
            headers: redacted(row.headers.0.keys()),
            enabled: row.enabled,
            project_id: row.project_id,
            tool_count: row.tool_count,
            last_discovery,
            note: note_for(transport),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The caller's live server `id` from the read model (after waiting for
/// the caller's writes); 404 when it is someone else's, removed, or unknown.
pub(crate) async fn load_server_row(
    state: &AppState,
    user: &AuthUser,
    token: crate::http::extract::ConsistencyHeader,
    id: Uuid,
) -> Result<ServerRow> {
    write::wait_for_read_model(state, PROJECTION, user, token).await?;
    let row: Option<ServerRow> = sqlx::query_as(&format!(
        "select {SERVER_COLUMNS} from read.mcp_servers \
         where id = $1 and owner_id = $2 and not is_removed"
    ))
    .bind(id)
    .bind(user.id)
    .fetch_optional(&state.pool)
    .await?;
    row.ok_or(ApiError::NotFound)
}

/// `env` or `headers` as a client sent them: an object of strings, each
/// value either `"***"` (keep) or a clear value, checked and then sealed.
/// Messages name keys, never values.
pub(crate) async fn seal_secrets(
    state: &AppState,
    owner: Uuid,
    field: &'static str,
    value: Option<Value>,
) -> Result<BTreeMap<String, SecretInput>> {
    let entries = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(entries)) => entries,
        Some(_) => {
            return Err(ApiError::invalid_field(
                field,
                format!("{field} must be an object of strings"),
            ))
        }
    };
    let mut clear = HashMap::with_capacity(entries.len());
    let mut errors = Vec::new();
    for (key, value) in entries {
        match value {
            Value::String(value) => {
                if value != REDACTED {
                    errors.extend(chronicle_aggregates::mcp_server::spec::check_secret_value(
                        field, &key, &value,
                    ));
                }
                clear.insert(key, value);
            }
            _ => errors.push(chronicle_aggregates::FieldError::new(
                field,
                format!("{field} values must be strings"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(&errors));
    }
    let mut sealed = BTreeMap::new();
    for (key, value) in clear {
        let input = if value == REDACTED {
            SecretInput::Keep
        } else {
            let ciphertext = state.secrets.seal(owner, &value).await.map_err(|err| {
                ApiError::Internal(anyhow::anyhow!("sealing a secret failed: {err}"))
            })?;
            SecretInput::Sealed(chronicle_aggregates::mcp_server::SealedSecret::new(
                ciphertext,
            ))
        };
        sealed.insert(key, input);
    }
    Ok(sealed)
}

fn mcp_server_error(err: AggregateError<McpServerError>) -> ApiError {
    match err {
        AggregateError::UserError(McpServerError::NotFound) => ApiError::NotFound,
        AggregateError::UserError(McpServerError::AlreadyExists) => {
            ApiError::Conflict("MCP server already exists".into())
        }
        AggregateError::UserError(error @ McpServerError::NotDiscoverable) => {
            ApiError::invalid_field("transport", error.to_string())
        }
        AggregateError::UserError(McpServerError::Invalid(errors)) => {
            ApiError::invalid_fields(&errors)
        }
        AggregateError::UnexpectedError(ref cause)
            if is_sqlstate(cause.as_ref(), NAME_TAKEN_SQLSTATE) =>
        {
            ApiError::Conflict("you already have an MCP server with this name".into())
        }
        other => infrastructure_error(other),
    }
}

async fn run(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    id: Uuid,
    command: McpServerCommand,
) -> Result<(axum::http::HeaderMap, Executed<McpServer>)> {
    write::execute(
        state,
        &state.mcp_servers,
        user,
        context,
        id,
        command,
        mcp_server_error,
    )
    .await
}
