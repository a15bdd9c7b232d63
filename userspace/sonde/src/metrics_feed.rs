//! Feeds the metrics registry (`sonde-metrics`) from the capture loop: the spans handed to
//! the exporter, byte counts of data events, process exits, /proc samples of traced
//! processes, and hands the registry to the exporter as OTLP metrics every export interval.
//!
//! The capture thread owns the feeding; a scrape only locks the registry to render it. Byte
//! counts are summed locally and applied on each tick, so the per-event cost is one hash
//! map update and no lock.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{resource::v1::Resource, trace::v1::ResourceSpans};
use rustc_hash::FxHashMap;
use sonde_metrics::{Exit, NetDirection, Registry, request};
use sonde_otlp_export::Exporter;

use crate::{health::Health, procstats};

/// How often traced processes are sampled from /proc (and exited series swept).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

pub struct MetricsFeed {
    pub registry: Arc<Mutex<Registry>>,
    bytes: FxHashMap<(u32, bool), u64>,
    /// TCP health records whose process the kernel could not name (server side, softirq).
    pub tcp_unattributed: u64,
    exits: Vec<u32>,
    /// Processes gone without an exit code from /proc (reaped already, or not yet a zombie
    /// when looked at), and since when: the kernel's lifecycle record, on the other ring
    /// buffer, says how they ended; counted as unknown only if it has not come within
    /// [`EXIT_RECORD_GRACE`].
    exits_without_code: Vec<(u32, Instant)>,
    /// Shutdown: nothing waits any more.
    final_pass: bool,
    last_sample: Instant,
    last_export: Instant,
    export_interval: Duration,
    /// Resource attributes every OTLP metrics resource gets (`host.name`).
    extra: Vec<(String, String)>,
}

