//! The compliance audit trail (schema `audit`, see `docs/audit.md`): one
//! entry per event of every aggregate type, in the order the stream delivers
//! them (commit order), each hash-chained to the previous one; signed
//! checkpoints of the chain head; and the verifier that recomputes the chain
//! against the event store.
//!
//! The trail is append-only at the database level. A rebuild therefore never
//! deletes: it starts a new *generation*, and readers use the newest one.

pub mod canonical;
pub mod entry;
pub mod json;
pub mod verify;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chronicle_nats::dead_letter::RELAY_STAGE;
use chronicle_nats::EventEnvelope;
use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

pub use entry::{AuditEntry, EventView, GENESIS_HASH};

use crate::{Projection, ProjectionError};

/// The projection's name (durable consumer, checkpoint, `replay --projection audit`).
pub const AUDIT_PROJECTION: &str = "audit";

/// A checkpoint signature: a compact JWS and the id of the key that made it.
#[derive(Debug, Clone)]
pub struct Signature {
    pub kid: String,
    pub jws: String,
}

/// Signs checkpoints with the server's key. Implemented by the binary, which
/// holds the keys; this crate only needs the signature.
pub trait CheckpointSigner: Send + Sync {
    /// A compact JWS (RS256, `kid` in its header) over `payload`. Returns the
    /// key id with it, so a key rotation between two calls cannot mislabel it.
    fn sign(&self, payload: &Value) -> Result<Signature, String>;
}

/// How the audit projection takes signed checkpoints.
#[derive(Clone, Default)]
pub struct AuditConfig {
    /// Without a signer no checkpoint is taken (e.g. `chronicle replay`).
    pub signer: Option<Arc<dyn CheckpointSigner>>,
    /// A checkpoint at every seq that is a multiple of this (0: never).
    pub checkpoint_every: u64,
}

/// The chain head of the current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub generation: i32,
    /// 0 when the generation is empty.
    pub seq: i64,
    pub hash: String,
}

/// Appends one entry per event to the newest generation of `audit.entries`.
#[derive(Default)]
pub struct AuditProjection {
    config: AuditConfig,
    /// The head as this process last wrote it. Only a hint: every insert
    /// checks it against the head its transaction knows (see [`HEAD_SETTING`]),
    /// so a batch that rolled back or a rebuild elsewhere costs one reload,
    /// never a bad link.
    cached_head: Mutex<Option<Head>>,
}

impl AuditProjection {
    pub fn new(config: AuditConfig) -> Self {
        Self {
            config,
            cached_head: Mutex::default(),
        }
    }

    fn cached(&self) -> Option<Head> {
        self.cached_head.lock().ok().and_then(|head| head.clone())
    }

    fn remember(&self, head: Option<Head>) {
        if let Ok(mut slot) = self.cached_head.lock() {
            *slot = head;
        }
    }

