//! OTLP exporter: bounded queue, batching, retries, gRPC/HTTP/stdout outputs.
//!
//! Every span sonde builds from kernel events, and every span, metric point and log record it
//! receives from SDKs, leaves through [`Exporter`]. Data flow:
//!
//! `send_*` (non-blocking: measure with prost `encoded_len`, or for `send_traces` when every
//! trace output sends protobuf, encode there in batch-sized requests; reserve bytes in each
//! output's budget) -> per-output, per-signal FIFO lane -> worker task (batch by items / bytes / time)
//! -> transport (tonic gRPC, hyper HTTP protobuf/JSON, stdout text/JSON) with retries ->
//! counters ([`ExporterStats`]).
//!
//! Invariants:
//! - Every item accepted by `send_*` ends in exactly one counter per output: exported,
//!   rejected (partial success), failed (permanent refusal), or dropped (retries exhausted or
//!   the shutdown deadline passed). Items refused at the door count as `dropped_queue_full`.
//! - Each output's memory is bounded by `queue_max_bytes`, batches in flight included; when
//!   full the *newest* data is refused (`Err(Rejected)`), nothing queued is evicted.
//! - Outputs are independent: a dead destination fills only its own queue. `send_*` returns
//!   `Err(Rejected)` only when no output took the data (with one output: when it was full);
//!   for spans encoded in several batches, it counts the batches no output took.
//! - A signal whose URL an OTLP output lacks is not sent there and not counted.
//! - A [`Reservation`] (taken by the receiver before it answers OK) holds queue room until the
//!   data is sent with it, so what a receiver accepted is never refused for a full queue later;
//!   an unused reservation gives its room back when dropped.
//!
//! Why not crate `opentelemetry-otlp`: it exports the SDK's `SpanData` and builds its own
//! requests; sonde forwards protos it already has (from eBPF and from its receiver) and needs a
//! byte-bounded queue with per-output drop accounting, fan-out and retry stats, which that
//! crate does not expose. Why not a backoff crate: the OTLP rules (Retry-After / RetryInfo
//! capping, give-up accounting, shutdown deadline) are most of the logic; the exponential part is
//! ten lines (`retry.rs`).

mod config;
mod grpc;
mod http;
pub mod json;
mod payload;
mod queue;
mod retry;
mod stats;
pub mod text;
mod tls;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{
    Compression, ConfigError, DEFAULT_TIMEOUT, ExporterConfig, OtlpEndpoint, Output, Protocol,
    RetryPolicy,
};
pub use payload::{
    Request, Signal, count_data_points, count_log_records, count_spans, encode_own_traces,
};
pub use retry::{
    AttemptError, grpc_code_is_retryable, http_status_is_retryable, parse_retry_after,
};
pub use stats::{ExporterStats, OutputStats, SignalStats};

use payload::Payload;
use queue::Entry;
use worker::{OutputShared, Settings, ShutdownWatch};

/// `User-Agent` of the OTLP requests (the OTLP spec asks exporters to identify themselves).
pub const USER_AGENT: &str = concat!("sonde-otlp-export/", env!("CARGO_PKG_VERSION"));

/// `send_*` was refused: every output's queue was full (or the exporter is shut down). The data
/// was dropped and counted; a receiver should answer 503 / UNAVAILABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("exporter queue full: {items} items ({bytes} bytes) dropped")]
pub struct Rejected {
    /// Items (spans, data points, log records) dropped.
    pub items: u64,
    /// Their encoded size.
    pub bytes: usize,
}

/// Queue room held for data a receiver has accepted; see [`Exporter::reserve`]. Dropping it
/// unused gives the room back.
pub struct Reservation {
    inner: Arc<Inner>,
    signal: Signal,
    /// (output index, bytes held there).
    held: Vec<(usize, usize)>,
}