/// How long an exit seen without its code waits for the kernel's lifecycle record (drained
/// every capture-loop pass, 25 ms at most).
const EXIT_RECORD_GRACE: Duration = Duration::from_secs(2);

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl MetricsFeed {
    pub fn new(config: sonde_metrics::Config, export_interval: Duration) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        MetricsFeed {
            registry: Arc::new(Mutex::new(Registry::new(config))),
            bytes: FxHashMap::default(),
            tcp_unattributed: 0,
            exits: Vec::new(),
            exits_without_code: Vec::new(),
            final_pass: false,
            last_sample: Instant::now(),
            last_export: Instant::now(),
            export_interval,
            extra: vec![
                ("host.name".into(), host),
                ("telemetry.distro.name".into(), "sonde".into()),
            ],
        }
    }

    /// Counts the requests of spans about to be exported.
    pub fn observe(&self, batches: &[ResourceSpans]) {
        if batches.is_empty() {
            return;
        }
        if let Ok(mut r) = self.registry.lock() {
            r.observe_spans(batches, unix_now_ns());
        }
    }

    /// Counts the requests of sonde's own spans about to be exported.
    pub fn observe_own(&self, batches: &[sonde_span::OwnBatch]) {
        if batches.is_empty() {
            return;
        }
        if let Ok(mut r) = self.registry.lock() {
            r.observe_own_spans(batches, unix_now_ns());
        }
    }

    /// A data syscall's byte count (counted once per syscall, on its first chunk).
    pub fn data(&mut self, pid: u32, ingress: bool, bytes: u64) {
        *self.bytes.entry((pid, ingress)).or_default() += bytes;
    }

    /// Applies lifecycle and TCP health records. With a pid filter, processes the kernel
    /// reports are traced ones and get registered; without one, only processes already known
    /// (from their spans or traffic) are followed, so the node's other processes cost nothing.
    pub fn health(
        &mut self,
        records: &[Health],
        filter_pids: bool,
        mut resource: impl FnMut(u32) -> Resource,
    ) {
        if records.is_empty() {
            return;
        }
        let now = unix_now_ns();
        let Ok(mut r) = self.registry.lock() else {
            return;
        };
        let mut ensure = |r: &mut Registry, pid: u32| {
            if pid != 0 && !r.knows(pid) && filter_pids {
                r.process_seen(pid, &request::identity(Some(&resource(pid))), now);
            }
        };
        for rec in records {
            match *rec {
                Health::Exec { pid } => ensure(&mut r, pid),
                Health::Fork { parent: _, child } => {
                    if filter_pids && crate::health::is_process(child) {
                        ensure(&mut r, child);
                    }
                }
                Health::Exit { pid, exit } => {
                    ensure(&mut r, pid);
                    r.process_exited(pid, exit, now);
                }
                Health::OomKill { pid } => {
                    ensure(&mut r, pid);
                    r.oom_kill(pid, now);
                }
                Health::Tcp { pid, event } => {
                    if pid == 0 {
                        self.tcp_unattributed += 1;
                    } else {
                        ensure(&mut r, pid);
                        r.tcp_event(pid, event, now);
                    }
                }
            }
        }
    }

    /// The kernel saw a traced process end.
    pub fn exited(&mut self, pid: u32) {
        self.exits.push(pid);
    }

    /// Applies the summed counts; samples /proc; exports; `resource` gives a pid's resource,
    /// `traced` the pids the kernel filter follows.
    pub fn tick(
        &mut self,
        mut resource: impl FnMut(u32) -> Resource,
        traced: impl Iterator<Item = u32>,
        exporter: &Exporter,
    ) {
        let now = unix_now_ns();
        let sample_due = self.last_sample.elapsed() >= SAMPLE_INTERVAL;
        let export_due = self.last_export.elapsed() >= self.export_interval;
        if self.bytes.is_empty()
            && self.exits.is_empty()
            && self.exits_without_code.is_empty()
            && !sample_due
            && !export_due
        {
            return;
        }
        let Ok(mut r) = self.registry.lock() else {
            return;
        };
        for ((pid, ingress), n) in self.bytes.drain() {
            if !r.knows(pid) {
                r.process_seen(pid, &request::identity(Some(&resource(pid))), now);
            }
            let dir = if ingress {
                NetDirection::Receive
            } else {
                NetDirection::Transmit
            };
            r.add_network_bytes(pid, dir, n);
        }
        for pid in std::mem::take(&mut self.exits) {
            exited_now(&mut r, &mut self.exits_without_code, pid, now);
        }
        if sample_due {
            self.last_sample = Instant::now();
            for pid in traced {
                if !r.knows(pid) && procstats::sample(pid).is_some() {
                    r.process_seen(pid, &request::identity(Some(&resource(pid))), now);
                }
            }
            for pid in r.live_pids() {
                match procstats::sample(pid) {
                    Some(s) => r.set_process_sample(pid, s),
                    None => exited_now(&mut r, &mut self.exits_without_code, pid, now),
                }
            }
            r.sweep(now);
        }
        // The lifecycle record of these never came (or counted them already: then this is a
        // no-op).
        let final_pass = self.final_pass;
        self.exits_without_code.retain(|&(pid, since)| {
            let waiting = !final_pass && since.elapsed() < EXIT_RECORD_GRACE;
            if !waiting {
                r.process_exited(pid, Exit::Unknown, now);
            }
            waiting
        });
        if export_due {
            self.last_export = Instant::now();
            let metrics = r.to_otlp(now, &self.extra);
            drop(r);
            if !metrics.is_empty() {
                let _ = exporter.send_metrics(metrics);
            }
        }
    }

    /// Last export on shutdown.
    pub fn flush(&mut self, resource: impl FnMut(u32) -> Resource, exporter: &Exporter) {
        self.final_pass = true;
        self.last_export = Instant::now()
            .checked_sub(self.export_interval)
            .unwrap_or_else(Instant::now);
        self.export_interval = Duration::ZERO;
        self.tick(resource, std::iter::empty(), exporter);
    }
}

/// `pid` is gone: counted with the code its zombie shows, or left in `without_code` to wait for
/// the kernel's lifecycle record (a process reaped already, or still exiting, shows no code in
/// /proc). Counted as unknown now, the record's real code would be dropped as a repeat.
fn exited_now(r: &mut Registry, without_code: &mut Vec<(u32, Instant)>, pid: u32, now: u64) {
    if let Some(exit) = procstats::zombie_exit(pid) {
        r.process_exited(pid, exit, now);
    } else if !without_code.iter().any(|&(p, _)| p == pid) {
        without_code.push((pid, Instant::now()));
    }
}
