//! `read.projects`: every project, soft-deleted ones marked.

use async_trait::async_trait;
use chronicle_aggregates::project::ProjectEvent;
use sqlx::PgConnection;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

pub struct ProjectsProjection;

#[async_trait]
impl ReadModel for ProjectsProjection {
    type Event = ProjectEvent;
    const NAME: &'static str = "projects";
    const AGGREGATE_TYPE: &'static str = "Project";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, ProjectEvent>,
    ) -> Result<(), ProjectionError> {
        let Decoded {
            id, version, event, ..
        } = decoded;
        let query = match event {
            ProjectEvent::ProjectCreated {
                owner_id,
                name,
                description,
                settings,
                created_at,
            } => sqlx::query(
                "insert into read.projects (id, owner_id, name, description, settings, created_at, \
                   updated_at, version) \
                 values ($1, $2, $3, $4, $5, $6, $6, $7)",
            )
            .bind(id)
            .bind(owner_id)
            .bind(name.into_string())
            .bind(description.map(|d| d.into_string()))
            .bind(settings)
            .bind(created_at)
            .bind(version),
            ProjectEvent::ProjectUpdated {
                name,
                description,
                settings,
                updated_at,
            } => sqlx::query(
                "update read.projects set name = $2, description = $3, settings = $4, \
                   updated_at = $5, version = $6 where id = $1",
            )
            .bind(id)
            .bind(name.into_string())
            .bind(description.map(|d| d.into_string()))
            .bind(settings)
            .bind(updated_at)
            .bind(version),
            ProjectEvent::ProjectDeleted { deleted_at } => sqlx::query(
                "update read.projects set is_deleted = true, deleted_at = $2, updated_at = $2, \
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
        sqlx::query("delete from read.projects")
            .execute(conn)
            .await?;
        Ok(())
    }
}
