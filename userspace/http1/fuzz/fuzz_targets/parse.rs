//! Fuzz target: arbitrary bytes, split into feeds of arbitrary size and direction, with
//! arbitrary uncaptured tails, must never panic or break the parser's promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_http1::{Connection, Direction, Event, Seen};

fuzz_target!(|input: &[u8]| {
    // Byte 0 picks synced/unsynced; then records of [control, len, payload...]:
    // control bit 0 = direction, bit 1 = has lost tail (amount from bits 2..8), len = payload size.
    let Some((&mode, mut rest)) = input.split_first() else {
        return;
    };
    let mut conn = if mode & 1 == 0 {
        Connection::new()
    } else {
        Connection::new_unsynced()
    };
    let mut out = Vec::new();
    let mut ts = 0u64;
    while let [control, len, tail @ ..] = rest {
        let take = usize::from(*len).min(tail.len());
        let (data, next) = tail.split_at(take);
        let direction = if control & 1 == 0 {
            Direction::Request
        } else {
            Direction::Response
        };
        let lost = if control & 2 == 0 {
            0
        } else {
            u64::from(control >> 2) * 97
        };
        ts += 1;
        conn.feed(direction, data, lost, Seen { ts_ns: ts, tid: 1 }, &mut out);
        assert!(conn.buffered_bytes() <= 2 * sonde_http1::MAX_HEAD_BYTES);
        rest = next;
    }
    if mode & 2 == 0 {
        conn.close(
            Seen {
                ts_ns: ts + 1,
                tid: 1,
            },
            &mut out,
        );
    }
    let mut announced = std::collections::HashSet::new();
    let mut not_http = 0;
    for event in &out {
        match event {
            Event::RequestHead { seq, .. } => assert!(announced.insert(*seq)),
            Event::Exchange(x) => assert!(announced.contains(&x.seq)),
            Event::NotHttp { .. } => not_http += 1,
        }
    }
    assert!(not_http <= 1);
    assert_eq!(conn.is_http(), not_http == 0);
    let _ = sonde_http1::looks_like_request(input);
    let _ = sonde_http1::looks_like_response(input);
});
