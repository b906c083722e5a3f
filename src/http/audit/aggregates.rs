//! `GET /v1/audit/aggregates/{type}/{id}`: time travel.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{record, Auditor};
use crate::audit::time_travel::{rebuild, Point, TimeTravelError};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{Query, RequestContext};
use crate::state::AppState;
use chronicle_projections::audit::entry::format_time;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditAggregateQuery {
    /// The state as of this time (events recorded at or before it), RFC 3339.
    pub as_of: Option<DateTime<Utc>>,
    /// The state after this many events (≥ 1); with `as_of` too, the events
    /// that meet both.
    #[param(minimum = 1)]
    pub sequence: Option<i64>,
}

/// An aggregate's state rebuilt from its events.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditAggregateState {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The last event applied (0: none at that point).
    pub sequence: i64,
    /// When that event was recorded.
    pub recorded_at: Option<DateTime<Utc>>,
    /// The aggregate as the command side holds it.
    pub state: Value,
}

/// An aggregate's state at a point of its history: `as_of=<time>` and/or
/// `sequence=N`, the latest without either.
#[utoipa::path(get, path = "/v1/audit/aggregates/{aggregate_type}/{aggregate_id}", tag = "audit", security(("bearer" = [])),
    params(("aggregate_type" = String, Path, description = "`Task`, `User`, `AuthSession`, `AuditQuery`, `Project`, `ChatSession`, `McpServer`, `NotificationInbox` or `WorkspaceFile`"), ("aggregate_id" = String, Path), AuditAggregateQuery),
    responses(
        (status = 200, body = AuditAggregateState),
        (status = 401, description = "No credentials"),
        (status = 403, description = "Not an auditor or admin"),
        (status = 404, description = "No such aggregate type or aggregate"),
        (status = 422, description = "sequence < 1, or as_of is not a time"),
    ))]
pub async fn get_audit_aggregate(
    State(state): State<AppState>,
    Auditor(user): Auditor,
    context: RequestContext,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Query(query): Query<AuditAggregateQuery>,
) -> Result<axum::Json<AuditAggregateState>> {
    if query.sequence.is_some_and(|sequence| sequence < 1) {
        return Err(ApiError::invalid_field("sequence", "must be at least 1"));
    }
    let point = Point {
        as_of: query.as_of,
        up_to_sequence: query.sequence,
    };
    let mut filters = BTreeMap::from([
        ("aggregate_type".to_string(), aggregate_type.clone()),
        ("aggregate_id".to_string(), aggregate_id.clone()),
    ]);
    if let Some(as_of) = point.as_of {
        filters.insert("as_of".into(), format_time(&as_of));
    }
    if let Some(sequence) = point.up_to_sequence {
        filters.insert("sequence".into(), sequence.to_string());
    }
    record(
        &state,
        &user,
        &context,
        "GET /v1/audit/aggregates/{aggregate_type}/{aggregate_id}",
        filters,
    )
    .await?;
    let rebuilt = rebuild(&state.pool, &aggregate_type, &aggregate_id, point)
        .await
        .map_err(|err| match err {
            TimeTravelError::UnknownType(_) | TimeTravelError::NotFound => ApiError::NotFound,
            other => ApiError::Internal(anyhow::Error::new(other).context("time travel")),
        })?;
    Ok(axum::Json(AuditAggregateState {
        aggregate_type: rebuilt.aggregate_type,
        aggregate_id: rebuilt.aggregate_id,
        sequence: rebuilt.sequence,
        recorded_at: rebuilt.recorded_at,
        state: rebuilt.state,
    }))
}
