//! What one user may take of the upstreams: how many streamed replies at
//! once (each holds an upstream connection and a task for as long as the
//! model writes), and how many tokens per minute (each costs money).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Counts open streams per user.
#[derive(Debug, Clone)]
pub struct StreamLimiter {
    max_per_user: usize,
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl StreamLimiter {
    pub fn new(max_per_user: usize) -> Self {
        Self {
            max_per_user: max_per_user.max(1),
            open: Arc::default(),
        }
    }

    /// A permit for one more stream of `user`, or `None` when they hold the maximum.
    pub fn try_acquire(&self, user: Uuid) -> Option<StreamPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(user).or_insert(0);
        if *count >= self.max_per_user {
            return None;
        }
        *count += 1;
        Some(StreamPermit {
            user,
            open: self.open.clone(),
        })
    }

    /// Streams `user` holds open now.
    pub fn open_for(&self, user: Uuid) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&user).copied().unwrap_or(0)
    }
}

/// Upstream tokens per user and minute, in fixed one-minute windows counted
/// in this process. A request is refused once the user's window is spent;
/// the reply that crosses the limit is not cut short, since its size is only
/// known at its end.
#[derive(Debug, Clone)]
pub struct TokenBudget {
    /// 0: no limit.
    per_minute: u64,
    windows: Arc<Mutex<HashMap<Uuid, (Instant, u64)>>>,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Windows past their minute are dropped when the map grows past this.
const SWEEP_AT: usize = 10_000;

impl TokenBudget {
    pub fn new(per_minute: u64) -> Self {
        Self {
            per_minute,
            windows: Arc::default(),
        }
    }

    /// `Err(seconds until the window resets)` when `user` has spent this minute's tokens.
    pub fn check(&self, user: Uuid) -> Result<(), u64> {
        self.check_at(user, Instant::now())
    }

    /// Counts `tokens` used by `user`.
    pub fn spend(&self, user: Uuid, tokens: u64) {
        self.spend_at(user, tokens, Instant::now());
    }

    fn check_at(&self, user: Uuid, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        match windows.get(&user) {
            Some((started, used))
                if now.duration_since(*started) < WINDOW && *used >= self.per_minute =>
            {
                let left = WINDOW.saturating_sub(now.duration_since(*started));
                Err(left.as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    fn spend_at(&self, user: Uuid, tokens: u64, now: Instant) {
        if self.per_minute == 0 || tokens == 0 {
            return;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > SWEEP_AT {
            windows.retain(|_, (started, _)| now.duration_since(*started) < WINDOW);
        }
        let (started, used) = windows.entry(user).or_insert((now, 0));
        if now.duration_since(*started) >= WINDOW {
            *started = now;
            *used = 0;
        }
        *used = used.saturating_add(tokens);
    }
}

/// One open stream; released when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    user: Uuid,
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_past_the_token_budget_waits_for_the_next_minute_and_others_do_not() {
        let budget = TokenBudget::new(100);
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let start = Instant::now();
        assert!(budget.check_at(alice, start).is_ok());
        budget.spend_at(alice, 60, start);
        assert!(budget.check_at(alice, start).is_ok(), "60 of 100");
        budget.spend_at(alice, 60, start);
        let retry = budget
            .check_at(alice, start + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(retry, 40);
        assert!(budget.check_at(bob, start).is_ok());
        let next_minute = start + Duration::from_secs(61);
        assert!(budget.check_at(alice, next_minute).is_ok());
        assert!(
            TokenBudget::new(0).check_at(alice, start).is_ok(),
            "0: no limit"
        );
    }

    #[test]
    fn a_user_gets_at_most_the_limit_and_others_are_unaffected() {
        let limiter = StreamLimiter::new(2);
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let first = limiter.try_acquire(alice).expect("first");
        let _second = limiter.try_acquire(alice).expect("second");
        assert!(limiter.try_acquire(alice).is_none());
        assert!(limiter.try_acquire(bob).is_some());
        drop(first);
        assert_eq!(limiter.open_for(alice), 1);
        assert!(limiter.try_acquire(alice).is_some());
    }
}
