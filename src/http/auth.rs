//! `/v1/auth`: register, log in (JSON or OAuth2 password form), refresh,
//! log out, change password, verify a token, who am I.
//!
//! Every login opens an `AuthSession` (one refresh-token family). Answers
//! that hand out tokens wait until the session is in the read model, because
//! every request checks it there; answers that revoke wait the same way, so a
//! revoked token fails from the very next request.

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use chronicle_aggregates::auth_session::{AuthSessionCommand, AuthSessionError, AuthSessionEvent};
use chronicle_aggregates::user::{user_id_for_email, User, UserCommand, UserError, UserEvent};
use chronicle_aggregates::validation::validate_username;
use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::refresh_tokens;
use crate::commands::now;
use crate::consistency::ConsistencyToken;
use crate::http::error::{infrastructure_error, is_sqlstate, ApiError, Result};
use crate::http::extract::{
    json_rejection, AuthUser, ConsistencyHeader, Json, RequestContext, CONSISTENCY_HEADER,
};
use crate::http::identity::{identify, Identity};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/change-password", post(change_password))
        .route("/v1/auth/verify-token", post(verify_token))
        .route("/v1/auth/me", get(me))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// One `@`, a dotted domain, no whitespace or control characters inside;
    /// spaces, tabs and line breaks around it are trimmed; compared lowercased.
    #[schema(
        min_length = 1,
        max_length = 254,
        pattern = "^[ \\t\\n\\r]*[^@\\s\\x00-\\x1f\\x7f-\\x9f]+@([^@\\s\\x00-\\x1f\\x7f-\\x9f.]+\\.)+[^@\\s\\x00-\\x1f\\x7f-\\x9f.]+[ \\t\\n\\r]*$"
    )]
    pub email: String,
    /// 8–128 characters, not one of the most common passwords.
    #[schema(schema_with = crate::http::schema::new_password)]
    pub password: String,
    /// 3–32 letters, digits, `_`, `.` or `-`; stored lowercased.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: Option<String>,
    /// At most 100 characters; blank is no name.
    #[serde(default)]
    #[schema(max_length = 100)]
    pub name: Option<String>,
}

/// The JSON body of a login: an email or a username (exactly one of them)
/// and the password. Parsed as [`LoginFields`]; this type is its schema.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum LoginRequest {
    Email(EmailLogin),
    Username(UsernameLogin),
}

#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EmailLogin {
    email: String,
    password: String,
}

#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UsernameLogin {
    username: String,
    password: String,
}

/// Log in with an email or a username.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginFields {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    username: Option<String>,
    password: String,
}

