//! Recomputes the audit chain and checks it against the event store.
//!
//! For every entry of the newest generation: the seq follows the previous
//! one, `prev_hash` is the previous entry's hash, the hash matches the entry's
//! content, the entry equals what its event in the store yields (digests of
//! payload and metadata included), and events come in strictly increasing
//! commit order. Then every event committed before the head must have an
//! entry. Signed checkpoints are checked by the caller, which holds the keys.
//!
//! Each entry only needs its predecessor, so the chain is checked in chunks,
//! concurrently, each on its own connection. Queries here are planned afresh
//! each time (not prepared): they run rarely, and a cached generic plan made
//! while the trail was small would not suit it later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use futures::{StreamExt, TryStreamExt};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::canonical::sha256_hex_into;
use super::entry::{entry_select_list, EntryFields, GENESIS_HASH};
use super::{current_head, json};

/// Entries per chunk.
const CHUNK: i64 = 25_000;
/// Chunks checked at once.
const PARALLEL_CHUNKS: usize = 3;

/// How far a verification has come; shared with a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The first entry that cannot be trusted.
    pub seq: i64,
    pub reason: String,
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub generation: i32,
    pub entries_checked: u64,
    pub head_seq: i64,
    pub head_hash: String,
    /// Committed events after the head that the projection has not reached
    /// yet (not a failure: the trail follows the stream).
    pub pending_events: i64,
    pub failure: Option<Failure>,
}

impl Failure {
    fn new(seq: i64, reason: impl Into<String>) -> Self {
        Self {
            seq,
            reason: reason.into(),
        }
    }

    /// The earlier of two failures.
    pub fn earliest(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.seq < a.seq { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// Verifies the newest generation of the trail against the event store.
pub async fn verify_chain(
    pool: &PgPool,
    progress: Arc<Progress>,
) -> Result<ChainReport, sqlx::Error> {
    let head = {
        let mut conn = pool.acquire().await?;
        current_head(&mut conn).await?
    };
    progress.total.store(head.seq as u64, Ordering::Relaxed);
    let generation = head.generation;
    let chunks: Vec<(i64, i64)> = (0..)
        .map(|n| (n * CHUNK + 1, ((n + 1) * CHUNK).min(head.seq)))
        .take_while(|(lo, _)| *lo <= head.seq)
        .collect();
    let failures: Vec<Option<Failure>> = futures::stream::iter(chunks)
        .map(|(lo, hi)| {
            let pool = pool.clone();
            let progress = progress.clone();
            async move {
                tokio::spawn(
                    async move { verify_chunk(&pool, generation, lo, hi, &progress).await },
                )
                .await
                .map_err(|err| sqlx::Error::Protocol(format!("verifier task: {err}")))?
            }
        })
        .buffer_unordered(PARALLEL_CHUNKS)
        .try_collect()
        .await?;
    let mut failure = failures.into_iter().fold(None, Failure::earliest);
    let (missing, pending_events) = check_unrecorded_events(pool, generation, head.seq).await?;
    failure = Failure::earliest(failure, missing);
    Ok(ChainReport {
        generation,
        entries_checked: head.seq as u64,
        head_seq: head.seq,
        head_hash: head.hash,
        pending_events,
        failure,
    })
}

/// The columns after the entry's: its event, if the store still has it.
const EVENT_OFFSET: usize = 20;

/// An event joined to its entry, borrowed from the row.
struct JoinedEvent<'r> {
    cursor: (u64, i64),
    aggregate_type: &'r str,
    aggregate_id: &'r str,
    sequence: i64,
    event_type: &'r str,
    event_version: &'r str,
    recorded_at: DateTime<Utc>,
    /// JSON text, as stored.
    payload: &'r str,
    metadata: &'r str,
}

// Columns are read by index and without type checks: the query is ours and
// the verifier reads every row of the trail.
fn joined_event(row: &PgRow) -> Result<Option<JoinedEvent<'_>>, sqlx::Error> {
    let at = |n: usize| EVENT_OFFSET + n;
    let Some(global_position) = row.try_get_unchecked::<Option<i64>, _>(at(0))? else {
        return Ok(None);
    };
    let transaction_id: &str = row.try_get_unchecked(at(1))?;
    Ok(Some(JoinedEvent {
        cursor: (transaction_id.parse().unwrap_or(0), global_position),
        aggregate_type: row.try_get_unchecked(at(2))?,
        aggregate_id: row.try_get_unchecked(at(3))?,
        sequence: row.try_get_unchecked(at(4))?,
        event_type: row.try_get_unchecked(at(5))?,
        event_version: row.try_get_unchecked(at(6))?,
        recorded_at: row.try_get_unchecked(at(7))?,
        payload: row.try_get_unchecked(at(8))?,
        metadata: row.try_get_unchecked(at(9))?,
    }))
}

/// An entry as stored, borrowed from the row (`roles` decoded beside it).
fn stored_entry<'r>(
    row: &'r PgRow,
    roles: &'r [String],
) -> Result<(EntryFields<'r>, &'r str), sqlx::Error> {
    let fields = EntryFields {
        seq: row.try_get_unchecked(0)?,
        global_position: row.try_get_unchecked(1)?,
        occurred_at: row.try_get_unchecked(2)?,
        recorded_at: row.try_get_unchecked(3)?,
        actor_id: row.try_get_unchecked(4)?,
        actor_roles: roles.iter().map(String::as_str).collect(),
        actor_ip: row.try_get_unchecked(6)?,
        actor_user_agent: row.try_get_unchecked(7)?,
        action: row.try_get_unchecked(8)?,
        event_version: row.try_get_unchecked(9)?,
        aggregate_type: row.try_get_unchecked(10)?,
        aggregate_id: row.try_get_unchecked(11)?,
        aggregate_sequence: row.try_get_unchecked(12)?,
        request_id: row.try_get_unchecked(13)?,
        correlation_id: row.try_get_unchecked(14)?,
        causation_id: row.try_get_unchecked(15)?,
        payload_digest: row.try_get_unchecked(16)?,
        metadata_digest: row.try_get_unchecked(17)?,
        prev_hash: row.try_get_unchecked(18)?,
    };
    Ok((fields, row.try_get_unchecked(19)?))
}

