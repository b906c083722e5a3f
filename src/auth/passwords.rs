//! Password storage: argon2id hashes in the `credentials` table, referenced by
//! id from `UserRegistered`, so no hash ever travels in an event. Hashing runs
//! on the blocking pool: it is deliberately slow.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use chronicle_aggregates::user::{ServiceFailure, UserServices};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Argon2Settings;

/// Hashes, stores and verifies passwords.
pub struct PasswordService {
    pool: PgPool,
    params: Params,
    /// A hash of a random password, verified when the user does not exist so
    /// that an unknown account costs as much time as a wrong password.
    dummy_hash: String,
}

impl PasswordService {
    pub fn new(pool: PgPool, settings: Argon2Settings) -> anyhow::Result<Arc<Self>> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
        let dummy_hash = hash_with(&params, &Uuid::new_v4().to_string())?;
        Ok(Arc::new(Self {
            pool,
            params,
            dummy_hash,
        }))
    }

    /// Spends the time of one verification, for logins of unknown users.
    pub async fn verify_dummy(&self, password: &str) {
        let params = self.params.clone();
        let hash = self.dummy_hash.clone();
        let password = password.to_string();
        let _ = tokio::task::spawn_blocking(move || verify_with(&params, &hash, &password)).await;
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_with(params: &Params, password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("hashing a password: {err}"))
}

fn verify_with(params: &Params, hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2(params)
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

fn failure(err: impl std::fmt::Display) -> ServiceFailure {
    ServiceFailure(err.to_string())
}

#[async_trait]
impl UserServices for PasswordService {
    async fn store_password(&self, password: &str) -> Result<Uuid, ServiceFailure> {
        let params = self.params.clone();
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_with(&params, &password))
            .await
            .map_err(failure)?
            .map_err(failure)?;
        let id = Uuid::new_v4();
        sqlx::query("insert into credentials (id, password_hash) values ($1, $2)")
            .bind(id)
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(failure)?;
        Ok(id)
    }

    async fn verify_password(
        &self,
        credential_id: Uuid,
        password: &str,
    ) -> Result<bool, ServiceFailure> {
        let hash: Option<String> =
            sqlx::query_scalar("select password_hash from credentials where id = $1")
                .bind(credential_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(failure)?;
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let params = self.params.clone();
        let password = password.to_string();
        tokio::task::spawn_blocking(move || verify_with(&params, &hash, &password))
            .await
            .map_err(failure)
    }

    async fn needs_rehash(&self, credential_id: Uuid) -> Result<bool, ServiceFailure> {
        let hash: Option<String> =
            sqlx::query_scalar("select password_hash from credentials where id = $1")
                .bind(credential_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(failure)?;
        let Some(hash) = hash else { return Ok(false) };
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return Ok(true);
        };
        let stored = Params::try_from(&parsed).ok();
        let current = &self.params;
        Ok(parsed.algorithm != argon2::ARGON2ID_IDENT
            || stored.is_none_or(|stored| {
                (stored.m_cost(), stored.t_cost(), stored.p_cost())
                    != (current.m_cost(), current.t_cost(), current.p_cost())
            }))
    }
}
