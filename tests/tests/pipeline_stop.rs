//! `sonde run --pipeline-stop <stage>` (the bench's knob to split the daemon's cost per stage)
//! with real probes against a real server: each cut drops exactly what its stage made (data
//! records, exchanges, spans, encoded requests) and nothing is exported.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use sonde_e2e::{RawHttpClient, Sonde, TestServer};

const REQUESTS: u64 = 20;

/// The counts of `sonde: pipeline stopped after <stage>; N data records dropped, N exchanges
/// dropped unbuilt, N spans dropped after <stage>, N export requests encoded (N bytes)`.
fn cut_counts(stderr: &str, stage: &str) -> [u64; 5] {
    let prefix = format!("sonde: pipeline stopped after {stage};");
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stderr}"));
    let numbers: Vec<u64> = line[prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    numbers
        .try_into()
        .unwrap_or_else(|n| panic!("5 numbers expected in {line:?}, got {n:?}"))
}

/// Runs `REQUESTS` keep-alive requests under `sonde --pipeline-stop <stage>`, returns its
/// stderr after stopping it; asserts nothing was printed as a span.
fn run_cut(stage: &str) -> String {
    let server = TestServer::start();
    let port = server.port().to_string();
    let mut sonde = Sonde::start(&["--port", &port, "--no-metrics", "--pipeline-stop", stage]);
    let mut client = RawHttpClient::connect(server.addr()).unwrap();
    for i in 0..REQUESTS {
        client
            .send(format!("GET /len/{i} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(client.read_response().unwrap().status, 200);
    }
    drop(client);
    let spans = sonde.stop();
    assert!(
        spans.is_empty(),
        "{stage}: {} spans left sonde",
        spans.len()
    );
    sonde.stderr()
}

#[test]
fn each_cut_drops_what_its_stage_made_and_exports_nothing() {
    // The test process is the client and is traced too: two exchanges per request.
    let exchanges = 2 * REQUESTS;
    let stderr = run_cut("drain");
    let [records, unbuilt, spans, encoded, _] = cut_counts(&stderr, "drain");
    // A read and a write on each side per request.
    assert!(records >= 2 * exchanges, "{records} records:\n{stderr}");
    assert_eq!([unbuilt, spans, encoded], [0, 0, 0], "{stderr}");

    let stderr = run_cut("parse");
    assert_eq!(
        cut_counts(&stderr, "parse")[..4],
        [0, exchanges, 0, 0],
        "{stderr}"
    );
    assert!(stderr.contains(" 0 spans built"), "{stderr}");

    let stderr = run_cut("build");
    assert_eq!(
        cut_counts(&stderr, "build")[..4],
        [0, 0, exchanges, 0],
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(" {exchanges} spans built")),
        "{stderr}"
    );

    let stderr = run_cut("encode");
    let [records, unbuilt, spans, encoded, bytes] = cut_counts(&stderr, "encode");
    assert_eq!([records, unbuilt, spans], [0, 0, exchanges], "{stderr}");
    assert!(encoded >= 1 && bytes > 100 * exchanges, "{stderr}");
}
