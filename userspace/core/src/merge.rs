//! One trace from SDK and eBPF spans.
//!
//! A process that sends spans through the OTLP receiver is an *SDK process*. For it, sonde's
//! eBPF spans would duplicate what the SDK already reports, and its eBPF database and HTTP
//! client spans would hang off an eBPF server span nobody else knows. The merger fixes both:
//!
//! - eBPF spans of SDK processes, and of every trace that went through an SDK process's server
//!   span (the tracer marks those when the request starts), are **held** for at most
//!   `window`, grouped by trace;
//! - SDK spans are forwarded at once, and remembered for `window` for matching;
//! - an eBPF SERVER span is a **duplicate** of an SDK SERVER span of the same process when the
//!   SDK span lies inside it in time (± `tolerance`) and method and path agree (when the SDK
//!   span has them). The eBPF span is dropped, its trace id is rewritten to the SDK span's
//!   and its children are re-parented to the SDK span;
//! - an eBPF CLIENT span (database or HTTP) is a duplicate of an SDK CLIENT span of the same
//!   process and protocol that lies around it in time; it is dropped and its children are
//!   re-parented. eBPF client spans with no SDK counterpart stay, now children of the SDK
//!   server span;
//! - a group is released as soon as every eBPF server span of an SDK process in it is matched,
//!   or when it is `window` old (then unchanged: nothing is lost if the SDK never reports);
//! - **from the first request**: an SDK configured in code is known only at its first export
//!   (after its batch delay, 5 s by default). Until a process has had a whole `window` since
//!   its first span to export, it is *unclassified* and its spans are held like an SDK
//!   process's (`hold_new_processes`); when its first export arrives, the held groups are
//!   re-checked at the next `poll` and merge; otherwise they are released unchanged;
//! - **long requests**: holding is keyed to the request's end. A group whose trace has a
//!   server request still in flight (the caller says which in `poll`) is not released, and a
//!   group's window restarts when an eBPF server span joins it (the request ended), so the
//!   SDK's server span adopts the children however long the request took (bounded by
//!   `max_request_ns`).
//!
//! Pure: no I/O, time comes in as arguments.
use std::collections::{HashMap, HashSet};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};

#[derive(Clone, Copy, Debug)]
pub struct MergeConfig {
    /// How long eBPF spans wait for the SDK's, and SDK spans are remembered.
    pub window_ns: u64,
    /// Slack when comparing eBPF and SDK timestamps (different clocks, different hooks).
    pub tolerance_ns: u64,
    /// Bound on held spans; past it the oldest groups are released unmerged.
    pub max_held_spans: usize,
    /// Bound on SDK spans remembered for matching; past it the oldest are forgotten.
    pub max_sdk_spans: usize,
    /// Hold the spans of processes not yet classified (see the module docs); on when the
    /// receiver runs (otherwise no process can have an SDK exporting to sonde).
    pub hold_new_processes: bool,
    /// How long a group with a server request in flight may be held past its window.
    pub max_request_ns: u64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        Self {
            window_ns: 10_000_000_000,
            tolerance_ns: 20_000_000,
            max_held_spans: 100_000,
            max_sdk_spans: 100_000,
            hold_new_processes: true,
            max_request_ns: 300_000_000_000,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    pub ebpf_duplicates_dropped: u64,
    pub ebpf_spans_reparented: u64,
    pub groups_merged: u64,
    pub groups_released_unmerged: u64,
    pub held_spans: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http,
    Db,
    Other,
}

/// What matching needs of an SDK span.
#[derive(Clone, Debug)]
struct SdkSpan {
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    kind: i32,
    start: u64,
    end: u64,
    protocol: Protocol,
    method: Option<String>,
    path: Option<String>,
    seen_ns: u64,
    matched: bool,
}

struct HeldGroup {
    first_seen_ns: u64,
    /// When an eBPF server span last joined (its request ended): the window restarts there.
    last_server_ns: u64,
    spans: Vec<(u32, Span)>,
}

/// Bound on processes remembered for classification (pid -> first span seen).
const MAX_FIRST_SPANS: usize = 65_536;

pub struct Merger {
    config: MergeConfig,
    /// SDK processes: pid -> last time they sent spans.
    sdk_pids: HashMap<u32, u64>,
    sdk_spans: HashMap<u32, std::collections::VecDeque<SdkSpan>>,
    sdk_span_count: usize,
    held: HashMap<Vec<u8>, HeldGroup>,
    held_count: usize,
    stats: MergeStats,
    /// pid -> when its first span was seen (for `hold_new_processes`).
    first_span: HashMap<u32, u64>,
}

fn attr<'a>(attrs: &'a [KeyValue], keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| {
        attrs
            .iter()
            .find(|a| a.key == *k)
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            })
    })
}

