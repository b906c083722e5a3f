//! `/v1/sessions`: chat sessions. Commands go to the ChatSession aggregate,
//! queries read `read.chat_sessions` and its messages and tool executions.
//! One file per concern: the session itself here, `messages.rs`, `tools.rs`.

pub mod events;
pub mod exchange;
pub mod messages;
pub mod tools;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use chronicle_aggregates::chat_session::{ChatSession, ChatSessionCommand, ChatSessionError};
use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::commands::{now, Executed, Loaded};
use crate::http::error::{infrastructure_error, ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Json, Query, RequestContext};
use crate::http::projects::check_project;
use crate::http::write::{self, total_count, Page};
use crate::state::AppState;

pub(crate) const PROJECTION: &str = "chat_sessions";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions", get(list_sessions).post(create_session))
        .route(
            "/v1/sessions/{id}",
            get(get_session).patch(patch_session).delete(delete_session),
        )
        .route(
            "/v1/sessions/{id}/messages",
            get(messages::list_messages).post(exchange::send_message),
        )
        .route("/v1/sessions/{id}/events", get(events::session_events))
        .route(
            "/v1/sessions/{id}/tools",
            get(tools::list_tool_executions).post(tools::record_tool_execution),
        )
}

/// Tokens used by a session's exchanges so far.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema, PartialEq)]
pub struct TokenUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

