//! `GET /v1/audit/events`: the event history from the event store.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{described, record, stream_limit, stream_slot, total_count, Auditor};
use super::{AuditFilterParams, AuditQuery};
use crate::audit::history::{list_events, stream_events};
use crate::http::error::Result;
use crate::http::extract::RequestContext;
use crate::http::write::Page;
use crate::state::AppState;

pub const NDJSON: &str = "application/x-ndjson";

/// The page of `/v1/audit/events` (its filters are [`AuditFilterParams`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditEventsPage {
    /// 1–100, default 50; with `Accept: application/x-ndjson` any positive cap, default none.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0 (JSON answers only).
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

/// An event as NATS consumers receive it (`docs/events.md`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub global_position: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub metadata: Value,
    pub payload: Value,
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON))
}

/// The event history, oldest first (by global position), as envelopes;
/// `Accept: application/x-ndjson` streams every match.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", security(("bearer" = [])), params(AuditFilterParams, AuditEventsPage), responses(
    (status = 200, body = Vec<AuditEvent>, headers(("X-Total-Count" = i64)), description = "JSON array; NDJSON stream of the same objects with `Accept: application/x-ndjson`"),
    (status = 401, description = "No credentials"),
    (status = 403, description = "Not an auditor or admin"),
    (status = 422, description = "Invalid filter or page"),
    (status = 503, description = "Every streaming slot is busy (NDJSON only); retry after `Retry-After`"),
))]
pub async fn list_audit_events(
    State(state): State<AppState>,
    Auditor(user): Auditor,
    context: RequestContext,
    headers: HeaderMap,
    AuditQuery {
        filters,
        params: query,
    }: AuditQuery<AuditEventsPage>,
) -> Result<Response> {
    if wants_ndjson(&headers) {
        let limit = stream_limit(query.limit)?;
        let slot = stream_slot(&state)?;
        let extra = [
            ("limit", limit.map(|l| l.to_string())),
            ("accept", Some(NDJSON.to_string())),
        ];
        record(
            &state,
            &user,
            &context,
            "GET /v1/audit/events",
            described(&filters, extra),
        )
        .await?;
        let body = Body::from_stream(stream_events(state.pool.clone(), &filters, limit, slot));
        return Ok(([(header::CONTENT_TYPE, NDJSON)], body).into_response());
    }
    let Page { limit, offset } = Page::new(query.limit, query.offset)?;
    let extra = [
        ("limit", Some(limit.to_string())),
        ("offset", Some(offset.to_string())),
    ];
    record(
        &state,
        &user,
        &context,
        "GET /v1/audit/events",
        described(&filters, extra),
    )
    .await?;
    let (events, total) = list_events(&state.pool, &filters, limit, offset).await?;
    Ok((total_count(total), axum::Json(events)).into_response())
}
