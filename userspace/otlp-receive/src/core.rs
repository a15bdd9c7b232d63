//! What the HTTP and gRPC servers share: reading a body within the size limit, the memory
//! budget and the timeouts; decoding off the async threads when large; handing the request to
//! the sink and turning its answer into an outcome both protocols can express.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::budget::{Budget, Reservation};
use crate::decode::{self, DecodeError, Decoded, Encoding, Format, Signal, SignalRequest};
use crate::stats::{Refusal, Stats};
use crate::status::Code;
use crate::{Admit, Limits, Peer, Sink};

/// Payloads above this are decoded on the blocking pool, not on an async worker.
const BLOCKING_DECODE_BYTES: usize = 1024 * 1024;
/// gzip bodies above this inflate on the blocking pool (they may inflate ~1000x).
const GZIP_INLINE_BYTES: usize = 4 * 1024;
/// Retry-After when the memory budget is exhausted.
const BUDGET_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A refused request: which statistic, which gRPC code, what to tell the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// Statistics bucket.
    pub kind: Refusal,
    /// gRPC code (the HTTP status follows from it).
    pub code: Code,
    /// Message for the client.
    pub message: String,
    /// Set for overload: Retry-After / RetryInfo.
    pub retry_after: Option<Duration>,
}

impl Refused {
    /// A refusal without retry hint.
    pub fn new(kind: Refusal, code: Code, message: impl Into<String>) -> Refused {
        Refused {
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// An overload refusal: the client should retry after `after`.
    pub fn overloaded(message: impl Into<String>, after: Duration) -> Refused {
        Refused {
            kind: Refusal::Overloaded,
            code: Code::Unavailable,
            message: message.into(),
            retry_after: Some(after),
        }
    }

    /// The HTTP status of this refusal.
    pub fn http_status(&self) -> u16 {
        match self.code {
            Code::InvalidArgument => 400,
            Code::NotFound => 404,
            Code::ResourceExhausted => 413,
            Code::Unimplemented => 415,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::DeadlineExceeded => 408,
        }
    }
}

impl From<DecodeError> for Refused {
    fn from(e: DecodeError) -> Refused {
        let (kind, code) = match e {
            DecodeError::UnsupportedMediaType(_) | DecodeError::UnsupportedEncoding(_) => {
                (Refusal::Unsupported, Code::Unimplemented)
            }
            DecodeError::TooLarge { .. } => (Refusal::TooLarge, Code::ResourceExhausted),
            DecodeError::Invalid { .. } => (Refusal::Invalid, Code::InvalidArgument),
        };
        Refused::new(kind, code, e.to_string())
    }
}

/// The sink took the request, maybe in part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Items the sink rejected (0 when all were accepted).
    pub rejected: i64,
    /// Message for the client (empty when all were accepted).
    pub message: String,
}

/// State shared by both servers.
pub struct Core {
    /// Where requests go.
    pub sink: Arc<dyn Sink>,
    /// Counters.
    pub stats: Stats,
    /// Memory budget.
    pub budget: Arc<Budget>,
    /// Limit after decompression.
    pub max_message_bytes: usize,
    /// Timeouts and connection cap.
    pub limits: Limits,
}

impl Core {
    /// Largest body accepted on the wire: compressed data may be slightly larger than the
    /// payload, so gzip bodies get a little headroom; the decompressed size is checked later.
    pub fn wire_limit(&self, encoding: Encoding) -> usize {
        match encoding {
            Encoding::Identity => self.max_message_bytes,
            Encoding::Gzip => self
                .max_message_bytes
                .saturating_add(self.max_message_bytes / 16)
                .saturating_add(1024),
        }
    }

