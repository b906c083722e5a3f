//! RS256 signing keys. The newest key signs; every known key verifies, so a
//! rotation keeps tokens signed by the previous key valid until they expire.
//!
//! Keys come from `CHRONICLE_JWT_PRIVATE_KEY_FILE` (which then signs) and from
//! `<data dir>/keys/jwt-<timestamp>.pem`, generated on first start and by
//! `chronicle keys rotate`. The JWKS publishes all of them with their `kid`.
//!
//! Every RSA operation, generation included, is aws-lc-rs's (the same
//! library jsonwebtoken signs and verifies with): the `rsa` crate, whose
//! private-key operations leak timing (RUSTSEC-2023-0071, no fixed release),
//! is not linked into the server.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::AuthSettings;

/// The PEM label of an unencrypted PKCS#8 private key.
const PKCS8_LABEL: &str = "PRIVATE KEY";

/// One RSA key: what signs with it and what verifies it.
pub struct KeyPair {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    jwk: Value,
    /// The private key (PKCS#8 DER), from which other secrets are derived.
    private_der: SecretSlice<u8>,
}

impl KeyPair {
    /// Builds the pair from a PKCS#8 PEM private key; `kid` is derived from the public key.
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        const WHAT: &str = "parsing the RSA private key (PKCS#8 PEM)";
        let parsed = pem::parse(pem).context(WHAT)?;
        anyhow::ensure!(
            parsed.tag() == PKCS8_LABEL,
            "{WHAT}: found a `{}` PEM block",
            parsed.tag()
        );
        let private = RsaKeyPair::from_pkcs8(parsed.contents())
            .map_err(|err| anyhow::anyhow!("{WHAT}: {err}"))?;
        let public = private.public_key();
        // SHA-256 of the SubjectPublicKeyInfo DER: the `kid`s already handed
        // out (in tokens, in signed audit checkpoints) depend on it.
        let public_der = public
            .as_der()
            .map_err(|_| anyhow::anyhow!("encoding the public key"))?;
        let kid = hex::encode(&Sha256::digest(public_der.as_ref())[..12]);
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&e),
        });
        Ok(Self {
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes())
                .context("loading the signing key")?,
            decoding: DecodingKey::from_rsa_raw_components(&n, &e),
            kid,
            jwk,
            private_der: SecretSlice::from(parsed.contents().to_vec()),
        })
    }

    /// A 256-bit secret for one purpose: `SHA-256(context || private key DER)`.
    /// Whoever holds the private key can derive it, nobody else; distinct
    /// `context`s give unrelated secrets.
    pub fn derive_secret(&self, context: &[u8]) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(context);
        digest.update(self.private_der.expose_secret());
        digest.finalize().into()
    }
}

/// The signing key and every key that still verifies.
pub struct SigningKeys {
    current: KeyPair,
    previous: Vec<KeyPair>,
}

impl SigningKeys {
    /// Loads the configured key and the data dir's keys, generating one there if there is none.
    pub fn load_or_generate(settings: &AuthSettings, data_dir: &Path) -> anyhow::Result<Self> {
        let configured = match (&settings.private_key_pem, &settings.private_key_file) {
            (Some(pem), _) => Some(KeyPair::from_pem(pem.expose_secret())?),
            (None, Some(path)) => {
                let pem = std::fs::read_to_string(path).with_context(|| {
                    format!("reading CHRONICLE_JWT_PRIVATE_KEY_FILE {}", path.display())
                })?;
                Some(KeyPair::from_pem(&pem)?)
            }
            (None, None) => None,
        };
        let dir = keys_dir(data_dir);
        let mut stored = stored_key_files(&dir, "jwt-", ".pem")?;
        if configured.is_none() && stored.is_empty() {
            stored.push(rotate(data_dir)?);
        }
        let mut pairs = Vec::new();
        for path in &stored {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            pairs.push(
                KeyPair::from_pem(&pem).with_context(|| format!("loading {}", path.display()))?,
            );
        }
        // The configured key signs; otherwise the newest stored one does.
        let current = match configured {
            Some(pair) => pair,
            None => pairs.pop().context("no signing key")?,
        };
        pairs.retain(|pair| pair.kid != current.kid);
        pairs.reverse();
        Ok(Self {
            current,
            previous: pairs,
        })
    }

