//! Resolves a process's fd to its TCP endpoints through /proc (for accepted sockets whose
//! local address the kernel programs do not see, and for connections that predate sonde).
//!
//! The TCP tables are read once per network namespace and refreshed only when a lookup misses,
//! so a burst of new connections costs one read of /proc/<pid>/net/tcp{,6}, not one each.
use std::{collections::HashMap, net::SocketAddr};

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

pub use sonde_core::tracer::TcpEndpoints;

/// inode -> endpoints for one network namespace, plus its listening ports.
#[derive(Default)]
struct NetnsTable {
    by_inode: HashMap<u64, TcpEndpoints>,
    listening_ports: std::collections::HashSet<u16>,
    listen_by_inode: HashMap<u64, SocketAddr>,
}

#[derive(Default)]
pub struct SocketResolver {
    /// Keyed by the netns inode (from /proc/<pid>/ns/net).
    tables: HashMap<u64, NetnsTable>,
}

pub fn socket_inode(pid: u32, fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn netns_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

fn read_tables(pid: u32) -> Option<NetnsTable> {
    let process = Process::new(pid as i32).ok()?;
    let mut table = NetnsTable::default();
    let entries: Vec<TcpNetEntry> = process
        .tcp()
        .unwrap_or_default()
        .into_iter()
        .chain(process.tcp6().unwrap_or_default())
        .collect();
    for e in entries {
        if e.state == TcpState::Listen {
            table.listening_ports.insert(e.local_address.port());
            table
                .listen_by_inode
                .insert(e.inode, unmap(e.local_address));
        }
        table.by_inode.insert(
            e.inode,
            TcpEndpoints {
                local: unmap(e.local_address),
                remote: unmap(e.remote_address),
                established: e.state == TcpState::Established,
            },
        );
    }
    Some(table)
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl SocketResolver {
    /// Endpoints of `pid`'s `fd` if it is a TCP socket (None: closed, not TCP, or gone).
    pub fn lookup(&mut self, pid: u32, fd: i32) -> Option<TcpEndpoints> {
        let inode = socket_inode(pid, fd)?;
        let ns = netns_of(pid)?;
        if let Some(hit) = self.tables.get(&ns).and_then(|t| t.by_inode.get(&inode)) {
            return Some(*hit);
        }
        let table = read_tables(pid)?;
        let hit = table.by_inode.get(&inode).copied();
        self.tables.insert(ns, table);
        hit
    }

    /// Whether `port` is a listening port in `pid`'s network namespace.
    pub fn is_listening_port(&mut self, pid: u32, port: u16) -> bool {
        let Some(ns) = netns_of(pid) else {
            return false;
        };
        if !self.tables.contains_key(&ns)
            && let Some(t) = read_tables(pid)
        {
            self.tables.insert(ns, t);
        }
        self.tables
            .get(&ns)
            .is_some_and(|t| t.listening_ports.contains(&port))
    }

    /// The one TCP socket `pid` listens on, if it has exactly one: the local end of a
    /// connection it accepted when nothing else is known about it.
    pub fn sole_listener(&mut self, pid: u32) -> Option<SocketAddr> {
        let table = read_tables(pid)?;
        let process = Process::new(pid as i32).ok()?;
        let mut found = None;
        for fd in process.fd().ok()?.flatten() {
            let FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            if let Some(ep) = table.listen_by_inode.get(&inode) {
                if found.is_some_and(|f: SocketAddr| f.port() != ep.port()) {
                    return None;
                }
                found = Some(*ep);
            }
        }
        found
    }

    /// Forget cached tables (they go stale as connections come and go).
    pub fn invalidate(&mut self) {
        self.tables.clear();
    }
}

/// The process owning the TCP socket whose local address is `local` (in sonde's network
/// namespace or any process's), by scanning /proc. Slow: callers cache the answer.
pub fn pid_of_local_addr(local: SocketAddr) -> Option<u32> {
    let mut inodes_by_ns: HashMap<u64, Option<u64>> = HashMap::new();
    let all = procfs::process::all_processes().ok()?;
    for process in all.flatten() {
        let pid = process.pid as u32;
        let Some(ns) = netns_of(pid) else { continue };
        let inode = *inodes_by_ns.entry(ns).or_insert_with(|| {
            read_tables(pid).and_then(|t| {
                t.by_inode
                    .iter()
                    .find(|(_, ep)| ep.local == local)
                    .map(|(i, _)| *i)
            })
        });
        let Some(inode) = inode else { continue };
        let Ok(fds) = process.fd() else { continue };
        if fds
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(i) if i == inode))
        {
            return Some(pid);
        }
    }
    None
}

/// An established TCP connection of some process, found by scanning /proc.
#[derive(Clone, Debug)]
pub struct FoundSocket {
    pub pid: u32,
    pub fd: i32,
    pub endpoints: TcpEndpoints,
    /// The local port is a listening port: this side accepted the connection.
    pub accepted: bool,
}

/// Every established TCP socket of every process but `exclude_pid` (or only `only_pids`).
pub fn scan_established(exclude_pid: u32, only_pids: Option<&[u32]>) -> Vec<FoundSocket> {
    let mut resolver = SocketResolver::default();
    let mut found = Vec::new();
    let Ok(all) = procfs::process::all_processes() else {
        return found;
    };
    for process in all.flatten() {
        let pid = process.pid as u32;
        if pid == exclude_pid || only_pids.is_some_and(|only| !only.contains(&pid)) {
            continue;
        }
        let Ok(fds) = process.fd() else { continue };
        for fd in fds.flatten() {
            let FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            let Some(ns) = netns_of(pid) else { continue };
            if let std::collections::hash_map::Entry::Vacant(e) = resolver.tables.entry(ns) {
                match read_tables(pid) {
                    Some(t) => {
                        e.insert(t);
                    }
                    None => continue,
                }
            }
            let Some(table) = resolver.tables.get(&ns) else {
                continue;
            };
            let Some(ep) = table.by_inode.get(&inode) else {
                continue;
            };
            if !ep.established {
                continue;
            }
            found.push(FoundSocket {
                pid,
                fd: fd.fd,
                endpoints: *ep,
                accepted: table.listening_ports.contains(&ep.local.port()),
            });
        }
    }
    found
}
