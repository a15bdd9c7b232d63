//! The registry as OTLP metrics: cumulative temporality, one resource per service identity
//! for the request histograms and lifecycle/TCP counters, one resource per process (identity
//! plus `process.pid`) for the `process.*` metrics.
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use rustc_hash::FxHashMap;

use crate::{Labels, ProcessSample, Registry, RequestMetric};

/// The attribute that splits a `process.*` metric's points, if any.
pub fn process_attribute(otel: &str) -> Option<&'static str> {
    match otel {
        "process.cpu.time" => Some("cpu_mode"),
        "process.disk.io" => Some("disk_io_direction"),
        "process.network.io" => Some("network_io_direction"),
        "process.context_switches" => Some("process_context_switch_type"),
        "process.paging.faults" => Some("process_paging_fault_type"),
        _ => None,
    }
}

fn kv(k: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn attrs(l: &Labels) -> Vec<KeyValue> {
    l.iter().map(|(k, v)| kv(k, v.clone())).collect()
}

fn scope(metrics: Vec<Metric>) -> ScopeMetrics {
    ScopeMetrics {
        scope: Some(InstrumentationScope {
            name: "sonde".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        metrics,
        ..Default::default()
    }
}

fn point(
    attributes: Vec<KeyValue>,
    start: u64,
    now: u64,
    v: number_data_point::Value,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(v),
        ..Default::default()
    }
}

fn sum(
    name: &str,
    unit: &str,
    desc: &str,
    monotonic: bool,
    points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: desc.into(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: monotonic,
        })),
        ..Default::default()
    }
}