fn protocol_of(attrs: &[KeyValue]) -> Protocol {
    if attrs
        .iter()
        .any(|a| a.key == "db.system" || a.key == "db.system.name")
    {
        Protocol::Db
    } else if attrs
        .iter()
        .any(|a| a.key == "http.request.method" || a.key == "http.method")
    {
        Protocol::Http
    } else {
        Protocol::Other
    }
}

fn method_of(attrs: &[KeyValue]) -> Option<String> {
    attr(attrs, &["http.request.method", "http.method"]).map(str::to_owned)
}

/// The path of a request: `url.path`, or the path part of the old `http.target`.
fn path_of(attrs: &[KeyValue]) -> Option<String> {
    attr(attrs, &["url.path"])
        .or_else(|| attr(attrs, &["http.target"]).map(|t| t.split('?').next().unwrap_or(t)))
        .map(str::to_owned)
}

impl Merger {
    pub fn new(config: MergeConfig) -> Self {
        Self {
            config,
            sdk_pids: HashMap::new(),
            sdk_spans: HashMap::new(),
            sdk_span_count: 0,
            held: HashMap::new(),
            held_count: 0,
            stats: MergeStats::default(),
            first_span: HashMap::new(),
        }
    }

    pub fn stats(&self) -> MergeStats {
        MergeStats {
            held_spans: self.held_count,
            ..self.stats.clone()
        }
    }

    pub fn is_sdk_pid(&self, pid: u32) -> bool {
        self.sdk_pids.contains_key(&pid)
    }

    /// `pid` is configured to export to sonde (its environment says so) but has not yet:
    /// treat it as an SDK process.
    pub fn observe_candidate(&mut self, pid: u32, now_ns: u64) {
        self.sdk_pids.entry(pid).or_insert(now_ns);
    }

    /// Spans an SDK in `pid` sent (already on their way to the exporter): remember them.
    pub fn observe_sdk(&mut self, pid: u32, request: &ExportTraceServiceRequest, now_ns: u64) {
        self.sdk_pids.insert(pid, now_ns);
        self.observe_spans(pid, request, now_ns);
        // Bounded: forget the oldest remembered spans of the busiest process.
        while self.sdk_span_count > self.config.max_sdk_spans {
            let Some(list) = self.sdk_spans.values_mut().max_by_key(|l| l.len()) else {
                break;
            };
            if list.pop_front().is_none() {
                break;
            }
            self.sdk_span_count -= 1;
        }
    }

