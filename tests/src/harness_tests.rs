//! Harness tests that need the `sonde-test-server` binary built by cargo for this package.

use std::time::Duration;

use sonde_e2e::proc::pid_alive;
use sonde_e2e::{RawHttpClient, TestServer, curl, curl_status, http_get};

#[test]
fn test_server_binary_runs_and_is_cleaned_up() {
    let srv = TestServer::start();
    assert_eq!(
        http_get(&format!("{}/len/3", srv.base_url())),
        (200, "abc".to_string())
    );
    assert_eq!(
        curl_status(&format!("{}/status/418", srv.base_url()), &[]),
        418
    );
    let out = curl(&[
        "-X",
        "POST",
        "--data-binary",
        "hi there",
        &format!("{}/echo", srv.base_url()),
    ]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "hi there");
    // Keep-alive across two requests on one connection, then a close-delimited response.
    let mut c = RawHttpClient::connect(srv.addr()).unwrap();
    c.send(b"GET /chunked/10?chunks=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(
        (r.text().as_str(), r.trailer("X-Checksum")),
        ("abcdeabcde", Some("10"))
    );
    c.send(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().text(), "close-delimited body\n");
    assert!(c.closed_by_peer(Duration::from_secs(5)));
    srv.proc()
        .wait_for_line("request POST /echo body=8", Duration::from_secs(5))
        .unwrap();
    let pid = srv.pid();
    assert!(pid_alive(pid));
    drop(srv);
    assert!(!pid_alive(pid));
}
