//! Shared test helpers: a recording sink, a receiver on 127.0.0.1 port 0, request builders and
//! raw HTTP/1.1 and HTTP/2 (gRPC) clients that can send what real SDKs never would.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use sonde_otlp_receive::{
    Admit, ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportTraceServiceRequest, Peer,
    Receiver, ReceiverConfig, Sink,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the recording sink answers.
#[derive(Debug, Clone)]
pub enum Mode {
    Accept,
    Partial(i64, String),
    Overloaded(Duration),
    /// Accept, after sleeping (to keep a request in flight).
    Slow(Duration),
}

#[derive(Debug)]
pub struct RecordingSink {
    pub traces: Mutex<Vec<(Peer, ExportTraceServiceRequest, usize)>>,
    pub metrics: Mutex<Vec<(Peer, ExportMetricsServiceRequest, usize)>>,
    pub logs: Mutex<Vec<(Peer, ExportLogsServiceRequest, usize)>>,
    pub mode: Mutex<Mode>,
}

impl RecordingSink {
    pub fn new() -> Arc<RecordingSink> {
        Arc::new(RecordingSink {
            traces: Mutex::default(),
            metrics: Mutex::default(),
            logs: Mutex::default(),
            mode: Mutex::new(Mode::Accept),
        })
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn admit(&self) -> Admit {
        let mode = self.mode.lock().unwrap().clone();
        match mode {
            Mode::Accept => Admit::Accepted,
            Mode::Partial(rejected, message) => Admit::Partial { rejected, message },
            Mode::Overloaded(retry_after) => Admit::Overloaded { retry_after },
            Mode::Slow(d) => {
                std::thread::sleep(d);
                Admit::Accepted
            }
        }
    }

    pub fn span_names(&self) -> Vec<String> {
        let traces = self.traces.lock().unwrap();
        let mut names: Vec<String> = traces
            .iter()
            .flat_map(|(_, r, _)| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        names
    }

    pub fn trace_requests(&self) -> usize {
        self.traces.lock().unwrap().len()
    }
}

impl Sink for RecordingSink {
    fn traces(&self, peer: Peer, request: ExportTraceServiceRequest, encoded_len: usize) -> Admit {
        let admit = self.admit();
        if !matches!(admit, Admit::Overloaded { .. }) {
            self.traces
                .lock()
                .unwrap()
                .push((peer, request, encoded_len));
        }
        admit
    }
    fn metrics(
        &self,
        peer: Peer,
        request: ExportMetricsServiceRequest,
        encoded_len: usize,
    ) -> Admit {
        let admit = self.admit();
        if !matches!(admit, Admit::Overloaded { .. }) {
            self.metrics
                .lock()
                .unwrap()
                .push((peer, request, encoded_len));
        }
        admit
    }
    fn logs(&self, peer: Peer, request: ExportLogsServiceRequest, encoded_len: usize) -> Admit {
        let admit = self.admit();
        if !matches!(admit, Admit::Overloaded { .. }) {
            self.logs.lock().unwrap().push((peer, request, encoded_len));
        }
        admit
    }
}

pub async fn start(
    max_message_bytes: usize,
    max_inflight_bytes: usize,
) -> (Receiver, Arc<RecordingSink>) {
    let sink = RecordingSink::new();
    let config = ReceiverConfig {
        grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        max_message_bytes,
        max_inflight_bytes,
    };
    let receiver = Receiver::start(config, sink.clone()).await.unwrap();
    (receiver, sink)
}

pub fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A traces request with `n` spans named `{prefix}-{i}`, each with one attribute.
pub fn trace_request(prefix: &str, n: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![1; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("{prefix}-{i}"),
            kind: 2,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            attributes: vec![attr(
                "http.request.method",
                any_value::Value::StringValue("GET".into()),
            )],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                scope: None,
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Builds an HTTP/1.1 request (with `Connection: close`).
pub fn http_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        has_len |= k.eq_ignore_ascii_case("content-length");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends raw bytes and reads the answer (until the server closes, at most 10 s).
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything (e.g. 413): ignore write errors.
    let _ = stream.write_all(request).await;
    read_response(&mut stream).await
}

pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if response_complete(&buf) {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no answer within 10 s");
    parse_response(&buf)
}

fn response_complete(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            buf.len() >= n + len
        }
        _ => false,
    }
}

fn parse_response(buf: &[u8]) -> RawResponse {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("bad response {other:?}: {:?}", String::from_utf8_lossy(buf)),
    };
    RawResponse {
        status: resp.code.unwrap(),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: buf[n..].to_vec(),
    }
}

/// A protobuf OTLP/HTTP POST.
pub async fn post_pb(addr: SocketAddr, path: &str, body: &[u8]) -> RawResponse {
    http_raw(
        addr,
        &http_request(
            "POST",
            path,
            &[("Content-Type", "application/x-protobuf")],
            body,
        ),
    )
    .await
}

/// What a gRPC call answered.
#[derive(Debug)]
pub struct GrpcAnswer {
    pub http_status: u16,
    pub status: tonic::Status,
    pub message: Vec<u8>,
}

/// Sends one raw gRPC request body (already framed) over HTTP/2.
pub async fn grpc_raw(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> GrpcAnswer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let call = async {
        let resp = sender.send_request(req).await.unwrap();
        let http_status = resp.status().as_u16();
        let head = resp.headers().clone();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        let status = tonic::Status::from_header_map(&head)
            .or_else(|| trailers.as_ref().and_then(tonic::Status::from_header_map))
            .unwrap_or_else(|| tonic::Status::unknown("no grpc-status"));
        let message = if data.len() >= 5 {
            data[5..].to_vec()
        } else {
            Vec::new()
        };
        GrpcAnswer {
            http_status,
            status,
            message,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("no gRPC answer within 10 s")
}

/// Frames a gRPC message.
pub fn grpc_frame(compressed: bool, message: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

pub const TRACE_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
