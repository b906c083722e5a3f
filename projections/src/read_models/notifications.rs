//! `read.notifications`: what happened to a user, told to that user.
//!
//! A notification is a projection of another aggregate's event (Task, User,
//! AuthSession); read/unread and deletion come from the owner's
//! `NotificationInbox` events. One projection reads all four aggregate types
//! so that an inbox event is always applied after the notifications it names
//! (the stream is in commit order, and the API only names notifications it
//! has read). The version guard is per source aggregate, as for every
//! projection: `read.aggregate_versions` has one row per (projection,
//! aggregate type, aggregate id).
//!
//! A notification's id is a UUID v5 of its source event
//! (`<aggregate_type>:<aggregate_id>:<sequence>`), so a rebuild gives the
//! same rows.

use async_trait::async_trait;
use chronicle_aggregates::auth_session::AuthSessionEvent;
use chronicle_aggregates::notification_inbox::NotificationInboxEvent;
use chronicle_aggregates::user::UserEvent;
use chronicle_nats::EventEnvelope;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::decode_event;
use crate::{Projection, ProjectionError};
use batch::Pending;

/// The projection's name: durable consumer, checkpoint, `replay --projection`.
pub const NOTIFICATIONS_PROJECTION: &str = "notifications";

/// The aggregate types whose events it reads.
pub const NOTIFICATION_SOURCES: &[&str] = &["Task", "User", "AuthSession", "NotificationInbox"];

/// Namespace of notification ids (UUID v5 of the source event's identity).
pub const NOTIFICATION_NAMESPACE: Uuid = Uuid::from_u128(0x6e6f_7469_6669_4361_b710_6e5f_6e6f_7465);

/// The id of the notification about event `sequence` of an aggregate.
pub fn notification_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
    Uuid::new_v5(
        &NOTIFICATION_NAMESPACE,
        format!("{aggregate_type}:{aggregate_id}:{sequence}").as_bytes(),
    )
}

mod batch;

pub struct NotificationsProjection;

/// A notification to insert.
struct Notice {
    owner_id: Uuid,
    kind: &'static str,
    title: &'static str,
    message: String,
}

