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
pub use event::{PhotoInfo, UserEvent};

use crate::validation::{
    normalize_email, validate_email, validate_name, validate_password, validate_username,
};

/// Namespace for the v5 UUIDs of user aggregates. Changing it would orphan
/// every existing account, so it is fixed forever.
pub const USER_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2d3e_8a4b_4c5d_9e0f_a1b2_c3d4_e5f6);

/// Role every newly registered user receives.
pub const DEFAULT_ROLE: &str = "user";

/// Every role there is; anything else is refused.
pub const KNOWN_ROLES: [&str; 5] = ["user", "admin", "auditor", "analyst", "developer"];

/// Failed logins in a row that lock an account.
pub const MAX_FAILED_LOGINS: u32 = 5;

/// How long a lockout lasts unless an administrator lifts it.
pub const LOCKOUT_MINUTES: i64 = 15;

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
    /// Whether the stored hash was made with other parameters than today's,
    /// so a successful login should store it again.
    async fn needs_rehash(&self, _credential_id: Uuid) -> Result<bool, ServiceFailure> {
        Ok(false)
    }
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
    /// Failed logins since the last success or unlock.
    #[serde(default)]
    pub failed_logins: u32,
    /// Logins are refused until then.
    #[serde(default)]
    pub locked_until: Option<DateTime<Utc>>,
    /// Free-form client preferences.
    #[serde(default)]
    pub preferences: serde_json::Value,
    #[serde(default)]
    pub photo: Option<PhotoInfo>,
    #[serde(default)]
    pub api_key_id: Option<Uuid>,
    #[serde(default)]
    pub deactivated_at: Option<DateTime<Utc>>,
}

impl User {
    /// Registered and not deactivated.
    pub fn is_active(&self) -> bool {
        self.registered && self.deactivated_at.is_none()
    }

    /// Failed logins that still count at `at`: an expired lock starts afresh.
    fn failures_counting_at(&self, at: DateTime<Utc>) -> u32 {
        match self.locked_until {
            Some(until) if until <= at => 0,
            _ => self.failed_logins,
        }
    }

    /// Every command but `Register` needs an active account.
    fn require_active(&self) -> Result<(), UserError> {
        if !self.registered {
            Err(UserError::NotRegistered)
        } else if self.deactivated_at.is_some() {
            Err(UserError::Deactivated)
        } else {
            Ok(())
        }
    }

    async fn log_in(
        &mut self,
        password: String,
        at: DateTime<Utc>,
        services: &Arc<dyn UserServices>,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        // An unknown account gets the same answer as a wrong password
        // so that login cannot be used to discover who is registered.
        let Some(credential_id) = self.credential_id.filter(|_| self.registered) else {
            return Err(UserError::InvalidCredentials);
        };
        if let Some(until) = self.locked_until.filter(|until| *until > at) {
            return Err(UserError::Locked { until });
        }
        let valid = services.verify_password(credential_id, &password).await?;
        if self.deactivated_at.is_some() {
            return Err(UserError::InvalidCredentials);
        }
        if !valid {
            // Recorded, not refused: the failure must count. The caller
            // answers 401 when it sees `LoginFailed`.
            self.record_failed_password(at, sink).await;
            return Ok(());
        }
        sink.write(UserEvent::UserLoggedIn { logged_in_at: at }, self)
            .await;
        if services.needs_rehash(credential_id).await? {
            let credential_id = services.store_password(&password).await?;
            sink.write(
                UserEvent::PasswordRehashed {
                    credential_id,
                    rehashed_at: at,
                },
                self,
            )
            .await;
        }
        Ok(())
    }

    /// A wrong password (at login or at a password change): one more
    /// failure in a row, and the lock once there are enough of them.
    async fn record_failed_password(&mut self, at: DateTime<Utc>, sink: &EventSink<Self>) {
        let consecutive_failures = self.failures_counting_at(at) + 1;
        sink.write(
            UserEvent::LoginFailed {
                failed_at: at,
                consecutive_failures,
            },
            self,
        )
        .await;
        if consecutive_failures >= MAX_FAILED_LOGINS {
            let locked_until = at + chrono::Duration::minutes(LOCKOUT_MINUTES);
            sink.write(
                UserEvent::AccountLocked {
                    locked_at: at,
                    locked_until,
                },
                self,
            )
            .await;
        }
    }

