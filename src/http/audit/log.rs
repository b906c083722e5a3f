//! `GET /v1/audit/log`: the hash-chained audit trail.

use axum::extract::State;
use axum::http::HeaderMap;
use chronicle_projections::audit::entry::format_time;
use chronicle_projections::audit::AuditEntry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{described, record, total_count, Auditor};
use super::{AuditFilterParams, AuditQuery};
use crate::audit::history::list_entries;
use crate::http::error::Result;
use crate::http::extract::RequestContext;
use crate::http::write::Page;
use crate::state::AppState;

/// The page of `/v1/audit/log` (its filters are [`AuditFilterParams`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditLogPage {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

/// Who caused an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditActor {
    pub id: Option<String>,
    pub roles: Vec<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Which aggregate an event belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditAggregateRef {
    #[serde(rename = "type")]
    pub aggregate_type: String,
    pub id: String,
    pub sequence: i64,
}

/// One entry of the trail. `hash` is SHA-256 over the RFC 8785 canonical JSON
/// of this very object without `hash` (times are written with exactly six
/// fractional digits for that reason); see `docs/audit.md`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogEntry {
    pub seq: i64,
    pub global_position: i64,
    /// RFC 3339, UTC, microseconds.
    #[schema(format = DateTime)]
    pub occurred_at: Option<String>,
    /// RFC 3339, UTC, microseconds.
    #[schema(format = DateTime)]
    pub recorded_at: String,
    pub actor: AuditActor,
    /// The event type.
    pub action: String,
    pub event_version: String,
    pub aggregate: AuditAggregateRef,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub payload_digest: String,
    pub metadata_digest: String,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditEntry> for AuditLogEntry {
    fn from(entry: AuditEntry) -> Self {
        Self {
            seq: entry.seq,
            global_position: entry.global_position,
            occurred_at: entry.occurred_at.as_ref().map(format_time),
            recorded_at: format_time(&entry.recorded_at),
            actor: AuditActor {
                id: entry.actor.id,
                roles: entry.actor.roles,
                ip: entry.actor.ip,
                user_agent: entry.actor.user_agent,
            },
            action: entry.action,
            event_version: entry.event_version,
            aggregate: AuditAggregateRef {
                aggregate_type: entry.aggregate.aggregate_type,
                id: entry.aggregate.id,
                sequence: entry.aggregate.sequence,
            },
            request_id: entry.request_id,
            correlation_id: entry.correlation_id,
            causation_id: entry.causation_id,
            payload_digest: entry.payload_digest,
            metadata_digest: entry.metadata_digest,
            prev_hash: entry.prev_hash,
            hash: entry.hash,
        }
    }
}

/// Audit-trail entries, ascending `seq`.
#[utoipa::path(get, path = "/v1/audit/log", tag = "audit", security(("bearer" = [])), params(AuditFilterParams, AuditLogPage), responses(
    (status = 200, body = Vec<AuditLogEntry>, headers(("X-Total-Count" = i64))),
    (status = 401, description = "No credentials"),
    (status = 403, description = "Not an auditor or admin"),
    (status = 422, description = "Invalid filter or page"),
))]
pub async fn list_audit_log(
    State(state): State<AppState>,
    Auditor(user): Auditor,
    context: RequestContext,
    AuditQuery {
        filters,
        params: query,
    }: AuditQuery<AuditLogPage>,
) -> Result<(HeaderMap, axum::Json<Vec<AuditLogEntry>>)> {
    let Page { limit, offset } = Page::new(query.limit, query.offset)?;
    let extra = [
        ("limit", Some(limit.to_string())),
        ("offset", Some(offset.to_string())),
    ];
    record(
        &state,
        &user,
        &context,
        "GET /v1/audit/log",
        described(&filters, extra),
    )
    .await?;
    let (entries, total) = list_entries(&state.pool, &filters, limit, offset).await?;
    Ok((
        total_count(total),
        axum::Json(entries.into_iter().map(AuditLogEntry::from).collect()),
    ))
}
