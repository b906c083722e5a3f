//! The `User` aggregate: registration and login.
//!
//! The aggregate id of a user is derived from the e-mail address
//! ([`user_id_for_email`]), so "one account per e-mail" is enforced by the
//! event store's optimistic concurrency on that id rather than by a lookup
//! table that could race.
//!
//! Passwords are handled through [`UserServices`]: the aggregate validates
//! the plaintext, asks the service to hash and keep it, and records only the
//! returned credential id.

mod command;
mod error;
mod event;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::UserCommand;
pub use error::{ServiceFailure, UserError};
pub use event::UserEvent;

use crate::validation::{
    normalize_email, validate_email, validate_name, validate_password, validate_username,
};

/// Namespace for the v5 UUIDs of user aggregates. Changing it would orphan
/// every existing account, so it is fixed forever.
pub const USER_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2d3e_8a4b_4c5d_9e0f_a1b2_c3d4_e5f6);

/// Role every newly registered user receives.
pub const DEFAULT_ROLE: &str = "user";

/// The aggregate id of the user with this e-mail address.
///
/// The address is normalised first (trimmed, lowercased), so differently
/// typed spellings of one address map to one account.
pub fn user_id_for_email(email: &str) -> Uuid {
    Uuid::new_v5(&USER_NAMESPACE, normalize_email(email).as_bytes())
}

/// Password storage used by the `User` aggregate.
///
/// Kept outside the event store so that hashes never enter the immutable
/// log: they can be upgraded (re-hashed) or erased independently.
#[async_trait]
pub trait UserServices: Send + Sync {
    /// Hashes and stores `password`, returning an id to reference it by.
    async fn store_password(&self, password: &str) -> Result<Uuid, ServiceFailure>;
    /// Whether `password` matches the credential stored under `credential_id`.
    async fn verify_password(
        &self,
        credential_id: Uuid,
        password: &str,
    ) -> Result<bool, ServiceFailure>;
}

