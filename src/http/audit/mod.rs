//! `/v1/audit`: the event history, the hash-chained audit trail, its
//! verification and signed checkpoints, exports and time travel. Only the
//! `auditor` and `admin` roles get in, and every query is itself recorded as
//! an `AuditQueried` event before it is answered.

mod aggregates;
mod events;
mod export;
mod log;
mod query;
mod verify;

pub use aggregates::*;
pub use events::*;
pub use export::*;
pub use log::*;
pub use query::{AuditFilterParams, AuditQuery};
pub use verify::*;

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::get;
use axum::Router;

use crate::audit::record::record_query;
use crate::audit::stream::StreamSlot;
use crate::audit::Filters;
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, RequestContext};
use crate::state::AppState;

/// Who may read the audit trail.
pub const AUDIT_ROLES: [&str; 2] = ["auditor", "admin"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/events", get(list_audit_events))
        .route("/v1/audit/log", get(list_audit_log))
        .route("/v1/audit/verify", get(verify_audit_trail))
        .route("/v1/audit/checkpoints", get(list_audit_checkpoints))
        .route(
            "/v1/audit/aggregates/{aggregate_type}/{aggregate_id}",
            get(get_audit_aggregate),
        )
        .route("/v1/audit/export", get(export_audit_trail))
}

/// The caller, if they may read the audit trail: 401 without credentials,
/// 403 without the role, checked before the query string is even parsed.
pub struct Auditor(pub AuthUser);

impl FromRequestParts<AppState> for Auditor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        user.require_any_role(&AUDIT_ROLES)?;
        Ok(Self(user))
    }
}

/// Records the query as an `AuditQueried` event; only then may it be answered.
async fn record(
    state: &AppState,
    user: &AuthUser,
    context: &RequestContext,
    route: &str,
    filters: BTreeMap<String, String>,
) -> Result<()> {
    record_query(
        &state.audit_queries,
        Some(user.id),
        route,
        filters,
        context.metadata(user.id, &user.roles),
    )
    .await
    .map_err(ApiError::Internal)
}

/// A slot for a streamed answer, taken before anything is recorded or
/// queried: when every slot is busy the caller gets 503 `UNAVAILABLE` with
/// `Retry-After` at once rather than a connection-starved server.
fn stream_slot(state: &AppState) -> Result<StreamSlot> {
    state.streams.try_acquire().ok_or_else(|| {
        metrics::counter!("chronicle_streams_refused_total").increment(1);
        ApiError::Unavailable("too many streamed answers are running; retry shortly".into())
    })
}

/// A cap on a streamed answer: any positive number, or none.
fn stream_limit(limit: Option<i64>) -> Result<Option<i64>> {
    match limit {
        Some(limit) if limit < 1 => Err(ApiError::invalid_field("limit", "must be at least 1")),
        other => Ok(other),
    }
}

fn described(
    filters: &Filters,
    extra: impl IntoIterator<Item = (&'static str, Option<String>)>,
) -> BTreeMap<String, String> {
    let mut given = filters.describe();
    for (name, value) in extra {
        if let Some(value) = value {
            given.insert(name.to_string(), value);
        }
    }
    given
}

fn total_count(total: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    headers
}
