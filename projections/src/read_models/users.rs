//! `read.users`: profile and account state of every registered user.

use async_trait::async_trait;
use chronicle_aggregates::user::UserEvent;
use sqlx::PgConnection;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

pub struct UsersProjection;

#[async_trait]
impl ReadModel for UsersProjection {
    type Event = UserEvent;
    const NAME: &'static str = "users";
    const AGGREGATE_TYPE: &'static str = "User";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, UserEvent>,
    ) -> Result<(), ProjectionError> {
        let Decoded {
            id, version, event, ..
        } = decoded;
        let query = match event {
            UserEvent::UserRegistered {
                email,
                username,
                name,
                roles,
                registered_at,
                ..
            } => sqlx::query(
                "insert into read.users (id, email, username, name, roles, created_at, updated_at, version) \
                 values ($1, $2, $3, $4, $5, $6, $6, $7)",
            )
            .bind(id)
            .bind(email)
            .bind(username)
            .bind(name)
            .bind(roles)
            .bind(registered_at)
            .bind(version),
            UserEvent::UserLoggedIn { logged_in_at } => sqlx::query(
                "update read.users set last_login_at = $2, failed_logins = 0, locked_until = null, \
                   version = $3 where id = $1",
            )
            .bind(id)
            .bind(logged_in_at)
            .bind(version),
            UserEvent::LoginFailed {
                consecutive_failures,
                ..
            } => sqlx::query("update read.users set failed_logins = $2, version = $3 where id = $1")
                .bind(id)
                .bind(consecutive_failures as i32)
                .bind(version),
            UserEvent::AccountLocked { locked_until, .. } => {
                sqlx::query("update read.users set locked_until = $2, version = $3 where id = $1")
                    .bind(id)
                    .bind(locked_until)
                    .bind(version)
            }
            UserEvent::AccountUnlocked { .. } => sqlx::query(
                "update read.users set failed_logins = 0, locked_until = null, version = $2 where id = $1",
            )
            .bind(id)
            .bind(version),
            UserEvent::RolesChanged { roles, changed_at } => sqlx::query(
                "update read.users set roles = $2, updated_at = $3, version = $4 where id = $1",
            )
            .bind(id)
            .bind(roles)
            .bind(changed_at)
            .bind(version),
            UserEvent::ProfileUpdated {
                username,
                name,
                preferences,
                updated_at,
            } => sqlx::query(
                "update read.users set username = $2, name = $3, preferences = $4, updated_at = $5, \
                   version = $6 where id = $1",
            )
            .bind(id)
            .bind(username)
            .bind(name)
            .bind(preferences)
            .bind(updated_at)
            .bind(version),
            UserEvent::ProfilePhotoChanged { photo, changed_at } => sqlx::query(
                "update read.users set photo = $2, updated_at = $3, version = $4 where id = $1",
            )
            .bind(id)
            .bind(photo.map(|p| serde_json::json!(p)))
            .bind(changed_at)
            .bind(version),
            UserEvent::UserDeactivated { deactivated_at } => sqlx::query(
                "update read.users set active = false, deactivated_at = $2, updated_at = $2, \
                   version = $3 where id = $1",
            )
            .bind(id)
            .bind(deactivated_at)
            .bind(version),
            // Nothing a reader sees changes; the version still moves on.
            UserEvent::PasswordChanged { .. }
            | UserEvent::PasswordRehashed { .. }
            | UserEvent::ApiKeyReset { .. } => {
                sqlx::query("update read.users set version = $2 where id = $1")
                    .bind(id)
                    .bind(version)
            }
        };
        query.execute(conn).await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("delete from read.users").execute(conn).await?;
        Ok(())
    }
}