/// Current state of a user account, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Whether `UserRegistered` has happened.
    pub registered: bool,
    /// Normalised e-mail address.
    pub email: String,
    /// Lowercased handle, if any.
    pub username: Option<String>,
    /// Display name, if any.
    pub name: Option<String>,
    /// Granted roles.
    pub roles: Vec<String>,
    /// Reference to the stored password hash.
    pub credential_id: Option<Uuid>,
    /// When the account was registered.
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the most recent successful login.
    pub last_login_at: Option<DateTime<Utc>>,
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = Arc<dyn UserServices>;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            UserCommand::Register {
                email,
                username,
                name,
                password,
                at,
            } => {
                if self.registered {
                    return Err(UserError::AlreadyRegistered);
                }
                // Validate everything before touching the service, so an
                // invalid request never costs a password hash or leaves an
                // orphaned credential behind.
                let checks = (
                    validate_email(&email),
                    username.as_deref().map(validate_username).transpose(),
                    validate_name(name),
                    validate_password(&password),
                );
                let (email, username, name) = match checks {
                    (Ok(email), Ok(username), Ok(name), Ok(())) => (email, username, name),
                    (email, username, name, password) => {
                        let errors = [email.err(), username.err(), name.err(), password.err()]
                            .into_iter()
                            .flatten()
                            .collect();
                        return Err(UserError::Invalid(errors));
                    }
                };

                let credential_id = services.store_password(&password).await?;
                let event = UserEvent::UserRegistered {
                    email,
                    username,
                    name,
                    roles: vec![DEFAULT_ROLE.to_owned()],
                    credential_id,
                    registered_at: at,
                };
                sink.write(event, self).await;
            }
            UserCommand::LogIn { password, at } => {
                // An unknown account gets the same answer as a wrong password
                // so that login cannot be used to discover who is registered.
                let Some(credential_id) = self.credential_id.filter(|_| self.registered) else {
                    return Err(UserError::InvalidCredentials);
                };
                if !services.verify_password(credential_id, &password).await? {
                    return Err(UserError::InvalidCredentials);
                }
                sink.write(UserEvent::UserLoggedIn { logged_in_at: at }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered {
                email,
                username,
                name,
                roles,
                credential_id,
                registered_at,
            } => {
                self.registered = true;
                self.email = email;
                self.username = username;
                self.name = name;
                self.roles = roles;
                self.credential_id = Some(credential_id);
                self.created_at = Some(registered_at);
            }
            UserEvent::UserLoggedIn { logged_in_at } => {
                self.last_login_at = Some(logged_in_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use cqrs_es::test::TestFramework;
    use cqrs_es::DomainEvent;

    use super::*;
    use crate::validation::FieldError;

    const PASSWORD: &str = "correct horse battery staple";

    /// In-memory stand-in for the password service. Records plaintext
    /// passwords (it is a test double) so tests can see what was stored.
    #[derive(Default)]
    struct FakePasswords {
        stored: Mutex<HashMap<Uuid, String>>,
        failing: bool,
    }

    impl FakePasswords {
        fn holding(credential_id: Uuid, password: &str) -> Arc<Self> {
            let fake = Self::default();
            fake.stored
                .lock()
                .unwrap()
                .insert(credential_id, password.to_owned());
            Arc::new(fake)
        }

        fn failing() -> Arc<Self> {
            Arc::new(Self {
                failing: true,
                ..Self::default()
            })
        }

        fn stored_count(&self) -> usize {
            self.stored.lock().unwrap().len()
        }
    }

    #[async_trait]
    impl UserServices for FakePasswords {
        async fn store_password(&self, password: &str) -> Result<Uuid, ServiceFailure> {
            if self.failing {
                return Err(ServiceFailure("hasher unavailable".into()));
            }
            let mut stored = self.stored.lock().unwrap();
            // Sequential ids keep expected events predictable.
            let id = Uuid::from_u128(stored.len() as u128 + 1);
            stored.insert(id, password.to_owned());
            Ok(id)
        }

        async fn verify_password(
            &self,
            credential_id: Uuid,
            password: &str,
        ) -> Result<bool, ServiceFailure> {
            if self.failing {
                return Err(ServiceFailure("hasher unavailable".into()));
            }
            let stored = self.stored.lock().unwrap();
            Ok(stored.get(&credential_id).map(String::as_str) == Some(password))
        }
    }

    fn framework(fake: &Arc<FakePasswords>) -> TestFramework<User> {
        let services: Arc<dyn UserServices> = fake.clone();
        TestFramework::with(services)
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn register(email: &str, password: &str) -> UserCommand {
        UserCommand::Register {
            email: email.into(),
            username: Some("Ada_L".into()),
            name: Some("  Ada Lovelace ".into()),
            password: password.into(),
            at: at(0),
        }
    }

    fn registered(credential_id: Uuid) -> UserEvent {
        UserEvent::UserRegistered {
            email: "ada@example.com".into(),
            username: Some("ada_l".into()),
            name: Some("Ada Lovelace".into()),
            roles: vec!["user".into()],
            credential_id,
            registered_at: at(0),
        }
    }

    fn log_in(password: &str) -> UserCommand {
        UserCommand::LogIn {
            password: password.into(),
            at: at(60),
        }
    }

    fn invalid_fields(error: UserError) -> Vec<&'static str> {
        match error {
            UserError::Invalid(errors) => errors.iter().map(|e| e.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn registering_records_normalised_fields_the_user_role_and_a_credential_id() {
        let fake = Arc::new(FakePasswords::default());
        framework(&fake)
            .given_no_previous_events()
            .when(register("  Ada@Example.COM ", PASSWORD))
            .then_expect_events(vec![registered(Uuid::from_u128(1))]);
        assert_eq!(fake.stored_count(), 1);
    }

    #[test]
    fn registering_without_username_or_name_records_neither() {
        let fake = Arc::new(FakePasswords::default());
        framework(&fake)
            .given_no_previous_events()
            .when(UserCommand::Register {
                email: "ada@example.com".into(),
                username: None,
                name: Some("   ".into()),
                password: PASSWORD.into(),
                at: at(0),
            })
            .then_expect_events(vec![UserEvent::UserRegistered {
                email: "ada@example.com".into(),
                username: None,
                name: None,
                roles: vec!["user".into()],
                credential_id: Uuid::from_u128(1),
                registered_at: at(0),
            }]);
    }

    #[test]
    fn a_second_registration_with_the_same_email_is_refused() {
        let fake = Arc::new(FakePasswords::default());
        framework(&fake)
            .given(vec![registered(Uuid::from_u128(7))])
            .when(register("ada@example.com", PASSWORD))
            .then_expect_error(UserError::AlreadyRegistered);
        assert_eq!(fake.stored_count(), 0, "no password stored for a refusal");
    }

    #[test]
    fn a_registration_lists_every_invalid_field_and_stores_no_password() {
        let fake = Arc::new(FakePasswords::default());
        let error = framework(&fake)
            .given_no_previous_events()
            .when(UserCommand::Register {
                email: "not-an-email".into(),
                username: Some("x".into()),
                name: Some("n".repeat(101)),
                password: "short".into(),
                at: at(0),
            })
            .inspect_result()
            .unwrap_err();
        assert_eq!(
            invalid_fields(error),
            ["email", "username", "name", "password"]
        );
        assert_eq!(fake.stored_count(), 0);
    }

    #[test]
    fn a_registration_with_a_bad_email_is_refused() {
        let fake = Arc::new(FakePasswords::default());
        let error = framework(&fake)
            .given_no_previous_events()
            .when(register("ada@localhost", PASSWORD))
            .inspect_result()
            .unwrap_err();
        assert_eq!(invalid_fields(error), ["email"]);
    }

    #[test]
    fn a_registration_with_a_short_password_is_refused() {
        let fake = Arc::new(FakePasswords::default());
        framework(&fake)
            .given_no_previous_events()
            .when(register("ada@example.com", "abc123"))
            .then_expect_error(UserError::Invalid(vec![FieldError::new(
                "password",
                "password must be at least 8 characters",
            )]));
    }

    #[test]
    fn a_registration_with_a_common_password_is_refused() {
        let fake = Arc::new(FakePasswords::default());
        framework(&fake)
            .given_no_previous_events()
            .when(register("ada@example.com", "password123"))
            .then_expect_error(UserError::Invalid(vec![FieldError::new(
                "password",
                "password is too common",
            )]));
    }

    #[test]
    fn a_registration_fails_with_a_service_error_when_the_password_cannot_be_stored() {
        framework(&FakePasswords::failing())
            .given_no_previous_events()
            .when(register("ada@example.com", PASSWORD))
            .then_expect_error(UserError::Service("hasher unavailable".into()));
    }

    #[test]
    fn logging_in_with_the_right_password_records_the_login() {
        let credential = Uuid::from_u128(7);
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(vec![registered(credential)])
            .when(log_in(PASSWORD))
            .then_expect_events(vec![UserEvent::UserLoggedIn {
                logged_in_at: at(60),
            }]);
    }

    #[test]
    fn logging_in_with_a_wrong_password_is_refused() {
        let credential = Uuid::from_u128(7);
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(vec![registered(credential)])
            .when(log_in("not the password"))
            .then_expect_error(UserError::InvalidCredentials);
    }

    #[test]
    fn logging_in_to_an_unregistered_account_looks_exactly_like_a_wrong_password() {
        let fake = Arc::new(FakePasswords::default());
        framework(&fake)
            .given_no_previous_events()
            .when(log_in(PASSWORD))
            .then_expect_error(UserError::InvalidCredentials);
    }

    #[test]
    fn a_login_fails_with_a_service_error_when_the_password_cannot_be_checked() {
        framework(&FakePasswords::failing())
            .given(vec![registered(Uuid::from_u128(7))])
            .when(log_in(PASSWORD))
            .then_expect_error(UserError::Service("hasher unavailable".into()));
    }

    #[test]
    fn no_user_event_or_state_ever_contains_the_password() {
        let fake = Arc::new(FakePasswords::default());
        let mut events = framework(&fake)
            .given_no_previous_events()
            .when(register("ada@example.com", PASSWORD))
            .inspect_result()
            .unwrap();
        events.extend(
            framework(&fake)
                .given(events.clone())
                .when(log_in(PASSWORD))
                .inspect_result()
                .unwrap(),
        );
        assert_eq!(events.len(), 2);

        let mut user = User::default();
        for event in events {
            let json = serde_json::to_string(&event).unwrap();
            assert!(!json.contains(PASSWORD), "password leaked into {json}");
            user.apply(event);
        }
        // The aggregate itself may be snapshotted, so check it too.
        let snapshot = serde_json::to_string(&user).unwrap();
        assert!(!snapshot.contains(PASSWORD));
    }

    #[test]
    fn a_user_command_never_prints_its_password() {
        let printed = format!("{:?} {:?}", register("a@b.co", PASSWORD), log_in(PASSWORD));
        assert!(!printed.contains(PASSWORD));
        assert!(printed.contains("***"));
    }

    #[test]
    fn the_user_id_depends_only_on_the_normalised_email() {
        assert_eq!(user_id_for_email(" A@B.co "), user_id_for_email("a@b.co"));
        assert_ne!(user_id_for_email("a@b.co"), user_id_for_email("b@b.co"));
        assert_eq!(user_id_for_email("a@b.co").get_version_num(), 5);
    }

    #[test]
    fn applying_user_events_rebuilds_the_account() {
        let mut user = User::default();
        user.apply(registered(Uuid::from_u128(7)));
        user.apply(UserEvent::UserLoggedIn {
            logged_in_at: at(60),
        });
        assert_eq!(
            user,
            User {
                registered: true,
                email: "ada@example.com".into(),
                username: Some("ada_l".into()),
                name: Some("Ada Lovelace".into()),
                roles: vec!["user".into()],
                credential_id: Some(Uuid::from_u128(7)),
                created_at: Some(at(0)),
                last_login_at: Some(at(60)),
            }
        );
    }

    #[test]
    fn user_events_are_stored_externally_tagged_under_their_variant_name() {
        let event = UserEvent::UserLoggedIn {
            logged_in_at: at(60),
        };
        assert_eq!(event.event_type(), "UserLoggedIn");
        assert_eq!(registered(Uuid::nil()).event_type(), "UserRegistered");
        assert_eq!(event.event_version(), "1.0");
        let json = serde_json::to_value(&event).unwrap();
        assert!(json["UserLoggedIn"]["logged_in_at"].is_string());
        let back: UserEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
