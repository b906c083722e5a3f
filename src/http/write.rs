//! What every command route does around its aggregate: run the command as
//! the caller, remember the write for the caller's next query, and hand the
//! client its consistency token; and, on the query side, wait for the read
//! model to reflect the caller's writes.

use axum::http::{HeaderMap, HeaderValue};
use cqrs_es::{Aggregate, AggregateError};
use uuid::Uuid;

use crate::commands::{CommandExecutor, Executed};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, ConsistencyHeader, RequestContext, CONSISTENCY_HEADER};
use crate::state::AppState;

/// Runs `command` on aggregate `id` as `user`; domain errors go through `domain_error`.
pub async fn execute<A>(
    state: &AppState,
    executor: &CommandExecutor<A>,
    user: &AuthUser,
    context: &RequestContext,
    id: Uuid,
    command: A::Command,
    domain_error: fn(AggregateError<A::Error>) -> ApiError,
) -> Result<(HeaderMap, Executed<A>)>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    let metadata = context.metadata(user.id, &user.roles);
    let executed = executor
        .execute(&id.to_string(), command, metadata)
        .await
        .map_err(domain_error)?;
    let mut headers = HeaderMap::new();
    if let Some(token) = &executed.token {
        state.consistency.record_write(user.id, token);
        if let Ok(value) = HeaderValue::from_str(&token.to_string()) {
            headers.insert(CONSISTENCY_HEADER, value);
        }
    }
    Ok((headers, executed))
}

/// Waits until `projection` reflects the caller's token (or last write).
pub async fn wait_for_read_model(
    state: &AppState,
    projection: &'static str,
    user: &AuthUser,
    token: ConsistencyHeader,
) -> Result<()> {
    state
        .consistency
        .wait(projection, Some(user.id), token.0)
        .await
        .map_err(|err| ApiError::Unavailable(err.to_string()))
}

/// Largest `offset` a list takes: far beyond any real list, and small enough
/// that every client's integer type holds it (the OpenAPI document says so).
pub const MAX_OFFSET: i64 = 1_000_000_000;

/// A validated page of a list: `limit` 1–100 (default 50), `offset` 0 to
/// [`MAX_OFFSET`] (default 0).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub fn new(limit: Option<i64>, offset: Option<i64>) -> Result<Self> {
        let limit = limit.unwrap_or(50);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::invalid_field(
                "limit",
                "must be between 1 and 100",
            ));
        }
        let offset = offset.unwrap_or(0);
        if !(0..=MAX_OFFSET).contains(&offset) {
            return Err(ApiError::invalid_field(
                "offset",
                format!("must be between 0 and {MAX_OFFSET}"),
            ));
        }
        Ok(Self { limit, offset })
    }
}

/// `X-Total-Count: total`.
pub fn total_count(total: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    headers
}
