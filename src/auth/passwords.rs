//! Password storage: argon2id hashes in the `credentials` table, referenced by
//! id from `UserRegistered`, so no hash ever travels in an event.
//!
//! Hashing is deliberately slow and memory-hungry (19 MiB a hash by default),
//! so it runs on the blocking pool, at most [`CONCURRENT_HASHES`] at a time,
//! in working memory that is allocated once and reused. Letting every login
//! allocate its own 19 MiB made the allocator keep each of them: the server's
//! memory grew by that much per concurrent login and never came back.

use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use async_trait::async_trait;
use chronicle_aggregates::user::{ServiceFailure, UserServices};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::config::Argon2Settings;

/// Hashes computed at once; more wait. Two cores: more would only queue in
/// the CPU instead of here.
pub const CONCURRENT_HASHES: usize = 2;

/// Hashes, stores and verifies passwords.
pub struct PasswordService {
    pool: PgPool,
    params: Params,
    hasher: Arc<Hasher>,
    /// A hash of a random password, verified when the user does not exist so
    /// that an unknown account costs as much time as a wrong password.
    dummy_hash: String,
}

/// Bounded, reusable argon2 working memory.
struct Hasher {
    /// Shared so that an owned permit can travel into the blocking task.
    permits: Arc<Semaphore>,
    /// Idle working memories; never more than `CONCURRENT_HASHES`.
    memories: Mutex<Vec<Vec<Block>>>,
}

impl Hasher {
    /// Runs `work` on the blocking pool with a working memory of its own.
    ///
    /// The permit is owned by the blocking task, not by this future: a
    /// cancelled request (client gone, timeout) drops the future, but
    /// `spawn_blocking` cannot be stopped and keeps hashing, and the bound
    /// must keep counting it until it is done.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, ServiceFailure> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(failure)?;
        let hasher = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut memory = hasher
                .memories
                .lock()
                .map(|mut idle| idle.pop())
                .ok()
                .flatten()
                .unwrap_or_default();
            let result = work(&mut memory);
            if let Ok(mut idle) = hasher.memories.lock() {
                idle.push(memory);
            }
            result
        })
        .await
        .map_err(failure)
    }
}

/// argon2id of `password` with `params` and `salt`, in `memory`.
fn compute(
    params: &Params,
    password: &[u8],
    salt: Salt<'_>,
    memory: &mut Vec<Block>,
) -> Result<Output, String> {
    let mut salt_buffer = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buffer)
        .map_err(|e| e.to_string())?;
    memory.resize(params.block_count(), Block::default());
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    Output::init_with(output_len, |out| {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(password, salt_bytes, out, &mut memory[..])
            .map_err(|_| argon2::password_hash::Error::Password)
    })
    .map_err(|e| e.to_string())
}

/// A new PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
fn hash_with(params: &Params, password: &str, memory: &mut Vec<Block>) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    let output = compute(params, password.as_bytes(), salt.as_salt(), memory)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches `hash`, computed with the hash's own parameters.
fn verify_with(hash: &str, password: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return false;
    }
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    // Output's equality is constant-time.
    compute(&params, password.as_bytes(), salt, memory).is_ok_and(|actual| actual == expected)
}

fn failure(err: impl std::fmt::Display) -> ServiceFailure {
    ServiceFailure(err.to_string())
}

impl PasswordService {
    pub fn new(pool: PgPool, settings: Argon2Settings) -> anyhow::Result<Arc<Self>> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
        let mut memory = Vec::new();
        let dummy_hash = hash_with(&params, &Uuid::new_v4().to_string(), &mut memory)
            .map_err(|err| anyhow::anyhow!("hashing the dummy password: {err}"))?;
        Ok(Arc::new(Self {
            pool,
            params,
            hasher: Arc::new(Hasher {
                permits: Arc::new(Semaphore::new(CONCURRENT_HASHES)),
                memories: Mutex::new(vec![memory]),
            }),
            dummy_hash,
        }))
    }

    /// Spends the time of one verification, for logins of unknown users.
    pub async fn verify_dummy(&self, password: &str) {
        let hash = self.dummy_hash.clone();
        let password = password.to_string();
        let _ = self
            .hasher
            .run(move |memory| verify_with(&hash, &password, memory))
            .await;
    }

    async fn stored_hash(&self, credential_id: Uuid) -> Result<Option<String>, ServiceFailure> {
        sqlx::query_scalar("select password_hash from credentials where id = $1")
            .bind(credential_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(failure)
    }
}

