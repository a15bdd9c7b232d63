//! Command line and environment, validated once into a [`Config`]; the rest of the daemon
//! never reads the environment again.
use std::{collections::HashSet, net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use sonde_otlp_export::{ExporterConfig, OtlpEndpoint, Output, Protocol};

use crate::{
    trace::{route::RouteTemplates, sampler::Sampler},
    tracer::Selection,
};

#[derive(Parser, Debug)]
#[command(
    name = "sonde",
    version,
    about = "Zero-instrumentation tracing with eBPF: HTTP and PostgreSQL spans from uninstrumented applications"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace this node: attach the probes and export spans until SIGINT/SIGTERM.
    Run(RunArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputKind {
    /// One readable line per span on stdout.
    Text,
    /// One OTLP/JSON export request per line on stdout.
    Json,
    /// OTLP to the endpoint from --otlp-endpoint or OTEL_EXPORTER_OTLP_*.
    Otlp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    #[value(name = "http/json")]
    HttpJson,
}

/// Where `--pipeline-stop` cuts the span pipeline (benchmarks: each stage adds one step).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum PipelineStop {
    /// Read every ring-buffer record and drop the data ones: no parsing, no spans
    /// (connection records still reach the tracer, which untracks unselected sockets).
    Drain,
    /// Decode records and run the tracer (connections, protocol parsers), build no spans.
    Parse,
    /// Build spans (and feed the request metrics if on), then drop them before the merge.
    Build,
    /// Merge, group and encode spans to OTLP protobuf as the exporter would, send nothing.
    Encode,
}

impl PipelineStop {
    pub fn name(self) -> &'static str {
        match self {
            PipelineStop::Drain => "drain",
            PipelineStop::Parse => "parse",
            PipelineStop::Build => "build",
            PipelineStop::Encode => "encode",
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Trace only these process ids (repeatable). Filtered in the kernel.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace only connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Trace only processes whose executable has this name (repeatable), e.g. `--exe gunicorn`.
    #[arg(long = "exe", value_name = "NAME")]
    pub executables: Vec<String>,
    /// Bytes captured per syscall on HTTP connections (at most 65536).
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub capture_bytes: u32,
    /// Bytes captured per syscall on PostgreSQL connections (long ORM queries), at most 65536.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub postgres_capture_bytes: u32,
    /// Where spans go. Default: otlp when an OTLP endpoint is configured, else text.
    #[arg(long, value_enum, overrides_with = "output")]
    pub output: Option<OutputKind>,
    /// OTLP endpoint (base URL); overrides OTEL_EXPORTER_OTLP_ENDPOINT. Repeat it to export
    /// to several backends at once (e.g. Jaeger and a Collector).
    #[arg(long = "otlp-endpoint", value_name = "URL")]
    pub otlp_endpoints: Vec<String>,
    /// OTLP protocol; overrides OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_enum)]
    pub otlp_protocol: Option<ProtocolArg>,
    /// Route templates that override the inferred ones, e.g. `/api/{version}/items/{id}` (repeatable).
    #[arg(long = "route", value_name = "TEMPLATE")]
    pub routes: Vec<String>,
    /// Distinct values a path position may take before routes collapse it into `{value}`
    /// (the cardinality guard; 0 turns it off).
    #[arg(long, default_value_t = crate::trace::route::DEFAULT_MAX_SEGMENT_VALUES)]
    pub route_max_values: usize,
    /// Export `url.path` / the path in `url.full` as received. By default high-entropy segments
    /// (tokens, hex, emails) are templated as in `http.route`.
    #[arg(long)]
    pub raw_url_path: bool,
    /// Export `process.command_line` and `process.command_args` (opt-in, as in the semantic
    /// conventions), with secret-looking arguments redacted.
    #[arg(long)]
    pub export_command_line: bool,
    /// Ring buffer size in bytes (rounded up to a power of two), 4 KiB to 1 GiB.
    #[arg(long, default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(4096..=1024 * 1024 * 1024))]
    pub ring_buffer_bytes: u32,
    /// Span export batch timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub batch_timeout_ms: u64,
    /// Items (spans, data points, log records) per OTLP export request (default
    /// OTEL_BSP_MAX_EXPORT_BATCH_SIZE, else 2048; a request also stays under 4 MiB).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub export_batch_size: Option<u64>,
    /// OTLP receiver, gRPC address (`off` to disable).
    #[arg(
        long,
        default_value = "0.0.0.0:4317",
        overrides_with = "otlp_grpc_addr"
    )]
    pub otlp_grpc_addr: String,
    /// OTLP receiver, HTTP address (`off` to disable).
    #[arg(
        long,
        default_value = "0.0.0.0:4318",
        overrides_with = "otlp_http_addr"
    )]
    pub otlp_http_addr: String,
    /// Prometheus endpoint (`/metrics`: request, process and TCP metrics plus sonde's own;
    /// `off` to disable). Default: OTEL_EXPORTER_PROMETHEUS_HOST (0.0.0.0) and
    /// OTEL_EXPORTER_PROMETHEUS_PORT (9464).
    #[arg(long, overrides_with = "metrics_addr")]
    pub metrics_addr: Option<String>,
    /// Do not compute request, process and TCP metrics (sonde's own metrics stay).
    #[arg(long)]
    pub no_metrics: bool,
    /// Series per request metric before further ones fold into one `otel.metric.overflow=true`
    /// series.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_series_limit: u64,
    /// OTLP metrics export interval in milliseconds (default OTEL_METRIC_EXPORT_INTERVAL, else 60000).
    #[arg(long)]
    pub metric_export_interval_ms: Option<u64>,
    /// Seconds the series of processes that exited are kept.
    #[arg(long, default_value_t = 300)]
    pub metrics_stale_after_s: u64,
    /// Largest OTLP message the receiver accepts, after decompression, in MiB.
    #[arg(long, default_value_t = 64)]
    pub otlp_max_message_mib: usize,
    /// How long eBPF spans of SDK-instrumented processes wait for the SDK's spans to merge with.
    #[arg(long, default_value_t = 10_000)]
    pub merge_window_ms: u64,
    /// Memory budget of the whole daemon in MiB (default: 80% of the cgroup's limit, or 512).
    /// The exporter queue gets half, the receiver's in-flight requests an eighth.
    #[arg(long)]
    pub memory_budget_mib: Option<usize>,
    /// Head sampler (default: OTEL_TRACES_SAMPLER, else parentbased_always_on): always_on,
    /// always_off, traceidratio, parentbased_always_on, parentbased_always_off,
    /// parentbased_traceidratio.
    #[arg(long)]
    pub traces_sampler: Option<String>,
    /// The sampler's argument (the ratio for *traceidratio; default OTEL_TRACES_SAMPLER_ARG, else 1).
    #[arg(long)]
    pub traces_sampler_arg: Option<String>,
    /// Scheduling niceness of the daemon (0..19). A higher value lets the traced applications
    /// win the CPU (their p99 at 10k req/s halves at 10) but, on a saturated node, sonde may then
    /// fall behind and lose ring-buffer records; the default keeps every record.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,
    /// Benchmark baseline: attach programs that do nothing (measures the cost of the hooks alone).
    #[arg(long, hide = true)]
    pub noop_probes: bool,
    /// Benchmarking knob: stop the span pipeline after this stage and drop what it made, to
    /// measure where the daemon's time goes (`cargo xtask bench --suite http`). Default: the
    /// full pipeline. No spans leave the daemon with any stop.
    #[arg(long, value_enum, value_name = "STAGE")]
    pub pipeline_stop: Option<PipelineStop>,
    /// Do not attach the OpenSSL uprobes: TLS connections are untracked, and processes using
    /// OpenSSL pay no uprobe trap per SSL_read/SSL_write (see the HTTPS benchmark).
    #[arg(long)]
    pub no_tls: bool,
    /// Seconds to flush queued telemetry on SIGTERM before giving up.
    #[arg(long, default_value_t = 25)]
    pub shutdown_timeout_s: u64,
    #[command(flatten)]
    pub k8s: sonde_k8s::K8sArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} {value:?}: {reason}")]
    Flag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("OTLP exporter settings: {0}")]
    Otlp(#[from] sonde_otlp_export::ConfigError),
    #[error(
        "--output otlp needs an endpoint: pass --otlp-endpoint or set OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    OtlpWithoutEndpoint,
    #[error(transparent)]
    K8s(#[from] sonde_k8s::K8sError),
}

/// The resolved configuration.
#[derive(Debug)]
pub struct Config {
    pub pids: Vec<u32>,
    pub selection: Selection,
    pub routes: RouteTemplates,
    /// Opt-in: export the (redacted) command line as resource attributes.
    pub export_command_line: bool,
    pub capture_bytes: u32,
    pub postgres_capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    pub exporter: ExporterConfig,
    pub receiver_grpc: Option<SocketAddr>,
    pub receiver_http: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    pub noop_probes: bool,
    /// Benchmarks: cut the pipeline after this stage (None: full pipeline).
    pub pipeline_stop: Option<PipelineStop>,
    /// Attach the OpenSSL uprobes (TLS plaintext).
    pub tls: bool,
    pub nice: i32,
    pub sampler: Sampler,
    pub receiver_max_message_bytes: usize,
    pub receiver_max_inflight_bytes: usize,
    pub merge_window: Duration,
    pub memory_budget_bytes: usize,
    pub metrics_addr: Option<SocketAddr>,
    pub k8s: sonde_k8s::K8sConfig,
    pub metrics: MetricsConfig,
}

/// Request/process/TCP metrics settings.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub registry: sonde_metrics::Config,
    pub export_interval: Duration,
}

