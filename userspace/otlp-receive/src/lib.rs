//! OTLP receiver: gRPC and HTTP servers answering per the OTLP specification.
//!
//! Applications with an OpenTelemetry SDK export traces, metrics and logs to sonde on their
//! node as they would to a node-local Collector: OTLP/gRPC on port 4317 and OTLP/HTTP
//! (`POST /v1/traces|metrics|logs`, protobuf or JSON, optionally gzip) on port 4318. Each
//! request is decoded, validated and handed to the daemon's [`Sink`]; the answer follows the
//! table "OTLP receiver answers" in REFERENCE.md exactly (200/OK, partial success, 400, 404,
//! 405, 413, 415, 503 + Retry-After / UNAVAILABLE + RetryInfo, 500).
//!
//! Hostile input: bodies are bounded by [`ReceiverConfig::max_message_bytes`] before they are
//! read (Content-Length) and while they are read and inflated (gzip bombs stop at the cap);
//! [`ReceiverConfig::max_inflight_bytes`] bounds the bytes being read and decoded across all
//! requests, including bytes being inflated; header and body reads time out ([`Limits`]); open
//! connections are capped. Large and gzip bodies are decoded on the blocking pool.
//!
//! OTLP/JSON goes through the `with-serde` derives of `opentelemetry-proto` after a fix-up pass
//! (`json`): snake_case keys, enum names and `null`s are normalised first, because the derives
//! would ignore or silently drop them. Known limit: the derives `flatten` the protobuf oneofs,
//! so a malformed value inside one (e.g. `"asInt": "x"`) becomes an absent value instead of a 400.
//!
//! Code map: [`decode`] is the pure decode path (`decode_http`, fuzzed), `json` the OTLP/JSON
//! fix-ups, `http` and `grpc` the two protocols, `core` what they share (body reading,
//! budget, sink hand-off), `server` the listeners, `status` the `google.rpc` messages.
//!
//! Why not tonic's server for gRPC: its codec reports an oversized message as OUT_OF_RANGE
//! (clients retry forever) and an undecodable one as INTERNAL (OTLP wants INVALID_ARGUMENT),
//! and it cannot share the memory budget. The gRPC framing is a 5-byte prefix, so `grpc`
//! reads it itself over hyper's HTTP/2 and calls the tonic-generated service traits.
//! Why not `tonic-types` for `google.rpc.Status`/`RetryInfo`: three tiny prost messages, and
//! the HTTP side needs their JSON form, which tonic-types does not provide.
//!
//! Decode cost (`cargo run --release -p sonde-otlp-receive --example decode_throughput`, one
//! core, 512-span batches with 10 attributes each): about 500-750k spans/s protobuf, 490-670k
//! protobuf+gzip, 175k OTLP/JSON.
//!
//! Fuzzing: `cargo xtask fuzz --target decode_http` (or `decode_grpc`, the gRPC framing
//! `split_grpc_frame` plus the protobuf decode path).

pub mod budget;
mod core;
pub mod decode;
mod grpc;
mod http;
mod json;
mod server;
pub mod stats;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use decode::{
    DecodeError, Decoded, Encoding, Format, Signal, SignalRequest, decode_http, split_grpc_frame,
};
pub use grpc::GrpcHandler;
pub use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
pub use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use stats::{ReceiverStats, SignalStats};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Default OTLP/gRPC listen address.
pub const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 4317);
/// Default OTLP/HTTP listen address.
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 4318);
/// Default message limit after decompression (the OTLP spec asks for at least 64 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Default in-flight budget.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 256 * 1024 * 1024;

/// Where and how much to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// OTLP/gRPC listen address; `None` turns gRPC off.
    pub grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP listen address; `None` turns HTTP off.
    pub http_addr: Option<SocketAddr>,
    /// Largest message after decompression.
    pub max_message_bytes: usize,
    /// Bytes being read and decoded at once across all requests; above it requests are
    /// answered 503 + Retry-After / UNAVAILABLE + RetryInfo.
    pub max_inflight_bytes: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            grpc_addr: Some(DEFAULT_GRPC_ADDR),
            http_addr: Some(DEFAULT_HTTP_ADDR),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
        }
    }
}

/// Timeouts and caps against slow or greedy clients. [`Receiver::start`] uses the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest time to receive request headers (HTTP/1; HTTP/2 uses keep-alive pings).
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_idle_timeout: Duration,
    /// Longest time to receive a whole request body.
    pub body_total_timeout: Duration,
    /// Open connections per listener; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(15),
            body_idle_timeout: Duration::from_secs(15),
            body_total_timeout: Duration::from_secs(120),
            max_connections: 4096,
        }
    }
}

