//! sonde's metrics, pure: request histograms (RED) computed from the final span stream,
//! per-process resource use and lifecycle, TCP health, with bounded cardinality and memory,
//! rendered as Prometheus text / OpenMetrics and converted to OTLP metrics (cumulative).
//!
//! The daemon feeds it the OTLP spans it hands to the exporter (after the SDK/eBPF merger, so
//! each request is counted once whoever produced its span), process samples it reads from
//! /proc, kernel lifecycle and TCP events, and byte counts; a scrape or an export interval
//! reads it. No I/O here: every method takes the current time.
pub mod expo;
pub mod otlp;
pub mod request;

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use opentelemetry_proto::tonic::{resource::v1::Resource, trace::v1::ResourceSpans};
use rustc_hash::{FxHashMap, FxHashSet};

pub use expo::{Encoder, Format, Kind};
pub use request::{Measurement, MeasurementRef, RequestMetric, measure, measure_ref};

/// Attribute pairs, sorted by key (OpenTelemetry names; converted at exposition).
pub type Labels = Vec<(Cow<'static, str>, String)>;

/// Limits and lifetimes.
#[derive(Clone, Debug)]
pub struct Config {
    /// Series per metric before further ones fold into the `otel.metric.overflow` series.
    pub series_limit: usize,
    /// Estimated heap bytes all metrics state may take; past it new series fold too.
    pub memory_budget_bytes: usize,
    /// How long series of processes that exited stay (so a last scrape/export sees them).
    pub stale_after_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            series_limit: 2000,
            memory_budget_bytes: 32 << 20,
            stale_after_ns: 300_000_000_000,
        }
    }
}

/// Why a measurement went to the overflow series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoldReason {
    SeriesLimit,
    MemoryBudget,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    /// Shared by every series of a batch's process: no label copies per measurement.
    pub identity: Arc<Labels>,
    pub attributes: Labels,
}

/// A series key borrowed from a measurement, to look its series up without copying labels.
/// It hashes as the [`SeriesKey`] it would become: `&str`, `Cow<str>` and `String` all hash
/// as `str`, and a slice as the `Vec` holding it (tested).
struct SeriesKeyRef<'k, 'a> {
    identity: &'k Labels,
    attributes: &'k [(&'static str, Cow<'a, str>)],
}

impl std::hash::Hash for SeriesKeyRef<'_, '_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity.hash(state);
        self.attributes.hash(state);
    }
}

impl hashbrown::Equivalent<SeriesKey> for SeriesKeyRef<'_, '_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        *key.identity == *self.identity
            && key.attributes.len() == self.attributes.len()
            && key
                .attributes
                .iter()
                .zip(self.attributes)
                .all(|((k, v), (rk, rv))| k == rk && v == rv)
    }
}

/// Request series of one metric, looked up by borrowed labels.
pub(crate) type SeriesMap = hashbrown::HashMap<SeriesKey, Hist, rustc_hash::FxBuildHasher>;

#[derive(Clone, Debug)]
pub(crate) struct Hist {
    /// Per bucket (not cumulative), `bounds.len() + 1` entries, the last one `+Inf`.
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
    pub start_ns: u64,
    pub updated_ns: u64,
}

impl Hist {
    fn new(bounds: usize, now: u64) -> Self {
        Hist {
            buckets: vec![0; bounds + 1],
            sum: 0.0,
            count: 0,
            start_ns: now,
            updated_ns: now,
        }
    }

    fn record(&mut self, bounds: &[f64], v: f64, now: u64) {
        // Prometheus buckets are `le`: a value equal to a bound falls in that bucket.
        let i = bounds.partition_point(|b| *b < v);
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.sum += v;
        self.count += 1;
        self.updated_ns = now;
    }
}

#[derive(Default)]
pub(crate) struct Family {
    pub series: SeriesMap,
    pub overflow: Option<Hist>,
    pub folded_series_limit: u64,
    pub folded_memory: u64,
}

/// One /proc sample of a process (exact values, cumulative where the kernel's are).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub memory_rss_bytes: u64,
    pub memory_virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub voluntary_context_switches: u64,
    pub involuntary_context_switches: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub uptime_seconds: f64,
}

