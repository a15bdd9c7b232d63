//! https / gRPC over TLS with a private CA (`ca_certificate`), against the sink serving TLS with
//! a leaf certificate that openssl signs for this test; a client without the CA must fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use sonde_otlp_export::{Compression, Exporter, Output, Protocol, RetryPolicy};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a leaf for 127.0.0.1 / localhost signed by it: (dir, ca.pem, leaf.pem, leaf.key).
fn make_pki(tag: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sonde-otlp-tls-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=sonde test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "leaf.key", "-out", "leaf.csr"]);
    openssl(&dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "leaf.pem",
        ],
    );
    (
        dir.clone(),
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_private_ca() {
    let (dir, ca, cert, key) = make_pki("ok");
    let cert_s = cert.display().to_string();
    let key_s = key.display().to_string();
    let sink = Sink::start_with(&["--tls-cert", &cert_s, "--tls-key", &key_s]);
    for (i, protocol) in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson]
        .into_iter()
        .enumerate()
    {
        let port = if protocol == Protocol::Grpc {
            sink.grpc_port
        } else {
            sink.http_port
        };
        let mut e = sonde_otlp_export::OtlpEndpoint::for_base_url(
            &format!("https://127.0.0.1:{port}"),
            protocol,
        );
        e.ca_certificate = Some(ca.clone());
        e.compression = Compression::Gzip;
        let exporter = Exporter::start(config(vec![Output::Otlp(e)])).expect("start");
        let first = u32::try_from(i).expect("small") * 10;
        exporter.send_traces(spans(50, first, 10)).expect("room");
        exporter.shutdown(Duration::from_secs(5)).await;
        let st = exporter.stats();
        assert_eq!(st.traces.exported_items_total, 10, "{protocol:?}: {st:?}");
    }
    assert_eq!(indexes(&sink.spans()), (0..30).collect::<Vec<i64>>());
    let _ = std::fs::remove_dir_all(dir);
}

/// Without the private CA the certificate is not trusted: nothing is delivered, the exporter
/// retries (a TLS failure looks like a connection failure) and finally drops and counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_ca_is_refused() {
    let (dir, _ca, cert, key) = make_pki("untrusted");
    let cert_s = cert.display().to_string();
    let key_s = key.display().to_string();
    let sink = Sink::start_with(&["--tls-cert", &cert_s, "--tls-key", &key_s]);
    let mut cfg = config(vec![Output::Otlp(
        sonde_otlp_export::OtlpEndpoint::for_base_url(
            &format!("https://127.0.0.1:{}", sink.http_port),
            Protocol::HttpProtobuf,
        ),
    )]);
    cfg.retry = RetryPolicy {
        initial: Duration::from_millis(100),
        multiplier: 1.0,
        max_interval: Duration::from_millis(100),
        max_elapsed: Duration::from_millis(500),
        jitter: 0.0,
    };
    let exporter = Exporter::start(cfg).expect("start");
    exporter.send_traces(spans(51, 0, 3)).expect("room");
    assert!(
        wait_until(Duration::from_secs(5), || {
            exporter.stats().traces.dropped_retry_exhausted_items_total == 3
        })
        .await
    );
    assert!(sink.lines().is_empty());
    exporter.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_ca_is_a_config_error() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let mut e = sonde_otlp_export::OtlpEndpoint::for_base_url("https://127.0.0.1:1", protocol);
        e.ca_certificate = Some(PathBuf::from("/nonexistent/ca.pem"));
        let err = Exporter::start(config(vec![Output::Otlp(e)])).expect_err("refused");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
