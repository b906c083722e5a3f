//! `/v1/sessions/{id}/messages`: the conversation, oldest first.

use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{load_session, TokenUsage};
use crate::http::error::Result;
use crate::http::extract::{AuthUser, ConsistencyHeader, IdPath, Query};
use crate::http::write::{total_count, Page};
use crate::state::AppState;

/// One message of a conversation.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct MessageResponse {
    pub id: Uuid,
    /// `user`, `assistant` or `system`.
    pub role: String,
    pub content: String,
    /// The model that wrote it (assistant messages).
    pub model: Option<String>,
    /// Tokens of the exchange that produced it (assistant messages).
    pub usage: Option<TokenUsage>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    id: Uuid,
    role: String,
    content: String,
    model: Option<String>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    total_tokens: Option<i64>,
    created_at: DateTime<Utc>,
}

impl From<MessageRow> for MessageResponse {
    fn from(row: MessageRow) -> Self {
        let usage = row.total_tokens.map(|total_tokens| TokenUsage {
            prompt_tokens: row.prompt_tokens.unwrap_or(0),
            completion_tokens: row.completion_tokens.unwrap_or(0),
            total_tokens,
        });
        Self {
            id: row.id,
            role: row.role,
            content: row.content,
            model: row.model,
            usage,
            created_at: row.created_at,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoleFilter {
    User,
    Assistant,
    System,
}

impl RoleFilter {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::System => "system",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListMessagesQuery {
    /// Only messages of this role: `user`, `assistant` or `system`.
    #[param(inline)]
    pub role: Option<RoleFilter>,
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

/// A session's messages, oldest first.
#[utoipa::path(get, path = "/v1/sessions/{id}/messages", tag = "sessions", security(("bearer" = [])), params(("id" = Uuid, Path), ListMessagesQuery), responses(
    (status = 200, body = Vec<MessageResponse>, headers(("X-Total-Count" = i64))),
    (status = 401), (status = 404, description = "No such session of yours"),
    (status = 422, description = "Invalid filter, page or id"), (status = 503, description = "Your last write is not readable yet"),
))]
pub async fn list_messages(
    State(state): State<AppState>,
    user: AuthUser,
    token: ConsistencyHeader,
    IdPath(id): IdPath,
    Query(query): Query<ListMessagesQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<MessageResponse>>)> {
    let page = Page::new(query.limit, query.offset)?;
    load_session(&state, &user, token, id).await?;
    let role = query.role.map(RoleFilter::as_str);
    let mut page_query = messages_query(
        "id, role, content, model, prompt_tokens, completion_tokens, total_tokens, created_at",
        id,
        role,
    );
    page_query
        .push(" order by sequence limit ")
        .push_bind(page.limit)
        .push(" offset ")
        .push_bind(page.offset);
    let rows: Vec<MessageRow> = page_query.build_query_as().fetch_all(&state.pool).await?;
    let total: i64 = messages_query("count(*)", id, role)
        .build_query_scalar()
        .fetch_one(&state.pool)
        .await?;
    Ok((
        total_count(total),
        axum::Json(rows.into_iter().map(MessageResponse::from).collect()),
    ))
}

/// `select {select}` from the session's messages, of `role` if it is set.
/// Only the filters that are set go into the SQL: each combination is then a
/// prepared statement whose generic plan Postgres reuses (docs/performance.md,
/// change 20).
fn messages_query(
    select: &str,
    session_id: Uuid,
    role: Option<&'static str>,
) -> QueryBuilder<'static, Postgres> {
    let mut query = QueryBuilder::new(format!(
        "select {select} from read.chat_messages where session_id = "
    ));
    query.push_bind(session_id);
    if let Some(role) = role {
        query.push(" and role = ").push_bind(role);
    }
    query
}
