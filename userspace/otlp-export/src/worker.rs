//! One output: its transport, its queue (budget + per-signal lanes), its counters, and the
//! per-signal worker loop that batches (items, bytes, time) and delivers with retries.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{ConfigError, Output, Protocol, RetryPolicy};
use crate::grpc::GrpcTransport;
use crate::http::HttpTransport;
use crate::payload::{Payload, Request, Signal};
use crate::queue::{Budget, Entry, Lane};
use crate::retry::{AttemptError, Backoff};
use crate::stats::{Counters, OutputStats, bump};

/// `from + d`, saturating at a year from `from` (durations come from configuration).
pub(crate) fn later(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(from)
}

/// Below this, a retry during shutdown is not worth it.
const MIN_SHUTDOWN_RETRY_WAIT: Duration = Duration::from_millis(20);

/// Per-attempt timeout of the stdout outputs.
const STDOUT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) enum Transport {
    Grpc(GrpcTransport),
    Http(Box<HttpTransport>),
    Text,
    Json,
}

/// A batch encoded for its transport, re-sendable on retry.
pub(crate) struct Prepared {
    bytes: Bytes,
    raw_len: usize,
}

impl Transport {
    fn new(output: &Output) -> Result<Self, ConfigError> {
        Ok(match output {
            Output::Otlp(e) => match e.protocol {
                Protocol::Grpc => Transport::Grpc(GrpcTransport::new(e)?),
                Protocol::HttpProtobuf | Protocol::HttpJson => {
                    Transport::Http(Box::new(HttpTransport::new(e)?))
                }
            },
            Output::Text => Transport::Text,
            Output::Json => Transport::Json,
        })
    }

    /// Whether this transport sends protobuf (so spans may be queued already encoded).
    pub(crate) fn takes_protobuf(&self) -> bool {
        match self {
            Transport::Grpc(_) => true,
            Transport::Http(h) => h.sends_protobuf(),
            Transport::Text | Transport::Json => false,
        }
    }

    fn prepare(&self, payload: Payload) -> Result<Prepared, AttemptError> {
        match self {
            Transport::Grpc(_) => {
                let raw = payload.into_protobuf();
                Ok(Prepared {
                    raw_len: raw.len(),
                    bytes: Bytes::from(raw),
                })
            }
            Transport::Http(h) => {
                let body = h.encode(payload)?;
                Ok(Prepared {
                    bytes: body.bytes,
                    raw_len: body.raw_len,
                })
            }
            Transport::Text => {
                let mut s = String::new();
                match &payload {
                    Payload::Traces(v) => crate::text::format_spans(v, &mut s),
                    Payload::EncodedTraces(e) => crate::text::format_spans(&e.decode(), &mut s),
                    Payload::Metrics(v) => crate::text::format_metrics(v, &mut s),
                    Payload::Logs(v) => crate::text::format_logs(v, &mut s),
                }
                Ok(Prepared {
                    raw_len: s.len(),
                    bytes: Bytes::from(s),
                })
            }
            Transport::Json => {
                let mut out = Vec::new();
                crate::json::encode_line(&Request::from(payload), &mut out)
                    .map_err(|e| AttemptError::permanent(format!("JSON encoding: {e}")))?;
                Ok(Prepared {
                    raw_len: out.len(),
                    bytes: Bytes::from(out),
                })
            }
        }
    }

    async fn send(&self, signal: Signal, p: &Prepared) -> Result<u64, AttemptError> {
        match self {
            Transport::Grpc(g) => g.send(signal, &p.bytes).await,
            Transport::Http(h) => {
                h.send(
                    signal,
                    &crate::http::Body {
                        bytes: p.bytes.clone(),
                        raw_len: p.raw_len,
                    },
                )
                .await
            }
            // The whole batch was formatted into one buffer: one write and one flush per batch.
            Transport::Text | Transport::Json => {
                let mut out = std::io::stdout().lock();
                out.write_all(&p.bytes)
                    .and_then(|()| out.flush())
                    .map(|()| 0)
                    .map_err(|e| AttemptError::permanent(format!("stdout: {e}")))
            }
        }
    }
}

