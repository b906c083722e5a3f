//! Executes commands against the Postgres event store.
//!
//! This is cqrs-es's load → handle → commit cycle, kept in our hands so that
//! the caller gets the new aggregate state and a consistency token back, and so
//! that an optimistic-concurrency conflict is retried on fresh state a few
//! times before it becomes a 409.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SubsecRound, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use sqlx::PgPool;

use crate::consistency::{ConsistencyToken, TokenKeys};
use crate::event_repository::EventRepository;

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

/// Aggregates whose history grows without bound (every edit of a task is an
/// event) are loaded from a snapshot plus the events after it, so a command
/// costs the same on a task with 10 events as on one with 10,000. The
/// snapshot is written in the command's own transaction every `n` events.
///
/// A snapshot is the aggregate's serde form: a change to `Task`'s or `ChatSession`'s fields must
/// ship with a migration that deletes its rows from `snapshots` (they are a
/// cache; the events stay the source of truth).
fn snapshot_every(aggregate_type: &str) -> Option<usize> {
    match aggregate_type {
        // A chat session gains two events per exchange; its state is small.
        // An inbox gains an event per read or delete; its state is a version.
        "Task" | "ChatSession" | "NotificationInbox" => Some(TASK_SNAPSHOT_EVERY),
        _ => None,
    }
}

/// Small enough that a load replays at most 19 events, large enough that the
/// snapshot write (one UPDATE in the same transaction) is rare.
const TASK_SNAPSHOT_EVERY: usize = 20;

/// The outcome of a command that was accepted.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The aggregate after the command's events.
    pub aggregate: A,
    /// The events the command wrote (empty when it changed nothing).
    pub events: Vec<A::Event>,
    /// Names the last event written, sealed for the command's actor; `None`
    /// when the command changed nothing.
    pub token: Option<ConsistencyToken>,
    /// Where the aggregate stands after this command, for a next command
    /// that need not load it again ([`CommandExecutor::execute_at`]); `None`
    /// when this command wrote a snapshot (whose version is then the store's
    /// to know: the next command loads).
    pub next: Option<Loaded<A>>,
}

/// An aggregate as the event store had it at one point: its state, the
/// sequence of its last event and the version of its snapshot. A command
/// given one ([`CommandExecutor::execute_at`]) commits after that sequence
/// without loading; if another command got there first, the commit
/// conflicts on the sequence and the command runs again, loaded.
#[derive(Debug, Clone)]
pub struct Loaded<A: Aggregate> {
    pub aggregate: A,
    sequence: usize,
    snapshot: Option<usize>,
}

impl<A: Aggregate> Loaded<A> {
    /// An aggregate with no events yet: where a command on an id the
    /// caller has just generated (a fresh UUID v4) starts.
    pub fn empty() -> Self {
        Self {
            aggregate: A::default(),
            sequence: 0,
            snapshot: None,
        }
    }

    fn context(self, aggregate_id: &str) -> EventStoreAggregateContext<A> {
        EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_string(),
            aggregate: self.aggregate,
            current_sequence: self.sequence,
            current_snapshot: self.snapshot,
        }
    }
}

/// Whether committing `events` after `sequence` writes a snapshot: the
/// rule of cqrs-es's snapshot store (`SourceOfTruth::Snapshot`), whose
/// snapshot version only the store then knows.
fn writes_snapshot(aggregate_type: &str, sequence: usize, events: usize) -> bool {
    match snapshot_every(aggregate_type) {
        Some(size) => events >= size - (sequence % size),
        None => false,
    }
}

/// Runs commands for one aggregate type.
pub struct CommandExecutor<A: Aggregate> {
    store: PersistedEventStore<EventRepository, A>,
    services: A::Services,
    turns: Turns,
    /// Seals each token for the command's actor (the caller who gets the
    /// answer); without them (command-line tools) tokens are left unsealed
    /// and no query honours them.
    token_keys: Option<TokenKeys>,
}

