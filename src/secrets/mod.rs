//! Sealed secrets: values encrypted with per-user data keys, wrapped by a
//! master key.
//!
//! A secret (an MCP server's `env` or `headers` value) is sealed before it
//! enters an event, as `sealed:v1:<data key id>:<base64url(nonce ||
//! AES-256-GCM ciphertext)>` with the owner's id as associated data: a value
//! copied into another user's configuration does not open. Each owner has
//! data keys (table `secret_data_keys`), each wrapped by a master key
//! ([`master`]); the newest non-retired data key under the active master key
//! seals. Unwrapped data keys are cached in-process, so sealing and opening
//! cost one AES operation after the first. `chronicle keys rotate-master`
//! ([`rotate_master`]) re-wraps every data key under a new master key; data
//! keys keep their ids, so every ciphertext still opens.

mod master;
mod rotate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

pub use rotate::{rotate_master, RotationReport};

use master::{random_key, random_nonce, MasterKeys};

/// What every sealed value starts with.
const PREFIX: &str = "sealed:v1:";
/// AES-GCM's 96-bit nonce.
const NONCE_LEN: usize = 12;
/// AES-GCM's 128-bit tag.
const TAG_LEN: usize = 16;
/// How many unwrapped data keys (and owners' sealing keys) a process keeps.
const CACHE_CAPACITY: usize = 10_000;

/// Why a value could not be sealed or opened. The messages name key ids at
/// most: never a clear value, a ciphertext or key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("not a sealed value")]
    Malformed,
    #[error("unknown data key {0}")]
    UnknownDataKey(Uuid),
    #[error("does not open: wrong owner or tampered")]
    DoesNotOpen,
    #[error("master key {0} is not configured")]
    MasterKeyNotConfigured(String),
    #[error("data key {0} does not unwrap: its stored form was altered")]
    CorruptDataKey(Uuid),
    #[error("sealing failed")]
    Seal,
    #[error("data key storage")]
    Database(#[from] sqlx::Error),
}

/// Seals and opens secrets for their owners. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct SecretBox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    masters: MasterKeys,
    /// Not held across an `.await`.
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// Unwrapped data keys by id.
    data_keys: HashMap<Uuid, DataKey>,
    /// The data key each owner seals with.
    sealing: HashMap<Uuid, Uuid>,
}

