//! Rate limits per key (client IP, user): `governor`'s GCRA, keyed, in memory.
//!
//! GCRA is a smooth budget, not a fixed window: a limit of N per minute lets
//! a burst of N through, then one request every 60/N seconds as the budget
//! refills, so a client cannot double its rate at a window boundary.
//!
//! One keyed limiter per distinct limit value (a quota belongs to a limiter);
//! key classes (`ip:`, `auth:`, `user:`) keep their keys apart within it.
//! Keys whose budget is whole again hold no information and are dropped by a
//! sweep ([`RateLimiter::sweep`]) at most every [`SWEEP_EVERY`], run by the
//! request that finds it due: the map holds only the keys seen in about the
//! last minute, and no request pays for a scan of it except that one.
//!
//! Each API replica counts on its own, so behind N replicas the effective
//! limit is up to N times the configured one. Good enough to stop brute force
//! and runaway clients; a shared store would make it exact.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::Quota;

/// How often keys with a whole budget are forgotten.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The outcome of counting one request against one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub limit: u32,
    pub remaining: u32,
    /// Allowed: seconds until the whole budget is back. Refused: seconds
    /// until the next request is admitted (the `Retry-After`).
    pub reset_secs: u64,
    pub allowed: bool,
}

type KeyedLimiter<C> =
    governor::RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Keyed per-minute limits; see the module documentation.
pub struct RateLimiter<C: Clock = DefaultClock> {
    clock: C,
    by_limit: RwLock<HashMap<u32, Arc<KeyedLimiter<C>>>>,
    last_sweep: Mutex<C::Instant>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// A limiter reading time from `clock` (tests pass a fake one).
    pub fn with_clock(clock: C) -> Self {
        let now = clock.now();
        Self {
            clock,
            by_limit: RwLock::new(HashMap::new()),
            last_sweep: Mutex::new(now),
        }
    }

    /// Counts a request for `key` against `limit` per minute (0: no limit).
    pub fn check(&self, key: String, limit: u32) -> Decision {
        let Some(per_minute) = NonZeroU32::new(limit) else {
            return Decision {
                limit,
                remaining: 0,
                reset_secs: 0,
                allowed: true,
            };
        };
        self.sweep_if_due();
        let limiter = self.limiter(per_minute);
        match limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = snapshot.quota().replenish_interval() * (limit - remaining);
                Decision {
                    limit,
                    remaining,
                    reset_secs: ceil_secs(refill),
                    allowed: true,
                }
            }
            Err(not_until) => Decision {
                limit,
                remaining: 0,
                reset_secs: ceil_secs(not_until.wait_time_from(self.clock.now())).max(1),
                allowed: false,
            },
        }
    }

    /// The limiter for `per_minute`, made on first use.
    fn limiter(&self, per_minute: NonZeroU32) -> Arc<KeyedLimiter<C>> {
        let limit = per_minute.get();
        if let Some(limiter) = self
            .by_limit
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&limit)
        {
            return limiter.clone();
        }
        self.by_limit
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(limit)
            .or_insert_with(|| {
                Arc::new(
                    governor::RateLimiter::dashmap_with_clock(
                        Quota::per_minute(per_minute),
                        self.clock.clone(),
                    )
                    .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone()
    }

    /// Sweeps when [`SWEEP_EVERY`] has passed; a request that finds another
    /// one sweeping goes on without waiting.
    fn sweep_if_due(&self) {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        let now = self.clock.now();
        if Duration::from(now.duration_since(*last)) < SWEEP_EVERY {
            return;
        }
        *last = now;
        self.sweep();
    }

    /// Forgets every key whose budget is whole again.
    pub fn sweep(&self) {
        let limiters: Vec<_> = self
            .by_limit
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for limiter in limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys currently remembered, over every limit.
    pub fn len(&self) -> usize {
        self.by_limit
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|limiter| limiter.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter() -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RateLimiter::with_clock(clock.clone()), clock)
    }

    #[test]
    fn the_request_after_the_limit_is_refused_and_others_are_unaffected() {
        let (limiter, _) = limiter();
        for n in 0..3 {
            let decision = limiter.check("ip:a".into(), 3);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, 2 - n);
            assert_eq!(decision.reset_secs, 20 * u64::from(n + 1));
        }
        let refused = limiter.check("ip:a".into(), 3);
        assert!(!refused.allowed);
        assert_eq!((refused.remaining, refused.reset_secs), (0, 20));
        assert!(limiter.check("ip:b".into(), 3).allowed, "another key");
        assert!(limiter.check("user:a".into(), 5).allowed, "another limit");
    }

    #[test]
    fn the_budget_refills_smoothly() {
        let (limiter, clock) = limiter();
        for _ in 0..60 {
            assert!(limiter.check("ip:a".into(), 60).allowed);
        }
        assert!(!limiter.check("ip:a".into(), 60).allowed);
        // One request's worth comes back every second, not all at once.
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check("ip:a".into(), 60).allowed);
        assert!(!limiter.check("ip:a".into(), 60).allowed);
        clock.advance(Duration::from_secs(60));
        let decision = limiter.check("ip:a".into(), 60);
        assert_eq!((decision.allowed, decision.remaining), (true, 59));
    }

    #[test]
    fn a_zero_limit_counts_nothing() {
        let (limiter, _) = limiter();
        for _ in 0..10 {
            assert!(limiter.check("ip:a".into(), 0).allowed);
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn keys_are_forgotten_once_their_budget_is_whole_again() {
        let (limiter, clock) = limiter();
        for n in 0..20_000 {
            limiter.check(format!("ip:{n}"), 600);
        }
        // One request a minute: its budget is whole again only after 60 s.
        limiter.check("auth:slow".into(), 1);
        assert_eq!(limiter.len(), 20_001);
        limiter.sweep();
        assert_eq!(limiter.len(), 20_001, "every budget is still spent");
        // Before a sweep is due, requests do not scan the map.
        clock.advance(Duration::from_secs(5));
        limiter.check("ip:0".into(), 600);
        assert_eq!(limiter.len(), 20_001);
        // The first request after that sweeps: the refilled keys go, the
        // slow one stays, and the request's own key comes back.
        clock.advance(SWEEP_EVERY);
        limiter.check("ip:1".into(), 600);
        assert_eq!(limiter.len(), 2);
        assert!(
            !limiter.check("auth:slow".into(), 1).allowed,
            "still counted"
        );
    }
}