    async fn checkpoint_if_due(
        &self,
        conn: &mut PgConnection,
        entry: &AuditEntry,
    ) -> Result<(), ProjectionError> {
        let Some(signer) = &self.config.signer else {
            return Ok(());
        };
        let every = self.config.checkpoint_every;
        if every == 0 || !(entry.seq as u64).is_multiple_of(every) {
            return Ok(());
        }
        if let Some(paused) = checkpoints_paused(&mut *conn).await? {
            tracing::warn!(
                audit.seq = entry.seq,
                "audit checkpoint not signed: {paused}"
            );
            return Ok(());
        }
        insert_checkpoint(conn, signer.as_ref(), entry.seq, &entry.hash)
            .await
            .map_err(|err| match err {
                CheckpointError::Database(err) => ProjectionError::Database(err),
                // A signer that fails now fails on retry too; stop visibly.
                CheckpointError::Signing(reason) => ProjectionError::halt(
                    format!("audit checkpoint {}", entry.seq),
                    format!("signing failed: {reason}"),
                ),
            })?;
        Ok(())
    }
}

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        AUDIT_PROJECTION
    }

    /// Every aggregate type.
    fn aggregate_types(&self) -> &'static [&'static str] {
        &[]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, &[event]).await
    }

    /// The batch's entries are chained in memory and inserted in one
    /// statement, which checks the head this transaction knows first.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        for attempt in 0..2 {
            let head = match self.cached().filter(|_| attempt == 0) {
                Some(head) => head,
                None => load_head(&mut *conn).await?,
            };
            let mut entries = Vec::with_capacity(events.len());
            let (mut seq, mut hash) = (head.seq, head.hash.clone());
            for event in events {
                seq += 1;
                let entry = AuditEntry::from_envelope(seq, &hash, event);
                hash.clone_from(&entry.hash);
                entries.push(entry);
            }
            let next = Head {
                generation: head.generation,
                seq,
                hash,
            };
            match append_after(&mut *conn, &head, &entries, &next).await? {
                Appended::All => {
                    self.remember(Some(next));
                    for entry in &entries {
                        self.checkpoint_if_due(&mut *conn, entry).await?;
                    }
                    return Ok(());
                }
                Appended::NotTheHead => self.remember(None),
                Appended::Some => break,
            }
        }
        // Right after a reload the seqs are free, so only the events
        // themselves can be in this generation already: the version guard
        // and the trail disagree.
        self.remember(None);
        Err(ProjectionError::halt(
            first.message_id(),
            "an event of this batch already has an audit entry in this generation (run `chronicle replay --projection audit`)",
        ))
    }

    /// Starts a new generation; the old one stays (the trail refuses deletes).
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        // A rebuild left the snapshot it read the parked events in; there
        // is none when the trail is reset otherwise.
        let generation: i32 = sqlx::query_scalar(
            "insert into audit.generations (generation, reason, parked_snapshot) \
             select max(generation) + 1, 'rebuild', \
               nullif(current_setting($1, true), '')::pg_snapshot \
             from audit.generations returning generation",
        )
        .bind(crate::replay::PARKED_SNAPSHOT_SETTING)
        .fetch_one(&mut *conn)
        .await?;
        let head = Head {
            generation,
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        };
        set_transaction_head(conn, &head).await?;
        self.remember(Some(head));
        Ok(())
    }
}

/// The transaction-local setting that holds the head this transaction knows
/// (`generation:seq:hash`). It is reset when the transaction ends, committed
/// or rolled back, so a stale in-memory head (a batch that rolled back, a
/// rebuild elsewhere) is caught by the first insert of the next transaction.
/// Writers of the trail hold the projection's advisory lock for the whole
/// transaction, so within it nobody else moves the head.
const HEAD_SETTING: &str = "chronicle.audit_head";

fn head_token(head: &Head) -> String {
    format!("{}:{}:{}", head.generation, head.seq, head.hash)
}

async fn set_transaction_head(conn: &mut PgConnection, head: &Head) -> Result<(), sqlx::Error> {
    sqlx::query("select set_config($1, $2, true)")
        .bind(HEAD_SETTING)
        .bind(head_token(head))
        .execute(conn)
        .await?;
    Ok(())
}

/// The newest generation and its head, read from the table and remembered
/// as this transaction's head, in one statement.
async fn load_head(conn: &mut PgConnection) -> Result<Head, sqlx::Error> {
    let (generation, seq, hash): (i32, i64, String) = sqlx::query_as(&format!(
        "select generation, seq, hash, \
           set_config('{HEAD_SETTING}', generation || ':' || seq || ':' || hash, true) \
         from ({HEAD_QUERY}) head"
    ))
    .persistent(false)
    .fetch_one(conn)
    .await?;
    Ok(Head {
        generation,
        seq,
        hash,
    })
}

