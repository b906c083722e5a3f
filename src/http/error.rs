//! The one error type of the API and its JSON shape:
//! `{"error": {"code", "message", "details", "request_id"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chronicle_aggregates::validation::FieldError;
use cqrs_es::AggregateError;
use serde::Serialize;
use serde_json::{json, Value};

use crate::http::request_id::current_request_id;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Every way a request can fail, each with its status and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    AuthRequired,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("this refresh token was already used; its session is revoked")]
    TokenReused,
    #[error("account locked after too many failed logins; try again later")]
    AccountLocked { retry_after_secs: u64 },
    #[error("too many requests; slow down")]
    RateLimited { retry_after_secs: u64 },
    #[error("you do not have a role that may do this")]
    Forbidden,
    #[error("not found")]
    NotFound,
    /// A field names something that does not exist for the caller (a
    /// project, a model): 404 like the thing itself, with the field in `details`.
    #[error("{field}: {message}")]
    MissingReference {
        field: &'static str,
        message: String,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    Validation {
        message: String,
        details: Vec<Value>,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{message}")]
    UnavailableWithDetails {
        message: String,
        details: Vec<Value>,
    },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
    /// The language-model upstream failed (a short reason, never its body or key).
    #[error("{0}")]
    Upstream(String),
    /// No language-model upstream is configured for this request.
    #[error("{0}")]
    UpstreamNotConfigured(String),
}

/// A field-level problem in `details`.
#[derive(Debug, Serialize)]
pub struct Detail {
    pub field: String,
    pub message: String,
}

impl ApiError {
    /// A 422 about one field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::Validation {
            message: format!("{field}: {message}"),
            details: vec![json!({"field": field, "message": message})],
        }
    }

    /// A 422 listing every invalid field.
    pub fn invalid_fields(errors: &[FieldError]) -> Self {
        let message = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self::Validation {
            message,
            details: errors
                .iter()
                .map(|e| json!({"field": e.field, "message": e.message}))
                .collect(),
        }
    }

    /// Attaches `details` to a validation or unavailability error.
    pub fn with_details(self, more: Vec<Value>) -> Self {
        match self {
            Self::Validation {
                message,
                mut details,
            } => {
                details.extend(more);
                Self::Validation { message, details }
            }
            Self::Unavailable(message) => Self::UnavailableWithDetails {
                message,
                details: more,
            },
            other => other,
        }
    }

    /// 503 `UNAVAILABLE` for a request that found every pooled database
    /// connection taken for the pool's acquire timeout.
    pub fn database_busy() -> Self {
        Self::Unavailable("the database is busy; try again shortly".into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::AuthRequired
            | Self::InvalidToken
            | Self::InvalidCredentials
            | Self::TokenReused => StatusCode::UNAUTHORIZED,
            Self::AccountLocked { .. } => StatusCode::LOCKED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::MissingReference { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::UnavailableWithDetails { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamNotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::AuthRequired => "AUTH_REQUIRED",
            Self::InvalidToken => "INVALID_TOKEN",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::TokenReused => "TOKEN_REUSED",
            Self::AccountLocked { .. } => "ACCOUNT_LOCKED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound | Self::MissingReference { .. } => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict(_) => "CONFLICT",
            Self::BadRequest(_) => "BAD_REQUEST",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Self::Validation { .. } => "VALIDATION_ERROR",
            Self::Unavailable(_) | Self::UnavailableWithDetails { .. } => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL_ERROR",
            Self::Upstream(_) => "UPSTREAM_ERROR",
            Self::UpstreamNotConfigured(_) => "UPSTREAM_NOT_CONFIGURED",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // However it travelled (`?` through anyhow), a database that cannot
        // serve for now is not a fault: 503 with `Retry-After`, not 500.
        if let Self::Internal(err) = &self {
            if let Some(unavailable) = err.chain().find_map(database_unavailable) {
                return unavailable.into_response();
            }
        }
        if let Self::Internal(err) = &self {
            // Logged once, here, with the whole chain; the client gets none of it.
            tracing::error!(error = ?err, "request failed");
        }
        let details = match &self {
            Self::Validation { details, .. } | Self::UnavailableWithDetails { details, .. } => {
                details.clone()
            }
            Self::MissingReference { field, message } => {
                vec![json!({"field": field, "message": message})]
            }
            _ => Vec::new(),
        };
        let body = json!({
            "error": {
                "code": self.code(),
                "message": self.to_string(),
                "details": details,
                "request_id": current_request_id(),
            }
        });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if matches!(self, Self::AuthRequired | Self::InvalidToken) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry_after = match &self {
            Self::Unavailable(_) | Self::UnavailableWithDetails { .. } => Some(1),
            Self::AccountLocked { retry_after_secs } | Self::RateLimited { retry_after_secs } => {
                Some(*retry_after_secs)
            }
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if let Some(unavailable) = database_unavailable(&err) {
            return unavailable;
        }
        Self::Internal(anyhow::Error::new(err).context("database"))
    }
}

/// The 503 for `cause` (or an error it wraps) when it says the database
/// cannot serve for now ([`is_database_unavailable`]), rather than that
/// anything is wrong. The client may retry; anything else stays a 500.
pub fn database_unavailable(cause: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut next = Some(cause);
    while let Some(err) = next {
        if let Some(unavailable) = err
            .downcast_ref::<sqlx::Error>()
            .filter(|err| is_database_unavailable(err))
        {
            tracing::warn!(error = %unavailable, "the database cannot serve for now");
            return Some(match unavailable {
                sqlx::Error::PoolTimedOut => ApiError::database_busy(),
                _ => database_refuses_for_now(),
            });
        }
        next = err.source();
    }
    None
}

/// Whether `err` says the database cannot serve for now: no pooled
/// connection within the acquire timeout; a connection lost or refused (a
/// restart, a dropped socket: the pool replaces it, and a retry gets a new
/// one); or a refusal Postgres gives while it is read-only, out of disk,
/// memory or connections, starting up or shutting down.
pub fn is_database_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(refusal) => refusal.code().is_some_and(|code| refuses_for_now(&code)),
        _ => false,
    }
}

fn database_refuses_for_now() -> ApiError {
    ApiError::Unavailable(
        "the database cannot take this request right now; try again shortly".into(),
    )
}

/// SQLSTATEs of a database that refuses for now: 25006, a read-only
/// transaction (writes switched off, a standby); class 53, insufficient
/// resources (disk full, out of memory, too many connections); class 57P,
/// operator intervention (shutting down, not accepting connections yet).
fn refuses_for_now(sqlstate: &str) -> bool {
    sqlstate == "25006" || sqlstate.starts_with("53") || sqlstate.starts_with("57P")
}

/// Whether `cause` is a database error with SQLSTATE `code`, as the event
/// store's triggers raise to refuse an event (e.g. `CU409`, a name taken).
pub fn is_sqlstate(cause: &(dyn std::error::Error + Send + Sync + 'static), code: &str) -> bool {
    cause
        .downcast_ref::<sqlx::Error>()
        .and_then(sqlx::Error::as_database_error)
        .and_then(|err| err.code())
        .is_some_and(|found| found == code)
}

/// Maps the infrastructure half of a command failure; the domain half
/// (`UserError`) is mapped by each resource, which knows what it means.
pub fn infrastructure_error<E: std::error::Error>(err: AggregateError<E>) -> ApiError {
    match err {
        AggregateError::UserError(err) => {
            ApiError::Internal(anyhow::anyhow!("unmapped domain error: {err}"))
        }
        AggregateError::AggregateConflict => {
            ApiError::Conflict("the resource was changed concurrently; retry".into())
        }
        AggregateError::DatabaseConnectionError(err) => {
            ApiError::Unavailable(format!("event store unavailable: {err}"))
        }
        // postgres-es passes sqlx's errors on as unexpected ones.
        AggregateError::UnexpectedError(err) => database_unavailable(err.as_ref())
            .unwrap_or_else(|| ApiError::Internal(anyhow::anyhow!("event store: {err}"))),
        AggregateError::DeserializationError(err) => {
            ApiError::Internal(anyhow::anyhow!("event store: {err}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_or_an_exhausted_pool_is_a_503_and_other_database_errors_are_not() {
        let lost = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            database_unavailable(&lost),
            Some(ApiError::Unavailable(_))
        ));
        // Found however deep it is wrapped.
        let wrapped = anyhow::Error::new(lost).context("loading the task");
        assert!(wrapped.chain().find_map(database_unavailable).is_some());
        assert!(database_unavailable(&sqlx::Error::PoolTimedOut).is_some());
        assert!(database_unavailable(&sqlx::Error::RowNotFound).is_none());
        assert!(refuses_for_now("25006") && refuses_for_now("53100") && refuses_for_now("57P01"));
        assert!(!refuses_for_now("23505") && !refuses_for_now("40001"));
    }
}
