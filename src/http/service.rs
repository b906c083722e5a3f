//! Service routes: index, liveness, readiness, metrics and the JWKS.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::http::error::{ApiError, Result};
use crate::state::AppState;

/// A projection this far behind the stream is not "caught up".
const READY_MAX_PENDING: u64 = 1_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
}

/// Name, version and where to go next.
#[utoipa::path(get, path = "/", tag = "service", responses((status = 200, description = "Service index")))]
pub async fn index() -> Json<Value> {
    Json(json!({
        "name": "chronicle",
        "version": env!("CARGO_PKG_VERSION"),
        "links": {
            "health": "/health",
            "ready": "/ready",
            "metrics": "/metrics",
            "openapi": "/openapi.json",
            "jwks": "/.well-known/jwks.json",
            "tasks": "/v1/tasks",
        }
    }))
}

/// Liveness: the process answers; no dependency is checked.
#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, description = "Alive")))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: Postgres and NATS reachable, no projection stopped, all caught up.
#[utoipa::path(get, path = "/ready", tag = "service", responses(
    (status = 200, description = "Ready: `{status, checks}` names every component checked"),
    (status = 503, description = "A dependency is down or a projection is stopped or behind")
))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>> {
    let mut problems = Vec::new();
    let postgres = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("select 1").fetch_one(&state.pool),
    )
    .await;
    if !matches!(postgres, Ok(Ok(1))) {
        problems.push(json!({"component": "postgres", "message": "unreachable"}));
    }
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        problems.push(json!({"component": "nats", "message": "not connected"}));
    }
    for (name, status) in state.projections.iter() {
        if let Some(failure) = status.failure() {
            problems.push(json!({"component": format!("projection {name}"), "message": failure}));
        }
    }
    if problems.is_empty() {
        let stopped: Vec<(String, String)> = sqlx::query_as(
            "select projection, failure from read.projection_checkpoints where failed_at is not null",
        )
        .fetch_all(&state.pool)
        .await?;
        for (name, failure) in stopped {
            problems.push(json!({"component": format!("projection {name}"), "message": failure}));
        }
        problems.extend(parked_events(&state).await?);
        problems.extend(projection_backlogs(&state).await);
    }
    if problems.is_empty() {
        // Say what was checked, so "ready" can be read without the source.
        let projections = chronicle_projections::all_projections().len();
        Ok(Json(json!({
            "status": "ready",
            "checks": {
                "postgres": "ok: answered a query within 2 s",
                "nats": format!("ok: connected, stream {} present", state.settings.nats.stream.name),
                "projections": format!("ok: {projections} running, none stopped, none behind the stream"),
                "dead_letters": "ok: no event parked",
            },
        })))
    } else {
        Err(ApiError::Unavailable(format!("not ready: {}", problems.len())).with_details(problems))
    }
}

/// Open dead letters: events that a stage parked and nobody released yet.
/// Everything else flows meanwhile, but an operator must look.
async fn parked_events(state: &AppState) -> Result<Vec<Value>> {
    let parked: Vec<(String, i64, String)> = sqlx::query_as(
        "select stage, count(*), (array_agg(aggregate_type || ':' || aggregate_id || ':' || sequence \
           || ' ' || reason order by id))[1] \
         from dead_letters where released_at is null group by stage order by stage",
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(parked
        .into_iter()
        .map(|(stage, count, first)| {
            json!({
                "component": format!("dead letters ({stage})"),
                "message": format!("{count} event(s) parked, first {first}; see `chronicle dead-letters list`"),
            })
        })
        .collect())
}

async fn projection_backlogs(state: &AppState) -> Vec<Value> {
    let jetstream = async_nats::jetstream::new(state.nats.clone());
    let stream_name = &state.settings.nats.stream.name;
    let Ok(stream) = jetstream.get_stream(stream_name).await else {
        return vec![
            json!({"component": "nats", "message": format!("stream {stream_name} missing")}),
        ];
    };
    let mut problems = Vec::new();
    for projection in chronicle_projections::all_projections() {
        let name = projection.name();
        match stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
            .await
        {
            Ok(mut consumer) => match consumer.info().await {
                Ok(info) if info.num_pending + info.num_ack_pending as u64 > READY_MAX_PENDING => {
                    problems.push(json!({"component": format!("projection {name}"), "message": format!("{} events behind", info.num_pending)}));
                }
                Ok(_) => {}
                Err(err) => problems.push(
                    json!({"component": format!("projection {name}"), "message": err.to_string()}),
                ),
            },
            Err(_) => problems
                .push(json!({"component": format!("projection {name}"), "message": "not started"})),
        }
    }
    problems
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "service", responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The public keys that verify access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "service", responses((status = 200, description = "JSON Web Key Set")))]
pub async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.tokens.keys().jwks())
}
