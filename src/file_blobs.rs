//! The bytes of workspace files on disk: where a blob lives, the lock that
//! serialises storing and removing one, and the sweep that removes what no
//! file references (see `docs/files.md`, "On disk").
//!
//! Orphans are rare but possible: a process that dies between storing a
//! blob and committing its `FileUploaded` event, or between committing a
//! `FileDeleted` and removing the blob; a delete whose read-model wait timed
//! out (it keeps the blob rather than guess); an upload cut off by a crash
//! (its `.upload-…` file). Without a sweep they would fill the disk.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Temporary upload files start with this.
pub const UPLOAD_PREFIX: &str = ".upload-";

/// An upload file untouched for this long belongs to no running request
/// (every request ends within the server's 30 s request timeout), so the
/// sweep removes it. Blobs younger than this are left alone too: the lock
/// already keeps the sweep from a blob an upload is recording, and the age
/// keeps it so should that lock be lost with its connection.
pub const ABANDONED_UPLOAD_AGE: Duration = Duration::from_secs(3600);

/// The workspace directory of `owner_id`.
pub fn workspace_dir(data_dir: &Path, owner_id: Uuid) -> PathBuf {
    data_dir.join("files").join(owner_id.to_string())
}

/// Whether `name` is a blob's name: a lower-case hex SHA-256.
pub fn is_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where the blob with `sha256` of `owner_id` lives, if `sha256` is a digest.
/// Built only from the owner's UUID and 64 hex digits, so it always names a
/// file directly inside the owner's directory.
pub fn blob_path(data_dir: &Path, owner_id: Uuid, sha256: &str) -> Option<PathBuf> {
    is_digest(sha256).then(|| workspace_dir(data_dir, owner_id).join(sha256))
}

/// Serialises, per owner and digest, storing a blob with recording its file,
/// and deleting a file (or sweeping) with removing a blob nothing references
/// any more: without it a delete could remove the blob an upload of the same
/// bytes is about to reference. A transaction-scoped advisory lock, released
/// however the holder ends (a client leaving included).
pub async fn lock_blob(
    pool: &PgPool,
    owner_id: Uuid,
    sha256: &str,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("files:{owner_id}:{sha256}"))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The uploads whose file was not deleted, from the event store (the source
/// of truth: a read model may lag behind it, or be mid-rebuild).
macro_rules! live_uploads {
    () => {
        "from events uploaded \
         where uploaded.aggregate_type = 'WorkspaceFile' \
           and uploaded.event_type = 'FileUploaded' \
           and not exists (select 1 from events deleted \
             where deleted.aggregate_type = 'WorkspaceFile' \
               and deleted.aggregate_id = uploaded.aggregate_id \
               and deleted.event_type = 'FileDeleted')"
    };
}

/// Every `(owner, digest)` that a live file references.
const LIVE_BLOBS: &str = concat!(
    "select (uploaded.payload->'FileUploaded'->>'owner_id')::uuid, \
       uploaded.payload->'FileUploaded'->>'sha256' ",
    live_uploads!()
);

/// Whether a live file references the blob `($1, $2)`.
const IS_LIVE: &str = concat!(
    "select exists (select 1 ",
    live_uploads!(),
    " and uploaded.payload->'FileUploaded'->>'owner_id' = $1::text \
      and uploaded.payload->'FileUploaded'->>'sha256' = $2)"
);

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Blobs no live file referenced.
    pub blobs: u64,
    /// Upload files older than [`ABANDONED_UPLOAD_AGE`].
    pub uploads: u64,
}

