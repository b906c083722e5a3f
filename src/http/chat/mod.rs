//! The OpenAI-compatible routes that need no chat session:
//! `/v1/models`, `/v1/models/{id}` and `/v1/chat/completions`. Their errors
//! carry OpenAI's `type` beside our `code` (see [`openai_error_type`]).

mod completions;
pub(crate) mod stream;

pub use completions::*;
pub use stream::{sse_relay, stream_permit, OnFinished, SseRelay, StreamOutcome};

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::error::{ApiError, Result};
use crate::http::extract::AuthUser;
use crate::llm::{ModelInfo, UpstreamError};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(create_chat_completion))
}

/// A model in OpenAI's format.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    /// What to send as `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The upstream provider: `anthropic` or `openai`.
    pub owned_by: &'static str,
}

/// `{"object": "list", "data": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

fn model_object(state: &AppState, model: &ModelInfo) -> ModelObject {
    ModelObject {
        id: model.id.clone(),
        object: "model",
        created: state.llm.created,
        owned_by: model.owned_by,
    }
}

/// The configured models (`CHRONICLE_MODELS`); an empty list when none is.
#[utoipa::path(get, path = "/v1/models", tag = "chat", security(("bearer" = [])), responses(
    (status = 200, body = ModelList),
    (status = 401, description = "No or invalid credentials"),
    (status = 429, description = "Rate limited"),
))]
pub async fn list_models(State(state): State<AppState>, _user: AuthUser) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: state
            .llm
            .models()
            .map(|m| model_object(&state, m))
            .collect(),
    })
}

/// One configured model; 404 for any other id.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "chat", security(("bearer" = [])),
    params(("id" = String, Path, description = "A model id as listed by /v1/models")),
    responses(
        (status = 200, body = ModelObject),
        (status = 401, description = "No or invalid credentials"),
        (status = 404, description = "No such model"),
        (status = 429, description = "Rate limited"),
    ))]
pub async fn get_model(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>> {
    state
        .llm
        .model(&id)
        .map(|m| Json(model_object(&state, m)))
        .ok_or(ApiError::NotFound)
}

/// An upstream failure as an API error: an unknown model is a 404 on
/// `model` (as OpenAI answers `model_not_found`), the rest is 502 or 503.
impl From<UpstreamError> for ApiError {
    fn from(err: UpstreamError) -> Self {
        match err {
            UpstreamError::NotConfigured(message) => Self::UpstreamNotConfigured(message),
            UpstreamError::UnknownModel(id) => Self::MissingReference {
                field: "model",
                message: format!("`{id}` is not a configured model (see GET /v1/models)"),
            },
            UpstreamError::Failed { message, .. } => Self::Upstream(message),
        }
    }
}

/// 429 with `Retry-After` when `user` has spent this minute's upstream tokens.
pub fn check_token_budget(state: &AppState, user: &AuthUser) -> Result<()> {
    state.llm.tokens.check(user.id).map_err(|retry_after_secs| {
        metrics::counter!("chronicle_chat_token_budget_refused_total").increment(1);
        ApiError::RateLimited { retry_after_secs }
    })
}

/// OpenAI's error `type` for a status.
pub fn openai_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "api_error",
    }
}

/// Adds OpenAI's `type` to the error bodies of the OpenAI-compatible routes
/// (`/v1/chat/completions`, `/v1/models…`), so SDKs that branch on it work,
/// while `code`, `message`, `details` and `request_id` stay as on every
/// other route. Applied around the whole router (`src/http/mod.rs`), so
/// rate-limit, timeout and routing errors get it too. Error bodies are small
/// JSON; anything else (a stream, a success, another route) passes untouched.
pub async fn openai_error_type(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let openai_route =
        path == "/v1/chat/completions" || path == "/v1/models" || path.starts_with("/v1/models/");
    let response = next.run(request).await;
    if !openai_route {
        return response;
    }
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    if let Some(error) = value.get_mut("error").and_then(|e| e.as_object_mut()) {
        error.insert("type".into(), openai_type(status).into());
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}
