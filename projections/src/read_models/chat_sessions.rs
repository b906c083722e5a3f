//! `read.chat_sessions` with their `read.chat_messages` and
//! `read.tool_executions`: one projection of the `ChatSession` aggregate, so
//! a session's counters and its messages always move together.

use async_trait::async_trait;
use chronicle_aggregates::chat_session::{ChatSessionEvent, Usage};
use sqlx::PgConnection;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

pub struct ChatSessionsProjection;

#[async_trait]
impl ReadModel for ChatSessionsProjection {
    type Event = ChatSessionEvent;
    const NAME: &'static str = "chat_sessions";
    const AGGREGATE_TYPE: &'static str = "ChatSession";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, ChatSessionEvent>,
    ) -> Result<(), ProjectionError> {
        let Decoded {
            id, version, event, ..
        } = decoded;
        match event {
            ChatSessionEvent::ChatSessionStarted {
                owner_id,
                project_id,
                title,
                model,
                system_prompt,
                created_at,
            } => {
                sqlx::query(
                    "insert into read.chat_sessions (id, owner_id, project_id, title, model, \
                       system_prompt, last_activity_at, created_at, updated_at, version) \
                     values ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8)",
                )
                .bind(id)
                .bind(owner_id)
                .bind(project_id)
                .bind(title.map(|t| t.into_string()))
                .bind(model)
                .bind(system_prompt.map(|p| p.into_string()))
                .bind(created_at)
                .bind(version)
                .execute(conn)
                .await?;
            }
            ChatSessionEvent::ChatSessionUpdated {
                title,
                project_id,
                model,
                system_prompt,
                updated_at,
            } => {
                sqlx::query(
                    "update read.chat_sessions set title = $2, project_id = $3, model = $4, \
                       system_prompt = $5, updated_at = $6, version = $7 where id = $1",
                )
                .bind(id)
                .bind(title.map(|t| t.into_string()))
                .bind(project_id)
                .bind(model)
                .bind(system_prompt.map(|p| p.into_string()))
                .bind(updated_at)
                .bind(version)
                .execute(conn)
                .await?;
            }
            ChatSessionEvent::ChatSessionDeleted { deleted_at } => {
                sqlx::query(
                    "update read.chat_sessions set is_deleted = true, deleted_at = $2, \
                       updated_at = $2, version = $3 where id = $1",
                )
                .bind(id)
                .bind(deleted_at)
                .bind(version)
                .execute(conn)
                .await?;
            }
            ChatSessionEvent::MessageAdded {
                message_id,
                role,
                content,
                model,
                usage,
                created_at,
            } => {
                let usage = usage.map(|u| UsageColumns::from(&u));
                // The message and the session's counters in one statement.
                sqlx::query(
                    "with message as ( \
                       insert into read.chat_messages (id, session_id, owner_id, sequence, role, \
                         content, model, prompt_tokens, completion_tokens, total_tokens, created_at) \
                       select $2, s.id, s.owner_id, $3, $4, $5, $6, $7, $8, $9, $10 \
                       from read.chat_sessions s where s.id = $1) \
                     update read.chat_sessions set message_count = message_count + 1, \
                       prompt_tokens = prompt_tokens + coalesce($7, 0), \
                       completion_tokens = completion_tokens + coalesce($8, 0), \
                       total_tokens = total_tokens + coalesce($9, 0), \
                       last_activity_at = $10, version = $3 where id = $1",
                )
                .bind(id)
                .bind(message_id)
                .bind(version)
                .bind(role.as_str())
                .bind(content.into_string())
                .bind(model)
                .bind(usage.map(|u| u.prompt))
                .bind(usage.map(|u| u.completion))
                .bind(usage.map(|u| u.total))
                .bind(created_at)
                .execute(conn)
                .await?;
            }
            ChatSessionEvent::ExchangeFailed { failed_at, .. } => {
                sqlx::query(
                    "update read.chat_sessions set last_activity_at = $2, version = $3 where id = $1",
                )
                .bind(id)
                .bind(failed_at)
                .bind(version)
                .execute(conn)
                .await?;
            }
            // A later record of the same execution supersedes the earlier
            // one (`docs/events.md`): a running tool that finished.
            ChatSessionEvent::ToolExecutionRecorded {
                execution_id,
                tool_name,
                tool_type,
                input,
                output,
                status,
                duration_ms,
                recorded_at,
            } => {
                sqlx::query(
                    "with execution as ( \
                       insert into read.tool_executions (id, session_id, owner_id, sequence, \
                         tool_name, tool_type, input, output, status, duration_ms, created_at) \
                       select $2, s.id, s.owner_id, $3, $4, $5, $6, $7, $8, $9, $10 \
                       from read.chat_sessions s where s.id = $1 \
                       on conflict (id) do update set sequence = excluded.sequence, \
                         tool_name = excluded.tool_name, tool_type = excluded.tool_type, \
                         input = excluded.input, output = excluded.output, status = excluded.status, \
                         duration_ms = excluded.duration_ms, created_at = excluded.created_at) \
                     update read.chat_sessions set last_activity_at = $10, version = $3 where id = $1",
                )
                .bind(id)
                .bind(execution_id)
                .bind(version)
                .bind(tool_name)
                .bind(tool_type.as_str())
                .bind(input.into_inner())
                .bind(output.map(|o| o.into_inner()))
                .bind(status.as_str())
                .bind(duration_ms.map(|ms| ms as i64))
                .bind(recorded_at)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        for table in ["tool_executions", "chat_messages", "chat_sessions"] {
            sqlx::query(&format!("delete from read.{table}"))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// Token counts as the table stores them.
#[derive(Clone, Copy)]
struct UsageColumns {
    prompt: i64,
    completion: i64,
    total: i64,
}

impl From<&Usage> for UsageColumns {
    fn from(usage: &Usage) -> Self {
        Self {
            prompt: i64::from(usage.prompt_tokens),
            completion: i64::from(usage.completion_tokens),
            total: i64::from(usage.total_tokens),
        }
    }
}
