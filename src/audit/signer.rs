//! Signs audit checkpoints with the server's current RS256 key.

use std::sync::Arc;

use chronicle_projections::audit::{CheckpointSigner, Signature};
use serde_json::Value;

use crate::auth::SigningKeys;

/// The server's keys as a [`CheckpointSigner`].
pub struct ServerSigner {
    keys: Arc<SigningKeys>,
}

impl ServerSigner {
    pub fn new(keys: Arc<SigningKeys>) -> Self {
        Self { keys }
    }
}

impl CheckpointSigner for ServerSigner {
    fn sign(&self, payload: &Value) -> Result<Signature, String> {
        let jws = self
            .keys
            .sign_jws(payload)
            .map_err(|err| format!("{err:#}"))?;
        // The kid is read back from the signature itself, so it names the key
        // that signed even if the keys rotate meanwhile.
        let kid = jsonwebtoken::decode_header(&jws)
            .ok()
            .and_then(|header| header.kid)
            .ok_or_else(|| "the signature has no kid".to_string())?;
        Ok(Signature { kid, jws })
    }
}
