//! OTLP/gRPC transport on tonic's channel (connection, HTTP/2, TLS, timeouts). The request is
//! protobuf-encoded once per batch on the capture thread; each attempt hands those bytes to
//! h2 behind their 5-byte gRPC prefix without copying them, and reads the status from the
//! response head or trailers (tonic's generated clients take a message to encode, and its
//! codec copies pre-encoded bytes into a buffer of its own: a third of the exporter thread at
//! max rate). gzip is flate2's, the same as the HTTP transport's; https uses tonic's rustls.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::http::{self, HeaderName, HeaderValue};
use tonic::client::GrpcService;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_types::StatusExt;

use crate::config::{Compression, ConfigError, OtlpEndpoint};
use crate::payload::Signal;
use crate::retry::{AttemptError, grpc_code_is_retryable};

const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

pub(crate) struct GrpcTransport {
    channels: [Option<Channel>; 3],
    /// `OTEL_EXPORTER_OTLP_HEADERS`, as ASCII gRPC metadata, without the protocol's own.
    metadata: Vec<(HeaderName, HeaderValue)>,
    gzip: bool,
    timeout: Duration,
}

impl GrpcTransport {
    /// Must run inside a tokio runtime (channels connect lazily on first use).
    pub(crate) fn new(e: &OtlpEndpoint) -> Result<Self, ConfigError> {
        let ca = match &e.ca_certificate {
            Some(path) => Some(std::fs::read(path).map_err(|err| ConfigError::Certificate {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?),
            None => None,
        };
        if let Some(path) = &e.ca_certificate {
            // Fail at start on a file without certificates rather than on first export.
            crate::tls::read_pem_certs(path)?;
        }
        let mut channels: [Option<Channel>; 3] = [None, None, None];
        for signal in Signal::ALL {
            let Some(url) = e.url(signal) else { continue };
            let bad = |reason: String| ConfigError::BadValue {
                var: format!("{}_url", signal.as_str()),
                value: url.to_string(),
                reason,
            };
            let mut endpoint = Endpoint::from_shared(url.to_string())
                .map_err(|err| bad(err.to_string()))?
                .connect_timeout(e.timeout)
                .timeout(e.timeout)
                .tcp_nodelay(true)
                .user_agent(crate::USER_AGENT)
                .map_err(|err| bad(err.to_string()))?;
            if url.starts_with("https://") {
                let mut tls = ClientTlsConfig::new();
                tls = match &ca {
                    Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                    // System roots when the image has them, plus the bundled Mozilla roots.
                    None => tls.with_enabled_roots(),
                };
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|err| bad(format!("TLS: {err}")))?;
            }
            if let Some(slot) = channels.get_mut(signal.index()) {
                *slot = Some(endpoint.connect_lazy());
            }
        }
        let mut metadata = Vec::new();
        for (k, v) in &e.headers {
            let key = MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                k.to_ascii_lowercase().as_bytes(),
            )
            .map_err(|_| ConfigError::Invalid(format!("gRPC metadata key {k:?}")))?;
            MetadataValue::<tonic::metadata::Ascii>::try_from(v.as_str())
                .map_err(|_| ConfigError::Invalid(format!("gRPC metadata {k:?}: invalid value")))?;
            let name = HeaderName::from_bytes(key.as_str().as_bytes())
                .map_err(|_| ConfigError::Invalid(format!("gRPC metadata key {k:?}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| ConfigError::Invalid(format!("gRPC metadata {k:?}: invalid value")))?;
            if !is_reserved_header(&name) {
                metadata.push((name, value));
            }
        }
        Ok(GrpcTransport {
            channels,
            metadata,
            gzip: e.compression == Compression::Gzip,
            timeout: e.timeout,
        })
    }

    /// One attempt with an already encoded request. Ok(rejected items from partial_success).
    pub(crate) async fn send(&self, signal: Signal, body: &Bytes) -> Result<u64, AttemptError> {
        let Some(Some(channel)) = self.channels.get(signal.index()) else {
            return Err(AttemptError::permanent("no URL for this signal"));
        };
        let mut channel = channel.clone();
        let message = if self.gzip {
            let packed = crate::http::gzip(body)
                .map_err(|e| AttemptError::permanent(format!("gzip: {e}")))?;
            Bytes::from(packed)
        } else {
            body.clone()
        };
        let request = self.request(signal, message)?;
        let attempt = async {
            std::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
                .await
                .map_err(|e| AttemptError::retryable(format!("gRPC connect: {e}"), None))?;
            let response = GrpcService::call(&mut channel, request)
                .await
                .map_err(|e| classify(&tonic::Status::from_error(e.into())))?;
            read_response(signal, response).await
        };
        // The channel's timeout covers the response head; this one the whole call.
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(AttemptError::retryable(
                    format!("gRPC: no answer within {:?}", self.timeout),
                    None,
                ))
            })
    }

    /// The unary call's HTTP/2 request: the message behind its 5-byte gRPC prefix, sent as two
    /// body chunks so the encoded batch is never copied (tonic's codec copies it into its own
    /// buffer, a third of the exporter thread at max rate).
    fn request(
        &self,
        signal: Signal,
        message: Bytes,
    ) -> Result<http::Request<tonic::body::Body>, AttemptError> {
        let length = u32::try_from(message.len())
            .map_err(|_| AttemptError::permanent("gRPC message above 4 GiB"))?;
        let mut prefix = [0u8; GRPC_PREFIX_LEN];
        prefix[0] = u8::from(self.gzip);
        prefix[1..].copy_from_slice(&length.to_be_bytes());
        let body = UnaryBody {
            prefix: Some(Bytes::copy_from_slice(&prefix)),
            message: Some(message),
        };
        let path = match signal {
            Signal::Traces => TRACES_PATH,
            Signal::Metrics => METRICS_PATH,
            Signal::Logs => LOGS_PATH,
        };
        let mut request = http::Request::new(tonic::body::Body::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static(path);
        *request.version_mut() = http::Version::HTTP_2;
        let headers = request.headers_mut();
        for (k, v) in &self.metadata {
            headers.insert(k.clone(), v.clone());
        }
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        if self.gzip {
            headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        }
        headers.insert("grpc-timeout", grpc_timeout(self.timeout));
        Ok(request)
    }
}

const GRPC_PREFIX_LEN: usize = 5;

/// Headers the call itself sets (tonic drops the same ones from user metadata).
fn is_reserved_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(n, "te" | "content-type" | "user-agent") || n.starts_with("grpc-")
}
/// Bound on a response body read whole (an `Export*ServiceResponse` is a few bytes).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The `grpc-timeout` header: whole milliseconds, at most the 8 digits the protocol allows.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{millis}m")).unwrap_or(HeaderValue::from_static("10000m"))
}

