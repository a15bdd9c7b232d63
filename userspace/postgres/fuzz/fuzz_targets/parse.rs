//! Fuzzes `Connection::feed`: the input is split into feeds by a one-byte header each
//! (direction, length, lost bytes); checks that every started operation ends exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_postgres::{Connection, Direction, Event, Seen};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut c = if mode & 1 == 0 {
        Connection::new()
    } else {
        Connection::new_unsynced()
    };
    let mut out = Vec::new();
    let mut ts = 0;
    while let Some((&h, tail)) = rest.split_first() {
        let dir = if h & 0x80 == 0 {
            Direction::Frontend
        } else {
            Direction::Backend
        };
        let len = usize::from(h & 0x3f) * 4 + 1;
        let lost = if h & 0x40 != 0 {
            u64::from(h & 0x0f) * 3
        } else {
            0
        };
        let (chunk, next) = tail.split_at(len.min(tail.len()));
        ts += 1;
        c.feed(dir, chunk, lost, Seen { ts_ns: ts, tid: 1 }, &mut out);
        rest = next;
    }
    c.close(
        Seen {
            ts_ns: ts + 1,
            tid: 1,
        },
        &mut out,
    );
    let started = out
        .iter()
        .filter(|e| matches!(e, Event::OperationStarted { .. }))
        .count();
    let done = out
        .iter()
        .filter(|e| matches!(e, Event::Operation(_)))
        .count();
    assert_eq!(started, done);
    let _ = sonde_postgres::looks_like_startup(data);
    let _ = sonde_postgres::looks_like_frontend_message(data);
});
