//! `read.analytics_hourly`: counts per hour of what the analytics route
//! reports (users registered, tasks created and completed, chat sessions
//! started, messages, tokens), by the time each event was recorded.
//!
//! One read model per source aggregate type, so each keeps the usual
//! per-aggregate version guard (an event counted twice would skew every
//! figure); each owns its metrics and resets only those.

use async_trait::async_trait;
use chronicle_aggregates::chat_session::ChatSessionEvent;
use chronicle_aggregates::task::TaskEvent;
use chronicle_aggregates::user::UserEvent;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

/// Users registered.
pub const USERS: &str = "users";
/// Tasks created.
pub const TASKS: &str = "tasks";
/// Tasks completed (a task completed twice counts twice).
pub const TASKS_COMPLETED: &str = "tasks_completed";
/// Chat sessions started.
pub const SESSIONS: &str = "sessions";
/// Chat messages, both roles.
pub const MESSAGES: &str = "messages";
/// Upstream tokens, as the upstream reported them.
pub const TOKENS: &str = "tokens";

/// Adds `by` to `metric` in the hour of `at`.
async fn count(
    conn: &mut PgConnection,
    at: DateTime<Utc>,
    metric: &str,
    by: i64,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "insert into read.analytics_hourly (hour, metric, value) \
         values (date_trunc('hour', $1), $2, $3) \
         on conflict (metric, hour) do update set value = read.analytics_hourly.value + excluded.value",
    )
    .bind(at)
    .bind(metric)
    .bind(by)
    .execute(conn)
    .await?;
    Ok(())
}

async fn reset(conn: &mut PgConnection, metrics: &[&str]) -> Result<(), ProjectionError> {
    sqlx::query("delete from read.analytics_hourly where metric = any($1)")
        .bind(metrics)
        .execute(conn)
        .await?;
    Ok(())
}

pub struct AnalyticsUsersProjection;

#[async_trait]
impl ReadModel for AnalyticsUsersProjection {
    type Event = UserEvent;
    const NAME: &'static str = "analytics_users";
    const AGGREGATE_TYPE: &'static str = "User";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, UserEvent>,
    ) -> Result<(), ProjectionError> {
        if let UserEvent::UserRegistered { .. } = decoded.event {
            count(conn, decoded.envelope.recorded_at, USERS, 1).await?;
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        reset(conn, &[USERS]).await
    }
}

pub struct AnalyticsTasksProjection;

#[async_trait]
impl ReadModel for AnalyticsTasksProjection {
    type Event = TaskEvent;
    const NAME: &'static str = "analytics_tasks";
    const AGGREGATE_TYPE: &'static str = "Task";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, TaskEvent>,
    ) -> Result<(), ProjectionError> {
        let at = decoded.envelope.recorded_at;
        match decoded.event {
            TaskEvent::TaskCreated { .. } => count(conn, at, TASKS, 1).await,
            TaskEvent::TaskCompleted { .. } => count(conn, at, TASKS_COMPLETED, 1).await,
            _ => Ok(()),
        }
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        reset(conn, &[TASKS, TASKS_COMPLETED]).await
    }
}

pub struct AnalyticsChatProjection;

#[async_trait]
impl ReadModel for AnalyticsChatProjection {
    type Event = ChatSessionEvent;
    const NAME: &'static str = "analytics_chat";
    const AGGREGATE_TYPE: &'static str = "ChatSession";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, ChatSessionEvent>,
    ) -> Result<(), ProjectionError> {
        let at = decoded.envelope.recorded_at;
        match decoded.event {
            ChatSessionEvent::ChatSessionStarted { .. } => count(conn, at, SESSIONS, 1).await,
            ChatSessionEvent::MessageAdded { usage, .. } => {
                count(&mut *conn, at, MESSAGES, 1).await?;
                match usage.map(|usage| i64::from(usage.total_tokens)) {
                    Some(tokens) if tokens > 0 => count(conn, at, TOKENS, tokens).await,
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        reset(conn, &[SESSIONS, MESSAGES, TOKENS]).await
    }
}