/// Batch bounds and retry policy shared by all lanes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub batch_max_items: usize,
    pub batch_max_bytes: usize,
    pub batch_timeout: Duration,
    pub retry: RetryPolicy,
}

/// What the worker of one signal holds right now (for accounting if it is aborted).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    pub items: AtomicU64,
    pub bytes: AtomicUsize,
}

pub(crate) struct OutputShared {
    pub index: usize,
    pub kind: &'static str,
    pub target: String,
    pub budget: Budget,
    pub lanes: [Lane; 3],
    pub accepts: [bool; 3],
    pub counters: [Counters; 3],
    pub in_flight: [InFlight; 3],
    attempt_timeout: Duration,
    transport: Transport,
    health: std::sync::Mutex<Health>,
}

/// How often a failing output (or a full queue) is reported while it lasts.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Whether an output is failing, for the operator's log: a warning when it starts failing,
/// one every [`WARN_EVERY`] while it keeps failing (with counts), a line when it recovers.
#[derive(Debug, Default)]
struct Health {
    failing_since: Option<Instant>,
    failed_attempts: u64,
    last_warn: Option<Instant>,
    dropped_at_start: u64,
    last_queue_full_warn: Option<Instant>,
}

impl OutputShared {
    /// Items dropped or refused on this output so far, every signal and reason.
    fn lost_items(&self) -> u64 {
        Signal::ALL
            .iter()
            .map(|s| {
                let st = self.counters(*s).snapshot();
                st.dropped_items_total()
                    .saturating_add(st.failed_items_total)
            })
            .sum()
    }

    /// An attempt failed (it may be retried).
    fn note_failure(&self, error: &AttemptError) {
        let lost = self.lost_items();
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        let now = Instant::now();
        h.failed_attempts = h.failed_attempts.saturating_add(1);
        match h.failing_since {
            None => {
                h.failing_since = Some(now);
                h.last_warn = Some(now);
                h.dropped_at_start = lost;
                tracing::warn!(
                    "output {} ({}) is failing: {error}; telemetry stays queued and is retried",
                    self.kind,
                    self.target
                );
            }
            Some(since)
                if h.last_warn
                    .is_none_or(|w| now.duration_since(w) >= WARN_EVERY) =>
            {
                h.last_warn = Some(now);
                tracing::warn!(
                    "output {} ({}) still failing after {} s: {} failed attempts, {} items dropped, {} bytes queued; last error: {error}",
                    self.kind,
                    self.target,
                    now.duration_since(since).as_secs(),
                    h.failed_attempts,
                    lost.saturating_sub(h.dropped_at_start),
                    self.budget.used()
                );
            }
            Some(_) => {}
        }
    }

    /// An attempt succeeded: if the output was failing, say it recovered.
    fn note_success(&self) {
        let lost = self.lost_items();
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        if let Some(since) = h.failing_since.take() {
            tracing::info!(
                "output {} ({}) recovered after {} s ({} failed attempts, {} items dropped meanwhile)",
                self.kind,
                self.target,
                since.elapsed().as_secs(),
                h.failed_attempts,
                lost.saturating_sub(h.dropped_at_start)
            );
            h.failed_attempts = 0;
        }
    }

    /// Items were refused because this output's queue is full (rate-limited warning).
    pub(crate) fn note_queue_full(&self, signal: Signal, items: u64) {
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        let now = Instant::now();
        if h.last_queue_full_warn
            .is_none_or(|w| now.duration_since(w) >= WARN_EVERY)
        {
            h.last_queue_full_warn = Some(now);
            drop(h);
            tracing::warn!(
                "output {} ({}) queue full ({} bytes): {items} {} items dropped now, {} dropped on this output so far",
                self.kind,
                self.target,
                self.budget.max(),
                signal.as_str(),
                self.lost_items()
            );
        }
    }

