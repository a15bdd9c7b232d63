//! Receiver self-telemetry: per-signal counters, read as a snapshot by [`crate::Receiver::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::decode::Signal;

/// Counters of one signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// Export requests routed to this signal (any outcome).
    pub requests: u64,
    /// Items (spans, data points, log records) handed to the sink.
    pub items: u64,
    /// Requests refused as undecodable or invalid (400 / INVALID_ARGUMENT).
    pub refused_invalid: u64,
    /// Requests refused as too large (413 / RESOURCE_EXHAUSTED).
    pub refused_too_large: u64,
    /// Requests refused for overload: sink or memory budget (503 / UNAVAILABLE).
    pub refused_overloaded: u64,
    /// Requests refused for method, media type or encoding (405, 415 / UNIMPLEMENTED).
    pub refused_unsupported: u64,
    /// Requests that failed inside the receiver (500 / INTERNAL).
    pub refused_internal: u64,
    /// Requests whose body did not arrive in time (408 / DEADLINE_EXCEEDED).
    pub refused_timeout: u64,
    /// Items the sink rejected in partial successes.
    pub partial_rejected: u64,
}

/// A snapshot of all counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Traces.
    pub traces: SignalStats,
    /// Metrics.
    pub metrics: SignalStats,
    /// Logs.
    pub logs: SignalStats,
    /// Requests to unknown paths (404 / gRPC UNIMPLEMENTED).
    pub unknown_path: u64,
    /// Bytes reserved by requests in flight at the time of the snapshot.
    pub inflight_bytes: u64,
}

impl ReceiverStats {
    /// The counters of `signal`.
    pub fn signal(&self, signal: Signal) -> &SignalStats {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400 / INVALID_ARGUMENT.
    Invalid,
    /// 413 / RESOURCE_EXHAUSTED.
    TooLarge,
    /// 503 / UNAVAILABLE.
    Overloaded,
    /// 405, 415 / UNIMPLEMENTED.
    Unsupported,
    /// 500 / INTERNAL.
    Internal,
    /// The body did not arrive in time (DEADLINE_EXCEEDED).
    Timeout,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    items: AtomicU64,
    invalid: AtomicU64,
    too_large: AtomicU64,
    overloaded: AtomicU64,
    unsupported: AtomicU64,
    internal: AtomicU64,
    timeout: AtomicU64,
    partial_rejected: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SignalStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SignalStats {
            requests: get(&self.requests),
            items: get(&self.items),
            refused_invalid: get(&self.invalid),
            refused_too_large: get(&self.too_large),
            refused_overloaded: get(&self.overloaded),
            refused_unsupported: get(&self.unsupported),
            refused_internal: get(&self.internal),
            refused_timeout: get(&self.timeout),
            partial_rejected: get(&self.partial_rejected),
        }
    }
}

/// Live counters shared by the servers.
#[derive(Debug, Default)]
pub struct Stats {
    signals: [Counters; 3],
    unknown_path: AtomicU64,
}

impl Stats {
    fn of(&self, signal: Signal) -> &Counters {
        let [traces, metrics, logs] = &self.signals;
        match signal {
            Signal::Traces => traces,
            Signal::Metrics => metrics,
            Signal::Logs => logs,
        }
    }

    /// Counts a request routed to `signal`.
    pub fn request(&self, signal: Signal) {
        self.of(signal).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts items handed to the sink, and items it rejected.
    pub fn delivered(&self, signal: Signal, items: u64, rejected: u64) {
        let c = self.of(signal);
        c.items.fetch_add(items, Ordering::Relaxed);
        c.partial_rejected.fetch_add(rejected, Ordering::Relaxed);
    }

    /// Counts a refused request.
    pub fn refused(&self, signal: Signal, why: Refusal) {
        let c = self.of(signal);
        let counter = match why {
            Refusal::Invalid => &c.invalid,
            Refusal::TooLarge => &c.too_large,
            Refusal::Overloaded => &c.overloaded,
            Refusal::Unsupported => &c.unsupported,
            Refusal::Internal => &c.internal,
            Refusal::Timeout => &c.timeout,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request to an unknown path.
    pub fn unknown_path(&self) {
        self.unknown_path.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn snapshot(&self, inflight_bytes: usize) -> ReceiverStats {
        ReceiverStats {
            traces: self.of(Signal::Traces).snapshot(),
            metrics: self.of(Signal::Metrics).snapshot(),
            logs: self.of(Signal::Logs).snapshot(),
            unknown_path: self.unknown_path.load(Ordering::Relaxed),
            inflight_bytes: u64::try_from(inflight_bytes).unwrap_or(u64::MAX),
        }
    }
}
