//! Registry tests: counting, limits, overflow, staleness, exposition and OTLP shapes.
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::metric::Data,
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};

use super::*;

fn s(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}
fn i(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn server(route: &str, status: i64, ms: u64) -> Span {
    Span {
        kind: SpanKind::Server as i32,
        attributes: vec![
            s("http.request.method", "GET"),
            i("http.response.status_code", status),
            s("http.route", route),
            s("url.path", "/secret/42"),
        ],
        start_time_unix_nano: 10,
        end_time_unix_nano: 10 + ms * 1_000_000,
        ..Default::default()
    }
}

fn batch(service: &str, pid: i64, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![s("service.name", service), i("process.pid", pid)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn classic(r: &Registry) -> String {
    let mut e = Encoder::new(Format::Classic);
    r.render(&mut e);
    e.finish()
}

#[test]
fn counts_per_route_and_status_with_le_buckets() {
    let mut r = Registry::new(Config::default());
    r.observe_spans(
        &[batch(
            "api",
            7,
            vec![
                server("/a", 200, 30),
                server("/a", 200, 30),
                server("/a", 500, 300),
                // exactly on a bound: counted in that bucket (le)
                server("/b", 200, 100),
            ],
        )],
        1,
    );
    let out = classic(&r);
    let a200 = "http_server_request_duration_seconds_count{service_name=\"api\",http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/a\"} 2";
    assert!(out.contains(a200), "{out}");
    assert!(out.contains("http_server_request_duration_seconds_bucket{service_name=\"api\",http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/a\",le=\"0.025\"} 0"));
    assert!(out.contains("http_server_request_duration_seconds_bucket{service_name=\"api\",http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/a\",le=\"0.05\"} 2"));
    assert!(out.contains("error_type=\"500\""));
    assert!(out.contains("http_route=\"/b\",le=\"0.1\"} 1"), "{out}");
    assert!(out.contains("http_route=\"/b\",le=\"0.075\"} 0"), "{out}");
    assert!(!out.contains("secret"));
}

#[test]
fn series_limit_folds_into_overflow_and_counts() {
    let mut r = Registry::new(Config {
        series_limit: 3,
        ..Config::default()
    });
    let spans: Vec<Span> = (0..10).map(|n| server(&format!("/p{n}"), 200, 1)).collect();
    r.observe_spans(&[batch("api", 1, spans)], 1);
    assert_eq!(r.stats().series[0], 3);
    let out = classic(&r);
    assert!(
        out.contains("http_server_request_duration_seconds_count{otel_metric_overflow=\"true\"} 7"),
        "{out}"
    );
    assert!(out.contains("sonde_metrics_overflow_measurements_total{metric=\"http.server.request.duration\",reason=\"series_limit\"} 7"));
    // Existing series keep counting past the limit.
    r.observe_spans(&[batch("api", 1, vec![server("/p0", 200, 1)])], 2);
    assert_eq!(r.stats().folded_series_limit[0], 7);
}

#[test]
fn memory_budget_folds_too() {
    let mut r = Registry::new(Config {
        memory_budget_bytes: 4000,
        ..Config::default()
    });
    let spans: Vec<Span> = (0..50).map(|n| server(&format!("/p{n}"), 200, 1)).collect();
    r.observe_spans(&[batch("api", 1, spans)], 1);
    let st = r.stats();
    assert!(st.folded_memory[0] > 0);
    assert!(st.memory_bytes <= 4000, "{}", st.memory_bytes);
}

#[test]
fn series_of_exited_services_are_dropped_after_a_while() {
    let mut r = Registry::new(Config {
        stale_after_ns: 100,
        ..Config::default()
    });
    r.observe_spans(&[batch("gone", 1, vec![server("/a", 200, 1)])], 10);
    r.observe_spans(&[batch("stays", 2, vec![server("/a", 200, 1)])], 10);
    let before = r.stats().memory_bytes;
    r.process_exited(1, Exit::Code(3), 20);
    r.sweep(50);
    assert_eq!(r.stats().series[0], 2);
    r.sweep(500);
    assert_eq!(r.stats().series[0], 1);
    assert_eq!(r.stats().processes, 1);
    assert!(r.stats().memory_bytes < before);
    let out = classic(&r);
    assert!(!out.contains("gone"), "{out}");
    // The live one stays however old its series are.
    r.sweep(10_000);
    assert_eq!(r.stats().series[0], 1);
}

#[test]
fn lifecycle_restarts_and_exit_codes() {
    let mut r = Registry::new(Config::default());
    let id: crate::Labels = vec![("service.name".into(), "w".to_owned())];
    r.process_seen(10, &id, 1);
    r.process_exited(10, Exit::Code(3), 2);
    r.process_exited(10, Exit::Unknown, 3); // counted once
    r.process_seen(11, &id, 4);
    r.oom_kill(11, 5);
    r.process_exited(11, Exit::Signal(9), 5);
    let out = classic(&r);
    assert!(
        out.contains("process_starts_total{service_name=\"w\"} 2"),
        "{out}"
    );
    assert!(out.contains("process_exits_total{service_name=\"w\",process_exit_code=\"3\"} 1"));
    assert!(out.contains("process_exits_total{service_name=\"w\",process_exit_signal=\"9\"} 1"));
    assert!(out.contains("process_oom_kills_total{service_name=\"w\"} 1"));
}

#[test]
fn process_samples_network_and_tcp() {
    let mut r = Registry::new(Config::default());
    let id: crate::Labels = vec![("service.name".into(), "p".to_owned())];
    r.process_seen(5, &id, 1);
    r.set_process_sample(
        5,
        ProcessSample {
            cpu_user_seconds: 1.5,
            memory_rss_bytes: 4096,
            open_fds: 12,
            ..Default::default()
        },
    );
    r.add_network_bytes(5, NetDirection::Receive, 100);
    r.add_network_bytes(5, NetDirection::Transmit, 7);
    r.add_network_bytes(99, NetDirection::Transmit, 7); // unknown pid: ignored
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    r.tcp_event(5, TcpEvent::FailedConnect(peer, 1), 2);
    r.tcp_event(5, TcpEvent::ResetReceived, 2);
    for port in 0..100 {
        r.tcp_event(5, TcpEvent::FailedConnect(peer, 1000 + port), 2);
    }
    let out = classic(&r);
    for want in [
        "process_cpu_time_seconds_total{service_name=\"p\",process_pid=\"5\",cpu_mode=\"user\"} 1.5",
        "process_memory_usage_bytes{service_name=\"p\",process_pid=\"5\"} 4096",
        "process_unix_file_descriptors{service_name=\"p\",process_pid=\"5\"} 12",
        "process_network_io_bytes_total{service_name=\"p\",process_pid=\"5\",network_io_direction=\"receive\"} 100",
        "tcp_failed_connects_total{service_name=\"p\",server_address=\"127.0.0.1\",server_port=\"1\"} 1",
        "tcp_resets_received_total{service_name=\"p\"} 1",
        "tcp_failed_connects_total{service_name=\"p\",otel_metric_overflow=\"true\"} 37",
    ] {
        assert!(out.contains(want), "missing {want}\n{out}");
    }
}

#[test]
fn openmetrics_output_is_terminated_and_counters_named_without_total() {
    let mut r = Registry::new(Config::default());
    r.observe_spans(&[batch("api", 1, vec![server("/a", 200, 1)])], 1);
    let mut e = Encoder::new(Format::OpenMetrics);
    r.render(&mut e);
    let out = e.finish();
    assert!(out.ends_with("# EOF\n"));
    assert!(out.contains("# TYPE process_starts counter"));
    assert!(out.contains("process_starts_total{service_name=\"api\"} 1"));
}

#[test]
fn otlp_is_cumulative_with_one_resource_per_identity() {
    let mut r = Registry::new(Config::default());
    r.observe_spans(
        &[
            batch("api", 1, vec![server("/a", 200, 30), server("/a", 200, 30)]),
            batch("api", 2, vec![server("/a", 200, 30)]),
        ],
        1,
    );
    let out = r.to_otlp(99, &[("host.name".into(), "h".into())]);
    let hist: Vec<_> = out
        .iter()
        .flat_map(|rm| rm.scope_metrics.iter().flat_map(|sm| sm.metrics.iter()))
        .filter(|m| m.name == "http.server.request.duration")
        .collect();
    assert_eq!(hist.len(), 1, "both pids share one service identity");
    let Some(Data::Histogram(h)) = &hist[0].data else {
        panic!("not a histogram");
    };
    assert_eq!(h.aggregation_temporality, 2);
    assert_eq!(h.data_points[0].count, 3);
    assert_eq!(h.data_points[0].bucket_counts.iter().sum::<u64>(), 3);
    assert_eq!(h.data_points[0].bucket_counts[3], 3); // (0.025, 0.05]
    // One resource for the service, one per process.
    assert_eq!(out.len(), 3);
}

proptest::proptest! {
    #[test]
    fn bucket_counts_always_sum_to_count(values in proptest::collection::vec(0u64..20_000, 0..200)) {
        let mut r = Registry::new(Config::default());
        let spans: Vec<Span> = values.iter().map(|ms| server("/x", 200, *ms)).collect();
        r.observe_spans(&[batch("a", 1, spans)], 1);
        let total: u64 = r.families[0].series.values().map(|h| h.buckets.iter().sum::<u64>()).sum();
        let count: u64 = r.families[0].series.values().map(|h| h.count).sum();
        proptest::prop_assert_eq!(total, values.len() as u64);
        proptest::prop_assert_eq!(count, values.len() as u64);
    }
}

/// A borrowed key must hash and compare as the owned key it stands for, or every lookup
/// would miss and each span would make a new series.
#[test]
fn borrowed_series_keys_find_their_owned_series() {
    use std::hash::BuildHasher;
    let identity: Labels = vec![
        ("k8s.pod.name".into(), "api-1".into()),
        ("service.name".into(), "api".into()),
    ];
    let attributes: request::LabelsRef<'_> = vec![
        ("http.request.method", Cow::Borrowed("GET")),
        ("http.response.status_code", Cow::Owned("200".to_owned())),
        ("http.route", Cow::Borrowed("/users/{id}")),
    ]
    .into();
    let owned = SeriesKey {
        identity: Arc::new(identity.clone()),
        attributes: request::owned_labels(&attributes),
    };
    let probe = SeriesKeyRef {
        identity: &identity,
        attributes: &attributes,
    };
    let hasher = rustc_hash::FxBuildHasher;
    assert_eq!(hasher.hash_one(&probe), hasher.hash_one(&owned));
    assert!(hashbrown::Equivalent::equivalent(&probe, &owned));
    let mut map = SeriesMap::default();
    map.insert(owned, Hist::new(3, 0));
    assert!(map.get(&probe).is_some());

    // One differing value, a missing label or another identity is another series.
    let mut other = attributes.clone();
    other[1].1 = Cow::Borrowed("500");
    let shorter = &attributes[..2];
    let empty: Labels = Vec::new();
    for probe in [
        SeriesKeyRef {
            identity: &identity,
            attributes: &other,
        },
        SeriesKeyRef {
            identity: &identity,
            attributes: shorter,
        },
        SeriesKeyRef {
            identity: &empty,
            attributes: &attributes,
        },
    ] {
        assert!(map.get(&probe).is_none());
    }
}

/// Spans with the same labels count into one series, across batches.
#[test]
fn repeated_labels_count_into_one_series() {
    let mut r = Registry::new(Config::default());
    let batch = ResourceSpans {
        resource: Some(Resource {
            attributes: vec![s("service.name", "api"), i("process.pid", 7)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans: (0..5)
                .map(|n| Span {
                    kind: SpanKind::Server as i32,
                    attributes: vec![
                        s("http.request.method", "GET"),
                        i("http.response.status_code", 200),
                        s("http.route", "/a"),
                    ],
                    start_time_unix_nano: 1,
                    end_time_unix_nano: 2 + n,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    r.observe_spans(std::slice::from_ref(&batch), 10);
    r.observe_spans(&[batch], 20);
    assert_eq!(r.stats().series[0], 1);
    let family = &r.families[RequestMetric::HttpServer.index()];
    assert_eq!(family.series.values().map(|h| h.count).sum::<u64>(), 10);
}
