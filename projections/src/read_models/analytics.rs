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

/// What events add up to, before it is written: `(recorded_at, metric, by)`.
type Tally = Vec<(DateTime<Utc>, &'static str, i64)>;

/// Adds each `by` to its `metric` in the hour of its time, in one statement
/// for a whole batch (summed per hour and metric first: an upsert may touch
/// a row only once).
async fn add(conn: &mut PgConnection, tally: Tally) -> Result<(), ProjectionError> {
    if tally.is_empty() {
        return Ok(());
    }
    let (mut at, mut metric, mut by) = (Vec::new(), Vec::new(), Vec::new());
    for (time, name, amount) in tally {
        at.push(time);
        metric.push(name);
        by.push(amount);
    }
    sqlx::query(
        "insert into read.analytics_hourly (hour, metric, value) \
         select date_trunc('hour', recorded_at), metric, sum(amount)::bigint \
         from unnest($1::timestamptz[], $2::text[], $3::bigint[]) as u(recorded_at, metric, amount) \
         group by 1, 2 \
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

/// The read models of this module: what one event adds to the tally, then
/// the whole batch written in one statement ([`add`]).
macro_rules! tallied_read_model {
    ($projection:ident, $event:ty, $name:literal, $aggregate_type:literal, [$($metric:ident),+], $tally:ident) => {
        pub struct $projection;

        #[async_trait]
        impl ReadModel for $projection {
            type Event = $event;
            const NAME: &'static str = $name;
            const AGGREGATE_TYPE: &'static str = $aggregate_type;

            async fn apply(
                &self,
                conn: &mut PgConnection,
                decoded: Decoded<'_, $event>,
            ) -> Result<(), ProjectionError> {
                self.apply_batch(conn, vec![decoded]).await
            }

            async fn apply_batch(
                &self,
                conn: &mut PgConnection,
                events: Vec<Decoded<'_, $event>>,
            ) -> Result<(), ProjectionError> {
                let mut tally = Tally::new();
                for decoded in events {
                    $tally(decoded.event, decoded.envelope.recorded_at, &mut tally);
                }
                add(conn, tally).await
            }

            async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
                reset(conn, &[$($metric),+]).await
            }
        }
    };
}

tallied_read_model!(
    AnalyticsUsersProjection,
    UserEvent,
    "analytics_users",
    "User",
    [USERS],
    tally_user
);
tallied_read_model!(
    AnalyticsTasksProjection,
    TaskEvent,
    "analytics_tasks",
    "Task",
    [TASKS, TASKS_COMPLETED],
    tally_task
);
tallied_read_model!(
    AnalyticsChatProjection,
    ChatSessionEvent,
    "analytics_chat",
    "ChatSession",
    [SESSIONS, MESSAGES, TOKENS],
    tally_chat
);

fn tally_user(event: UserEvent, at: DateTime<Utc>, tally: &mut Tally) {
    if let UserEvent::UserRegistered { .. } = event {
        tally.push((at, USERS, 1));
    }
}

fn tally_task(event: TaskEvent, at: DateTime<Utc>, tally: &mut Tally) {
    match event {
        TaskEvent::TaskCreated { .. } => tally.push((at, TASKS, 1)),
        TaskEvent::TaskCompleted { .. } => tally.push((at, TASKS_COMPLETED, 1)),
        _ => {}
    }
}

fn tally_chat(event: ChatSessionEvent, at: DateTime<Utc>, tally: &mut Tally) {
    match event {
        ChatSessionEvent::ChatSessionStarted { .. } => tally.push((at, SESSIONS, 1)),
        ChatSessionEvent::MessageAdded { usage, .. } => {
            tally.push((at, MESSAGES, 1));
            match usage.map(|usage| i64::from(usage.total_tokens)) {
                Some(tokens) if tokens > 0 => tally.push((at, TOKENS, tokens)),
                _ => {}
            }
        }
        _ => {}
    }
}