#[async_trait]
impl UserServices for PasswordService {
    async fn store_password(&self, password: &str) -> Result<Uuid, ServiceFailure> {
        let params = self.params.clone();
        let password = password.to_string();
        let hash = self
            .hasher
            .run(move |memory| hash_with(&params, &password, memory))
            .await?
            .map_err(failure)?;
        let id = Uuid::new_v4();
        sqlx::query("insert into credentials (id, password_hash) values ($1, $2)")
            .bind(id)
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(failure)?;
        Ok(id)
    }

    async fn verify_password(
        &self,
        credential_id: Uuid,
        password: &str,
    ) -> Result<bool, ServiceFailure> {
        let hash = self
            .stored_hash(credential_id)
            .await?
            .unwrap_or_else(|| self.dummy_hash.clone());
        let password = password.to_string();
        self.hasher
            .run(move |memory| verify_with(&hash, &password, memory))
            .await
    }

    async fn needs_rehash(&self, credential_id: Uuid) -> Result<bool, ServiceFailure> {
        let Some(hash) = self.stored_hash(credential_id).await? else {
            return Ok(false);
        };
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return Ok(true);
        };
        let stored = Params::try_from(&parsed).ok();
        let current = &self.params;
        Ok(parsed.algorithm != argon2::ARGON2ID_IDENT
            || stored.is_none_or(|stored| {
                (stored.m_cost(), stored.t_cost(), stored.p_cost())
                    != (current.m_cost(), current.t_cost(), current.p_cost())
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    fn params() -> Params {
        Params::new(1024, 1, 1, None).unwrap()
    }

    #[test]
    fn our_hashes_verify_with_the_argon2_crate_and_its_hashes_verify_with_ours() {
        let mut memory = Vec::new();
        let ours = hash_with(&params(), "correct horse", &mut memory).unwrap();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        assert!(argon2
            .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
            .is_ok());
        let theirs = argon2
            .hash_password(b"battery staple", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_with(&theirs, "battery staple", &mut memory));
        assert!(!verify_with(&theirs, "battery stapler", &mut memory));
        assert!(!verify_with("not a hash", "battery staple", &mut memory));
    }

    #[tokio::test]
    async fn a_cancelled_hash_keeps_its_permit_until_the_blocking_work_ends() {
        let hasher = Arc::new(Hasher {
            permits: Arc::new(Semaphore::new(CONCURRENT_HASHES)),
            memories: Mutex::new(Vec::new()),
        });
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let hasher = hasher.clone();
            async move {
                hasher
                    .run(move |_memory| {
                        started_tx.send(()).unwrap();
                        // Stands in for a long hash: runs until told to stop.
                        finish_rx.recv().unwrap();
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        // The request goes away mid-hash.
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert_eq!(
            hasher.permits.available_permits(),
            CONCURRENT_HASHES - 1,
            "the hash still runs, so it still counts against the bound"
        );
        finish_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hasher.permits.available_permits() < CONCURRENT_HASHES {
            assert!(
                std::time::Instant::now() < deadline,
                "permit never returned"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn a_hash_verifies_with_its_own_parameters_in_reused_memory() {
        let mut memory = Vec::new();
        let small = hash_with(&params(), "pw one", &mut memory).unwrap();
        let large = hash_with(
            &Params::new(2048, 1, 1, None).unwrap(),
            "pw two",
            &mut memory,
        )
        .unwrap();
        assert!(verify_with(&small, "pw one", &mut memory));
        assert!(verify_with(&large, "pw two", &mut memory));
        assert!(
            verify_with(&small, "pw one", &mut memory),
            "after the memory grew"
        );
    }
}
