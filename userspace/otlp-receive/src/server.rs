//! Listeners and connections: binding, the accept loops, per-connection HTTP/1 and HTTP/2
//! settings (timeouts, stream limits), a cap on open connections, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::core::Core;
use crate::{Peer, ReceiveError};

/// Concurrent HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Which protocol a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "OTLP/gRPC",
            Protocol::Http => "OTLP/HTTP",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Protocol::Grpc => "--otlp-grpc-addr",
            Protocol::Http => "--otlp-http-addr",
        }
    }
}

/// Binds a listener, with an error that says what to do about it.
pub async fn bind(addr: SocketAddr, protocol: Protocol) -> Result<TcpListener, ReceiveError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
            format!("address {addr} already in use: set {}", protocol.flag())
        } else {
            format!(
                "cannot listen on {addr} ({}): {source}; set {}",
                protocol.name(),
                protocol.flag()
            )
        };
        ReceiveError::Bind { addr, hint, source }
    })
}

/// Serves `listener` until `shutdown` turns true, then waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    protocol: Protocol,
    core: Arc<Core>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(core.limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(64 * 1024);
    if protocol == Protocol::Grpc {
        builder = builder.http2_only();
    }
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(core.limits.max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "{}: accept failed", protocol.name());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let core = Arc::clone(&core);
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let core = Arc::clone(&core);
            route(protocol, core, peer, req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "{}: in-flight requests still running after {:?}",
            protocol.name(),
            SHUTDOWN_GRACE
        );
    }
}

fn route(
    protocol: Protocol,
    core: Arc<Core>,
    peer: Peer,
    req: hyper::Request<Incoming>,
) -> std::pin::Pin<
    Box<dyn Future<Output = Result<hyper::Response<Body>, std::convert::Infallible>> + Send>,
> {
    use http_body_util::BodyExt;
    match protocol {
        Protocol::Http => Box::pin(async move {
            crate::http::handle(core, peer, req)
                .await
                .map(|r| r.map(|b| b.map_err(|never| match never {}).boxed()))
        }),
        Protocol::Grpc => Box::pin(async move {
            crate::grpc::handle(core, peer, req)
                .await
                .map(|r| r.map(BodyExt::boxed))
        }),
    }
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;