#[derive(Clone)]
struct DataKey {
    owner: Uuid,
    cipher: Arc<Aes256Gcm>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("active_master_key_id", &self.active_master_key_id())
            .field("master_keys", &self.inner.masters.keys.len())
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    /// Reads the master keys (generating the first one in the data dir if
    /// `CHRONICLE_MASTER_KEYS` is empty and the data dir has none).
    pub async fn load(pool: PgPool, settings: &crate::config::Settings) -> anyhow::Result<Self> {
        let masters = MasterKeys::load_or_generate(settings).context("loading the master keys")?;
        anyhow::ensure!(masters.active().is_some(), "no master key");
        // Data keys this process cannot unwrap would fail every value they
        // sealed: say so at start-up rather than at the first request.
        let used: Vec<String> =
            sqlx::query_scalar("select distinct master_key_id from secret_data_keys")
                .fetch_all(&pool)
                .await
                .context("reading the master key ids of the data keys")?;
        let missing: Vec<&str> = used
            .iter()
            .map(String::as_str)
            .filter(|id| masters.get(id).is_none())
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                master_key.missing = %missing.join(","),
                "data keys are wrapped by master keys this process does not have; \
                 the secrets they sealed will not open"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                masters,
                cache: Mutex::new(Cache::default()),
            }),
        })
    }

    /// The id (`mk-…`) of the master key that wraps new data keys.
    pub fn active_master_key_id(&self) -> &str {
        self.inner
            .masters
            .active()
            .map_or("", |key| key.id.as_str())
    }

    /// Seals `clear` for `owner` with the owner's sealing data key, creating
    /// one on first use.
    pub async fn seal(&self, owner: Uuid, clear: &str) -> Result<String, SecretError> {
        let (key_id, key) = self.sealing_key(owner).await?;
        seal_with(&key.cipher, key_id, owner, clear)
    }

    /// Opens a value [`seal`](Self::seal) made for `owner`.
    pub async fn open(&self, owner: Uuid, sealed: &str) -> Result<SecretString, SecretError> {
        let (key_id, _) = parse(sealed).ok_or(SecretError::Malformed)?;
        let key = self.data_key(key_id).await?;
        if key.owner != owner {
            return Err(SecretError::DoesNotOpen);
        }
        open_with(&key.cipher, owner, sealed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves a consistent map: keep going.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The owner's newest data key under the active master key that is not
    /// retired; a new one if there is none. Two requests creating one at
    /// once both succeed: both keys work, the newer one seals from then on.
    async fn sealing_key(&self, owner: Uuid) -> Result<(Uuid, DataKey), SecretError> {
        {
            let cache = self.lock();
            if let Some(id) = cache.sealing.get(&owner) {
                if let Some(key) = cache.data_keys.get(id) {
                    return Ok((*id, key.clone()));
                }
            }
        }
        let active = self.inner.masters.active().ok_or(SecretError::Seal)?;
        let newest: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
            r"select id, wrapped from secret_data_keys
              where owner_id = $1 and master_key_id = $2 and not retired
              order by created_at desc, id desc limit 1",
        )
        .bind(owner)
        .bind(&active.id)
        .fetch_optional(&self.inner.pool)
        .await?;
        let (id, bytes) = match newest {
            Some((id, wrapped)) => {
                let bytes = active
                    .unwrap(id, owner, &wrapped)
                    .ok_or(SecretError::CorruptDataKey(id))?;
                (id, bytes)
            }
            None => {
                let id = Uuid::new_v4();
                let bytes = random_key();
                let wrapped = active
                    .wrap(id, owner, &bytes)
                    .map_err(|_| SecretError::Seal)?;
                sqlx::query(
                    r"insert into secret_data_keys (id, owner_id, master_key_id, wrapped)
                      values ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(owner)
                .bind(&active.id)
                .bind(wrapped)
                .execute(&self.inner.pool)
                .await?;
                (id, bytes)
            }
        };
        let key = DataKey {
            owner,
            cipher: Arc::new(Aes256Gcm::new((&*bytes).into())),
        };
        let mut cache = self.lock();
        bounded_insert(&mut cache.data_keys, id, key.clone());
        bounded_insert(&mut cache.sealing, owner, id);
        Ok((id, key))
    }

    /// A data key by id, from the cache or unwrapped from the table under
    /// whichever master key its row names (so a rotation by another process
    /// is picked up, if this process knows the new master key).
    async fn data_key(&self, id: Uuid) -> Result<DataKey, SecretError> {
        if let Some(key) = self.lock().data_keys.get(&id) {
            return Ok(key.clone());
        }
        let row: Option<(Uuid, String, Vec<u8>)> = sqlx::query_as(
            "select owner_id, master_key_id, wrapped from secret_data_keys where id = $1",
        )
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await?;
        let (owner, master_key_id, wrapped) = row.ok_or(SecretError::UnknownDataKey(id))?;
        let master = self
            .inner
            .masters
            .get(&master_key_id)
            .ok_or(SecretError::MasterKeyNotConfigured(master_key_id.clone()))?;
        let bytes = master
            .unwrap(id, owner, &wrapped)
            .ok_or(SecretError::CorruptDataKey(id))?;
        let key = DataKey {
            owner,
            cipher: Arc::new(Aes256Gcm::new((&*bytes).into())),
        };
        bounded_insert(&mut self.lock().data_keys, id, key.clone());
        Ok(key)
    }
}

/// Inserts, evicting an arbitrary entry when full: an evicted key costs one
/// read and one unwrap when it is next needed.
fn bounded_insert<K: std::hash::Hash + Eq + Copy, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CACHE_CAPACITY && !map.contains_key(&key) {
        if let Some(evicted) = map.keys().next().copied() {
            map.remove(&evicted);
        }
    }
    map.insert(key, value);
}

