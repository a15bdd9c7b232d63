//! The byte-bounded queue of one output: a shared byte budget (reserved on `push`, released
//! when the batch holding the bytes is finished, so in-flight batches count) and one FIFO lane
//! per signal, each drained by its own worker.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::payload::Payload;

/// Byte budget shared by the lanes of one output.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Reserves `bytes` if they fit; never over-commits, even with concurrent callers.
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(bytes) else {
                return false;
            };
            if next > self.max {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Reserves `bytes` larger than the whole bound when nothing else is queued (one oversized
    /// request at a time, rather than refusing it forever).
    pub(crate) fn try_reserve_alone(&self, bytes: usize) -> bool {
        self.used
            .compare_exchange(0, bytes, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes `bytes` even past the bound: only for data a reservation already admitted (its
    /// measured size grew by the resource attributes added after admission).
    pub(crate) fn force_reserve(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn has_room(&self, bytes: usize) -> bool {
        self.used
            .load(Ordering::Relaxed)
            .checked_add(bytes)
            .is_some_and(|n| n <= self.max)
    }

    pub(crate) fn release(&self, bytes: usize) {
        // Saturating: a release never exceeds what was reserved, but be defensive.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |cur| {
                Some(cur.saturating_sub(bytes))
            });
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// One queued `send_*` call.
#[derive(Debug)]
pub(crate) struct Entry {
    pub payload: Payload,
    pub items: u64,
    pub bytes: usize,
}

/// FIFO of one signal on one output.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    entries: Mutex<VecDeque<Entry>>,
    pub notify: Notify,
}

impl Lane {
    pub(crate) fn push(&self, entry: Entry) {
        if let Ok(mut q) = self.entries.lock() {
            q.push_back(entry);
        }
        self.notify.notify_one();
    }

    /// Puts back the unsent remainder of a split entry, ahead of everything else.
    pub(crate) fn push_front(&self, entry: Entry) {
        if let Ok(mut q) = self.entries.lock() {
            q.push_front(entry);
        }
    }

    /// Pops the front entry if `fits(entry)` says it may join the current batch.
    pub(crate) fn pop_if(&self, fits: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        let mut q = self.entries.lock().ok()?;
        if q.front().is_some_and(fits) {
            q.pop_front()
        } else {
            None
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.lock().map(|q| q.is_empty()).unwrap_or(true)
    }

    /// Removes everything (used when the shutdown deadline has passed).
    pub(crate) fn drain(&self) -> Vec<Entry> {
        match self.entries.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_strict() {
        let b = Budget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert!(b.has_room(40));
        assert!(b.try_reserve(40));
        assert!(!b.try_reserve(1));
        b.release(100);
        assert_eq!(b.used(), 0);
        assert!(!b.try_reserve(usize::MAX));
    }

    #[test]
    fn lane_is_fifo() {
        let lane = Lane::default();
        for i in 0..3u64 {
            lane.push(Entry {
                payload: Payload::Traces(Vec::new()),
                items: i,
                bytes: 0,
            });
        }
        assert_eq!(lane.pop_if(|_| true).map(|e| e.items), Some(0));
        assert!(lane.pop_if(|_| false).is_none());
        assert_eq!(lane.drain().len(), 2);
        assert!(lane.is_empty());
    }
}
