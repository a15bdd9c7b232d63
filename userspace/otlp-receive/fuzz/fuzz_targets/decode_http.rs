//! Fuzzes the pure OTLP/HTTP decode path: (body bytes x content type x encoding) ->
//! `decode_http`. It must never panic, never exceed the output cap, and refuse only with the
//! typed errors.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use sonde_otlp_receive::{DecodeError, Signal, decode_http};

const MAX: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let signal = match selector % 3 {
        0 => Signal::Traces,
        1 => Signal::Metrics,
        _ => Signal::Logs,
    };
    let content_type = match (selector / 3) % 5 {
        0 => Some("application/x-protobuf"),
        1 => Some("application/json"),
        2 => Some("application/json; charset=utf-8"),
        3 => Some("text/plain"),
        _ => None,
    };
    let (encoding, body): (Option<&str>, Vec<u8>) = match (selector / 15) % 4 {
        0 => (None, body.to_vec()),
        1 => (Some("gzip"), body.to_vec()),
        // Valid gzip of the fuzz input, so the decoders behind inflate see structured data.
        2 => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            if enc.write_all(body).is_err() {
                return;
            }
            let Ok(gz) = enc.finish() else { return };
            (Some("gzip"), gz)
        }
        _ => (Some("br"), body.to_vec()),
    };
    match decode_http(signal, content_type, encoding, &body, MAX) {
        Ok(decoded) => assert!(decoded.encoded_len <= MAX),
        Err(DecodeError::TooLarge { limit }) => assert_eq!(limit, MAX),
        Err(_) => {}
    }
});
