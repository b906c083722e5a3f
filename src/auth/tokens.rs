//! RS256 access tokens: issued at register and login, verified on every request.

use std::sync::Arc;

use jsonwebtoken::{decode, encode, Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{AuthCache, SigningKeys};
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
    /// Verified tokens and live sessions of this process (`crate::auth::cache`).
    cache: Arc<AuthCache>,
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
            cache: Arc::default(),
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

    /// The caches of verified tokens and live sessions.
    pub fn cache(&self) -> &AuthCache {
        &self.cache
    }

    /// [`Self::verify`], answered from the cache of verified tokens when this
    /// token was verified before (until it expires).
    pub fn verify_cached(&self, token: &str) -> Result<AccessClaims, InvalidToken> {
        if let Some(claims) = self.cache.verified(token) {
            return Ok(claims);
        }
        let claims = self.verify(token)?;
        self.cache.remember_verified(token, &claims);
        Ok(claims)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::EncodingKey;
    use serde_json::{json, Value};

    use super::*;
    use crate::auth::keys::generate_private_key_pem;
    use crate::config::Argon2Settings;

    fn issuer() -> (TokenIssuer, String) {
        let pem = generate_private_key_pem().unwrap();
        let keys = Arc::new(SigningKeys::from_pems(&[&pem]).unwrap());
        let settings = AuthSettings {
            private_key_file: None,
            private_key_pem: None,
            issuer: "chronicle".into(),
            audience: "chronicle-api".into(),
            access_token_ttl: Duration::from_secs(900),
            refresh_token_ttl: Duration::from_secs(3600),
            argon2: Argon2Settings {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
        };
        (TokenIssuer::new(keys, &settings), pem)
    }

    fn b64(part: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(part).unwrap()
    }

    #[test]
    fn a_token_we_sign_verifies_with_ring_and_the_published_jwk() {
        let (issuer, _) = issuer();
        let user = Uuid::new_v4();
        let token = issuer
            .issue(user, Uuid::new_v4(), &["user".into()])
            .unwrap();
        let jwk = &issuer.keys().jwks()["keys"][0];
        let (message, signature) = token.rsplit_once('.').unwrap();
        let header: Value =
            serde_json::from_slice(&b64(message.split('.').next().unwrap())).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], jwk["kid"]);
        let public = ring::signature::RsaPublicKeyComponents {
            n: b64(jwk["n"].as_str().unwrap()),
            e: b64(jwk["e"].as_str().unwrap()),
        };
        public
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                message.as_bytes(),
                &b64(signature),
            )
            .expect("ring verifies our RS256 signature against the JWKS");
        assert_eq!(issuer.verify(&token).unwrap().sub, user);
        // One bit changed in the signature, and it no longer verifies.
        let mut bent = b64(signature);
        bent[100] ^= 1;
        let forged = format!("{message}.{}", URL_SAFE_NO_PAD.encode(bent));
        assert!(issuer.verify(&forged).is_err());
    }

    #[test]
    fn algorithm_confusion_and_unsigned_tokens_are_refused() {
        let (issuer, pem) = issuer();
        let good = issuer.issue(Uuid::new_v4(), Uuid::new_v4(), &[]).unwrap();
        let (_, payload, _) = {
            let mut parts = good.split('.');
            (parts.next(), parts.next().unwrap(), parts.next())
        };
        let kid = issuer.keys().kid().to_string();
        let claims: Value = serde_json::from_slice(&b64(payload)).unwrap();
        // HS256 keyed with what an attacker can know: the public JWK, or the PEM.
        let jwk = issuer.keys().jwks()["keys"][0].to_string();
        for secret in [jwk.as_bytes(), pem.as_bytes()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.clone());
            let hs256 =
                encode(&header, &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap();
            assert!(issuer.verify(&hs256).is_err(), "HS256 refused");
        }
        let none_header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": kid}).to_string());
        for unsigned in [
            format!("{none_header}.{payload}."),
            format!("{none_header}.{payload}"),
        ] {
            assert!(issuer.verify(&unsigned).is_err(), "alg none refused");
        }
    }
}