/// How a process ended (from the kernel's `sched_process_exit`, or unknown when only /proc
/// showed it gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Unknown,
}

pub(crate) struct ProcessState {
    pub identity: Labels,
    pub pid_label: String,
    pub sample: Option<ProcessSample>,
    pub net_receive: u64,
    pub net_transmit: u64,
    pub exited_ns: Option<u64>,
    pub start_ns: u64,
}

/// Per service identity: lifecycle and TCP health counters.
#[derive(Default)]
pub(crate) struct IdentityState {
    pub live: FxHashSet<u32>,
    pub last_exit_ns: u64,
    pub starts: u64,
    pub exits: FxHashMap<(&'static str, i32), u64>,
    pub oom_kills: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub failed_connects: FxHashMap<(String, u16), u64>,
    pub failed_connects_folded: u64,
    pub start_ns: u64,
}

/// A TCP health event attributed to a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEvent {
    Retransmit,
    ResetSent,
    ResetReceived,
    /// SYN_SENT -> CLOSE: the connect to this peer failed.
    FailedConnect(IpAddr, u16),
}

/// Direction of `process.network.io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetDirection {
    Receive,
    Transmit,
}

/// Counters about the metrics machinery itself (for `sonde_metrics_*`).
#[derive(Clone, Debug, Default)]
pub struct RegistryStats {
    pub series: [usize; 3],
    pub folded_series_limit: [u64; 3],
    pub folded_memory: [u64; 3],
    pub processes: usize,
    pub memory_bytes: usize,
    pub spans_counted: u64,
}

/// The aggregated state.
pub struct Registry {
    pub(crate) config: Config,
    pub(crate) families: [Family; 3],
    pub(crate) processes: FxHashMap<u32, ProcessState>,
    pub(crate) identities: FxHashMap<Labels, IdentityState>,
    memory_bytes: usize,
    spans_counted: u64,
}

/// Failed-connect peers kept per service before further peers fold into one `other` series.
const MAX_FAILED_CONNECT_PEERS: usize = 64;
const PROCESS_BYTES: usize = 640;

fn labels_bytes(l: &Labels) -> usize {
    l.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>() + 24
}

fn series_bytes(key: &SeriesKey, buckets: usize) -> usize {
    labels_bytes(&key.identity) + labels_bytes(&key.attributes) + buckets * 8 + 96
}

impl Registry {
    pub fn new(config: Config) -> Self {
        Registry {
            config,
            families: Default::default(),
            processes: FxHashMap::default(),
            identities: FxHashMap::default(),
            memory_bytes: 0,
            spans_counted: 0,
        }
    }

    /// Counts the requests in spans about to be exported (one resource per process).
    pub fn observe_spans(&mut self, batches: &[ResourceSpans], now_ns: u64) {
        for rs in batches {
            let spans = rs.scope_spans.iter().flat_map(|ss| &ss.spans);
            self.observe_process(rs.resource.as_ref(), spans, now_ns);
        }
    }

    /// Counts the requests of sonde's own spans, each batch one process's.
    pub fn observe_own_spans(&mut self, batches: &[sonde_span::OwnBatch], now_ns: u64) {
        for batch in batches {
            self.observe_process(Some(&batch.resource), &batch.spans, now_ns);
        }
    }

    fn observe_process<'a, S: request::MeasuredSpan + 'a>(
        &mut self,
        resource: Option<&Resource>,
        spans: impl IntoIterator<Item = &'a S>,
        now_ns: u64,
    ) {
        let identity = Arc::new(request::identity(resource));
        if let Some(pid) = request::pid(resource) {
            self.process_seen(pid, &identity, now_ns);
        }
        for span in spans {
            if let Some(m) = request::measure_ref(span) {
                self.record(&identity, m, now_ns);
            }
        }
    }

