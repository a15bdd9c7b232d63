//! The in-flight memory budget: bytes being read, inflated and decoded across all requests.
//! A request that cannot get its bytes is answered 503 / UNAVAILABLE so the client retries later.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shared counter of bytes in flight, with a limit.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation that can grow.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            held: 0,
        }
    }
}

/// Bytes held by one request; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    held: usize,
}

impl Reservation {
    /// Reserves `n` more bytes. Fails when that would exceed the limit, unless this request is
    /// the only one holding bytes: a single request larger than the whole budget still makes
    /// progress instead of being told to retry forever (the message limit bounds it).
    pub fn grow(&mut self, n: usize) -> bool {
        let mut current = self.budget.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = current.checked_add(n) else {
                return false;
            };
            if next > self.budget.limit && current != self.held {
                return false;
            }
            match self.budget.used.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.held = self.held.saturating_add(n);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_and_releases() {
        let budget = Budget::new(100);
        let mut a = budget.reservation();
        assert!(a.grow(60));
        let mut b = budget.reservation();
        assert!(!b.grow(50), "60 + 50 is over 100");
        assert!(b.grow(40));
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_lone_request_may_exceed_the_budget() {
        let budget = Budget::new(10);
        let mut a = budget.reservation();
        assert!(a.grow(8));
        assert!(a.grow(8), "only request in flight");
        let mut b = budget.reservation();
        assert!(!b.grow(1));
        drop(a);
        assert!(b.grow(1));
    }
}
