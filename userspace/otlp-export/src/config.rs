//! Exporter configuration: outputs, endpoints, queue/batch bounds, retry policy, and the
//! resolution of the standard `OTEL_EXPORTER_OTLP_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

/// Wire protocol of an OTLP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (tonic).
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    HttpProtobuf,
    /// OTLP/HTTP with OTLP/JSON bodies (hex ids, lowerCamelCase keys).
    HttpJson,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// gzip (`Content-Encoding: gzip` / gRPC `grpc-encoding: gzip`).
    Gzip,
}

/// One OTLP destination. A signal whose URL is `None` is not sent to this endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpEndpoint {
    /// Full URL for traces (`http://host:4318/v1/traces`; for gRPC `http://host:4317`).
    pub traces_url: Option<String>,
    /// Full URL for metrics.
    pub metrics_url: Option<String>,
    /// Full URL for logs.
    pub logs_url: Option<String>,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Extra request headers (gRPC: metadata).
    pub headers: Vec<(String, String)>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Body compression.
    pub compression: Compression,
    /// PEM file with the CA certificate(s) to trust for https; `None` uses the bundled web PKI roots.
    pub ca_certificate: Option<PathBuf>,
    /// gRPC only: use plaintext when the URL has no scheme (`OTEL_EXPORTER_OTLP_INSECURE`).
    pub insecure: bool,
}

impl OtlpEndpoint {
    /// An endpoint for all three signals at a collector base URL (`http://host:4318` for HTTP,
    /// `http://host:4317` for gRPC); `v1/<signal>` is appended for the HTTP protocols.
    pub fn for_base_url(base: &str, protocol: Protocol) -> Self {
        let url = |signal: &str| match protocol {
            Protocol::Grpc => base.to_string(),
            Protocol::HttpProtobuf | Protocol::HttpJson => append_signal_path(base, signal),
        };
        OtlpEndpoint {
            traces_url: Some(url("traces")),
            metrics_url: Some(url("metrics")),
            logs_url: Some(url("logs")),
            protocol,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            compression: Compression::None,
            ca_certificate: None,
            insecure: false,
        }
    }

