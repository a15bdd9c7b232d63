//! Command line and environment, validated once into a [`Config`]; the rest of the daemon
//! never reads the environment again.
use std::{collections::HashSet, net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use sonde_otlp_export::{ExporterConfig, OtlpEndpoint, Output, Protocol};

use crate::{trace::route::RouteTemplates, tracer::Selection};

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
    /// OTLP endpoint (base URL); overrides OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol; overrides OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_enum)]
    pub otlp_protocol: Option<ProtocolArg>,
    /// Route templates that override the inferred ones, e.g. `/api/{version}/items/{id}` (repeatable).
    #[arg(long = "route", value_name = "TEMPLATE")]
    pub routes: Vec<String>,
    /// Ring buffer size in bytes (rounded up to a power of two).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub ring_buffer_bytes: u32,
    /// Span export batch timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub batch_timeout_ms: u64,
    /// OTLP receiver, gRPC address (`off` to disable).
    #[arg(long, default_value = "0.0.0.0:4317")]
    pub otlp_grpc_addr: String,
    /// OTLP receiver, HTTP address (`off` to disable).
    #[arg(long, default_value = "0.0.0.0:4318")]
    pub otlp_http_addr: String,
    /// Benchmark baseline: attach programs that do nothing (measures the cost of the hooks alone).
    #[arg(long, hide = true)]
    pub noop_probes: bool,
    /// Seconds to flush queued telemetry on SIGTERM before giving up.
    #[arg(long, default_value_t = 25)]
    pub shutdown_timeout_s: u64,
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
}

/// The resolved configuration.
#[derive(Debug)]
pub struct Config {
    pub pids: Vec<u32>,
    pub selection: Selection,
    pub routes: RouteTemplates,
    pub capture_bytes: u32,
    pub postgres_capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    pub exporter: ExporterConfig,
    pub receiver_grpc: Option<SocketAddr>,
    pub receiver_http: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    pub noop_probes: bool,
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
        let endpoint = match &args.otlp_endpoint {
            Some(url) => {
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
                // Headers, timeout, TLS and compression still come from the environment.
                let mut from_env = OtlpEndpoint::from_env(|k| {
                    if k == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                        Some(url.clone())
                    } else if k.ends_with("_ENDPOINT") {
                        // The flag replaces every endpoint variable, per-signal ones included.
                        None
                    } else if k == "OTEL_EXPORTER_OTLP_PROTOCOL" {
                        Some(match protocol {
                            Protocol::Grpc => "grpc".into(),
                            Protocol::HttpProtobuf => "http/protobuf".into(),
                            Protocol::HttpJson => "http/json".into(),
                        })
                    } else if k.contains("_PROTOCOL") {
                        None
                    } else {
                        env(k)
                    }
                })?;
                if from_env.is_none() {
                    from_env = Some(OtlpEndpoint::for_base_url(url, protocol));
                }
                from_env
            }
            None => OtlpEndpoint::from_env(&env)?,
        };
        let output = match (args.output, endpoint) {
            (Some(OutputKind::Text), _) => Output::Text,
            (Some(OutputKind::Json), _) => Output::Json,
            (Some(OutputKind::Otlp), None) => return Err(ConfigError::OtlpWithoutEndpoint),
            (Some(OutputKind::Otlp) | None, Some(e)) => Output::Otlp(e),
            (None, None) => Output::Text,
        };
        let exporter = ExporterConfig {
            outputs: vec![output],
            batch_timeout: Duration::from_millis(args.batch_timeout_ms.max(1)),
            ..ExporterConfig::default()
        };
        Ok(Config {
            pids: args.pids,
            selection: Selection {
                ports: args.ports.into_iter().collect::<HashSet<_>>(),
                executables: args.executables.into_iter().collect(),
            },
            routes: RouteTemplates::new(&args.routes),
            capture_bytes: args.capture_bytes,
            postgres_capture_bytes: args.postgres_capture_bytes,
            ring_buffer_bytes: args.ring_buffer_bytes,
            exporter,
            receiver_grpc: parse_addr("otlp-grpc-addr", &args.otlp_grpc_addr)?,
            receiver_http: parse_addr("otlp-http-addr", &args.otlp_http_addr)?,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout_s),
            noop_probes: args.noop_probes,
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
    fn typos_are_clear_errors() {
        assert!(Cli::try_parse_from(["sonde", "run", "--capture-bytes", "1000000"]).is_err());
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
}
