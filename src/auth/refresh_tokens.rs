//! Opaque refresh tokens. Only their SHA-256 lives in the database (and no
//! trace of them in events): a leaked table cannot be replayed as tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// A refresh token on record: which family and which generation it is.
#[derive(Debug, Clone, Copy)]
pub struct StoredRefreshToken {
    pub auth_session_id: Uuid,
    pub generation: u32,
    pub expires_at: DateTime<Utc>,
}

/// 256 random bits, URL-safe.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a high-entropy token (no salt needed at 256 bits).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub async fn store(
    pool: &PgPool,
    token: &str,
    auth_session_id: Uuid,
    generation: u32,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into refresh_tokens (token_hash, auth_session_id, generation, expires_at) values ($1, $2, $3, $4)",
    )
    .bind(token_hash(token))
    .bind(auth_session_id)
    .bind(generation as i32)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn find(pool: &PgPool, token: &str) -> Result<Option<StoredRefreshToken>, sqlx::Error> {
    let row: Option<(Uuid, i32, DateTime<Utc>)> = sqlx::query_as(
        "select auth_session_id, generation, expires_at from refresh_tokens where token_hash = $1",
    )
    .bind(token_hash(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(auth_session_id, generation, expires_at)| StoredRefreshToken {
            auth_session_id,
            generation: generation as u32,
            expires_at,
        },
    ))
}