/// The call's outcome from the response: the gRPC status (trailers-only head, else the
/// trailers, else the HTTP status as the gRPC spec maps it) and the rejected item count of a
/// success (`partial_success`; an unreadable answer to an accepted call counts as none).
async fn read_response(
    signal: Signal,
    response: http::Response<tonic::body::Body>,
) -> Result<u64, AttemptError> {
    let (head, body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&head.headers) {
        return match status.code() {
            tonic::Code::Ok => Ok(0),
            _ => Err(classify(&status)),
        };
    }
    if head.status != http::StatusCode::OK {
        return Err(classify(&status_of_http(head.status)));
    }
    let collected = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| classify(&tonic::Status::from_error(e)))?;
    let status = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        .unwrap_or_else(|| {
            tonic::Status::unknown("protocol error: the response has no grpc-status trailer")
        });
    if status.code() != tonic::Code::Ok {
        return Err(classify(&status));
    }
    let bytes = collected.to_bytes();
    Ok(match unary_message(&bytes) {
        Some(message) => crate::http::rejected_items(signal, message, false),
        None => 0,
    })
}

/// The message of an uncompressed length-prefixed gRPC response, if it is one.
fn unary_message(body: &[u8]) -> Option<&[u8]> {
    let (prefix, rest) = body.split_at_checked(GRPC_PREFIX_LEN)?;
    let (&compressed, length) = prefix.split_first()?;
    let length = usize::try_from(u32::from_be_bytes(length.try_into().ok()?)).ok()?;
    if compressed != 0 {
        return None;
    }
    rest.get(..length)
}

