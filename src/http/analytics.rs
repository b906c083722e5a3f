//! `/v1/analytics` (admin, analyst): users, chat sessions, messages, tokens
//! and tasks over time, summed from the hourly counts of the analytics
//! projections (`read.analytics_hourly`), never from the event store.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::error::{ApiError, Result};
use crate::http::extract::{AuthUser, Query};
use crate::state::AppState;

/// The most buckets one answer holds.
const MAX_BUCKETS: i64 = 1000;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Hour,
    #[default]
    Day,
    /// Weeks start on Monday.
    Week,
}

impl Bucket {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
        }
    }

    fn length(self) -> Duration {
        match self {
            Self::Hour => Duration::hours(1),
            Self::Day => Duration::days(1),
            Self::Week => Duration::weeks(1),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    /// Start of the window (RFC 3339), rounded down to the hour; default 30 days before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End of the window (RFC 3339, exclusive; an hour it falls into counts whole); default now.
    pub to: Option<DateTime<Utc>>,
    /// `hour`, `day` (default) or `week`; at most 1000 buckets.
    pub bucket: Option<Bucket>,
}

/// What happened in one bucket, or in the whole window.
#[derive(Debug, Default, Serialize, ToSchema, sqlx::FromRow, PartialEq, Eq)]
pub struct Figures {
    /// Users registered.
    pub users: i64,
    /// Chat sessions started.
    pub sessions: i64,
    /// Chat messages (both roles).
    pub messages: i64,
    /// Upstream tokens, as reported.
    pub tokens: i64,
    /// Tasks created.
    pub tasks: i64,
    /// Tasks completed.
    pub tasks_completed: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Point {
    /// Start of the bucket.
    pub start: DateTime<Utc>,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Analytics {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: Bucket,
    /// Sums over the window.
    pub totals: Figures,
    /// One point per bucket, oldest first, empty buckets included.
    pub series: Vec<Point>,
}

#[derive(sqlx::FromRow)]
struct Row {
    start: DateTime<Utc>,
    #[sqlx(flatten)]
    figures: Figures,
}

/// Users, sessions, messages, tokens and tasks over time.
#[utoipa::path(get, path = "/v1/analytics", tag = "admin", security(("bearer" = [])), params(AnalyticsQuery), responses(
    (status = 200, body = Analytics),
    (status = 401), (status = 403, description = "Neither admin nor analyst"),
    (status = 422, description = "`from` not before `to`, more than 1000 buckets, or an unknown bucket"),
))]
pub async fn analytics(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<AnalyticsQuery>,
) -> Result<axum::Json<Analytics>> {
    user.require_any_role(&["admin", "analyst"])?;
    let bucket = query.bucket.unwrap_or_default();
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query.from.unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(ApiError::invalid_field("from", "must be before `to`"));
    }
    let too_many = || {
        ApiError::invalid_field(
            "bucket",
            format!("the window holds more than {MAX_BUCKETS} buckets; widen the bucket or narrow the window"),
        )
    };
    // A window this long holds more buckets than that whatever its
    // alignment: refused before any query. Nearer the limit, the series
    // itself (aligned on the bucket) is counted below.
    if (to - from).num_seconds() / bucket.length().num_seconds() > MAX_BUCKETS {
        return Err(too_many());
    }
    let rows: Vec<Row> = sqlx::query_as(
        "with window_ as (select date_trunc('hour', $1::timestamptz) as lo, $2::timestamptz as hi), \
              buckets as ( \
                select start from window_, generate_series(date_trunc($3, lo), hi - interval '1 microsecond', \
                  ('1 ' || $3)::interval) as start limit $4) \
         select b.start, \
           coalesce(sum(a.value) filter (where a.metric = 'users'), 0)::bigint as users, \
           coalesce(sum(a.value) filter (where a.metric = 'sessions'), 0)::bigint as sessions, \
           coalesce(sum(a.value) filter (where a.metric = 'messages'), 0)::bigint as messages, \
           coalesce(sum(a.value) filter (where a.metric = 'tokens'), 0)::bigint as tokens, \
           coalesce(sum(a.value) filter (where a.metric = 'tasks'), 0)::bigint as tasks, \
           coalesce(sum(a.value) filter (where a.metric = 'tasks_completed'), 0)::bigint as tasks_completed \
         from buckets b cross join window_ w \
         left join read.analytics_hourly a \
           on a.hour >= b.start and a.hour < b.start + ('1 ' || $3)::interval \
          and a.hour >= w.lo and a.hour < w.hi \
         group by b.start order by b.start",
    )
    .bind(from)
    .bind(to)
    .bind(bucket.as_str())
    .bind(MAX_BUCKETS + 1)
    .fetch_all(&state.pool)
    .await?;
    if rows.len() as i64 > MAX_BUCKETS {
        return Err(too_many());
    }
    let mut totals = Figures::default();
    for row in &rows {
        let figures = &row.figures;
        totals.users += figures.users;
        totals.sessions += figures.sessions;
        totals.messages += figures.messages;
        totals.tokens += figures.tokens;
        totals.tasks += figures.tasks;
        totals.tasks_completed += figures.tasks_completed;
    }
    Ok(axum::Json(Analytics {
        from,
        to,
        bucket,
        totals,
        series: rows
            .into_iter()
            .map(|row| Point {
                start: row.start,
                figures: row.figures,
            })
            .collect(),
    }))
}
