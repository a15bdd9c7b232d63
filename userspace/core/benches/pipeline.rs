//! CPU per HTTP request of the daemon's span pipeline on one thread, without the kernel or
//! the scheduler: the same work as the `cargo xtask bench --suite http` variants c2 to c
//! (parse, correlate and build spans; group them per process; encode OTLP protobuf; count
//! request metrics), fed recorded traffic (32 keep-alive connections; wrk's request and
//! three an API gets, nginx's response), each stage cumulative. On a noisy VM the end-to-end bench
//! needs many rounds to tell a 10% change; this one tells it in seconds.
//!
//! Run: `cargo bench -p sonde-core --bench pipeline`. Instructions per request, which do not
//! move with the noise: `PIPELINE_ROUNDS=1 valgrind --tool=callgrind <bench binary>`, then
//! `callgrind_annotate` (the total over every stage's warm-up and round).
use std::{
    alloc::{GlobalAlloc, Layout},
    collections::HashSet,
    hint::black_box,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use opentelemetry_proto::tonic::resource::v1::Resource;
use sonde_core::{
    clock::Clock,
    event::{Direction, Header, KernelEvent, Role, Source},
    protocols::ProtocolSettings,
    trace::{
        resource::{ProcessInfo, to_resource},
        route::RouteTemplates,
        sampler::Sampler,
    },
    tracer::{HostView, Selection, TcpEndpoints, Tracer, TracerConfig},
};

/// The daemon's allocator, set up as `sonde`'s main does: allocation is a large share of
/// this work, and glibc's costs differ. Wrapped to count allocations: unlike time, their
/// number per request does not move with the VM's noise, so it tells small changes apart.
#[global_allocator]
static ALLOCATOR: Counting = Counting(sonde_core::alloc::Allocator);

struct Counting(sonde_core::alloc::Allocator);

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the daemon's allocator; the counter has no other effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

const CONNECTIONS: i32 = 32;
/// Spans per flush, as the daemon's `flush_spans`.
const FLUSH: usize = 512;
/// wrk's request for `/`, and what an API's clients send (a route to infer, a query).
const REQUESTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n",
    b"GET /api/users/42/orders HTTP/1.1\r\nHost: api.internal:8000\r\nUser-Agent: \
      python-requests/2.31.0\r\nAccept: */*\r\n\r\n",
    b"POST /analysis/123/ HTTP/1.1\r\nHost: api.internal:8000\r\nContent-Length: 0\r\n\
      traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    b"GET /search?q=variants&page=2 HTTP/1.1\r\nHost: api.internal:8000\r\n\r\n",
];
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 \
    15:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\
    \r\n\r\nhello\n";
const PID: u32 = 4242;

/// One nginx worker process, its connections known to the host.
struct Host {
    info: ProcessInfo,
}

impl HostView for Host {
    fn endpoints(&mut self, _pid: u32, fd: i32) -> Option<TcpEndpoints> {
        Some(TcpEndpoints {
            local: local(),
            remote: remote(fd),
            established: true,
        })
    }
    fn sole_listener(&mut self, _pid: u32) -> Option<SocketAddr> {
        Some(local())
    }
    fn process(&mut self, _pid: u32) -> &ProcessInfo {
        &self.info
    }
    fn process_seen(&mut self, _pid: u32, _comm: &str) {}
    fn resource(&mut self, _pid: u32) -> Resource {
        to_resource(&self.info, "node", false)
    }
    fn forget_process(&mut self, _pid: u32) {}
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 18080))
}

fn remote(fd: i32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000 + fd as u16))
}

/// How far down the pipeline a run goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Build,
    Group,
    Encode,
    Metrics,
}

struct Pipeline {
    tracer: Tracer<Host>,
    metrics: sonde_metrics::Registry,
    ts: u64,
}

impl Pipeline {
    fn new() -> Self {
        let config = TracerConfig {
            selection: Selection::default(),
            routes: RouteTemplates::new(&[]),
            protocols: ProtocolSettings::default(),
            tls_plaintext: false,
            sampler: Sampler::default(),
            own_ports: HashSet::new(),
        };
        let host = Host {
            info: ProcessInfo {
                pid: PID,
                executable: "nginx".into(),
                service_name: "nginx".into(),
                ..Default::default()
            },
        };
        let mut tracer = Tracer::new(config, host, Clock::sample());
        let mut ts = 1_000_000;
        for fd in 0..CONNECTIONS {
            ts += 1_000;
            tracer.on_event(KernelEvent::Connection {
                hdr: header(fd, ts),
                role: Role::Server,
                local: Some(local()),
                remote: Some(remote(fd)),
                comm: "nginx".into(),
            });
        }
        Pipeline {
            tracer,
            metrics: sonde_metrics::Registry::new(sonde_metrics::Config::default()),
            ts,
        }
    }

