//! Fixed-window rate limits per key (client IP, user), one minute wide.
//!
//! In memory: each API replica counts on its own, so behind N replicas the
//! effective limit is up to N times the configured one. Good enough to stop
//! brute force and runaway clients; a shared store would make it exact.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Expired windows are swept when the map grows past this.
const SWEEP_AT: usize = 10_000;

/// The outcome of counting one request against one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset_secs: u64,
    pub allowed: bool,
}

#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    /// Counts a request for `key` against `limit` per minute.
    pub fn check(&self, key: String, limit: u32) -> Decision {
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            // A poisoned lock must not lock everyone out.
            return Decision {
                limit,
                remaining: limit,
                reset_secs: 60,
                allowed: true,
            };
        };
        if windows.len() > SWEEP_AT {
            windows.retain(|_, (started, _)| now.duration_since(*started) < WINDOW);
        }
        let (started, count) = windows.entry(key).or_insert((now, 0));
        if now.duration_since(*started) >= WINDOW {
            *started = now;
            *count = 0;
        }
        let allowed = *count < limit;
        if allowed {
            *count += 1;
        }
        let reset = WINDOW.saturating_sub(now.duration_since(*started));
        Decision {
            limit,
            remaining: limit.saturating_sub(*count),
            reset_secs: reset.as_secs().max(1),
            allowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_after_the_limit_is_refused_and_others_are_unaffected() {
        let limiter = RateLimiter::default();
        for n in 0..3 {
            let decision = limiter.check("ip:a".into(), 3);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, 2 - n);
        }
        assert!(!limiter.check("ip:a".into(), 3).allowed);
        assert!(limiter.check("ip:b".into(), 3).allowed);
    }
}
