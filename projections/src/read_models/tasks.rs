//! `read.tasks`: every task that has not been purged, soft-deleted ones included.

use async_trait::async_trait;
use chronicle_aggregates::task::TaskEvent;
use sqlx::PgConnection;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

pub struct TasksProjection;

#[async_trait]
impl ReadModel for TasksProjection {
    type Event = TaskEvent;
    const NAME: &'static str = "tasks";
    const AGGREGATE_TYPE: &'static str = "Task";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, TaskEvent>,
    ) -> Result<(), ProjectionError> {
        let Decoded {
            id, version, event, ..
        } = decoded;
        let query = match event {
            TaskEvent::TaskCreated {
                owner_id,
                title,
                description,
                project_id,
                due_at,
                created_at,
            } => sqlx::query(
                "insert into read.tasks (id, owner_id, title, description, completed, is_deleted, \
                   project_id, due_at, created_at, updated_at, version) \
                 values ($1, $2, $3, $4, false, false, $5, $6, $7, $7, $8)",
            )
            .bind(id)
            .bind(owner_id)
            .bind(title)
            .bind(description)
            .bind(project_id)
            .bind(due_at)
            .bind(created_at)
            .bind(version),
            TaskEvent::TaskUpdated {
                title,
                description,
                project_id,
                due_at,
                updated_at,
            } => sqlx::query(
                "update read.tasks set title = $2, description = $3, project_id = $4, due_at = $5, \
                   updated_at = $6, version = $7 where id = $1",
            )
            .bind(id)
            .bind(title)
            .bind(description)
            .bind(project_id)
            .bind(due_at)
            .bind(updated_at)
            .bind(version),
            TaskEvent::TaskCompleted { completed_at } => sqlx::query(
                "update read.tasks set completed = true, updated_at = $2, version = $3 where id = $1",
            )
            .bind(id)
            .bind(completed_at)
            .bind(version),
            TaskEvent::TaskReopened { reopened_at } => sqlx::query(
                "update read.tasks set completed = false, updated_at = $2, version = $3 where id = $1",
            )
            .bind(id)
            .bind(reopened_at)
            .bind(version),
            TaskEvent::TaskDeleted { deleted_at } => sqlx::query(
                "update read.tasks set is_deleted = true, deleted_at = $2, updated_at = $2, version = $3 \
                 where id = $1",
            )
            .bind(id)
            .bind(deleted_at)
            .bind(version),
            TaskEvent::TaskRestored { restored_at } => sqlx::query(
                "update read.tasks set is_deleted = false, deleted_at = null, updated_at = $2, \
                   version = $3 where id = $1",
            )
            .bind(id)
            .bind(restored_at)
            .bind(version),
            TaskEvent::TaskPurged { .. } => {
                sqlx::query("delete from read.tasks where id = $1").bind(id)
            }
        };
        query.execute(conn).await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("delete from read.tasks").execute(conn).await?;
        Ok(())
    }
}
