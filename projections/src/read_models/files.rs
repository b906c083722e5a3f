//! `read.files`: the metadata of every workspace file, soft-deleted ones
//! included (marked `is_deleted`).

use async_trait::async_trait;
use chronicle_aggregates::workspace_file::WorkspaceFileEvent;
use sqlx::PgConnection;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

pub struct FilesProjection;

#[async_trait]
impl ReadModel for FilesProjection {
    type Event = WorkspaceFileEvent;
    const NAME: &'static str = "files";
    const AGGREGATE_TYPE: &'static str = "WorkspaceFile";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, WorkspaceFileEvent>,
    ) -> Result<(), ProjectionError> {
        let Decoded {
            id, version, event, ..
        } = decoded;
        let query = match event {
            WorkspaceFileEvent::FileUploaded {
                owner_id,
                name,
                size,
                sha256,
                content_type,
                uploaded_at,
            } => sqlx::query(
                "insert into read.files (id, owner_id, name, size, sha256, content_type, \
                   is_deleted, created_at, updated_at, version) \
                 values ($1, $2, $3, $4, $5, $6, false, $7, $7, $8)",
            )
            .bind(id)
            .bind(owner_id)
            .bind(name)
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .bind(sha256)
            .bind(content_type)
            .bind(uploaded_at)
            .bind(version),
            WorkspaceFileEvent::FileDeleted { deleted_at } => sqlx::query(
                "update read.files set is_deleted = true, deleted_at = $2, updated_at = $2, \
                   version = $3 where id = $1",
            )
            .bind(id)
            .bind(deleted_at)
            .bind(version),
        };
        query.execute(conn).await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("delete from read.files").execute(conn).await?;
        Ok(())
    }
}