/// OAuth2 resource-owner password form (`grant_type=password`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordGrantForm {
    /// Only `password` is supported.
    #[serde(default)]
    #[schema(nullable = false, pattern = "^password$")]
    grant_type: Option<String>,
    /// An email or a username.
    username: String,
    password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    #[serde(default)]
    pub refresh_token: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// 8–128 characters, not one of the most common passwords.
    #[schema(schema_with = crate::http::schema::new_password)]
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyTokenRequest {
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyTokenResponse {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Value>,
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
    /// Opaque, 7 days, rotated on every use.
    pub refresh_token: String,
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

/// Maps the User aggregate's refusals to answers.
pub fn user_error(err: AggregateError<UserError>) -> ApiError {
    match err {
        AggregateError::UserError(UserError::AlreadyRegistered) => {
            ApiError::Conflict("an account with this email already exists".into())
        }
        AggregateError::UserError(
            UserError::NotRegistered | UserError::InvalidCredentials | UserError::Deactivated,
        ) => ApiError::InvalidCredentials,
        AggregateError::UserError(UserError::Locked { until }) => ApiError::AccountLocked {
            retry_after_secs: (until - Utc::now()).num_seconds().max(1) as u64,
        },
        AggregateError::UserError(UserError::Invalid(errors)) => ApiError::invalid_fields(&errors),
        AggregateError::UserError(UserError::Service(message)) => {
            ApiError::Internal(anyhow::anyhow!("user services: {message}"))
        }
        AggregateError::UnexpectedError(ref cause)
            if is_sqlstate(cause.as_ref(), USERNAME_TAKEN_SQLSTATE) =>
        {
            ApiError::Conflict("this username is taken".into())
        }
        other => infrastructure_error(other),
    }
}

/// SQLSTATE raised by the `events` trigger of migration 0310 when a User
/// event would give a user a username that someone else holds.
const USERNAME_TAKEN_SQLSTATE: &str = "CU409";

fn auth_session_error(err: AggregateError<AuthSessionError>) -> ApiError {
    match err {
        AggregateError::UserError(_) => ApiError::InvalidToken,
        other => infrastructure_error(other),
    }
}

pub fn consistency_header(token: Option<&ConsistencyToken>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = token.and_then(|t| HeaderValue::from_str(&t.to_string()).ok()) {
        headers.insert(CONSISTENCY_HEADER, value);
    }
    headers
}

/// Waits until the read models reflect `token`: security decisions read them.
pub async fn await_projection(state: &AppState, token: Option<&ConsistencyToken>) -> Result<()> {
    let Some(token) = token else { return Ok(()) };
    let Some(projection) = crate::consistency::projection_for(&token.aggregate_type) else {
        return Ok(());
    };
    state
        .consistency
        .wait(projection, None, Some(token.clone()))
        .await
        .map_err(|err| ApiError::Unavailable(err.to_string()))
}

/// Opens a session for `user` and issues its first token pair.
async fn open_auth_session(
    state: &AppState,
    user_id: Uuid,
    user: &User,
    context: &RequestContext,
) -> Result<AuthResponse> {
    let auth_session_id = Uuid::new_v4();
    let executed = state
        .auth_sessions
        .execute(
            &auth_session_id.to_string(),
            AuthSessionCommand::Start { user_id, at: now() },
            context.metadata(user_id, &user.roles),
        )
        .await
        .map_err(auth_session_error)?;
    let refresh_token = refresh_tokens::new_token("rt_");
    let expires_at = now() + state.settings.auth.refresh_token_ttl;
    refresh_tokens::store(&state.pool, &refresh_token, auth_session_id, 1, expires_at).await?;
    await_projection(state, executed.token.as_ref()).await?;
    token_pair(state, user_id, auth_session_id, user, refresh_token)
}

fn token_pair(
    state: &AppState,
    user_id: Uuid,
    auth_session_id: Uuid,
    user: &User,
    refresh_token: String,
) -> Result<AuthResponse> {
    Ok(AuthResponse {
        access_token: state.tokens.issue(user_id, auth_session_id, &user.roles)?,
        refresh_token,
        token_type: "bearer",
        expires_in: state.tokens.ttl_secs(),
        user: UserResponse::from_aggregate(user_id, user),
    })
}

/// Creates an account and signs it in.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest, responses(
    (status = 201, body = AuthResponse),
    (status = 409, description = "Email or username taken"),
    (status = 422, description = "Invalid field or weak password"),
    (status = 429, description = "Too many attempts from this address"),
))]
pub async fn register(
    State(state): State<AppState>,
    context: RequestContext,
    Json(request): Json<RegisterRequest>,
) -> Result<(StatusCode, HeaderMap, axum::Json<AuthResponse>)> {
    let user_id = user_id_for_email(&request.email);
    // A provisional claim first, so that a taken username is refused before
    // the password is hashed (see `claim_username`). An invalid username is
    // left to the aggregate, which reports every invalid field at once.
    let claimed = match request.username.as_deref().map(validate_username) {
        Some(Ok(username)) => claim_username(&state, &username, user_id).await?,
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
            if let Some(username) = claimed {
                release_username(&state, &username, user_id).await;
            }
            return Err(user_error(err));
        }
    };
    await_projection(&state, executed.token.as_ref()).await?;
    let response = open_auth_session(&state, user_id, &executed.aggregate, &context).await?;
    if let Some(token) = &executed.token {
        state.consistency.record_write(user_id, token);
    }
    Ok((
        StatusCode::CREATED,
        consistency_header(executed.token.as_ref()),
        axum::Json(response),
    ))
}

