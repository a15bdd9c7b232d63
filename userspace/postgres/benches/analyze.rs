//! Cost of sanitizing and summarizing one query (`sonde_postgres::sanitize::analyze`, what the
//! daemon runs on every simple-protocol query and on every new prepared statement), in ns
//! per query, on the shapes pgbench and a Django ORM send. Beside it, in the same run, the
//! floor of any pass over the text: an ASCII-uppercase copy of the same bytes.
//!
//! Run: `cargo bench -p sonde-postgres --bench analyze`.
use std::hint::black_box;
use std::time::Instant;

const QUERIES: &[(&str, &str)] = &[
    (
        "pgbench -S",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    ),
    (
        "pgbench update",
        "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 98765;",
    ),
    (
        "Django ORM get",
        "SELECT \"variants\".\"id\", \"variants\".\"name\", \"variants\".\"gene\" FROM \
         \"variants\" WHERE \"variants\".\"id\" = 42 LIMIT 21",
    ),
    (
        "IN list insert",
        "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z') ON CONFLICT DO NOTHING; \
         SELECT * FROM t WHERE a IN (1, 2, 3, 4, 5)",
    ),
];

/// Median ns per call of `f` over 7 runs of `n` calls.
fn median_ns(n: u32, mut f: impl FnMut() -> usize) -> f64 {
    let mut runs: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            let mut sink = 0usize;
            for _ in 0..n {
                sink = sink.wrapping_add(f());
            }
            black_box(sink);
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs.get(runs.len() / 2).copied().unwrap_or_default()
}

fn main() {
    println!(
        "{:<16} {:>6} {:>14} {:>16} {:>6}",
        "query", "bytes", "analyze ns", "uppercase ns", "ratio"
    );
    for (name, sql) in QUERIES {
        let bytes = sql.as_bytes();
        let n = 100_000;
        let analyze = median_ns(n, || {
            let (text, summary, _) = sonde_postgres::sanitize::analyze(black_box(bytes), 2048);
            text.len() + summary.summary.len()
        });
        let floor = median_ns(n, || black_box(bytes).to_ascii_uppercase().len());
        println!(
            "{name:<16} {:>6} {analyze:>14.0} {floor:>16.0} {:>6.1}",
            bytes.len(),
            analyze / floor.max(1.0)
        );
    }
}
