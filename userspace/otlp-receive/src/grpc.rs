//! OTLP/gRPC: the three unary `Export` methods over HTTP/2.
//!
//! The gRPC framing is read here rather than by tonic's server codec, because OTLP needs
//! answers tonic's codec does not give: RESOURCE_EXHAUSTED (not OUT_OF_RANGE) for an oversized
//! message, INVALID_ARGUMENT (not INTERNAL) for an undecodable one, a cap on inflated size
//! checked while inflating, and the memory budget. The business logic still lives in
//! implementations of the tonic-generated `TraceService`, `MetricsService` and `LogsService`
//! traits ([`GrpcHandler`]), which can also be mounted on a plain tonic server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::Peer;
use crate::core::{Core, Delivered, Refused};
use crate::decode::{
    DecodeError, Encoding, Format, GRPC_FRAME_HEADER as FRAME_HEADER, Signal, SignalRequest,
    split_grpc_frame, validate,
};
use crate::stats::Refusal;
use crate::status::{self, Code};

const GRPC_ENCODING: &str = "grpc-encoding";
const GRPC_ACCEPT_ENCODING: &str = "grpc-accept-encoding";
const ACCEPTED_ENCODINGS: &str = "gzip,identity";

/// Response body of a unary gRPC call: one message frame, then trailers.
#[derive(Debug, Default)]
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// Set by the receiver on requests it decoded and validated itself.
#[derive(Debug, Clone, Copy)]
struct Prevalidated {
    peer: Peer,
    encoded_len: usize,
    items: u64,
}

/// The OTLP gRPC services, implemented on the receiver's shared state.
#[derive(Clone)]
pub struct GrpcHandler {
    core: Arc<Core>,
}

impl GrpcHandler {
    pub(crate) fn new(core: Arc<Core>) -> GrpcHandler {
        GrpcHandler { core }
    }

    fn export_any<T: Message>(
        &self,
        request: tonic::Request<T>,
        wrap: fn(T) -> SignalRequest,
    ) -> Result<Delivered, tonic::Status> {
        let pre = request.extensions().get::<Prevalidated>().copied();
        let remote = request.remote_addr();
        let message = request.into_inner();
        let encoded_len = pre
            .map(|p| p.encoded_len)
            .unwrap_or_else(|| message.encoded_len());
        let request = wrap(message);
        let signal = request.signal();
        let core = &self.core;
        let (peer, items) = match pre {
            Some(p) => (p.peer, p.items),
            None => {
                // Mounted on a plain tonic server: do the bookkeeping the receiver's layer does.
                core.stats.request(signal);
                let items = validate(&request).map_err(|reason| {
                    core.stats.refused(signal, Refusal::Invalid);
                    tonic::Status::invalid_argument(
                        DecodeError::Invalid {
                            signal: signal.name(),
                            reason,
                        }
                        .to_string(),
                    )
                })?;
                let peer = remote.unwrap_or_else(|| Peer::from(([0, 0, 0, 0], 0)));
                (peer, items)
            }
        };
        core.deliver(peer, request, encoded_len, items)
            .map_err(|refused| {
                core.stats.refused(signal, refused.kind);
                status::tonic_status(refused.code, &refused.message, refused.retry_after)
            })
    }
}

fn partial(d: &Delivered) -> bool {
    d.rejected != 0 || !d.message.is_empty()
}

#[tonic::async_trait]
impl TraceService for GrpcHandler {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let d = self.export_any(request, SignalRequest::Traces)?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: partial(&d).then_some(ExportTracePartialSuccess {
                rejected_spans: d.rejected,
                error_message: d.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcHandler {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let d = self.export_any(request, SignalRequest::Metrics)?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: partial(&d).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: d.rejected,
                error_message: d.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcHandler {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let d = self.export_any(request, SignalRequest::Logs)?;
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: partial(&d).then_some(ExportLogsPartialSuccess {
                rejected_log_records: d.rejected,
                error_message: d.message,
            }),
        }))
    }
}

