//! Read-your-writes: a command answers with a consistency token naming its last
//! event; a query that presents it (or, without one, the caller's last write
//! seen by this process) waits until the read model has applied that event.
//!
//! Projections notify `chronicle_projected` when they commit, so waiting costs
//! one check per commit rather than a polling loop.
//!
//! A token is bound to the caller it was issued to by a MAC (see
//! [`TokenKeys`]): anyone else's token, or a forged one, is ignored, so a token
//! cannot probe another account's existence or history, nor make a query wait.
//! Waits are capped in number, overall and per user ([`WaitLimits`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chronicle_projections::PROJECTED_CHANNEL;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `<AggregateType>:<aggregate_id>:<sequence>` (the event's `Nats-Msg-Id`),
/// followed on the wire by `.<mac>` binding it to the caller it was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    /// The MAC set by [`TokenKeys::seal`]; `None` for a token built without
    /// the server's key (e.g. by a command-line tool), which no query honours.
    pub seal: Option<String>,
}

impl ConsistencyToken {
    /// The text the MAC covers: `<AggregateType>:<aggregate_id>:<sequence>`.
    fn body(&self) -> String {
        format!(
            "{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.body())?;
        match &self.seal {
            Some(seal) => write!(f, ".{seal}"),
            None => Ok(()),
        }
    }
}

impl FromStr for ConsistencyToken {
    type Err = ();

    /// Parses the text form, with or without its seal; the seal is not checked here.
    fn from_str(raw: &str) -> Result<Self, ()> {
        // The seal is base64url (no `.`), the sequence digits: the last `.`
        // can only start a seal.
        let (body, seal) = match raw.rsplit_once('.') {
            Some((body, seal)) => (body, Some(seal)),
            None => (raw, None),
        };
        if seal.is_some_and(|seal| {
            seal.is_empty()
                || !seal
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            return Err(());
        }
        let mut parts = body.rsplitn(2, ':');
        let sequence = parts.next().ok_or(())?.parse::<i64>().map_err(|_| ())?;
        let (aggregate_type, aggregate_id) = parts.next().ok_or(())?.split_once(':').ok_or(())?;
        if aggregate_type.is_empty() || aggregate_id.is_empty() || sequence < 1 {
            return Err(());
        }
        Ok(Self {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence,
            seal: seal.map(str::to_string),
        })
    }
}

/// Bytes of HMAC-SHA256 kept in a seal: 128 bits, as hard to guess as a UUID v4 is not.
const SEAL_BYTES: usize = 16;

/// Domain separation for the key derived from a signing key.
const TOKEN_KEY_CONTEXT: &[u8] = b"chronicle consistency-token key v1\0";

/// The keys that seal consistency tokens: HMAC-SHA256 over the caller's id and
/// the token body, truncated to 128 bits, base64url.
///
/// Each key is derived from one of the server's RS256 signing keys
/// (`SHA-256(context || private key PKCS#8 DER)`, see
/// [`crate::auth::keys::KeyPair::derive_secret`]): API replicas that share the
/// signing keys agree on it with no setting of its own, and it changes when
/// the signing key rotates. The current key seals; every key still known
/// opens, like the JWT keys themselves.
#[derive(Clone)]
pub struct TokenKeys {
    /// The current key first.
    keys: Arc<Vec<[u8; 32]>>,
}

impl TokenKeys {
    /// Derives the keys from the signing keys.
    pub fn derive(signing: &crate::auth::SigningKeys) -> Self {
        let (current, previous) = signing.derive_secrets(TOKEN_KEY_CONTEXT);
        Self::from_secrets(current, previous)
    }

    /// `current` seals; it and every `previous` key open.
    pub fn from_secrets(current: [u8; 32], previous: Vec<[u8; 32]>) -> Self {
        Self {
            keys: Arc::new(std::iter::once(current).chain(previous).collect()),
        }
    }

    fn mac(key: &[u8; 32], caller: Uuid, body: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key size");
        mac.update(caller.as_bytes());
        mac.update(body.as_bytes());
        mac
    }

    /// Binds `token` to `caller`: only `caller` can have it honoured.
    pub fn seal(&self, caller: Uuid, mut token: ConsistencyToken) -> ConsistencyToken {
        let tag = Self::mac(&self.keys[0], caller, &token.body()).finalize();
        token.seal = Some(URL_SAFE_NO_PAD.encode(&tag.into_bytes()[..SEAL_BYTES]));
        token
    }

