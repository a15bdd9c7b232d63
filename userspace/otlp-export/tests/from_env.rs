//! `OtlpEndpoint::from_env` / `all_from_env` against tables of OTEL_EXPORTER_OTLP_* settings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use sonde_otlp_export::{Compression, ConfigError, OtlpEndpoint, Protocol};

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn one(pairs: &[(&str, &str)]) -> OtlpEndpoint {
    OtlpEndpoint::from_env(env(pairs))
        .expect("valid")
        .expect("endpoint set")
}

#[test]
fn nothing_set_is_none() {
    assert_eq!(OtlpEndpoint::from_env(env(&[])), Ok(None));
    // Empty values count as unset.
    assert_eq!(
        OtlpEndpoint::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
        Ok(None)
    );
    // Settings without an endpoint: still nothing to export to.
    assert_eq!(
        OtlpEndpoint::from_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])),
        Ok(None)
    );
}

#[test]
fn endpoint_urls_table() {
    // (variables, traces, metrics, logs)
    type Row = (
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );
    let table: &[Row] = &[
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")],
            Some("http://collector:4318/v1/traces"),
            Some("http://collector:4318/v1/metrics"),
            Some("http://collector:4318/v1/logs"),
        ),
        (
            &[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector:4318/otlp/",
            )],
            Some("https://collector:4318/otlp/v1/traces"),
            Some("https://collector:4318/otlp/v1/metrics"),
            Some("https://collector:4318/otlp/v1/logs"),
        ),
        // Per-signal endpoints are used as they are.
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://jaeger:4318/custom",
                ),
            ],
            Some("http://jaeger:4318/custom"),
            Some("http://collector:4318/v1/metrics"),
            Some("http://collector:4318/v1/logs"),
        ),
        (
            &[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4318/")],
            None,
            None,
            Some("http://logs:4318/"),
        ),
        // gRPC: no path appended.
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            Some("http://collector:4317"),
            Some("http://collector:4317"),
            Some("http://collector:4317"),
        ),
        // gRPC without a scheme: INSECURE decides.
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ],
            Some("http://collector:4317"),
            Some("http://collector:4317"),
            Some("http://collector:4317"),
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            Some("https://collector:4317"),
            Some("https://collector:4317"),
            Some("https://collector:4317"),
        ),
    ];
    for (vars, traces, metrics, logs) in table {
        let e = one(vars);
        assert_eq!(e.traces_url.as_deref(), *traces, "{vars:?}");
        assert_eq!(e.metrics_url.as_deref(), *metrics, "{vars:?}");
        assert_eq!(e.logs_url.as_deref(), *logs, "{vars:?}");
    }
}

#[test]
fn defaults() {
    let e = one(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
    assert_eq!(e.protocol, Protocol::HttpProtobuf);
    assert_eq!(e.timeout, Duration::from_secs(10));
    assert_eq!(e.compression, Compression::None);
    assert!(e.headers.is_empty());
    assert_eq!(e.ca_certificate, None);
    assert!(!e.insecure);
}

#[test]
fn settings_table() {
    let e = one(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=secret%20value%2C1, x-scope-orgid = tenant%3D1",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ("OTEL_EXPORTER_OTLP_INSECURE", "FALSE"),
    ]);
    assert_eq!(e.protocol, Protocol::HttpJson);
    assert_eq!(
        e.headers,
        vec![
            ("api-key".to_string(), "secret value,1".to_string()),
            ("x-scope-orgid".to_string(), "tenant=1".to_string()),
        ]
    );
    assert_eq!(e.timeout, Duration::from_millis(2500));
    assert_eq!(e.compression, Compression::Gzip);
    assert_eq!(e.ca_certificate, Some(PathBuf::from("/etc/ca.pem")));
    assert!(!e.insecure);
    for (v, p) in [
        ("grpc", Protocol::Grpc),
        ("http/protobuf", Protocol::HttpProtobuf),
        ("http/json", Protocol::HttpJson),
    ] {
        let e = one(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
        ]);
        assert_eq!(e.protocol, p);
    }
}

#[test]
fn per_signal_settings_override_when_all_signals_agree() {
    let e = one(&[
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=1"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "100"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "b=2"),
    ]);
    assert_eq!(e.headers, vec![("a".to_string(), "1".to_string())]);
    assert_eq!(e.timeout, Duration::from_millis(100));
    assert_eq!(e.metrics_url, None);
}

#[test]
fn per_signal_settings_that_differ_split_the_endpoints() {
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4317"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip"),
    ];
    assert_eq!(
        OtlpEndpoint::from_env(env(&vars)),
        Err(ConfigError::SignalsDiffer)
    );
    let all = OtlpEndpoint::all_from_env(env(&vars)).expect("valid");
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].protocol, Protocol::Grpc);
    assert_eq!(all[0].traces_url.as_deref(), Some("http://jaeger:4317"));
    assert_eq!(all[0].metrics_url, None);
    assert_eq!(all[1].protocol, Protocol::HttpProtobuf);
    assert_eq!(
        all[1].metrics_url.as_deref(),
        Some("http://c:4318/v1/metrics")
    );
    assert_eq!(all[1].logs_url, None);
    assert_eq!(all[2].compression, Compression::Gzip);
    assert_eq!(all[2].logs_url.as_deref(), Some("http://c:4318/v1/logs"));
}

#[test]
fn bad_values_name_the_variable() {
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    let table: &[(&[(&str, &str)], &str)] = &[
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c:21")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://")],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5")],
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "0")],
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")],
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_INSECURE", "yes")],
            "OTEL_EXPORTER_OTLP_INSECURE",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_HEADERS", "a b=1")],
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_HEADERS", "a=%FF")],
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            &[base, ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "x")],
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        ),
    ];
    for (vars, var) in table {
        let err = OtlpEndpoint::from_env(env(vars)).expect_err("must be refused");
        let msg = err.to_string();
        assert!(
            matches!(&err, ConfigError::BadValue { var: v, .. } if v == var),
            "{vars:?}: {err:?}"
        );
        assert!(msg.contains(var), "{msg}");
    }
}

#[test]
fn header_values_are_not_echoed_in_errors() {
    let err = OtlpEndpoint::from_env(env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20s3cr3t,broken",
        ),
    ]))
    .expect_err("refused");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
}
