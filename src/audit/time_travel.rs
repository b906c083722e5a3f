//! Time travel: an aggregate's state at a past moment or sequence, rebuilt by
//! applying its stored events exactly as the command side does
//! (`cqrs_es::Aggregate::apply`).

use chronicle_aggregates::audit_query::AuditQuery;
use chronicle_aggregates::auth_session::AuthSession;
use chronicle_aggregates::chat_session::ChatSession;
use chronicle_aggregates::mcp_server::McpServer;
use chronicle_aggregates::notification_inbox::NotificationInbox;
use chronicle_aggregates::project::Project;
use chronicle_aggregates::task::Task;
use chronicle_aggregates::user::User;
use chronicle_aggregates::workspace_file::WorkspaceFile;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::PgPool;

/// Up to where to apply the history: the events that meet every bound
/// given; with none, all of them (the latest state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Point {
    /// Events recorded at or before this time.
    pub as_of: Option<DateTime<Utc>>,
    /// Events up to this sequence number.
    pub up_to_sequence: Option<i64>,
}

/// An aggregate's state at a point of its history.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The last sequence applied (0: none yet at that point).
    pub sequence: i64,
    /// When that event was recorded.
    pub recorded_at: Option<DateTime<Utc>>,
    pub state: Value,
}

/// Why there is no state to show.
#[derive(Debug, thiserror::Error)]
pub enum TimeTravelError {
    #[error("no aggregate type `{0}`")]
    UnknownType(String),
    #[error("no such aggregate")]
    NotFound,
    #[error("stored event {0} does not decode: {1}")]
    Undecodable(String, String),
    #[error("event store: {0}")]
    Database(#[from] sqlx::Error),
}

/// The aggregate types that can be rebuilt. A new aggregate adds a line here.
pub const KNOWN_TYPES: [&str; 9] = [
    Task::TYPE,
    User::TYPE,
    AuthSession::TYPE,
    AuditQuery::TYPE,
    Project::TYPE,
    ChatSession::TYPE,
    McpServer::TYPE,
    NotificationInbox::TYPE,
    WorkspaceFile::TYPE,
];

/// Rebuilds `aggregate_type`/`aggregate_id` at `point`.
pub async fn rebuild(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    point: Point,
) -> Result<Rebuilt, TimeTravelError> {
    if !KNOWN_TYPES.contains(&aggregate_type) {
        return Err(TimeTravelError::UnknownType(aggregate_type.to_string()));
    }
    let exists: bool = sqlx::query_scalar(
        "select exists(select 1 from events where aggregate_type = $1 and aggregate_id = $2)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_one(pool)
    .await?;
    if !exists {
        return Err(TimeTravelError::NotFound);
    }
    let events: Vec<(i64, Value, DateTime<Utc>)> = sqlx::query_as(
        "select sequence, payload, recorded_at from events \
         where aggregate_type = $1 and aggregate_id = $2 \
           and ($3::timestamptz is null or recorded_at <= $3) \
           and ($4::bigint is null or sequence <= $4) \
         order by sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(point.as_of)
    .bind(point.up_to_sequence)
    .fetch_all(pool)
    .await?;
    let sequence = events.last().map(|(sequence, ..)| *sequence).unwrap_or(0);
    let recorded_at = events.last().map(|(.., recorded_at)| *recorded_at);
    let state = match aggregate_type {
        Task::TYPE => fold::<Task>(aggregate_id, events),
        User::TYPE => fold::<User>(aggregate_id, events),
        AuthSession::TYPE => fold::<AuthSession>(aggregate_id, events),
        AuditQuery::TYPE => fold::<AuditQuery>(aggregate_id, events),
        Project::TYPE => fold::<Project>(aggregate_id, events),
        ChatSession::TYPE => fold::<ChatSession>(aggregate_id, events),
        McpServer::TYPE => fold::<McpServer>(aggregate_id, events),
        NotificationInbox::TYPE => fold::<NotificationInbox>(aggregate_id, events),
        WorkspaceFile::TYPE => fold::<WorkspaceFile>(aggregate_id, events),
        other => Err(TimeTravelError::UnknownType(other.to_string())),
    }?;
    Ok(Rebuilt {
        aggregate_type: aggregate_type.to_string(),
        aggregate_id: aggregate_id.to_string(),
        sequence,
        recorded_at,
        state,
    })
}

/// Applies the stored (externally tagged) payloads in order.
fn fold<A: Aggregate>(
    aggregate_id: &str,
    events: Vec<(i64, Value, DateTime<Utc>)>,
) -> Result<Value, TimeTravelError> {
    let mut aggregate = A::default();
    for (sequence, payload, _) in events {
        let event: A::Event = serde_json::from_value(payload).map_err(|err| {
            TimeTravelError::Undecodable(
                format!("{}:{aggregate_id}:{sequence}", A::TYPE),
                err.to_string(),
            )
        })?;
        aggregate.apply(event);
    }
    serde_json::to_value(&aggregate)
        .map_err(|err| TimeTravelError::Undecodable(A::TYPE.to_string(), err.to_string()))
}