/// One async mutex per aggregate id with commands in flight; an entry lives
/// only while someone holds or waits for it.
#[derive(Default)]
struct Turns {
    by_id: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds an aggregate's turn; gives it back (and forgets an idle id) on drop.
struct Turn<'a> {
    turns: &'a Turns,
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turns {
    async fn acquire(&self, id: &str) -> Turn<'_> {
        let lock = {
            let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
            by_id.entry(id.to_string()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        Turn {
            turns: self,
            id: id.to_string(),
            lock,
            guard: Some(guard),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut by_id = self.turns.by_id.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and ours. More means someone waits.
        if Arc::strong_count(&self.lock) == 2 {
            by_id.remove(&self.id);
        }
    }
}

impl<A> CommandExecutor<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    pub fn new(pool: PgPool, services: A::Services) -> Self {
        let repository = EventRepository::new(pool);
        let store = match snapshot_every(A::TYPE) {
            Some(size) => PersistedEventStore::new_snapshot_store(repository, size),
            None => PersistedEventStore::new_event_store(repository),
        };
        Self {
            store,
            services,
            turns: Turns::default(),
            token_keys: None,
        }
    }

    /// Seals the consistency tokens of accepted commands with `keys`.
    pub fn issuing_tokens(mut self, keys: TokenKeys) -> Self {
        self.token_keys = Some(keys);
        self
    }

    /// The token naming `sequence`, sealed for the actor in `metadata`.
    fn token(
        &self,
        aggregate_id: &str,
        sequence: i64,
        metadata: &HashMap<String, String>,
    ) -> ConsistencyToken {
        let token = ConsistencyToken {
            aggregate_type: A::TYPE.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence,
            seal: None,
        };
        let actor = metadata
            .get("actor_id")
            .and_then(|id| id.parse::<uuid::Uuid>().ok());
        match (&self.token_keys, actor) {
            (Some(keys), Some(actor)) => keys.seal(actor, token),
            _ => token,
        }
    }

    /// Loads the aggregate as the event store has it.
    pub async fn load(&self, aggregate_id: &str) -> Result<A, AggregateError<A::Error>> {
        Ok(self.load_at(aggregate_id).await?.aggregate)
    }

    /// [`Self::load`], with the position a next command can commit at
    /// without loading again ([`Self::execute_at`]).
    pub async fn load_at(&self, aggregate_id: &str) -> Result<Loaded<A>, AggregateError<A::Error>> {
        let context = self.load_context(aggregate_id).await?;
        Ok(Loaded {
            aggregate: context.aggregate,
            sequence: context.current_sequence,
            snapshot: context.current_snapshot,
        })
    }

    /// The store's snapshot and events after it: two round trips, counted.
    async fn load_context(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        metrics::counter!("chronicle_aggregate_loads_total", "aggregate" => A::TYPE).increment(1);
        self.store.load_aggregate(aggregate_id).await
    }

    /// Handles `command` and commits its events with `metadata`.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        self.execute_as(aggregate_id, command, metadata, None).await
    }

    /// [`Self::execute`] from where `at` says the aggregate stands (from
    /// [`Self::load_at`] or a previous command's [`Executed::next`]): the
    /// first attempt does not load it. Should another command have
    /// committed since, the commit conflicts and the command runs again the
    /// ordinary way, loaded; nothing is written from a stale state.
    pub async fn execute_at(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
        at: Loaded<A>,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        self.execute_as(aggregate_id, command, metadata, Some(at))
            .await
    }

    async fn execute_as(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
        at: Option<Loaded<A>>,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        let started = std::time::Instant::now();
        // Commands on one aggregate take turns in this process: racing them
        // would only make all but one fail their commit and retry (or 409
        // under heavy contention). Other processes still race, and lose to
        // the optimistic check as before.
        let turn = self.turns.acquire(aggregate_id).await;
        let result = self
            .execute_with_retries(aggregate_id, command, metadata, at)
            .await;
        drop(turn);
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

    /// [`Self::execute`] for an id the caller has just generated (a fresh
    /// UUID v4): the first attempt skips loading the aggregate (its snapshot
    /// lookup and its events, two round trips) and commits against an empty
    /// history. Should the id exist after all, the commit of sequence 1
    /// conflicts and the command runs again the ordinary way, loaded.
    pub async fn execute_new(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        self.execute_at(aggregate_id, command, metadata, Loaded::empty())
            .await
    }

    async fn execute_with_retries(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
        mut at: Option<Loaded<A>>,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        for attempt in 0..=CONFLICT_RETRIES {
            // Only the first attempt may start from a given position.
            let mut context = match at.take() {
                Some(at) => at.context(aggregate_id),
                None => self.load_context(aggregate_id).await?,
            };
            let sink = EventSink::default();
            // Handle on a copy: `EventSink::write` applies each event to the
            // aggregate it is given, and the store applies the events again to
            // the context's aggregate when it writes a snapshot. Handling on
            // the context itself would count every event twice in snapshots.
            let mut aggregate = context.aggregate().clone();
            aggregate
                .handle(command.clone(), &self.services, &sink)
                .await
                .map_err(AggregateError::UserError)?;
            let events = sink.collect().await;
            let (sequence, snapshot) = (context.current_sequence, context.current_snapshot);
            if events.is_empty() {
                let next = Some(Loaded {
                    aggregate: aggregate.clone(),
                    sequence,
                    snapshot,
                });
                return Ok(Executed {
                    aggregate,
                    events,
                    token: None,
                    next,
                });
            }
            let count = events.len() as u64;
            let next = (!writes_snapshot(A::TYPE, sequence, events.len())).then(|| Loaded {
                aggregate: aggregate.clone(),
                sequence: sequence + events.len(),
                snapshot,
            });
            match self
                .store
                .commit(events.clone(), context, metadata.clone())
                .await
            {
                Ok(committed) => {
                    metrics::counter!("chronicle_events_appended_total", "aggregate" => A::TYPE)
                        .increment(count);
                    let token = committed
                        .last()
                        .map(|event| self.token(aggregate_id, event.sequence as i64, &metadata));
                    return Ok(Executed {
                        aggregate,
                        events,
                        token,
                        next,
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
