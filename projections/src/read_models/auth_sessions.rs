//! `read.auth_sessions`: every login session (refresh-token family) and
//! whether it is revoked. The API checks it on every authenticated request.

use async_trait::async_trait;
use chronicle_aggregates::auth_session::AuthSessionEvent;
use sqlx::PgConnection;

use crate::projection::{Decoded, ReadModel};
use crate::ProjectionError;

pub struct AuthSessionsProjection;

#[async_trait]
impl ReadModel for AuthSessionsProjection {
    type Event = AuthSessionEvent;
    const NAME: &'static str = "auth_sessions";
    const AGGREGATE_TYPE: &'static str = "AuthSession";

    async fn apply(
        &self,
        conn: &mut PgConnection,
        decoded: Decoded<'_, AuthSessionEvent>,
    ) -> Result<(), ProjectionError> {
        let Decoded {
            id, version, event, ..
        } = decoded;
        let query = match event {
            AuthSessionEvent::SessionStarted {
                user_id,
                started_at,
            } => sqlx::query(
                "insert into read.auth_sessions (id, user_id, generation, started_at, version) \
                 values ($1, $2, 1, $3, $4)",
            )
            .bind(id)
            .bind(user_id)
            .bind(started_at)
            .bind(version),
            AuthSessionEvent::SessionRefreshed {
                generation,
                refreshed_at,
            } => sqlx::query(
                "update read.auth_sessions set generation = $2, last_refreshed_at = $3, version = $4 \
                 where id = $1",
            )
            .bind(id)
            .bind(generation as i32)
            .bind(refreshed_at)
            .bind(version),
            AuthSessionEvent::RefreshTokenReused { .. } => {
                sqlx::query("update read.auth_sessions set version = $2 where id = $1")
                    .bind(id)
                    .bind(version)
            }
            AuthSessionEvent::SessionRevoked { reason, revoked_at } => sqlx::query(
                "update read.auth_sessions set revoked_at = $2, revoke_reason = $3, version = $4 \
                 where id = $1",
            )
            .bind(id)
            .bind(revoked_at)
            .bind(reason)
            .bind(version),
        };
        query.execute(conn).await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("delete from read.auth_sessions")
            .execute(conn)
            .await?;
        Ok(())
    }
}
