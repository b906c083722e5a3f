//! Master keys: where they come from, their ids, and the wrapping of data
//! keys under them.
//!
//! `CHRONICLE_MASTER_KEYS` (base64 of 32 bytes each, comma-separated, the
//! first active) when set; otherwise `<data dir>/master-keys/master-<UTC
//! timestamp>.key` files (base64, mode 0600, directory 0700), the newest
//! active, one generated on first start.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use secrecy::zeroize::Zeroizing;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::NONCE_LEN;
use crate::config::Settings;

/// The length of every key, master or data: AES-256.
pub(crate) const KEY_LEN: usize = 32;

/// Raw key bytes, wiped from memory when dropped.
pub(crate) type KeyBytes = Zeroizing<[u8; KEY_LEN]>;

/// 32 fresh bytes from the operating system's generator.
pub(crate) fn random_key() -> KeyBytes {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    key
}

/// A fresh 96-bit AES-GCM nonce. Random nonces are safe here: a key seals far
/// fewer than the 2^32 messages after which collisions become a concern.
pub(crate) fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// One master key. Only its cipher is kept; `Debug` shows the id alone.
pub(crate) struct MasterKey {
    pub(crate) id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    pub(crate) fn from_bytes(key: &[u8; KEY_LEN]) -> Self {
        Self {
            id: master_key_id(key),
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Parses base64 (standard alphabet, padding optional) of exactly 32 bytes.
    fn from_base64(text: &str) -> Option<Self> {
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.trim()))
                .ok()?,
        );
        let key: &[u8; KEY_LEN] = decoded.as_slice().try_into().ok()?;
        Some(Self::from_bytes(key))
    }

    /// `nonce || AES-256-GCM(data key)`, bound to the data key's id and owner.
    pub(crate) fn wrap(
        &self,
        data_key_id: Uuid,
        owner: Uuid,
        data_key: &[u8; KEY_LEN],
    ) -> anyhow::Result<Vec<u8>> {
        let nonce = random_nonce();
        let aad = wrap_aad(data_key_id, owner);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: data_key,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("wrapping data key {data_key_id}"))?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&sealed);
        Ok(wrapped)
    }

    /// The data key, or `None` if `wrapped` was altered or belongs to another id or owner.
    pub(crate) fn unwrap(
        &self,
        data_key_id: Uuid,
        owner: Uuid,
        wrapped: &[u8],
    ) -> Option<KeyBytes> {
        if wrapped.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let aad = wrap_aad(data_key_id, owner);
        let clear = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .ok()?,
        );
        let key: &[u8; KEY_LEN] = clear.as_slice().try_into().ok()?;
        Some(Zeroizing::new(*key))
    }
}

/// `mk-` + hex of the first 8 bytes of SHA-256(key): names a key without revealing it.
pub(crate) fn master_key_id(key: &[u8; KEY_LEN]) -> String {
    format!("mk-{}", hex::encode(&Sha256::digest(key)[..8]))
}

fn wrap_aad(data_key_id: Uuid, owner: Uuid) -> [u8; 32] {
    let mut aad = [0u8; 32];
    aad[..16].copy_from_slice(data_key_id.as_bytes());
    aad[16..].copy_from_slice(owner.as_bytes());
    aad
}

/// Where the master keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `CHRONICLE_MASTER_KEYS`: the operator manages them.
    Configured,
    /// `<data dir>/master-keys/`: Chronicle generates them.
    DataDir(PathBuf),
}

/// Every master key this process knows, the active one first.
#[derive(Debug)]
pub(crate) struct MasterKeys {
    pub(crate) keys: Vec<MasterKey>,
    pub(crate) source: Source,
}

impl MasterKeys {
    /// Reads the keys, generating one in the data dir if it has none.
    pub(crate) fn load_or_generate(settings: &Settings) -> anyhow::Result<Self> {
        let mut keys = Self::read(settings)?;
        if let (Source::DataDir(dir), true) = (&keys.source, keys.keys.is_empty()) {
            let key = random_key();
            let path = write_key_file(dir, &key)?;
            let master = MasterKey::from_bytes(&key);
            tracing::info!(path = %path.display(), master_key.id = %master.id, "generated a master key");
            keys.keys.push(master);
        }
        Ok(keys)
    }

    /// Reads the keys without generating any (the data dir may have none).
    pub(crate) fn read(settings: &Settings) -> anyhow::Result<Self> {
        let configured = &settings.secrets.master_keys;
        if !configured.is_empty() {
            let keys = configured
                .iter()
                .enumerate()
                .map(|(index, text)| {
                    MasterKey::from_base64(text.expose_secret()).with_context(|| {
                        format!(
                            "CHRONICLE_MASTER_KEYS: key {} of {} is not base64 of 32 bytes",
                            index + 1,
                            configured.len()
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(Self {
                keys,
                source: Source::Configured,
            });
        }
        let dir = master_keys_dir(&settings.data_dir);
        let mut keys = Vec::new();
        for path in crate::auth::keys::stored_key_files(&dir, "master-", ".key")? {
            let text = Zeroizing::new(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
            keys.push(
                MasterKey::from_base64(&text).with_context(|| {
                    format!("{} is not base64 of a 32-byte key", path.display())
                })?,
            );
        }
        // Oldest first on disk; the newest is active.
        keys.reverse();
        Ok(Self {
            keys,
            source: Source::DataDir(dir),
        })
    }

    pub(crate) fn active(&self) -> Option<&MasterKey> {
        self.keys.first()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|key| key.id == id)
    }
}

pub(crate) fn master_keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("master-keys")
}

/// Writes a new `master-<timestamp>.key` (mode 0600) into `dir` (mode 0700).
pub(crate) fn write_key_file(dir: &Path, key: &[u8; KEY_LEN]) -> anyhow::Result<PathBuf> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.display()))?;
    let name = format!(
        "master-{}.key",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
    );
    let path = dir.join(name);
    let text = Zeroizing::new(format!("{}\n", STANDARD.encode(key)));
    crate::auth::keys::write_private_file(&path, &text)?;
    Ok(path)
}
