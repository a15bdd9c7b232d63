//! OTLP/gRPC transport on tonic. The request is protobuf-encoded once per batch and re-sent as
//! bytes on retry through a tiny codec (the generated `*ServiceClient`s take the message by
//! value, which would force a deep clone per attempt); the method paths are the generated
//! clients' ones. gzip uses tonic's compression, https uses tonic's rustls.

use std::marker::PhantomData;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
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
    metadata: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
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
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::Invalid(format!("gRPC metadata key {k:?}")))?;
            let value = MetadataValue::try_from(v.as_str())
                .map_err(|_| ConfigError::Invalid(format!("gRPC metadata {k:?}: invalid value")))?;
            metadata.push((key, value));
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
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc = grpc.accept_compressed(CompressionEncoding::Gzip);
        grpc.ready()
            .await
            .map_err(|e| AttemptError::retryable(format!("gRPC connect: {e}"), None))?;
        let mut request = tonic::Request::new(body.clone());
        request.set_timeout(self.timeout);
        for (k, v) in &self.metadata {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        let result = match signal {
            Signal::Traces => grpc
                .unary(
                    request,
                    http_path(TRACES_PATH),
                    BytesCodec::<ExportTraceServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    r.into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_spans)
                }),
            Signal::Metrics => grpc
                .unary(
                    request,
                    http_path(METRICS_PATH),
                    BytesCodec::<ExportMetricsServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    r.into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_data_points)
                }),
            Signal::Logs => grpc
                .unary(
                    request,
                    http_path(LOGS_PATH),
                    BytesCodec::<ExportLogsServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    r.into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_log_records)
                }),
        };
        match result {
            Ok(rejected) => Ok(u64::try_from(rejected).unwrap_or(0)),
            Err(status) => Err(classify(&status)),
        }
    }
}

fn http_path(p: &'static str) -> hyper::http::uri::PathAndQuery {
    hyper::http::uri::PathAndQuery::from_static(p)
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

/// Sends pre-encoded protobuf bytes, decodes the response as `R`.
struct BytesCodec<R>(PhantomData<fn() -> R>);

impl<R> Default for BytesCodec<R> {
    fn default() -> Self {
        BytesCodec(PhantomData)
    }
}

impl<R: prost::Message + Default + Send + Sync + 'static> Codec for BytesCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

struct ProstDecoder<R>(PhantomData<fn() -> R>);

impl<R: prost::Message + Default> Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        R::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

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
