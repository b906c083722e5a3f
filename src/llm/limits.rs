//! How many streamed replies one user may hold open at once. A streamed
//! reply holds an upstream connection and a task for as long as the model
//! writes, so one user must not be able to take them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
