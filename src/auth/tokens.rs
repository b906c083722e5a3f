//! RS256 access tokens: issued at register and login, verified on every request.

use std::sync::Arc;

use jsonwebtoken::{decode, encode, Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::SigningKeys;
use crate::config::AuthSettings;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub roles: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: Uuid,
    /// The login session (refresh-token family) the token belongs to.
    pub sid: Uuid,
}

/// Issues and verifies access tokens with the server's signing key.
#[derive(Clone)]
pub struct TokenIssuer {
    keys: Arc<SigningKeys>,
    issuer: String,
    audience: String,
    ttl_secs: i64,
}

/// Why a presented token was refused; all of them answer `INVALID_TOKEN`.
#[derive(Debug, thiserror::Error)]
#[error("invalid access token: {0}")]
pub struct InvalidToken(String);

impl TokenIssuer {
    pub fn new(keys: Arc<SigningKeys>, settings: &AuthSettings) -> Self {
        Self {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl_secs: settings.access_token_ttl.as_secs() as i64,
        }
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// Lifetime of an access token, for `expires_in`.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// Signs a token for `user_id` in session `sid` with its current roles.
    pub fn issue(&self, user_id: Uuid, sid: Uuid, roles: &[String]) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id,
            roles: roles.to_vec(),
            exp: now + self.ttl_secs,
            iat: now,
            nbf: now,
            jti: Uuid::new_v4(),
            sid,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.keys.kid().to_string());
        Ok(encode(&header, &claims, &self.keys.current().encoding)?)
    }

    /// Checks signature (RS256 only), `kid`, `iss`, `aud`, `exp` and `nbf`.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, InvalidToken> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| InvalidToken(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(InvalidToken("algorithm is not RS256".into()));
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.decoding_for(kid))
            .ok_or_else(|| InvalidToken("unknown key id".into()))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.algorithms = vec![Algorithm::RS256];
        decode::<AccessClaims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| InvalidToken(e.to_string()))
    }
}
