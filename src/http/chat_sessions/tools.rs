//! `/v1/sessions/{id}/tools`: the tools the assistant ran in a session.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chronicle_aggregates::chat_session::{
    ChatSessionCommand, ChatSessionEvent, ToolStatus, ToolType,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{load_session, run};
use crate::commands::now;
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Json, Query, RequestContext};
use crate::http::write::{total_count, Page};
use crate::state::AppState;

/// One tool execution.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ToolExecutionResponse {
    pub id: Uuid,
    pub tool_name: String,
    /// `mcp` or `builtin`.
    pub tool_type: String,
    /// Any JSON.
    #[schema(value_type = Value)]
    pub input: Value,
    /// Any JSON.
    #[schema(value_type = Value)]
    pub output: Option<Value>,
    /// `success`, `error` or `running`.
    pub status: String,
    pub duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// A page of executions with the totals of every execution that matches.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolExecutionsPage {
    pub items: Vec<ToolExecutionResponse>,
    pub total: i64,
    /// Successful over finished (success or error) executions, 0–1; 0 when none finished.
    pub success_rate: f64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordToolExecutionRequest {
    /// 1–200 characters without control characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^ \\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub tool_name: String,
    /// `mcp` or `builtin`.
    #[schema(schema_with = tool_type_schema)]
    pub tool_type: ToolType,
    /// Any JSON, at most 16 levels and 16 KiB.
    #[schema(value_type = Value)]
    pub input: Value,
    /// Any JSON, at most 16 levels and 16 KiB.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub output: Option<Value>,
    /// `success`, `error` or `running`.
    #[schema(schema_with = tool_status_schema)]
    pub status: ToolStatus,
    /// Milliseconds.
    #[serde(default, deserialize_with = "crate::http::extract::whole_number")]
    #[schema(minimum = 0, maximum = 4294967295_u32)]
    pub duration_ms: Option<u32>,
}

fn tool_type_schema() -> utoipa::openapi::schema::Object {
    crate::http::schema::string_enum(&["mcp", "builtin"])
}

fn tool_status_schema() -> utoipa::openapi::schema::Object {
    crate::http::schema::string_enum(&["success", "error", "running"])
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListToolExecutionsQuery {
    /// `mcp` or `builtin`.
    #[param(schema_with = tool_type_schema)]
    pub tool_type: Option<ToolType>,
    /// `success`, `error` or `running`.
    #[param(schema_with = tool_status_schema)]
    pub status: Option<ToolStatus>,
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

/// The session's tool executions, oldest first, with totals.
#[utoipa::path(get, path = "/v1/sessions/{id}/tools", tag = "sessions", security(("bearer" = [])), params(("id" = Uuid, Path), ListToolExecutionsQuery), responses(
    (status = 200, body = ToolExecutionsPage, headers(("X-Total-Count" = i64))),
    (status = 401), (status = 404, description = "No such session of yours"),
    (status = 422, description = "Invalid filter, page or id"), (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn list_tool_executions(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
    Query(query): Query<ListToolExecutionsQuery>,
) -> Result<(HeaderMap, axum::Json<ToolExecutionsPage>)> {
    let page = Page::new(query.limit, query.offset)?;
    load_session(&state, &user, token, id).await?;
    let mut page_query = tool_executions_query(
        "id, tool_name, tool_type, input, output, status, duration_ms, created_at",
        id,
        &query,
    );
    page_query
        .push(" order by sequence limit ")
        .push_bind(page.limit)
        .push(" offset ")
        .push_bind(page.offset);
    let items: Vec<ToolExecutionResponse> =
        page_query.build_query_as().fetch_all(&state.pool).await?;
    let (total, succeeded, finished): (i64, i64, i64) = tool_executions_query(
        "count(*), count(*) filter (where status = 'success'), \
           count(*) filter (where status in ('success', 'error'))",
        id,
        &query,
    )
    .build_query_as()
    .fetch_one(&state.pool)
    .await?;
    let success_rate = if finished == 0 {
        0.0
    } else {
        succeeded as f64 / finished as f64
    };
    Ok((
        total_count(total),
        axum::Json(ToolExecutionsPage {
            items,
            total,
            success_rate,
        }),
    ))
}

/// `select {select}` from the session's tool executions, of the type and
/// status asked for. Only the filters that are set go into the SQL: each
/// combination is then a prepared statement whose generic plan Postgres
/// reuses (docs/performance.md, change 20).
fn tool_executions_query(
    select: &str,
    session_id: Uuid,
    filters: &ListToolExecutionsQuery,
) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new(format!(
        "select {select} from read.tool_executions where session_id = "
    ));
    query.push_bind(session_id);
    if let Some(tool_type) = filters.tool_type {
        query
            .push(" and tool_type = ")
            .push_bind(tool_type.as_str());
    }
    if let Some(status) = filters.status {
        query.push(" and status = ").push_bind(status.as_str());
    }
    query
}

/// Records a tool execution in the session.
#[utoipa::path(post, path = "/v1/sessions/{id}/tools", tag = "sessions", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = RecordToolExecutionRequest, responses(
    (status = 201, body = ToolExecutionResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write"))),
    (status = 400, description = "Body is not JSON"), (status = 401), (status = 404, description = "No such session of yours"),
    (status = 409, description = "Changed concurrently"), (status = 422, description = "Invalid field"),
))]
pub async fn record_tool_execution(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<RecordToolExecutionRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<ToolExecutionResponse>)> {
    let command = ChatSessionCommand::RecordToolExecution {
        actor: user.id,
        execution_id: Uuid::new_v4(),
        tool_name: request.tool_name,
        tool_type: request.tool_type,
        input: request.input,
        output: request.output,
        status: request.status,
        duration_ms: request.duration_ms.map(u64::from),
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    // Answer with what was recorded (validated, trimmed).
    let Some(ChatSessionEvent::ToolExecutionRecorded {
        execution_id,
        tool_name,
        tool_type,
        input,
        output,
        status,
        duration_ms,
        recorded_at,
    }) = executed.events.into_iter().last()
    else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "a tool execution command recorded no execution"
        )));
    };
    Ok((
        StatusCode::CREATED,
        headers,
        axum::Json(ToolExecutionResponse {
            id: execution_id,
            tool_name,
            tool_type: tool_type.as_str().to_string(),
            input: input.into_inner(),
            output: output.map(|o| o.into_inner()),
            status: status.as_str().to_string(),
            duration_ms: duration_ms.map(|ms| ms as i64),
            created_at: recorded_at,
        }),
    ))
}
