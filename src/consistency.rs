//! Read-your-writes: a command answers with a consistency token naming its last
//! event; a query that presents it (or, without one, the caller's last write
//! seen by this process) waits until the read model has applied that event.
//!
//! Projections notify `chronicle_projected` when they commit, so waiting costs
//! one check per commit rather than a polling loop.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_projections::PROJECTED_CHANNEL;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `<AggregateType>:<aggregate_id>:<sequence>`: the same as the event's `Nats-Msg-Id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }
}

impl FromStr for ConsistencyToken {
    type Err = ();

    fn from_str(raw: &str) -> Result<Self, ()> {
        let mut parts = raw.rsplitn(2, ':');
        let sequence = parts.next().ok_or(())?.parse::<i64>().map_err(|_| ())?;
        let (aggregate_type, aggregate_id) = parts.next().ok_or(())?.split_once(':').ok_or(())?;
        if aggregate_type.is_empty() || aggregate_id.is_empty() || sequence < 1 {
            return Err(());
        }
        Ok(Self {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence,
        })
    }
}

/// The projection that materialises an aggregate type's events.
pub fn projection_for(aggregate_type: &str) -> Option<&'static str> {
    match aggregate_type {
        "Task" => Some("tasks"),
        "User" => Some("users"),
        "AuthSession" => Some("sessions"),
        _ => None,
    }
}

/// The read model did not catch up in time.
#[derive(Debug, thiserror::Error)]
#[error("the read model has not caught up with your last change yet")]
pub struct NotCaughtUp;

/// Waits for projections on behalf of queries.
pub struct Consistency {
    pool: PgPool,
    projected: Arc<Notify>,
    max_wait: Duration,
    last_writes: Mutex<HashMap<(Uuid, &'static str), ConsistencyToken>>,
}

impl Consistency {
    /// Starts listening for projection commits until `shutdown`.
    pub async fn start(
        pool: PgPool,
        max_wait: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let projected = Arc::new(Notify::new());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(PROJECTED_CHANNEL).await?;
        let notify = projected.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = listener.recv() => {
                        // On a lost connection PgListener reconnects; waiters
                        // re-check on their own timer meanwhile.
                        if let Err(err) = received {
                            tracing::warn!(error = %err, "projection listener interrupted");
                        }
                        notify.notify_waiters();
                    }
                }
            }
        });
        Ok(Arc::new(Self {
            pool,
            projected,
            max_wait,
            last_writes: Mutex::new(HashMap::new()),
        }))
    }

    /// Remembers the caller's last write, for queries that send no token.
    pub fn record_write(&self, user_id: Uuid, token: &ConsistencyToken) {
        let Some(projection) = projection_for(&token.aggregate_type) else {
            return;
        };
        if let Ok(mut writes) = self.last_writes.lock() {
            writes.insert((user_id, projection), token.clone());
        }
    }

    /// Waits until `projection` reflects `token` (if given) or else the caller's last write.
    pub async fn wait(
        &self,
        projection: &'static str,
        user_id: Option<Uuid>,
        token: Option<ConsistencyToken>,
    ) -> Result<(), NotCaughtUp> {
        let remembered = token.is_none();
        let token = token.or_else(|| {
            let user_id = user_id?;
            let writes = self.last_writes.lock().ok()?;
            writes.get(&(user_id, projection)).cloned()
        });
        let Some(token) = token else { return Ok(()) };
        self.wait_for(projection, &token).await?;
        // Once the read model has the caller's last write it keeps it (versions
        // never go back), so later token-less queries need not ask again.
        if let (true, Some(user_id)) = (remembered, user_id) {
            if let Ok(mut writes) = self.last_writes.lock() {
                if writes.get(&(user_id, projection)) == Some(&token) {
                    writes.remove(&(user_id, projection));
                }
            }
        }
        Ok(())
    }

    async fn wait_for(
        &self,
        projection: &'static str,
        token: &ConsistencyToken,
    ) -> Result<(), NotCaughtUp> {
        if projection_for(&token.aggregate_type) != Some(projection) {
            return Ok(());
        }
        let deadline = Instant::now() + self.max_wait;
        loop {
            let notified = self.projected.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .reached(projection, token)
                .await
                .map_err(|_| NotCaughtUp)?
            {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                metrics::counter!("chronicle_consistency_timeouts_total").increment(1);
                return Err(NotCaughtUp);
            }
            let recheck = (deadline - now).min(Duration::from_millis(100));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(recheck) => {}
            }
        }
    }

    async fn reached(
        &self,
        projection: &str,
        token: &ConsistencyToken,
    ) -> Result<bool, sqlx::Error> {
        let version: Option<i64> = sqlx::query_scalar(
            "select version from read.aggregate_versions \
             where projection = $1 and aggregate_type = $2 and aggregate_id = $3",
        )
        .bind(projection)
        .bind(&token.aggregate_type)
        .bind(&token.aggregate_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(version.unwrap_or(0) >= token.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_through_its_text_form() {
        let token = ConsistencyToken {
            aggregate_type: "Task".into(),
            aggregate_id: "6b1f6a8e-0000-4000-8000-000000000001".into(),
            sequence: 12,
        };
        assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for raw in [
            "", "Task", "Task:1", "Task:x:y", ":1:2", "Task::3", "Task:1:0",
        ] {
            assert!(raw.parse::<ConsistencyToken>().is_err(), "{raw}");
        }
    }
}