    /// Build from the standard OTEL_EXPORTER_OTLP_* variables (ENDPOINT + per-signal
    /// TRACES/METRICS/LOGS_ENDPOINT where `v1/<signal>` is appended only to the base URL,
    /// PROTOCOL (grpc, http/protobuf, http/json; default http/protobuf per spec), HEADERS
    /// (percent-decoded k=v,k=v), TIMEOUT (ms), COMPRESSION, CERTIFICATE, INSECURE, and their
    /// per-signal variants). `lookup` abstracts the environment so tests don't touch process env.
    /// Returns Ok(None) when no endpoint is set.
    ///
    /// Per-signal settings that make the signals disagree (say traces over gRPC, metrics over
    /// HTTP) cannot be expressed by one endpoint: that is [`ConfigError::SignalsDiffer`]; use
    /// [`OtlpEndpoint::all_from_env`], which returns one endpoint per group of signals.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let mut all = Self::all_from_env(lookup)?;
        match all.len() {
            0 => Ok(None),
            1 => Ok(all.pop()),
            _ => Err(ConfigError::SignalsDiffer),
        }
    }

    /// Like [`OtlpEndpoint::from_env`], but signals with different per-signal settings become
    /// separate endpoints (each with only its signals' URLs set). Empty when no endpoint is set.
    pub fn all_from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Vec<Self>, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut out: Vec<OtlpEndpoint> = Vec::new();
        for signal in ["traces", "metrics", "logs"] {
            let upper = signal.to_ascii_uppercase();
            // Per-signal variable first, then the general one.
            let var = |what: &str| -> Option<(String, String)> {
                let specific = format!("OTEL_EXPORTER_OTLP_{upper}_{what}");
                if let Some(v) = get(&specific) {
                    return Some((specific, v));
                }
                let general = format!("OTEL_EXPORTER_OTLP_{what}");
                get(&general).map(|v| (general, v))
            };
            let protocol = match var("PROTOCOL") {
                None => Protocol::HttpProtobuf,
                Some((name, v)) => parse_protocol(&name, &v)?,
            };
            let specific_endpoint = format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT");
            let url = if let Some(v) = get(&specific_endpoint) {
                normalize_url(&specific_endpoint, &v, protocol)?
            } else if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
                let base = normalize_url("OTEL_EXPORTER_OTLP_ENDPOINT", &v, protocol)?;
                match protocol {
                    Protocol::Grpc => base,
                    Protocol::HttpProtobuf | Protocol::HttpJson => {
                        append_signal_path(&base, signal)
                    }
                }
            } else {
                continue;
            };
            let headers = match var("HEADERS") {
                None => Vec::new(),
                Some((name, v)) => parse_headers(&name, &v)?,
            };
            let timeout = match var("TIMEOUT") {
                None => DEFAULT_TIMEOUT,
                Some((name, v)) => parse_timeout(&name, &v)?,
            };
            let compression = match var("COMPRESSION") {
                None => Compression::None,
                Some((name, v)) => parse_compression(&name, &v)?,
            };
            let insecure = match var("INSECURE") {
                None => false,
                Some((name, v)) => parse_bool(&name, &v)?,
            };
            let ca_certificate = var("CERTIFICATE").map(|(_, v)| PathBuf::from(v));
            let url = if protocol == Protocol::Grpc && !url.contains("://") {
                if insecure {
                    format!("http://{url}")
                } else {
                    format!("https://{url}")
                }
            } else {
                url
            };
            let endpoint = OtlpEndpoint {
                traces_url: None,
                metrics_url: None,
                logs_url: None,
                protocol,
                headers,
                timeout,
                compression,
                ca_certificate,
                insecure,
            };
            let same_settings = |e: &OtlpEndpoint| {
                e.protocol == endpoint.protocol
                    && e.headers == endpoint.headers
                    && e.timeout == endpoint.timeout
                    && e.compression == endpoint.compression
                    && e.ca_certificate == endpoint.ca_certificate
                    && e.insecure == endpoint.insecure
            };
            let idx = match out.iter().position(same_settings) {
                Some(i) => i,
                None => {
                    out.push(endpoint);
                    out.len().saturating_sub(1)
                }
            };
            if let Some(target) = out.get_mut(idx) {
                match signal {
                    "traces" => target.traces_url = Some(url),
                    "metrics" => target.metrics_url = Some(url),
                    _ => target.logs_url = Some(url),
                }
            }
        }
        Ok(out)
    }

    /// The URL for `signal`, if this endpoint takes it.
    pub fn url(&self, signal: crate::Signal) -> Option<&str> {
        match signal {
            crate::Signal::Traces => self.traces_url.as_deref(),
            crate::Signal::Metrics => self.metrics_url.as_deref(),
            crate::Signal::Logs => self.logs_url.as_deref(),
        }
    }
}

/// Default per-attempt timeout (OTLP spec: 10 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the exporter sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// An OTLP endpoint (collector, Jaeger, vendor).
    Otlp(OtlpEndpoint),
    /// One readable line per span on stdout (metrics and logs: a short line per metric / record).
    Text,
    /// One OTLP/JSON export request per line on stdout, as the OpenTelemetry file exporter
    /// writes them: `{"resourceSpans":[...]}` (resp. `resourceMetrics`, `resourceLogs`).
    Json,
}

impl Output {
    /// A short label for logs and stats: `otlp-grpc`, `otlp-http`, `text`, `json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Output::Otlp(e) => match e.protocol {
                Protocol::Grpc => "otlp-grpc",
                Protocol::HttpProtobuf => "otlp-http-protobuf",
                Protocol::HttpJson => "otlp-http-json",
            },
            Output::Text => "text",
            Output::Json => "json",
        }
    }
}

/// Retry with exponential backoff (OTLP defaults: 5 s, x1.5, max 30 s, give up after 300 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// First wait.
    pub initial: Duration,
    /// Growth factor per retry.
    pub multiplier: f64,
    /// Cap of a single wait (also caps a server's Retry-After / RetryInfo).
    pub max_interval: Duration,
    /// Give up (drop and count) once retrying would go past this much time since the first attempt.
    pub max_elapsed: Duration,
    /// Randomization factor in [0, 1]: each wait is drawn from `interval * [1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(5),
            multiplier: 1.5,
            max_interval: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
            jitter: 0.5,
        }
    }
}

