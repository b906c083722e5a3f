//! Signs the chain head every `checkpoint_interval` if it moved, so the
//! stretch of the trail no checkpoint vouches for stays short even when
//! fewer than `checkpoint_every` events arrive.

use std::sync::Arc;
use std::time::Duration;

use chronicle_projections::audit::{
    checkpoints_paused, current_head, insert_checkpoint, CheckpointSigner,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`.
pub async fn run(
    pool: PgPool,
    signer: Arc<dyn CheckpointSigner>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(err) = sign_head_if_moved(&pool, signer.as_ref()).await {
            tracing::warn!(error = %err, "could not sign the audit chain head");
        }
    }
}

/// Signs the current head unless a checkpoint already covers it or
/// checkpoints are paused (`checkpoints_paused`). Returns the seq it signed,
/// if any.
pub async fn sign_head_if_moved(
    pool: &PgPool,
    signer: &dyn CheckpointSigner,
) -> anyhow::Result<Option<i64>> {
    let mut conn = pool.acquire().await?;
    let head = current_head(&mut conn).await?;
    let last: Option<i64> = sqlx::query_scalar("select max(seq) from audit.checkpoints")
        .fetch_one(&mut *conn)
        .await?;
    if head.seq == 0 || last.unwrap_or(0) >= head.seq {
        return Ok(None);
    }
    // Asked after the head was read: an event held out before the head is
    // parked before anything behind it reaches the trail, so it shows here.
    if let Some(paused) = checkpoints_paused(&mut conn).await? {
        tracing::warn!(
            audit.seq = head.seq,
            "audit checkpoint not signed: {paused}"
        );
        return Ok(None);
    }
    let stored = insert_checkpoint(&mut conn, signer, head.seq, &head.hash).await?;
    if stored {
        tracing::info!(audit.seq = head.seq, "signed the audit chain head");
    }
    Ok(stored.then_some(head.seq))
}
