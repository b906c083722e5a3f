//! Sealed secrets against a real database: per-owner data keys, master keys
//! from the data dir or `CHRONICLE_MASTER_KEYS`, and `rotate_master`.

mod common;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chronicle::secrets::{is_sealed, key_id_of, rotate_master, SecretBox, SecretError};
use chronicle::Settings;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use common::{remove_test_resources, test_settings};

/// Settings with their own database (migrated) and data dir, and a pool on it.
async fn fixture(master_keys: &[&str]) -> (Settings, PgPool) {
    let mut settings = test_settings().await;
    settings.secrets.master_keys = master_keys.iter().map(|k| SecretString::from(*k)).collect();
    let pool = PgPool::connect(settings.database.url.expose_secret())
        .await
        .expect("connect to the test database");
    (settings, pool)
}

async fn cleanup(settings: &Settings, pool: PgPool) {
    pool.close().await;
    remove_test_resources(settings).await;
}

fn with_keys(settings: &Settings, master_keys: &[&str]) -> Settings {
    let mut settings = settings.clone();
    settings.secrets.master_keys = master_keys.iter().map(|k| SecretString::from(*k)).collect();
    settings
}

/// A fresh master key as an operator would put it in `CHRONICLE_MASTER_KEYS`.
fn new_master_key() -> String {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    STANDARD.encode(key)
}

/// The id rule, computed independently: `mk-` + hex of SHA-256(key)[..8].
fn master_key_id(base64_key: &str) -> String {
    let key = STANDARD.decode(base64_key.trim()).unwrap();
    format!("mk-{}", hex::encode(&Sha256::digest(&key)[..8]))
}