/// Answers one gRPC request.
pub async fn handle(
    core: Arc<Core>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<GrpcBody>, Infallible> {
    let Some(signal) = Signal::from_grpc_path(req.uri().path()) else {
        core.stats.unknown_path();
        let msg = format!(
            "unknown method {}",
            req.uri().path().chars().take(128).collect::<String>()
        );
        return Ok(tonic::Status::unimplemented(msg).into_http());
    };
    core.stats.request(signal);
    let answer = match serve(&core, signal, peer, req).await {
        Ok(answer) => answer,
        Err(refused) => {
            core.stats.refused(signal, refused.kind);
            let mut answer: Response<GrpcBody> =
                status::tonic_status(refused.code, &refused.message, refused.retry_after)
                    .into_http();
            if refused.code == Code::Unimplemented {
                answer.headers_mut().insert(
                    GRPC_ACCEPT_ENCODING,
                    HeaderValue::from_static(ACCEPTED_ENCODINGS),
                );
            }
            answer
        }
    };
    Ok(answer)
}

async fn serve(
    core: &Arc<Core>,
    signal: Signal,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<GrpcBody>, Refused> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !(media.eq_ignore_ascii_case("application/grpc")
        || media.eq_ignore_ascii_case("application/grpc+proto"))
    {
        // The gRPC spec answers a non-gRPC content type with plain HTTP 415.
        core.stats.refused(signal, Refusal::Unsupported);
        let mut answer = Response::new(GrpcBody::default());
        *answer.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Ok(answer);
    }
    let encoding_header = req
        .headers()
        .get(GRPC_ENCODING)
        .and_then(|v| v.to_str().ok());
    let encoding = Encoding::parse(encoding_header).ok_or_else(|| {
        Refused::from(DecodeError::UnsupportedEncoding(
            encoding_header.unwrap_or("").chars().take(64).collect(),
        ))
    })?;
    let limit = core.wire_limit(encoding).saturating_add(FRAME_HEADER);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(DecodeError::TooLarge {
            limit: core.max_message_bytes,
        }
        .into());
    }
    let mut reservation = core.budget.reservation();
    let body = core
        .read_body(req.into_body(), declared, limit, &mut reservation)
        .await?;
    let (compressed, payload) = split_frame(signal, &body)?;
    let payload_encoding = if compressed {
        if encoding == Encoding::Identity {
            return Err(Refused::new(
                Refusal::Internal,
                Code::Internal,
                "compressed message without grpc-encoding",
            ));
        }
        encoding
    } else {
        Encoding::Identity
    };
    let decoded = core
        .decode(
            signal,
            Format::Protobuf,
            payload_encoding,
            payload,
            &mut reservation,
        )
        .await?;
    let pre = Prevalidated {
        peer,
        encoded_len: decoded.encoded_len,
        items: decoded.items,
    };
    let handler = GrpcHandler::new(Arc::clone(core));
    let result = match decoded.request {
        SignalRequest::Traces(r) => TraceService::export(&handler, with_ext(r, pre))
            .await
            .map(|r| r.into_inner().encode_to_vec()),
        SignalRequest::Metrics(r) => MetricsService::export(&handler, with_ext(r, pre))
            .await
            .map(|r| r.into_inner().encode_to_vec()),
        SignalRequest::Logs(r) => LogsService::export(&handler, with_ext(r, pre))
            .await
            .map(|r| r.into_inner().encode_to_vec()),
    };
    drop(reservation);
    Ok(match result {
        Ok(message) => ok_response(&message),
        Err(status) => status.into_http(),
    })
}

fn with_ext<T>(message: T, pre: Prevalidated) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(pre);
    request
}

/// Splits a unary request body into (compressed flag, message); see [`split_grpc_frame`].
fn split_frame(signal: Signal, body: &Bytes) -> Result<(bool, Bytes), Refused> {
    let (compressed, message) = split_grpc_frame(signal, body)?;
    // `message` is the tail of `body`: share the buffer instead of copying.
    Ok((
        compressed,
        body.slice(body.len().saturating_sub(message.len())..),
    ))
}

fn ok_response(message: &[u8]) -> Response<GrpcBody> {
    let mut frame = BytesMut::with_capacity(message.len().saturating_add(FRAME_HEADER));
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.extend_from_slice(message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut answer = Response::new(GrpcBody {
        data: Some(frame.freeze()),
        trailers: Some(trailers),
    });
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    answer.headers_mut().insert(
        GRPC_ACCEPT_ENCODING,
        HeaderValue::from_static(ACCEPTED_ENCODINGS),
    );
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked() {
        let s = Signal::Traces;
        assert!(split_frame(s, &Bytes::from_static(b"\0\0\0")).is_err());
        assert!(split_frame(s, &Bytes::from_static(b"\0\0\0\0\x02a")).is_err());
        assert!(split_frame(s, &Bytes::from_static(b"\x07\0\0\0\x01a")).is_err());
        assert_eq!(
            split_frame(s, &Bytes::from_static(b"\0\0\0\0\x01a")).unwrap(),
            (false, Bytes::from_static(b"a"))
        );
        assert_eq!(
            split_frame(s, &Bytes::from_static(b"\x01\0\0\0\0")).unwrap(),
            (true, Bytes::new())
        );
    }
}
