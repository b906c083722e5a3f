//! Account operations run by operators rather than by API callers, such as
//! granting the first admin from the command line.

use std::collections::HashMap;

use anyhow::Context;
use chronicle_aggregates::user::{user_id_for_email, User, UserCommand, UserServices};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::PasswordService;
use crate::commands::{now, CommandExecutor};
use crate::config::Argon2Settings;

/// The actor recorded for changes made from the command line.
pub const OPERATOR_ACTOR: &str = "operator-cli";

/// Adds `role` to the user with `email`; takes effect on their next request
/// once the users projection has applied it.
pub async fn grant_role(
    pool: &PgPool,
    argon2: Argon2Settings,
    email: &str,
    role: &str,
) -> anyhow::Result<Vec<String>> {
    let passwords = PasswordService::new(pool.clone(), argon2)?;
    let users =
        CommandExecutor::<User>::new(pool.clone(), passwords as std::sync::Arc<dyn UserServices>);
    let user_id: Uuid = user_id_for_email(email);
    let key = user_id.to_string();
    let user = users
        .load(&key)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    if !user.registered {
        anyhow::bail!("no user with email {email}");
    }
    let mut roles = user.roles.clone();
    roles.push(role.to_string());
    let metadata = HashMap::from([
        ("actor_id".to_string(), OPERATOR_ACTOR.to_string()),
        ("actor_roles".to_string(), String::new()),
        ("request_id".to_string(), Uuid::new_v4().to_string()),
        ("correlation_id".to_string(), Uuid::new_v4().to_string()),
        ("causation_id".to_string(), Uuid::new_v4().to_string()),
        ("client_ip".to_string(), String::new()),
        (
            "user_agent".to_string(),
            format!("chronicle-cli/{}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "occurred_at".to_string(),
            now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    ]);
    let executed = users
        .execute(&key, UserCommand::SetRoles { roles, at: now() }, metadata)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))
        .context("granting the role")?;
    Ok(executed.aggregate.roles)
}
