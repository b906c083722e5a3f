//! `/v1/auth`: register, log in (JSON or OAuth2 password form), who am I.

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use chronicle_aggregates::user::{user_id_for_email, User, UserCommand, UserError};
use chronicle_aggregates::validation::validate_username;
use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::commands::{now, Executed};
use crate::consistency::ConsistencyToken;
use crate::http::error::{infrastructure_error, ApiError, Result};
use crate::http::extract::{
    json_rejection, AuthUser, ConsistencyHeader, Json, RequestContext, CONSISTENCY_HEADER,
};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/me", get(me))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Log in with an email or a username.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    pub password: String,
}

/// OAuth2 resource-owner password form (`grant_type=password`).
#[derive(Debug, Deserialize)]
struct PasswordGrantForm {
    #[serde(default)]
    grant_type: Option<String>,
    username: String,
    password: String,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct UserResponse {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthResponse {
    pub user: UserResponse,
    pub access_token: String,
    /// Issued once refresh tokens exist; `null` until then.
    pub refresh_token: Option<String>,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

impl UserResponse {
    fn from_aggregate(id: Uuid, user: &User) -> Self {
        Self {
            id,
            email: user.email.clone(),
            username: user.username.clone(),
            name: user.name.clone(),
            roles: user.roles.clone(),
            created_at: user.created_at.unwrap_or_else(Utc::now),
        }
    }
}

fn user_error(err: AggregateError<UserError>) -> ApiError {
    match err {
        AggregateError::UserError(UserError::AlreadyRegistered) => {
            ApiError::Conflict("an account with this email already exists".into())
        }
        AggregateError::UserError(UserError::NotRegistered | UserError::InvalidCredentials) => {
            ApiError::InvalidCredentials
        }
        AggregateError::UserError(UserError::Invalid(errors)) => ApiError::invalid_fields(&errors),
        AggregateError::UserError(UserError::Service(message)) => {
            ApiError::Internal(anyhow::anyhow!("user services: {message}"))
        }
        other => infrastructure_error(other),
    }
}

fn with_token_header(token: Option<&ConsistencyToken>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = token.and_then(|t| HeaderValue::from_str(&t.to_string()).ok()) {
        headers.insert(CONSISTENCY_HEADER, value);
    }
    headers
}

fn auth_response(state: &AppState, id: Uuid, executed: &Executed<User>) -> Result<AuthResponse> {
    let user = &executed.aggregate;
    if let Some(token) = &executed.token {
        state.consistency.record_write(id, token);
    }
    Ok(AuthResponse {
        access_token: state.tokens.issue(id, &user.roles)?,
        refresh_token: None,
        token_type: "bearer",
        expires_in: state.tokens.ttl_secs(),
        user: UserResponse::from_aggregate(id, user),
    })
}

/// Creates an account and signs it in.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest, responses(
    (status = 201, body = AuthResponse),
    (status = 409, description = "Email or username taken"),
    (status = 422, description = "Invalid field or weak password"),
))]
pub async fn register(
    State(state): State<AppState>,
    context: RequestContext,
    Json(request): Json<RegisterRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<AuthResponse>)> {
    let user_id = user_id_for_email(&request.email);
    // Usernames are claimed before the user exists; the claim is released if
    // the registration does not go through. An invalid username is left to
    // the aggregate, which reports every invalid field at once.
    let claimed = match request.username.as_deref().map(validate_username) {
        Some(Ok(username)) => Some(claim_username(&state, &username, user_id).await?),
        _ => None,
    };
    let command = UserCommand::Register {
        email: request.email,
        username: request.username,
        name: request.name,
        password: request.password,
        at: now(),
    };
    let metadata = context.metadata(user_id, &[]);
    let executed = match state
        .users
        .execute(&user_id.to_string(), command, metadata)
        .await
    {
        Ok(executed) => executed,
        Err(err) => {
            if let Some(Some(username)) = claimed {
                release_username(&state, &username, user_id).await;
            }
            return Err(user_error(err));
        }
    };
    let response = auth_response(&state, user_id, &executed)?;
    Ok((
        StatusCode::CREATED,
        with_token_header(executed.token.as_ref()),
        axum::Json(response),
    ))
}