/// A gRPC status for an HTTP error without one (gRPC's http-grpc-status-mapping.md).
fn status_of_http(status: http::StatusCode) -> tonic::Status {
    use http::StatusCode as H;
    let code = match status {
        H::BAD_REQUEST => tonic::Code::Internal,
        H::UNAUTHORIZED => tonic::Code::Unauthenticated,
        H::FORBIDDEN => tonic::Code::PermissionDenied,
        H::NOT_FOUND => tonic::Code::Unimplemented,
        H::TOO_MANY_REQUESTS | H::BAD_GATEWAY | H::SERVICE_UNAVAILABLE | H::GATEWAY_TIMEOUT => {
            tonic::Code::Unavailable
        }
        _ => tonic::Code::Unknown,
    };
    tonic::Status::new(code, format!("HTTP {status} without a gRPC status"))
}

/// Maps a gRPC status to retryable / permanent, with the RetryInfo delay if any.
pub(crate) fn classify(status: &tonic::Status) -> AttemptError {
    let retry_info = status.get_details_retry_info();
    let delay = retry_info.as_ref().and_then(|r| r.retry_delay);
    let message = format!("gRPC {:?}: {}", status.code(), status.message());
    // tonic reports a broken connection (reset, EOF mid-call) as UNKNOWN with the transport
    // error as source; the server said nothing, so it is a connection failure: retry.
    let transport_failure =
        status.code() == tonic::Code::Unknown && std::error::Error::source(status).is_some();
    if transport_failure || grpc_code_is_retryable(status.code(), retry_info.is_some()) {
        AttemptError::retryable(message, delay)
    } else {
        AttemptError::permanent(message)
    }
}

/// A unary request body: the gRPC prefix, then the message, each handed to h2 as it is.
struct UnaryBody {
    prefix: Option<Bytes>,
    message: Option<Bytes>,
}

impl HttpBody for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.prefix.take() {
            Some(prefix) => Some(prefix),
            None => self.message.take(),
        };
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.message.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| b.len() as u64);
        SizeHint::with_exact(len(&self.prefix) + len(&self.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn unary_message_reads_one_uncompressed_frame() {
        assert_eq!(
            unary_message(&[0, 0, 0, 0, 2, 8, 1, 9]),
            Some(&[8u8, 1][..])
        );
        assert_eq!(unary_message(&[0, 0, 0, 0, 0]), Some(&[][..]));
        assert_eq!(unary_message(&[1, 0, 0, 0, 1, 8]), None, "compressed");
        assert_eq!(unary_message(&[0, 0, 0, 0, 3, 8]), None, "short");
        assert_eq!(unary_message(&[0, 0, 0]), None, "no prefix");
        assert_eq!(unary_message(&[0, 255, 255, 255, 255]), None);
    }

    #[test]
    fn http_errors_map_to_grpc_codes() {
        let code = |s: u16| status_of_http(http::StatusCode::from_u16(s).unwrap()).code();
        assert_eq!(code(503), tonic::Code::Unavailable);
        assert_eq!(code(429), tonic::Code::Unavailable);
        assert_eq!(code(404), tonic::Code::Unimplemented);
        assert_eq!(code(401), tonic::Code::Unauthenticated);
        assert_eq!(code(500), tonic::Code::Unknown);
        assert!(classify(&status_of_http(http::StatusCode::BAD_GATEWAY)).retryable);
        assert!(!classify(&status_of_http(http::StatusCode::FORBIDDEN)).retryable);
    }

    #[test]
    fn timeout_header_is_bounded_milliseconds() {
        assert_eq!(grpc_timeout(Duration::from_secs(10)), "10000m");
        assert_eq!(grpc_timeout(Duration::ZERO), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(u64::MAX / 4)), "99999999m");
    }

    #[test]
    fn protocol_headers_are_not_user_metadata() {
        for reserved in [
            "te",
            "content-type",
            "user-agent",
            "grpc-timeout",
            "grpc-encoding",
        ] {
            assert!(
                is_reserved_header(&HeaderName::from_static(reserved)),
                "{reserved}"
            );
        }
        assert!(!is_reserved_header(&HeaderName::from_static(
            "authorization"
        )));
    }

    #[test]
    fn resource_exhausted_needs_retry_info() {
        let plain = tonic::Status::resource_exhausted("too big");
        assert!(!classify(&plain).retryable);
        let with_info = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "busy",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        let c = classify(&with_info);
        assert!(c.retryable);
        assert_eq!(c.retry_after, Some(Duration::from_secs(3)));
        assert!(classify(&tonic::Status::unavailable("down")).retryable);
        assert!(!classify(&tonic::Status::invalid_argument("bad")).retryable);
        assert!(!classify(&tonic::Status::unknown("server said so")).retryable);
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        assert!(classify(&broken).retryable);
    }
}
