//! `google.rpc.Status` and `google.rpc.RetryInfo`: the error details OTLP servers return, in
//! protobuf (HTTP bodies, gRPC `grpc-status-details-bin`) and in OTLP/JSON (HTTP JSON bodies).

use std::time::Duration;

use prost::Message;

/// gRPC status codes the receiver answers with (numeric values from the gRPC specification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// Invalid argument: the payload could not be decoded.
    InvalidArgument = 3,
    /// Deadline exceeded: the client was too slow sending its request.
    DeadlineExceeded = 4,
    /// Not found: unknown path.
    NotFound = 5,
    /// Resource exhausted: the message is too large (no RetryInfo, so clients do not retry).
    ResourceExhausted = 8,
    /// Unimplemented: unsupported method, media type or encoding.
    Unimplemented = 12,
    /// Internal error.
    Internal = 13,
    /// Unavailable: overloaded, retry later (with RetryInfo).
    Unavailable = 14,
}

impl Code {
    /// The tonic code with the same meaning.
    pub fn to_tonic(self) -> tonic::Code {
        match self {
            Code::InvalidArgument => tonic::Code::InvalidArgument,
            Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Code::NotFound => tonic::Code::NotFound,
            Code::ResourceExhausted => tonic::Code::ResourceExhausted,
            Code::Unimplemented => tonic::Code::Unimplemented,
            Code::Internal => tonic::Code::Internal,
            Code::Unavailable => tonic::Code::Unavailable,
        }
    }
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    /// The gRPC status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// A developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Error details (here only `google.rpc.RetryInfo`).
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    /// Type URL of the packed message.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The packed message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    /// How long the client should wait before retrying.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds after `seconds`.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Type URL of `google.rpc.RetryInfo` inside an `Any`.
pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// Builds a `google.rpc.Status`, with a RetryInfo detail when `retry_after` is given.
pub fn rpc_status(code: Code, message: &str, retry_after: Option<Duration>) -> RpcStatus {
    let details = retry_after
        .map(|delay| {
            let info = RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
                }),
            };
            vec![ProtoAny {
                type_url: RETRY_INFO_TYPE_URL.to_owned(),
                value: info.encode_to_vec(),
            }]
        })
        .unwrap_or_default();
    RpcStatus {
        code: code as i32,
        message: message.to_owned(),
        details,
    }
}

/// The OTLP/JSON (proto3 JSON mapping) form of a status built by [`rpc_status`].
pub fn rpc_status_json(code: Code, message: &str, retry_after: Option<Duration>) -> Vec<u8> {
    let mut value = serde_json::json!({ "code": code as i32, "message": message });
    if let (Some(delay), Some(obj)) = (retry_after, value.as_object_mut()) {
        let secs = delay.as_secs_f64();
        obj.insert(
            "details".to_owned(),
            serde_json::json!([{ "@type": RETRY_INFO_TYPE_URL, "retryDelay": format!("{secs}s") }]),
        );
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// A tonic status for `code`, carrying the encoded `google.rpc.Status` (with RetryInfo when
/// `retry_after` is given) in `grpc-status-details-bin`.
pub fn tonic_status(code: Code, message: &str, retry_after: Option<Duration>) -> tonic::Status {
    let details = rpc_status(code, message, retry_after).encode_to_vec();
    tonic::Status::with_details(code.to_tonic(), message, details.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_round_trips() {
        let status = rpc_status(Code::Unavailable, "busy", Some(Duration::from_millis(2500)));
        let decoded = RpcStatus::decode(status.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.code, 14);
        assert_eq!(decoded.details.len(), 1);
        assert_eq!(decoded.details[0].type_url, RETRY_INFO_TYPE_URL);
        let info = RetryInfo::decode(decoded.details[0].value.as_slice()).unwrap();
        assert_eq!(
            info.retry_delay,
            Some(ProtoDuration {
                seconds: 2,
                nanos: 500_000_000
            })
        );
    }

    #[test]
    fn no_retry_info_without_delay() {
        let status = rpc_status(Code::ResourceExhausted, "too big", None);
        assert!(status.details.is_empty());
        let json: serde_json::Value =
            serde_json::from_slice(&rpc_status_json(Code::ResourceExhausted, "too big", None))
                .unwrap();
        assert_eq!(json["code"], 8);
        assert!(json.get("details").is_none());
    }
}
