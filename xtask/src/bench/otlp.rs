//! `--suite otlp`: sonde as an OTLP forwarder. A Rust load generator sends
//! ExportTraceServiceRequests to sonde's OTLP/gRPC receiver; sonde (pinned to core 1) exports
//! them to a discard sink; generator and sink share core 0. Baseline: generator straight into
//! the sink, to show the harness is not the limit.
use std::{path::Path, time::Duration};

use anyhow::Result;

use super::{
    Args,
    loadgen::{self, LoadConfig, LoadResult},
    measure,
    report::{Row, Section, col},
    sink::DiscardSink,
    sonde::Sonde,
};

const HARNESS_CPU: usize = 0;
const SONDE_CPU: usize = 1;
const SPANS_PER_REQUEST: usize = 512;

struct Run {
    load: LoadResult,
    /// Spans the sink received during the load window, and by the end of sonde's flush.
    at_sink_window: u64,
    at_sink_total: u64,
    sonde_cpu_s: Option<f64>,
    sonde_rss_mib: Option<f64>,
}

fn load_config(endpoint: String, rate: Option<f64>, duration: u64) -> LoadConfig {
    LoadConfig {
        endpoint,
        spans_per_request: SPANS_PER_REQUEST,
        rate,
        duration: Duration::from_secs(duration),
        concurrency: 8,
    }
}

fn direct(sink: &DiscardSink, duration: u64) -> Result<Run> {
    let before = sink.spans();
    let load = loadgen::run(
        &load_config(sink.endpoint(), None, duration),
        Some(HARNESS_CPU),
    )?;
    let n = sink.spans().saturating_sub(before);
    Ok(Run {
        load,
        at_sink_window: n,
        at_sink_total: n,
        sonde_cpu_s: None,
        sonde_rss_mib: None,
    })
}

fn through_sonde(bin: &Path, sink: &DiscardSink, rate: Option<f64>, duration: u64) -> Result<Run> {
    let port = measure::free_port()?;
    let args: Vec<String> = [
        // Empty programs on an executable that does not exist: no capture work competes.
        "--noop-probes",
        "--exe",
        "sonde-bench-none",
        "--otlp-grpc-addr",
        &format!("127.0.0.1:{port}"),
        "--otlp-http-addr",
        "off",
        "--output",
        "otlp",
        "--otlp-protocol",
        "grpc",
        "--otlp-endpoint",
        &sink.endpoint(),
    ]
    .map(String::from)
    .to_vec();
    let sonde = Sonde::start(bin, &args, Some(SONDE_CPU))?;
    measure::wait_for_port(port, Duration::from_secs(5))?;
    let before = sink.spans();
    let cpu_before = sonde.cpu_seconds()?;
    let load = loadgen::run(
        &load_config(format!("http://127.0.0.1:{port}"), rate, duration),
        Some(HARNESS_CPU),
    )?;
    let cpu = sonde.cpu_seconds()? - cpu_before;
    let at_sink_window = sink.spans().saturating_sub(before);
    let rss = sonde.peak_rss_mib()?;
    sonde.stop()?;
    Ok(Run {
        load,
        at_sink_window,
        at_sink_total: sink.spans().saturating_sub(before),
        sonde_cpu_s: Some(cpu),
        sonde_rss_mib: Some(rss),
    })
}

fn push(row: &mut Row, run: &Run) {
    let secs = run.load.elapsed.as_secs_f64().max(1e-9);
    row.push("sent_per_s", run.load.spans_accepted as f64 / secs);
    row.push("forwarded_per_s", run.at_sink_window as f64 / secs);
    row.push(
        "delivered_pct",
        100.0 * run.at_sink_total as f64 / run.load.spans_accepted.max(1) as f64,
    );
    row.push("failed_requests", run.load.requests_failed as f64);
    if let Some(cpu) = run.sonde_cpu_s {
        row.push("sonde_cores", cpu / secs);
        row.push(
            "cpu_us_per_span",
            cpu * 1e6 / run.at_sink_window.max(1) as f64,
        );
    }
    if let Some(rss) = run.sonde_rss_mib {
        row.push("rss_mib", rss);
    }
}

pub fn run(args: &Args, sonde_bin: &Path) -> Result<Vec<Section>> {
    let sink = DiscardSink::start(Some(HARNESS_CPU))?;
    let rate = f64::from(args.otlp_rate);
    let cols = [
        col("sent_per_s", "spans/s accepted", 0),
        col("forwarded_per_s", "spans/s at sink", 0),
        col("forwarded_per_s_ratio", "vs a", 3),
        col("delivered_pct", "delivered %", 1),
        col("failed_requests", "failed req", 0),
        col("sonde_cores", "sonde cores", 2),
        col("cpu_us_per_span", "sonde CPU us/span in", 2),
        col("rss_mib", "sonde RSS MiB", 1),
    ];
    let mut s = Section::new(
        "otlp",
        &format!(
            "OTLP/gRPC forwarding, {SPANS_PER_REQUEST} spans/request, sonde on core {SONDE_CPU}"
        ),
        &cols,
    );
    let names = [
        "a: generator -> sink (max)",
        "c: via sonde (max)",
        "c: via sonde (fixed rate)",
    ];
    s.rows = names.iter().map(|n| Row::new(n)).collect();
    let mut first_error: Option<String> = None;
    for round in 1..=args.rounds {
        for (i, name) in names.iter().enumerate() {
            eprintln!("[bench] otlp round {round}/{}: {name}", args.rounds);
            let run = match i {
                0 => direct(&sink, args.duration),
                1 => through_sonde(sonde_bin, &sink, None, args.duration),
                _ => through_sonde(sonde_bin, &sink, Some(rate), args.duration),
            };
            let run = match run {
                Ok(r) => r,
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("{name}: {e:#}"));
                    continue;
                }
            };
            if let Some(e) = &run.load.first_error {
                first_error.get_or_insert_with(|| format!("{name}: first failed export: {e}"));
            }
            if let Some(row) = s.rows.get_mut(i) {
                push(row, &run);
            }
        }
    }
    s.add_ratio(0, "forwarded_per_s");
    s.notes.push(format!(
        "{} rounds of {} s interleaved; fixed rate = {} spans/s; generator and discard sink on core {HARNESS_CPU}",
        args.rounds, args.duration, args.otlp_rate
    ));
    if let Some(e) = first_error {
        s.notes.push(format!("errors: {e}"));
    }
    let forwarded = s
        .rows
        .get(1)
        .map_or(0.0, |r| r.samples("forwarded_per_s").iter().sum::<f64>());
    if forwarded == 0.0 {
        s.notes.push(
            "no span came out of sonde: its OTLP receiver is not wired (yet?) or not exporting"
                .into(),
        );
    }
    s.finish();
    Ok(vec![s])
}