    fn data(&mut self, fd: i32, direction: Direction, bytes: &[u8]) {
        self.ts += 1_000;
        self.tracer.on_event(KernelEvent::Data {
            hdr: header(fd, self.ts),
            direction,
            enter_ts_ns: self.ts - 500,
            total_len: bytes.len() as u64,
            offset: 0,
            payload: bytes,
            last: true,
            source: Source::Syscall,
        });
    }

    /// `n` requests round-robin over the connections, flushed every [`FLUSH`] spans.
    fn run(&mut self, n: usize, stage: Stage) -> usize {
        let mut out = 0;
        for i in 0..n {
            let fd = (i % CONNECTIONS as usize) as i32;
            self.data(fd, Direction::Ingress, REQUESTS[i % REQUESTS.len()]);
            self.data(fd, Direction::Egress, RESPONSE);
            if self.tracer.pending_spans() >= FLUSH {
                out += self.flush(stage);
            }
        }
        out + self.flush(stage)
    }

    fn flush(&mut self, stage: Stage) -> usize {
        let spans = self.tracer.take_spans();
        if stage == Stage::Build {
            return spans.len();
        }
        let (own, _) = self.tracer.group(spans, Vec::new());
        let mut out = own.len();
        if stage >= Stage::Encode {
            out += sonde_otlp_export::encode_own_traces(&own).len();
        }
        if stage >= Stage::Metrics {
            self.metrics.observe_own_spans(&own, self.ts);
        }
        out
    }
}

fn header(fd: i32, ts_ns: u64) -> Header {
    Header {
        pid: PID,
        tid: PID,
        fd,
        ts_ns,
    }
}

fn main() {
    // SAFETY: set before anything is allocated, as the daemon does.
    unsafe {
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 0);
    }
    const STAGES: [(&str, Stage); 4] = [
        ("parse, correlate, build spans (c2+c3)", Stage::Build),
        ("+ group per process", Stage::Group),
        ("+ encode OTLP protobuf (c4)", Stage::Encode),
        ("+ request metrics (c)", Stage::Metrics),
    ];
    // PIPELINE_ROUNDS=1 for a run under `valgrind --tool=callgrind`, whose instruction
    // counts tell apart changes smaller than this VM's timing noise.
    let rounds = std::env::var("PIPELINE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    let n = 20_000;
    // One pipeline per stage, warmed (connections parsed, series made, buffers sized); the
    // stages take turns each round so that a noisy spell hits them alike.
    let mut pipelines: Vec<Pipeline> = STAGES
        .iter()
        .map(|(_, stage)| {
            let mut p = Pipeline::new();
            p.run(n, *stage);
            p
        })
        .collect();
    let mut samples = vec![Vec::new(); STAGES.len()];
    let mut allocations = vec![0u64; STAGES.len()];
    for _ in 0..rounds {
        for (i, (_, stage)) in STAGES.iter().enumerate() {
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let t = Instant::now();
            black_box(pipelines[i].run(n, *stage));
            samples[i].push(t.elapsed().as_nanos() as f64 / n as f64);
            allocations[i] += ALLOCATIONS.load(Ordering::Relaxed) - before;
        }
    }
    println!(
        "{:<40} {:>12} {:>10} {:>10} {:>12}",
        "stage (cumulative)", "ns/req min", "step", "median", "allocs/req"
    );
    let mut last = 0.0;
    for (((name, _), runs), allocs) in STAGES.iter().zip(&mut samples).zip(&allocations) {
        runs.sort_by(f64::total_cmp);
        let (min, median) = (runs[0], runs[runs.len() / 2]);
        let per_request = *allocs as f64 / (rounds * n) as f64;
        println!(
            "{name:<40} {min:>12.0} {:>10.0} {median:>10.0} {per_request:>12.2}",
            min - last
        );
        last = min;
    }
    println!("(min over {rounds} rounds of {n} requests: the undisturbed cost on a noisy VM)");
}