    /// `Some` when `token` was sealed for `caller` by one of our keys.
    pub fn open(&self, caller: Uuid, token: ConsistencyToken) -> Option<ConsistencyToken> {
        let tag = URL_SAFE_NO_PAD.decode(token.seal.as_deref()?).ok()?;
        if tag.len() != SEAL_BYTES {
            return None;
        }
        let body = token.body();
        self.keys
            .iter()
            // Constant-time comparison of the leftmost bytes.
            .any(|key| {
                Self::mac(key, caller, &body)
                    .verify_truncated_left(&tag)
                    .is_ok()
            })
            .then_some(token)
    }
}

/// The projection that materialises an aggregate type's events.
pub fn projection_for(aggregate_type: &str) -> Option<&'static str> {
    projections_reading(aggregate_type).first().copied()
}

/// Every projection a query may wait on for an aggregate type's events: its
/// own ([`projection_for`]) first, then `notifications`, which is made of
/// Task, User and AuthSession events as well as its own inbox's. A write is
/// remembered for each of them and a token is honoured by each of them, so a
/// notifications query waits for the caller's last task write too.
pub fn projections_reading(aggregate_type: &str) -> &'static [&'static str] {
    match aggregate_type {
        "Task" => &["tasks", "notifications"],
        "User" => &["users", "notifications"],
        "AuthSession" => &["auth_sessions", "notifications"],
        "NotificationInbox" => &["notifications"],
        "Project" => &["projects"],
        "ChatSession" => &["chat_sessions"],
        "McpServer" => &["mcp_servers"],
        "WorkspaceFile" => &["files"],
        _ => &[],
    }
}

/// `X-Consistency-Token` text that no server could have issued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("is not a token this server issued")]
pub struct NotAToken;

/// Why a query could not be answered with the caller's writes; both are 503s.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotCaughtUp {
    #[error("the read model has not caught up with your last change yet")]
    TimedOut,
    #[error("too many queries are waiting for the read model; try again")]
    TooManyWaiters,
}

/// How long, and how many queries at once, may wait for a read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitLimits {
    /// The longest a query waits before it answers 503.
    pub max_wait: Duration,
    /// Queries waiting at the same time in this process.
    pub max_waiters: usize,
    /// Of those, queries of one user.
    pub max_waiters_per_user: usize,
}

/// Counts the queries that are waiting, overall and per user.
struct Waiters {
    max_total: usize,
    max_per_user: usize,
    counts: Mutex<WaiterCounts>,
}

#[derive(Default)]
struct WaiterCounts {
    total: usize,
    per_user: HashMap<Uuid, usize>,
}

/// One admitted wait; gives its place back on drop.
struct WaitPermit<'a> {
    waiters: &'a Waiters,
    user_id: Option<Uuid>,
}

impl Waiters {
    fn new(max_total: usize, max_per_user: usize) -> Self {
        Self {
            max_total,
            max_per_user,
            counts: Mutex::new(WaiterCounts::default()),
        }
    }

    /// A place to wait, unless the process or the user already has its fill.
    fn try_enter(&self, user_id: Option<Uuid>) -> Option<WaitPermit<'_>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return None;
        }
        if let Some(user_id) = user_id {
            let mine = counts.per_user.entry(user_id).or_insert(0);
            if *mine >= self.max_per_user {
                return None;
            }
            *mine += 1;
        }
        counts.total += 1;
        Some(WaitPermit {
            waiters: self,
            user_id,
        })
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for WaitPermit<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .waiters
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(user_id) = self.user_id {
            if let Some(mine) = counts.per_user.get_mut(&user_id) {
                *mine = mine.saturating_sub(1);
                if *mine == 0 {
                    counts.per_user.remove(&user_id);
                }
            }
        }
    }
}