fn gauge(name: &str, unit: &str, desc: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: desc.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

use number_data_point::Value::{AsDouble, AsInt};

fn int(v: u64) -> number_data_point::Value {
    AsInt(i64::try_from(v).unwrap_or(i64::MAX))
}

fn process_metrics(s: &ProcessSample, start: u64, now: u64) -> Vec<Metric> {
    let p = |attr: Option<(&str, &str)>, v| {
        point(
            attr.map(|(k, v)| vec![kv(k, v)]).unwrap_or_default(),
            start,
            now,
            v,
        )
    };
    vec![
        sum(
            "process.cpu.time",
            "s",
            "Total CPU seconds by mode.",
            true,
            vec![
                p(Some(("cpu.mode", "user")), AsDouble(s.cpu_user_seconds)),
                p(Some(("cpu.mode", "system")), AsDouble(s.cpu_system_seconds)),
            ],
        ),
        sum(
            "process.memory.usage",
            "By",
            "Resident memory.",
            false,
            vec![p(None, int(s.memory_rss_bytes))],
        ),
        sum(
            "process.memory.virtual",
            "By",
            "Virtual memory.",
            false,
            vec![p(None, int(s.memory_virtual_bytes))],
        ),
        sum(
            "process.thread.count",
            "{thread}",
            "Threads.",
            false,
            vec![p(None, int(s.threads))],
        ),
        sum(
            "process.unix.file_descriptor.count",
            "{file_descriptor}",
            "Open file descriptors.",
            false,
            vec![p(None, int(s.open_fds))],
        ),
        sum(
            "process.disk.io",
            "By",
            "Disk bytes read and written.",
            true,
            vec![
                p(Some(("disk.io.direction", "read")), int(s.disk_read_bytes)),
                p(
                    Some(("disk.io.direction", "write")),
                    int(s.disk_write_bytes),
                ),
            ],
        ),
        sum(
            "process.context_switches",
            "{context_switch}",
            "Context switches.",
            true,
            vec![
                p(
                    Some(("process.context_switch.type", "voluntary")),
                    int(s.voluntary_context_switches),
                ),
                p(
                    Some(("process.context_switch.type", "involuntary")),
                    int(s.involuntary_context_switches),
                ),
            ],
        ),
        sum(
            "process.paging.faults",
            "{fault}",
            "Page faults.",
            true,
            vec![
                p(
                    Some(("process.paging.fault_type", "minor")),
                    int(s.minor_faults),
                ),
                p(
                    Some(("process.paging.fault_type", "major")),
                    int(s.major_faults),
                ),
            ],
        ),
        gauge(
            "process.uptime",
            "s",
            "Seconds since the process started.",
            vec![p(None, AsDouble(s.uptime_seconds))],
        ),
    ]
}

impl Registry {
    /// Everything as OTLP `ResourceMetrics`; `extra` resource attributes (e.g. `host.name`)
    /// are added to every resource.
    pub fn to_otlp(&self, now_ns: u64, extra: &[(String, String)]) -> Vec<ResourceMetrics> {
        let mut per_identity: FxHashMap<&Labels, Vec<Metric>> = FxHashMap::default();
        let overflow = vec![kv("otel.metric.overflow", "true")];
        let empty = Labels::new();
        for metric in RequestMetric::ALL {
            let family = &self.families[metric.index()];
            let bounds = metric.bounds().to_vec();
            let mut by_id: FxHashMap<&Labels, Vec<HistogramDataPoint>> = FxHashMap::default();
            let hp = |a: Vec<KeyValue>, h: &crate::Hist| HistogramDataPoint {
                attributes: a,
                start_time_unix_nano: h.start_ns,
                time_unix_nano: now_ns,
                count: h.count,
                sum: Some(h.sum),
                bucket_counts: h.buckets.clone(),
                explicit_bounds: bounds.clone(),
                ..Default::default()
            };
            for (k, h) in &family.series {
                by_id
                    .entry(&k.identity)
                    .or_default()
                    .push(hp(attrs(&k.attributes), h));
            }
            if let Some(h) = &family.overflow {
                by_id
                    .entry(&empty)
                    .or_default()
                    .push(hp(overflow.clone(), h));
            }
            for (id, points) in by_id {
                per_identity.entry(id).or_default().push(Metric {
                    name: metric.name().into(),
                    unit: "s".into(),
                    description: metric.description().into(),
                    data: Some(Data::Histogram(Histogram {
                        data_points: points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    })),
                    ..Default::default()
                });
            }
        }
        for (id, s) in &self.identities {
            let start = s.start_ns;
            let mut exits: Vec<NumberDataPoint> = s
                .exits
                .iter()
                .map(|((how, v), n)| {
                    let a = match *how {
                        "code" => vec![kv("process.exit.code", v.to_string())],
                        "signal" => vec![kv("process.exit.signal", v.to_string())],
                        _ => vec![kv("process.exit.code", "unknown")],
                    };
                    point(a, start, now_ns, int(*n))
                })
                .collect();
            exits.sort_by(|a, b| format!("{:?}", a.attributes).cmp(&format!("{:?}", b.attributes)));
            let mut failed: Vec<NumberDataPoint> = s
                .failed_connects
                .iter()
                .map(|((addr, port), n)| {
                    point(
                        vec![
                            kv("server.address", addr.clone()),
                            kv("server.port", port.to_string()),
                        ],
                        start,
                        now_ns,
                        int(*n),
                    )
                })
                .collect();
            if s.failed_connects_folded > 0 {
                failed.push(point(
                    overflow.clone(),
                    start,
                    now_ns,
                    int(s.failed_connects_folded),
                ));
            }
            let one = |n: u64| vec![point(vec![], start, now_ns, int(n))];
            let list = per_identity.entry(id).or_default();
            list.push(sum(
                "process.starts",
                "{process}",
                "Traced processes seen starting.",
                true,
                one(s.starts),
            ));
            list.push(sum(
                "process.exits",
                "{process}",
                "Traced processes that ended.",
                true,
                exits,
            ));
            list.push(sum(
                "process.oom_kills",
                "{process}",
                "OOM kills.",
                true,
                one(s.oom_kills),
            ));
            list.push(sum(
                "tcp.retransmits",
                "{segment}",
                "TCP retransmits.",
                true,
                one(s.retransmits),
            ));
            list.push(sum(
                "tcp.resets.sent",
                "{reset}",
                "TCP resets sent.",
                true,
                one(s.resets_sent),
            ));
            list.push(sum(
                "tcp.resets.received",
                "{reset}",
                "TCP resets received.",
                true,
                one(s.resets_received),
            ));
            list.push(sum(
                "tcp.failed_connects",
                "{connect}",
                "Failed TCP connects.",
                true,
                failed,
            ));
        }
        let resource = |id: &Labels, pid: Option<&str>| {
            let mut a = attrs(id);
            if let Some(pid) = pid {
                a.push(KeyValue {
                    key: "process.pid".into(),
                    value: Some(AnyValue {
                        value: Some(Value::IntValue(pid.parse().unwrap_or_default())),
                    }),
                    ..Default::default()
                });
            }
            for (k, v) in extra {
                if !id.iter().any(|(ik, _)| ik == k) {
                    a.push(kv(k, v.clone()));
                }
            }
            Some(Resource {
                attributes: a,
                ..Default::default()
            })
        };
        let mut out: Vec<ResourceMetrics> = per_identity
            .into_iter()
            .map(|(id, metrics)| ResourceMetrics {
                resource: resource(id, None),
                scope_metrics: vec![scope(metrics)],
                ..Default::default()
            })
            .collect();
        for p in self.processes.values() {
            let mut metrics = p
                .sample
                .as_ref()
                .map(|s| process_metrics(s, p.start_ns, now_ns))
                .unwrap_or_default();
            metrics.push(sum(
                "process.network.io",
                "By",
                "Bytes on traced sockets, by direction.",
                true,
                vec![
                    point(
                        vec![kv("network.io.direction", "receive")],
                        p.start_ns,
                        now_ns,
                        int(p.net_receive),
                    ),
                    point(
                        vec![kv("network.io.direction", "transmit")],
                        p.start_ns,
                        now_ns,
                        int(p.net_transmit),
                    ),
                ],
            ));
            out.push(ResourceMetrics {
                resource: resource(&p.identity, Some(&p.pid_label)),
                scope_metrics: vec![scope(metrics)],
                ..Default::default()
            });
        }
        out
    }
}