/// How long a provisional username claim holds before another user may
/// take it over. Longer than any request can live (the request timeout is
/// 30 s by default), so it only ever frees claims of requests that died.
pub const USERNAME_CLAIM_GRACE_SECS: f64 = 60.0;

/// Claims `username` for `user_id` before the event that gives it to them:
/// `Some(name)` when this call holds a provisional claim it should release
/// if the command fails, `None` when the user already has this username,
/// 409 when someone else holds it.
///
/// A claim is provisional until the user's `UserRegistered` or
/// `ProfileUpdated` with that username is committed: the `events` trigger of
/// migration 0310 confirms it in the very transaction that stores the event,
/// and refuses the event if another user holds the name. So a claim left
/// behind by a request that was cancelled between claim and commit (client
/// gone, timeout, crash) is never confirmed, and once older than
/// [`USERNAME_CLAIM_GRACE_SECS`] the next claimant takes it over here, in
/// the same statement. Should the first request still commit after all, its
/// event is refused (409) instead of giving one name to two users.
pub async fn claim_username(
    state: &AppState,
    username: &str,
    user_id: Uuid,
) -> Result<Option<String>> {
    let taken: Option<Uuid> = sqlx::query_scalar(
        "insert into username_claims as c (username, user_id) values ($1, $2) \
         on conflict (username) do update set user_id = excluded.user_id, claimed_at = now() \
           where not c.confirmed \
             and (c.user_id = excluded.user_id \
                  or c.claimed_at < now() - make_interval(secs => $3)) \
         returning user_id",
    )
    .bind(username)
    .bind(user_id)
    .bind(USERNAME_CLAIM_GRACE_SECS)
    .fetch_optional(&state.pool)
    .await?;
    if taken.is_some() {
        return Ok(Some(username.to_string()));
    }
    let owner: Option<Uuid> =
        sqlx::query_scalar("select user_id from username_claims where username = $1 and confirmed")
            .bind(username)
            .fetch_optional(&state.pool)
            .await?;
    match owner {
        Some(owner) if owner == user_id => Ok(None),
        _ => Err(ApiError::Conflict("this username is taken".into())),
    }
}

/// Gives up a provisional claim after the command that needed it failed.
/// A confirmed claim is never released here: the event store owns it.
pub async fn release_username(state: &AppState, username: &str, user_id: Uuid) {
    let released = sqlx::query(
        "delete from username_claims where username = $1 and user_id = $2 and not confirmed",
    )
    .bind(username)
    .bind(user_id)
    .execute(&state.pool)
    .await;
    if let Err(err) = released {
        tracing::warn!(error = %err, "could not release a username claim");
    }
}

