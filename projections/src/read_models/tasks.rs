//! `read.tasks`: every task that has not been purged, soft-deleted ones included.
//!
//! A batch is folded in memory: the rows of the batch's tasks that exist
//! already are read in one query, each event changes its row as the SQL of
//! one event would, and the final rows are written with at most three
//! set-based statements (insert, update, delete). A rebuild or a live batch
//! of 2,000 events costs four round trips, not 2,000.

use std::collections::HashMap;

use async_trait::async_trait;
use chronicle_aggregates::task::TaskEvent;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

pub struct TasksProjection;

/// A row of `read.tasks`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    owner_id: Uuid,
    title: String,
    description: Option<String>,
    completed: bool,
    is_deleted: bool,
    deleted_at: Option<DateTime<Utc>>,
    project_id: Option<Uuid>,
    due_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

/// A task as the batch leaves it.
struct Folded {
    /// Whether `read.tasks` had the row before the batch.
    stored: bool,
    /// `None`: no row (purged, or never created).
    row: Option<TaskRow>,
}

impl Folded {
    /// What `event` (at `version`) does to the row; an event for a task
    /// that has no row changes nothing, as an `update` of no row would.
    fn apply(&mut self, id: Uuid, version: i64, event: TaskEvent) {
        if let TaskEvent::TaskCreated {
            owner_id,
            title,
            description,
            project_id,
            due_at,
            created_at,
        } = event
        {
            self.row = Some(TaskRow {
                id,
                owner_id,
                title,
                description,
                completed: false,
                is_deleted: false,
                deleted_at: None,
                project_id,
                due_at,
                created_at,
                updated_at: created_at,
                version,
            });
            return;
        }
        if let TaskEvent::TaskPurged { .. } = event {
            self.row = None;
            return;
        }
        let Some(row) = self.row.as_mut() else {
            return;
        };
        row.version = version;
        match event {
            TaskEvent::TaskUpdated {
                title,
                description,
                project_id,
                due_at,
                updated_at,
            } => {
                row.title = title;
                row.description = description;
                row.project_id = project_id;
                row.due_at = due_at;
                row.updated_at = updated_at;
            }
            TaskEvent::TaskCompleted { completed_at } => {
                row.completed = true;
                row.updated_at = completed_at;
            }
            TaskEvent::TaskReopened { reopened_at } => {
                row.completed = false;
                row.updated_at = reopened_at;
            }
            TaskEvent::TaskDeleted { deleted_at } => {
                row.is_deleted = true;
                row.deleted_at = Some(deleted_at);
                row.updated_at = deleted_at;
            }
            TaskEvent::TaskRestored { restored_at } => {
                row.is_deleted = false;
                row.deleted_at = None;
                row.updated_at = restored_at;
            }
            TaskEvent::TaskCreated { .. } | TaskEvent::TaskPurged { .. } => {}
        }
    }
}

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
        self.apply_batch(conn, vec![decoded]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: Vec<Decoded<'_, TaskEvent>>,
    ) -> Result<(), ProjectionError> {
        // Tasks the batch does not start by creating may have a row already.
        let mut first_seen = HashMap::new();
        for decoded in &events {
            first_seen
                .entry(decoded.id)
                .or_insert(matches!(decoded.event, TaskEvent::TaskCreated { .. }));
        }
        let existing: Vec<Uuid> = first_seen
            .iter()
            .filter(|(_, created)| !**created)
            .map(|(id, _)| *id)
            .collect();
        let mut tasks: HashMap<Uuid, Folded> = HashMap::with_capacity(first_seen.len());
        if !existing.is_empty() {
            let rows: Vec<TaskRow> = sqlx::query_as(
                "select id, owner_id, title, description, completed, is_deleted, deleted_at, \
                   project_id, due_at, created_at, updated_at, version \
                 from read.tasks where id = any($1)",
            )
            .bind(&existing)
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                tasks.insert(
                    row.id,
                    Folded {
                        stored: true,
                        row: Some(row),
                    },
                );
            }
        }
        for decoded in events {
            tasks
                .entry(decoded.id)
                .or_insert(Folded {
                    stored: false,
                    row: None,
                })
                .apply(decoded.id, decoded.version, decoded.event);
        }

        let (mut inserted, mut updated, mut purged) = (Vec::new(), Vec::new(), Vec::new());
        for (id, task) in tasks {
            match (task.stored, task.row) {
                (false, Some(row)) => inserted.push(row),
                (true, Some(row)) => updated.push(row),
                (true, None) => purged.push(id),
                (false, None) => {}
            }
        }
        if !inserted.is_empty() {
            Columns::of(inserted)
                .bind(sqlx::query(&format!(
                    "insert into read.tasks ({COLUMNS}) select * from {UNNEST_ROWS}"
                )))
                .execute(&mut *conn)
                .await?;
        }
        if !updated.is_empty() {
            Columns::of(updated)
                .bind(sqlx::query(&format!(
                    "update read.tasks t set owner_id = u.owner_id, title = u.title, \
                       description = u.description, completed = u.completed, \
                       is_deleted = u.is_deleted, deleted_at = u.deleted_at, \
                       project_id = u.project_id, due_at = u.due_at, created_at = u.created_at, \
                       updated_at = u.updated_at, version = u.version \
                     from {UNNEST_ROWS} as u({COLUMNS}) where t.id = u.id"
                )))
                .execute(&mut *conn)
                .await?;
        }
        if !purged.is_empty() {
            sqlx::query("delete from read.tasks where id = any($1)")
                .bind(&purged)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("delete from read.tasks").execute(conn).await?;
        Ok(())
    }
}

const COLUMNS: &str = "id, owner_id, title, description, completed, is_deleted, deleted_at, \
                       project_id, due_at, created_at, updated_at, version";

/// The rows of [`Columns`], bound as `$1`..`$12`.
const UNNEST_ROWS: &str = "unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bool[], \
     $6::bool[], $7::timestamptz[], $8::uuid[], $9::timestamptz[], $10::timestamptz[], \
     $11::timestamptz[], $12::bigint[])";

/// Rows as one array per column, for [`UNNEST_ROWS`].
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    owner_id: Vec<Uuid>,
    title: Vec<String>,
    description: Vec<Option<String>>,
    completed: Vec<bool>,
    is_deleted: Vec<bool>,
    deleted_at: Vec<Option<DateTime<Utc>>>,
    project_id: Vec<Option<Uuid>>,
    due_at: Vec<Option<DateTime<Utc>>>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    version: Vec<i64>,
}

impl Columns {
    fn of(rows: Vec<TaskRow>) -> Self {
        let mut columns = Self::default();
        for row in rows {
            columns.id.push(row.id);
            columns.owner_id.push(row.owner_id);
            columns.title.push(row.title);
            columns.description.push(row.description);
            columns.completed.push(row.completed);
            columns.is_deleted.push(row.is_deleted);
            columns.deleted_at.push(row.deleted_at);
            columns.project_id.push(row.project_id);
            columns.due_at.push(row.due_at);
            columns.created_at.push(row.created_at);
            columns.updated_at.push(row.updated_at);
            columns.version.push(row.version);
        }
        columns
    }

    fn bind(
        self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.id)
            .bind(self.owner_id)
            .bind(self.title)
            .bind(self.description)
            .bind(self.completed)
            .bind(self.is_deleted)
            .bind(self.deleted_at)
            .bind(self.project_id)
            .bind(self.due_at)
            .bind(self.created_at)
            .bind(self.updated_at)
            .bind(self.version)
    }
}
