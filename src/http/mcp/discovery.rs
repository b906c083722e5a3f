//! Discovery: connect to an `http` or `sse` server, list its tools, record
//! them (or the failure); and the last recorded tool list.

use axum::extract::State;
use axum::http::HeaderMap;
use chronicle_aggregates::mcp_server::{
    check_discovered_tools, McpServer, McpServerCommand, McpServerConfig, McpTool, McpTransport,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{load_server_row, run};
use crate::commands::now;
use crate::http::error::{infrastructure_error, ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Query, RequestContext};
use crate::http::write::{total_count, Page};
use crate::mcp::{DiscoveryTarget, McpTransport as Wire};
use crate::state::AppState;

/// A tool as the server's `tools/list` described it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow, PartialEq)]
pub struct McpToolResponse {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object for the tool's arguments.
    #[schema(value_type = Object)]
    pub input_schema: Value,
}

/// What a successful discovery found.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryResponse {
    pub server_id: Uuid,
    /// The MCP protocol version agreed on.
    pub protocol_version: String,
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    pub tools: Vec<McpToolResponse>,
    pub discovered_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListToolsQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

/// The caller's live server as the event store has it: discovery uses the
/// configuration as it is now, not as a lagging read model shows it.
async fn load_config(state: &AppState, user: &AuthUser, id: Uuid) -> Result<McpServerConfig> {
    let server: McpServer = state
        .mcp_servers
        .load(&id.to_string())
        .await
        .map_err(infrastructure_error)?;
    match server.config {
        Some(config) if server.owner_id == Some(user.id) && !server.is_removed => Ok(config),
        _ => Err(ApiError::NotFound),
    }
}

/// Opens the configuration's secrets: the one place besides the export
/// where they are clear, and only in memory for the call.
async fn target_of(
    state: &AppState,
    user: &AuthUser,
    config: &McpServerConfig,
) -> Result<DiscoveryTarget> {
    let transport = match config.transport {
        McpTransport::Http => Wire::Http,
        McpTransport::Sse => Wire::Sse,
        McpTransport::Stdio => {
            return Err(ApiError::invalid_field(
                "transport",
                "stdio servers are never executed by Chronicle, so they cannot be discovered",
            ))
        }
    };
    let mut headers = Vec::with_capacity(config.headers.len());
    for (name, sealed) in &config.headers {
        let value = state
            .secrets
            .open(user.id, sealed.as_str())
            .await
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("opening header `{name}`: {err}")))?;
        headers.push((name.clone(), value));
    }
    Ok(DiscoveryTarget {
        transport,
        url: config.url.clone().unwrap_or_default(),
        headers,
    })
}

/// Connects to the server (MCP `initialize`, then `tools/list` page by
/// page) and records its tools; a failure is recorded too, and answers 502.
#[utoipa::path(post, path = "/v1/mcp/servers/{id}/discover", tag = "mcp", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = DiscoveryResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write"))),
    (status = 401), (status = 404, description = "No such server of yours"),
    (status = 409, description = "Changed concurrently"),
    (status = 422, description = "A stdio server (never executed here), or the id is not a UUID"),
    (status = 502, description = "The server could not be reached, refused, answered wrongly, or is at a private address"),
))]
pub async fn discover_tools(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(HeaderMap, axum::Json<DiscoveryResponse>)> {
    let config = load_config(&state, &user, id).await?;
    let target = target_of(&state, &user, &config).await?;
    let outcome = match state.mcp.discover(&target).await {
        Ok(discovery) => {
            let tools: Vec<McpTool> = discovery
                .tools
                .into_iter()
                .map(|tool| McpTool {
                    name: tool.name,
                    description: tool.description,
                    input_schema: tool.input_schema,
                })
                .collect();
            check_discovered_tools(&tools).map(|()| {
                let server = (discovery.server_name, discovery.server_version);
                (discovery.protocol_version, server.0, server.1, tools)
            })
        }
        Err(error) => Err(error.to_string()),
    };
    let (protocol_version, server_name, server_version, tools) = match outcome {
        Ok(found) => found,
        Err(reason) => {
            tracing::info!(server_id = %id, %reason, "MCP discovery failed");
            let command = McpServerCommand::RecordDiscoveryFailure {
                actor: user.id,
                reason: reason.clone(),
                at: now(),
            };
            run(&state, &user, &context, id, command).await?;
            return Err(ApiError::Upstream(format!(
                "MCP discovery failed: {reason}"
            )));
        }
    };
    let command = McpServerCommand::RecordDiscovery {
        actor: user.id,
        tools,
        protocol_version,
        server_name,
        server_version,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    let server = executed.aggregate;
    let last = server
        .last_discovery
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("discovery of {id} not recorded")))?;
    Ok((
        headers,
        axum::Json(DiscoveryResponse {
            server_id: id,
            protocol_version: last.protocol_version.unwrap_or_default(),
            server_name: last.server_name,
            server_version: last.server_version,
            tools: server
                .tools
                .into_iter()
                .map(|tool| McpToolResponse {
                    name: tool.name,
                    description: tool.description,
                    input_schema: tool.input_schema,
                })
                .collect(),
            discovered_at: last.at,
        }),
    ))
}

/// The tools of the server's last successful discovery, in the server's order.
#[utoipa::path(get, path = "/v1/mcp/servers/{id}/tools", tag = "mcp", security(("bearer" = [])), params(("id" = Uuid, Path), ListToolsQuery), responses(
    (status = 200, body = Vec<McpToolResponse>, headers(("X-Total-Count" = i64))),
    (status = 401), (status = 404, description = "No such server of yours"),
    (status = 422, description = "Invalid page, or the id is not a UUID"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn list_tools(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
    Query(query): Query<ListToolsQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<McpToolResponse>>)> {
    let page = Page::new(query.limit, query.offset)?;
    let server = load_server_row(&state, &user, token, id).await?;
    let tools: Vec<McpToolResponse> = sqlx::query_as(
        "select name, description, input_schema from read.mcp_tools where server_id = $1 \
         order by position limit $2 offset $3",
    )
    .bind(id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&state.pool)
    .await?;
    Ok((total_count(server.tool_count), axum::Json(tools)))
}