/// Whether `value` has the form of a sealed value (says nothing of whether it opens).
pub fn is_sealed(value: &str) -> bool {
    parse(value).is_some()
}

/// The id of the data key that sealed `sealed`, if it has the form of a sealed value.
pub fn key_id_of(sealed: &str) -> Option<Uuid> {
    parse(sealed).map(|(id, _)| id)
}

/// `sealed:v1:<uuid>:<base64url-no-pad>` with at least a nonce and a tag inside.
fn parse(sealed: &str) -> Option<(Uuid, Vec<u8>)> {
    let rest = sealed.strip_prefix(PREFIX)?;
    let (id, payload) = rest.split_once(':')?;
    // Only the hyphenated form we write: one spelling per value.
    if id.len() != 36 {
        return None;
    }
    let id = Uuid::try_parse(id).ok()?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    (bytes.len() >= NONCE_LEN + TAG_LEN).then_some((id, bytes))
}

fn seal_with(
    cipher: &Aes256Gcm,
    key_id: Uuid,
    owner: Uuid,
    clear: &str,
) -> Result<String, SecretError> {
    let nonce = random_nonce();
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: clear.as_bytes(),
                aad: owner.as_bytes(),
            },
        )
        .map_err(|_| SecretError::Seal)?;
    let mut bytes = nonce.to_vec();
    bytes.extend_from_slice(&sealed);
    Ok(format!(
        "{PREFIX}{}:{}",
        key_id.hyphenated(),
        URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn open_with(cipher: &Aes256Gcm, owner: Uuid, sealed: &str) -> Result<SecretString, SecretError> {
    let (_, bytes) = parse(sealed).ok_or(SecretError::Malformed)?;
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    let clear = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: owner.as_bytes(),
            },
        )
        .map_err(|_| SecretError::DoesNotOpen)?;
    let clear = String::from_utf8(clear).map_err(|_| SecretError::DoesNotOpen)?;
    Ok(SecretString::from(clear))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::master::MasterKey;
    use super::*;

    fn cipher() -> Aes256Gcm {
        Aes256Gcm::new((&*random_key()).into())
    }

    #[test]
    fn a_sealed_value_opens_for_its_owner() {
        let (cipher, key_id, owner) = (cipher(), Uuid::new_v4(), Uuid::new_v4());
        let sealed = seal_with(&cipher, key_id, owner, "s3cr3t-tøken").unwrap();
        assert!(is_sealed(&sealed));
        assert_eq!(key_id_of(&sealed), Some(key_id));
        let opened = open_with(&cipher, owner, &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "s3cr3t-tøken");
        // An empty value seals too.
        let empty = seal_with(&cipher, key_id, owner, "").unwrap();
        assert_eq!(
            open_with(&cipher, owner, &empty).unwrap().expose_secret(),
            ""
        );
    }

    #[test]
    fn another_owner_cannot_open_a_sealed_value() {
        let (cipher, key_id, owner) = (cipher(), Uuid::new_v4(), Uuid::new_v4());
        let sealed = seal_with(&cipher, key_id, owner, "secret").unwrap();
        let err = open_with(&cipher, Uuid::new_v4(), &sealed).unwrap_err();
        assert!(matches!(err, SecretError::DoesNotOpen));
        assert_eq!(err.to_string(), "does not open: wrong owner or tampered");
    }

    #[test]
    fn a_tampered_ciphertext_does_not_open() {
        let (cipher, key_id, owner) = (cipher(), Uuid::new_v4(), Uuid::new_v4());
        let sealed = seal_with(&cipher, key_id, owner, "secret").unwrap();
        let (head, payload) = sealed.rsplit_once(':').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        for index in [0, NONCE_LEN, bytes.len() - 1] {
            let mut altered = bytes.clone();
            altered[index] ^= 1;
            let tampered = format!("{head}:{}", URL_SAFE_NO_PAD.encode(&altered));
            assert!(matches!(
                open_with(&cipher, owner, &tampered),
                Err(SecretError::DoesNotOpen)
            ));
        }
        // Truncated to nonce and tag only: still well-formed, does not open.
        bytes.truncate(NONCE_LEN + TAG_LEN);
        let truncated = format!("{head}:{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert!(is_sealed(&truncated));
        assert!(open_with(&cipher, owner, &truncated).is_err());
        // Another key does not open it either.
        assert!(open_with(&self::cipher(), owner, &sealed).is_err());
    }

    #[test]
    fn the_clear_value_appears_nowhere_in_the_sealed_string() {
        let (cipher, key_id, owner) = (cipher(), Uuid::new_v4(), Uuid::new_v4());
        let clear = "sk-live-AAAAAAAAAAAAAAAAAAAAAAAA";
        let sealed = seal_with(&cipher, key_id, owner, clear).unwrap();
        assert!(!sealed.contains(clear));
        assert!(!sealed.contains(&URL_SAFE_NO_PAD.encode(clear)));
        // Random nonces: the same value seals differently each time.
        assert_ne!(sealed, seal_with(&cipher, key_id, owner, clear).unwrap());
    }

    #[test]
    fn only_the_sealed_format_parses() {
        let id = Uuid::new_v4();
        let payload = URL_SAFE_NO_PAD.encode([7u8; NONCE_LEN + TAG_LEN + 3]);
        let good = format!("sealed:v1:{id}:{payload}");
        assert!(is_sealed(&good));
        assert_eq!(key_id_of(&good), Some(id));
        let short = URL_SAFE_NO_PAD.encode([7u8; NONCE_LEN + TAG_LEN - 1]);
        for bad in [
            String::new(),
            "plain value".into(),
            "sealed:v1:".into(),
            format!("sealed:v2:{id}:{payload}"),
            format!("Sealed:v1:{id}:{payload}"),
            format!("sealed:v1:not-a-uuid:{payload}"),
            format!("sealed:v1:{}:{payload}", id.simple()),
            format!("sealed:v1:{id}"),
            format!("sealed:v1:{id}:"),
            format!("sealed:v1:{id}:{short}"),
            format!("sealed:v1:{id}:{payload}="),
            format!("sealed:v1:{id}:{payload}:x"),
            format!("sealed:v1:{id}:{}", "+/+/".repeat(10)),
            format!(" sealed:v1:{id}:{payload}"),
        ] {
            assert!(!is_sealed(&bad), "{bad:?} parsed");
            assert_eq!(key_id_of(&bad), None);
        }
    }

    #[test]
    fn a_wrapped_data_key_unwraps_only_for_its_id_and_owner() {
        let master = MasterKey::from_bytes(&random_key());
        assert!(master.id.starts_with("mk-") && master.id.len() == 3 + 16);
        let (id, owner, key) = (Uuid::new_v4(), Uuid::new_v4(), random_key());
        let wrapped = master.wrap(id, owner, &key).unwrap();
        assert_eq!(wrapped.len(), NONCE_LEN + 32 + TAG_LEN);
        assert_eq!(*master.unwrap(id, owner, &wrapped).unwrap(), *key);
        assert!(master.unwrap(Uuid::new_v4(), owner, &wrapped).is_none());
        assert!(master.unwrap(id, Uuid::new_v4(), &wrapped).is_none());
        assert!(MasterKey::from_bytes(&random_key())
            .unwrap(id, owner, &wrapped)
            .is_none());
        assert!(!format!("{master:?}").contains(&hex::encode(*key)));
    }
}
