//! What the daemon learns from the host rather than from the probes: /proc's TCP tables
//! (endpoints the kernel did not give, listeners, connections that predate sonde), process
//! identity, and threads already blocked in a syscall when the probes attached. Everything
//! that reads /proc lives here; the pure logic it feeds is in `sonde-core`.
//!
//! Must never: decide protocol or span semantics (that is `sonde-core`'s job).
use std::net::SocketAddr;

use sonde_core::{
    trace::resource::ProcessInfo,
    tracer::{HostView, TcpEndpoints},
};

pub mod inflight;
pub mod process;
pub mod sockets;

use process::ResourceCache;
use sockets::SocketResolver;

/// The real host: /proc, behind the tracer's [`HostView`].
pub struct ProcHost {
    pub sockets: SocketResolver,
    pub resources: ResourceCache,
}

impl HostView for ProcHost {
    fn endpoints(&mut self, pid: u32, fd: i32) -> Option<TcpEndpoints> {
        self.sockets.lookup(pid, fd)
    }
    fn process(&mut self, pid: u32) -> &ProcessInfo {
        self.resources.info(pid)
    }
    fn sole_listener(&mut self, pid: u32) -> Option<SocketAddr> {
        self.sockets.sole_listener(pid)
    }
    fn process_seen(&mut self, pid: u32, comm: &str) {
        self.resources.info_or_comm(pid, comm);
    }
    fn resource(&mut self, pid: u32) -> opentelemetry_proto::tonic::resource::v1::Resource {
        self.resources.resource(pid)
    }
    fn forget_process(&mut self, pid: u32) {
        self.resources.forget(pid);
    }
}
