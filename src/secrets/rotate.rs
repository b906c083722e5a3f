//! `chronicle keys rotate-master`: a new active master key, and every data
//! key re-wrapped under it in one transaction.

use std::collections::BTreeSet;

use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

use super::master::{random_key, write_key_file, MasterKey, MasterKeys, Source};
use crate::config::Settings;

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// The master key that now wraps every data key.
    pub master_key_id: String,
    /// How many data keys were re-wrapped under it (and retired from sealing).
    pub rewrapped: u64,
}

/// Makes a new master key active and re-wraps every data key under it.
///
/// With keys in the data dir, generates a new key file; with
/// `CHRONICLE_MASTER_KEYS`, the operator has put the new key first and
/// nothing is generated. Re-wrapped data keys keep their ids (every sealed
/// value still opens) and are retired: new seals get a fresh data key under
/// the new master key. If a data key names a master key that is not
/// configured, fails before changing anything (no row, no key file).
pub async fn rotate_master(pool: &PgPool, settings: &Settings) -> anyhow::Result<RotationReport> {
    let MasterKeys { mut keys, source } =
        MasterKeys::read(settings).context("loading the master keys")?;
    let new_key = match &source {
        Source::Configured => None,
        Source::DataDir(_) => {
            let bytes = random_key();
            keys.insert(0, MasterKey::from_bytes(&bytes));
            Some(bytes)
        }
    };
    let active = keys.first().context("no master key")?;

    let mut tx = pool.begin().await.context("starting the rotation")?;
    // Serialises rotations and holds back new data keys while this runs;
    // opening (reads) goes on.
    sqlx::query("lock table secret_data_keys in exclusive mode")
        .execute(&mut *tx)
        .await
        .context("locking secret_data_keys (has `chronicle migrate` run?)")?;
    let rows: Vec<(Uuid, Uuid, String, Vec<u8>)> = sqlx::query_as(
        r"select id, owner_id, master_key_id, wrapped from secret_data_keys
          where master_key_id <> $1 order by created_at, id",
    )
    .bind(&active.id)
    .fetch_all(&mut *tx)
    .await
    .context("reading the data keys")?;

    let missing: BTreeSet<&str> = rows
        .iter()
        .map(|(_, _, master_key_id, _)| master_key_id.as_str())
        .filter(|id| !keys.iter().any(|key| key.id == *id))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "data keys are wrapped by master keys that are not configured: {}; configure them \
         (CHRONICLE_MASTER_KEYS, or their files in the data dir) and run again. Nothing was changed.",
        missing.into_iter().collect::<Vec<_>>().join(", ")
    );

    for (id, owner, master_key_id, wrapped) in &rows {
        let master = keys
            .iter()
            .find(|key| key.id == *master_key_id)
            .context("master key vanished")?;
        let data_key = master.unwrap(*id, *owner, wrapped).with_context(|| {
            format!(
                "data key {id} does not unwrap under master key {master_key_id}: its stored \
                 form was altered. Nothing was changed."
            )
        })?;
        let rewrapped = active.wrap(*id, *owner, &data_key)?;
        sqlx::query(
            r"update secret_data_keys set master_key_id = $2, wrapped = $3, retired = true
              where id = $1",
        )
        .bind(id)
        .bind(&active.id)
        .bind(rewrapped)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("re-wrapping data key {id}"))?;
    }

    // The key file is written before the commit: once committed, the rows
    // need it. A failed commit leaves an unused (harmless) active key.
    if let (Some(bytes), Source::DataDir(dir)) = (&new_key, &source) {
        let path = write_key_file(dir, bytes)?;
        tracing::info!(path = %path.display(), master_key.id = %active.id, "generated a master key");
    }
    tx.commit()
        .await
        .context("committing the re-wrapped data keys")?;
    Ok(RotationReport {
        master_key_id: active.id.clone(),
        rewrapped: rows.len() as u64,
    })
}