    /// Adds one measurement to its series (or to the overflow series past the limits). The
    /// labels are copied only for a new series.
    pub fn record(
        &mut self,
        identity: &Arc<Labels>,
        m: MeasurementRef<'_>,
        now_ns: u64,
    ) -> Option<FoldReason> {
        self.spans_counted += 1;
        let bounds = m.metric.bounds();
        let limit = self.config.series_limit;
        let budget = self.config.memory_budget_bytes;
        let family = &mut self.families[m.metric.index()];
        let probe = SeriesKeyRef {
            identity,
            attributes: &m.attributes,
        };
        if let Some(h) = family.series.get_mut(&probe) {
            h.record(bounds, m.seconds, now_ns);
            return None;
        }
        let key = SeriesKey {
            identity: Arc::clone(identity),
            attributes: request::owned_labels(&m.attributes),
        };
        let cost = series_bytes(&key, bounds.len() + 1);
        let fold = if family.series.len() >= limit {
            Some(FoldReason::SeriesLimit)
        } else if self.memory_bytes + cost > budget {
            Some(FoldReason::MemoryBudget)
        } else {
            None
        };
        match fold {
            None => {
                self.memory_bytes += cost;
                family
                    .series
                    .entry(key)
                    .or_insert_with(|| Hist::new(bounds.len(), now_ns))
                    .record(bounds, m.seconds, now_ns);
            }
            Some(reason) => {
                match reason {
                    FoldReason::SeriesLimit => family.folded_series_limit += 1,
                    FoldReason::MemoryBudget => family.folded_memory += 1,
                }
                family
                    .overflow
                    .get_or_insert_with(|| Hist::new(bounds.len(), now_ns))
                    .record(bounds, m.seconds, now_ns);
            }
        }
        fold
    }