/// Removes, under `<data_dir>/files`, every blob that no live file of its
/// owner references and every upload file, each once untouched for longer
/// than `abandoned_after`. Safe beside running uploads and deletes, on any
/// number of replicas sharing the directory: a blob is removed only under
/// its lock and after the event store, read under that lock, shows no live
/// file for it. Checking one suspect blob scans the store's uploads (no
/// index covers a payload's digest): suspects are rare.
pub async fn sweep(
    pool: &PgPool,
    data_dir: &Path,
    abandoned_after: Duration,
) -> anyhow::Result<Swept> {
    let root = data_dir.join("files");
    let mut swept = Swept::default();
    let mut owners = match tokio::fs::read_dir(&root).await {
        Ok(owners) => owners,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(swept),
        Err(err) => return Err(err).with_context(|| format!("listing {}", root.display())),
    };
    // Read once for the common case; a blob that looks orphaned is checked
    // again under its lock, since an upload may have recorded it since.
    let live: HashSet<(Uuid, String)> = sqlx::query_as(LIVE_BLOBS)
        .fetch_all(pool)
        .await
        .context("reading the live files from the event store")?
        .into_iter()
        .collect();
    let abandoned_before = SystemTime::now()
        .checked_sub(abandoned_after)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    while let Some(owner) = owners
        .next_entry()
        .await
        .context("listing the workspaces")?
    {
        // Only directories named as the server names them (a hyphenated
        // lower-case UUID); anything else is not ours to touch.
        let Some(owner_id) = owner.file_name().to_str().and_then(|name| {
            Uuid::parse_str(name)
                .ok()
                .filter(|id| id.to_string() == name)
        }) else {
            continue;
        };
        let mut entries = match tokio::fs::read_dir(owner.path()).await {
            Ok(entries) => entries,
            // Not a directory, or gone since it was listed.
            Err(err) if matches!(err.kind(), ErrorKind::NotADirectory | ErrorKind::NotFound) => {
                continue
            }
            Err(err) => return Err(err).context("listing a workspace"),
        };
        while let Some(entry) = entries.next_entry().await.context("listing a workspace")? {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let untouched_long_enough = entry
                .metadata()
                .await
                .and_then(|meta| meta.modified())
                .is_ok_and(|at| at < abandoned_before);
            if !untouched_long_enough {
                continue;
            }
            if name.starts_with(UPLOAD_PREFIX) {
                if remove(&entry.path()).await? {
                    swept.uploads += 1;
                }
            } else if is_digest(&name) && !live.contains(&(owner_id, name.clone())) {
                let mut lock = lock_blob(pool, owner_id, &name).await?;
                let is_live: bool = sqlx::query_scalar(IS_LIVE)
                    .bind(owner_id.to_string())
                    .bind(&name)
                    .fetch_one(&mut *lock)
                    .await?;
                if !is_live && remove(&entry.path()).await? {
                    swept.blobs += 1;
                }
                lock.commit().await?;
            }
        }
    }
    if swept != Swept::default() {
        tracing::info!(
            blobs = swept.blobs,
            uploads = swept.uploads,
            "swept orphaned file data"
        );
    }
    Ok(swept)
}

/// Removes `path`; false if it was gone already (a delete or another sweep).
async fn remove(path: &Path) -> anyhow::Result<bool> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// Sweeps at start and then every `interval`, until `shutdown`; a failed
/// sweep is logged and tried again at the next round.
pub async fn sweep_periodically(
    pool: PgPool,
    data_dir: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(err) = sweep(&pool, &data_dir, ABANDONED_UPLOAD_AGE).await {
            tracing::warn!(
                error = format!("{err:#}"),
                "sweeping orphaned file data failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_are_made_of_the_owner_and_a_lower_case_hex_digest_only() {
        let owner = Uuid::nil();
        let digest = "ab".repeat(32);
        assert_eq!(
            blob_path(Path::new("/d"), owner, &digest),
            Some(PathBuf::from(format!("/d/files/{owner}/{digest}")))
        );
        for bad in [
            "../../etc/passwd",
            "",
            &"AB".repeat(32),
            &"g".repeat(64),
            &"a".repeat(63),
        ] {
            assert_eq!(blob_path(Path::new("/d"), owner, bad), None, "{bad}");
        }
    }
}
