//! MCP server configurations: create, list, read, replace, enable, disable,
//! remove.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chronicle_aggregates::mcp_server::{McpServerCommand, McpServerInput, McpTransport};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    load_server_row, run, seal_secrets, McpServerResponse, ServerRow, TransportName, PROJECTION,
    SERVER_COLUMNS,
};
use crate::commands::now;
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Json, Query, RequestContext};
use crate::http::projects::check_project;
use crate::http::write::{self, total_count, Page};
use crate::state::AppState;

/// POST and PUT. PUT replaces the configuration: absent optional fields
/// become empty; `enabled` absent leaves it as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerRequest {
    /// 1–64 letters, digits, `-` or `_`; unique among your servers.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    pub transport: TransportName,
    /// `stdio` only (required there): the program clients start, at most 1024 characters.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub command: Option<String>,
    /// `stdio` only: at most 64 arguments of at most 4096 characters.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub args: Option<Vec<String>>,
    /// `stdio` only: environment variables (at most 64; names like `API_TOKEN`;
    /// values at most 8192 characters). Secrets: `"***"` keeps the stored value.
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub env: Option<Value>,
    /// `http` and `sse` only (required there): an http(s) URL, at most 2048 characters.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// `http` and `sse` only: request headers (at most 64; values at most 8192
    /// characters, no line breaks). Secrets: `"***"` keeps the stored value.
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub headers: Option<Value>,
    /// Offered in the export; default true on creation.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// One of your projects.
    #[serde(default)]
    pub project_id: Option<Uuid>,
}

