//! Commands accepted by the [`NotificationInbox`](super::NotificationInbox) aggregate.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A user's decision about their notifications. The inbox is addressed by
/// the user's id, so every command is about its caller's own notifications;
/// which ids exist is the read model's business (the API checks it).
#[derive(Debug, Clone, PartialEq)]
pub enum NotificationInboxCommand {
    /// Mark these notifications read (1 to [`MAX_IDS`](super::MAX_IDS)).
    MarkRead { ids: Vec<Uuid>, at: DateTime<Utc> },
    /// Mark these notifications unread again.
    MarkUnread { ids: Vec<Uuid>, at: DateTime<Utc> },
    /// Mark read every notification created at or before `up_to`.
    MarkAllRead {
        up_to: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Delete these notifications.
    Delete { ids: Vec<Uuid>, at: DateTime<Utc> },
}