struct Previous {
    seq: i64,
    hash: String,
    cursor: Option<(u64, i64)>,
}

/// Buffers reused from one entry to the next.
#[derive(Default)]
struct Scratch {
    stored: Vec<u8>,
    json: Vec<u8>,
}

/// Checks entries `lo..=hi`; returns the first failure among them.
async fn verify_chunk(
    pool: &PgPool,
    generation: i32,
    lo: i64,
    hi: i64,
    progress: &Progress,
) -> Result<Option<Failure>, sqlx::Error> {
    let sql = format!(
        "select {}, e.global_position, e.transaction_id::text, e.aggregate_type, e.aggregate_id, \
           e.sequence, e.event_type, e.event_version, e.recorded_at, e.payload::text, e.metadata::text \
         from audit.entries a left join events e on e.global_position = a.global_position \
         where a.generation = $1 and a.seq between $2 and $3 order by a.seq",
        entry_select_list("a")
    );
    // Walk the primary key in seq order and look each event up: no sort
    // (which spills to disk at this row width) and no parallel workers (the
    // chunks are the parallelism). Settings last for this transaction only.
    let mut tx = pool.begin().await?;
    sqlx::query(
        "select set_config('enable_sort', 'off', true), \
                set_config('enable_bitmapscan', 'off', true), \
                set_config('max_parallel_workers_per_gather', '0', true)",
    )
    .execute(&mut *tx)
    .await?;
    let mut rows = sqlx::query(&sql)
        .bind(generation)
        .bind(lo - 1)
        .bind(hi)
        .persistent(false)
        .fetch(&mut *tx);
    let mut previous = (lo == 1).then(|| Previous {
        seq: 0,
        hash: GENESIS_HASH.to_string(),
        cursor: None,
    });
    let (mut seen, mut reported) = (0u64, 0u64);
    let mut last_seq = lo - 1;
    let mut failure = None;
    let mut scratch = Scratch::default();
    while let Some(row) = rows.try_next().await? {
        let roles: Vec<String> = row.try_get_unchecked(5)?;
        let (stored, hash) = stored_entry(&row, &roles)?;
        let event = joined_event(&row)?;
        if stored.seq < lo {
            previous = Some(Previous {
                seq: stored.seq,
                hash: hash.to_string(),
                cursor: event.map(|e| e.cursor),
            });
            continue;
        }
        last_seq = stored.seq;
        seen += 1;
        if seen - reported == 1_000 {
            progress.done.fetch_add(seen - reported, Ordering::Relaxed);
            reported = seen;
        }
        if let Some(found) = check_entry(
            &stored,
            hash,
            event.as_ref(),
            previous.as_ref(),
            lo,
            &mut scratch,
        ) {
            failure = Some(found);
            break;
        }
        let cursor = event.map(|e| e.cursor);
        match &mut previous {
            Some(previous) => {
                previous.seq = stored.seq;
                previous.hash.clear();
                previous.hash.push_str(hash);
                previous.cursor = cursor;
            }
            None => {
                previous = Some(Previous {
                    seq: stored.seq,
                    hash: hash.to_string(),
                    cursor,
                })
            }
        }
    }
    drop(rows);
    tx.rollback().await?;
    if failure.is_none() && last_seq < hi {
        failure = Some(Failure::new(
            last_seq + 1,
            format!("entry {} is missing from the trail", last_seq + 1),
        ));
    }
    // A chunk that stopped at a failure still counts as checked.
    progress
        .done
        .fetch_add((hi - lo + 1) as u64 - reported, Ordering::Relaxed);
    Ok(failure)
}