    /// A wrong current password counts towards the lockout exactly like a
    /// wrong password at login (`LoginFailed`, then `AccountLocked`), and a
    /// locked account refuses the change even with the right password:
    /// otherwise whoever holds a token could guess the password here
    /// without limit. Like `LogIn`, a wrong password is recorded rather than
    /// refused; the caller answers 401 when it sees `LoginFailed`.
    async fn change_password(
        &mut self,
        current_password: String,
        new_password: String,
        at: DateTime<Utc>,
        services: &Arc<dyn UserServices>,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        // Bad input is refused before any state is looked at: it is a 422
        // whatever the account's state, and never counts as a failed login.
        validate_password(&new_password)
            .map_err(|e| UserError::Invalid(vec![e.renamed("new_password")]))?;
        self.require_active()?;
        let credential_id = self.credential_id.ok_or(UserError::NotRegistered)?;
        if let Some(until) = self.locked_until.filter(|until| *until > at) {
            return Err(UserError::Locked { until });
        }
        if !services
            .verify_password(credential_id, &current_password)
            .await?
        {
            self.record_failed_password(at, sink).await;
            return Ok(());
        }
        let credential_id = services.store_password(&new_password).await?;
        sink.write(
            UserEvent::PasswordChanged {
                credential_id,
                changed_at: at,
            },
            self,
        )
        .await;
        Ok(())
    }

