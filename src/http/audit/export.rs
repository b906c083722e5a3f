//! `GET /v1/audit/export`: every matching event with its audit entry, streamed.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{described, record, stream_limit, stream_slot, Auditor, RawFilters};
use crate::audit::export::{stream, Format};
use crate::http::error::Result;
use crate::http::extract::{Query, RequestContext};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditExportQuery {
    /// `ndjson` or `csv` (with a header row).
    #[param(value_type = String)]
    pub format: Format,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub actor_id: Option<String>,
    pub event_type: Option<String>,
    /// Recorded at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Recorded at or before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    pub after_position: Option<i64>,
    /// At most this many lines (≥ 1); default all.
    pub limit: Option<i64>,
}

/// One line per event in commit order, with its audit entry (`seq`,
/// digests, `prev_hash`, `hash`), streamed.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", security(("bearer" = [])), params(AuditExportQuery), responses(
    (status = 200, description = "NDJSON (`application/x-ndjson`) or CSV (`text/csv`, header row)", content_type = "application/x-ndjson"),
    (status = 401, description = "No credentials"),
    (status = 403, description = "Not an auditor or admin"),
    (status = 422, description = "Invalid format or filter"),
    (status = 503, description = "Every streaming slot is busy; retry after `Retry-After`"),
))]
pub async fn export_audit_trail(
    State(state): State<AppState>,
    Auditor(user): Auditor,
    context: RequestContext,
    Query(query): Query<AuditExportQuery>,
) -> Result<Response> {
    let filters = RawFilters {
        aggregate_type: query.aggregate_type,
        aggregate_id: query.aggregate_id,
        actor_id: query.actor_id,
        event_type: query.event_type,
        from: query.from,
        to: query.to,
        after_position: query.after_position,
    }
    .validate()?;
    let limit = stream_limit(query.limit)?;
    let slot = stream_slot(&state)?;
    let format = query.format;
    let extra = [
        ("format", Some(format.extension().to_string())),
        ("limit", limit.map(|l| l.to_string())),
    ];
    record(
        &state,
        &user,
        &context,
        "GET /v1/audit/export",
        described(&filters, extra),
    )
    .await?;
    let disposition = format!(
        "attachment; filename=\"chronicle-audit.{}\"",
        format.extension()
    );
    let body = Body::from_stream(stream(state.pool.clone(), &filters, format, limit, slot));
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}