/// Items per export request without `--export-batch-size` or OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
/// An SDK's 512 is sized for one process; a node's daemon sends every process's spans, and
/// each request has a fixed cost (a wake-up of the exporter, HTTP/2 headers and frames, the
/// answer): under nginx at max rate, 2048 took about a tenth less daemon CPU than 512. The
/// Collector's batch processor sends 8192. The 4 MiB byte bound still cuts large spans.
const DEFAULT_EXPORT_BATCH_SIZE: u64 = 2048;

/// The number in environment variable `var` (the fallback of `--flag`), if set: a clear error
/// naming both when it is not a whole number in `accepted` (`what` says what it must be).
fn env_number(
    env: &impl Fn(&str) -> Option<String>,
    var: &str,
    flag: &'static str,
    accepted: std::ops::RangeInclusive<u64>,
    what: &str,
) -> Result<Option<u64>, ConfigError> {
    let Some(v) = env(var) else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(n) if accepted.contains(&n) => Ok(Some(n)),
        _ => Err(ConfigError::Flag {
            flag,
            value: v.clone(),
            reason: format!("{var} must be {what}"),
        }),
    }
}

/// Heap bytes a queued span takes per byte of its protobuf encoding (decoded OTLP with typical attributes: up to ~8).
const QUEUED_SPAN_MEMORY_FACTOR: usize = 8;