/// The newest generation and its head (seq 0 and the genesis hash when empty).
///
/// Never run as a prepared statement: a plan cached while the table was tiny
/// would scan it whole once it is not (a rebuild fills it inside one
/// transaction, where statistics never catch up).
const HEAD_QUERY: &str = "select g.generation, coalesce(e.seq, 0) as seq, \
       coalesce(e.hash, '0000000000000000000000000000000000000000000000000000000000000000') as hash \
     from (select max(generation) as generation from audit.generations) g \
     left join lateral (select seq, hash from audit.entries \
                        where generation = g.generation order by seq desc limit 1) e on true";

/// The newest generation and its head.
pub async fn current_head(conn: &mut PgConnection) -> Result<Head, sqlx::Error> {
    let (generation, seq, hash): (i32, i64, String) = sqlx::query_as(HEAD_QUERY)
        .persistent(false)
        .fetch_one(conn)
        .await?;
    Ok(Head {
        generation,
        seq,
        hash,
    })
}

/// What [`append_after`] did.
#[derive(Debug, PartialEq, Eq)]
enum Appended {
    /// Every entry: `next` is now the head this transaction knows.
    All,
    /// None: `head` is not the head this transaction knows.
    NotTheHead,
    /// Not all: an event already has an entry in this generation. The
    /// caller fails, so the transaction is rolled back.
    Some,
}

/// Inserts `entries` (chained from `head`, in order) if `head` is the head
/// this transaction knows, and makes `next` the known head, in one statement.
///
/// The check reads no table, so its cost does not grow with the trail; the
/// primary key and the unique global position catch anything else.
async fn append_after(
    conn: &mut PgConnection,
    head: &Head,
    entries: &[AuditEntry],
    next: &Head,
) -> Result<Appended, sqlx::Error> {
    let mut columns = EntryColumns::default();
    for entry in entries {
        columns.push(entry);
    }
    let inserted: Result<i64, _> = sqlx::query_scalar(
        "with inserted as ( \
           insert into audit.entries (generation, seq, global_position, occurred_at, recorded_at, \
             actor_id, actor_roles, actor_ip, actor_user_agent, action, event_version, \
             aggregate_type, aggregate_id, aggregate_sequence, request_id, correlation_id, \
             causation_id, payload_digest, metadata_digest, prev_hash, hash) \
           select $1, seq, global_position, occurred_at, recorded_at, actor_id, \
             actor_roles::text[], actor_ip, actor_user_agent, \
             action, event_version, aggregate_type, aggregate_id, aggregate_sequence, request_id, \
             correlation_id, causation_id, payload_digest, metadata_digest, prev_hash, hash \
           from unnest($2::bigint[], $3::bigint[], $4::timestamptz[], $5::timestamptz[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
             $12::text[], $13::text[], $14::bigint[], $15::text[], $16::text[], $17::text[], \
             $18::text[], $19::text[], $20::text[], $21::text[]) \
             as u(seq, global_position, occurred_at, recorded_at, actor_id, actor_roles, \
               actor_ip, actor_user_agent, action, event_version, aggregate_type, aggregate_id, \
               aggregate_sequence, request_id, correlation_id, causation_id, payload_digest, \
               metadata_digest, prev_hash, hash) \
           where current_setting('chronicle.audit_head', true) = $22 \
           returning 1), \
         counted as (select count(*) as n from inserted) \
         select n from counted \
         where set_config('chronicle.audit_head', \
           case when n = $24 then $23 else current_setting('chronicle.audit_head', true) end, \
           true) is not null",
    )
    .bind(head.generation)
    .bind(columns.seq)
    .bind(columns.global_position)
    .bind(columns.occurred_at)
    .bind(columns.recorded_at)
    .bind(columns.actor_id)
    .bind(columns.actor_roles)
    .bind(columns.actor_ip)
    .bind(columns.actor_user_agent)
    .bind(columns.action)
    .bind(columns.event_version)
    .bind(columns.aggregate_type)
    .bind(columns.aggregate_id)
    .bind(columns.aggregate_sequence)
    .bind(columns.request_id)
    .bind(columns.correlation_id)
    .bind(columns.causation_id)
    .bind(columns.payload_digest)
    .bind(columns.metadata_digest)
    .bind(columns.prev_hash)
    .bind(columns.hash)
    .bind(head_token(head))
    .bind(head_token(next))
    .bind(entries.len() as i64)
    .fetch_one(conn)
    .await;
    // A plain insert, not `on conflict do nothing`: the speculative
    // insertion that needs cost the trail a fifth of its insert
    // (docs/performance.md, change 22), and a conflict fails the batch
    // either way. The violation aborts the transaction the caller then
    // rolls back.
    Ok(match inserted {
        Ok(0) => Appended::NotTheHead,
        Ok(n) if n == entries.len() as i64 => Appended::All,
        Ok(_) => Appended::Some,
        Err(sqlx::Error::Database(err)) if err.is_unique_violation() => Appended::Some,
        Err(err) => return Err(err),
    })
}