/// Everything [`crate::Exporter::start`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterConfig {
    /// Destinations; each gets its own queue and workers (fan-out).
    pub outputs: Vec<Output>,
    /// Byte bound of each output's queue (prost `encoded_len`), including the batches in flight.
    pub queue_max_bytes: usize,
    /// A batch is sent once it holds this many items (spans, metric data points, log records).
    pub batch_max_items: usize,
    /// ... or this many encoded bytes.
    pub batch_max_bytes: usize,
    /// ... or its first item has waited this long.
    pub batch_timeout: Duration,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Batches an OTLP output may have in flight at once (per signal).
    pub max_concurrent_batches: usize,
    /// Deadline [`crate::Exporter::shutdown`] uses when the caller has none (Kubernetes grace: 30 s).
    pub shutdown_timeout: Duration,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            outputs: Vec::new(),
            queue_max_bytes: 64 * 1024 * 1024,
            batch_max_items: 512,
            batch_max_bytes: 4 * 1024 * 1024,
            batch_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            shutdown_timeout: Duration::from_secs(30),
            max_concurrent_batches: 4,
        }
    }
}

impl ExporterConfig {
    /// Checks the bounds; `Exporter::start` calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queue_max_bytes == 0 {
            return Err(ConfigError::Invalid("queue_max_bytes must be > 0".into()));
        }
        if self.batch_max_items == 0 {
            return Err(ConfigError::Invalid("batch_max_items must be > 0".into()));
        }
        if self.batch_max_bytes == 0 {
            return Err(ConfigError::Invalid("batch_max_bytes must be > 0".into()));
        }
        let r = &self.retry;
        if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
            return Err(ConfigError::Invalid(
                "retry.multiplier must be a finite number >= 1".into(),
            ));
        }
        if !(r.jitter.is_finite() && (0.0..=1.0).contains(&r.jitter)) {
            return Err(ConfigError::Invalid(
                "retry.jitter must be in [0, 1]".into(),
            ));
        }
        for output in &self.outputs {
            if let Output::Otlp(e) = output {
                if e.traces_url.is_none() && e.metrics_url.is_none() && e.logs_url.is_none() {
                    return Err(ConfigError::Invalid(
                        "an OTLP output needs at least one of traces_url, metrics_url, logs_url"
                            .into(),
                    ));
                }
                for url in [&e.traces_url, &e.metrics_url, &e.logs_url]
                    .into_iter()
                    .flatten()
                {
                    check_url("endpoint", url)?;
                }
                for (k, v) in &e.headers {
                    check_header(k, v)?;
                }
                if e.timeout.is_zero() {
                    return Err(ConfigError::Invalid("endpoint timeout must be > 0".into()));
                }
            }
        }
        Ok(())
    }
}

/// A configuration value sonde cannot use; the message names the variable or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An environment variable has a value outside its domain.
    #[error("{var}={value:?}: {reason}")]
    BadValue {
        /// Variable name.
        var: String,
        /// Offending value (headers are not echoed, they may hold secrets).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Per-signal variables give the signals different settings; use `OtlpEndpoint::all_from_env`.
    #[error(
        "per-signal OTEL_EXPORTER_OTLP_* settings differ between signals; one endpoint cannot hold them (use OtlpEndpoint::all_from_env)"
    )]
    SignalsDiffer,
    /// An `ExporterConfig` field is out of range.
    #[error("invalid exporter configuration: {0}")]
    Invalid(String),
    /// The CA certificate file cannot be read or holds no certificate.
    #[error("CA certificate {path}: {reason}")]
    Certificate {
        /// File path.
        path: String,
        /// Why it is unusable.
        reason: String,
    },
    /// `Exporter::start` was called outside a tokio runtime.
    #[error("Exporter::start must be called inside a tokio runtime")]
    NoRuntime,
}

