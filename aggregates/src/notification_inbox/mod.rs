//! The `NotificationInbox` aggregate: one per user (aggregate id = the user's
//! id), recording what the user did to their notifications: read, unread,
//! all read, deleted.
//!
//! Notifications themselves are not commands: they are a projection of other
//! aggregates' events (`read.notifications`). The inbox therefore knows no
//! notification and keeps no state beyond its version; its only rules are
//! the bounds of a command. Which ids the caller may name is checked by the
//! API against the read model (others' ids answer 404), and the projection
//! applies an inbox event to the inbox owner's rows only, so a command can
//! never touch someone else's notification. Keeping the read/deleted state in
//! the read model, not here, keeps the aggregate O(1) to load whatever the
//! number of notifications.

mod command;
mod error;
mod event;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::NotificationInboxCommand;
pub use error::NotificationInboxError;
pub use event::NotificationInboxEvent;

/// The most notifications one command (and one event) may name.
pub const MAX_IDS: usize = 100;

/// A user's inbox: only its version, see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NotificationInbox {
    /// Number of events applied, i.e. the aggregate's sequence number.
    pub version: u64,
}

/// `ids` without repeats, in their first order, 1 to [`MAX_IDS`] of them.
fn distinct(ids: Vec<Uuid>) -> Result<Vec<Uuid>, NotificationInboxError> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let ids: Vec<Uuid> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
    match ids.len() {
        0 => Err(NotificationInboxError::NoIds),
        given if given > MAX_IDS => Err(NotificationInboxError::TooManyIds {
            max: MAX_IDS,
            given,
        }),
        _ => Ok(ids),
    }
}

impl Aggregate for NotificationInbox {
    const TYPE: &'static str = "NotificationInbox";
    type Command = NotificationInboxCommand;
    type Event = NotificationInboxEvent;
    type Error = NotificationInboxError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            NotificationInboxCommand::MarkRead { ids, at } => {
                NotificationInboxEvent::NotificationsRead {
                    ids: distinct(ids)?,
                    read_at: at,
                }
            }
            NotificationInboxCommand::MarkUnread { ids, at } => {
                NotificationInboxEvent::NotificationsUnread {
                    ids: distinct(ids)?,
                    unread_at: at,
                }
            }
            NotificationInboxCommand::MarkAllRead { up_to, at } => {
                NotificationInboxEvent::AllNotificationsRead { up_to, read_at: at }
            }
            NotificationInboxCommand::Delete { ids, at } => {
                NotificationInboxEvent::NotificationsDeleted {
                    ids: distinct(ids)?,
                    deleted_at: at,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, _event: Self::Event) {
        self.version += 1;
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use cqrs_es::test::TestFramework;
    use cqrs_es::DomainEvent;
    use serde_json::json;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn inbox() -> TestFramework<NotificationInbox> {
        TestFramework::with(())
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn read(ids: Vec<Uuid>) -> NotificationInboxEvent {
        NotificationInboxEvent::NotificationsRead {
            ids,
            read_at: at(1),
        }
    }

    #[test]
    fn marking_notifications_read_records_them_once_each_in_order() {
        inbox()
            .given_no_previous_events()
            .when(NotificationInboxCommand::MarkRead {
                ids: vec![id(2), id(1), id(2)],
                at: at(1),
            })
            .then_expect_events(vec![read(vec![id(2), id(1)])]);
    }

    #[test]
    fn marking_unread_and_deleting_record_their_events() {
        inbox()
            .given(vec![read(vec![id(1)])])
            .when(NotificationInboxCommand::MarkUnread {
                ids: vec![id(1)],
                at: at(2),
            })
            .then_expect_events(vec![NotificationInboxEvent::NotificationsUnread {
                ids: vec![id(1)],
                unread_at: at(2),
            }]);
        inbox()
            .given_no_previous_events()
            .when(NotificationInboxCommand::Delete {
                ids: vec![id(3), id(4)],
                at: at(3),
            })
            .then_expect_events(vec![NotificationInboxEvent::NotificationsDeleted {
                ids: vec![id(3), id(4)],
                deleted_at: at(3),
            }]);
    }

    #[test]
    fn marking_all_read_records_the_bound() {
        inbox()
            .given_no_previous_events()
            .when(NotificationInboxCommand::MarkAllRead {
                up_to: at(0),
                at: at(5),
            })
            .then_expect_events(vec![NotificationInboxEvent::AllNotificationsRead {
                up_to: at(0),
                read_at: at(5),
            }]);
    }

    #[test]
    fn a_command_naming_no_notification_is_refused() {
        for command in [
            NotificationInboxCommand::MarkRead {
                ids: vec![],
                at: at(1),
            },
            NotificationInboxCommand::MarkUnread {
                ids: vec![],
                at: at(1),
            },
            NotificationInboxCommand::Delete {
                ids: vec![],
                at: at(1),
            },
        ] {
            inbox()
                .given_no_previous_events()
                .when(command)
                .then_expect_error(NotificationInboxError::NoIds);
        }
    }

    #[test]
    fn one_hundred_ids_are_accepted_and_one_hundred_and_one_refused() {
        let hundred: Vec<Uuid> = (1..=100).map(id).collect();
        inbox()
            .given_no_previous_events()
            .when(NotificationInboxCommand::Delete {
                ids: hundred.clone(),
                at: at(1),
            })
            .inspect_result()
            .unwrap();
        // Repeats do not count against the bound.
        let mut repeated = hundred.clone();
        repeated.push(id(1));
        inbox()
            .given_no_previous_events()
            .when(NotificationInboxCommand::MarkRead {
                ids: repeated,
                at: at(1),
            })
            .then_expect_events(vec![read(hundred)]);
        inbox()
            .given_no_previous_events()
            .when(NotificationInboxCommand::Delete {
                ids: (1..=101).map(id).collect(),
                at: at(1),
            })
            .then_expect_error(NotificationInboxError::TooManyIds {
                max: 100,
                given: 101,
            });
    }

    #[test]
    fn applying_events_counts_the_version() {
        let mut state = NotificationInbox::default();
        state.apply(read(vec![id(1)]));
        state.apply(read(vec![id(2)]));
        assert_eq!(state.version, 2);
    }

    #[test]
    fn inbox_events_are_stored_externally_tagged() {
        let events = [
            read(vec![id(1)]),
            NotificationInboxEvent::NotificationsUnread {
                ids: vec![id(1)],
                unread_at: at(1),
            },
            NotificationInboxEvent::AllNotificationsRead {
                up_to: at(0),
                read_at: at(1),
            },
            NotificationInboxEvent::NotificationsDeleted {
                ids: vec![id(1)],
                deleted_at: at(1),
            },
        ];
        for event in events {
            assert_eq!(event.event_version(), "1.0");
            let json = serde_json::to_value(&event).unwrap();
            let object = json.as_object().unwrap();
            assert_eq!(object.len(), 1);
            assert!(object.contains_key(&event.event_type()), "{json}");
            let back: NotificationInboxEvent = serde_json::from_value(json).unwrap();
            assert_eq!(back, event);
        }
        assert_eq!(
            serde_json::to_value(read(vec![id(1)])).unwrap(),
            json!({"NotificationsRead": {
                "ids": [id(1).to_string()],
                "read_at": "2023-11-14T22:13:21Z",
            }})
        );
    }
}