    /// Whether `pid` is known (its identity was given).
    pub fn knows(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// A traced process with this identity is alive (first sight counts as a start).
    pub fn process_seen(&mut self, pid: u32, identity: &Labels, now_ns: u64) {
        if let Some(p) = self.processes.get(&pid)
            && p.exited_ns.is_none()
            && p.identity == *identity
        {
            return;
        }
        if let Some(old) = self.processes.get(&pid)
            && old.exited_ns.is_none()
        {
            // exec into another service: the old identity lost this pid.
            let old_identity = old.identity.clone();
            if let Some(i) = self.identities.get_mut(&old_identity) {
                i.live.remove(&pid);
            }
        }
        if !self.processes.contains_key(&pid) {
            self.memory_bytes += PROCESS_BYTES + labels_bytes(identity);
        }
        self.processes.insert(
            pid,
            ProcessState {
                identity: identity.clone(),
                pid_label: pid.to_string(),
                sample: None,
                net_receive: 0,
                net_transmit: 0,
                exited_ns: None,
                start_ns: now_ns,
            },
        );
        let id = self.identity_state(identity, now_ns);
        id.live.insert(pid);
        id.starts += 1;
    }

    fn identity_state(&mut self, identity: &Labels, now_ns: u64) -> &mut IdentityState {
        if !self.identities.contains_key(identity) {
            self.memory_bytes += 256 + labels_bytes(identity);
        }
        self.identities
            .entry(identity.clone())
            .or_insert_with(|| IdentityState {
                start_ns: now_ns,
                ..Default::default()
            })
    }

    /// The latest /proc sample of a known process.
    pub fn set_process_sample(&mut self, pid: u32, sample: ProcessSample) {
        if let Some(p) = self.processes.get_mut(&pid)
            && p.exited_ns.is_none()
        {
            p.sample = Some(sample);
        }
    }

    /// Bytes a known process moved on a traced socket.
    pub fn add_network_bytes(&mut self, pid: u32, direction: NetDirection, bytes: u64) {
        if let Some(p) = self.processes.get_mut(&pid) {
            match direction {
                NetDirection::Receive => p.net_receive += bytes,
                NetDirection::Transmit => p.net_transmit += bytes,
            }
        }
    }

    /// A known process ended (kernel event or /proc gone). Repeated calls count once.
    pub fn process_exited(&mut self, pid: u32, exit: Exit, now_ns: u64) {
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        if p.exited_ns.is_some() {
            return;
        }
        p.exited_ns = Some(now_ns);
        let identity = p.identity.clone();
        let id = self.identity_state(&identity, now_ns);
        id.live.remove(&pid);
        id.last_exit_ns = now_ns;
        let key = match exit {
            Exit::Code(c) => ("code", c),
            Exit::Signal(s) => ("signal", s),
            Exit::Unknown => ("unknown", 0),
        };
        *id.exits.entry(key).or_default() += 1;
    }

    /// The OOM killer chose this process.
    pub fn oom_kill(&mut self, pid: u32, now_ns: u64) {
        if let Some(identity) = self.processes.get(&pid).map(|p| p.identity.clone()) {
            self.identity_state(&identity, now_ns).oom_kills += 1;
        }
    }

    /// A TCP health event of a known process.
    pub fn tcp_event(&mut self, pid: u32, event: TcpEvent, now_ns: u64) {
        let Some(identity) = self.processes.get(&pid).map(|p| p.identity.clone()) else {
            return;
        };
        let id = self.identity_state(&identity, now_ns);
        match event {
            TcpEvent::Retransmit => id.retransmits += 1,
            TcpEvent::ResetSent => id.resets_sent += 1,
            TcpEvent::ResetReceived => id.resets_received += 1,
            TcpEvent::FailedConnect(ip, port) => {
                let key = (ip.to_string(), port);
                if id.failed_connects.contains_key(&key)
                    || id.failed_connects.len() < MAX_FAILED_CONNECT_PEERS
                {
                    *id.failed_connects.entry(key).or_default() += 1;
                } else {
                    id.failed_connects_folded += 1;
                }
            }
        }
    }

    /// Pids believed alive (for the /proc sampler).
    pub fn live_pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .filter(|(_, p)| p.exited_ns.is_none())
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Drops what exited more than `stale_after` ago: processes, and request series of
    /// services with no live process left that were not updated since.
    pub fn sweep(&mut self, now_ns: u64) {
        let stale = self.config.stale_after_ns;
        let old = |t: u64| now_ns.saturating_sub(t) > stale;
        let mut freed = 0;
        self.processes.retain(|_, p| {
            let keep = !p.exited_ns.is_some_and(old);
            if !keep {
                freed += PROCESS_BYTES + labels_bytes(&p.identity);
            }
            keep
        });
        let identities = &self.identities;
        for (i, family) in self.families.iter_mut().enumerate() {
            let buckets = RequestMetric::ALL[i].bounds().len() + 1;
            family.series.retain(|k, h| {
                let alive = identities
                    .get(&*k.identity)
                    .is_some_and(|s| !s.live.is_empty());
                let keep = alive || !old(h.updated_ns);
                if !keep {
                    freed += series_bytes(k, buckets);
                }
                keep
            });
        }
        let families = &self.families;
        self.identities.retain(|k, s| {
            let keep = !s.live.is_empty()
                || !old(s.last_exit_ns)
                || families
                    .iter()
                    .any(|f| f.series.keys().any(|sk| *sk.identity == *k));
            if !keep {
                freed += 256 + labels_bytes(k);
            }
            keep
        });
        self.memory_bytes = self.memory_bytes.saturating_sub(freed);
    }

    pub fn stats(&self) -> RegistryStats {
        let mut s = RegistryStats {
            processes: self.processes.len(),
            memory_bytes: self.memory_bytes,
            spans_counted: self.spans_counted,
            ..Default::default()
        };
        for (i, f) in self.families.iter().enumerate() {
            s.series[i] = f.series.len();
            s.folded_series_limit[i] = f.folded_series_limit;
            s.folded_memory[i] = f.folded_memory;
        }
        s
    }

    /// Writes every family (request histograms, process, lifecycle, TCP, the fold counters).
    pub fn render(&self, e: &mut Encoder) {
        for metric in RequestMetric::ALL {
            let family = &self.families[metric.index()];
            if family.series.is_empty() && family.overflow.is_none() {
                continue;
            }
            let name = expo::metric_name(metric.name(), "s", false);
            e.family(&name, Kind::Histogram, metric.description());
            let bounds = metric.bounds();
            let bucket = format!("{name}_bucket");
            let sum = format!("{name}_sum");
            let count = format!("{name}_count");
            let overflow: Labels = vec![("otel.metric.overflow".into(), "true".into())];
            let mut series: Vec<(&SeriesKey, &Hist)> = family.series.iter().collect();
            series.sort_by(|a, b| {
                a.0.identity
                    .cmp(&b.0.identity)
                    .then(a.0.attributes.cmp(&b.0.attributes))
            });
            let none = Labels::new();
            let all = series
                .iter()
                .map(|(k, h)| ([&k.identity[..], &k.attributes[..]], *h))
                .chain(
                    family
                        .overflow
                        .iter()
                        .map(|h| ([&none[..], &overflow[..]], h)),
                );
            for (labels, h) in all {
                let mut cumulative = 0;
                for (i, n) in h.buckets.iter().enumerate() {
                    cumulative += n;
                    let le = bounds
                        .get(i)
                        .map_or_else(|| "+Inf".to_owned(), |b| expo::float(*b));
                    e.sample(&bucket, &labels, &[("le", &le)], &cumulative.to_string());
                }
                e.sample(&sum, &labels, &[], &expo::float(h.sum));
                e.sample(&count, &labels, &[], &h.count.to_string());
            }
        }
        self.render_processes(e);
        self.render_identities(e);
        e.family(
            "sonde_metrics_overflow_measurements_total",
            Kind::Counter,
            "Measurements folded into the otel.metric.overflow series, by metric and reason.",
        );
        for metric in RequestMetric::ALL {
            let f = &self.families[metric.index()];
            for (reason, n) in [
                ("series_limit", f.folded_series_limit),
                ("memory_budget", f.folded_memory),
            ] {
                e.sample(
                    "sonde_metrics_overflow_measurements_total",
                    &[],
                    &[("metric", metric.name()), ("reason", reason)],
                    &n.to_string(),
                );
            }
        }
        e.family(
            "sonde_metrics_series",
            Kind::Gauge,
            "Active request-metric series, by metric.",
        );
        for metric in RequestMetric::ALL {
            e.sample(
                "sonde_metrics_series",
                &[],
                &[("metric", metric.name())],
                &self.families[metric.index()].series.len().to_string(),
            );
        }
        e.family(
            "sonde_metrics_memory_bytes",
            Kind::Gauge,
            "Estimated heap bytes of the metrics state (counted against the memory budget).",
        );
        e.sample(
            "sonde_metrics_memory_bytes",
            &[],
            &[],
            &self.memory_bytes.to_string(),
        );
    }

    fn sorted_processes(&self) -> Vec<(&u32, &ProcessState)> {
        let mut v: Vec<_> = self.processes.iter().collect();
        v.sort_by_key(|(pid, _)| **pid);
        v
    }

    fn render_processes(&self, e: &mut Encoder) {
        let procs = self.sorted_processes();
        let sampled: Vec<(&ProcessState, &ProcessSample)> = procs
            .iter()
            .filter_map(|(_, p)| p.sample.as_ref().map(|s| (*p, s)))
            .collect();
        let families: [ProcessFamily; 9] = [
            (
                "process.cpu.time",
                "s",
                true,
                "Total CPU seconds by mode.",
                |s| {
                    vec![
                        ("user", expo::float(s.cpu_user_seconds)),
                        ("system", expo::float(s.cpu_system_seconds)),
                    ]
                },
            ),
            (
                "process.memory.usage",
                "By",
                false,
                "Resident memory.",
                |s| vec![("", s.memory_rss_bytes.to_string())],
            ),
            (
                "process.memory.virtual",
                "By",
                false,
                "Virtual memory.",
                |s| vec![("", s.memory_virtual_bytes.to_string())],
            ),
            ("process.thread.count", "{thread}", false, "Threads.", |s| {
                vec![("", s.threads.to_string())]
            }),
            (
                "process.unix.file_descriptor.count",
                "{file_descriptor}",
                false,
                "Open file descriptors.",
                |s| vec![("", s.open_fds.to_string())],
            ),
            (
                "process.disk.io",
                "By",
                true,
                "Disk bytes read and written.",
                |s| {
                    vec![
                        ("read", s.disk_read_bytes.to_string()),
                        ("write", s.disk_write_bytes.to_string()),
                    ]
                },
            ),
            (
                "process.context_switches",
                "{context_switch}",
                true,
                "Context switches.",
                |s| {
                    vec![
                        ("voluntary", s.voluntary_context_switches.to_string()),
                        ("involuntary", s.involuntary_context_switches.to_string()),
                    ]
                },
            ),
            (
                "process.paging.faults",
                "{fault}",
                true,
                "Page faults.",
                |s| {
                    vec![
                        ("minor", s.minor_faults.to_string()),
                        ("major", s.major_faults.to_string()),
                    ]
                },
            ),
            (
                "process.uptime",
                "s",
                false,
                "Seconds since the process started.",
                |s| vec![("", expo::float(s.uptime_seconds))],
            ),
        ];
        for (otel, unit, counter, help, rows) in families {
            if sampled.is_empty() {
                break;
            }
            let name = expo::metric_name(otel, unit, counter);
            e.family(
                &name,
                if counter { Kind::Counter } else { Kind::Gauge },
                help,
            );
            let label = otlp::process_attribute(otel);
            for (p, s) in &sampled {
                for (v, value) in rows(s) {
                    let mut l = vec![("process_pid", p.pid_label.as_str())];
                    if let Some(key) = label {
                        l.push((key, v));
                    }
                    e.sample(&name, &[&p.identity], &l, &value);
                }
            }
        }
        if !procs.is_empty() {
            let name = "process_network_io_bytes_total";
            e.family(
                name,
                Kind::Counter,
                "Bytes on traced sockets, by direction.",
            );
            for (_, p) in &procs {
                for (dir, n) in [("receive", p.net_receive), ("transmit", p.net_transmit)] {
                    e.sample(
                        name,
                        &[&p.identity],
                        &[("process_pid", &p.pid_label), ("network_io_direction", dir)],
                        &n.to_string(),
                    );
                }
            }
        }
    }

    fn render_identities(&self, e: &mut Encoder) {
        if self.identities.is_empty() {
            return;
        }
        let mut ids: Vec<(&Labels, &IdentityState)> = self.identities.iter().collect();
        ids.sort_by(|a, b| a.0.cmp(b.0));
        let simple: [IdentityFamily; 6] = [
            (
                "process_starts_total",
                "Traced processes of this service seen starting (restarts included).",
                |s| s.starts,
            ),
            (
                "process_live",
                "Traced processes of this service alive now.",
                |s| s.live.len() as u64,
            ),
            (
                "process_oom_kills_total",
                "Processes chosen by the OOM killer.",
                |s| s.oom_kills,
            ),
            (
                "tcp_retransmits_total",
                "TCP segments retransmitted.",
                |s| s.retransmits,
            ),
            ("tcp_resets_sent_total", "TCP resets sent.", |s| {
                s.resets_sent
            }),
            ("tcp_resets_received_total", "TCP resets received.", |s| {
                s.resets_received
            }),
        ];
        for (name, help, f) in simple {
            let kind = if name.ends_with("_total") {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            e.family(name, kind, help);
            for (id, s) in &ids {
                e.sample(name, &[id], &[], &f(s).to_string());
            }
        }
        let name = "process_exits_total";
        e.family(
            name,
            Kind::Counter,
            "Traced processes that ended, by exit code or signal.",
        );
        for (id, s) in &ids {
            let mut exits: Vec<_> = s.exits.iter().collect();
            exits.sort();
            for ((how, v), n) in exits {
                let v = v.to_string();
                let l: Vec<(&str, &str)> = match *how {
                    "code" => vec![("process_exit_code", &v)],
                    "signal" => vec![("process_exit_signal", &v)],
                    _ => vec![("process_exit_code", "unknown")],
                };
                e.sample(name, &[id], &l, &n.to_string());
            }
        }
        let name = "tcp_failed_connects_total";
        e.family(
            name,
            Kind::Counter,
            "TCP connects that failed (SYN_SENT -> CLOSE), by peer.",
        );
        for (id, s) in &ids {
            let mut peers: Vec<_> = s.failed_connects.iter().collect();
            peers.sort();
            for ((addr, port), n) in peers {
                e.sample(
                    name,
                    &[id],
                    &[("server_address", addr), ("server_port", &port.to_string())],
                    &n.to_string(),
                );
            }
            if s.failed_connects_folded > 0 {
                e.sample(
                    name,
                    &[id],
                    &[("otel_metric_overflow", "true")],
                    &s.failed_connects_folded.to_string(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// A `process.*` family: OTel name, unit, counter?, help, rows (attribute value, sample).
type ProcessFamily = (
    &'static str,
    &'static str,
    bool,
    &'static str,
    fn(&ProcessSample) -> Vec<(&'static str, String)>,
);
/// A per-service counter or gauge: name, help, value.
type IdentityFamily = (&'static str, &'static str, fn(&IdentityState) -> u64);