#[async_trait]
impl Projection for NotificationsProjection {
    fn name(&self) -> &'static str {
        NOTIFICATIONS_PROJECTION
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        NOTIFICATION_SOURCES
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, &[event]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let mut pending = Pending::load(&mut *conn, events).await?;
        for event in events {
            let id = Uuid::parse_str(&event.aggregate_id)
                .map_err(|err| ProjectionError::poison(event.message_id(), err))?;
            match event.aggregate_type.as_str() {
                "Task" => pending.task(event, id, decode_event(event)?),
                "User" => {
                    if let Some(notice) = user_notice(id, decode_event(event)?) {
                        pending.notify(event, notice);
                    }
                }
                "AuthSession" => {
                    if let Some(notice) =
                        auth_session_notice(&mut *conn, id, decode_event(event)?).await?
                    {
                        pending.notify(event, notice);
                    }
                }
                "NotificationInbox" => {
                    // It names notifications that earlier events created.
                    pending.flush(&mut *conn).await?;
                    apply_inbox(&mut *conn, id, decode_event(event)?).await?;
                }
                _ => {}
            }
        }
        pending.flush(conn).await
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("delete from read.notifications")
            .execute(&mut *conn)
            .await?;
        sqlx::query("delete from read.notification_sources")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The owner and label remembered for a source aggregate, if any.
async fn source(
    conn: &mut PgConnection,
    aggregate_type: &str,
    id: Uuid,
) -> Result<Option<(Uuid, Option<String>)>, ProjectionError> {
    Ok(sqlx::query_as(
        "select owner_id, label from read.notification_sources \
         where aggregate_type = $1 and aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?)
}

async fn remember(
    conn: &mut PgConnection,
    aggregate_type: &str,
    id: Uuid,
    owner_id: Uuid,
    label: Option<&str>,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "insert into read.notification_sources (aggregate_type, aggregate_id, owner_id, label) \
         values ($1, $2, $3, $4) \
         on conflict (aggregate_type, aggregate_id) do update set label = excluded.label",
    )
    .bind(aggregate_type)
    .bind(id.to_string())
    .bind(owner_id)
    .bind(label)
    .execute(conn)
    .await?;
    Ok(())
}

async fn forget(
    conn: &mut PgConnection,
    aggregate_type: &str,
    id: Uuid,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "delete from read.notification_sources where aggregate_type = $1 and aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(id.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

fn user_notice(id: Uuid, event: UserEvent) -> Option<Notice> {
    let (kind, title, message) = match event {
        UserEvent::UserRegistered { .. } => ("SIGNUP", "Welcome", "Your account was created."),
        UserEvent::UserLoggedIn { .. } => ("LOGIN", "New login", "You logged in."),
        UserEvent::ProfileUpdated { .. } => (
            "PROFILE_UPDATED",
            "Profile updated",
            "Your profile was updated.",
        ),
        _ => return None,
    };
    Some(Notice {
        owner_id: id,
        kind,
        title,
        message: message.to_string(),
    })
}

async fn auth_session_notice(
    conn: &mut PgConnection,
    id: Uuid,
    event: AuthSessionEvent,
) -> Result<Option<Notice>, ProjectionError> {
    match event {
        AuthSessionEvent::SessionStarted { user_id, .. } => {
            remember(conn, "AuthSession", id, user_id, None).await?;
            Ok(None)
        }
        AuthSessionEvent::SessionRevoked { reason, .. } => {
            let owner = source(conn, "AuthSession", id).await?;
            // A revoked session has nothing more to notify about.
            forget(conn, "AuthSession", id).await?;
            Ok(owner
                .filter(|_| reason == "logout")
                .map(|(owner_id, _)| Notice {
                    owner_id,
                    kind: "LOGOUT",
                    title: "Logged out",
                    message: "A session was logged out.".to_string(),
                }))
        }
        AuthSessionEvent::SessionRefreshed { .. } | AuthSessionEvent::RefreshTokenReused { .. } => {
            Ok(None)
        }
    }
}

/// Applies the owner's decision to the owner's rows only: the inbox id is
/// the owner's id, so an inbox event cannot reach anyone else's notification.
async fn apply_inbox(
    conn: &mut PgConnection,
    owner_id: Uuid,
    event: NotificationInboxEvent,
) -> Result<(), ProjectionError> {
    let query = match event {
        NotificationInboxEvent::NotificationsRead { ids, read_at } => sqlx::query(
            "update read.notifications set is_read = true, read_at = $3 \
             where owner_id = $1 and id = any($2) and not is_read",
        )
        .bind(owner_id)
        .bind(ids)
        .bind(read_at),
        NotificationInboxEvent::NotificationsUnread { ids, .. } => sqlx::query(
            "update read.notifications set is_read = false, read_at = null \
             where owner_id = $1 and id = any($2) and is_read",
        )
        .bind(owner_id)
        .bind(ids),
        NotificationInboxEvent::AllNotificationsRead { up_to, read_at } => sqlx::query(
            "update read.notifications set is_read = true, read_at = $3 \
             where owner_id = $1 and not is_read and created_at <= $2",
        )
        .bind(owner_id)
        .bind(up_to)
        .bind(read_at),
        NotificationInboxEvent::NotificationsDeleted { ids, .. } => {
            sqlx::query("delete from read.notifications where owner_id = $1 and id = any($2)")
                .bind(owner_id)
                .bind(ids)
        }
    };
    query.execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_id_depends_only_on_its_source_event() {
        let a = notification_id("Task", "6b1f6a8e-0000-4000-8000-000000000001", 3);
        assert_eq!(
            a,
            notification_id("Task", "6b1f6a8e-0000-4000-8000-000000000001", 3)
        );
        assert_ne!(
            a,
            notification_id("Task", "6b1f6a8e-0000-4000-8000-000000000001", 4)
        );
        assert_ne!(
            a,
            notification_id("User", "6b1f6a8e-0000-4000-8000-000000000001", 3)
        );
        assert_eq!(a.get_version_num(), 5);
    }
}
