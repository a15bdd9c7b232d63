//! A discard OTLP/gRPC trace sink that only counts spans and requests. It replaces the Python
//! sink in benchmarks: at tens of thousands of spans per second the Python sink (which turns
//! every request into JSON) would itself be the bottleneck and steal one of the two cores.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Counters {
    spans: AtomicU64,
}

struct Discard(Arc<Counters>);

#[tonic::async_trait]
impl TraceService for Discard {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind sink")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(Discard(counters.clone()))
            .max_decoding_message_size(64 * 1024 * 1024);
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