    /// Reads a body of at most `limit` bytes, holding its bytes in `reservation`.
    /// `declared` is the Content-Length when known (already checked against `limit`).
    pub async fn read_body(
        &self,
        mut body: Incoming,
        declared: Option<usize>,
        limit: usize,
        reservation: &mut Reservation,
    ) -> Result<Bytes, Refused> {
        if let Some(len) = declared
            && !reservation.grow(len)
        {
            return Err(Refused::overloaded(
                "receiver memory budget exhausted",
                BUDGET_RETRY_AFTER,
            ));
        }
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
        let now = tokio::time::Instant::now();
        // A huge configured timeout means "practically never", not an overflow.
        let deadline = now
            .checked_add(self.limits.body_total_timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        loop {
            let wait = tokio::time::timeout_at(
                deadline,
                tokio::time::timeout(self.limits.body_idle_timeout, body.frame()),
            );
            let frame = match wait.await {
                Ok(Ok(Some(Ok(frame)))) => frame,
                Ok(Ok(None)) => break,
                Ok(Ok(Some(Err(e)))) => {
                    return Err(Refused::new(
                        Refusal::Invalid,
                        Code::InvalidArgument,
                        format!("reading body: {e}"),
                    ));
                }
                Ok(Err(_)) | Err(_) => {
                    return Err(Refused::new(
                        Refusal::Timeout,
                        Code::DeadlineExceeded,
                        "timed out reading the body",
                    ));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let new_len = buf.len().saturating_add(data.len());
            if new_len > limit {
                return Err(too_large(self.max_message_bytes));
            }
            if new_len > reservation.held()
                && !reservation.grow(new_len.saturating_sub(reservation.held()))
            {
                return Err(Refused::overloaded(
                    "receiver memory budget exhausted",
                    BUDGET_RETRY_AFTER,
                ));
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    }

    /// Decompresses and decodes `body`, on the blocking pool when it is large. The decompressed
    /// size is added to `reservation` (the decoded request is of the same order).
    pub async fn decode(
        self: &Arc<Self>,
        signal: Signal,
        format: Format,
        encoding: Encoding,
        body: Bytes,
        reservation: &mut Reservation,
    ) -> Result<Decoded, Refused> {
        let max = self.max_message_bytes;
        let body_len = body.len();
        // Inflated bytes count against the budget as they are allocated, so concurrent gzip
        // bombs cannot each inflate to the message limit before anyone notices.
        let mut held = std::mem::replace(reservation, self.budget.reservation());
        let work = move || {
            let mut denied = false;
            let result = {
                let mut grow = |n: usize| {
                    let ok = held.grow(n);
                    denied |= !ok;
                    ok
                };
                decode::decompress_within(signal, encoding, &body, max, &mut grow)
                    .and_then(|payload| decode::decode_payload(signal, format, &payload))
            };
            (result, held, denied)
        };
        // Inflating may cost far more than the body: any real gzip body goes to the blocking
        // pool, as does any large body.
        let large = body_len > BLOCKING_DECODE_BYTES
            || (encoding == Encoding::Gzip && body_len > GZIP_INLINE_BYTES);
        let (result, held, denied) = if large {
            tokio::task::spawn_blocking(work).await.map_err(|e| {
                Refused::new(
                    Refusal::Internal,
                    Code::Internal,
                    format!("decoder task failed: {e}"),
                )
            })?
        } else {
            work()
        };
        *reservation = held;
        if denied {
            return Err(Refused::overloaded(
                "receiver memory budget exhausted",
                BUDGET_RETRY_AFTER,
            ));
        }
        Ok(result?)
    }

    /// Hands a decoded request to the sink and records the outcome.
    pub fn deliver(
        &self,
        peer: Peer,
        request: SignalRequest,
        encoded_len: usize,
        items: u64,
    ) -> Result<Delivered, Refused> {
        let signal = request.signal();
        let admit = match request {
            SignalRequest::Traces(r) => self.sink.traces(peer, r, encoded_len),
            SignalRequest::Metrics(r) => self.sink.metrics(peer, r, encoded_len),
            SignalRequest::Logs(r) => self.sink.logs(peer, r, encoded_len),
        };
        match admit {
            Admit::Accepted => {
                self.stats.delivered(signal, items, 0);
                Ok(Delivered {
                    rejected: 0,
                    message: String::new(),
                })
            }
            Admit::Partial { rejected, message } => {
                let rejected_items = u64::try_from(rejected).unwrap_or(0);
                self.stats.delivered(signal, items, rejected_items);
                Ok(Delivered { rejected, message })
            }
            Admit::Overloaded { retry_after } => Err(Refused::overloaded(
                "receiver overloaded, retry later",
                retry_after,
            )),
        }
    }
}

fn too_large(limit: usize) -> Refused {
    Refused::from(DecodeError::TooLarge { limit })
}
