//! `read.mcp_servers` and `read.mcp_tools`: every MCP server configuration
//! (removed ones marked) and the tools of its last successful discovery.
//! Secret values stay sealed here, as in the events.

use async_trait::async_trait;
use chronicle_aggregates::mcp_server::{McpServerConfig, McpServerEvent, McpTool};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

pub struct McpServersProjection;

#[async_trait]
impl ReadModel for McpServersProjection {
    type Event = McpServerEvent;
    const NAME: &'static str = "mcp_servers";
    const AGGREGATE_TYPE: &'static str = "McpServer";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, McpServerEvent>,
    ) -> Result<(), ProjectionError> {
        let Decoded {
            id, version, event, ..
        } = decoded;
        match event {
            McpServerEvent::McpServerConfigured {
                owner_id,
                config,
                enabled,
                configured_at,
            } => {
                let config = Columns::of(config);
                sqlx::query(
                    "insert into read.mcp_servers (id, owner_id, name, transport, command, args, \
                       env, url, headers, project_id, enabled, created_at, updated_at, version) \
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)",
                )
                .bind(id)
                .bind(owner_id)
                .bind(config.name)
                .bind(config.transport)
                .bind(config.command)
                .bind(config.args)
                .bind(config.env)
                .bind(config.url)
                .bind(config.headers)
                .bind(config.project_id)
                .bind(enabled)
                .bind(configured_at)
                .bind(version)
                .execute(conn)
                .await?;
            }
            McpServerEvent::McpServerUpdated { config, updated_at } => {
                let config = Columns::of(config);
                sqlx::query(
                    "update read.mcp_servers set name = $2, transport = $3, command = $4, \
                       args = $5, env = $6, url = $7, headers = $8, project_id = $9, \
                       updated_at = $10, version = $11 where id = $1",
                )
                .bind(id)
                .bind(config.name)
                .bind(config.transport)
                .bind(config.command)
                .bind(config.args)
                .bind(config.env)
                .bind(config.url)
                .bind(config.headers)
                .bind(config.project_id)
                .bind(updated_at)
                .bind(version)
                .execute(conn)
                .await?;
            }
            McpServerEvent::McpServerEnabled { enabled_at: at }
            | McpServerEvent::McpServerDisabled { disabled_at: at } => {
                let enabled = matches!(event, McpServerEvent::McpServerEnabled { .. });
                sqlx::query(
                    "update read.mcp_servers set enabled = $2, updated_at = $3, version = $4 \
                     where id = $1",
                )
                .bind(id)
                .bind(enabled)
                .bind(at)
                .bind(version)
                .execute(conn)
                .await?;
            }
            McpServerEvent::McpToolsDiscovered {
                tools,
                protocol_version,
                server_name,
                server_version,
                discovered_at,
            } => {
                sqlx::query(
                    "update read.mcp_servers set tool_count = $2, protocol_version = $3, \
                       server_name = $4, server_version = $5, last_discovery_status = 'succeeded', \
                       last_discovery_error = null, last_discovery_at = $6, updated_at = $6, \
                       version = $7 where id = $1",
                )
                .bind(id)
                .bind(tools.len() as i64)
                .bind(protocol_version)
                .bind(server_name)
                .bind(server_version)
                .bind(discovered_at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                replace_tools(conn, id, tools).await?;
            }
            McpServerEvent::McpDiscoveryFailed { reason, failed_at } => {
                sqlx::query(
                    "update read.mcp_servers set last_discovery_status = 'failed', \
                       protocol_version = null, server_name = null, server_version = null, \
                       last_discovery_error = $2, last_discovery_at = $3, updated_at = $3, \
                       version = $4 where id = $1",
                )
                .bind(id)
                .bind(reason)
                .bind(failed_at)
                .bind(version)
                .execute(conn)
                .await?;
            }
            McpServerEvent::McpServerRemoved { removed_at } => {
                sqlx::query(
                    "update read.mcp_servers set is_removed = true, enabled = false, \
                       updated_at = $2, version = $3 where id = $1",
                )
                .bind(id)
                .bind(removed_at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                replace_tools(conn, id, Vec::new()).await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("delete from read.mcp_tools")
            .execute(&mut *conn)
            .await?;
        sqlx::query("delete from read.mcp_servers")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// A configuration as `read.mcp_servers` stores it.
struct Columns {
    name: String,
    transport: &'static str,
    command: Option<String>,
    args: Json<Vec<String>>,
    env: Json<serde_json::Value>,
    url: Option<String>,
    headers: Json<serde_json::Value>,
    project_id: Option<Uuid>,
}

impl Columns {
    fn of(config: McpServerConfig) -> Self {
        let sealed = |map| serde_json::to_value(map).unwrap_or_default();
        Self {
            name: config.name,
            transport: config.transport.as_str(),
            command: config.command,
            args: Json(config.args),
            env: Json(sealed(config.env)),
            url: config.url,
            headers: Json(sealed(config.headers)),
            project_id: config.project_id,
        }
    }
}

/// Replaces a server's tool list with `tools`, in their order.
async fn replace_tools(
    conn: &mut PgConnection,
    server_id: Uuid,
    tools: Vec<McpTool>,
) -> Result<(), ProjectionError> {
    sqlx::query("delete from read.mcp_tools where server_id = $1")
        .bind(server_id)
        .execute(&mut *conn)
        .await?;
    if tools.is_empty() {
        return Ok(());
    }
    let (mut names, mut descriptions, mut schemas) = (Vec::new(), Vec::new(), Vec::new());
    for tool in tools {
        names.push(tool.name);
        descriptions.push(tool.description);
        schemas.push(tool.input_schema);
    }
    sqlx::query(
        "insert into read.mcp_tools (server_id, position, name, description, input_schema) \
         select $1, t.position, t.name, t.description, t.input_schema \
         from unnest($2::text[], $3::text[], $4::jsonb[]) with ordinality \
           as t(name, description, input_schema, position)",
    )
    .bind(server_id)
    .bind(names)
    .bind(descriptions)
    .bind(schemas)
    .execute(conn)
    .await?;
    Ok(())
}
