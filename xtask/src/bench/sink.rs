//! A discard OTLP/gRPC trace sink that only counts spans and requests. It replaces the Python
//! sink in benchmarks: at tens of thousands of spans per second the Python sink (which turns
//! every request into JSON) would itself be the bottleneck and steal one of the two cores.
//!
//! It does not decode the spans either. It runs in the xtask process, on the same two cores
//! as nginx, wrk and sonde; a full `opentelemetry-proto` decode (one allocation per attribute
//! key and value) would take CPU that a real, remote backend never takes from the node, and
//! make tracing look dearer than it is. So the request is read through three minimal prost
//! messages that walk down to the spans and count them (a span's bytes are kept as a shared
//! slice of the request buffer, never parsed; prost skips every other field), served by
//! tonic's generic unary server on the OTLP trace `Export` path.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    thread,
};

use anyhow::{Context, Result};
use tonic::{
    Request, Response, Status,
    codegen::{Body, BoxFuture, Service, StdError, http},
    server::{Grpc, NamedService, UnaryService},
};

/// `ExportTraceServiceRequest` down to the spans: `resource_spans = 1`.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans`: `scope_spans = 2` (the resource is skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

/// `ScopeSpans`: `spans = 2`, each left as its undecoded bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<bytes::Bytes>,
}

/// `ExportTraceServiceResponse` without `partial_success`: everything accepted.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {}

impl ExportRequest {
    fn spans(&self) -> u64 {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum()
    }
}

#[derive(Default)]
struct Counters {
    spans: AtomicU64,
}

/// The OTLP trace service: counts, then answers success.
#[derive(Clone)]
struct Discard(Arc<Counters>);

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl UnaryService<ExportRequest> for Discard {
    type Response = ExportResponse;
    type Future = std::future::Ready<Result<Response<ExportResponse>, Status>>;

    fn call(&mut self, request: Request<ExportRequest>) -> Self::Future {
        let spans = request.get_ref().spans();
        self.0.spans.fetch_add(spans, Ordering::Relaxed);
        std::future::ready(Ok(Response::new(ExportResponse {})))
    }
}

impl<B> Service<http::Request<B>> for Discard
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let service = self.clone();
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("only trace Export").into_http()) });
        }
        Box::pin(async move {
            let mut grpc =
                Grpc::new(tonic_prost::ProstCodec::<ExportResponse, ExportRequest>::default())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES);
            Ok(grpc.unary(service, req).await)
        })
    }
}

impl NamedService for Discard {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

/// The running sink; stopped when dropped.
pub struct DiscardSink {
    addr: SocketAddr,
    counters: Arc<Counters>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DiscardSink {
    /// Starts on 127.0.0.1 (free port) on its own single-threaded runtime, pinned to `cpu`.
    pub fn start(cpu: Option<usize>) -> Result<DiscardSink> {
        Self::start_on("127.0.0.1:0".parse()?, cpu)
    }

    /// Starts on `addr`, on its own single-threaded runtime, pinned to `cpu`.
    pub fn start_on(addr: SocketAddr, cpu: Option<usize>) -> Result<DiscardSink> {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("bind sink on {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = Discard(counters.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || {
                if let Some(c) = cpu {
                    super::pin_current_thread(c);
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let serve = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(
                            tokio_stream::wrappers::TcpListenerStream::new(listener),
                            async {
                                let _ = rx.await;
                            },
                        );
                    if let Err(e) = serve.await {
                        eprintln!("[bench] discard sink stopped: {e}");
                    }
                });
            })?;
        ready_rx.recv().context("sink thread died")??;
        Ok(DiscardSink {
            addr,
            counters,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>` for `--otlp-endpoint` with `--otlp-protocol grpc`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> u64 {
        self.counters.spans.load(Ordering::Relaxed)
    }
}

impl Drop for DiscardSink {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::loadgen::{self, LoadConfig};

    #[test]
    fn the_minimal_messages_count_the_spans_of_a_full_request() {
        use opentelemetry_proto::tonic::{
            collector::trace::v1::ExportTraceServiceRequest,
            common::v1::{AnyValue, KeyValue, any_value::Value},
            resource::v1::Resource,
            trace::v1::{ResourceSpans as Rs, ScopeSpans as Ss, Span},
        };
        use prost::Message;
        let kv = |k: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue("v".into())),
            }),
            ..Default::default()
        };
        let span = |i: usize| Span {
            name: format!("span {i}"),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![kv("http.request.method"), kv("url.path")],
            ..Default::default()
        };
        let rs = |scopes: &[usize]| Rs {
            resource: Some(Resource {
                attributes: vec![kv("service.name")],
                ..Default::default()
            }),
            scope_spans: scopes
                .iter()
                .map(|n| Ss {
                    spans: (0..*n).map(span).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let full = ExportTraceServiceRequest {
            resource_spans: vec![rs(&[3, 0, 5]), rs(&[]), rs(&[1])],
        };
        let counted = ExportRequest::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(counted.spans(), 9);
        assert_eq!(ExportResponse {}.encode_to_vec(), Vec::<u8>::new());
    }

    #[test]
    fn counts_every_span_the_generator_had_accepted() {
        let sink = DiscardSink::start(None).unwrap();
        for rate in [None, Some(2000.0)] {
            let before = sink.spans();
            let cfg = LoadConfig {
                endpoint: sink.endpoint(),
                spans_per_request: 64,
                rate,
                duration: Duration::from_millis(500),
                concurrency: 2,
            };
            let r = loadgen::run(&cfg, None).unwrap();
            assert_eq!(r.requests_failed, 0, "{r:?}");
            assert!(r.spans_accepted >= 64, "{r:?}");
            assert_eq!(sink.spans() - before, r.spans_accepted);
            if rate.is_some() {
                // 2000 spans/s for 0.5 s in requests of 64 spans: about 16 requests.
                assert!((640..=1472).contains(&r.spans_accepted), "{r:?}");
            }
        }
    }
}
