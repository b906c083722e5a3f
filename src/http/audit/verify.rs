//! `GET /v1/audit/verify` and `GET /v1/audit/checkpoints`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{record, total_count, Auditor};
use crate::audit::history::{list_checkpoints, Checkpoint};
use crate::audit::{verify, VerifyReport, VerifyingKeys};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{Query, RequestContext};
use crate::http::write::Page;
use crate::state::AppState;

/// Recomputes the whole chain, checks it against the event store and every
/// signed checkpoint.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])), responses(
    (status = 200, body = VerifyReport, description = "`ok: false` names `first_bad_seq` and a `reason`"),
    (status = 401, description = "No credentials"),
    (status = 403, description = "Not an auditor or admin"),
))]
pub async fn verify_audit_trail(
    State(state): State<AppState>,
    Auditor(user): Auditor,
    context: RequestContext,
) -> Result<axum::Json<VerifyReport>> {
    record(
        &state,
        &user,
        &context,
        "GET /v1/audit/verify",
        BTreeMap::new(),
    )
    .await?;
    // The JWKS lists every key that still verifies, rotated ones included.
    let keys = VerifyingKeys::from_jwks(&state.tokens.keys().jwks()).map_err(ApiError::Internal)?;
    let report = verify(&state.pool, &keys, Arc::default())
        .await
        .map_err(ApiError::Internal)?;
    if !report.ok {
        tracing::warn!(
            audit.first_bad_seq = report.first_bad_seq,
            reason = report.reason.as_deref().unwrap_or(""),
            "audit trail verification failed"
        );
    }
    Ok(axum::Json(report))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpointsQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
    /// ≥ 0, default 0.
    #[param(minimum = 0, maximum = 1_000_000_000, default = 0)]
    pub offset: Option<i64>,
}

/// Signed chain heads, newest first. Each `signature` is a compact JWS
/// (RS256, `kid` of a key in `/.well-known/jwks.json`) over
/// `{"seq", "head_hash", "signed_at"}`.
#[utoipa::path(get, path = "/v1/audit/checkpoints", tag = "audit", security(("bearer" = [])), params(AuditCheckpointsQuery), responses(
    (status = 200, body = Vec<Checkpoint>, headers(("X-Total-Count" = i64))),
    (status = 401, description = "No credentials"),
    (status = 403, description = "Not an auditor or admin"),
    (status = 422, description = "Invalid page"),
))]
pub async fn list_audit_checkpoints(
    State(state): State<AppState>,
    Auditor(user): Auditor,
    context: RequestContext,
    Query(query): Query<AuditCheckpointsQuery>,
) -> Result<(HeaderMap, axum::Json<Vec<Checkpoint>>)> {
    let Page { limit, offset } = Page::new(query.limit, query.offset)?;
    let filters = BTreeMap::from([
        ("limit".to_string(), limit.to_string()),
        ("offset".to_string(), offset.to_string()),
    ]);
    record(
        &state,
        &user,
        &context,
        "GET /v1/audit/checkpoints",
        filters,
    )
    .await?;
    let (checkpoints, total) = list_checkpoints(&state.pool, limit, offset).await?;
    Ok((total_count(total), axum::Json(checkpoints)))
}