/// Claims `username` for `user_id`: `Some(name)` when this call took it,
/// `None` when the same user already held it, 409 when someone else does.
async fn claim_username(state: &AppState, username: &str, user_id: Uuid) -> Result<Option<String>> {
    let inserted = sqlx::query(
        "insert into username_claims (username, user_id) values ($1, $2) on conflict (username) do nothing",
    )
    .bind(username)
    .bind(user_id)
    .execute(&state.pool)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Some(username.to_string()));
    }
    let owner: Option<Uuid> =
        sqlx::query_scalar("select user_id from username_claims where username = $1")
            .bind(username)
            .fetch_optional(&state.pool)
            .await?;
    match owner {
        Some(owner) if owner == user_id => Ok(None),
        _ => Err(ApiError::Conflict("this username is taken".into())),
    }
}

async fn release_username(state: &AppState, username: &str, user_id: Uuid) {
    let released = sqlx::query("delete from username_claims where username = $1 and user_id = $2")
        .bind(username)
        .bind(user_id)
        .execute(&state.pool)
        .await;
    if let Err(err) = released {
        tracing::warn!(error = %err, "could not release a username claim");
    }
}

/// Exchanges credentials for tokens. JSON `{email|username, password}` or the
/// OAuth2 form `grant_type=password&username=…&password=…`.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body(content(
    (LoginRequest = "application/json"),
    (LoginRequest = "application/x-www-form-urlencoded")
)), responses(
    (status = 200, body = AuthResponse),
    (status = 401, description = "INVALID_CREDENTIALS, the same for an unknown user"),
))]
pub async fn login(
    State(state): State<AppState>,
    context: RequestContext,
    request: Request,
) -> Result<(HeaderMap, axum::Json<AuthResponse>)> {
    let (login, password) = read_login(request, &state).await?;
    let Some(user_id) = resolve_login(&state, &login).await? else {
        state.passwords.verify_dummy(&password).await;
        return Err(ApiError::InvalidCredentials);
    };
    let key = user_id.to_string();
    let user = state.users.load(&key).await.map_err(user_error)?;
    if !user.registered {
        state.passwords.verify_dummy(&password).await;
        return Err(ApiError::InvalidCredentials);
    }
    let metadata = context.metadata(user_id, &user.roles);
    let command = UserCommand::LogIn {
        password,
        at: now(),
    };
    let executed = state
        .users
        .execute(&key, command, metadata)
        .await
        .map_err(user_error)?;
    let response = auth_response(&state, user_id, &executed)?;
    Ok((
        with_token_header(executed.token.as_ref()),
        axum::Json(response),
    ))
}

async fn read_login(request: Request, state: &AppState) -> Result<(String, String)> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let axum::Form(form) = axum::Form::<PasswordGrantForm>::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::Validation {
                message: rejection.body_text(),
                details: Vec::new(),
            })?;
        if form.grant_type.as_deref().is_some_and(|g| g != "password") {
            return Err(ApiError::invalid_field(
                "grant_type",
                "only `password` is supported",
            ));
        }
        return Ok((form.username, form.password));
    }
    let request: LoginRequest = axum::Json::from_request(request, state)
        .await
        .map(|axum::Json(body)| body)
        .map_err(json_rejection)?;
    match (request.email, request.username) {
        (Some(email), None) => Ok((email, request.password)),
        (None, Some(username)) => Ok((username, request.password)),
        _ => Err(ApiError::invalid_field(
            "email",
            "give exactly one of `email` or `username`",
        )),
    }
}

/// The user id for an email or username, if such an account may exist.
async fn resolve_login(state: &AppState, login: &str) -> Result<Option<Uuid>> {
    if login.contains('@') {
        return Ok(Some(user_id_for_email(login)));
    }
    let username = login.trim().to_ascii_lowercase();
    Ok(
        sqlx::query_scalar("select user_id from username_claims where username = $1")
            .bind(username)
            .fetch_optional(&state.pool)
            .await?,
    )
}

/// The signed-in user.
#[utoipa::path(get, path = "/v1/auth/me", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, body = UserResponse),
    (status = 401, description = "AUTH_REQUIRED or INVALID_TOKEN"),
))]
pub async fn me(
    State(state): State<AppState>,
    user: AuthUser,
    ConsistencyHeader(token): ConsistencyHeader,
) -> Result<axum::Json<UserResponse>> {
    state
        .consistency
        .wait("users", Some(user.id), token)
        .await
        .map_err(|err| ApiError::Unavailable(err.to_string()))?;
    let user: Option<UserResponse> = sqlx::query_as(
        "select id, email, username, name, roles, created_at from read.users where id = $1",
    )
    .bind(user.id)
    .fetch_optional(&state.pool)
    .await?;
    user.map(axum::Json).ok_or(ApiError::NotFound)
}
