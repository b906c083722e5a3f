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
pub(crate) const UNLIMITED_PATHS: [&str; 2] = ["/health", "/metrics"];

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

/// Proptest-driven fuzzing of how credentials are read from a request
/// (docs/testing.md, "Parsers of untrusted input"); what is read is then
/// verified by `crate::auth::tokens` (fuzzed there) or hashed (an API key).
#[cfg(test)]
mod fuzz {
    use axum::http::Uri;
    use proptest::prelude::*;

    use super::*;
    use crate::http::extract::fuzz::{config, corpus};
    use crate::http::ws::FeedQuery;

    fn headers(authorization: Option<&[u8]>, api_key: Option<&[u8]>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [("authorization", authorization), ("x-api-key", api_key)] {
            if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
                headers.insert(name, value);
            }
        }
        headers
    }

    /// A credential as a client could send it: visible ASCII, no spaces.
    fn credential() -> impl Strategy<Value = String> {
        prop_oneof![
            "[!-~]{1,80}",
            "ck_[A-Za-z0-9_-]{1,60}",
            "eyJ[A-Za-z0-9_.-]{1,80}"
        ]
    }

    fn header_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            "(Bearer|bearer|BEARER|Basic|Token|)[ \t]{0,3}[!-~ \t]{0,40}"
                .prop_map(String::into_bytes),
            any::<String>().prop_map(String::into_bytes),
        ])
    }

    /// Every byte as `%XX`: how a client may put anything in a query.
    fn percent_encoded(text: &str) -> String {
        text.bytes().map(|byte| format!("%{byte:02X}")).collect()
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any `Authorization` and `X-API-Key` bytes: a credential taken
        /// verbatim (trimmed) from one of the headers, or none; never a panic.
        #[test]
        fn any_credential_headers_are_read_or_ignored_without_panicking(
            authorization in header_bytes(),
            api_key in header_bytes(),
        ) {
            let headers = headers(authorization.as_deref(), api_key.as_deref());
            if let Some(credential) = presented_credential(&headers) {
                let source = if headers.contains_key(header::AUTHORIZATION) {
                    &headers[header::AUTHORIZATION]
                } else {
                    &headers["x-api-key"]
                };
                let source = source.to_str().unwrap();
                prop_assert!(source.contains(&credential));
                prop_assert_eq!(credential.trim(), credential.as_str());
            }
        }

        /// A bearer token (any case of the scheme, any spacing) and an API
        /// key are read back exactly; `Authorization` wins over `X-API-Key`.
        #[test]
        fn a_presented_credential_round_trips(
            token in credential(),
            key in credential(),
            scheme in "[Bb][Ee][Aa][Rr][Ee][Rr]",
            space in "[ \t]{0,3}",
        ) {
            let bearer = format!("{scheme} {space}{token}{space}");
            let both = headers(Some(bearer.as_bytes()), Some(key.as_bytes()));
            prop_assert_eq!(presented_credential(&both), Some(token.clone()));
            let api_key = format!("{space}{key}{space}");
            let only_key = headers(None, Some(api_key.as_bytes()));
            prop_assert_eq!(presented_credential(&only_key), Some(key));
        }

        /// `/v1/ws?access_token=…`: any query is read or refused without a
        /// panic, and any token, percent-encoded, is read back exactly.
        #[test]
        fn an_access_token_in_the_query_round_trips(
            token in any::<String>(),
            junk in "[!-~]{0,40}",
        ) {
            let read = |query: &str| {
                let uri: Uri = format!("/v1/ws?{query}").parse().ok()?;
                axum::extract::Query::<FeedQuery>::try_from_uri(&uri).ok()
            };
            let _ = read(&junk);
            let query = format!("access_token={}", percent_encoded(&token));
            let axum::extract::Query(FeedQuery { access_token }) = read(&query).unwrap();
            prop_assert_eq!(access_token, Some(token));
        }
    }

    /// `tests/corpus/authorization/`: each file is an `Authorization` value;
    /// `ok-*` present a credential (`ok-…-as-X.txt`: exactly `X`), `err-*`
    /// present none or an empty one (answered 401 either way).
    #[test]
    fn the_corpus_of_authorization_headers_is_read_as_named() {
        for (name, bytes) in corpus("authorization") {
            let read = presented_credential(&headers(Some(&bytes), None));
            if name.starts_with("ok-") {
                let credential = read.unwrap_or_else(|| panic!("{name} presents none"));
                assert!(!credential.is_empty(), "{name}");
                if let Some((_, expected)) = name.trim_end_matches(".txt").split_once("-as-") {
                    assert_eq!(credential, expected, "{name}");
                }
            } else {
                assert!(
                    read.as_deref().is_none_or(str::is_empty),
                    "{name}: {read:?}"
                );
            }
        }
    }
}
