//! The RS256 signing key: read from a configured PEM, or generated on first
//! start and kept in the data dir, and published as a JWKS with its `kid`.

use std::path::Path;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::AuthSettings;

/// The key that signs access tokens, and what verifiers need to check them.
pub struct SigningKeys {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    jwk: Value,
}

impl SigningKeys {
    /// Loads the configured key, or the one in `data_dir`, or makes one there.
    pub fn load_or_generate(settings: &AuthSettings, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(pem) = &settings.private_key_pem {
            return Self::from_pem(pem.expose_secret());
        }
        if let Some(path) = &settings.private_key_file {
            let pem = std::fs::read_to_string(path).with_context(|| {
                format!("reading CHRONICLE_JWT_PRIVATE_KEY_FILE {}", path.display())
            })?;
            return Self::from_pem(&pem);
        }
        let path = data_dir.join("keys").join("jwt-private.pem");
        if path.exists() {
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Self::from_pem(&pem);
        }
        let pem = generate_private_key_pem()?;
        write_private_file(&path, &pem)?;
        tracing::info!(path = %path.display(), "generated a new RS256 signing key");
        Self::from_pem(&pem)
    }

    /// Builds the keys from a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem)
            .context("parsing the RSA private key (PKCS#8 PEM)")?;
        let public = RsaPublicKey::from(&private);
        let public_der = public
            .to_public_key_der()
            .context("encoding the public key")?;
        let kid = hex::encode(&Sha256::digest(public_der.as_bytes())[..12]);
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .context("encoding the public key")?;
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        Ok(Self {
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes())
                .context("loading the signing key")?,
            decoding: DecodingKey::from_rsa_pem(public_pem.as_bytes())
                .context("loading the verifying key")?,
            kid,
            jwk,
        })
    }

    /// Signs `payload` as a compact JWS (RS256, with this key's `kid`), e.g.
    /// an audit checkpoint that any JWT library can verify against the JWKS.
    pub fn sign_jws(&self, payload: &Value) -> anyhow::Result<String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, payload, &self.encoding).context("signing")
    }

    /// `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }
}

/// A fresh 2048-bit RSA key as PKCS#8 PEM.
pub fn generate_private_key_pem() -> anyhow::Result<String> {
    let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).context("generating an RSA key")?;
    Ok(key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the RSA key")?
        .to_string())
}

fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("key path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
