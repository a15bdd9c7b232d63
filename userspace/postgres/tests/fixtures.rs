//! Replays byte streams captured from a real PostgreSQL 15 (tests/capture/capture.py) and
//! checks the operations the parser reports.

use sonde_postgres::{Connection, Direction, Event, Operation, Seen};

/// One recorded chunk: direction and bytes.
type Chunk = (Direction, Vec<u8>);

fn load(name: &str) -> Vec<Chunk> {
    let path = format!("{}/tests/fixtures/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (d, h) = l.split_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            let dir = if d == "F" { Direction::Frontend } else { Direction::Backend };
            (dir, hex::decode(h).unwrap_or_else(|e| panic!("bad hex: {e}")))
        })
        .collect()
}

fn replay(chunks: &[Chunk]) -> Vec<Event> {
    let mut c = Connection::new();
    let mut out = Vec::new();
    for (i, (d, bytes)) in chunks.iter().enumerate() {
        let seen = Seen { ts_ns: i as u64, tid: 1 };
        c.feed(*d, bytes, 0, seen, &mut out);
    }
    c.close(Seen { ts_ns: 9999, tid: 1 }, &mut out);
    out
}

fn ops(events: &[Event]) -> Vec<&Operation> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Operation(op) => Some(op),
            _ => None,
        })
        .collect()
}

#[test]
fn dump() {
    for name in ["psycopg2_simple", "psycopg2_ssl_prefer", "psycopg3_extended"] {
        for e in replay(&load(name)) {
            println!("{name}: {e:?}");
        }
    }
}