impl Reservation {
    /// The signal the room was reserved for.
    pub fn signal(&self) -> Signal {
        self.signal
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("signal", &self.signal)
            .field("held", &self.held)
            .finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for (i, b) in self.held.drain(..) {
            if let Some(o) = self.inner.outputs.get(i) {
                o.budget.release(b);
            }
        }
    }
}

/// Cheap-to-clone handle on the running exporter.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

struct Inner {
    outputs: Vec<Arc<OutputShared>>,
    shutdown_tx: watch::Sender<Option<Instant>>,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    rejected_sends: AtomicU64,
    /// Every trace output sends protobuf: [`Exporter::send_traces`] encodes on the caller's
    /// thread (see [`payload::EncodedTraces`]).
    encode_traces_early: bool,
    /// The batch bounds, for spans encoded early (already cut to batch size).
    batch_max_items: u64,
    batch_max_bytes: usize,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("outputs", &self.inner.outputs.len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Exporter {
    /// Validates the configuration and spawns one worker task per output and signal (must be
    /// called inside a tokio runtime). With no outputs everything sent is accepted and discarded.
    pub fn start(config: ExporterConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let mut outputs = Vec::with_capacity(config.outputs.len());
        for (i, o) in config.outputs.iter().enumerate() {
            outputs.push(Arc::new(OutputShared::new(i, o, config.queue_max_bytes)?));
        }
        let settings = Settings {
            batch_max_items: config.batch_max_items,
            batch_max_bytes: config.batch_max_bytes,
            batch_timeout: config.batch_timeout,
            retry: config.retry,
        };
        let mut trace_outputs = outputs.iter().filter(|o| o.accepts(Signal::Traces));
        let encode_traces_early =
            trace_outputs.clone().next().is_some() && trace_outputs.all(|o| o.takes_protobuf());
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let mut tasks = Vec::new();
        for out in &outputs {
            for signal in Signal::ALL {
                if !out.accepts(signal) {
                    continue;
                }
                // OTLP outputs keep several batches in flight (a round trip per batch would
                // cap throughput); stdout outputs write one batch at a time, in order.
                let workers = if out.kind.starts_with("otlp") {
                    config.max_concurrent_batches.max(1)
                } else {
                    1
                };
                for _ in 0..workers {
                    let watch = ShutdownWatch::new(shutdown_rx.clone(), config.shutdown_timeout);
                    tasks.push(runtime.spawn(worker::run_lane(
                        Arc::clone(out),
                        signal,
                        settings,
                        watch,
                    )));
                }
            }
        }
        Ok(Exporter {
            inner: Arc::new(Inner {
                outputs,
                shutdown_tx,
                closed: AtomicBool::new(false),
                tasks: Mutex::new(tasks),
                rejected_sends: AtomicU64::new(0),
                encode_traces_early,
                batch_max_items: u64::try_from(config.batch_max_items).unwrap_or(u64::MAX),
                batch_max_bytes: config.batch_max_bytes,
            }),
        })
    }

    /// Queues spans for every output. Non-blocking. When every trace output sends protobuf
    /// the spans are encoded here, on the caller's thread, and freed here.
    pub fn send_traces(&self, spans: Vec<ResourceSpans>) -> Result<(), Rejected> {
        if !self.inner.encode_traces_early || spans.is_empty() {
            return self.send(Payload::Traces(spans));
        }
        self.send_encoded(spans.as_slice())
    }

    /// Queues sonde's own spans for every output. Non-blocking. When every trace output
    /// sends protobuf they are written straight to protobuf here, never built as OTLP
    /// structs; otherwise they are converted and queued as [`Exporter::send_traces`] does.
    pub fn send_own_traces(&self, batches: Vec<sonde_span::OwnBatch>) -> Result<(), Rejected> {
        if batches.is_empty() {
            return Ok(());
        }
        if !self.inner.encode_traces_early {
            let spans = batches.into_iter().map(sonde_span::OwnBatch::into_otlp);
            return self.send(Payload::Traces(spans.collect()));
        }
        self.send_encoded(&payload::OwnTree::new(&batches))
    }

    /// Encodes `tree` in batch-sized requests (an encoded entry over the bounds would have to
    /// be decoded again to be cut) and queues them.
    fn send_encoded<T: payload::SpanTree + ?Sized>(&self, tree: &T) -> Result<(), Rejected> {
        let batches = payload::encode_traces_in_batches(
            tree,
            self.inner.batch_max_items,
            self.inner.batch_max_bytes,
        );
        let mut refused: Option<Rejected> = None;
        for batch in batches {
            if let Err(r) = self.send(Payload::EncodedTraces(batch)) {
                let sum = refused.get_or_insert(Rejected { items: 0, bytes: 0 });
                sum.items = sum.items.saturating_add(r.items);
                sum.bytes = sum.bytes.saturating_add(r.bytes);
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Queues metrics for every output. Non-blocking.
    pub fn send_metrics(&self, metrics: Vec<ResourceMetrics>) -> Result<(), Rejected> {
        self.send(Payload::Metrics(metrics))
    }

    /// Queues log records for every output. Non-blocking.
    pub fn send_logs(&self, logs: Vec<ResourceLogs>) -> Result<(), Rejected> {
        self.send(Payload::Logs(logs))
    }

    /// Whether `bytes` more (prost `encoded_len` of the resource messages) would be accepted
    /// now by at least one output, so a receiver can refuse with 503 / UNAVAILABLE up front.
    pub fn has_room(&self, bytes: usize) -> bool {
        if self.inner.closed.load(Ordering::Relaxed) {
            return false;
        }
        self.inner.outputs.is_empty() || self.inner.outputs.iter().any(|o| o.budget.has_room(bytes))
    }

    /// Reserves room for `bytes` (prost `encoded_len`) of `signal` in every output that has
    /// it, so that data sent later with [`Exporter::send_reserved`] is never refused for a full
    /// queue. `None` (answer 503 / UNAVAILABLE) when no output has room or the exporter is
    /// shutting down.
    pub fn reserve(&self, signal: Signal, bytes: usize) -> Option<Reservation> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return None;
        }
        let mut held = Vec::with_capacity(self.inner.outputs.len());
        let mut offered = false;
        for (i, o) in self.inner.outputs.iter().enumerate() {
            if !o.accepts(signal) {
                continue;
            }
            offered = true;
            let alone = bytes > o.budget.max() && o.budget.try_reserve_alone(bytes);
            if alone || o.budget.try_reserve(bytes) {
                held.push((i, bytes));
            }
        }
        if offered && held.is_empty() {
            return None;
        }
        Some(Reservation {
            inner: Arc::clone(&self.inner),
            signal,
            held,
        })
    }

    /// Queues data admitted by `reservation` (taken for the same signal). Outputs it holds room
    /// in always take the data, even if the exporter has started shutting down since (it is
    /// flushed within the deadline); outputs it holds none in take it if they have room now.
    pub fn send_reserved(
        &self,
        payload: Request,
        mut reservation: Reservation,
    ) -> Result<(), Rejected> {
        let payload = Payload::from(payload);
        let held = std::mem::take(&mut reservation.held);
        if payload.is_empty() {
            for (i, b) in held {
                if let Some(o) = self.inner.outputs.get(i) {
                    o.budget.release(b);
                }
            }
            return Ok(());
        }
        let signal = payload.signal();
        let items = payload.items();
        let bytes = payload.encoded_len();
        let mut takers: Vec<&Arc<OutputShared>> = Vec::with_capacity(self.inner.outputs.len());
        for (i, o) in self.inner.outputs.iter().enumerate() {
            if !o.accepts(signal) {
                continue;
            }
            match held.iter().find(|(h, _)| *h == i) {
                Some(&(_, reserved)) => {
                    if bytes <= reserved {
                        o.budget.release(reserved - bytes);
                    } else {
                        o.budget.force_reserve(bytes - reserved);
                    }
                    takers.push(o);
                }
                None if !self.inner.closed.load(Ordering::Relaxed)
                    && o.budget.try_reserve(bytes) =>
                {
                    takers.push(o);
                }
                None => {
                    stats::bump(&o.counters(signal).dropped_queue_full_items, items);
                    o.note_queue_full(signal, items);
                }
            }
        }
        let Some((last, others)) = takers.split_last() else {
            if held.is_empty() && !self.inner.outputs.iter().any(|o| o.accepts(signal)) {
                return Ok(());
            }
            self.inner.rejected_sends.fetch_add(1, Ordering::Relaxed);
            return Err(Rejected { items, bytes });
        };
        fan_out(last, others, signal, payload, items, bytes);
        Ok(())
    }

    /// Counters per output and summed.
    pub fn stats(&self) -> ExporterStats {
        let mut s = ExporterStats {
            rejected_sends_total: self.inner.rejected_sends.load(Ordering::Relaxed),
            ..ExporterStats::default()
        };
        for o in &self.inner.outputs {
            let os = o.stats();
            stats::sum_into(&mut s.traces, &os.traces);
            stats::sum_into(&mut s.metrics, &os.metrics);
            stats::sum_into(&mut s.logs, &os.logs);
            s.queue_bytes = s.queue_bytes.saturating_add(os.queue_bytes);
            s.outputs.push(os);
        }
        s
    }

    /// Stops accepting, flushes everything queued within `deadline` (retrying as long as the
    /// deadline allows), then stops the workers; what is left is dropped and counted.
    /// Calling it again (from any clone) returns at once.
    pub async fn shutdown(&self, deadline: Duration) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let at = worker::later(Instant::now(), deadline);
        self.inner.shutdown_tx.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(at);
                true
            } else {
                false
            }
        });
        let tasks = match self.inner.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        // A little grace past the deadline for workers to account for their last batch.
        let hard = worker::later(at, Duration::from_millis(100));
        for mut task in tasks {
            if tokio::time::timeout_at(hard, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        for o in &self.inner.outputs {
            o.drop_leftovers();
        }
    }

    fn send(&self, payload: Payload) -> Result<(), Rejected> {
        if payload.is_empty() {
            return Ok(());
        }
        let signal = payload.signal();
        let items = payload.items();
        let bytes = payload.encoded_len();
        if self.inner.closed.load(Ordering::Relaxed) {
            self.inner.rejected_sends.fetch_add(1, Ordering::Relaxed);
            for o in self.inner.outputs.iter().filter(|o| o.accepts(signal)) {
                stats::bump(&o.counters(signal).dropped_queue_full_items, items);
            }
            return Err(Rejected { items, bytes });
        }
        let mut takers: Vec<&Arc<OutputShared>> = Vec::with_capacity(self.inner.outputs.len());
        let mut offered = false;
        for o in self.inner.outputs.iter().filter(|o| o.accepts(signal)) {
            offered = true;
            if o.budget.try_reserve(bytes) {
                takers.push(o);
            } else {
                stats::bump(&o.counters(signal).dropped_queue_full_items, items);
                o.note_queue_full(signal, items);
            }
        }
        if !offered {
            return Ok(());
        }
        let Some((last, others)) = takers.split_last() else {
            self.inner.rejected_sends.fetch_add(1, Ordering::Relaxed);
            return Err(Rejected { items, bytes });
        };
        fan_out(last, others, signal, payload, items, bytes);
        Ok(())
    }
}

/// Queues one payload on every output that takes it: a clone for each but the last, which
/// gets the original.
fn fan_out(
    last: &OutputShared,
    others: &[&Arc<OutputShared>],
    signal: Signal,
    payload: Payload,
    items: u64,
    bytes: usize,
) {
    for o in others {
        o.push(
            signal,
            Entry {
                payload: payload.clone(),
                items,
                bytes,
            },
        );
    }
    last.push(
        signal,
        Entry {
            payload,
            items,
            bytes,
        },
    );
}