/// A chat session as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatSessionResponse {
    pub id: Uuid,
    pub title: Option<String>,
    pub project_id: Option<Uuid>,
    pub model: String,
    pub system_prompt: Option<String>,
    pub message_count: i64,
    pub usage: TokenUsage,
    pub last_activity_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ChatSessionRow {
    id: Uuid,
    title: Option<String>,
    project_id: Option<Uuid>,
    model: String,
    system_prompt: Option<String>,
    message_count: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    last_activity_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const SESSION_COLUMNS: &str = "id, title, project_id, model, system_prompt, message_count, \
     prompt_tokens, completion_tokens, total_tokens, last_activity_at, created_at, updated_at";

impl From<ChatSessionRow> for ChatSessionResponse {
    fn from(row: ChatSessionRow) -> Self {
        Self {
            id: row.id,
            title: row.title,
            project_id: row.project_id,
            model: row.model,
            system_prompt: row.system_prompt,
            message_count: row.message_count,
            usage: TokenUsage {
                prompt_tokens: row.prompt_tokens,
                completion_tokens: row.completion_tokens,
                total_tokens: row.total_tokens,
            },
            last_activity_at: row.last_activity_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChatSessionRequest {
    /// At most 200 characters; blank is no title.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub title: Option<String>,
    /// One of the caller's projects.
    #[serde(default)]
    pub project_id: Option<Uuid>,
    /// A model id from `GET /v1/models` (another one is a 404); default: the first configured.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub model: Option<String>,
    /// At most 20,000 characters; sent first in every exchange; blank is none.
    #[serde(default)]
    #[schema(max_length = 20000)]
    pub system_prompt: Option<String>,
}

/// PATCH: only the fields to change; `null` clears `title`, `project_id`, `system_prompt`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchChatSessionRequest {
    /// At most 200 characters; `null` or blank clears it.
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = Option<String>, max_length = 200)]
    pub title: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = Option<Uuid>)]
    pub project_id: Option<Option<Uuid>>,
    /// A model id from `GET /v1/models` (another one is a 404); cannot be cleared.
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 100)]
    pub model: Option<Option<String>>,
    /// At most 20,000 characters; `null` or blank clears it.
    #[serde(default, deserialize_with = "crate::http::extract::some_or_null")]
    #[schema(value_type = Option<String>, max_length = 20000)]
    pub system_prompt: Option<Option<String>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListChatSessionsQuery {
    /// Only sessions of this project.
    pub project_id: Option<Uuid>,
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

pub(crate) fn chat_session_error(err: AggregateError<ChatSessionError>) -> ApiError {
    match err {
        AggregateError::UserError(ChatSessionError::NotFound) => ApiError::NotFound,
        // A deleted session is gone for its owner too.
        AggregateError::UserError(ChatSessionError::Deleted) => ApiError::NotFound,
        AggregateError::UserError(ChatSessionError::AlreadyExists) => {
            ApiError::Conflict("chat session already exists".into())
        }
        AggregateError::UserError(ChatSessionError::Invalid(errors)) => {
            ApiError::invalid_fields(&errors)
        }
        other => infrastructure_error(other),
    }
}

pub(crate) async fn run(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    id: Uuid,
    command: ChatSessionCommand,
) -> Result<(HeaderMap, Executed<ChatSession>)> {
    write::execute(
        state,
        &state.chat_sessions,
        user,
        context,
        id,
        command,
        chat_session_error,
    )
    .await
}

/// [`run`] from where `at` says the session stands: the first attempt does
/// not load it again (a conflict loads and retries).
pub(crate) async fn run_at(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    id: Uuid,
    command: ChatSessionCommand,
    at: Option<Loaded<ChatSession>>,
) -> Result<(HeaderMap, Executed<ChatSession>)> {
    let Some(at) = at else {
        return run(state, user, context, id, command).await;
    };
    write::execute_at(
        state,
        &state.chat_sessions,
        user,
        context,
        id,
        command,
        at,
        chat_session_error,
    )
    .await
}

/// The caller's session `id` as the event store has it (snapshot and
/// tail): what an exchange needs, its model and system prompt, with no wait
/// for the read model, so that an exchange does not pay the projection's
/// lag; and where it stands, so that the exchange's first command need not
/// load it again. 404 when it is someone else's, deleted, or unknown.
pub(crate) async fn load_own_session(
    state: &AppState,
    user: &AuthUser,
    id: Uuid,
) -> Result<Loaded<ChatSession>> {
    let loaded = state
        .chat_sessions
        .load_at(&id.to_string())
        .await
        .map_err(chat_session_error)?;
    let session = &loaded.aggregate;
    if !session.exists || session.is_deleted || session.owner_id != Some(user.id) {
        return Err(ApiError::NotFound);
    }
    Ok(loaded)
}

/// The caller's session `id` from the read model (after waiting for the
/// caller's writes); 404 when it is someone else's, deleted, or unknown.
pub(crate) async fn load_session(
    state: &AppState,
    user: &AuthUser,
    token: ConsistencyHeader,
    id: Uuid,
) -> Result<ChatSessionResponse> {
    write::wait_for_read_model(state, PROJECTION, user, token).await?;
    let row: Option<ChatSessionRow> = sqlx::query_as(&format!(
        "select {SESSION_COLUMNS} from read.chat_sessions \
         where id = $1 and owner_id = $2 and not is_deleted"
    ))
    .bind(id)
    .bind(user.id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(ChatSessionResponse::from).ok_or(ApiError::NotFound)
}

/// A model must be one the server offers; with none configured, sessions
/// (which exist to chat) cannot be started.
fn check_model(state: &AppState, model: &str) -> Result<()> {
    // No upstream at all is a 503 whatever was asked; then the schema's
    // bounds (422), as for every other field; then whether there is such a
    // model (404).
    state.llm.ensure_configured().map_err(ApiError::from)?;
    if !(1..=100).contains(&model.chars().count()) {
        return Err(ApiError::invalid_field(
            "model",
            "must be 1 to 100 characters",
        ));
    }
    if state.llm.model(model).is_none() {
        return Err(ApiError::MissingReference {
            field: "model",
            message: format!("unknown model `{model}`; see GET /v1/models"),
        });
    }
    Ok(())
}

fn from_aggregate(id: Uuid, session: &ChatSession) -> ChatSessionResponse {
    let created_at = session.created_at.unwrap_or_else(Utc::now);
    let updated_at = session.updated_at.unwrap_or(created_at);
    ChatSessionResponse {
        id,
        title: session.title.as_ref().map(|t| t.as_str().to_string()),
        project_id: session.project_id,
        model: session.model.clone(),
        system_prompt: session
            .system_prompt
            .as_ref()
            .map(|p| p.as_str().to_string()),
        message_count: session.message_count as i64,
        // Usage is summed by the read model; a session just changed by a
        // command answers with what it had (0 for a new one).
        usage: TokenUsage::default(),
        last_activity_at: updated_at,
        created_at,
        updated_at,
    }
}

/// Starts a chat session.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", security(("bearer" = [])), request_body = CreateChatSessionRequest, responses(
    (status = 201, body = ChatSessionResponse, headers(("X-Consistency-Token" = String, description = "Send back to read this write"))),
    (status = 400, description = "Body is not JSON"), (status = 401),
    (status = 404, description = "`model` is not configured, or `project_id` is not one of your projects"),
    (status = 422, description = "Invalid field"),
))]
pub async fn create_session(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    Json(request): Json<CreateChatSessionRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<ChatSessionResponse>)> {
    let model = match request.model {
        Some(model) => model,
        None => state
            .llm
            .models()
            .next()
            .map(|model| model.id.clone())
            .unwrap_or_default(),
    };
    check_model(&state, &model)?;
    check_project(&state, &user, request.project_id).await?;
    let id = Uuid::new_v4();
    let command = ChatSessionCommand::StartChatSession {
        owner_id: user.id,
        project_id: request.project_id,
        title: request.title,
        model,
        system_prompt: request.system_prompt,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((
        StatusCode::CREATED,
        headers,
        axum::Json(from_aggregate(id, &executed.aggregate)),
    ))
}

/// Lists the caller's chat sessions, newest first.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", security(("bearer" = [])), params(ListChatSessionsQuery), responses(
    (status = 200, body = Vec<ChatSessionResponse>, headers(("X-Total-Count" = i64))),
    (status = 401), (status = 422, description = "Invalid filter or page"), (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn list_sessions(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    Query(query): Query<ListChatSessionsQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<ChatSessionResponse>>)> {
    let page = Page::new(query.limit, query.offset)?;
    write::wait_for_read_model(&state, PROJECTION, &user, token).await?;
    let mut page_query = sessions_query(SESSION_COLUMNS, user.id, query.project_id);
    page_query
        .push(" order by created_at desc, id desc limit ")
        .push_bind(page.limit)
        .push(" offset ")
        .push_bind(page.offset);
    let rows: Vec<ChatSessionRow> = page_query.build_query_as().fetch_all(&state.pool).await?;
    let total: i64 = sessions_query("count(*)", user.id, query.project_id)
        .build_query_scalar()
        .fetch_one(&state.pool)
        .await?;
    Ok((
        total_count(total),
        axum::Json(rows.into_iter().map(ChatSessionResponse::from).collect()),
    ))
}

/// `select {select}` from the owner's sessions that are not deleted, of the
/// project if one is given. Only the filters that are set go into the SQL:
/// each combination is then a prepared statement whose generic plan Postgres
/// reuses (docs/performance.md, change 20).
fn sessions_query(
    select: &str,
    owner_id: Uuid,
    project_id: Option<Uuid>,
) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new(format!(
        "select {select} from read.chat_sessions where owner_id = "
    ));
    query.push_bind(owner_id).push(" and not is_deleted");
    if let Some(project_id) = project_id {
        query.push(" and project_id = ").push_bind(project_id);
    }
    query
}

/// One chat session of the caller's.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = ChatSessionResponse), (status = 401),
    (status = 404, description = "No such session of yours"), (status = 422, description = "Id is not a UUID"),
    (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn get_session(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
) -> Result<axum::Json<ChatSessionResponse>> {
    Ok(axum::Json(load_session(&state, &user, token, id).await?))
}

/// Changes title, project, model or system prompt.
#[utoipa::path(patch, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = PatchChatSessionRequest, responses(
    (status = 200, body = ChatSessionResponse), (status = 400, description = "Body is not JSON"), (status = 401),
    (status = 404), (status = 409, description = "Changed concurrently"), (status = 422),
))]
pub async fn patch_session(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<PatchChatSessionRequest>,
) -> Result<(HeaderMap, axum::Json<ChatSessionResponse>)> {
    let model = match request.model {
        Some(None) => return Err(ApiError::invalid_field("model", "cannot be null")),
        Some(Some(model)) => {
            check_model(&state, &model)?;
            Some(model)
        }
        None => None,
    };
    if let Some(project_id) = request.project_id {
        check_project(&state, &user, project_id).await?;
    }
    let command = ChatSessionCommand::UpdateChatSession {
        actor: user.id,
        title: request.title,
        project_id: request.project_id,
        model,
        system_prompt: request.system_prompt,
        at: now(),
    };
    let (headers, executed) = run(&state, &user, &context, id, command).await?;
    Ok((headers, axum::Json(from_aggregate(id, &executed.aggregate))))
}

/// Deletes a chat session (its history stays in the event store).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 204, description = "Deleted"), (status = 401), (status = 404), (status = 409, description = "Changed concurrently"), (status = 422),
))]
pub async fn delete_session(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(StatusCode, HeaderMap)> {
    let command = ChatSessionCommand::DeleteChatSession {
        actor: user.id,
        at: now(),
    };
    let (headers, _) = run(&state, &user, &context, id, command).await?;
    Ok((StatusCode::NO_CONTENT, headers))
}
