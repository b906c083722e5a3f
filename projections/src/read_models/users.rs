//! `read.users`: profile data of every registered user.

use async_trait::async_trait;
use chronicle_aggregates::user::UserEvent;
use chronicle_nats::EventEnvelope;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::decode_event;
use crate::{Projection, ProjectionError};

pub struct UsersProjection;

#[async_trait]
impl Projection for UsersProjection {
    fn name(&self) -> &'static str {
        "users"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["User"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let id = Uuid::parse_str(&event.aggregate_id)
            .map_err(|err| ProjectionError::poison(event.message_id(), err))?;
        match decode_event::<UserEvent>(event)? {
            UserEvent::UserRegistered {
                email,
                username,
                name,
                roles,
                registered_at,
                ..
            } => {
                sqlx::query(
                    "insert into read.users (id, email, username, name, roles, created_at, version) \
                     values ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(email)
                .bind(username)
                .bind(name)
                .bind(roles)
                .bind(registered_at)
                .bind(event.sequence)
                .execute(conn)
                .await?;
            }
            UserEvent::UserLoggedIn { logged_in_at } => {
                sqlx::query("update read.users set last_login_at = $2, version = $3 where id = $1")
                    .bind(id)
                    .bind(logged_in_at)
                    .bind(event.sequence)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("delete from read.users").execute(conn).await?;
        Ok(())
    }
}
