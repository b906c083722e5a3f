//! After each scenario: no event lost between the store and the stream, and
//! no read model that disagrees with the event store.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

/// What the check found once the pipeline was quiet (or the deadline passed).
#[derive(Debug, Clone, Default)]
pub struct Integrity {
    pub events: i64,
    /// Messages in the JetStream stream; `None` when no relay ran (rebuild database).
    pub stream_messages: Option<i64>,
    /// Events in the store that never reached the stream.
    pub lost: i64,
    /// Aggregates whose projected version differs from the store's last sequence,
    /// summed over projections, plus `read.tasks` rows that disagree.
    pub divergent: i64,
    pub settle_ms: u64,
    pub detail: Vec<String>,
}

impl Integrity {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.divergent == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "events": self.events,
            "stream_messages": self.stream_messages,
            "lost_events": self.lost,
            "divergent": self.divergent,
            "settle_ms": self.settle_ms,
            "ok": self.ok(),
            "detail": self.detail,
        })
    }
}

/// Waits (up to `deadline`) for the relay and every projection to catch up,
/// then compares. `stream` is `None` when nothing publishes (rebuild database).
pub async fn check(
    pool: &PgPool,
    stream: Option<&async_nats::jetstream::Context>,
    stream_name: &str,
    deadline: Duration,
) -> anyhow::Result<Integrity> {
    let started = Instant::now();
    loop {
        let found = compare(pool, stream, stream_name).await?;
        if found.ok() || started.elapsed() > deadline {
            return Ok(Integrity {
                settle_ms: started.elapsed().as_millis() as u64,
                ..found
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn compare(
    pool: &PgPool,
    stream: Option<&async_nats::jetstream::Context>,
    stream_name: &str,
) -> anyhow::Result<Integrity> {
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await?;
    let stream_messages = match stream {
        Some(js) => {
            let mut stream = js.get_stream(stream_name).await?;
            Some(stream.info().await?.state.messages as i64)
        }
        None => None,
    };
    let lost = stream_messages.map_or(0, |m| (events - m).max(0));
    let mut divergent = 0;
    let mut detail = Vec::new();
    if let Some(m) = stream_messages {
        if m != events {
            detail.push(format!("stream has {m} messages, store {events} events"));
        }
    }
    for projection in chronicle_projections::all_projections() {
        let types: Vec<String> = projection
            .aggregate_types()
            .iter()
            .map(|t| t.to_string())
            .collect();
        // Every aggregate's last sequence in the store must be the version the
        // projection recorded for it, and the projection must know no other.
        // No aggregate types means every type (the audit trail).
        let count: i64 = sqlx::query_scalar(
            "select count(*) from \
               (select aggregate_type, aggregate_id, max(sequence) as last from events \
                 where cardinality($2::text[]) = 0 or aggregate_type = any($2) group by 1, 2) e \
             full join \
               (select aggregate_type, aggregate_id, version from read.aggregate_versions \
                 where projection = $1) v using (aggregate_type, aggregate_id) \
             where e.last is distinct from v.version",
        )
        .bind(projection.name())
        .bind(&types)
        .fetch_one(pool)
        .await?;
        if count > 0 {
            detail.push(format!("{}: {count} aggregates differ", projection.name()));
        }
        divergent += count;
    }
    // The task rows themselves: each task that was not purged has a row at
    // its last sequence; no row exists for anything else.
    let tasks: i64 = sqlx::query_scalar(
        "with store as ( \
           select aggregate_id, max(sequence) as last, \
                  bool_or(event_type = 'TaskPurged') as purged \
             from events where aggregate_type = 'Task' group by 1) \
         select count(*) from store s full join read.tasks t on t.id::text = s.aggregate_id \
          where (s.aggregate_id is null) \
             or (not s.purged and t.id is null) \
             or (s.purged and t.id is not null) \
             or (t.id is not null and t.version <> s.last)",
    )
    .fetch_one(pool)
    .await?;
    if tasks > 0 {
        detail.push(format!("read.tasks: {tasks} rows differ"));
    }
    divergent += tasks;
    Ok(Integrity {
        events,
        stream_messages,
        lost,
        divergent,
        settle_ms: 0,
        detail,
    })
}