    fn observe_spans(&mut self, pid: u32, request: &ExportTraceServiceRequest, now_ns: u64) {
        let list = self.sdk_spans.entry(pid).or_default();
        for rs in &request.resource_spans {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let kind = span.kind;
                    if kind != SpanKind::Server as i32 && kind != SpanKind::Client as i32 {
                        continue;
                    }
                    // Only HTTP and database spans can have eBPF twins.
                    let protocol = protocol_of(&span.attributes);
                    if protocol == Protocol::Other {
                        continue;
                    }
                    self.sdk_span_count += 1;
                    list.push_back(SdkSpan {
                        trace_id: span.trace_id.clone(),
                        span_id: span.span_id.clone(),
                        kind,
                        start: span.start_time_unix_nano,
                        end: span.end_time_unix_nano,
                        protocol,
                        method: method_of(&span.attributes),
                        path: path_of(&span.attributes),
                        seen_ns: now_ns,
                        matched: false,
                    });
                }
            }
        }
    }

    /// Whether an eBPF span must wait for possible SDK counterparts: its process is an SDK
    /// process or not yet classified, or a span of its trace is already held.
    pub fn should_hold(&mut self, pid: u32, trace_id: &[u8], now_ns: u64) -> bool {
        self.is_sdk_pid(pid) || self.held.contains_key(trace_id) || self.unclassified(pid, now_ns)
    }

    /// Whether `pid` has not yet had a whole window since its first span to show an SDK.
    fn unclassified(&mut self, pid: u32, now_ns: u64) -> bool {
        if !self.config.hold_new_processes {
            return false;
        }
        let first = *self.first_span.entry(pid).or_insert(now_ns);
        now_ns.saturating_sub(first) < self.config.window_ns
    }

    pub fn hold(&mut self, pid: u32, span: Span, now_ns: u64) {
        let group = self
            .held
            .entry(span.trace_id.clone())
            .or_insert_with(|| HeldGroup {
                first_seen_ns: now_ns,
                last_server_ns: 0,
                spans: Vec::new(),
            });
        if span.kind == SpanKind::Server as i32 {
            group.last_server_ns = now_ns;
        }
        group.spans.push((pid, span));
        self.held_count += 1;
    }

    fn inside(&self, inner_start: u64, inner_end: u64, outer_start: u64, outer_end: u64) -> bool {
        let tol = self.config.tolerance_ns;
        inner_start.saturating_add(tol) >= outer_start && inner_end <= outer_end.saturating_add(tol)
    }

    /// Index of the unmatched SDK SERVER span of `pid` this eBPF server span duplicates.
    fn find_server(&self, pid: u32, span: &Span) -> Option<usize> {
        let method = method_of(&span.attributes);
        let path = path_of(&span.attributes);
        let list = self.sdk_spans.get(&pid)?;
        let duration = span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano);
        list.iter()
            .enumerate()
            .filter(|(_, t)| !t.matched && t.kind == SpanKind::Server as i32)
            .filter(|(_, t)| {
                self.inside(
                    t.start,
                    t.end,
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                )
            })
            .filter(|(_, t)| t.method.is_none() || method.is_none() || t.method == method)
            .filter(|(_, t)| t.path.is_none() || path.is_none() || t.path == path)
            .min_by_key(|(_, t)| duration.abs_diff(t.end.saturating_sub(t.start)))
            .map(|(i, _)| i)
    }

    /// Index of the unmatched SDK CLIENT span of `pid`, same protocol, around this eBPF span.
    fn find_client(&self, pid: u32, span: &Span) -> Option<usize> {
        let protocol = protocol_of(&span.attributes);
        if protocol == Protocol::Other {
            return None;
        }
        let (s, e) = (span.start_time_unix_nano, span.end_time_unix_nano);
        let list = self.sdk_spans.get(&pid)?;
        list.iter()
            .enumerate()
            .filter(|(_, u)| {
                !u.matched && u.kind == SpanKind::Client as i32 && u.protocol == protocol
            })
            .filter(|(_, u)| self.inside(s, e, u.start, u.end))
            // The twin is the SDK span whose edges are nearest: with the clock tolerance a
            // neighbouring query of the same request also "lies around" this one, and under
            // load durations alone picked the neighbour (then the real twin stayed unmatched).
            .min_by_key(|(_, u)| u.start.abs_diff(s).saturating_add(u.end.abs_diff(e)))
            .map(|(i, _)| i)
    }

    /// Marks an SDK span as matched and returns its (trace id, span id).
    fn take(&mut self, pid: u32, index: usize) -> Option<(Vec<u8>, Vec<u8>)> {
        let t = self.sdk_spans.get_mut(&pid)?.get_mut(index)?;
        t.matched = true;
        Some((t.trace_id.clone(), t.span_id.clone()))
    }

    fn is_server_of_sdk(&self, pid: u32, span: &Span) -> bool {
        span.kind == SpanKind::Server as i32 && self.is_sdk_pid(pid)
    }

    fn is_client_of_sdk(&self, pid: u32, span: &Span) -> bool {
        span.kind == SpanKind::Client as i32 && self.is_sdk_pid(pid)
    }

    /// Whether a held group can be decided now: every eBPF server span of an SDK process has
    /// its SDK twin, or (no server span) every SDK-process client span has one.
    fn ready(&self, group: &HeldGroup) -> bool {
        // Most held groups (unclassified processes) have no SDK process at all.
        if !group.spans.iter().any(|(pid, _)| self.is_sdk_pid(*pid)) {
            return false;
        }
        let servers: Vec<_> = group
            .spans
            .iter()
            .filter(|(pid, s)| self.is_server_of_sdk(*pid, s))
            .collect();
        if !servers.is_empty() {
            return servers
                .iter()
                .all(|(pid, s)| self.find_server(*pid, s).is_some());
        }
        let clients: Vec<_> = group
            .spans
            .iter()
            .filter(|(pid, s)| self.is_client_of_sdk(*pid, s))
            .collect();
        !clients.is_empty()
            && clients
                .iter()
                .all(|(pid, s)| self.find_client(*pid, s).is_some())
    }

    /// Releases groups that are resolved or old; returns their spans (merged where matched).
    /// `open(trace_id)`: a server request of that trace is still in flight (its group waits).
    pub fn poll(&mut self, now_ns: u64, open: &dyn Fn(&[u8]) -> bool) -> Vec<(u32, Span)> {
        let mut out = Vec::new();
        let keys: Vec<Vec<u8>> = self.held.keys().cloned().collect();
        for key in keys {
            let Some(group) = self.held.get(&key) else {
                continue;
            };
            let age = now_ns.saturating_sub(group.first_seen_ns.max(group.last_server_ns));
            let expired = age >= self.config.window_ns
                && !(open(&key)
                    && now_ns.saturating_sub(group.first_seen_ns) < self.config.max_request_ns);
            if !expired && !self.ready(group) {
                continue;
            }
            let Some(group) = self.held.remove(&key) else {
                continue;
            };
            self.held_count = self.held_count.saturating_sub(group.spans.len());
            out.extend(self.resolve(group.spans));
        }
        self.expire(now_ns);
        out.extend(self.bound());
        out
    }

    /// Drops duplicates and rewrites trace ids and parents in one group.
    fn resolve(&mut self, spans: Vec<(u32, Span)>) -> Vec<(u32, Span)> {
        let mut trace_map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut parent_map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut dropped: HashSet<usize> = HashSet::new();
        for (i, (pid, span)) in spans.iter().enumerate() {
            if !self.is_server_of_sdk(*pid, span) {
                continue;
            }
            if let Some((trace, sdk_span)) = self
                .find_server(*pid, span)
                .and_then(|idx| self.take(*pid, idx))
            {
                trace_map.insert(span.trace_id.clone(), trace);
                parent_map.insert(span.span_id.clone(), sdk_span);
                dropped.insert(i);
            }
        }
        for (i, (pid, span)) in spans.iter().enumerate() {
            if !self.is_client_of_sdk(*pid, span) {
                continue;
            }
            if let Some((_, sdk_span)) = self
                .find_client(*pid, span)
                .and_then(|idx| self.take(*pid, idx))
            {
                parent_map.insert(span.span_id.clone(), sdk_span);
                dropped.insert(i);
            }
        }
        if dropped.is_empty() {
            self.stats.groups_released_unmerged += 1;
        } else {
            self.stats.groups_merged += 1;
        }
        self.stats.ebpf_duplicates_dropped += dropped.len() as u64;
        let mut out = Vec::with_capacity(spans.len().saturating_sub(dropped.len()));
        for (i, (pid, mut span)) in spans.into_iter().enumerate() {
            if dropped.contains(&i) {
                continue;
            }
            if let Some(t) = trace_map.get(&span.trace_id) {
                span.trace_id = t.clone();
            }
            if let Some(p) = parent_map.get(&span.parent_span_id) {
                span.parent_span_id = p.clone();
                self.stats.ebpf_spans_reparented += 1;
            }
            out.push((pid, span));
        }
        out
    }

    /// Forgets SDK spans and SDK processes older than the window.
    fn expire(&mut self, now_ns: u64) {
        let window = self.config.window_ns;
        for list in self.sdk_spans.values_mut() {
            // Time order: the expired ones are at the front.
            while list
                .front()
                .is_some_and(|s| now_ns.saturating_sub(s.seen_ns) >= window)
            {
                list.pop_front();
                self.sdk_span_count = self.sdk_span_count.saturating_sub(1);
            }
        }
        self.sdk_spans.retain(|_, l| !l.is_empty());
        // A process stays an SDK process for a few windows after its last export.
        self.sdk_pids
            .retain(|_, last| now_ns.saturating_sub(*last) < window.saturating_mul(6));
        // Bounded: classified processes are forgotten past the bound (one more window held if
        // they show up again).
        if self.first_span.len() > MAX_FIRST_SPANS {
            self.first_span
                .retain(|_, first| now_ns.saturating_sub(*first) < window);
        }
    }

    /// Keeps held spans under the bound by releasing the oldest groups unmerged.
    fn bound(&mut self) -> Vec<(u32, Span)> {
        let mut out = Vec::new();
        while self.held_count > self.config.max_held_spans {
            let Some(oldest) = self
                .held
                .iter()
                .min_by_key(|(_, g)| g.first_seen_ns)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(g) = self.held.remove(&oldest) {
                self.held_count = self.held_count.saturating_sub(g.spans.len());
                self.stats.groups_released_unmerged += 1;
                out.extend(g.spans);
            }
        }
        out
    }

    /// Everything held, unmerged (shutdown).
    pub fn drain(&mut self) -> Vec<(u32, Span)> {
        self.held_count = 0;
        self.held.drain().flat_map(|(_, g)| g.spans).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::AnyValue,
        trace::v1::{ResourceSpans, ScopeSpans},
    };

    use super::*;

    const MS: u64 = 1_000_000;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn span(
        trace: u8,
        id: u8,
        parent: u8,
        kind: SpanKind,
        start: u64,
        end: u64,
        attrs: Vec<KeyValue>,
    ) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes: attrs,
            ..Default::default()
        }
    }

    fn sdk_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn http(method: &str, path: &str) -> Vec<KeyValue> {
        vec![kv("http.request.method", method), kv("url.path", path)]
    }

    fn db() -> Vec<KeyValue> {
        vec![kv("db.system.name", "postgresql")]
    }

    /// eBPF: server S (trace 1, span 10) with DB children E1 (11), E2 (12); downstream
    /// server D (other pid) under eBPF client C (13).
    fn ebpf_request() -> Vec<(u32, Span)> {
        vec![
            (
                7,
                span(1, 11, 10, SpanKind::Client, 110 * MS, 120 * MS, db()),
            ),
            (
                7,
                span(1, 12, 10, SpanKind::Client, 130 * MS, 140 * MS, db()),
            ),
            (
                9,
                span(
                    1,
                    14,
                    13,
                    SpanKind::Server,
                    151 * MS,
                    159 * MS,
                    http("GET", "/down"),
                ),
            ),
            (
                7,
                span(
                    1,
                    13,
                    10,
                    SpanKind::Client,
                    150 * MS,
                    160 * MS,
                    http("GET", "/down"),
                ),
            ),
            (
                7,
                span(
                    1,
                    10,
                    0,
                    SpanKind::Server,
                    100 * MS,
                    200 * MS,
                    http("GET", "/users/7"),
                ),
            ),
        ]
    }

    #[test]
    fn sdk_server_span_replaces_the_ebpf_one_and_adopts_its_children() {
        let mut m = Merger::new(MergeConfig::default());
        m.observe_sdk(
            7,
            &sdk_request(vec![span(
                5,
                50,
                0,
                SpanKind::Server,
                101 * MS,
                199 * MS,
                vec![kv("http.method", "GET"), kv("http.target", "/users/7?x=1")],
            )]),
            0,
        );
        for (pid, s) in ebpf_request() {
            assert!(m.should_hold(pid, &s.trace_id, 0));
            m.hold(pid, s, 0);
        }
        let out = m.poll(1, &|_| false);
        assert_eq!(out.len(), 4, "the eBPF server span is dropped");
        assert!(
            out.iter().all(|(_, s)| s.trace_id == vec![5; 16]),
            "everything joins the SDK trace"
        );
        let parent_of = |id: u8| {
            out.iter()
                .find(|(_, s)| s.span_id == vec![id; 8])
                .map(|(_, s)| s.parent_span_id.clone())
                .unwrap()
        };
        assert_eq!(parent_of(11), vec![50; 8]);
        assert_eq!(parent_of(13), vec![50; 8]);
        assert_eq!(
            parent_of(14),
            vec![13; 8],
            "the downstream span keeps its eBPF parent"
        );
        assert_eq!(m.stats().ebpf_duplicates_dropped, 1);
        assert_eq!(m.stats().held_spans, 0);
    }

    #[test]
    fn sdk_database_spans_replace_ebpf_duplicates() {
        let mut m = Merger::new(MergeConfig::default());
        m.observe_sdk(
            7,
            &sdk_request(vec![
                span(
                    5,
                    50,
                    0,
                    SpanKind::Server,
                    101 * MS,
                    199 * MS,
                    http("GET", "/users/7"),
                ),
                span(
                    5,
                    51,
                    50,
                    SpanKind::Client,
                    109 * MS,
                    121 * MS,
                    vec![kv("db.system", "postgresql")],
                ),
            ]),
            0,
        );
        for (pid, s) in ebpf_request() {
            m.hold(pid, s, 0);
        }
        let out = m.poll(1, &|_| false);
        let ids: Vec<u8> = out.iter().map(|(_, s)| s.span_id[0]).collect();
        assert!(
            !ids.contains(&10) && !ids.contains(&11),
            "duplicates dropped: {ids:?}"
        );
        assert!(ids.contains(&12), "the query the SDK did not see stays");
        assert_eq!(
            out.iter()
                .find(|(_, s)| s.span_id[0] == 12)
                .unwrap()
                .1
                .parent_span_id,
            vec![50; 8]
        );
    }

    #[test]
    fn without_sdk_spans_the_group_waits_then_is_released_unchanged() {
        let mut m = Merger::new(MergeConfig {
            window_ns: 1000 * MS,
            ..Default::default()
        });
        m.observe_sdk(7, &sdk_request(vec![]), 0);
        for (pid, s) in ebpf_request() {
            m.hold(pid, s, 0);
        }
        assert!(
            m.poll(500 * MS, &|_| false).is_empty(),
            "still waiting inside the window"
        );
        // The SDK's spans arrive late but within the window: merged.
        m.observe_sdk(
            7,
            &sdk_request(vec![span(
                5,
                50,
                0,
                SpanKind::Server,
                101 * MS,
                199 * MS,
                http("GET", "/users/7"),
            )]),
            600 * MS,
        );
        assert_eq!(m.poll(700 * MS, &|_| false).len(), 4);

        let mut m = Merger::new(MergeConfig {
            window_ns: 1000 * MS,
            ..Default::default()
        });
        m.observe_sdk(7, &sdk_request(vec![]), 0);
        for (pid, s) in ebpf_request() {
            m.hold(pid, s, 0);
        }
        let out = m.poll(1000 * MS, &|_| false);
        assert_eq!(out.len(), 5, "released whole after the window");
        assert!(out.iter().all(|(_, s)| s.trace_id == vec![1; 16]));
    }

    #[test]
    fn mismatched_path_or_time_is_not_a_duplicate() {
        let mut m = Merger::new(MergeConfig {
            window_ns: 10 * MS,
            ..Default::default()
        });
        m.observe_sdk(
            7,
            &sdk_request(vec![
                span(
                    5,
                    50,
                    0,
                    SpanKind::Server,
                    101 * MS,
                    199 * MS,
                    http("GET", "/other"),
                ),
                span(
                    6,
                    60,
                    0,
                    SpanKind::Server,
                    300 * MS,
                    400 * MS,
                    http("GET", "/users/7"),
                ),
            ]),
            0,
        );
        m.hold(
            7,
            span(
                1,
                10,
                0,
                SpanKind::Server,
                100 * MS,
                200 * MS,
                http("GET", "/users/7"),
            ),
            0,
        );
        assert!(m.poll(1, &|_| false).is_empty());
        assert_eq!(m.poll(20 * MS, &|_| false).len(), 1);
    }

    #[test]
    fn processes_without_an_sdk_are_not_held_and_the_hold_is_bounded() {
        let mut m = Merger::new(MergeConfig {
            max_held_spans: 3,
            hold_new_processes: false,
            ..Default::default()
        });
        let s = span(1, 10, 0, SpanKind::Server, 0, 1, vec![]);
        assert!(!m.should_hold(42, &s.trace_id, 0));
        m.observe_sdk(7, &sdk_request(vec![]), 0);
        for i in 0..5u8 {
            m.hold(
                7,
                span(i + 1, i + 10, 0, SpanKind::Client, 0, 1, db()),
                u64::from(i),
            );
        }
        let out = m.poll(5, &|_| false);
        assert_eq!(
            out.len(),
            2,
            "the two oldest groups are released to stay under the bound"
        );
        assert_eq!(m.stats().held_spans, 3);
        assert_eq!(m.drain().len(), 3);
    }

    #[test]
    fn a_new_process_is_held_until_classified_and_merges_at_its_first_export() {
        let mut m = Merger::new(MergeConfig {
            window_ns: 1000 * MS,
            ..Default::default()
        });
        // Its first request, before the SDK's first export (5 s batch delay in practice).
        for (pid, s) in ebpf_request() {
            assert!(m.should_hold(pid, &s.trace_id, 0), "unclassified: held");
            m.hold(pid, s, 0);
        }
        assert!(m.poll(300 * MS, &|_| false).is_empty());
        // The first export arrives inside the window: the held group merges.
        m.observe_sdk(
            7,
            &sdk_request(vec![span(
                5,
                50,
                0,
                SpanKind::Server,
                101 * MS,
                199 * MS,
                http("GET", "/users/7"),
            )]),
            600 * MS,
        );
        let out = m.poll(650 * MS, &|_| false);
        assert_eq!(out.len(), 4, "the eBPF server span is dropped");
        assert!(out.iter().all(|(_, s)| s.trace_id == vec![5; 16]));
        // A process that never exports is classified after one window since its first span:
        // from then on its spans go out at once, and what was held is released unchanged.
        let s = span(2, 20, 0, SpanKind::Server, 0, 1, vec![]);
        assert!(m.should_hold(42, &s.trace_id, 700 * MS));
        m.hold(42, s.clone(), 700 * MS);
        let next = span(3, 30, 0, SpanKind::Server, 0, 1, vec![]);
        assert!(m.should_hold(42, &next.trace_id, 1699 * MS));
        assert!(!m.should_hold(42, &next.trace_id, 1700 * MS));
        assert_eq!(m.poll(1700 * MS, &|_| false).len(), 1);
        assert!(
            !Merger::new(MergeConfig {
                hold_new_processes: false,
                ..Default::default()
            })
            .should_hold(42, &s.trace_id, 0),
            "without a receiver nothing is held for classification"
        );
    }

    #[test]
    fn queries_of_neighbouring_requests_each_find_their_own_twin() {
        // Three requests 15 ms apart, one query each: within the 20 ms clock tolerance of each
        // other. Under load the eBPF durations differ from the SDK's, and by duration alone
        // each eBPF query picked the next request's SDK span, leaving the last one unmatched
        // (a duplicate DB span in the trace). The nearest edges pick the right twin.
        let us = 1_000;
        let mut m = Merger::new(MergeConfig::default());
        let sdk = vec![
            span(5, 51, 50, SpanKind::Client, 1000 * us, 1400 * us, db()),
            span(5, 52, 50, SpanKind::Client, 16_000 * us, 16_300 * us, db()),
            span(5, 53, 50, SpanKind::Client, 31_000 * us, 31_200 * us, db()),
        ];
        m.observe_sdk(7, &sdk_request(sdk), 0);
        let ebpf = [
            span(1, 11, 0, SpanKind::Client, 1050 * us, 1350 * us, db()),
            span(1, 12, 0, SpanKind::Client, 16_050 * us, 16_250 * us, db()),
            span(1, 13, 0, SpanKind::Client, 31_000 * us, 31_200 * us, db()),
        ];
        for e in ebpf {
            m.hold(7, e, 40 * MS);
        }
        let out = m.poll(41 * MS, &|_| false);
        assert!(out.is_empty(), "every eBPF query is a duplicate: {out:?}");
    }

    #[test]
    fn a_request_longer_than_the_window_keeps_its_children() {
        let window = 1000 * MS;
        let mut m = Merger::new(MergeConfig {
            window_ns: window,
            ..Default::default()
        });
        m.observe_sdk(7, &sdk_request(vec![]), 0);
        // A 20 s request: its first query ends at 0.1 s, the request at 20 s.
        let query = span(1, 11, 10, SpanKind::Client, 100 * MS, 120 * MS, db());
        m.hold(7, query, 120 * MS);
        let open_trace = vec![1u8; 16];
        let open = |t: &[u8]| t == open_trace.as_slice();
        for now in [1200, 5000, 19_000] {
            assert!(
                m.poll(now * MS, &open).is_empty(),
                "held while the request is in flight ({now} ms)"
            );
        }
        // The request ends: its eBPF server span joins and restarts the window.
        let server = span(
            1,
            10,
            0,
            SpanKind::Server,
            0,
            20_000 * MS,
            http("GET", "/slow"),
        );
        m.observe_sdk(7, &sdk_request(vec![]), 20_000 * MS);
        m.hold(7, server, 20_000 * MS);
        assert!(m.poll(20_900 * MS, &|_| false).is_empty());
        // The SDK's span comes after its batch delay, inside the restarted window.
        m.observe_sdk(
            7,
            &sdk_request(vec![span(
                5,
                50,
                0,
                SpanKind::Server,
                1,
                20_000 * MS - 1,
                http("GET", "/slow"),
            )]),
            20_950 * MS,
        );
        let out = m.poll(20_960 * MS, &|_| false);
        assert_eq!(out.len(), 1, "the eBPF server span is dropped");
        assert_eq!(out[0].1.parent_span_id, vec![50; 8]);
        assert_eq!(out[0].1.trace_id, vec![5; 16]);
        // Bounded: a request that never ends is released after max_request_ns.
        let mut m = Merger::new(MergeConfig {
            window_ns: window,
            max_request_ns: 3000 * MS,
            ..Default::default()
        });
        m.observe_sdk(7, &sdk_request(vec![]), 0);
        m.hold(7, span(1, 11, 10, SpanKind::Client, 0, 1, db()), 0);
        assert!(m.poll(2999 * MS, &|_| true).is_empty());
        assert_eq!(m.poll(3000 * MS, &|_| true).len(), 1);
    }
}
