//! Executes commands against the Postgres event store.
//!
//! This is cqrs-es's load → handle → commit cycle, kept in our hands so that
//! the caller gets the new aggregate state and a consistency token back, and so
//! that an optimistic-concurrency conflict is retried on fresh state a few
//! times before it becomes a 409.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;

use crate::consistency::ConsistencyToken;

/// How often a conflicting command is retried before it is answered 409.
const CONFLICT_RETRIES: usize = 4;

/// The current time at the precision Postgres stores (microseconds), so that
/// a command's answer and the read model agree to the digit.
pub fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

/// `time` truncated to microseconds.
pub fn micros(time: DateTime<Utc>) -> DateTime<Utc> {
    time.trunc_subsecs(6)
}

/// The outcome of a command that was accepted.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The aggregate after the command's events.
    pub aggregate: A,
    /// The events the command wrote (empty when it changed nothing).
    pub events: Vec<A::Event>,
    /// Names the last event written; `None` when the command changed nothing.
    pub token: Option<ConsistencyToken>,
}

/// Runs commands for one aggregate type.
pub struct CommandExecutor<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    services: A::Services,
}

impl<A> CommandExecutor<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    pub fn new(pool: PgPool, services: A::Services) -> Self {
        let repository = PostgresEventRepository::new(pool);
        Self {
            store: PersistedEventStore::new_event_store(repository),
            services,
        }
    }

    /// Loads the aggregate as the event store has it.
    pub async fn load(&self, aggregate_id: &str) -> Result<A, AggregateError<A::Error>> {
        let mut context = self.store.load_aggregate(aggregate_id).await?;
        Ok(context.aggregate().clone())
    }

    /// Handles `command` and commits its events with `metadata`.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        let started = std::time::Instant::now();
        let result = self
            .execute_with_retries(aggregate_id, command, metadata)
            .await;
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(AggregateError::UserError(_)) => "rejected",
            Err(AggregateError::AggregateConflict) => "conflict",
            Err(_) => "failed",
        };
        metrics::counter!("chronicle_commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("chronicle_command_duration_seconds", "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn execute_with_retries(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        for attempt in 0..=CONFLICT_RETRIES {
            let mut context = self.store.load_aggregate(aggregate_id).await?;
            let sink = EventSink::default();
            context
                .aggregate()
                .handle(command.clone(), &self.services, &sink)
                .await
                .map_err(AggregateError::UserError)?;
            let events = sink.collect().await;
            let aggregate = context.aggregate().clone();
            if events.is_empty() {
                return Ok(Executed {
                    aggregate,
                    events,
                    token: None,
                });
            }
            let count = events.len() as u64;
            match self
                .store
                .commit(events.clone(), context, metadata.clone())
                .await
            {
                Ok(committed) => {
                    metrics::counter!("chronicle_events_appended_total", "aggregate" => A::TYPE)
                        .increment(count);
                    let token = committed.last().map(|event| ConsistencyToken {
                        aggregate_type: A::TYPE.to_string(),
                        aggregate_id: aggregate_id.to_string(),
                        sequence: event.sequence as i64,
                    });
                    return Ok(Executed {
                        aggregate,
                        events,
                        token,
                    });
                }
                Err(AggregateError::AggregateConflict) if attempt < CONFLICT_RETRIES => {
                    metrics::counter!("chronicle_command_conflicts_retried_total", "aggregate" => A::TYPE)
                        .increment(1);
                    tokio::task::yield_now().await;
                }
                Err(err) => return Err(err),
            }
        }
        Err(AggregateError::AggregateConflict)
    }
}
