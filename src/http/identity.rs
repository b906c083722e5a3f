//! Who is calling, resolved once per request before any handler runs: an
//! RS256 access token whose session and account are still live, or an API
//! key. Rate limits are counted here too, per client IP and per user.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::auth::refresh_tokens::token_hash;
use crate::http::error::ApiError;
use crate::http::extract::AuthUser;
use crate::http::rate_limit::Decision;
use crate::state::AppState;

/// What the credentials of a request turned out to be.
#[derive(Debug, Clone)]
pub enum Identity {
    Anonymous,
    User(AuthUser),
    Invalid,
    /// The check itself failed (database down): not the caller's fault.
    Unknown,
}

/// API keys look like `ck_…`.
pub const API_KEY_PREFIX: &str = "ck_";

/// Routes where guessing is the attack: a much smaller per-IP budget.
const AUTH_ROUTES: [&str; 4] = [
    "/v1/auth/register",
    "/v1/auth/login",
    "/v1/auth/refresh",
    "/v1/auth/verify-token",
];

fn presented_credential(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// Resolves a bearer token or API key to a live user.
pub async fn identify(state: &AppState, credential: &str) -> Identity {
    match resolve(state, credential).await {
        Ok(Some(user)) => Identity::User(user),
        Ok(None) => Identity::Invalid,
        Err(err) => {
            tracing::error!(error = %err, "could not check credentials");
            Identity::Unknown
        }
    }
}

async fn resolve(state: &AppState, credential: &str) -> Result<Option<AuthUser>, sqlx::Error> {
    if credential.starts_with(API_KEY_PREFIX) {
        let row: Option<(Uuid, Vec<String>)> = sqlx::query_as(
            "select u.id, u.roles from api_keys k join read.users u on u.id = k.user_id \
             where k.key_hash = $1 and u.active",
        )
        .bind(token_hash(credential))
        .fetch_optional(&state.pool)
        .await?;
        return Ok(row.map(|(id, roles)| AuthUser {
            id,
            roles,
            session_id: None,
        }));
    }
    let Ok(claims) = state.tokens.verify(credential) else {
        return Ok(None);
    };
    // A signature alone is not enough: the session must not be revoked
    // (logout, reuse, password change) and the account must be active.
    let live: bool = sqlx::query_scalar(
        "select exists(select 1 from read.auth_sessions s join read.users u on u.id = s.user_id \
         where s.id = $1 and s.user_id = $2 and s.revoked_at is null and u.active)",
    )
    .bind(claims.sid)
    .bind(claims.sub)
    .fetch_one(&state.pool)
    .await?;
    Ok(live.then_some(AuthUser {
        id: claims.sub,
        roles: claims.roles,
        session_id: Some(claims.sid),
    }))
}

/// Middleware: resolves the identity and enforces the rate limits of `/v1` routes.
pub async fn resolve_identity(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let identity = match presented_credential(request.headers()) {
        None => Identity::Anonymous,
        Some(credential) if credential.is_empty() => Identity::Invalid,
        Some(credential) => identify(&state, &credential).await,
    };
    let path = request.uri().path().to_string();
    let decision = if path.starts_with("/v1/") {
        let ip = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_default();
        rate_limit(&state, &path, &ip, &identity)
    } else {
        None
    };
    if let Some(decision) = decision.filter(|d| !d.allowed) {
        metrics::counter!("chronicle_rate_limited_total").increment(1);
        let mut response = ApiError::RateLimited {
            retry_after_secs: decision.reset_secs,
        }
        .into_response();
        add_rate_headers(response.headers_mut(), decision);
        return response;
    }
    request.extensions_mut().insert(identity);
    let mut response = next.run(request).await;
    if let Some(decision) = decision {
        add_rate_headers(response.headers_mut(), decision);
    }
    response
}

/// Counts the request against every limit that applies; returns the tightest.
fn rate_limit(state: &AppState, path: &str, ip: &str, identity: &Identity) -> Option<Decision> {
    let limits = state.settings.rate_limit;
    let mut checks = vec![(format!("ip:{ip}"), limits.per_ip_per_minute)];
    if AUTH_ROUTES.contains(&path) {
        checks.push((format!("auth:{ip}"), limits.auth_per_ip_per_minute));
    }
    if let Identity::User(user) = identity {
        checks.push((format!("user:{}", user.id), limits.per_user_per_minute));
    }
    checks
        .into_iter()
        .filter(|(_, limit)| *limit > 0)
        .map(|(key, limit)| state.rate_limiter.check(key, limit))
        .min_by_key(|decision| (decision.allowed, decision.remaining))
}

fn add_rate_headers(headers: &mut HeaderMap, decision: Decision) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(decision.remaining),
    );
    headers.insert("x-ratelimit-reset", HeaderValue::from(decision.reset_secs));
}