fn sha256_matches(bytes: &[u8], hash: &str) -> bool {
    let mut hex = [0u8; 64];
    sha256_hex_into(bytes, &mut hex);
    hex.as_slice() == hash.as_bytes()
}

/// The digest of a JSON text's canonical form (as published, for a payload).
fn json_digest(
    text: &str,
    untag: Option<&str>,
    scratch: &mut Vec<u8>,
    hex: &mut [u8; 64],
) -> Result<(), String> {
    let json = json::parse(text)?;
    scratch.clear();
    match untag {
        Some(event_type) => json.untagged(event_type).write_canonical(scratch)?,
        None => json.write_canonical(scratch)?,
    }
    sha256_hex_into(scratch, hex);
    Ok(())
}

fn check_entry(
    stored: &EntryFields<'_>,
    hash: &str,
    event: Option<&JoinedEvent<'_>>,
    previous: Option<&Previous>,
    lo: i64,
    scratch: &mut Scratch,
) -> Option<Failure> {
    let seq = stored.seq;
    if let Some(previous) = previous {
        if seq != previous.seq + 1 {
            return Some(Failure::new(
                previous.seq + 1,
                format!("entry {} is missing from the trail", previous.seq + 1),
            ));
        }
        if stored.prev_hash != previous.hash {
            return Some(Failure::new(
                seq,
                format!(
                    "entry {seq}: prev_hash is not the hash of entry {}",
                    seq - 1
                ),
            ));
        }
    } else if seq != lo {
        return Some(Failure::new(
            lo,
            format!("entry {lo} is missing from the trail"),
        ));
    }
    scratch.stored.clear();
    stored.write_canonical(&mut scratch.stored);
    let altered = |scratch: &Scratch| {
        (!sha256_matches(&scratch.stored, hash)).then(|| {
            Failure::new(
                seq,
                format!("entry {seq} was altered: its hash does not match its content"),
            )
        })
    };
    let Some(event) = event else {
        return altered(scratch).or_else(|| {
            Some(Failure::new(
                seq,
                format!(
                    "entry {seq}: event at global position {} is not in the event store",
                    stored.global_position
                ),
            ))
        });
    };
    let unreadable = |what: &str, err: String| {
        Some(Failure::new(
            seq,
            format!(
                "entry {seq}: the {what} of event {}:{}:{} in the store is not readable JSON ({err})",
                event.aggregate_type, event.aggregate_id, event.sequence
            ),
        ))
    };
    let (mut payload_digest, mut metadata_digest) = ([0u8; 64], [0u8; 64]);
    if let Err(err) = json_digest(
        event.payload,
        Some(event.event_type),
        &mut scratch.json,
        &mut payload_digest,
    ) {
        return unreadable("payload", err);
    }
    let metadata = match json::parse(event.metadata) {
        Ok(metadata) => metadata,
        Err(err) => return unreadable("metadata", err),
    };
    scratch.json.clear();
    if let Err(err) = metadata.write_canonical(&mut scratch.json) {
        return unreadable("metadata", err);
    }
    sha256_hex_into(&scratch.json, &mut metadata_digest);
    let text = |key: &str| metadata.get_str(key);
    let (actor_id, roles, ip, user_agent) = (
        text("actor_id"),
        text("actor_roles"),
        text("client_ip"),
        text("user_agent"),
    );
    let (request_id, correlation_id, causation_id) = (
        text("request_id"),
        text("correlation_id"),
        text("causation_id"),
    );
    let expected = EntryFields {
        seq,
        global_position: event.cursor.1,
        occurred_at: text("occurred_at")
            .and_then(|raw| DateTime::parse_from_rfc3339(&raw).ok())
            .map(|time| time.with_timezone(&Utc).trunc_subsecs(6)),
        recorded_at: event.recorded_at.trunc_subsecs(6),
        actor_id: actor_id.as_deref(),
        actor_roles: roles
            .as_deref()
            .map(|roles| roles.split(',').filter(|role| !role.is_empty()).collect())
            .unwrap_or_default(),
        actor_ip: ip.as_deref(),
        actor_user_agent: user_agent.as_deref(),
        action: event.event_type,
        event_version: event.event_version,
        aggregate_type: event.aggregate_type,
        aggregate_id: event.aggregate_id,
        aggregate_sequence: event.sequence,
        request_id: request_id.as_deref(),
        correlation_id: correlation_id.as_deref(),
        causation_id: causation_id.as_deref(),
        payload_digest: std::str::from_utf8(&payload_digest).unwrap_or_default(),
        metadata_digest: std::str::from_utf8(&metadata_digest).unwrap_or_default(),
        prev_hash: stored.prev_hash,
    };
    // Field by field: equal fields have equal canonical bytes, and so the
    // same hash; only the stored entry's bytes are hashed below.
    if &expected != stored {
        if let Some(failure) = altered(scratch) {
            return Some(failure);
        }
        let field = expected.first_difference(stored).unwrap_or("hash");
        let what = match field {
            "payload_digest" => "the stored event's payload was changed".to_string(),
            "metadata_digest" => "the stored event's metadata was changed".to_string(),
            other => format!("{other} differs"),
        };
        return Some(Failure::new(
            seq,
            format!(
                "entry {seq} does not match event {}:{}:{} in the event store: {what}",
                event.aggregate_type, event.aggregate_id, event.sequence
            ),
        ));
    }
    if let Some(failure) = altered(scratch) {
        return Some(failure);
    }
    if let (Some(before), Some(previous)) = (previous.and_then(|p| p.cursor), previous) {
        if event.cursor <= before {
            return Some(Failure::new(
                seq,
                format!(
                    "entry {seq} is out of commit order: its event was committed before entry {}'s",
                    previous.seq
                ),
            ));
        }
    }
    None
}

