//! Events recorded by the [`NotificationInbox`](super::NotificationInbox) aggregate.
//!
//! Variant and field names are part of the stored format and of the public
//! contract with projections; do not rename them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Something the owner of an inbox did to their notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NotificationInboxEvent {
    /// These notifications were marked read (ids distinct, 1 to 100).
    NotificationsRead {
        ids: Vec<Uuid>,
        read_at: DateTime<Utc>,
    },
    /// These notifications were marked unread (ids distinct, 1 to 100).
    NotificationsUnread {
        ids: Vec<Uuid>,
        unread_at: DateTime<Utc>,
    },
    /// Every notification of the owner created at or before `up_to` (and
    /// already projected when this event is applied) was marked read.
    AllNotificationsRead {
        up_to: DateTime<Utc>,
        read_at: DateTime<Utc>,
    },
    /// These notifications were deleted (ids distinct, 1 to 100).
    NotificationsDeleted {
        ids: Vec<Uuid>,
        deleted_at: DateTime<Utc>,
    },
}

impl DomainEvent for NotificationInboxEvent {
    fn event_type(&self) -> String {
        match self {
            Self::NotificationsRead { .. } => "NotificationsRead",
            Self::NotificationsUnread { .. } => "NotificationsUnread",
            Self::AllNotificationsRead { .. } => "AllNotificationsRead",
            Self::NotificationsDeleted { .. } => "NotificationsDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