    /// Keys from PEM strings: the first signs, all verify.
    pub fn from_pems(pems: &[&str]) -> anyhow::Result<Self> {
        let mut pairs = pems
            .iter()
            .map(|pem| KeyPair::from_pem(pem))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!pairs.is_empty(), "no key");
        let current = pairs.remove(0);
        Ok(Self {
            current,
            previous: pairs,
        })
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &KeyPair {
        &self.current
    }

    /// The `kid` of the signing key.
    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// The verifying key with this `kid`, if it is one of ours.
    pub fn decoding_for(&self, kid: &str) -> Option<&DecodingKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|pair| pair.kid == kid)
            .map(|pair| &pair.decoding)
    }

    /// Signs `payload` as a compact JWS (RS256, with the current `kid`), e.g.
    /// an audit checkpoint that any JWT library can verify against the JWKS.
    pub fn sign_jws(&self, payload: &Value) -> anyhow::Result<String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.current.kid.clone());
        jsonwebtoken::encode(&header, payload, &self.current.encoding).context("signing")
    }

    /// [`KeyPair::derive_secret`] of the signing key, and of every older key.
    pub fn derive_secrets(&self, context: &[u8]) -> ([u8; 32], Vec<[u8; 32]>) {
        (
            self.current.derive_secret(context),
            self.previous
                .iter()
                .map(|pair| pair.derive_secret(context))
                .collect(),
        )
    }

    /// `/.well-known/jwks.json`: the signing key first, then the older ones.
    pub fn jwks(&self) -> Value {
        let keys: Vec<&Value> = std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|pair| &pair.jwk)
            .collect();
        json!({ "keys": keys })
    }
}

fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// Files `<prefix>*<suffix>` in `dir`, oldest first (their names carry a
/// sortable timestamp); none when `dir` does not exist. Signing keys and
/// master keys are both kept this way.
pub(crate) fn stored_key_files(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Generates a new signing key in the data dir; it signs from the next start on.
pub fn rotate(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = format!(
        "jwt-{}.pem",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
    );
    let path = keys_dir(data_dir).join(name);
    write_private_file(&path, &generate_private_key_pem()?)?;
    tracing::info!(path = %path.display(), "generated a new RS256 signing key");
    Ok(path)
}

/// A fresh 2048-bit RSA key as PKCS#8 PEM.
pub fn generate_private_key_pem() -> anyhow::Result<String> {
    let key = RsaKeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("generating an RSA key"))?;
    let der = key
        .as_der()
        .map_err(|_| anyhow::anyhow!("encoding the RSA key"))?;
    Ok(pem::encode_config(
        &pem::Pem::new(PKCS8_LABEL, der.as_ref()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ))
}

/// Writes `contents` to a new file readable by its owner only (0600 on unix);
/// refuses to overwrite. Also used for the master keys of `crate::secrets`.
pub(crate) fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    use rsa::traits::PublicKeyParts;

    use super::*;

    #[test]
    fn kid_and_jwk_agree_with_an_independent_rsa_implementation() {
        let pem = generate_private_key_pem().unwrap();
        let pair = KeyPair::from_pem(&pem).unwrap();
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).expect("a standard PKCS#8 PEM");
        let public = rsa::RsaPublicKey::from(&private);
        assert_eq!(public.n().bits(), 2048);
        let spki = public.to_public_key_der().unwrap();
        assert_eq!(
            pair.kid,
            hex::encode(&Sha256::digest(spki.as_bytes())[..12]),
            "kids already issued stay valid"
        );
        assert_eq!(
            pair.jwk["n"],
            URL_SAFE_NO_PAD.encode(public.n().to_bytes_be())
        );
        assert_eq!(
            pair.jwk["e"],
            URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())
        );
    }

    #[test]
    fn anything_but_a_pkcs8_rsa_private_key_is_refused() {
        for pem in [
            "",
            "not a key",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(KeyPair::from_pem(pem).is_err(), "{pem}");
        }
    }

    #[test]
    fn derived_secrets_depend_on_the_key_and_the_context() {
        let one = KeyPair::from_pem(&generate_private_key_pem().unwrap()).unwrap();
        let two = KeyPair::from_pem(&generate_private_key_pem().unwrap()).unwrap();
        assert_eq!(one.derive_secret(b"a"), one.derive_secret(b"a"));
        assert_ne!(one.derive_secret(b"a"), one.derive_secret(b"b"));
        assert_ne!(one.derive_secret(b"a"), two.derive_secret(b"a"));
    }
}
