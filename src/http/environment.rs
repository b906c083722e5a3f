//! `GET /v1/environment`: what this server offers, for clients deciding what
//! to show: version, build, configured models and feature flags. Public, and
//! nothing in it is a secret (no key, no URL with credentials, no address).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/environment", get(environment))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Environment {
    /// The server's version (semver).
    pub version: &'static str,
    pub build: Build,
    /// Models `/v1/chat/completions` and sessions accept.
    pub models: Vec<EnvironmentModel>,
    pub features: Features,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Build {
    /// `release` or `debug`.
    pub profile: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentModel {
    pub id: String,
    /// `anthropic` or `openai`.
    pub provider: &'static str,
}

/// Which parts of the API this server serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct Features {
    /// Chat sessions and `/v1/chat/completions` (at least one model configured).
    pub chat: bool,
    /// `/v1/ws` and `/v1/sessions/{id}/events`.
    pub event_feeds: bool,
    pub mcp_servers: bool,
    pub notifications: bool,
    pub files: bool,
    pub analytics: bool,
}

/// Version, build, configured models and feature flags.
#[utoipa::path(get, path = "/v1/environment", tag = "service", responses(
    (status = 200, body = Environment),
    (status = 429, description = "Rate limited"),
))]
pub async fn environment(State(state): State<AppState>) -> Json<Environment> {
    let models: Vec<EnvironmentModel> = state
        .llm
        .models()
        .map(|model| EnvironmentModel {
            id: model.id.clone(),
            provider: model.owned_by,
        })
        .collect();
    Json(Environment {
        version: env!("CARGO_PKG_VERSION"),
        build: Build {
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        },
        features: Features {
            chat: state.llm.ensure_configured().is_ok(),
            event_feeds: true,
            mcp_servers: true,
            analytics: true,
            notifications: true,
            files: true,
        },
        models,
    })
}