/// Exchanges credentials for tokens. JSON `{email|username, password}` or the
/// OAuth2 form `grant_type=password&username=…&password=…`. Five wrong
/// passwords in a row lock the account for 15 minutes (423).
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body(content(
    (LoginRequest = "application/json"),
    (PasswordGrantForm = "application/x-www-form-urlencoded")
)), responses(
    (status = 200, body = AuthResponse),
    (status = 401, description = "INVALID_CREDENTIALS, the same for an unknown user"),
    (status = 423, description = "ACCOUNT_LOCKED"),
    (status = 429, description = "Too many attempts from this address"),
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
    if executed
        .events
        .iter()
        .any(|event| matches!(event, UserEvent::LoginFailed { .. }))
    {
        return Err(ApiError::InvalidCredentials);
    }
    // Requests are authorized with the roles in the users read model: wait
    // until it has every change up to this login (a role granted just
    // before it, say), so the new token's first request sees them.
    await_projection(&state, executed.token.as_ref()).await?;
    let response = open_auth_session(&state, user_id, &executed.aggregate, &context).await?;
    if let Some(token) = &executed.token {
        state.consistency.record_write(user_id, token);
    }
    Ok((
        consistency_header(executed.token.as_ref()),
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
    let request: LoginFields = axum::Json::from_request(request, state)
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
    // Only a confirmed claim names a user; a provisional one may never be.
    Ok(
        sqlx::query_scalar("select user_id from username_claims where username = $1 and confirmed")
            .bind(username)
            .fetch_optional(&state.pool)
            .await?,
    )
}

/// Spends a refresh token for a new pair. A spent token presented again
/// revokes its whole family (401 `TOKEN_REUSED`).
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest, responses(
    (status = 200, body = AuthResponse),
    (status = 401, description = "INVALID_TOKEN, or TOKEN_REUSED (the family is now revoked)"),
))]
pub async fn refresh(
    State(state): State<AppState>,
    context: RequestContext,
    Json(request): Json<RefreshRequest>,
) -> Result<axum::Json<AuthResponse>> {
    let stored = refresh_tokens::find(&state.pool, &request.refresh_token)
        .await?
        .filter(|stored| stored.expires_at > Utc::now())
        .ok_or(ApiError::InvalidToken)?;
    let session_key = stored.auth_session_id.to_string();
    let session = state
        .auth_sessions
        .load(&session_key)
        .await
        .map_err(auth_session_error)?;
    let user_id = session.user_id.ok_or(ApiError::InvalidToken)?;
    let user = state
        .users
        .load(&user_id.to_string())
        .await
        .map_err(user_error)?;
    if !user.is_active() {
        return Err(ApiError::InvalidToken);
    }
    let executed = state
        .auth_sessions
        .execute(
            &session_key,
            AuthSessionCommand::Refresh {
                generation: stored.generation,
                at: now(),
            },
            context.metadata(user_id, &user.roles),
        )
        .await
        .map_err(auth_session_error)?;
    if executed
        .events
        .iter()
        .any(|event| matches!(event, AuthSessionEvent::RefreshTokenReused { .. }))
    {
        tracing::warn!(auth_session.id = %stored.auth_session_id, "refresh token reuse: family revoked");
        await_projection(&state, executed.token.as_ref()).await?;
        return Err(ApiError::TokenReused);
    }
    let refresh_token = refresh_tokens::new_token("rt_");
    let expires_at = now() + state.settings.auth.refresh_token_ttl;
    refresh_tokens::store(
        &state.pool,
        &refresh_token,
        stored.auth_session_id,
        executed.aggregate.generation,
        expires_at,
    )
    .await?;
    Ok(axum::Json(token_pair(
        &state,
        user_id,
        stored.auth_session_id,
        &user,
        refresh_token,
    )?))
}

/// Revokes `auth_session_id` for `reason`, as `user`, and waits until it is effective.
pub async fn revoke_auth_session(
    state: &AppState,
    auth_session_id: Uuid,
    user: &AuthUser,
    context: &RequestContext,
    reason: &str,
) -> Result<()> {
    let executed = state
        .auth_sessions
        .execute(
            &auth_session_id.to_string(),
            AuthSessionCommand::Revoke {
                reason: reason.to_string(),
                at: now(),
            },
            context.metadata(user.id, &user.roles),
        )
        .await
        .map_err(auth_session_error)?;
    if let Some(token) = &executed.token {
        state.consistency.record_write(user.id, token);
    }
    await_projection(state, executed.token.as_ref()).await
}

