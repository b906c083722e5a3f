//! A batch of the notifications projection, folded in memory: the sources of
//! the batch's tasks are read in one query, each event updates them and
//! queues its notification, and [`Pending::flush`] writes what changed with
//! a few set-based statements. Inbox events flush first, since they name
//! notifications that earlier events of the batch create.

use std::collections::{HashMap, HashSet};

use chronicle_aggregates::task::TaskEvent;
use chronicle_nats::EventEnvelope;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{notification_id, Notice};
use crate::ProjectionError;

/// A task's owner and its title as the notifications name it.
type TaskSource = (Uuid, Option<String>);

/// What the batch has changed and not written yet.
#[derive(Default)]
pub(super) struct Pending {
    /// The batch's tasks as far as known: `None` for one with no source row.
    tasks: HashMap<Uuid, Option<TaskSource>>,
    /// Tasks whose source row changed since the last flush.
    changed: HashSet<Uuid>,
    /// Purged tasks: their stored notifications go too.
    purged: Vec<Uuid>,
    notices: Vec<NoticeRow>,
}

/// A row of `read.notifications` to insert.
struct NoticeRow {
    id: Uuid,
    notice: Notice,
    source_type: String,
    source_id: String,
    source_sequence: i64,
    created_at: DateTime<Utc>,
}

impl Pending {
    /// Reads the source rows of the tasks among `events` that the batch
    /// does not start by creating.
    pub(super) async fn load(
        conn: &mut PgConnection,
        events: &[&EventEnvelope],
    ) -> Result<Self, ProjectionError> {
        let mut first_seen: HashMap<Uuid, bool> = HashMap::new();
        for event in events.iter().filter(|e| e.aggregate_type == "Task") {
            if let Ok(id) = Uuid::parse_str(&event.aggregate_id) {
                first_seen
                    .entry(id)
                    .or_insert(event.event_type == "TaskCreated");
            }
        }
        let existing: Vec<String> = first_seen
            .iter()
            .filter(|(_, created)| !**created)
            .map(|(id, _)| id.to_string())
            .collect();
        let mut pending = Self::default();
        if existing.is_empty() {
            return Ok(pending);
        }
        let rows: Vec<(String, Uuid, Option<String>)> = sqlx::query_as(
            "select aggregate_id, owner_id, label from read.notification_sources \
             where aggregate_type = 'Task' and aggregate_id = any($1)",
        )
        .bind(&existing)
        .fetch_all(conn)
        .await?;
        for (id, owner_id, label) in rows {
            if let Ok(id) = Uuid::parse_str(&id) {
                pending.tasks.insert(id, Some((owner_id, label)));
            }
        }
        Ok(pending)
    }

    /// What a task's event does: its source row, then its notification.
    pub(super) fn task(&mut self, envelope: &EventEnvelope, id: Uuid, event: TaskEvent) {
        let (kind, title, verb) = match event {
            TaskEvent::TaskCreated {
                owner_id, title, ..
            } => {
                self.tasks.insert(id, Some((owner_id, Some(title))));
                self.changed.insert(id);
                ("TASK_CREATED", "Task created", "was created")
            }
            TaskEvent::TaskUpdated { title, .. } => {
                if let Some(Some(source)) = self.tasks.get_mut(&id) {
                    source.1 = Some(title);
                    self.changed.insert(id);
                }
                ("TASK_UPDATED", "Task updated", "was updated")
            }
            TaskEvent::TaskCompleted { .. } => {
                ("TASK_COMPLETED", "Task completed", "was completed")
            }
            TaskEvent::TaskReopened { .. } => ("TASK_PENDING", "Task reopened", "is pending again"),
            TaskEvent::TaskDeleted { .. } => ("TASK_DELETED", "Task deleted", "was deleted"),
            TaskEvent::TaskRestored { .. } => return,
            TaskEvent::TaskPurged { .. } => {
                // A purged task leaves every read model, its notifications included.
                let source_id = id.to_string();
                self.notices
                    .retain(|row| !(row.source_type == "Task" && row.source_id == source_id));
                self.purged.push(id);
                self.tasks.insert(id, None);
                self.changed.insert(id);
                return;
            }
        };
        // Absent only for a task whose creation this projection never saw.
        let Some(Some((owner_id, label))) = self.tasks.get(&id) else {
            return;
        };
        let notice = Notice {
            owner_id: *owner_id,
            kind,
            title,
            message: format!("Task \"{}\" {verb}.", label.as_deref().unwrap_or_default()),
        };
        self.notify(envelope, notice);
    }

