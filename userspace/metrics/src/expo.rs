//! Prometheus exposition writer: the classic text format (0.0.4) and OpenMetrics 1.0, chosen
//! from the scraper's `Accept` header, plus the OpenTelemetry -> Prometheus name rules.
//!
//! Why not the `prometheus` crate: its registry wants each metric's label *names* fixed when
//! the metric is created, while sonde's series carry whatever identity a process has
//! (`k8s_*` labels only where known), are folded into an overflow series past a limit and are
//! dropped when their processes exit; and it writes only the classic format (no OpenMetrics).
//! Both formats from one aggregated state are a small writer, tested against
//! `promtool check metrics` end to end.
use std::fmt::Write;

/// Which text format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Classic,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the scraper lists it in `Accept` (Prometheus does by default), else the
    /// classic format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// `target_info`-style: classic gauge, OpenMetrics `info`.
    Info,
}

/// Writes families one after another; `finish` adds OpenMetrics' `# EOF`.
pub struct Encoder {
    pub format: Format,
    out: String,
}

/// A Prometheus label name from an OpenTelemetry attribute name (`http.route` -> `http_route`).
pub fn label_name(key: &str) -> String {
    let mut s: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// The Prometheus metric name for an OpenTelemetry instrument: dots to underscores, the unit
/// as a suffix (`s` -> `_seconds`, `By` -> `_bytes`, annotations like `{thread}` dropped),
/// `_total` for monotonic counters.
pub fn metric_name(name: &str, unit: &str, counter: bool) -> String {
    let mut s = label_name(name);
    let suffix = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "1" if !counter => "ratio",
        _ => "",
    };
    if !suffix.is_empty() && !s.ends_with(suffix) {
        s.push('_');
        s.push_str(suffix);
    }
    // `promtool check metrics` reserves `_count` for histograms and summaries: a gauge
    // `process.thread.count` becomes `process_threads`.
    if !counter && let Some(stem) = s.strip_suffix("_count") {
        s = format!("{stem}s");
    }
    if counter && !s.ends_with("_total") {
        s.push_str("_total");
    }
    s
}

fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as Prometheus writes it.
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

impl Encoder {
    pub fn new(format: Format) -> Self {
        Encoder {
            format,
            out: String::with_capacity(16 * 1024),
        }
    }

    /// Starts a family. `name` is the classic name (a counter's ends in `_total`, an info
    /// family's in `_info`).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (meta, ty) = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => {
                (name.strip_suffix("_total").unwrap_or(name), "counter")
            }
            (Format::OpenMetrics, Kind::Info) => {
                (name.strip_suffix("_info").unwrap_or(name), "info")
            }
            (Format::Classic, Kind::Info) => (name, "gauge"),
            (_, Kind::Counter) => (name, "counter"),
            (_, Kind::Gauge) => (name, "gauge"),
            (_, Kind::Histogram) => (name, "histogram"),
        };
        let _ = writeln!(self.out, "# HELP {meta} {help}");
        let _ = writeln!(self.out, "# TYPE {meta} {ty}");
    }

    /// One sample. `labels` are already Prometheus label names; `otel` are OpenTelemetry
    /// attribute pairs converted here.
    pub fn sample(
        &mut self,
        name: &str,
        otel: &[&[(std::borrow::Cow<'static, str>, String)]],
        labels: &[(&str, &str)],
        value: &str,
    ) {
        self.out.push_str(name);
        let mut first = true;
        for set in otel {
            for (k, v) in set.iter() {
                self.out.push(if first { '{' } else { ',' });
                first = false;
                self.out.push_str(&label_name(k));
                self.out.push_str("=\"");
                escape_into(&mut self.out, v);
                self.out.push('"');
            }
        }
        for (k, v) in labels {
            self.out.push(if first { '{' } else { ',' });
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_into(&mut self.out, v);
            self.out.push('"');
        }
        if !first {
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
        self.out.push('\n');
    }

    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_rules() {
        assert_eq!(
            metric_name("http.server.request.duration", "s", false),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            metric_name("process.cpu.time", "s", true),
            "process_cpu_time_seconds_total"
        );
        assert_eq!(
            metric_name("process.memory.usage", "By", false),
            "process_memory_usage_bytes"
        );
        assert_eq!(
            metric_name("process.thread.count", "{thread}", false),
            "process_threads"
        );
        assert_eq!(
            metric_name(
                "process.unix.file_descriptor.count",
                "{file_descriptor}",
                false
            ),
            "process_unix_file_descriptors"
        );
        assert_eq!(label_name("k8s.pod.name"), "k8s_pod_name");
        assert_eq!(label_name("9x"), "_9x");
    }

    #[test]
    fn formats_differ_in_counter_metadata_and_eof() {
        for format in [Format::Classic, Format::OpenMetrics] {
            let mut e = Encoder::new(format);
            e.family("x_total", Kind::Counter, "Help.");
            let id: crate::Labels = vec![("service.name".into(), "a\"b".to_owned())];
            e.sample("x_total", &[&id], &[("le", "+Inf")], "3");
            let out = e.finish();
            let expected_meta = match format {
                Format::Classic => "# TYPE x_total counter",
                Format::OpenMetrics => "# TYPE x counter",
            };
            assert!(out.contains(expected_meta), "{out}");
            assert!(out.contains("x_total{service_name=\"a\\\"b\",le=\"+Inf\"} 3\n"));
            assert_eq!(out.ends_with("# EOF\n"), format == Format::OpenMetrics);
        }
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("*/*")), Format::Classic);
    }
}