/// The memory limit of sonde's own cgroup (v2 `memory.max`, or v1), if there is one.
fn cgroup_memory_limit() -> Option<usize> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(file) {
            // "max" or a huge v1 sentinel mean no limit.
            if let Ok(n) = v.trim().parse::<usize>()
                && n < (1 << 50)
            {
                return Some(n);
            }
        }
    }
    None
}

fn parse_addr(flag: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.eq_ignore_ascii_case("off") || value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e: std::net::AddrParseError| ConfigError::Flag {
            flag,
            value: value.to_owned(),
            reason: format!("{e} (expected IP:PORT or `off`)"),
        })
}

impl Config {
    /// Resolves flags plus the environment (`env` abstracts it for tests).
    pub fn resolve(
        args: RunArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        for route in &args.routes {
            if !route.starts_with('/') {
                return Err(ConfigError::Flag {
                    flag: "route",
                    value: route.clone(),
                    reason: "a route template starts with /".into(),
                });
            }
        }
        let endpoints: Vec<OtlpEndpoint> = if args.otlp_endpoints.is_empty() {
            // One endpoint per group of signals that share settings (per-signal variables).
            OtlpEndpoint::all_from_env(&env)?
        } else {
            let protocol = match args.otlp_protocol {
                Some(ProtocolArg::Grpc) => Protocol::Grpc,
                Some(ProtocolArg::HttpJson) => Protocol::HttpJson,
                Some(ProtocolArg::HttpProtobuf) => Protocol::HttpProtobuf,
                None => match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref().map(str::trim) {
                    Some("grpc") => Protocol::Grpc,
                    Some("http/json") => Protocol::HttpJson,
                    _ => Protocol::HttpProtobuf,
                },
            };
            let protocol_name = match protocol {
                Protocol::Grpc => "grpc",
                Protocol::HttpProtobuf => "http/protobuf",
                Protocol::HttpJson => "http/json",
            };
            let mut out = Vec::new();
            for url in &args.otlp_endpoints {
                // The flag replaces every endpoint and protocol variable; headers, timeout,
                // TLS and compression still come from the environment.
                let endpoint = OtlpEndpoint::from_env(|k| {
                    if k == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                        Some(url.clone())
                    } else if k == "OTEL_EXPORTER_OTLP_PROTOCOL" {
                        Some(protocol_name.to_owned())
                    } else if k.ends_with("_ENDPOINT") || k.ends_with("_PROTOCOL") {
                        None
                    } else {
                        env(k)
                    }
                })?;
                out.push(endpoint.unwrap_or_else(|| OtlpEndpoint::for_base_url(url, protocol)));
            }
            out
        };
        let outputs = match (args.output, endpoints.is_empty()) {
            (Some(OutputKind::Text), _) => vec![Output::Text],
            (Some(OutputKind::Json), _) => vec![Output::Json],
            (Some(OutputKind::Otlp), true) => return Err(ConfigError::OtlpWithoutEndpoint),
            (Some(OutputKind::Otlp) | None, false) => {
                endpoints.into_iter().map(Output::Otlp).collect()
            }
            (None, true) => vec![Output::Text],
        };
        let sampler_name = args
            .traces_sampler
            .clone()
            .or_else(|| env("OTEL_TRACES_SAMPLER"));
        let sampler_arg = args
            .traces_sampler_arg
            .clone()
            .or_else(|| env("OTEL_TRACES_SAMPLER_ARG"));
        let sampler =
            Sampler::parse(sampler_name.as_deref(), sampler_arg.as_deref()).map_err(|reason| {
                ConfigError::Flag {
                    flag: "traces-sampler",
                    value: sampler_name.unwrap_or_default(),
                    reason,
                }
            })?;
        let memory_budget_bytes = match args.memory_budget_mib {
            Some(0) => {
                return Err(ConfigError::Flag {
                    flag: "memory-budget-mib",
                    value: "0".into(),
                    reason: "must be above 0".into(),
                });
            }
            Some(mib) => mib.saturating_mul(1 << 20),
            // The container's limit from the downward API (the manifests set it), else the cgroup's.
            None => (env("SONDE_MEMORY_LIMIT_BYTES").and_then(|v| v.trim().parse().ok()))
                .or_else(cgroup_memory_limit)
                .map(|l| l / 10 * 8)
                .unwrap_or(512 << 20),
        };
        if args.otlp_max_message_mib == 0 {
            return Err(ConfigError::Flag {
                flag: "otlp-max-message-mib",
                value: "0".into(),
                reason: "must be above 0".into(),
            });
        }
        let metrics_addr = match args.metrics_addr.clone() {
            Some(a) => a,
            None => {
                let host = env("OTEL_EXPORTER_PROMETHEUS_HOST").unwrap_or_else(|| "0.0.0.0".into());
                let port = env("OTEL_EXPORTER_PROMETHEUS_PORT").unwrap_or_else(|| "9464".into());
                if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]:{port}")
                } else if host == "localhost" {
                    format!("127.0.0.1:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
        };
        let export_interval_ms = match args.metric_export_interval_ms {
            Some(ms) => ms,
            None => env_number(
                &env,
                "OTEL_METRIC_EXPORT_INTERVAL",
                "metric-export-interval-ms",
                0..=u64::MAX,
                "milliseconds",
            )?
            .unwrap_or(60_000),
        };
        let batch_max_items = match args.export_batch_size {
            Some(n) => n,
            None => env_number(
                &env,
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                "export-batch-size",
                1..=1_000_000,
                "1 to 1000000",
            )?
            .unwrap_or(DEFAULT_EXPORT_BATCH_SIZE),
        };
        let exporter = ExporterConfig {
            outputs,
            batch_timeout: Duration::from_millis(args.batch_timeout_ms.max(1)),
            batch_max_items: usize::try_from(batch_max_items).unwrap_or(usize::MAX),
            // The queue counts encoded (protobuf) bytes; spans in memory take up to about eight
            // times that (strings, vectors, attribute structs), so half the budget in memory
            // is a sixteenth in encoded bytes.
            queue_max_bytes: (memory_budget_bytes / 2 / QUEUED_SPAN_MEMORY_FACTOR).max(1 << 20),
            ..ExporterConfig::default()
        };
        Ok(Config {
            pids: args.pids,
            selection: Selection {
                ports: args.ports.into_iter().collect::<HashSet<_>>(),
                executables: args.executables.into_iter().collect(),
            },
            routes: RouteTemplates::with_guard(
                &args.routes,
                args.route_max_values,
                args.raw_url_path,
            ),
            export_command_line: args.export_command_line,
            capture_bytes: args.capture_bytes,
            postgres_capture_bytes: args.postgres_capture_bytes,
            ring_buffer_bytes: args.ring_buffer_bytes,
            exporter,
            receiver_grpc: parse_addr("otlp-grpc-addr", &args.otlp_grpc_addr)?,
            receiver_http: parse_addr("otlp-http-addr", &args.otlp_http_addr)?,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout_s),
            noop_probes: args.noop_probes,
            pipeline_stop: args.pipeline_stop,
            tls: !args.no_tls,
            nice: args.nice,
            sampler,
            receiver_max_message_bytes: args.otlp_max_message_mib.saturating_mul(1 << 20),
            receiver_max_inflight_bytes: (memory_budget_bytes / 8).max(1 << 20),
            merge_window: Duration::from_millis(args.merge_window_ms),
            memory_budget_bytes,
            metrics_addr: parse_addr("metrics-addr", &metrics_addr)?,
            k8s: args.k8s.resolve(&env)?,
            metrics: MetricsConfig {
                enabled: !args.no_metrics,
                registry: sonde_metrics::Config {
                    series_limit: usize::try_from(args.metrics_series_limit).unwrap_or(usize::MAX),
                    // The sixteenth of the budget the other parts leave.
                    memory_budget_bytes: (memory_budget_bytes / 16).max(1 << 20),
                    stale_after_ns: args.metrics_stale_after_s.saturating_mul(1_000_000_000),
                },
                export_interval: Duration::from_millis(export_interval_ms.max(100)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["sonde", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => a,
        }
    }

    #[test]
    fn defaults_print_text_without_an_endpoint() {
        let c = Config::resolve(args(&[]), |_| None).unwrap();
        assert_eq!(c.exporter.outputs, vec![Output::Text]);
        assert_eq!(c.receiver_grpc, Some("0.0.0.0:4317".parse().unwrap()));
    }

    #[test]
    fn env_endpoint_selects_otlp() {
        let c = Config::resolve(args(&[]), |k| {
            (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:4318".into())
        })
        .unwrap();
        assert!(
            matches!(&c.exporter.outputs[0], Output::Otlp(e) if e.traces_url.as_deref() == Some("http://127.0.0.1:4318/v1/traces"))
        );
    }

    #[test]
    fn flag_endpoint_over_http_appends_signal_paths_and_wins_over_env() {
        let env = |k: &str| {
            (k == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| "http://elsewhere:1/x".to_owned())
        };
        let c = Config::resolve(
            args(&[
                "--otlp-endpoint",
                "http://127.0.0.1:4318",
                "--otlp-protocol",
                "http/protobuf",
            ]),
            env,
        )
        .unwrap();
        assert!(
            matches!(&c.exporter.outputs[0], Output::Otlp(e) if e.traces_url.as_deref() == Some("http://127.0.0.1:4318/v1/traces"))
        );
    }

    #[test]
    fn flag_endpoint_with_grpc() {
        let c = Config::resolve(
            args(&[
                "--otlp-endpoint",
                "http://127.0.0.1:4317",
                "--otlp-protocol",
                "grpc",
            ]),
            |_| None,
        )
        .unwrap();
        assert!(matches!(&c.exporter.outputs[0], Output::Otlp(e) if e.protocol == Protocol::Grpc));
    }

    #[test]
    fn several_endpoints_export_to_several_backends() {
        let c = Config::resolve(
            args(&[
                "--otlp-endpoint",
                "http://a:4318",
                "--otlp-endpoint",
                "http://b:4318",
            ]),
            |_| None,
        )
        .unwrap();
        assert_eq!(c.exporter.outputs.len(), 2);
    }

    #[test]
    fn memory_budget_splits_into_queue_and_receiver() {
        let c = Config::resolve(args(&["--memory-budget-mib", "100"]), |_| None).unwrap();
        assert_eq!(
            c.exporter.queue_max_bytes,
            (100 << 20) / 2 / QUEUED_SPAN_MEMORY_FACTOR
        );
        assert_eq!(c.receiver_max_inflight_bytes, (100 << 20) / 8);
        assert!(Config::resolve(args(&["--memory-budget-mib", "0"]), |_| None).is_err());
    }

    #[test]
    fn memory_budget_follows_the_container_limit_from_the_downward_api() {
        let env = |k: &str| (k == "SONDE_MEMORY_LIMIT_BYTES").then(|| "104857600".to_owned());
        let c = Config::resolve(args(&[]), env).unwrap();
        assert_eq!(c.memory_budget_bytes, 104_857_600 / 10 * 8);
        let c = Config::resolve(args(&["--memory-budget-mib", "50"]), env).unwrap();
        assert_eq!(c.memory_budget_bytes, 50 << 20);
    }

    #[test]
    fn export_batch_size_from_flag_env_or_default() {
        let c = Config::resolve(args(&[]), |_| None).unwrap();
        assert_eq!(c.exporter.batch_max_items, 2048);
        let env = |k: &str| (k == "OTEL_BSP_MAX_EXPORT_BATCH_SIZE").then(|| " 300 ".to_owned());
        assert_eq!(
            Config::resolve(args(&[]), env)
                .unwrap()
                .exporter
                .batch_max_items,
            300
        );
        let flag = args(&["--export-batch-size", "64"]);
        assert_eq!(
            Config::resolve(flag, env).unwrap().exporter.batch_max_items,
            64
        );
        for bad in ["0", "many", "-1"] {
            let env = |k: &str| (k == "OTEL_BSP_MAX_EXPORT_BATCH_SIZE").then(|| bad.to_owned());
            let err = Config::resolve(args(&[]), env).unwrap_err().to_string();
            assert!(err.contains("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), "{err}");
        }
        assert!(Cli::try_parse_from(["sonde", "run", "--export-batch-size", "0"]).is_err());
    }

    #[test]
    fn sampler_from_env_and_flags() {
        let env = |k: &str| match k {
            "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_owned()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.5".to_owned()),
            _ => None,
        };
        let c = Config::resolve(args(&[]), env).unwrap();
        assert_eq!(
            c.sampler,
            Sampler::parse(Some("traceidratio"), Some("0.5")).unwrap()
        );
        let c = Config::resolve(args(&["--traces-sampler", "always_off"]), env).unwrap();
        assert_eq!(c.sampler.root, crate::trace::sampler::RootRule::AlwaysOff);
        assert!(Config::resolve(args(&["--traces-sampler", "nope"]), |_| None).is_err());
    }

    #[test]
    fn prometheus_address_and_export_interval_from_env() {
        let env = |k: &str| match k {
            "OTEL_EXPORTER_PROMETHEUS_HOST" => Some("127.0.0.1".to_owned()),
            "OTEL_EXPORTER_PROMETHEUS_PORT" => Some("9999".to_owned()),
            "OTEL_METRIC_EXPORT_INTERVAL" => Some("5000".to_owned()),
            _ => None,
        };
        let c = Config::resolve(args(&[]), env).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(c.metrics.export_interval, Duration::from_secs(5));
        let c = Config::resolve(args(&["--metrics-addr", "off"]), env).unwrap();
        assert_eq!(c.metrics_addr, None);
        let c = Config::resolve(args(&[]), |_| None).unwrap();
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));
        assert!(c.metrics.enabled);
        assert!(
            Config::resolve(args(&[]), |k| (k == "OTEL_METRIC_EXPORT_INTERVAL")
                .then(|| "x".into()))
            .is_err()
        );
    }

    #[test]
    fn typos_are_clear_errors() {
        assert!(Cli::try_parse_from(["sonde", "run", "--capture-bytes", "1000000"]).is_err());
        assert!(
            Cli::try_parse_from(["sonde", "run", "--ring-buffer-bytes", "4000000000"]).is_err()
        );
        assert!(Cli::try_parse_from(["sonde", "run", "--outptu", "json"]).is_err());
        let e = Config::resolve(args(&["--otlp-grpc-addr", "nope"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("otlp-grpc-addr"), "{e}");
        let e = Config::resolve(args(&["--output", "otlp"]), |_| None).unwrap_err();
        assert!(matches!(e, ConfigError::OtlpWithoutEndpoint));
        let e = Config::resolve(args(&["--route", "users/{id}"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("route"));
        let e = Config::resolve(args(&[]), |k| {
            (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "not a url".into())
        });
        assert!(e.is_err());
    }

    #[test]
    fn pipeline_stop_defaults_to_the_full_pipeline() {
        assert_eq!(
            Config::resolve(args(&[]), |_| None).unwrap().pipeline_stop,
            None
        );
        for (arg, stop) in [
            ("drain", PipelineStop::Drain),
            ("parse", PipelineStop::Parse),
            ("build", PipelineStop::Build),
            ("encode", PipelineStop::Encode),
        ] {
            let c = Config::resolve(args(&["--pipeline-stop", arg]), |_| None).unwrap();
            assert_eq!(c.pipeline_stop, Some(stop));
            assert_eq!(stop.name(), arg);
        }
        assert!(Cli::try_parse_from(["sonde", "run", "--pipeline-stop", "export"]).is_err());
    }
}
