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
        for attempt in 0..2 {
            let head = match self.cached().filter(|_| attempt == 0) {
                Some(head) => head,
                None => load_head(&mut *conn).await?,
            };
            let entry = AuditEntry::from_envelope(head.seq + 1, &head.hash, event);
            let next = Head {
                generation: head.generation,
                seq: entry.seq,
                hash: entry.hash.clone(),
            };
            if append_after(&mut *conn, &head, &entry, &next).await? {
                self.remember(Some(next));
                return self.checkpoint_if_due(conn, &entry).await;
            }
            self.remember(None);
        }
        // Right after a reload the seq is free, so only the event itself can
        // be in this generation already: the version guard and the trail disagree.
        Err(ProjectionError::halt(
            event.message_id(),
            "the event already has an audit entry in this generation (run `chronicle replay --projection audit`)",
        ))
    }

    /// Starts a new generation; the old one stays (the trail refuses deletes).
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let generation: i32 = sqlx::query_scalar(
            "insert into audit.generations (generation, reason) \
             select max(generation) + 1, 'rebuild' from audit.generations returning generation",
        )
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

/// Inserts `entry` as the successor of `head` if `head` is the head this
/// transaction knows, and makes `next` the known head. Returns whether it did.
///
/// The check reads no table, so its cost does not grow with the trail; the
/// primary key and the unique global position catch anything else.
async fn append_after(
    conn: &mut PgConnection,
    head: &Head,
    entry: &AuditEntry,
    next: &Head,
) -> Result<bool, sqlx::Error> {
    let appended = sqlx::query(
        "with inserted as ( \
           insert into audit.entries (generation, seq, global_position, occurred_at, recorded_at, \
             actor_id, actor_roles, actor_ip, actor_user_agent, action, event_version, \
             aggregate_type, aggregate_id, aggregate_sequence, request_id, correlation_id, \
             causation_id, payload_digest, metadata_digest, prev_hash, hash) \
           select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21 \
           where current_setting('chronicle.audit_head', true) = $22 \
           on conflict do nothing \
           returning 1) \
         select set_config('chronicle.audit_head', $23, true) from inserted",
    )
    .bind(head.generation)
    .bind(entry.seq)
    .bind(entry.global_position)
    .bind(entry.occurred_at)
    .bind(entry.recorded_at)
    .bind(&entry.actor.id)
    .bind(&entry.actor.roles)
    .bind(&entry.actor.ip)
    .bind(&entry.actor.user_agent)
    .bind(&entry.action)
    .bind(&entry.event_version)
    .bind(&entry.aggregate.aggregate_type)
    .bind(&entry.aggregate.id)
    .bind(entry.aggregate.sequence)
    .bind(&entry.request_id)
    .bind(&entry.correlation_id)
    .bind(&entry.causation_id)
    .bind(&entry.payload_digest)
    .bind(&entry.metadata_digest)
    .bind(&entry.prev_hash)
    .bind(&entry.hash)
    .bind(head_token(head))
    .bind(head_token(next))
    .fetch_optional(conn)
    .await?;
    Ok(appended.is_some())
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