/// Entries as one array per column, for the `unnest` of [`append_after`].
#[derive(Default)]
struct EntryColumns<'a> {
    seq: Vec<i64>,
    global_position: Vec<i64>,
    occurred_at: Vec<Option<chrono::DateTime<Utc>>>,
    recorded_at: Vec<chrono::DateTime<Utc>>,
    actor_id: Vec<Option<&'a str>>,
    /// Each entry's roles as an array literal (`{"admin","user"}`), cast
    /// per row: Postgres has no array of arrays of different lengths. (A
    /// JSON array expanded by a subquery per row cost more: change 22 of
    /// docs/performance.md.)
    actor_roles: Vec<String>,
    actor_ip: Vec<Option<&'a str>>,
    actor_user_agent: Vec<Option<&'a str>>,
    action: Vec<&'a str>,
    event_version: Vec<&'a str>,
    aggregate_type: Vec<&'a str>,
    aggregate_id: Vec<&'a str>,
    aggregate_sequence: Vec<i64>,
    request_id: Vec<Option<&'a str>>,
    correlation_id: Vec<Option<&'a str>>,
    causation_id: Vec<Option<&'a str>>,
    payload_digest: Vec<&'a str>,
    metadata_digest: Vec<&'a str>,
    prev_hash: Vec<&'a str>,
    hash: Vec<&'a str>,
}

impl<'a> EntryColumns<'a> {
    fn push(&mut self, entry: &'a AuditEntry) {
        self.seq.push(entry.seq);
        self.global_position.push(entry.global_position);
        self.occurred_at.push(entry.occurred_at);
        self.recorded_at.push(entry.recorded_at);
        self.actor_id.push(entry.actor.id.as_deref());
        self.actor_roles.push(array_literal(&entry.actor.roles));
        self.actor_ip.push(entry.actor.ip.as_deref());
        self.actor_user_agent
            .push(entry.actor.user_agent.as_deref());
        self.action.push(&entry.action);
        self.event_version.push(&entry.event_version);
        self.aggregate_type.push(&entry.aggregate.aggregate_type);
        self.aggregate_id.push(&entry.aggregate.id);
        self.aggregate_sequence.push(entry.aggregate.sequence);
        self.request_id.push(entry.request_id.as_deref());
        self.correlation_id.push(entry.correlation_id.as_deref());
        self.causation_id.push(entry.causation_id.as_deref());
        self.payload_digest.push(&entry.payload_digest);
        self.metadata_digest.push(&entry.metadata_digest);
        self.prev_hash.push(&entry.prev_hash);
        self.hash.push(&entry.hash);
    }
}

/// `items` as a Postgres array literal of quoted elements: `{"a","b"}`,
/// with `"` and `\` escaped, so any text reads back as itself.
fn array_literal(items: &[String]) -> String {
    let mut literal = String::with_capacity(2 + items.iter().map(|i| i.len() + 3).sum::<usize>());
    literal.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// Why a checkpoint could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("signing: {0}")]
    Signing(String),
}

