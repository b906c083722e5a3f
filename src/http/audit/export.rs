//! `GET /v1/audit/export`: every matching event with its audit entry, streamed.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{described, record, stream_limit, stream_slot, Auditor};
use super::{AuditFilterParams, AuditQuery};
use crate::audit::export::{stream, Format};
use crate::http::error::Result;
use crate::http::extract::RequestContext;
use crate::state::AppState;

/// The format and cap of `/v1/audit/export` (its filters are [`AuditFilterParams`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditExportParams {
    /// `ndjson` or `csv` (with a header row).
    #[param(inline)]
    pub format: Format,
    /// At most this many lines (≥ 1); default all.
    #[param(minimum = 1)]
    pub limit: Option<i64>,
}

/// One line per event in commit order, with its audit entry (`seq`,
/// digests, `prev_hash`, `hash`), streamed.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", security(("bearer" = [])), params(AuditFilterParams, AuditExportParams), responses(
    (status = 200, description = "NDJSON (`application/x-ndjson`) or CSV (`text/csv`, header row)", content(("application/x-ndjson"), ("text/csv"))),
    (status = 401, description = "No credentials"),
    (status = 403, description = "Not an auditor or admin"),
    (status = 422, description = "Invalid format or filter"),
    (status = 503, description = "Every streaming slot is busy; retry after `Retry-After`"),
))]
pub async fn export_audit_trail(
    State(state): State<AppState>,
    Auditor(user): Auditor,
    context: RequestContext,
    AuditQuery {
        filters,
        params: query,
    }: AuditQuery<AuditExportParams>,
) -> Result<Response> {
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