/// Waits for projections on behalf of queries.
pub struct Consistency {
    pool: PgPool,
    projected: Arc<Notify>,
    max_wait: Duration,
    waiters: Waiters,
    keys: TokenKeys,
    last_writes: Mutex<HashMap<(Uuid, &'static str), ConsistencyToken>>,
}

impl Consistency {
    /// Starts listening for projection commits until `shutdown`.
    pub async fn start(
        pool: PgPool,
        limits: WaitLimits,
        keys: TokenKeys,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let projected = Arc::new(Notify::new());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(PROJECTED_CHANNEL).await?;
        let notify = projected.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = listener.recv() => {
                        // On a lost connection PgListener reconnects; waiters
                        // re-check on their own timer meanwhile.
                        if let Err(err) = received {
                            tracing::warn!(error = %err, "projection listener interrupted");
                        }
                        notify.notify_waiters();
                    }
                }
            }
        });
        Ok(Arc::new(Self {
            pool,
            projected,
            max_wait: limits.max_wait,
            waiters: Waiters::new(limits.max_waiters, limits.max_waiters_per_user),
            keys,
            last_writes: Mutex::new(HashMap::new()),
        }))
    }

    /// The token in `X-Consistency-Token`, if `caller` may have it honoured;
    /// `Err` only when the text is not a token at all. A token issued to
    /// someone else, or forged, is `Ok(None)`: the query then behaves as if
    /// none was sent, so its answer says nothing about the token's aggregate.
    pub fn accept(
        &self,
        caller: Option<Uuid>,
        raw: &str,
    ) -> Result<Option<ConsistencyToken>, NotAToken> {
        let token = raw.parse::<ConsistencyToken>().map_err(|()| NotAToken)?;
        Ok(caller.and_then(|caller| self.keys.open(caller, token)))
    }

    /// Remembers the caller's last write, for queries that send no token.
    pub fn record_write(&self, user_id: Uuid, token: &ConsistencyToken) {
        if let Ok(mut writes) = self.last_writes.lock() {
            for projection in projections_reading(&token.aggregate_type) {
                writes.insert((user_id, projection), token.clone());
            }
        }
    }

    /// Waits until `projection` reflects `token` (if given) or else the caller's last write.
    pub async fn wait(
        &self,
        projection: &'static str,
        user_id: Option<Uuid>,
        token: Option<ConsistencyToken>,
    ) -> Result<(), NotCaughtUp> {
        let remembered = token.is_none();
        let token = token.or_else(|| {
            let user_id = user_id?;
            let writes = self.last_writes.lock().ok()?;
            writes.get(&(user_id, projection)).cloned()
        });
        let Some(token) = token else { return Ok(()) };
        self.wait_for(projection, user_id, &token).await?;
        // Once the read model has the caller's last write it keeps it (versions
        // never go back), so later token-less queries need not ask again.
        if let (true, Some(user_id)) = (remembered, user_id) {
            if let Ok(mut writes) = self.last_writes.lock() {
                if writes.get(&(user_id, projection)) == Some(&token) {
                    writes.remove(&(user_id, projection));
                }
            }
        }
        Ok(())
    }

    async fn wait_for(
        &self,
        projection: &'static str,
        user_id: Option<Uuid>,
        token: &ConsistencyToken,
    ) -> Result<(), NotCaughtUp> {
        if !projections_reading(&token.aggregate_type).contains(&projection) {
            return Ok(());
        }
        let deadline = Instant::now() + self.max_wait;
        let mut permit = None;
        loop {
            let notified = self.projected.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .reached(projection, token)
                .await
                .map_err(|_| NotCaughtUp::TimedOut)?
            {
                return Ok(());
            }
            // Only a query that has to wait takes a place (and keeps it until
            // it returns); past the cap it is refused at once.
            if permit.is_none() {
                permit = Some(self.waiters.try_enter(user_id).ok_or_else(|| {
                    metrics::counter!("chronicle_consistency_refused_total").increment(1);
                    NotCaughtUp::TooManyWaiters
                })?);
            }
            let now = Instant::now();
            if now >= deadline {
                metrics::counter!("chronicle_consistency_timeouts_total").increment(1);
                return Err(NotCaughtUp::TimedOut);
            }
            let recheck = (deadline - now).min(Duration::from_millis(100));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(recheck) => {}
            }
        }
    }

    async fn reached(
        &self,
        projection: &str,
        token: &ConsistencyToken,
    ) -> Result<bool, sqlx::Error> {
        let version: Option<i64> = sqlx::query_scalar(
            "select version from read.aggregate_versions \
             where projection = $1 and aggregate_type = $2 and aggregate_id = $3",
        )
        .bind(projection)
        .bind(&token.aggregate_type)
        .bind(&token.aggregate_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(version.unwrap_or(0) >= token.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sequence: i64) -> ConsistencyToken {
        ConsistencyToken {
            aggregate_type: "Task".into(),
            aggregate_id: "6b1f6a8e-0000-4000-8000-000000000001".into(),
            sequence,
            seal: None,
        }
    }

    fn keys() -> TokenKeys {
        TokenKeys::from_secrets([7; 32], vec![[8; 32]])
    }

    #[test]
    fn a_token_round_trips_through_its_text_form() {
        let sealed = keys().seal(Uuid::new_v4(), token(12));
        let text = sealed.to_string();
        assert!(text.starts_with("Task:6b1f6a8e-0000-4000-8000-000000000001:12."));
        assert_eq!(text.parse::<ConsistencyToken>(), Ok(sealed));
        assert_eq!(
            token(12).to_string().parse::<ConsistencyToken>(),
            Ok(token(12))
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for raw in [
            "",
            "Task",
            "Task:1",
            "Task:x:y",
            ":1:2",
            "Task::3",
            "Task:1:0",
            "Task:1:2.",
            "Task:1:2.a+b",
            "Task:1:2.a.b",
        ] {
            assert!(raw.parse::<ConsistencyToken>().is_err(), "{raw}");
        }
    }

    #[test]
    fn a_sealed_token_opens_only_for_the_caller_it_was_issued_to() {
        let keys = keys();
        let alice = Uuid::new_v4();
        let bob = Uuid::new_v4();
        let sealed = keys.seal(alice, token(3));
        assert_eq!(keys.open(alice, sealed.clone()), Some(sealed.clone()));
        assert_eq!(keys.open(bob, sealed.clone()), None);
        // Another sequence under the same seal does not open either.
        let raised = ConsistencyToken {
            sequence: 1_000_000,
            ..sealed.clone()
        };
        assert_eq!(keys.open(alice, raised), None);
        assert_eq!(keys.open(alice, token(3)), None, "unsealed");
        // Another server key does not open it.
        let other = TokenKeys::from_secrets([9; 32], Vec::new());
        assert_eq!(other.open(alice, sealed), None);
    }

    #[test]
    fn a_token_sealed_with_a_previous_key_still_opens() {
        let alice = Uuid::new_v4();
        let before_rotation = TokenKeys::from_secrets([8; 32], Vec::new());
        let sealed = before_rotation.seal(alice, token(5));
        assert_eq!(keys().open(alice, sealed.clone()), Some(sealed));
    }

    #[test]
    fn the_notifications_projection_honours_tokens_of_every_type_it_reads() {
        for aggregate_type in
            chronicle_projections::read_models::notifications::NOTIFICATION_SOURCES
        {
            assert!(
                projections_reading(aggregate_type).contains(&"notifications"),
                "{aggregate_type}"
            );
        }
        assert_eq!(projection_for("Task"), Some("tasks"));
        assert_eq!(projection_for("NotificationInbox"), Some("notifications"));
        assert_eq!(projection_for("Nothing"), None);
    }

    #[test]
    fn waits_beyond_the_caps_are_refused_and_places_come_back() {
        let waiters = Waiters::new(3, 2);
        let alice = Uuid::new_v4();
        let bob = Uuid::new_v4();
        let a1 = waiters.try_enter(Some(alice)).expect("first");
        let a2 = waiters.try_enter(Some(alice)).expect("second");
        assert!(waiters.try_enter(Some(alice)).is_none(), "per-user cap");
        let b1 = waiters.try_enter(Some(bob)).expect("bob is not alice");
        assert!(waiters.try_enter(None).is_none(), "process-wide cap");
        assert!(waiters.try_enter(Some(Uuid::new_v4())).is_none());
        drop(a1);
        assert_eq!(waiters.waiting(), 2);
        let a3 = waiters.try_enter(Some(alice)).expect("a place came back");
        drop((a2, a3, b1));
        assert_eq!(waiters.waiting(), 0);
        assert!(waiters.counts.lock().unwrap().per_user.is_empty());
    }
}
