//! In-memory caches for the two costs every authenticated request paid: the
//! RS256 signature check of its access token, and the round trip that checks
//! the token's login session is not revoked and its account is active (and
//! reads the account's roles).
//!
//! - Verified tokens are kept by the SHA-256 of the token (the token itself
//!   is never held), until the token's own `exp`. A signature, once checked
//!   against a key of this process, stays valid: nothing about it can be
//!   revoked, only the session it names.
//! - Live sessions (session id → user id and roles) are kept for at most
//!   [`LIVENESS_TTL`], and only while no revocation has happened in this
//!   process since they were read: [`AuthCache::invalidate`] moves a
//!   generation counter, which makes every entry stale at once (including an
//!   entry whose database read was in flight while the revocation
//!   committed). The HTTP layer calls it after every state-changing request
//!   that can revoke a session, deactivate an account or change roles, before
//!   the answer is sent (`src/http/identity.rs`, `resolve_identity`). Another
//!   replica (or a CLI command) does not call it here: its revocations take
//!   effect on this replica within [`LIVENESS_TTL`].
//!
//! Both maps are bounded ([`MAX_ENTRIES`]); when one is full, its expired
//! entries are dropped, and if that is not enough, all of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::AccessClaims;

/// How long a session's liveness read is trusted without asking Postgres:
/// the bound on how late a revocation made on another replica is honoured.
pub const LIVENESS_TTL: Duration = Duration::from_secs(1);

/// Entries per map at most.
pub const MAX_ENTRIES: usize = 16_384;

type TokenKey = [u8; 32];

struct Live {
    user_id: Uuid,
    roles: Vec<String>,
    read_at: Instant,
    generation: u64,
}

/// The verified-token and live-session caches of one server process.
#[derive(Default)]
pub struct AuthCache {
    tokens: Mutex<HashMap<TokenKey, AccessClaims>>,
    sessions: Mutex<HashMap<Uuid, Live>>,
    generation: AtomicU64,
}

fn key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl AuthCache {
    /// The claims of `token` if it was verified before and has not expired.
    pub fn verified(&self, token: &str) -> Option<AccessClaims> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(&key(token))
            .filter(|claims| claims.exp > now_secs())
            .cloned()
    }

    /// Remembers that `token` verified to `claims`, until `claims.exp`.
    pub fn remember_verified(&self, token: &str, claims: &AccessClaims) {
        let now = now_secs();
        if claims.exp <= now {
            return;
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            if tokens.len() >= MAX_ENTRIES {
                tokens.retain(|_, c| c.exp > now);
                if tokens.len() >= MAX_ENTRIES {
                    tokens.clear();
                }
            }
            tokens.insert(key(token), claims.clone());
        }
    }

    /// The current generation: read it before asking the database, and hand
    /// it to [`Self::remember_live`] with the answer.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The roles of `user_id` if session `sid` was live when last read, less
    /// than [`LIVENESS_TTL`] ago, with no revocation in this process since.
    pub fn live_roles(&self, sid: Uuid, user_id: Uuid) -> Option<Vec<String>> {
        let generation = self.generation();
        let sessions = self.sessions.lock().ok()?;
        sessions
            .get(&sid)
            .filter(|live| {
                live.user_id == user_id
                    && live.generation == generation
                    && live.read_at.elapsed() < LIVENESS_TTL
            })
            .map(|live| live.roles.clone())
    }

    /// Remembers that session `sid` of `user_id` was live with `roles`, as
    /// read by a query started at `generation`; ignored if a revocation
    /// happened since (the read may predate it).
    pub fn remember_live(&self, sid: Uuid, user_id: Uuid, roles: Vec<String>, generation: u64) {
        let read_at = Instant::now();
        if let Ok(mut sessions) = self.sessions.lock() {
            if self.generation() != generation {
                return;
            }
            if sessions.len() >= MAX_ENTRIES {
                sessions.retain(|_, live| {
                    live.generation == generation && live.read_at.elapsed() < LIVENESS_TTL
                });
                if sessions.len() >= MAX_ENTRIES {
                    sessions.clear();
                }
            }
            sessions.insert(
                sid,
                Live {
                    user_id,
                    roles,
                    read_at,
                    generation,
                },
            );
        }
    }

    /// Forgets every live session at once: call after a revocation,
    /// deactivation or role change is committed and visible in the read
    /// model, before answering.
    pub fn invalidate(&self) {
        // Under the lock, so no insert can slip in between with the old generation.
        let mut sessions = self.sessions.lock().ok();
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(sessions) = sessions.as_mut() {
            sessions.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "i".into(),
            aud: "a".into(),
            sub: Uuid::new_v4(),
            roles: vec![],
            exp,
            iat: 0,
            nbf: 0,
            jti: Uuid::new_v4(),
            sid: Uuid::new_v4(),
        }
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires_and_not_after() {
        let cache = AuthCache::default();
        let live = claims(now_secs() + 60);
        cache.remember_verified("t1", &live);
        assert_eq!(cache.verified("t1"), Some(live));
        assert_eq!(cache.verified("t2"), None);
        cache.remember_verified("t3", &claims(now_secs() - 1));
        assert_eq!(cache.verified("t3"), None);
    }

    #[test]
    fn a_liveness_read_that_started_before_an_invalidation_is_not_kept() {
        let cache = AuthCache::default();
        let (sid, user) = (Uuid::new_v4(), Uuid::new_v4());
        let before = cache.generation();
        cache.invalidate();
        cache.remember_live(sid, user, vec!["user".into()], before);
        assert_eq!(cache.live_roles(sid, user), None);
        cache.remember_live(sid, user, vec!["user".into()], cache.generation());
        assert_eq!(cache.live_roles(sid, user), Some(vec!["user".into()]));
        assert_eq!(cache.live_roles(sid, Uuid::new_v4()), None, "another user");
        cache.invalidate();
        assert_eq!(cache.live_roles(sid, user), None);
    }
}
