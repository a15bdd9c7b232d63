//! OTLP/HTTP transport (hyper-util client, rustls for https): protobuf or JSON bodies, optional
//! gzip, response classification and `partial_success` decoding.

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{
    CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT,
};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use crate::config::{Compression, ConfigError, OtlpEndpoint, Protocol};
use crate::payload::{Payload, Request, Signal};
use crate::retry::{AttemptError, http_status_is_retryable, parse_retry_after};

/// Responses larger than this are not read further (a partial_success is tiny).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// An encoded request body, ready to be sent (and re-sent on retry).
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub bytes: Bytes,
    /// Uncompressed size, for the stats.
    pub raw_len: usize,
}

pub(crate) struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    urls: [Option<hyper::Uri>; 3],
    headers: Vec<(HeaderName, HeaderValue)>,
    json: bool,
    gzip: bool,
}

impl HttpTransport {
    pub(crate) fn new(e: &OtlpEndpoint) -> Result<Self, ConfigError> {
        let tls = crate::tls::client_config(e.ca_certificate.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(e.timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let mut urls: [Option<hyper::Uri>; 3] = [None, None, None];
        for signal in Signal::ALL {
            if let Some(u) = e.url(signal) {
                let uri: hyper::Uri = u.parse().map_err(|_| ConfigError::BadValue {
                    var: format!("{}_url", signal.as_str()),
                    value: u.to_string(),
                    reason: "not a valid URL".into(),
                })?;
                if let Some(slot) = urls.get_mut(signal.index()) {
                    *slot = Some(uri);
                }
            }
        }
        let mut headers = Vec::new();
        for (k, v) in &e.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| ConfigError::Invalid(format!("header name {k:?}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| ConfigError::Invalid(format!("header {k:?}: invalid value")))?;
            headers.push((name, value));
        }
        Ok(HttpTransport {
            client,
            urls,
            headers,
            json: e.protocol == Protocol::HttpJson,
            gzip: e.compression == Compression::Gzip,
        })
    }

    /// Whether the body is protobuf (not JSON).
    pub(crate) fn sends_protobuf(&self) -> bool {
        !self.json
    }

    /// Encodes once; retries re-send the same bytes.
    pub(crate) fn encode(&self, payload: Payload) -> Result<Body, AttemptError> {
        let raw = if self.json {
            crate::json::encode_request(&Request::from(payload))
                .map_err(|e| AttemptError::permanent(format!("JSON encoding: {e}")))?
        } else {
            payload.into_protobuf()
        };
        let raw_len = raw.len();
        let bytes = if self.gzip {
            gzip(&raw).map_err(|e| AttemptError::permanent(format!("gzip: {e}")))?
        } else {
            raw
        };
        Ok(Body {
            bytes: Bytes::from(bytes),
            raw_len,
        })
    }

    /// One attempt. Ok(rejected items from partial_success).
    pub(crate) async fn send(&self, signal: Signal, body: &Body) -> Result<u64, AttemptError> {
        let Some(Some(uri)) = self.urls.get(signal.index()) else {
            return Err(AttemptError::permanent("no URL for this signal"));
        };
        let mut builder = hyper::Request::post(uri.clone()).header(
            CONTENT_TYPE,
            if self.json {
                "application/json"
            } else {
                "application/x-protobuf"
            },
        );
        if self.gzip {
            builder = builder.header(CONTENT_ENCODING, "gzip");
        }
        builder = builder.header(USER_AGENT, crate::USER_AGENT);
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        let request = builder
            .body(Full::new(body.bytes.clone()))
            .map_err(|e| AttemptError::permanent(format!("building request: {e}")))?;
        let response = self.client.request(request).await.map_err(|e| {
            AttemptError::retryable(format!("POST {uri}: {}", error_chain(&e)), None)
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|c| c.to_bytes());
        if status.is_success() {
            // A body we cannot read or decode does not undo the success.
            let rejected = match body {
                Ok(b) => rejected_items(signal, &b, is_json),
                Err(_) => 0,
            };
            return Ok(rejected);
        }
        let detail = body
            .ok()
            .map(|b| String::from_utf8_lossy(&b.slice(..b.len().min(256))).into_owned())
            .unwrap_or_default();
        let message = format!("POST {uri}: HTTP {status} {detail}");
        if http_status_is_retryable(status.as_u16()) {
            Err(AttemptError::retryable(message, retry_after))
        } else {
            Err(AttemptError::permanent(message))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

pub(crate) fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(raw)?;
    enc.finish()
}

/// Rejected item count from a success body (protobuf or JSON `ExportXServiceResponse`).
pub(crate) fn rejected_items(signal: Signal, body: &[u8], is_json: bool) -> u64 {
    if body.is_empty() {
        return 0;
    }
    let n = if is_json {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let ps = v.get("partialSuccess")?.clone();
                let key = match signal {
                    Signal::Traces => "rejectedSpans",
                    Signal::Metrics => "rejectedDataPoints",
                    Signal::Logs => "rejectedLogRecords",
                };
                let r = ps.get(key)?;
                r.as_i64()
                    .or_else(|| r.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(0)
    } else {
        match signal {
            Signal::Traces => ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_spans),
            Signal::Metrics => ExportMetricsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_data_points),
            Signal::Logs => ExportLogsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_log_records),
        }
    };
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    #[test]
    fn partial_success_decoding() {
        let r = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "x".into(),
            }),
        };
        assert_eq!(rejected_items(Signal::Traces, &r.encode_to_vec(), false), 3);
        assert_eq!(
            rejected_items(
                Signal::Logs,
                br#"{"partialSuccess":{"rejectedLogRecords":"4"}}"#,
                true
            ),
            4
        );
        assert_eq!(rejected_items(Signal::Traces, b"garbage", false), 0);
        assert_eq!(rejected_items(Signal::Traces, b"", true), 0);
    }
}
