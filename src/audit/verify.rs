//! `GET /v1/audit/verify` and `chronicle audit verify`: the chain against the
//! event store (`chronicle_projections::audit::verify`) and against every
//! signed checkpoint, whose signatures are checked with the public keys.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use chronicle_projections::audit::verify::{verify_chain, Failure, Progress};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;

use crate::audit::history::{all_checkpoints, Checkpoint};

/// Public keys by `kid`, e.g. from `/.well-known/jwks.json`.
pub struct VerifyingKeys {
    keys: HashMap<String, DecodingKey>,
}

impl VerifyingKeys {
    /// Every RSA key of a JWKS document that has a `kid`. Taking the JWKS
    /// (rather than one key) keeps checkpoints signed before a key rotation
    /// verifiable for as long as the JWKS lists their key.
    pub fn from_jwks(jwks: &Value) -> anyhow::Result<Self> {
        let set: JwkSet = serde_json::from_value(jwks.clone()).context("parsing the JWKS")?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let Some(kid) = &jwk.common.key_id {
                let key = DecodingKey::from_jwk(jwk)
                    .with_context(|| format!("loading key {kid} from the JWKS"))?;
                keys.insert(kid.clone(), key);
            }
        }
        Ok(Self { keys })
    }

    /// The JWS payload, if `jws` is an RS256 signature by one of these keys.
    fn verify(&self, jws: &str) -> Result<(String, Value), String> {
        let header = jsonwebtoken::decode_header(jws).map_err(|err| err.to_string())?;
        if header.alg != Algorithm::RS256 {
            return Err("not RS256".into());
        }
        let kid = header.kid.ok_or("no kid")?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| format!("unknown key {kid}"))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(jws, key, &validation)
            .map(|data| (kid, data.claims))
            .map_err(|err| err.to_string())
    }
}

/// The answer of a verification (`GET /v1/audit/verify`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    pub entries_checked: u64,
    /// Hash of the last entry checked (64 zeros for an empty trail).
    pub head_hash: String,
    pub head_seq: i64,
    /// The first entry that cannot be trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checkpoints_checked: u64,
    /// Committed events the trail has not reached yet (not a failure).
    pub pending_events: i64,
    /// Which generation of the trail was checked (a rebuild starts a new one).
    pub generation: i32,
}

/// Verifies the newest generation of the trail; `progress` counts entries.
pub async fn verify(
    pool: &PgPool,
    keys: &VerifyingKeys,
    progress: Arc<Progress>,
) -> anyhow::Result<VerifyReport> {
    // Checkpoints first: each was taken on an entry that existed then, so
    // none can be ahead of the head read next (entries are never removed).
    let checkpoints = all_checkpoints(pool).await.context("reading checkpoints")?;
    let chain = verify_chain(pool, progress)
        .await
        .context("verifying the chain")?;
    let seqs: Vec<i64> = checkpoints.iter().map(|c| c.seq).collect();
    let hashes: HashMap<i64, String> = sqlx::query_as::<_, (i64, String)>(
        "select seq, hash from audit.entries where generation = $1 and seq = any($2)",
    )
    .bind(chain.generation)
    .bind(&seqs)
    .fetch_all(pool)
    .await
    .context("reading checkpointed entries")?
    .into_iter()
    .collect();
    let checkpoint_failure = check_checkpoints(&checkpoints, &hashes, chain.head_seq, keys);
    let failure = Failure::earliest(chain.failure, checkpoint_failure);
    Ok(VerifyReport {
        ok: failure.is_none(),
        entries_checked: chain.entries_checked,
        head_hash: chain.head_hash,
        head_seq: chain.head_seq,
        first_bad_seq: failure.as_ref().map(|f| f.seq),
        reason: failure.map(|f| f.reason),
        checkpoints_checked: checkpoints.len() as u64,
        pending_events: chain.pending_events,
        generation: chain.generation,
    })
}

/// Each checkpoint must be validly signed, say what its row says, and name
/// the hash the chain has at its seq. When one fails, everything after the
/// last good checkpoint before it is unvouched for: that is the first bad seq.
fn check_checkpoints(
    checkpoints: &[Checkpoint],
    hashes: &HashMap<i64, String>,
    head_seq: i64,
    keys: &VerifyingKeys,
) -> Option<Failure> {
    let mut last_good = 0;
    for checkpoint in checkpoints {
        let seq = checkpoint.seq;
        let problem = match keys.verify(&checkpoint.signature) {
            Err(reason) => Some(format!("checkpoint {seq} is not validly signed ({reason})")),
            Ok((kid, payload)) => {
                let says = |name: &str| payload.get(name).cloned().unwrap_or(Value::Null);
                let signed_at_matches = says("signed_at")
                    .as_str()
                    .and_then(|raw| raw.parse::<chrono::DateTime<chrono::Utc>>().ok())
                    == Some(checkpoint.signed_at);
                if says("seq") != seq
                    || says("head_hash") != checkpoint.head_hash.as_str()
                    || !signed_at_matches
                    || kid != checkpoint.kid
                {
                    Some(format!(
                        "checkpoint {seq} was altered: its row differs from what was signed"
                    ))
                } else if seq > head_seq {
                    Some(format!(
                        "the trail ends at entry {head_seq} but checkpoint {seq} (signed {}) vouches for more: entries were removed",
                        checkpoint.signed_at.to_rfc3339()
                    ))
                } else if hashes.get(&seq) != Some(&checkpoint.head_hash) {
                    Some(format!(
                        "entry {seq} does not match the checkpoint signed at {} (kid {}): the chain was rewritten after entry {last_good}",
                        checkpoint.signed_at.to_rfc3339(),
                        checkpoint.kid
                    ))
                } else {
                    None
                }
            }
        };
        match problem {
            Some(reason) => {
                return Some(Failure {
                    seq: last_good + 1,
                    reason,
                })
            }
            None => last_good = seq,
        }
    }
    None
}