fn master_key_files(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("master-keys");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Every data key: (id, master key id, wrapped, retired), in id order.
async fn data_keys(pool: &PgPool) -> Vec<(Uuid, String, Vec<u8>, bool)> {
    sqlx::query_as("select id, master_key_id, wrapped, retired from secret_data_keys order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn open(secrets: &SecretBox, owner: Uuid, sealed: &str) -> String {
    secrets
        .open(owner, sealed)
        .await
        .expect("opens")
        .expose_secret()
        .to_owned()
}

#[tokio::test]
async fn a_generated_master_key_is_private_and_each_owner_seals_with_a_data_key_of_their_own() {
    let (settings, pool) = fixture(&[]).await;
    let secrets = SecretBox::load(pool.clone(), &settings).await.unwrap();

    let files = master_key_files(&settings.data_dir);
    assert_eq!(files.len(), 1, "one master key generated: {files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(secrets.active_master_key_id(), master_key_id(&text));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files[0]), 0o600);
        assert_eq!(mode(&settings.data_dir.join("master-keys")), 0o700);
    }
    assert!(!format!("{secrets:?}").contains(text.trim()));

    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let clear = "ghp_AAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let first = secrets.seal(alice, clear).await.unwrap();
    let second = secrets.seal(alice, "other").await.unwrap();
    let bobs = secrets.seal(bob, clear).await.unwrap();
    assert!(is_sealed(&first) && !first.contains(clear));
    assert_eq!(key_id_of(&first), key_id_of(&second));
    assert_ne!(key_id_of(&first), key_id_of(&bobs));
    assert_eq!(open(&secrets, alice, &first).await, clear);

    // Bob cannot open Alice's value, even copied into his configuration.
    let err = secrets.open(bob, &first).await.unwrap_err();
    assert!(matches!(err, SecretError::DoesNotOpen), "{err}");
    assert!(!err.to_string().contains(clear));

    // A process with a cold cache (another server) reads the key from the table.
    let other = SecretBox::load(pool.clone(), &settings).await.unwrap();
    assert_eq!(master_key_files(&settings.data_dir).len(), 1);
    assert_eq!(open(&other, alice, &first).await, clear);
    assert_eq!(open(&other, bob, &bobs).await, clear);
    assert_eq!(
        other.seal(alice, "x").await.map(|s| key_id_of(&s)).unwrap(),
        key_id_of(&first)
    );

    // A key id nobody has.
    let unknown = Uuid::new_v4();
    let forged = first.replace(
        &key_id_of(&first).unwrap().to_string(),
        &unknown.to_string(),
    );
    let err = other.open(alice, &forged).await.unwrap_err();
    assert_eq!(err.to_string(), format!("unknown data key {unknown}"));
    assert!(matches!(
        other.open(alice, "plain").await,
        Err(SecretError::Malformed)
    ));

    cleanup(&settings, pool).await;
}

#[tokio::test]
async fn owners_creating_their_first_data_key_at_once_all_get_keys_that_open() {
    let (settings, pool) = fixture(&[]).await;
    let one = SecretBox::load(pool.clone(), &settings).await.unwrap();
    let two = SecretBox::load(pool.clone(), &settings).await.unwrap();
    let owner = Uuid::new_v4();
    let (a, b) = tokio::join!(one.seal(owner, "a"), two.seal(owner, "b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    let fresh = SecretBox::load(pool.clone(), &settings).await.unwrap();
    assert_eq!(open(&fresh, owner, &a).await, "a");
    assert_eq!(open(&fresh, owner, &b).await, "b");
    cleanup(&settings, pool).await;
}

#[tokio::test]
async fn rotating_the_data_dir_master_key_rewraps_every_data_key_and_old_values_still_open() {
    let (settings, pool) = fixture(&[]).await;
    let running = SecretBox::load(pool.clone(), &settings).await.unwrap();
    let old_master = running.active_master_key_id().to_owned();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let alices = running.seal(alice, "alice's token").await.unwrap();
    let bobs = running.seal(bob, "bob's token").await.unwrap();

    let report = rotate_master(&pool, &settings).await.unwrap();
    assert_ne!(report.master_key_id, old_master);
    assert_eq!(report.rewrapped, 2);
    let files = master_key_files(&settings.data_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(
        master_key_id(&std::fs::read_to_string(&files[1]).unwrap()),
        report.master_key_id,
        "the newest file is the new key"
    );
    let rows = data_keys(&pool).await;
    assert_eq!(rows.len(), 2);
    for (_, master, _, retired) in &rows {
        assert_eq!(
            master, &report.master_key_id,
            "no data key left under the old master"
        );
        assert!(retired);
    }

    // A running server still opens with its cached keys.
    assert_eq!(open(&running, alice, &alices).await, "alice's token");

    let restarted = SecretBox::load(pool.clone(), &settings).await.unwrap();
    assert_eq!(restarted.active_master_key_id(), report.master_key_id);
    assert_eq!(open(&restarted, alice, &alices).await, "alice's token");
    assert_eq!(open(&restarted, bob, &bobs).await, "bob's token");
    let newer = restarted.seal(alice, "new token").await.unwrap();
    assert_ne!(
        key_id_of(&newer),
        key_id_of(&alices),
        "a fresh data key seals"
    );
    let rows = data_keys(&pool).await;
    let new_row = rows
        .iter()
        .find(|row| Some(row.0) == key_id_of(&newer))
        .unwrap();
    assert_eq!(
        (new_row.1.as_str(), new_row.3),
        (report.master_key_id.as_str(), false)
    );

    // The old master key is no longer needed.
    std::fs::rename(&files[0], settings.data_dir.join("retired-master.key")).unwrap();
    let reloaded = SecretBox::load(pool.clone(), &settings).await.unwrap();
    assert_eq!(reloaded.active_master_key_id(), report.master_key_id);
    assert_eq!(open(&reloaded, alice, &alices).await, "alice's token");
    assert_eq!(open(&reloaded, bob, &bobs).await, "bob's token");
    assert_eq!(open(&reloaded, alice, &newer).await, "new token");
    assert_eq!(master_key_files(&settings.data_dir).len(), 1);

    cleanup(&settings, pool).await;
}

#[tokio::test]
async fn configured_master_keys_rotate_without_generating_a_key_file() {
    let (old_key, new_key) = (new_master_key(), new_master_key());
    let (settings, pool) = fixture(&[&old_key]).await;
    let before = SecretBox::load(pool.clone(), &settings).await.unwrap();
    assert_eq!(before.active_master_key_id(), master_key_id(&old_key));
    let owner = Uuid::new_v4();
    let old_value = before.seal(owner, "old").await.unwrap();

    // The operator deploys the new key first, the old one still listed.
    let deployed = with_keys(&settings, &[&new_key, &old_key]);
    let server = SecretBox::load(pool.clone(), &deployed).await.unwrap();
    assert_eq!(server.active_master_key_id(), master_key_id(&new_key));
    let new_value = server.seal(owner, "new").await.unwrap();
    assert_ne!(key_id_of(&new_value), key_id_of(&old_value));

    let report = rotate_master(&pool, &deployed).await.unwrap();
    assert_eq!(report.master_key_id, master_key_id(&new_key));
    assert_eq!(
        report.rewrapped, 1,
        "only the data key under the old master"
    );
    assert!(!settings.data_dir.join("master-keys").exists());
    assert!(data_keys(&pool)
        .await
        .iter()
        .all(|row| row.1 == report.master_key_id));
    let again = rotate_master(&pool, &deployed).await.unwrap();
    assert_eq!(again.rewrapped, 0);

    // The old key can go.
    let only_new = SecretBox::load(pool.clone(), &with_keys(&settings, &[&new_key]))
        .await
        .unwrap();
    assert_eq!(open(&only_new, owner, &old_value).await, "old");
    assert_eq!(open(&only_new, owner, &new_value).await, "new");
    assert_eq!(
        key_id_of(&only_new.seal(owner, "later").await.unwrap()),
        key_id_of(&new_value),
        "the data key created under the new master keeps sealing"
    );

    cleanup(&settings, pool).await;
}

#[tokio::test]
async fn a_data_key_whose_master_key_is_missing_fails_rotation_and_changes_nothing() {
    let (old_key, new_key) = (new_master_key(), new_master_key());
    let (settings, pool) = fixture(&[&old_key]).await;
    let owner = Uuid::new_v4();
    let sealed = SecretBox::load(pool.clone(), &settings)
        .await
        .unwrap()
        .seal(owner, "value")
        .await
        .unwrap();
    let rows = data_keys(&pool).await;

    let without_old = with_keys(&settings, &[&new_key]);
    let err = rotate_master(&pool, &without_old).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains(&master_key_id(&old_key)) && message.contains("not configured"),
        "{message}"
    );
    assert!(message.contains("Nothing was changed"), "{message}");
    assert!(!message.contains(&old_key) && !message.contains(&new_key));
    assert_eq!(data_keys(&pool).await, rows);

    // The same with keys in the data dir: no key file is left behind either.
    let data_dir_keys = with_keys(&settings, &[]);
    assert!(rotate_master(&pool, &data_dir_keys).await.is_err());
    assert!(master_key_files(&settings.data_dir).is_empty());
    assert_eq!(data_keys(&pool).await, rows);

    // Opening says which master key is missing.
    let secrets = SecretBox::load(pool.clone(), &without_old).await.unwrap();
    let err = secrets.open(owner, &sealed).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("master key {} is not configured", master_key_id(&old_key))
    );

    cleanup(&settings, pool).await;
}

#[tokio::test]
async fn malformed_configured_master_keys_are_refused_without_echoing_them() {
    let short = STANDARD.encode([1u8; 16]);
    let (settings, pool) = fixture(&[]).await;
    for bad in ["not base64 at all!", short.as_str()] {
        let err = SecretBox::load(
            pool.clone(),
            &with_keys(&settings, &[&new_master_key(), bad]),
        )
        .await
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("key 2 of 2 is not base64 of 32 bytes"),
            "{message}"
        );
        assert!(!message.contains(bad));
    }
    cleanup(&settings, pool).await;
}
