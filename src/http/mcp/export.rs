//! The export: the caller's enabled servers as the `mcpServers` document
//! Claude Desktop and Claude Code read as it is, secrets in the clear (the
//! caller owns them).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::{Postgres, QueryBuilder};
use utoipa::IntoParams;
use uuid::Uuid;

use super::{ServerRow, PROJECTION, SERVER_COLUMNS};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, Query};
use crate::http::write;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Only servers of this project.
    pub project_id: Option<Uuid>,
}

/// The caller's enabled servers as `{"mcpServers": {name: entry}}`: `{command,
/// args, env}` for stdio, `{type, url, headers}` otherwise, secrets clear.
#[utoipa::path(get, path = "/v1/mcp/servers/export", tag = "mcp", security(("bearer" = [])), params(ExportQuery), responses(
    (status = 200, description = "An MCP client configuration document", body = Object,
        example = json!({"mcpServers": {"github": {"type": "http", "url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer …"}}}})),
    (status = 401), (status = 422, description = "Invalid filter"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn export_servers(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    Query(query): Query<ExportQuery>,
) -> Result<(HeaderMap, axum::Json<Value>)> {
    write::wait_for_read_model(&state, PROJECTION, &user, token).await?;
    // Only the filters that are set go into the SQL: each combination is then
    // a prepared statement whose generic plan Postgres reuses
    // (docs/performance.md, change 20).
    let mut servers_query = QueryBuilder::<Postgres>::new(format!(
        "select {SERVER_COLUMNS} from read.mcp_servers where owner_id = "
    ));
    servers_query
        .push_bind(user.id)
        .push(" and enabled and not is_removed");
    if let Some(project_id) = query.project_id {
        servers_query
            .push(" and project_id = ")
            .push_bind(project_id);
    }
    servers_query.push(" order by name");
    let rows: Vec<ServerRow> = servers_query
        .build_query_as()
        .fetch_all(&state.pool)
        .await?;
    let mut servers = Map::new();
    for row in rows {
        let entry = match row.transport.as_str() {
            "stdio" => json!({
                "command": row.command,
                "args": row.args.0,
                "env": open_all(&state, &user, "env", &row.env.0).await?,
            }),
            transport => json!({
                "type": transport,
                "url": row.url,
                "headers": open_all(&state, &user, "headers", &row.headers.0).await?,
            }),
        };
        servers.insert(row.name, entry);
    }
    // Secrets in the body: no cache may keep a copy.
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((headers, axum::Json(json!({ "mcpServers": servers }))))
}

async fn open_all(
    state: &AppState,
    user: &AuthUser,
    field: &str,
    sealed: &std::collections::BTreeMap<String, String>,
) -> Result<Map<String, Value>> {
    let mut clear = Map::new();
    for (key, value) in sealed {
        let value =
            state.secrets.open(user.id, value).await.map_err(|err| {
                ApiError::Internal(anyhow::anyhow!("opening {field} `{key}`: {err}"))
            })?;
        clear.insert(
            key.clone(),
            Value::String(value.expose_secret().to_string()),
        );
    }
    Ok(clear)
}
