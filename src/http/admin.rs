//! Administration and operations routes, each restricted to its roles:
//! `/v1/admin/users…` (admin), `/v1/analytics` (admin, analyst),
//! `/v1/debug/health/detailed` (admin, developer).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use chronicle_aggregates::user::UserCommand;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::commands::now;
use crate::http::auth::{await_projection, consistency_header, user_error};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, IdPath, Json, Query, RequestContext};
use crate::http::write::Page;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users", get(list_users))
        .route("/v1/admin/users/{id}/roles", post(set_roles))
        .route("/v1/admin/users/{id}/unlock", post(unlock_user))
        .route("/v1/analytics", get(crate::http::analytics::analytics))
        .route(
            "/v1/debug/health/detailed",
            get(crate::http::diagnostics::detailed_health),
        )
}

/// A user as administrators see it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AdminUser {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub active: bool,
    pub locked_until: Option<DateTime<Utc>>,
    pub failed_logins: i32,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListUsersQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRolesRequest {
    /// Replaces the set; `user` is always kept.
    #[schema(schema_with = crate::http::schema::known_roles)]
    pub roles: Vec<String>,
}

const SELECT_ADMIN_USER: &str =
    "select id, email, username, name, roles, active, locked_until, failed_logins, \
     created_at, last_login_at from read.users";

/// Every user, newest first.
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", security(("bearer" = [])), params(ListUsersQuery), responses(
    (status = 200, body = Vec<AdminUser>, headers(("X-Total-Count" = i64))), (status = 401), (status = 403),
))]
pub async fn list_users(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListUsersQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<AdminUser>>)> {
    user.require_any_role(&["admin"])?;
    let Page { limit, offset } = Page::new(query.limit, query.offset)?;
    let users: Vec<AdminUser> = sqlx::query_as(&format!(
        "{SELECT_ADMIN_USER} order by created_at desc, id limit $1 offset $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from read.users")
        .fetch_one(&state.pool)
        .await?;
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    Ok((headers, axum::Json(users)))
}

async fn admin_user(state: &AppState, id: Uuid) -> Result<AdminUser> {
    sqlx::query_as(&format!("{SELECT_ADMIN_USER} where id = $1"))
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound)
}

/// Replaces a user's roles; they take effect on the user's next request.
///
/// Requests are authorized with the roles in the users read model, and
/// [`administer`] answers only once the read model has the change: a
/// demoted administrator's very next request is refused, whatever roles
/// her access token still lists.
#[utoipa::path(post, path = "/v1/admin/users/{id}/roles", tag = "admin", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = SetRolesRequest, responses(
    (status = 200, body = AdminUser), (status = 403), (status = 404), (status = 422, description = "Unknown role"),
))]
pub async fn set_roles(
    State(state): State<AppState>,
    admin: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
    Json(request): Json<SetRolesRequest>,
) -> Result<(HeaderMap, axum::Json<AdminUser>)> {
    admin.require_any_role(&["admin"])?;
    let command = UserCommand::SetRoles {
        roles: request.roles,
        at: now(),
    };
    administer(&state, &admin, &context, id, command).await
}

/// Lifts a lockout.
#[utoipa::path(post, path = "/v1/admin/users/{id}/unlock", tag = "admin", security(("bearer" = [])), params(("id" = Uuid, Path)), responses(
    (status = 200, body = AdminUser), (status = 403), (status = 404),
))]
pub async fn unlock_user(
    State(state): State<AppState>,
    admin: AuthUser,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<(HeaderMap, axum::Json<AdminUser>)> {
    admin.require_any_role(&["admin"])?;
    administer(
        &state,
        &admin,
        &context,
        id,
        UserCommand::Unlock { at: now() },
    )
    .await
}

/// Runs `command` on user `id` on behalf of `admin`, and answers with the
/// user as administrators see it once the read model has the change.
async fn administer(
    state: &AppState,
    admin: &AuthUser,
    context: &RequestContext,
    id: Uuid,
    command: UserCommand,
) -> Result<(HeaderMap, axum::Json<AdminUser>)> {
    let executed = state
        .users
        .execute(
            &id.to_string(),
            command,
            context.metadata(admin.id, &admin.roles),
        )
        .await
        .map_err(|err| match user_error(err) {
            // No such account: for an administrator that is a 404.
            ApiError::InvalidCredentials => ApiError::NotFound,
            other => other,
        })?;
    await_projection(state, executed.token.as_ref()).await?;
    Ok((
        consistency_header(executed.token.as_ref()),
        axum::Json(admin_user(state, id).await?),
    ))
}
