//! `/v1/debug/health/detailed` (admin, developer): what `/ready` decides
//! from, in full: each component with its latency, the relay's position and
//! lag, every projection's checkpoint, lag and state, the pool, the build.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::error::Result;
use crate::http::extract::AuthUser;
use crate::state::AppState;

/// The longest a single component check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct ComponentHealth {
    /// `ok` or `down`.
    pub status: &'static str,
    /// How long the check took, in milliseconds.
    pub latency_ms: f64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolHealth {
    /// Connections open now.
    pub size: u32,
    /// Of those, idle.
    pub idle: usize,
    /// The most the pool opens.
    pub max: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RelayHealth {
    /// Global position of the last event published.
    pub global_position: i64,
    /// Global position of the newest stored event.
    pub head_position: i64,
    /// Events stored but not yet published (an upper bound: positions may have gaps).
    pub lag_events: i64,
    /// When the relay last stored its checkpoint (null before its first).
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionHealth {
    pub name: String,
    /// `stopped` (with `error`) once a projection failed, else `running`.
    pub state: &'static str,
    pub error: Option<String>,
    /// Stream sequence of the last event applied.
    pub stream_sequence: i64,
    /// Events on the stream its consumer has not delivered yet (null when
    /// its consumer cannot be read).
    pub pending_events: Option<u64>,
    /// How old the last applied event was when it was applied, in seconds.
    pub lag_seconds: Option<f64>,
    /// When it last stored its checkpoint (null before its first batch).
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BuildInfo {
    pub version: &'static str,
    /// `debug` or `release`.
    pub profile: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DetailedHealth {
    pub postgres: ComponentHealth,
    pub nats: ComponentHealth,
    pub pool: PoolHealth,
    pub relay: RelayHealth,
    pub projections: Vec<ProjectionHealth>,
    pub build: BuildInfo,
}

/// Times `check`; over [`CHECK_TIMEOUT`] or an error is `down`.
async fn timed<F, T, E>(check: F) -> ComponentHealth
where
    F: std::future::Future<Output = std::result::Result<T, E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let error = match outcome {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    };
    ComponentHealth {
        status: if error.is_none() { "ok" } else { "down" },
        latency_ms,
        error,
    }
}

/// name, stream sequence, last recorded_at applied, failure, updated_at
type CheckpointRow = (
    String,
    i64,
    Option<DateTime<Utc>>,
    Option<String>,
    DateTime<Utc>,
);

/// Each component, the relay and every projection, in detail.
#[utoipa::path(get, path = "/v1/debug/health/detailed", tag = "admin", security(("bearer" = [])), responses(
    (status = 200, body = DetailedHealth),
    (status = 401), (status = 403, description = "Neither admin nor developer"),
))]
pub async fn detailed_health(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<DetailedHealth>> {
    user.require_any_role(&["admin", "developer"])?;
    let postgres = timed(sqlx::query_scalar::<_, i32>("select 1").fetch_one(&state.pool)).await;
    let nats = timed(state.nats.flush()).await;
    let relay: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
        "select global_position, updated_at from relay_checkpoints where name = 'main'",
    )
    .fetch_optional(&state.pool)
    .await?;
    let head: Option<i64> = sqlx::query_scalar("select max(global_position) from events")
        .fetch_one(&state.pool)
        .await?;
    let head = head.unwrap_or(0);
    let checkpoints: Vec<CheckpointRow> = sqlx::query_as(
        "select projection, stream_sequence, last_recorded_at, failure, updated_at \
         from read.projection_checkpoints order by projection",
    )
    .fetch_all(&state.pool)
    .await?;
    let jetstream = async_nats::jetstream::new(state.nats.clone());
    let stream = jetstream
        .get_stream(&state.settings.nats.stream.name)
        .await
        .ok();
    let mut checkpoints: std::collections::HashMap<String, CheckpointRow> = checkpoints
        .into_iter()
        .map(|row| (row.0.clone(), row))
        .collect();
    let mut projections = Vec::new();
    // Every projection this build has, whether it has applied anything yet.
    for projection in chronicle_projections::all_projections() {
        let name = projection.name();
        let (_, stream_sequence, recorded, failure, updated_at) = match checkpoints.remove(name) {
            Some((name, sequence, recorded, failure, updated)) => {
                (name, sequence, recorded, failure, Some(updated))
            }
            None => (name.to_string(), 0, None, None, None),
        };
        let pending_events = match &stream {
            Some(stream) => match stream.get_consumer::<pull::Config>(name).await {
                Ok(mut consumer) => consumer.info().await.ok().map(|info| info.num_pending),
                Err(_) => None,
            },
            None => None,
        };
        projections.push(ProjectionHealth {
            name: name.to_string(),
            state: if failure.is_some() {
                "stopped"
            } else {
                "running"
            },
            error: failure,
            stream_sequence,
            pending_events,
            lag_seconds: recorded
                .zip(updated_at)
                .map(|(recorded, updated)| (updated - recorded).num_milliseconds() as f64 / 1000.0),
            updated_at,
        });
    }
    Ok(axum::Json(DetailedHealth {
        postgres,
        nats,
        pool: PoolHealth {
            size: state.pool.size(),
            idle: state.pool.num_idle(),
            max: state.pool.options().get_max_connections(),
        },
        relay: RelayHealth {
            global_position: relay.map_or(0, |(position, _)| position),
            head_position: head,
            lag_events: (head - relay.map_or(0, |(position, _)| position)).max(0),
            updated_at: relay.map(|(_, at)| at),
        },
        projections,
        build: BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        },
    }))
}