    fn roles_after(&self, requested: Vec<String>) -> Result<Vec<String>, UserError> {
        let mut roles = vec![DEFAULT_ROLE.to_owned()];
        for role in requested {
            let role = role.trim().to_ascii_lowercase();
            if !KNOWN_ROLES.contains(&role.as_str()) {
                return Err(UserError::Invalid(vec![
                    crate::validation::FieldError::new(
                        "roles",
                        format!("unknown role `{role}`; known: {}", KNOWN_ROLES.join(", ")),
                    ),
                ]));
            }
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        roles[1..].sort();
        Ok(roles)
    }

    fn profile_after(
        &self,
        username: Option<Option<String>>,
        name: Option<Option<String>>,
    ) -> Result<(Option<String>, Option<String>), UserError> {
        let username = match username {
            None => Ok(self.username.clone()),
            Some(None) => Ok(None),
            Some(Some(username)) => validate_username(&username).map(Some),
        };
        let name = match name {
            None => Ok(self.name.clone()),
            Some(name) => validate_name(name),
        };
        match (username, name) {
            (Ok(username), Ok(name)) => Ok((username, name)),
            (username, name) => Err(UserError::Invalid(
                [username.err(), name.err()].into_iter().flatten().collect(),
            )),
        }
    }
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
                self.log_in(password, at, services, sink).await?;
            }
            UserCommand::ChangePassword {
                current_password,
                new_password,
                at,
            } => {
                self.change_password(current_password, new_password, at, services, sink)
                    .await?;
            }
            UserCommand::Unlock { at } => {
                self.require_active()?;
                if self.failed_logins > 0 || self.locked_until.is_some() {
                    sink.write(UserEvent::AccountUnlocked { unlocked_at: at }, self)
                        .await;
                }
            }
            UserCommand::SetRoles { roles, at } => {
                self.require_active()?;
                let roles = self.roles_after(roles)?;
                if roles != self.roles {
                    sink.write(
                        UserEvent::RolesChanged {
                            roles,
                            changed_at: at,
                        },
                        self,
                    )
                    .await;
                }
            }
            UserCommand::UpdateProfile {
                username,
                name,
                preferences,
                at,
            } => {
                self.require_active()?;
                let (username, name) = self.profile_after(username, name)?;
                let preferences = match preferences {
                    Some(preferences) => {
                        crate::validation::validate_json_object("preferences", preferences)
                            .map_err(|err| UserError::Invalid(vec![err]))?
                    }
                    None => self.preferences.clone(),
                };
                if username != self.username || name != self.name || preferences != self.preferences
                {
                    sink.write(
                        UserEvent::ProfileUpdated {
                            username,
                            name,
                            preferences,
                            updated_at: at,
                        },
                        self,
                    )
                    .await;
                }
            }
            UserCommand::ResetApiKey { key_id, at } => {
                self.require_active()?;
                sink.write(
                    UserEvent::ApiKeyReset {
                        key_id,
                        reset_at: at,
                    },
                    self,
                )
                .await;
            }
            UserCommand::SetPhoto { photo, at } => {
                self.require_active()?;
                if photo != self.photo {
                    sink.write(
                        UserEvent::ProfilePhotoChanged {
                            photo,
                            changed_at: at,
                        },
                        self,
                    )
                    .await;
                }
            }
            UserCommand::Deactivate { at } => {
                self.require_active()?;
                sink.write(UserEvent::UserDeactivated { deactivated_at: at }, self)
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
                self.failed_logins = 0;
                self.locked_until = None;
            }
            UserEvent::LoginFailed {
                consecutive_failures,
                ..
            } => {
                self.failed_logins = consecutive_failures;
                // A count that starts afresh means any earlier lock is over;
                // keeping it would stop the count from ever locking again.
                if consecutive_failures == 1 {
                    self.locked_until = None;
                }
            }
            UserEvent::AccountLocked { locked_until, .. } => {
                self.locked_until = Some(locked_until);
            }
            UserEvent::AccountUnlocked { .. } => {
                self.failed_logins = 0;
                self.locked_until = None;
            }
            UserEvent::PasswordChanged { credential_id, .. }
            | UserEvent::PasswordRehashed { credential_id, .. } => {
                self.credential_id = Some(credential_id);
            }
            UserEvent::RolesChanged { roles, .. } => {
                self.roles = roles;
            }
            UserEvent::ProfileUpdated {
                username,
                name,
                preferences,
                ..
            } => {
                self.username = username;
                self.name = name;
                self.preferences = preferences;
            }
            UserEvent::ApiKeyReset { key_id, .. } => {
                self.api_key_id = Some(key_id);
            }
            UserEvent::ProfilePhotoChanged { photo, .. } => {
                self.photo = photo;
            }
            UserEvent::UserDeactivated { deactivated_at } => {
                self.deactivated_at = Some(deactivated_at);
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
    fn a_wrong_password_is_recorded_as_a_failed_login() {
        let credential = Uuid::from_u128(7);
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(vec![registered(credential)])
            .when(log_in("not the password"))
            .then_expect_events(vec![UserEvent::LoginFailed {
                failed_at: at(60),
                consecutive_failures: 1,
            }]);
    }

    fn failures(count: u32) -> Vec<UserEvent> {
        (1..=count)
            .map(|n| UserEvent::LoginFailed {
                failed_at: at(i64::from(n)),
                consecutive_failures: n,
            })
            .collect()
    }

    #[test]
    fn the_fifth_failure_in_a_row_locks_the_account_for_fifteen_minutes() {
        let credential = Uuid::from_u128(7);
        let mut history = vec![registered(credential)];
        history.extend(failures(4));
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(history)
            .when(log_in("not the password"))
            .then_expect_events(vec![
                UserEvent::LoginFailed {
                    failed_at: at(60),
                    consecutive_failures: 5,
                },
                UserEvent::AccountLocked {
                    locked_at: at(60),
                    locked_until: at(60 + 15 * 60),
                },
            ]);
    }

    fn locked(credential: Uuid) -> Vec<UserEvent> {
        let mut history = vec![registered(credential)];
        history.extend(failures(5));
        history.push(UserEvent::AccountLocked {
            locked_at: at(5),
            locked_until: at(5 + 15 * 60),
        });
        history
    }

    #[test]
    fn a_locked_account_refuses_even_the_right_password() {
        let credential = Uuid::from_u128(7);
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(locked(credential))
            .when(log_in(PASSWORD))
            .then_expect_error(UserError::Locked {
                until: at(5 + 15 * 60),
            });
    }

    #[test]
    fn after_the_lock_expires_the_count_starts_afresh() {
        let credential = Uuid::from_u128(7);
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(locked(credential))
            .when(UserCommand::LogIn {
                password: "wrong".into(),
                at: at(20 * 60),
            })
            .then_expect_events(vec![UserEvent::LoginFailed {
                failed_at: at(20 * 60),
                consecutive_failures: 1,
            }]);
    }

    #[test]
    fn an_account_whose_lock_expired_is_locked_again_by_five_new_failures() {
        let credential = Uuid::from_u128(7);
        let mut history = locked(credential);
        history.extend((1..=4).map(|n| UserEvent::LoginFailed {
            failed_at: at(20 * 60 + n),
            consecutive_failures: n as u32,
        }));
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(history)
            .when(UserCommand::LogIn {
                password: "wrong".into(),
                at: at(21 * 60),
            })
            .then_expect_events(vec![
                UserEvent::LoginFailed {
                    failed_at: at(21 * 60),
                    consecutive_failures: 5,
                },
                UserEvent::AccountLocked {
                    locked_at: at(21 * 60),
                    locked_until: at(36 * 60),
                },
            ]);
    }

    #[test]
    fn an_unlock_lets_the_right_password_in_again() {
        let credential = Uuid::from_u128(7);
        let mut history = locked(credential);
        history.push(UserEvent::AccountUnlocked {
            unlocked_at: at(30),
        });
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(history)
            .when(log_in(PASSWORD))
            .then_expect_events(vec![UserEvent::UserLoggedIn {
                logged_in_at: at(60),
            }]);
    }

    fn change_password(current_password: &str) -> UserCommand {
        UserCommand::ChangePassword {
            current_password: current_password.into(),
            new_password: "a brand new secret".into(),
            at: at(60),
        }
    }

    #[test]
    fn a_wrong_current_password_is_recorded_as_a_failed_login_and_changes_nothing() {
        let credential = Uuid::from_u128(7);
        let fake = FakePasswords::holding(credential, PASSWORD);
        framework(&fake)
            .given(vec![registered(credential)])
            .when(change_password("wrong"))
            .then_expect_events(vec![UserEvent::LoginFailed {
                failed_at: at(60),
                consecutive_failures: 1,
            }]);
        assert_eq!(fake.stored_count(), 1, "no new password stored");
    }

    #[test]
    fn a_wrong_current_password_after_four_failed_logins_locks_the_account() {
        let credential = Uuid::from_u128(7);
        let mut history = vec![registered(credential)];
        history.extend(failures(4));
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(history)
            .when(change_password("wrong"))
            .then_expect_events(vec![
                UserEvent::LoginFailed {
                    failed_at: at(60),
                    consecutive_failures: 5,
                },
                UserEvent::AccountLocked {
                    locked_at: at(60),
                    locked_until: at(60 + 15 * 60),
                },
            ]);
    }

    #[test]
    fn a_locked_account_refuses_a_password_change_even_with_the_right_password() {
        let credential = Uuid::from_u128(7);
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(locked(credential))
            .when(change_password(PASSWORD))
            .then_expect_error(UserError::Locked {
                until: at(5 + 15 * 60),
            });
    }

    #[test]
    fn a_weak_new_password_is_refused_before_the_lock_and_the_current_password_are_looked_at() {
        let credential = Uuid::from_u128(7);
        let weak = |current: &str| UserCommand::ChangePassword {
            current_password: current.into(),
            new_password: "short".into(),
            at: at(60),
        };
        for (history, current) in [
            (locked(credential), PASSWORD),
            (vec![registered(credential)], "wrong"),
        ] {
            let result = framework(&FakePasswords::holding(credential, PASSWORD))
                .given(history)
                .when(weak(current))
                .inspect_result();
            assert!(
                matches!(result, Err(UserError::Invalid(ref errors)) if errors[0].field == "new_password"),
                "a 422, no lock answer and no failed login: {result:?}"
            );
        }
    }

    #[test]
    fn a_changed_password_gets_a_new_credential_and_a_weak_one_is_refused() {
        let credential = Uuid::from_u128(7);
        let weak = framework(&FakePasswords::holding(credential, PASSWORD))
            .given(vec![registered(credential)])
            .when(UserCommand::ChangePassword {
                current_password: PASSWORD.into(),
                new_password: "password".into(),
                at: at(60),
            })
            .inspect_result();
        assert!(
            matches!(weak, Err(UserError::Invalid(ref errors)) if errors[0].field == "new_password"),
            "{weak:?}"
        );
        let fake = FakePasswords::holding(credential, PASSWORD);
        framework(&fake)
            .given(vec![registered(credential)])
            .when(UserCommand::ChangePassword {
                current_password: PASSWORD.into(),
                new_password: "a brand new secret".into(),
                at: at(60),
            })
            .then_expect_events(vec![UserEvent::PasswordChanged {
                credential_id: Uuid::from_u128(2),
                changed_at: at(60),
            }]);
    }

    #[test]
    fn roles_are_replaced_with_user_always_kept_and_unknown_ones_refused() {
        let credential = Uuid::from_u128(7);
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(vec![registered(credential)])
            .when(UserCommand::SetRoles {
                roles: vec!["auditor".into(), "admin".into()],
                at: at(60),
            })
            .then_expect_events(vec![UserEvent::RolesChanged {
                roles: vec!["user".into(), "admin".into(), "auditor".into()],
                changed_at: at(60),
            }]);
        let refused = framework(&FakePasswords::holding(credential, PASSWORD))
            .given(vec![registered(credential)])
            .when(UserCommand::SetRoles {
                roles: vec!["root".into()],
                at: at(60),
            })
            .inspect_result();
        assert!(
            matches!(refused, Err(UserError::Invalid(ref errors)) if errors[0].field == "roles")
        );
    }

    #[test]
    fn a_deactivated_account_cannot_log_in_or_change_anything() {
        let credential = Uuid::from_u128(7);
        let history = vec![
            registered(credential),
            UserEvent::UserDeactivated {
                deactivated_at: at(30),
            },
        ];
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(history.clone())
            .when(log_in(PASSWORD))
            .then_expect_error(UserError::InvalidCredentials);
        framework(&FakePasswords::holding(credential, PASSWORD))
            .given(history)
            .when(UserCommand::SetRoles {
                roles: vec!["admin".into()],
                at: at(60),
            })
            .then_expect_error(UserError::Deactivated);
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
                ..User::default()
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
