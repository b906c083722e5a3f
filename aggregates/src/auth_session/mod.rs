//! The `AuthSession` aggregate: one login (or device) and its refresh-token
//! family.
//!
//! Refresh tokens rotate: each use spends the token and issues the next
//! generation. Presenting a spent generation again means the token leaked, so
//! the whole family is revoked. The tokens themselves (and their hashes) live
//! outside the event store; events only count generations.

mod command;
mod error;
mod event;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::AuthSessionCommand;
pub use error::AuthSessionError;
pub use event::AuthSessionEvent;

/// Why a family was revoked by the system itself.
pub const REVOKED_FOR_REUSE: &str = "refresh token reuse";

/// A session's state, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthSession {
    pub user_id: Option<Uuid>,
    /// The generation of the only refresh token that is still valid.
    pub generation: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl AuthSession {
    pub fn is_active(&self) -> bool {
        self.user_id.is_some() && self.revoked_at.is_none()
    }
}

impl Aggregate for AuthSession {
    const TYPE: &'static str = "AuthSession";
    type Command = AuthSessionCommand;
    type Event = AuthSessionEvent;
    type Error = AuthSessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            AuthSessionCommand::Start { user_id, at } => {
                if self.user_id.is_some() {
                    return Err(AuthSessionError::AlreadyStarted);
                }
                sink.write(
                    AuthSessionEvent::SessionStarted {
                        user_id,
                        started_at: at,
                    },
                    self,
                )
                .await;
            }
            AuthSessionCommand::Refresh { generation, at } => {
                if !self.is_active() {
                    return Err(AuthSessionError::Revoked);
                }
                // Generations start at 1: a 0 was never issued, so it is
                // unknown, not a reuse (RefreshTokenReused.v1 has minimum 1).
                if generation == 0 || generation > self.generation {
                    return Err(AuthSessionError::UnknownGeneration);
                }
                if generation < self.generation {
                    // A spent token came back: someone else has a copy.
                    sink.write(
                        AuthSessionEvent::RefreshTokenReused {
                            generation,
                            detected_at: at,
                        },
                        self,
                    )
                    .await;
                    sink.write(
                        AuthSessionEvent::SessionRevoked {
                            reason: REVOKED_FOR_REUSE.into(),
                            revoked_at: at,
                        },
                        self,
                    )
                    .await;
                    return Ok(());
                }
                sink.write(
                    AuthSessionEvent::SessionRefreshed {
                        generation: generation + 1,
                        refreshed_at: at,
                    },
                    self,
                )
                .await;
            }
            AuthSessionCommand::Revoke { reason, at } => {
                if self.user_id.is_none() {
                    return Err(AuthSessionError::NotFound);
                }
                if self.revoked_at.is_none() {
                    sink.write(
                        AuthSessionEvent::SessionRevoked {
                            reason,
                            revoked_at: at,
                        },
                        self,
                    )
                    .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AuthSessionEvent::SessionStarted {
                user_id,
                started_at,
            } => {
                self.user_id = Some(user_id);
                self.generation = 1;
                self.started_at = Some(started_at);
            }
            AuthSessionEvent::SessionRefreshed { generation, .. } => {
                self.generation = generation;
            }
            AuthSessionEvent::RefreshTokenReused { .. } => {}
            AuthSessionEvent::SessionRevoked { revoked_at, .. } => {
                self.revoked_at = Some(revoked_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn started(user_id: Uuid) -> AuthSessionEvent {
        AuthSessionEvent::SessionStarted {
            user_id,
            started_at: at(0),
        }
    }

    #[test]
    fn a_generation_zero_was_never_issued_and_is_unknown_not_a_reuse() {
        TestFramework::<AuthSession>::with(())
            .given(vec![
                started(Uuid::from_u128(7)),
                AuthSessionEvent::SessionRefreshed {
                    generation: 2,
                    refreshed_at: at(1),
                },
            ])
            .when(AuthSessionCommand::Refresh {
                generation: 0,
                at: at(2),
            })
            .then_expect_error(AuthSessionError::UnknownGeneration);
    }

    #[test]
    fn a_session_starts_at_generation_one() {
        let user_id = Uuid::from_u128(7);
        TestFramework::<AuthSession>::with(())
            .given_no_previous_events()
            .when(AuthSessionCommand::Start { user_id, at: at(0) })
            .then_expect_events(vec![started(user_id)]);
    }

    #[test]
    fn refreshing_the_current_generation_rotates_to_the_next() {
        TestFramework::<AuthSession>::with(())
            .given(vec![started(Uuid::from_u128(7))])
            .when(AuthSessionCommand::Refresh {
                generation: 1,
                at: at(5),
            })
            .then_expect_events(vec![AuthSessionEvent::SessionRefreshed {
                generation: 2,
                refreshed_at: at(5),
            }]);
    }

    #[test]
    fn a_spent_generation_presented_again_revokes_the_family() {
        TestFramework::<AuthSession>::with(())
            .given(vec![
                started(Uuid::from_u128(7)),
                AuthSessionEvent::SessionRefreshed {
                    generation: 2,
                    refreshed_at: at(5),
                },
            ])
            .when(AuthSessionCommand::Refresh {
                generation: 1,
                at: at(9),
            })
            .then_expect_events(vec![
                AuthSessionEvent::RefreshTokenReused {
                    generation: 1,
                    detected_at: at(9),
                },
                AuthSessionEvent::SessionRevoked {
                    reason: REVOKED_FOR_REUSE.into(),
                    revoked_at: at(9),
                },
            ]);
    }

    #[test]
    fn a_revoked_family_refuses_every_refresh() {
        TestFramework::<AuthSession>::with(())
            .given(vec![
                started(Uuid::from_u128(7)),
                AuthSessionEvent::SessionRevoked {
                    reason: "logout".into(),
                    revoked_at: at(3),
                },
            ])
            .when(AuthSessionCommand::Refresh {
                generation: 1,
                at: at(9),
            })
            .then_expect_error(AuthSessionError::Revoked);
    }

    #[test]
    fn revoking_twice_records_it_once() {
        TestFramework::<AuthSession>::with(())
            .given(vec![
                started(Uuid::from_u128(7)),
                AuthSessionEvent::SessionRevoked {
                    reason: "logout".into(),
                    revoked_at: at(3),
                },
            ])
            .when(AuthSessionCommand::Revoke {
                reason: "logout".into(),
                at: at(4),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_session_cannot_be_started_twice() {
        TestFramework::<AuthSession>::with(())
            .given(vec![started(Uuid::from_u128(7))])
            .when(AuthSessionCommand::Start {
                user_id: Uuid::from_u128(8),
                at: at(1),
            })
            .then_expect_error(AuthSessionError::AlreadyStarted);
    }
}