    pub(crate) fn new(
        index: usize,
        output: &Output,
        queue_max_bytes: usize,
    ) -> Result<Self, ConfigError> {
        let (accepts, target) = match output {
            Output::Otlp(e) => (
                [
                    e.traces_url.is_some(),
                    e.metrics_url.is_some(),
                    e.logs_url.is_some(),
                ],
                e.traces_url
                    .clone()
                    .or_else(|| e.metrics_url.clone())
                    .or_else(|| e.logs_url.clone())
                    .unwrap_or_default(),
            ),
            Output::Text | Output::Json => ([true; 3], "stdout".to_string()),
        };
        Ok(OutputShared {
            index,
            kind: output.kind(),
            target,
            budget: Budget::new(queue_max_bytes),
            lanes: Default::default(),
            accepts,
            counters: Default::default(),
            in_flight: Default::default(),
            attempt_timeout: match output {
                Output::Otlp(e) => e.timeout,
                Output::Text | Output::Json => STDOUT_TIMEOUT,
            },
            transport: Transport::new(output)?,
            health: std::sync::Mutex::new(Health::default()),
        })
    }

    /// Whether this output sends protobuf (see [`Transport::takes_protobuf`]).
    pub(crate) fn takes_protobuf(&self) -> bool {
        self.transport.takes_protobuf()
    }

    pub(crate) fn accepts(&self, signal: Signal) -> bool {
        self.accepts.get(signal.index()).copied().unwrap_or(false)
    }

    pub(crate) fn counters(&self, signal: Signal) -> &Counters {
        // Signal::index() is always 0..3, and the array has 3 entries.
        let [t, m, l] = &self.counters;
        match signal {
            Signal::Traces => t,
            Signal::Metrics => m,
            Signal::Logs => l,
        }
    }

    fn lane(&self, signal: Signal) -> &Lane {
        let [t, m, l] = &self.lanes;
        match signal {
            Signal::Traces => t,
            Signal::Metrics => m,
            Signal::Logs => l,
        }
    }

    fn in_flight(&self, signal: Signal) -> &InFlight {
        let [t, m, l] = &self.in_flight;
        match signal {
            Signal::Traces => t,
            Signal::Metrics => m,
            Signal::Logs => l,
        }
    }

    /// Queues an entry whose bytes the caller already reserved in the budget.
    pub(crate) fn push(&self, signal: Signal, entry: Entry) {
        self.lane(signal).push(entry);
    }

    pub(crate) fn stats(&self) -> OutputStats {
        OutputStats {
            index: self.index,
            kind: self.kind,
            target: self.target.clone(),
            traces: self.counters(Signal::Traces).snapshot(),
            metrics: self.counters(Signal::Metrics).snapshot(),
            logs: self.counters(Signal::Logs).snapshot(),
            queue_bytes: self.budget.used() as u64,
            queue_max_bytes: self.budget.max() as u64,
        }
    }

    /// After the workers are gone: whatever is still queued or was in flight is dropped and counted.
    pub(crate) fn drop_leftovers(&self) {
        for signal in Signal::ALL {
            let c = self.counters(signal);
            for e in self.lane(signal).drain() {
                bump(&c.dropped_retry_exhausted_items, e.items);
                self.budget.release(e.bytes);
            }
            let f = self.in_flight(signal);
            let items = f.items.swap(0, Ordering::AcqRel);
            let bytes = f.bytes.swap(0, Ordering::AcqRel);
            bump(&c.dropped_retry_exhausted_items, items);
            self.budget.release(bytes);
        }
    }
}

/// The shutdown deadline as the workers see it.
pub(crate) struct ShutdownWatch {
    rx: watch::Receiver<Option<Instant>>,
    /// Set when every `Exporter` handle is gone without a `shutdown` call.
    orphan_deadline: Option<Instant>,
    default_timeout: Duration,
}