/// Signs `{"seq", "head_hash", "signed_at"}` and stores it, unless a
/// checkpoint for `seq` exists already (a rebuild does not re-sign, and a
/// rewritten chain cannot replace the signature that exposes it).
/// Returns whether a checkpoint was stored.
pub async fn insert_checkpoint(
    conn: &mut PgConnection,
    signer: &dyn CheckpointSigner,
    seq: i64,
    head_hash: &str,
) -> Result<bool, CheckpointError> {
    let signed_at = Utc::now().trunc_subsecs(6);
    let payload = json!({
        "seq": seq,
        "head_hash": head_hash,
        "signed_at": entry::format_time(&signed_at),
    });
    let signature = signer.sign(&payload).map_err(CheckpointError::Signing)?;
    let stored = sqlx::query(
        "insert into audit.checkpoints (seq, head_hash, signed_at, kid, signature) \
         values ($1, $2, $3, $4, $5) on conflict (seq) do nothing",
    )
    .bind(seq)
    .bind(head_hash)
    .bind(signed_at)
    .bind(&signature.kid)
    .bind(&signature.jws)
    .execute(conn)
    .await?;
    Ok(stored.rows_affected() == 1)
}

/// Why no checkpoint may be signed now: an event that is held out of the
/// trail (parked at the relay, or by this projection) or was let in since
/// the newest generation began. Either way the live chain is not the one a
/// rebuild gives (the rebuild puts the event at its commit position), so a
/// checkpoint signed over it would contradict the replay the recovery calls
/// for: a false tamper alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointsPaused {
    /// `relay`, or [`AUDIT_PROJECTION`].
    pub stage: String,
    /// `<AggregateType>:<id>:<sequence>` (never the payload).
    pub event: String,
    /// Released, so in the trail but out of commit order until a replay.
    pub released: bool,
}

impl std::fmt::Display for CheckpointsPaused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { stage, event, .. } = self;
        if self.released {
            write!(
                f,
                "the event {event} was released from dead_letters (stage {stage}) after the current \
                 audit generation began, so the trail has it out of commit order; run \
                 `chronicle replay --projection audit` and checkpoints resume"
            )
        } else {
            write!(
                f,
                "the event {event} is parked in dead_letters (stage {stage}), held out of the \
                 audit trail; fix the cause, release it (`chronicle dead-letters release`), then \
                 run `chronicle replay --projection audit` and checkpoints resume"
            )
        }
    }
}

/// The first reason not to sign a checkpoint now, if any (see
/// [`CheckpointsPaused`]). Both signers ask this first: the projection every
/// `checkpoint_every` entries and the interval checkpointer. A released
/// event is out of commit order when the rebuild that began the newest
/// generation did not see its release: the release's transaction is not
/// visible in the snapshot the rebuild read the parked events in (migration
/// 1100). Generations without that snapshot (the initial one, and those
/// begun before it was recorded) compare times instead: released at or after
/// the generation began.
///
/// One query on `dead_letters`, which holds only the rare parked events.
/// It relies on a parked row being committed before any event behind it in
/// commit order can reach the trail (the relay parks before it publishes).
pub async fn checkpoints_paused(
    conn: &mut PgConnection,
) -> Result<Option<CheckpointsPaused>, sqlx::Error> {
    let paused: Option<(String, String, bool)> = sqlx::query_as(
        "select stage, aggregate_type || ':' || aggregate_id || ':' || sequence, \
           released_at is not null \
         from dead_letters, \
           (select started_at, parked_snapshot from audit.generations \
            order by generation desc limit 1) as newest \
         where stage in ($1, $2) \
           and (released_at is null \
                or case when newest.parked_snapshot is null or released_xid is null \
                     then released_at >= newest.started_at \
                     else not pg_visible_in_snapshot(released_xid, newest.parked_snapshot) end) \
         order by released_at is not null, global_position \
         limit 1",
    )
    .bind(RELAY_STAGE)
    .bind(AUDIT_PROJECTION)
    .fetch_optional(conn)
    .await?;
    Ok(paused.map(|(stage, event, released)| CheckpointsPaused {
        stage,
        event,
        released,
    }))
}
