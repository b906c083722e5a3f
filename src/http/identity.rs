//! Who is calling, resolved once per request before any handler runs: an
//! RS256 access token whose session and account are still live, or an API
//! key. Rate limits are counted here too, per client IP (before any
//! credential is looked up) and per user. Roles come from the users read
//! model on every request, never from the token.

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
             where k.key_hash = $1 and u.active and (k.expires_at is null or k.expires_at > now())",
        )
        .bind(token_hash(credential))
        .fetch_optional(&state.pool)
        .await?;
        return Ok(row.map(|(id, roles)| AuthUser {
            id,
            roles,
            auth_session_id: None,
        }));
    }
    let Ok(claims) = state.tokens.verify_cached(credential) else {
        return Ok(None);
    };
    // A signature alone is not enough: the session must not be revoked
    // (logout, reuse, password change) and the account must be active.
    // The roles come from the same row, not from the token: a token
    // outlives a demotion by up to its lifetime, the read model does not
    // (the role change waits for it before answering). The answer is cached
    // for at most a second, and forgotten at once when a request of this
    // process may have revoked, deactivated or demoted (`crate::auth::cache`).
    let cache = state.tokens.cache();
    if let Some(roles) = cache.live_roles(claims.sid, claims.sub) {
        return Ok(Some(AuthUser {
            id: claims.sub,
            roles,
            auth_session_id: Some(claims.sid),
        }));
    }
    let generation = cache.generation();
    let roles: Option<Vec<String>> = sqlx::query_scalar(
        "select u.roles from read.auth_sessions s join read.users u on u.id = s.user_id \
         where s.id = $1 and s.user_id = $2 and s.revoked_at is null and u.active",
    )
    .bind(claims.sid)
    .bind(claims.sub)
    .fetch_optional(&state.pool)
    .await?;
    if let Some(roles) = &roles {
        cache.remember_live(claims.sid, claims.sub, roles.clone(), generation);
    }
    Ok(roles.map(|roles| AuthUser {
        id: claims.sub,
        roles,
        auth_session_id: Some(claims.sid),
    }))
}

/// Route prefixes whose state-changing requests can revoke a session
/// (logout, refresh-token reuse, password change), deactivate an account or
/// change roles. After any such request (whatever its answer), the cache of
/// live sessions is emptied before the answer leaves, so the change holds
/// from the caller's very next request on this replica.
const REVOKING_PREFIXES: [&str; 3] = ["/v1/auth/", "/v1/admin/", "/v1/user/"];

/// Empties the live-session cache when dropped: after the request's handler
/// finished (before the answer is sent), or when the request was abandoned
/// (a revocation that still commits after that is bounded by the TTL).
struct InvalidateOnDrop(AppState);

impl Drop for InvalidateOnDrop {
    fn drop(&mut self) {
        self.0.tokens.cache().invalidate();
    }
}

fn may_revoke(method: &axum::http::Method, path: &str) -> bool {
    !method.is_safe() && REVOKING_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Paths no limit applies to and no credential is looked up for: a load
/// balancer's liveness probe and a Prometheus scraper must never be locked
/// out by the traffic they share an address with (behind a proxy, every
/// client has the proxy's address), and both answer from memory, so they
/// cost nothing worth limiting.
const UNLIMITED_PATHS: [&str; 2] = ["/health", "/metrics"];

fn client_ip(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
        .unwrap_or_default()
}

/// Middleware: enforces the rate limits and resolves the identity.
///
/// The per-IP limits are counted first, on every path, before any
/// credential is looked at: a request refused by them costs no database
/// query, whatever `Authorization` or `X-API-Key` it carries.
pub async fn resolve_identity(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    if UNLIMITED_PATHS.contains(&path.as_str()) {
        request.extensions_mut().insert(Identity::Anonymous);
        return next.run(request).await;
    }
    let ip = client_ip(&request);
    let by_address = ip_limits(&state, &path, &ip);
    if let Some(refused) = by_address.filter(|d| !d.allowed) {
        return rate_limited(refused);
    }
    let identity = match presented_credential(request.headers()) {
        None => Identity::Anonymous,
        Some(credential) if credential.is_empty() => Identity::Invalid,
        Some(credential) => identify(&state, &credential).await,
    };
    let by_user = match &identity {
        Identity::User(user) => check(
            &state,
            format!("user:{}", user.id),
            state.settings.rate_limit.per_user_per_minute,
        ),
        _ => None,
    };
    let decision = tightest([by_address, by_user]);
    if let Some(refused) = decision.filter(|d| !d.allowed) {
        return rate_limited(refused);
    }
    request.extensions_mut().insert(identity);
    // Dropped after the handler is done, or when the client leaves mid-way.
    let _invalidate = may_revoke(request.method(), &path).then(|| InvalidateOnDrop(state.clone()));
    let mut response = next.run(request).await;
    if let Some(decision) = decision {
        add_rate_headers(response.headers_mut(), decision);
    }
    response
}

fn rate_limited(decision: Decision) -> Response {
    metrics::counter!("chronicle_rate_limited_total").increment(1);
    let mut response = ApiError::RateLimited {
        retry_after_secs: decision.reset_secs,
    }
    .into_response();
    add_rate_headers(response.headers_mut(), decision);
    response
}

/// Counts the request against the per-IP limits that apply to `path`;
/// returns the tightest.
fn ip_limits(state: &AppState, path: &str, ip: &str) -> Option<Decision> {
    let limits = state.settings.rate_limit;
    let general = check(state, format!("ip:{ip}"), limits.per_ip_per_minute);
    let auth = AUTH_ROUTES
        .contains(&path)
        .then(|| check(state, format!("auth:{ip}"), limits.auth_per_ip_per_minute))
        .flatten();
    tightest([general, auth])
}

/// One limit; `None` when it is switched off (0).
fn check(state: &AppState, key: String, limit: u32) -> Option<Decision> {
    (limit > 0).then(|| state.rate_limiter.check(key, limit))
}

/// A refusal first, then the one with the fewest requests left.
fn tightest(decisions: impl IntoIterator<Item = Option<Decision>>) -> Option<Decision> {
    decisions
        .into_iter()
        .flatten()
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