    /// Queues the notification about `envelope`'s event.
    pub(super) fn notify(&mut self, envelope: &EventEnvelope, notice: Notice) {
        self.notices.push(NoticeRow {
            id: notification_id(
                &envelope.aggregate_type,
                &envelope.aggregate_id,
                envelope.sequence,
            ),
            notice,
            source_type: envelope.aggregate_type.clone(),
            source_id: envelope.aggregate_id.clone(),
            source_sequence: envelope.sequence,
            created_at: envelope.recorded_at,
        });
    }

    /// Writes what changed since the last flush.
    pub(super) async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        if !self.purged.is_empty() {
            let purged: Vec<String> = self.purged.drain(..).map(|id| id.to_string()).collect();
            sqlx::query(
                "delete from read.notifications \
                 where source_aggregate_type = 'Task' and source_aggregate_id = any($1)",
            )
            .bind(purged)
            .execute(&mut *conn)
            .await?;
        }
        let (mut kept, mut owners, mut labels, mut gone) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for id in self.changed.drain() {
            match self.tasks.get(&id) {
                Some(Some((owner_id, label))) => {
                    kept.push(id.to_string());
                    owners.push(*owner_id);
                    labels.push(label.clone());
                }
                _ => gone.push(id.to_string()),
            }
        }
        if !kept.is_empty() {
            sqlx::query(
                "insert into read.notification_sources (aggregate_type, aggregate_id, owner_id, label) \
                 select 'Task', * from unnest($1::text[], $2::uuid[], $3::text[]) \
                 on conflict (aggregate_type, aggregate_id) do update set label = excluded.label",
            )
            .bind(kept)
            .bind(owners)
            .bind(labels)
            .execute(&mut *conn)
            .await?;
        }
        if !gone.is_empty() {
            sqlx::query(
                "delete from read.notification_sources \
                 where aggregate_type = 'Task' and aggregate_id = any($1)",
            )
            .bind(gone)
            .execute(&mut *conn)
            .await?;
        }
        if self.notices.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.notices);
        let mut columns = NoticeColumns::default();
        for row in rows {
            columns.push(row);
        }
        sqlx::query(
            "insert into read.notifications (id, owner_id, type, title, message, \
               source_aggregate_type, source_aggregate_id, source_sequence, created_at) \
             select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
               $6::text[], $7::text[], $8::bigint[], $9::timestamptz[]) \
             on conflict (id) do nothing",
        )
        .bind(columns.id)
        .bind(columns.owner_id)
        .bind(columns.kind)
        .bind(columns.title)
        .bind(columns.message)
        .bind(columns.source_type)
        .bind(columns.source_id)
        .bind(columns.source_sequence)
        .bind(columns.created_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Notifications as one array per column.
#[derive(Default)]
struct NoticeColumns {
    id: Vec<Uuid>,
    owner_id: Vec<Uuid>,
    kind: Vec<&'static str>,
    title: Vec<&'static str>,
    message: Vec<String>,
    source_type: Vec<String>,
    source_id: Vec<String>,
    source_sequence: Vec<i64>,
    created_at: Vec<DateTime<Utc>>,
}

impl NoticeColumns {
    fn push(&mut self, row: NoticeRow) {
        self.id.push(row.id);
        self.owner_id.push(row.notice.owner_id);
        self.kind.push(row.notice.kind);
        self.title.push(row.notice.title);
        self.message.push(row.notice.message);
        self.source_type.push(row.source_type);
        self.source_id.push(row.source_id);
        self.source_sequence.push(row.source_sequence);
        self.created_at.push(row.created_at);
    }
}