impl McpServerRequest {
    /// Checks the project and seals the secrets: the command's input.
    async fn into_input(
        self,
        state: &AppState,
        user: &AuthUser,
    ) -> Result<(McpServerInput, Option<bool>)> {
        check_project(state, user, self.project_id).await?;
        let env = seal_secrets(state, user.id, "env", self.env).await?;
        let headers = seal_secrets(state, user.id, "headers", self.headers).await?;
        let input = McpServerInput {
            name: self.name,
            transport: self.transport.into(),
            command: self.command,
            args: self.args.unwrap_or_default(),
            env,
            url: self.url,
            headers,
            project_id: self.project_id,
        };
        Ok((input, self.enabled))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListServersQuery {
    /// Only enabled (true) or disabled (false) servers.
    pub enabled: Option<bool>,
    /// Only servers of this transport.
    pub transport: Option<TransportName>,
    /// Only servers of this project.
    pub project_id: Option<Uuid>,
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

/// Refuses a new server beyond the per-user quota. Counted from the name
/// claims, which the command path keeps (no read-model lag); two creations
/// racing may pass it together, which a quota tolerates.
async fn check_quota(state: &AppState, user: &AuthUser) -> Result<()> {
    let max = state.settings.mcp.max_servers_per_user;
    let count: i64 =
        sqlx::query_scalar("select count(*) from mcp_server_names where owner_id = $1")
            .bind(user.id)
            .fetch_one(&state.pool)
            .await?;
    if count >= i64::from(max) {
        return Err(ApiError::invalid_field(
            "mcp_servers",
            format!("you have {count} MCP servers, the most allowed ({max}); remove one first"),
        ));
    }
    Ok(())
}

/// Configures an MCP server.
#[utoipa::path(post, path = "/v1/mcp/servers", tag = "mcp", security(("bearer" = [])), request_body = McpServerRequest, responses(
    (status = 201, body = McpServerResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write"))),
    (status = 400, description = "Body is not JSON"), (status = 401),
    (status = 404, description = "`project_id` is not one of your projects"),
    (status = 409, description = "You already have a server with this name"),
    (status = 413), (status = 415),
    (status = 422, description = "Invalid field, or too many servers"),
))]
pub async fn create_server(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    Json(request): Json<McpServerRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<McpServerResponse>)> {
    check_quota(&state, &user).await?;
    let (input, enabled) = request.into_input(&state, &user).await?;
    let id = Uuid::new_v4();
    let command = McpServerCommand::Configure {
        owner_id: user.id,
        input,
        enabled: enabled.unwrap_or(true),
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((
        StatusCode::CREATED,
        headers,
        axum::Json(McpServerResponse::from_aggregate(id, &executed.aggregate)?),
    ))
}

/// Lists the caller's MCP servers, newest first.
#[utoipa::path(get, path = "/v1/mcp/servers", tag = "mcp", security(("bearer" = [])), params(ListServersQuery), responses(
    (status = 200, body = Vec<McpServerResponse>, headers(("X-Total-Count" = i64))),
    (status = 401), (status = 422, description = "Invalid filter or page"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn list_servers(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    Query(query): Query<ListServersQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<McpServerResponse>>)> {
    let page = Page::new(query.limit, query.offset)?;
    write::wait_for_read_model(&state, PROJECTION, &user, token).await?;
    let mut page_query = servers_query(SERVER_COLUMNS, user.id, &query);
    page_query
        .push(" order by created_at desc, id desc limit ")
        .push_bind(page.limit)
        .push(" offset ")
        .push_bind(page.offset);
    let rows: Vec<ServerRow> = page_query.build_query_as().fetch_all(&state.pool).await?;
    let total: i64 = servers_query("count(*)", user.id, &query)
        .build_query_scalar()
        .fetch_one(&state.pool)
        .await?;
    Ok((
        total_count(total),
        axum::Json(rows.into_iter().map(McpServerResponse::from).collect()),
    ))
}

/// `select {select}` from the owner's servers that are not removed, with the
/// filters asked for. Only the filters that are set go into the SQL: each
/// combination is then a prepared statement whose generic plan Postgres
/// reuses (docs/performance.md, change 20).
fn servers_query(
    select: &str,
    owner_id: Uuid,
    filters: &ListServersQuery,
) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new(format!(
        "select {select} from read.mcp_servers where owner_id = "
    ));
    query.push_bind(owner_id).push(" and not is_removed");
    if let Some(enabled) = filters.enabled {
        query.push(" and enabled = ").push_bind(enabled);
    }
    if let Some(transport) = filters.transport {
        query
            .push(" and transport = ")
            .push_bind(McpTransport::from(transport).as_str());
    }
    if let Some(project_id) = filters.project_id {
        query.push(" and project_id = ").push_bind(project_id);
    }
    query
}

/// One MCP server of the caller's.
#[utoipa::path(get, path = "/v1/mcp/servers/{id}", tag = "mcp", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = McpServerResponse), (status = 401),
    (status = 404, description = "No such server of yours"), (status = 422, description = "Id is not a UUID"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn get_server(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
) -> Result<axum::Json<McpServerResponse>> {
    let row = load_server_row(&state, &user, token, id).await?;
    Ok(axum::Json(row.into()))
}

/// Replaces the configuration; `"***"` keeps a stored secret value.
#[utoipa::path(put, path = "/v1/mcp/servers/{id}", tag = "mcp", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = McpServerRequest, responses(
    (status = 200, body = McpServerResponse), (status = 400, description = "Body is not JSON"), (status = 401),
    (status = 404), (status = 409, description = "Name taken, or changed concurrently"),
    (status = 413), (status = 415), (status = 422),
))]
pub async fn replace_server(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<McpServerRequest>,
) -> Result<(HeaderMap, axum::Json<McpServerResponse>)> {
    let (input, enabled) = request.into_input(&state, &user).await?;
    let command = McpServerCommand::Update {
        actor: user.id,
        input,
        enabled,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((
        headers,
        axum::Json(McpServerResponse::from_aggregate(id, &executed.aggregate)?),
    ))
}

async fn switch(
    state: AppState,
    user: AuthUser,
    context: RequestContext,
    id: Uuid,
    command: McpServerCommand,
) -> Result<(HeaderMap, axum::Json<McpServerResponse>)> {
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((
        headers,
        axum::Json(McpServerResponse::from_aggregate(id, &executed.aggregate)?),
    ))
}

/// Offers the server in the export again.
#[utoipa::path(post, path = "/v1/mcp/servers/{id}/enable", tag = "mcp", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = McpServerResponse), (status = 401), (status = 404),
    (status = 409, description = "Changed concurrently"), (status = 422, description = "Id is not a UUID"),
))]
pub async fn enable_server(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(HeaderMap, axum::Json<McpServerResponse>)> {
    let command = McpServerCommand::Enable {
        actor: user.id,
        at: now(),
    };
    switch(state, user, context, id, command).await
}

/// Leaves the server out of the export; its configuration stays.
#[utoipa::path(post, path = "/v1/mcp/servers/{id}/disable", tag = "mcp", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = McpServerResponse), (status = 401), (status = 404),
    (status = 409, description = "Changed concurrently"), (status = 422, description = "Id is not a UUID"),
))]
pub async fn disable_server(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(HeaderMap, axum::Json<McpServerResponse>)> {
    let command = McpServerCommand::Disable {
        actor: user.id,
        at: now(),
    };
    switch(state, user, context, id, command).await
}

/// Removes the configuration (its history stays; its name is free again).
#[utoipa::path(delete, path = "/v1/mcp/servers/{id}", tag = "mcp", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 204, description = "Removed"), (status = 401), (status = 404),
    (status = 409, description = "Changed concurrently"), (status = 422, description = "Id is not a UUID"),
))]
pub async fn remove_server(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(StatusCode, HeaderMap)> {
    let command = McpServerCommand::Remove {
        actor: user.id,
        at: now(),
    };
    let (headers, _) = run(&state, &user, &context, id, command).await?;
    Ok((StatusCode::NO_CONTENT, headers))
}
