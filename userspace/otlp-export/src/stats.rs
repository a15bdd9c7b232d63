//! Self-telemetry of the exporter: lock-free counters per output and signal, and the plain
//! snapshot [`ExporterStats`] the daemon exposes as `sonde_exporter_<field>` (the `_total`
//! fields are counters, `queue_bytes` / `queue_max_bytes` gauges; labels `output`, `signal`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::payload::Signal;

/// Counters of one signal on one output. Field names are the metric names without the
/// `sonde_exporter_` prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// Items (spans, data points, log records) the destination accepted.
    pub exported_items_total: u64,
    /// Uncompressed encoded bytes of the requests the destination accepted.
    pub exported_bytes_total: u64,
    /// Export requests that succeeded.
    pub exported_requests_total: u64,
    /// Items refused permanently (HTTP 400 etc., gRPC INVALID_ARGUMENT etc.): dropped.
    pub failed_items_total: u64,
    /// Items dropped because the queue was full (the newest are dropped) or the exporter was shut down.
    pub dropped_queue_full_items_total: u64,
    /// Items dropped after retrying for `max_elapsed`, or still undelivered at the shutdown deadline.
    pub dropped_retry_exhausted_items_total: u64,
    /// Export attempts that were retried.
    pub retries_total: u64,
    /// Items the destination reported as rejected in a `partial_success`.
    pub rejected_items_total: u64,
}

impl SignalStats {
    /// Everything dropped, whatever the reason (queue full, retries exhausted).
    pub fn dropped_items_total(&self) -> u64 {
        self.dropped_queue_full_items_total
            .saturating_add(self.dropped_retry_exhausted_items_total)
    }

    fn add(&mut self, o: &SignalStats) {
        self.exported_items_total = self
            .exported_items_total
            .saturating_add(o.exported_items_total);
        self.exported_bytes_total = self
            .exported_bytes_total
            .saturating_add(o.exported_bytes_total);
        self.exported_requests_total = self
            .exported_requests_total
            .saturating_add(o.exported_requests_total);
        self.failed_items_total = self.failed_items_total.saturating_add(o.failed_items_total);
        self.dropped_queue_full_items_total = self
            .dropped_queue_full_items_total
            .saturating_add(o.dropped_queue_full_items_total);
        self.dropped_retry_exhausted_items_total = self
            .dropped_retry_exhausted_items_total
            .saturating_add(o.dropped_retry_exhausted_items_total);
        self.retries_total = self.retries_total.saturating_add(o.retries_total);
        self.rejected_items_total = self
            .rejected_items_total
            .saturating_add(o.rejected_items_total);
    }
}

/// One output's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// Position in `ExporterConfig::outputs`.
    pub index: usize,
    /// `otlp-grpc`, `otlp-http-protobuf`, `otlp-http-json`, `text` or `json`.
    pub kind: &'static str,
    /// Where it goes (traces URL, or `stdout`).
    pub target: String,
    /// Traces counters.
    pub traces: SignalStats,
    /// Metrics counters.
    pub metrics: SignalStats,
    /// Logs counters.
    pub logs: SignalStats,
    /// Bytes held now (queued plus in flight).
    pub queue_bytes: u64,
    /// Byte bound of the queue.
    pub queue_max_bytes: u64,
}

impl OutputStats {
    /// Counters of one signal.
    pub fn signal(&self, signal: Signal) -> &SignalStats {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }

    /// All signals summed.
    pub fn all_signals(&self) -> SignalStats {
        let mut s = self.traces;
        s.add(&self.metrics);
        s.add(&self.logs);
        s
    }
}

/// Snapshot returned by `Exporter::stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExporterStats {
    /// Per output, in configuration order.
    pub outputs: Vec<OutputStats>,
    /// Sums over outputs, per signal.
    pub traces: SignalStats,
    /// Sums over outputs.
    pub metrics: SignalStats,
    /// Sums over outputs.
    pub logs: SignalStats,
    /// Sum of the outputs' `queue_bytes`.
    pub queue_bytes: u64,
    /// Calls to `send_*` refused entirely (every output's queue was full, or after shutdown).
    pub rejected_sends_total: u64,
}

impl ExporterStats {
    /// Everything summed over outputs and signals.
    pub fn total(&self) -> SignalStats {
        let mut s = self.traces;
        s.add(&self.metrics);
        s.add(&self.logs);
        s
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub exported_items: AtomicU64,
    pub exported_bytes: AtomicU64,
    pub exported_requests: AtomicU64,
    pub failed_items: AtomicU64,
    pub dropped_queue_full_items: AtomicU64,
    pub dropped_retry_exhausted_items: AtomicU64,
    pub retries: AtomicU64,
    pub rejected_items: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> SignalStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SignalStats {
            exported_items_total: g(&self.exported_items),
            exported_bytes_total: g(&self.exported_bytes),
            exported_requests_total: g(&self.exported_requests),
            failed_items_total: g(&self.failed_items),
            dropped_queue_full_items_total: g(&self.dropped_queue_full_items),
            dropped_retry_exhausted_items_total: g(&self.dropped_retry_exhausted_items),
            retries_total: g(&self.retries),
            rejected_items_total: g(&self.rejected_items),
        }
    }
}

pub(crate) fn sum_into(total: &mut SignalStats, s: &SignalStats) {
    total.add(s);
}
