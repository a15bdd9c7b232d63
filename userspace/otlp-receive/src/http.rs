//! OTLP/HTTP: `POST /v1/{traces,metrics,logs}` with protobuf or JSON bodies, optionally gzip.
//! Every refusal row of the OTLP answers table is decided here, in this order: path (404),
//! method (405), media type and encoding (415), declared length (413, before reading), body
//! (413 / 503 / 408), payload (400 / 413), sink (200 / partial / 503).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prost::Message;

use crate::Peer;
use crate::core::{Core, Refused};
use crate::decode::{self, DecodeError, Encoding, Format, Signal};
use crate::stats::Refusal;
use crate::status::{self, Code};

/// Answers one OTLP/HTTP request.
pub async fn handle(
    core: Arc<Core>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let format = header(&req, CONTENT_TYPE).and_then(Format::from_content_type);
    let Some(signal) = Signal::from_http_path(req.uri().path()) else {
        core.stats.unknown_path();
        let refused = Refused::new(
            Refusal::Unsupported,
            Code::NotFound,
            "unknown path: use /v1/traces, /v1/metrics or /v1/logs",
        );
        return Ok(refusal(format, &refused));
    };
    core.stats.request(signal);
    let answer = match serve(&core, signal, peer, format, req).await {
        Ok(answer) => answer,
        Err(refused) => {
            core.stats.refused(signal, refused.kind);
            refusal(format, &refused)
        }
    };
    Ok(answer)
}

async fn serve(
    core: &Arc<Core>,
    signal: Signal,
    peer: Peer,
    format: Option<Format>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Refused> {
    if req.method() != Method::POST {
        let mut answer = refusal(
            format,
            &Refused::new(
                Refusal::Unsupported,
                Code::Unimplemented,
                "method not allowed: use POST",
            ),
        );
        *answer.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        answer
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        core.stats.refused(signal, Refusal::Unsupported);
        return Ok(answer);
    }
    let format = match format {
        Some(f) => f,
        None => {
            let given = header(&req, CONTENT_TYPE).unwrap_or("");
            return Err(DecodeError::UnsupportedMediaType(given.chars().take(64).collect()).into());
        }
    };
    let encoding_header = header(&req, CONTENT_ENCODING);
    let encoding = Encoding::parse(encoding_header).ok_or_else(|| {
        Refused::from(DecodeError::UnsupportedEncoding(
            encoding_header.unwrap_or("").chars().take(64).collect(),
        ))
    })?;
    let limit = core.wire_limit(encoding);
    let declared = match header(&req, CONTENT_LENGTH) {
        None => None,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Err(_) => {
                return Err(Refused::new(
                    Refusal::Invalid,
                    Code::InvalidArgument,
                    "invalid Content-Length",
                ));
            }
        },
    };
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
    let decoded = core
        .decode(signal, format, encoding, body, &mut reservation)
        .await?;
    let delivered = core.deliver(peer, decoded.request, decoded.encoded_len, decoded.items)?;
    drop(reservation);
    let body = decode::encode_response(signal, format, delivered.rejected, &delivered.message);
    Ok(response(StatusCode::OK, format.content_type(), body))
}

fn header<B>(req: &Request<B>, name: http::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer
}

/// A refusal: `google.rpc.Status` in the request's encoding (plain text when it had none we
/// speak), with Retry-After on overload.
fn refusal(format: Option<Format>, refused: &Refused) -> Response<Full<Bytes>> {
    let status =
        StatusCode::from_u16(refused.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = match format {
        Some(Format::Protobuf) => response(
            status,
            Format::Protobuf.content_type(),
            status::rpc_status(refused.code, &refused.message, refused.retry_after).encode_to_vec(),
        ),
        Some(Format::Json) => response(
            status,
            Format::Json.content_type(),
            status::rpc_status_json(refused.code, &refused.message, refused.retry_after),
        ),
        None => response(
            status,
            "text/plain; charset=utf-8",
            refused.message.clone().into_bytes(),
        ),
    };
    if let Some(after) = refused.retry_after {
        // Whole seconds, rounded up so a client never comes back early.
        let secs = after
            .as_secs()
            .saturating_add(u64::from(after.subsec_nanos() > 0))
            .max(1);
        answer
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    answer
}