impl ShutdownWatch {
    pub(crate) fn new(rx: watch::Receiver<Option<Instant>>, default_timeout: Duration) -> Self {
        ShutdownWatch {
            rx,
            orphan_deadline: None,
            default_timeout,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.orphan_deadline.or(*self.rx.borrow())
    }

    /// Resolves when shutdown begins; never if it already has.
    async fn begun(&mut self) {
        if self.deadline().is_some() {
            return std::future::pending().await;
        }
        if self.rx.changed().await.is_err() {
            self.orphan_deadline = Some(later(Instant::now(), self.default_timeout));
        }
    }
}

/// The worker of one signal on one output: runs until shutdown has drained its lane.
pub(crate) async fn run_lane(
    out: Arc<OutputShared>,
    signal: Signal,
    settings: Settings,
    mut shutdown: ShutdownWatch,
) {
    let lane = out.lane(signal);
    let max_items = u64::try_from(settings.batch_max_items).unwrap_or(u64::MAX);
    let max_bytes = settings.batch_max_bytes;
    loop {
        // Wait for the first entry of the next batch.
        let first = loop {
            if let Some(e) = lane.pop_if(|_| true) {
                break e;
            }
            if shutdown.deadline().is_some() {
                return;
            }
            tokio::select! {
                _ = lane.notify.notified() => {}
                _ = shutdown.begun() => {}
            }
        };
        let first = split_oversized(&out, lane, first, max_items, max_bytes);
        let mut payload = first.payload;
        let mut items = first.items;
        let mut bytes = first.bytes;
        let flush_at = later(Instant::now(), settings.batch_timeout);
        while items < max_items && bytes < max_bytes {
            let next = lane.pop_if(|e| {
                items.saturating_add(e.items) <= max_items
                    && bytes.saturating_add(e.bytes) <= max_bytes
            });
            if let Some(e) = next {
                items = items.saturating_add(e.items);
                bytes = bytes.saturating_add(e.bytes);
                if let Err(other) = payload.append(e.payload) {
                    // Cannot happen (one lane holds one signal); do not lose it anyway.
                    deliver(
                        &out,
                        signal,
                        other,
                        e.items,
                        e.bytes,
                        &settings,
                        &mut shutdown,
                    )
                    .await;
                }
                continue;
            }
            if !lane.is_empty() || shutdown.deadline().is_some() {
                break; // the next entry does not fit, or we are flushing for shutdown
            }
            tokio::select! {
                _ = lane.notify.notified() => {}
                _ = tokio::time::sleep_until(flush_at) => break,
                _ = shutdown.begun() => {}
            }
        }
        deliver(
            &out,
            signal,
            payload,
            items,
            bytes,
            &settings,
            &mut shutdown,
        )
        .await;
    }
}

/// An entry above the batch bounds (say an SDK request of 10 000 spans) is cut: the head
/// becomes this batch, the rest goes back to the front of the lane.
fn split_oversized(
    out: &OutputShared,
    lane: &Lane,
    mut entry: Entry,
    max_items: u64,
    max_bytes: usize,
) -> Entry {
    let too_many = entry.items > max_items;
    let too_big = entry.bytes > max_bytes && entry.items > 1;
    if !too_many && !too_big {
        return entry;
    }
    let by_bytes = if too_big {
        let share = u128::from(entry.items) * max_bytes as u128 / (entry.bytes as u128).max(1);
        u64::try_from(share).unwrap_or(u64::MAX)
    } else {
        u64::MAX
    };
    let take = max_items.min(by_bytes).max(1);
    let head = entry.payload.split_front(take);
    let head_items = head.items();
    let head_bytes = head.encoded_len().min(entry.bytes);
    let rest = Entry {
        items: entry.items.saturating_sub(head_items),
        bytes: entry.bytes.saturating_sub(head_bytes),
        payload: entry.payload,
    };
    if rest.payload.is_empty() {
        out.budget.release(rest.bytes);
    } else {
        lane.push_front(rest);
    }
    entry.payload = head;
    entry.items = head_items;
    entry.bytes = head_bytes;
    entry
}

/// Sends one batch, retrying transient failures; always accounts for every item and releases
/// the batch's bytes from the budget.
async fn deliver(
    out: &OutputShared,
    signal: Signal,
    payload: Payload,
    items: u64,
    bytes: usize,
    settings: &Settings,
    shutdown: &mut ShutdownWatch,
) {
    // Several workers of one lane may each have a batch in flight: add, then subtract.
    let flight = out.in_flight(signal);
    flight.items.fetch_add(items, Ordering::AcqRel);
    flight.bytes.fetch_add(bytes, Ordering::AcqRel);
    attempt_all(out, signal, payload, items, settings, shutdown).await;
    flight.items.fetch_sub(items, Ordering::AcqRel);
    flight.bytes.fetch_sub(bytes, Ordering::AcqRel);
    out.budget.release(bytes);
}

async fn attempt_all(
    out: &OutputShared,
    signal: Signal,
    payload: Payload,
    items: u64,
    settings: &Settings,
    shutdown: &mut ShutdownWatch,
) {
    let c = out.counters(signal);
    let what = signal.as_str();
    let prepared = match out.transport.prepare(payload) {
        Ok(p) => p,
        Err(e) => {
            bump(&c.failed_items, items);
            tracing::warn!(output = out.kind, target = %out.target, signal = what, items, error = %e, "cannot encode batch; dropped");
            return;
        }
    };
    let started = Instant::now();
    let mut backoff = Backoff::new(settings.retry);
    loop {
        let mut attempt_timeout = out.attempt_timeout;
        if let Some(deadline) = shutdown.deadline() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bump(&c.dropped_retry_exhausted_items, items);
                tracing::warn!(output = out.kind, target = %out.target, signal = what, items, "shutdown deadline passed; batch dropped");
                return;
            }
            attempt_timeout = attempt_timeout.min(left);
        }
        let sent =
            tokio::time::timeout(attempt_timeout, out.transport.send(signal, &prepared)).await;
        let err = match sent {
            Ok(Ok(rejected)) => {
                out.note_success();
                let rejected = rejected.min(items);
                bump(&c.exported_items, items.saturating_sub(rejected));
                bump(&c.rejected_items, rejected);
                bump(&c.exported_bytes, prepared.raw_len as u64);
                bump(&c.exported_requests, 1);
                if rejected > 0 {
                    tracing::debug!(
                        output = out.kind,
                        signal = what,
                        rejected,
                        "partial success"
                    );
                }
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => AttemptError::retryable(
                format!("no answer within {} ms", attempt_timeout.as_millis()),
                None,
            ),
        };
        out.note_failure(&err);
        if !err.retryable {
            bump(&c.failed_items, items);
            tracing::warn!(output = out.kind, target = %out.target, signal = what, items, error = %err, "export refused permanently; batch dropped");
            return;
        }
        let mut wait = backoff.next_wait(err.retry_after);
        let now = Instant::now();
        if now.saturating_duration_since(started).saturating_add(wait) > settings.retry.max_elapsed
        {
            bump(&c.dropped_retry_exhausted_items, items);
            tracing::warn!(output = out.kind, target = %out.target, signal = what, items, error = %err, "gave up retrying; batch dropped");
            return;
        }
        if let Some(deadline) = shutdown.deadline()
            && later(now, wait) >= deadline
        {
            // Shutting down: keep trying until the deadline, at a pace that fits into it.
            let half = deadline.saturating_duration_since(now) / 2;
            if half < MIN_SHUTDOWN_RETRY_WAIT {
                bump(&c.dropped_retry_exhausted_items, items);
                tracing::warn!(output = out.kind, target = %out.target, signal = what, items, error = %err, "still failing at the shutdown deadline; batch dropped");
                return;
            }
            wait = half;
        }
        bump(&c.retries, 1);
        tracing::debug!(output = out.kind, target = %out.target, signal = what, items, error = %err, wait_ms = wait.as_millis() as u64, "export failed; will retry");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // Shutting down: one more attempt right away rather than sleeping past the deadline.
            _ = shutdown.begun() => {}
        }
    }
}