fn bad(var: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::BadValue {
        var: var.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_protocol(var: &str, v: &str) -> Result<Protocol, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Ok(Protocol::HttpJson),
        _ => Err(bad(var, v, "expected grpc, http/protobuf or http/json")),
    }
}

fn parse_compression(var: &str, v: &str) -> Result<Compression, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err(bad(var, v, "expected gzip or none")),
    }
}

fn parse_bool(var: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(var, v, "expected true or false")),
    }
}

fn parse_timeout(var: &str, v: &str) -> Result<Duration, ConfigError> {
    let ms: u64 = v
        .parse()
        .map_err(|_| bad(var, v, "expected a whole number of milliseconds"))?;
    if ms == 0 {
        return Err(bad(var, v, "timeout must be > 0 ms"));
    }
    Ok(Duration::from_millis(ms))
}

/// `k=v,k2=v2` with percent-encoded keys and values (W3C baggage-like, per the OTLP spec).
pub(crate) fn parse_headers(var: &str, v: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for entry in v.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(bad(
                var,
                "<redacted>",
                &format!(
                    "header entry without '=' (entry {} chars long)",
                    entry.len()
                ),
            ));
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s.trim())
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad(var, "<redacted>", "percent-decoding gives invalid UTF-8"))
        };
        let key = decode(key)?;
        let value = decode(value)?;
        if key.is_empty() {
            return Err(bad(var, "<redacted>", "empty header name"));
        }
        check_header(&key, &value).map_err(|_| {
            bad(
                var,
                "<redacted>",
                &format!(
                    "{key:?} is not a valid header name, or its value is not a valid header value"
                ),
            )
        })?;
        out.push((key, value));
    }
    Ok(out)
}

fn check_header(k: &str, v: &str) -> Result<(), ConfigError> {
    let name_ok = hyper::header::HeaderName::from_bytes(k.as_bytes()).is_ok();
    let value_ok = hyper::header::HeaderValue::from_str(v).is_ok();
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "header {k:?}: invalid name or value"
        )))
    }
}

fn check_url(var: &str, v: &str) -> Result<(), ConfigError> {
    let uri: hyper::Uri = v.parse().map_err(|_| bad(var, v, "not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad(var, v, "URL scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad(var, v, "URL has no host"));
    }
    Ok(())
}

/// Validates an endpoint URL; gRPC accepts `host:port` without a scheme (then INSECURE decides).
fn normalize_url(var: &str, v: &str, protocol: Protocol) -> Result<String, ConfigError> {
    if protocol == Protocol::Grpc && !v.contains("://") {
        check_url(var, &format!("http://{v}"))?;
        return Ok(v.to_string());
    }
    check_url(var, v)?;
    Ok(v.to_string())
}

/// `http://h:4318` -> `http://h:4318/v1/traces`; `http://h/otlp/` -> `http://h/otlp/v1/traces`.
fn append_signal_path(base: &str, signal: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (base, None),
    };
    let mut url = without_query.trim_end_matches('/').to_string();
    url.push_str("/v1/");
    url.push_str(signal);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_path() {
        assert_eq!(
            append_signal_path("http://h:4318", "traces"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            append_signal_path("http://h:4318/", "logs"),
            "http://h:4318/v1/logs"
        );
        assert_eq!(
            append_signal_path("https://h/otlp/", "metrics"),
            "https://h/otlp/v1/metrics"
        );
    }

    #[test]
    fn headers() {
        let h = parse_headers("X", "api-key=a%20b%3Dc , x-tenant=t1,,").unwrap_or_default();
        assert_eq!(
            h,
            vec![
                ("api-key".to_string(), "a b=c".to_string()),
                ("x-tenant".to_string(), "t1".to_string())
            ]
        );
        assert!(parse_headers("X", "novalue").is_err());
        assert!(parse_headers("X", "bad header=1").is_err());
        assert!(parse_headers("X", "=1").is_err());
    }

    #[test]
    fn validate_rejects_zero_bounds() {
        let c = ExporterConfig {
            batch_max_items: 0,
            ..ExporterConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(ExporterConfig::default().validate().is_ok());
    }
}
