//! OTLP/JSON encoding (opentelemetry-proto's `with-serde`: lowerCamelCase keys, hex trace/span
//! ids, enums as integers, 64-bit integers as strings) and the stdout `Json` output line.

use crate::payload::Request;

/// The request as an OTLP/JSON body.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, serde_json::Error> {
    match req {
        Request::Traces(r) => serde_json::to_vec(r),
        Request::Metrics(r) => serde_json::to_vec(r),
        Request::Logs(r) => serde_json::to_vec(r),
    }
}

/// `{"signal":"traces","request":{...}}` followed by a newline (the stdout `Json` output line,
/// same shape as the test sink's lines minus `transport`).
pub fn encode_line(req: &Request, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"signal\":\"");
    out.extend_from_slice(req.signal().as_str().as_bytes());
    out.extend_from_slice(b"\",\"request\":");
    match req {
        Request::Traces(r) => serde_json::to_writer(&mut *out, r)?,
        Request::Metrics(r) => serde_json::to_writer(&mut *out, r)?,
        Request::Logs(r) => serde_json::to_writer(&mut *out, r)?,
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}