/// Revokes the caller's session: its refresh tokens and this access token stop working.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])), request_body(content = Option<LogoutRequest>), responses(
    (status = 204, description = "Logged out"),
    (status = 400, description = "Body is not JSON"), (status = 401, description = "AUTH_REQUIRED or INVALID_TOKEN"),
    (status = 422, description = "Body is not an object with a string `refresh_token`"),
))]
pub async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode> {
    let request: LogoutRequest = crate::http::extract::optional_json(&headers, &body)?;
    let mut sessions = Vec::from_iter(user.auth_session_id);
    if let Some(token) = request.refresh_token {
        // Only a family of the caller's own can be named this way.
        if let Some(stored) = refresh_tokens::find(&state.pool, &token).await? {
            let owner = state
                .auth_sessions
                .load(&stored.auth_session_id.to_string())
                .await
                .map_err(auth_session_error)?
                .user_id;
            if owner == Some(user.id) && !sessions.contains(&stored.auth_session_id) {
                sessions.push(stored.auth_session_id);
            }
        }
    }
    for auth_session_id in sessions {
        revoke_auth_session(&state, auth_session_id, &user, &context, "logout").await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Changes the password; every other session of the user is revoked, and
/// the API key too. A wrong current password counts towards the lockout
/// like a failed login; a locked account answers 423.
#[utoipa::path(post, path = "/v1/auth/change-password", tag = "auth", security(("bearer" = [])), request_body = ChangePasswordRequest, responses(
    (status = 204, description = "Changed"),
    (status = 401, description = "INVALID_CREDENTIALS: the current password is wrong (counts towards the lockout); AUTH_REQUIRED or INVALID_TOKEN"),
    (status = 422, description = "The new password is too weak"),
    (status = 423, description = "ACCOUNT_LOCKED: too many wrong passwords"),
))]
pub async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    context: RequestContext,
    Json(request): Json<ChangePasswordRequest>,
) -> Result<StatusCode> {
    let command = UserCommand::ChangePassword {
        current_password: request.current_password,
        new_password: request.new_password,
        at: now(),
    };
    let executed = state
        .users
        .execute(
            &user.id.to_string(),
            command,
            context.metadata(user.id, &user.roles),
        )
        .await
        .map_err(user_error)?;
    if executed
        .events
        .iter()
        .any(|event| matches!(event, UserEvent::LoginFailed { .. }))
    {
        return Err(ApiError::InvalidCredentials);
    }
    // The new password is committed: what it revokes must be revoked even if
    // the client leaves now, so a task that owns what it needs does it.
    let revocations =
        tokio::spawn(async move { revoke_after_password_change(&state, &user, &context).await });
    revocations
        .await
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("revocations task: {err}")))??;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the API key and every session but the caller's, and waits until
/// the revocations are in the read model.
async fn revoke_after_password_change(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
) -> Result<()> {
    sqlx::query("delete from api_keys where user_id = $1")
        .bind(user.id)
        .execute(&state.pool)
        .await?;
    let others: Vec<Uuid> = sqlx::query_scalar(
        "select id from read.auth_sessions where user_id = $1 and revoked_at is null \
           and ($2::uuid is null or id <> $2)",
    )
    .bind(user.id)
    .bind(user.auth_session_id)
    .fetch_all(&state.pool)
    .await?;
    for auth_session_id in others {
        revoke_auth_session(state, auth_session_id, user, context, "password changed").await?;
    }
    Ok(())
}

/// Whether a token is currently accepted (signature, expiry, session, account).
#[utoipa::path(post, path = "/v1/auth/verify-token", tag = "auth", request_body = VerifyTokenRequest, responses(
    (status = 200, body = VerifyTokenResponse),
))]
pub async fn verify_token(
    State(state): State<AppState>,
    Json(request): Json<VerifyTokenRequest>,
) -> Result<axum::Json<VerifyTokenResponse>> {
    let live = matches!(identify(&state, &request.token).await, Identity::User(_));
    let claims = live
        .then(|| state.tokens.verify(&request.token).ok())
        .flatten()
        .and_then(|claims| serde_json::to_value(claims).ok());
    Ok(axum::Json(VerifyTokenResponse {
        valid: claims.is_some(),
        claims,
    }))
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
