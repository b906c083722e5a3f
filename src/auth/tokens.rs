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
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::EncodingKey;
    use serde_json::{json, Value};

    use super::*;
    use crate::auth::keys::generate_private_key_pem;

    fn issuer() -> (TokenIssuer, String) {
        let pem = generate_private_key_pem().unwrap();
        let keys = Arc::new(SigningKeys::from_pems(&[&pem]).unwrap());
        (TokenIssuer::new(keys, &super::fuzz::settings()), pem)
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

/// Proptest-driven fuzzing of token verification (docs/testing.md,
/// "Parsers of untrusted input"): only a token this server signed, for its
/// issuer and audience, unexpired and already valid, is accepted.
#[cfg(test)]
mod fuzz {
    use std::sync::OnceLock;
    use std::time::Duration;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::auth::keys::generate_private_key_pem;
    use crate::config::Argon2Settings;
    use crate::http::extract::fuzz::{config, corpus};

    /// The issuer's settings of every test here (and of `tests`).
    pub(super) fn settings() -> AuthSettings {
        AuthSettings {
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
        }
    }

    /// Ours, and another server's whose key has nothing to do with ours.
    fn issuers() -> &'static (TokenIssuer, TokenIssuer) {
        static ISSUERS: OnceLock<(TokenIssuer, TokenIssuer)> = OnceLock::new();
        ISSUERS.get_or_init(|| {
            let issuer = || {
                let pem = generate_private_key_pem().unwrap();
                let keys = Arc::new(SigningKeys::from_pems(&[&pem]).unwrap());
                TokenIssuer::new(keys, &settings())
            };
            (issuer(), issuer())
        })
    }

    fn ours() -> &'static TokenIssuer {
        &issuers().0
    }

    /// Refused by both entry points, and not cached by the second.
    fn refused(token: &str) -> bool {
        ours().verify(token).is_err() && ours().verify_cached(token).is_err()
    }

    fn sign(claims: &serde_json::Value, kid: Option<&str>, issuer: &TokenIssuer) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_string);
        encode(&header, claims, &issuer.keys().current().encoding).unwrap()
    }

    fn claims(offset_exp: i64, offset_nbf: i64, iss: &str, aud: &str) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": iss, "aud": aud, "sub": Uuid::new_v4(), "roles": ["user"],
            "exp": now + offset_exp, "iat": now, "nbf": now + offset_nbf,
            "jti": Uuid::new_v4(), "sid": Uuid::new_v4(),
        })
    }

    /// Ways to damage a token: each returns the damaged token.
    #[derive(Debug, Clone)]
    enum Damage {
        FlipBit { at: usize, bit: u8 },
        Truncate { keep: usize },
        Insert { at: usize, junk: String },
        Remove { at: usize, len: usize },
        Header { alg: String, kid: Option<String> },
        SwapSegments,
        ReplacePayload(String),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::FlipBit { at, bit }),
            any::<usize>().prop_map(|keep| Damage::Truncate { keep }),
            (any::<usize>(), "[A-Za-z0-9_\\-+/=. \t]{1,8}|\\PC{1,4}")
                .prop_map(|(at, junk)| Damage::Insert { at, junk }),
            (any::<usize>(), 1usize..40).prop_map(|(at, len)| Damage::Remove { at, len }),
            (
                prop_oneof![
                    Just("HS256".to_string()),
                    Just("HS512".to_string()),
                    Just("none".to_string()),
                    Just("None".to_string()),
                    Just("RS384".to_string()),
                    Just("RS512".to_string()),
                    Just("PS256".to_string()),
                    Just("ES256".to_string()),
                    Just("EdDSA".to_string()),
                    Just("rs256".to_string()),
                    "\\PC{0,8}",
                ],
                proptest::option::of(prop_oneof![
                    Just("ours".to_string()),
                    "[a-f0-9]{0,24}",
                    "\\PC{0,8}"
                ]),
            )
                .prop_map(|(alg, kid)| Damage::Header { alg, kid }),
            Just(Damage::SwapSegments),
            "[A-Za-z0-9_-]{0,40}".prop_map(Damage::ReplacePayload),
        ]
    }

    fn apply(token: &str, damage: &Damage) -> String {
        let bytes = token.as_bytes();
        let len = bytes.len();
        let parts: Vec<&str> = token.split('.').collect();
        match damage {
            Damage::FlipBit { at, bit } => {
                let mut bytes = bytes.to_vec();
                bytes[at % len] ^= 1 << bit;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Damage::Truncate { keep } => token[..keep % len].to_string(),
            Damage::Insert { at, junk } => {
                let at = at % (len + 1);
                format!("{}{junk}{}", &token[..at], &token[at..])
            }
            Damage::Remove { at, len: cut } => {
                let at = at % len;
                let end = (at + cut).min(len);
                format!("{}{}", &token[..at], &token[end..])
            }
            Damage::Header { alg, kid } => {
                let kid = kid.as_deref().map(|kid| {
                    if kid == "ours" {
                        ours().keys().kid()
                    } else {
                        kid
                    }
                });
                let header = match kid {
                    Some(kid) => json!({"alg": alg, "typ": "JWT", "kid": kid}),
                    None => json!({"alg": alg, "typ": "JWT"}),
                };
                let header = URL_SAFE_NO_PAD.encode(header.to_string());
                format!("{header}.{}.{}", parts[1], parts[2])
            }
            Damage::SwapSegments => format!("{}.{}.{}", parts[1], parts[0], parts[2]),
            Damage::ReplacePayload(payload) => format!("{}.{payload}.{}", parts[0], parts[2]),
        }
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Any string at all is refused, never a panic.
        #[test]
        fn any_string_is_refused_without_panicking(
            token in prop_oneof![
                any::<String>(),
                "[A-Za-z0-9_=+/-]{0,40}(\\.[A-Za-z0-9_=+/-]{0,40}){0,4}",
                "eyJ[A-Za-z0-9_-]{0,60}\\.eyJ[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}",
            ],
        ) {
            prop_assert!(refused(&token));
        }

        /// A token we sign verifies to exactly what was signed, whatever the
        /// ids and roles.
        #[test]
        fn a_token_we_sign_verifies_to_its_claims(roles in proptest::collection::vec(any::<String>(), 0..4)) {
            let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
            let token = ours().issue(user, sid, &roles).unwrap();
            for claims in [ours().verify(&token).unwrap(), ours().verify_cached(&token).unwrap()] {
                prop_assert_eq!((claims.sub, claims.sid, claims.roles), (user, sid, roles.clone()));
            }
        }

        /// Every damage to a valid token (bit flips, truncation, base64
        /// junk inserted, spans removed, header and `alg` swapped, segments
        /// swapped, payload replaced) is refused, even once the valid token
        /// is in the cache of verified tokens.
        #[test]
        fn every_damage_to_a_valid_token_is_refused(damage in damage()) {
            let token = ours().issue(Uuid::new_v4(), Uuid::new_v4(), &["user".into()]).unwrap();
            prop_assert!(ours().verify_cached(&token).is_ok());
            let damaged = apply(&token, &damage);
            if damaged != token {
                prop_assert!(refused(&damaged), "{damaged}");
            }
        }

        /// A token is accepted only when signed by our key, for our issuer
        /// and audience, not expired and already valid (times well clear of
        /// the 5 s leeway).
        #[test]
        fn only_our_unexpired_tokens_for_us_are_accepted(
            exp in prop_oneof![-100_000i64..-60, 60i64..100_000],
            nbf in prop_oneof![-100_000i64..-60, 60i64..100_000],
            // Weighted towards the valid value, so that each one wrong alone is common.
            iss in prop_oneof![3 => Just("chronicle".to_string()), 1 => Just("Chronicle".to_string()), 1 => "\\PC{0,10}"],
            aud in prop_oneof![3 => Just("chronicle-api".to_string()), 1 => Just("chronicle".to_string()), 1 => "\\PC{0,10}"],
            theirs in proptest::bool::weighted(0.2),
            kid in prop_oneof![3 => Just(Some("ours")), 1 => Just(None), 1 => Just(Some("theirs"))],
        ) {
            let (_, other) = issuers();
            let kid = kid.map(|kid| match kid {
                "ours" => ours().keys().kid(),
                _ => other.keys().kid(),
            });
            let signer = if theirs { other } else { ours() };
            let token = sign(&claims(exp, nbf, &iss, &aud), kid, signer);
            let valid = !theirs && kid == Some(ours().keys().kid()) && exp > 0 && nbf < 0
                && iss == "chronicle" && aud == "chronicle-api";
            prop_assert_eq!(ours().verify(&token).is_ok(), valid);
            prop_assert_eq!(ours().verify_cached(&token).is_ok(), valid);
        }
    }

    /// `tests/corpus/credentials/`: `err-*` are refused as tokens; `ok-*`
    /// name tokens that the test signs itself (a stored token would
    /// expire), from the claims in the file.
    #[test]
    fn the_corpus_of_tokens_is_refused_or_accepted_as_named() {
        for (name, bytes) in corpus("credentials") {
            let text = String::from_utf8_lossy(&bytes);
            if name.starts_with("ok-") {
                let mut claims: serde_json::Value = serde_json::from_str(&text).expect(&name);
                let now = chrono::Utc::now().timestamp();
                claims["exp"] = json!(now + 60);
                claims["nbf"] = json!(now);
                claims["iat"] = json!(now);
                let token = sign(&claims, Some(ours().keys().kid()), ours());
                assert!(ours().verify(&token).is_ok(), "{name} accepted");
            } else if name.ends_with(".jwt") {
                assert!(refused(text.trim_end_matches('\n')), "{name} refused");
            }
        }
    }
}