/// Every event committed before the head's event must have an entry.
/// Returns the failure, if any, and the number of events after the head.
async fn check_unrecorded_events(
    pool: &PgPool,
    generation: i32,
    head_seq: i64,
) -> Result<(Option<Failure>, i64), sqlx::Error> {
    if head_seq == 0 {
        let pending: i64 = sqlx::query_scalar("select count(*) from events")
            .persistent(false)
            .fetch_one(pool)
            .await?;
        return Ok((None, pending));
    }
    let head_cursor: Option<(String, i64)> = sqlx::query_as(
        "select e.transaction_id::text, e.global_position from audit.entries a \
         join events e on e.global_position = a.global_position \
         where a.generation = $1 and a.seq = $2",
    )
    .bind(generation)
    .bind(head_seq)
    .persistent(false)
    .fetch_optional(pool)
    .await?;
    // Without the head's event the chain check has failed already.
    let Some((transaction_id, global_position)) = head_cursor else {
        return Ok((None, 0));
    };
    let (up_to_head, after_head): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where (transaction_id, global_position) <= ($1::text::xid8, $2)), \
                count(*) filter (where (transaction_id, global_position) > ($1::text::xid8, $2)) \
         from events",
    )
    .bind(&transaction_id)
    .bind(global_position)
    .persistent(false)
    .fetch_one(pool)
    .await?;
    if up_to_head == head_seq {
        // Entries map to distinct events at or before the head (checked
        // above), so equal counts mean every such event has its entry.
        return Ok((None, after_head));
    }
    let missing: Option<(i64, String, String, i64, Option<i64>)> = sqlx::query_as(
        "select e.global_position, e.aggregate_type, e.aggregate_id, e.sequence, \
           (select min(a2.seq) from audit.entries a2 \
              join events e2 on e2.global_position = a2.global_position \
             where a2.generation = $1 \
               and (e2.transaction_id, e2.global_position) > (e.transaction_id, e.global_position)) \
         from events e \
         where (e.transaction_id, e.global_position) <= ($2::text::xid8, $3) \
           and not exists (select 1 from audit.entries a \
                           where a.generation = $1 and a.global_position = e.global_position) \
         order by e.transaction_id, e.global_position limit 1",
    )
    .bind(generation)
    .bind(&transaction_id)
    .bind(global_position)
    .persistent(false)
    .fetch_optional(pool)
    .await?;
    let failure = missing.map(
        |(position, aggregate_type, aggregate_id, sequence, next_seq)| {
            let seq = next_seq.unwrap_or(head_seq);
            Failure::new(
                seq,
                format!(
                "event {aggregate_type}:{aggregate_id}:{sequence} (global position {position}) \
                 has no audit entry; it belongs before entry {seq}"
            ),
            )
        },
    );
    Ok((failure, after_head))
}