/// Who sent a request: the peer socket address (the daemon maps it to a local process).
pub type Peer = std::net::SocketAddr;

/// The sink's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Everything taken.
    Accepted,
    /// Some items rejected; the client is told and does not retry.
    Partial {
        /// Rejected spans, data points or log records.
        rejected: i64,
        /// Why, for the client.
        message: String,
    },
    /// Nothing taken; the client should retry after `retry_after`.
    Overloaded {
        /// Suggested wait.
        retry_after: Duration,
    },
}

/// Where decoded requests go. Called on the receiver's tasks: it must not block for long.
pub trait Sink: Send + Sync + 'static {
    /// A traces request; `encoded_len` is its protobuf/JSON size after decompression.
    fn traces(&self, peer: Peer, request: ExportTraceServiceRequest, encoded_len: usize) -> Admit;
    /// A metrics request.
    fn metrics(
        &self,
        peer: Peer,
        request: ExportMetricsServiceRequest,
        encoded_len: usize,
    ) -> Admit;
    /// A logs request.
    fn logs(&self, peer: Peer, request: ExportLogsServiceRequest, encoded_len: usize) -> Admit;
}

/// Errors starting the receiver.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// A listener could not be bound.
    #[error("{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What happened and what to do.
        hint: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("invalid OTLP receiver configuration: {0}")]
    Config(String),
}

/// A running receiver. Dropping it stops the listeners without waiting.
pub struct Receiver {
    core: Arc<core::Core>,
    grpc_local_addr: Option<SocketAddr>,
    http_local_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("grpc_local_addr", &self.grpc_local_addr)
            .field("http_local_addr", &self.http_local_addr)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Binds both listeners, then serves in spawned tokio tasks until [`Receiver::shutdown`].
    pub async fn start(config: ReceiverConfig, sink: Arc<dyn Sink>) -> Result<Self, ReceiveError> {
        Receiver::start_with_limits(config, Limits::default(), sink).await
    }

    /// [`Receiver::start`] with non-default timeouts and connection cap.
    pub async fn start_with_limits(
        config: ReceiverConfig,
        limits: Limits,
        sink: Arc<dyn Sink>,
    ) -> Result<Self, ReceiveError> {
        if config.max_message_bytes == 0 {
            return Err(ReceiveError::Config(
                "max_message_bytes must be above 0".to_owned(),
            ));
        }
        if config.max_inflight_bytes == 0 {
            return Err(ReceiveError::Config(
                "max_inflight_bytes must be above 0".to_owned(),
            ));
        }
        let grpc = match config.grpc_addr {
            Some(addr) => Some(server::bind(addr, server::Protocol::Grpc).await?),
            None => None,
        };
        let http = match config.http_addr {
            Some(addr) => Some(server::bind(addr, server::Protocol::Http).await?),
            None => None,
        };
        let local =
            |l: &Option<tokio::net::TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let (grpc_local_addr, http_local_addr) = (local(&grpc), local(&http));
        let core = Arc::new(core::Core {
            sink,
            stats: stats::Stats::default(),
            budget: budget::Budget::new(config.max_inflight_bytes),
            max_message_bytes: config.max_message_bytes,
            limits,
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for (listener, protocol) in [
            (grpc, server::Protocol::Grpc),
            (http, server::Protocol::Http),
        ] {
            if let Some(listener) = listener {
                tasks.push(tokio::spawn(server::serve(
                    listener,
                    protocol,
                    Arc::clone(&core),
                    stopped.clone(),
                )));
            }
        }
        if let Some(addr) = grpc_local_addr {
            tracing::info!(%addr, "OTLP/gRPC receiver listening");
        }
        if let Some(addr) = http_local_addr {
            tracing::info!(%addr, "OTLP/HTTP receiver listening");
        }
        Ok(Receiver {
            core,
            grpc_local_addr,
            http_local_addr,
            stop,
            tasks,
        })
    }

    /// The bound gRPC address (useful with port 0).
    pub fn grpc_local_addr(&self) -> Option<SocketAddr> {
        self.grpc_local_addr
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_local_addr(&self) -> Option<SocketAddr> {
        self.http_local_addr
    }

    /// The gRPC services on this receiver's sink, statistics and limits, for mounting on
    /// another tonic server (e.g. a Unix socket). Requests served that way skip this
    /// receiver's framing checks and memory budget; tonic's own codec limits apply.
    pub fn grpc_handler(&self) -> GrpcHandler {
        GrpcHandler::new(Arc::clone(&self.core))
    }

    /// Counters per signal.
    pub fn stats(&self) -> ReceiverStats {
        self.core.stats.snapshot(self.core.budget.used())
    }

    /// Stops accepting connections and waits (up to 10 s) for in-flight requests.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "OTLP receiver task failed");
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
