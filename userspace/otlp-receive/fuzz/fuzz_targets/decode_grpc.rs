//! Fuzzes the OTLP/gRPC request path without the network: the 5-byte gRPC frame split
//! (`split_grpc_frame`), then inflating and protobuf-decoding the message as the server does.
//! Never panics, the message is exactly the body after the header, the cap holds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_otlp_receive::decode::{GRPC_FRAME_HEADER, decode_payload, decompress};
use sonde_otlp_receive::{DecodeError, Encoding, Format, Signal, split_grpc_frame};

const MAX: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let signal = match selector % 3 {
        0 => Signal::Traces,
        1 => Signal::Metrics,
        _ => Signal::Logs,
    };
    let header = match (selector / 3) % 3 {
        0 => None,
        1 => Some("identity"),
        _ => Some("gzip"),
    };
    // Half of the inputs get a well-formed frame around them, so the decoders behind the split
    // see structured messages; the other half are raw bodies for the frame checks.
    let body = if selector & 0x80 != 0 {
        let Ok(len) = u32::try_from(rest.len()) else {
            return;
        };
        let mut framed = vec![u8::from(header == Some("gzip"))];
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(rest);
        framed
    } else {
        rest.to_vec()
    };
    let Some(encoding) = Encoding::parse(header) else {
        return;
    };
    let (compressed, message) = match split_grpc_frame(signal, &body) {
        Ok(split) => split,
        Err(DecodeError::Invalid { .. }) => return,
        Err(e) => panic!("frame split refused with {e:?}"),
    };
    assert_eq!(message, &body[GRPC_FRAME_HEADER..]);
    assert_eq!(compressed, body[0] == 1);
    // The server refuses a compressed message without grpc-encoding before decoding.
    let encoding = match (compressed, encoding) {
        (true, Encoding::Identity) => return,
        (true, e) => e,
        (false, _) => Encoding::Identity,
    };
    let payload = match decompress(signal, encoding, message, MAX) {
        Ok(p) => p,
        Err(DecodeError::TooLarge { limit }) => {
            assert_eq!(limit, MAX);
            return;
        }
        Err(_) => return,
    };
    assert!(payload.len() <= MAX);
    if let Ok(decoded) = decode_payload(signal, Format::Protobuf, &payload) {
        assert_eq!(decoded.encoded_len, payload.len());
        assert_eq!(decoded.request.signal(), signal);
    }
});
