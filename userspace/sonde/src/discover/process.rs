//! Process identity from /proc (executable, command line, environment, cgroup), cached per pid
//! until the process exits. The facts are read here; what they mean (`service.name` order,
//! container id) is decided in `sonde_core::trace::resource`.
use std::collections::HashMap;

use opentelemetry_proto::tonic::resource::v1::Resource;
use sonde_core::trace::resource::{ProcessFacts, ProcessInfo, process_info, to_resource};

/// Reads what /proc says about `pid`. Missing pieces are left empty (the process may be gone).
pub fn read_process(pid: u32) -> ProcessInfo {
    let proc_dir = format!("/proc/{pid}");
    process_info(ProcessFacts {
        pid,
        exe: std::fs::read_link(format!("{proc_dir}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
        comm: std::fs::read_to_string(format!("{proc_dir}/comm")).ok(),
        cmdline: std::fs::read(format!("{proc_dir}/cmdline")).unwrap_or_default(),
        environ: std::fs::read(format!("{proc_dir}/environ")).unwrap_or_default(),
        cgroup: std::fs::read_to_string(format!("{proc_dir}/cgroup")).ok(),
    })
}

pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Resources per pid, read once and kept until the process exits.
#[derive(Default)]
pub struct ResourceCache {
    host: String,
    by_pid: HashMap<u32, (ProcessInfo, Resource)>,
    /// Opt-in: export the (redacted) command line and arguments.
    export_command_line: bool,
}

impl ResourceCache {
    pub fn new() -> Self {
        Self {
            host: host_name(),
            by_pid: HashMap::new(),
            export_command_line: false,
        }
    }

    /// Opts in to `process.command_line` / `process.command_args`, secrets redacted.
    pub fn with_command_line(mut self, export: bool) -> Self {
        self.export_command_line = export;
        self
    }

    pub fn info(&mut self, pid: u32) -> &ProcessInfo {
        &self.entry(pid).0
    }

    /// Like [`Self::info`], but when /proc no longer has the process (it was short-lived),
    /// names it by `comm`, the command name the kernel reported.
    pub fn info_or_comm(&mut self, pid: u32, comm: &str) -> &ProcessInfo {
        let host = &self.host;
        let cmdline = self.export_command_line;
        let entry = self.by_pid.entry(pid).or_insert_with(|| {
            let mut info = read_process(pid);
            if info.executable.is_empty() {
                info.executable = comm.to_owned();
            }
            if info.service_name.is_empty() {
                info.service_name = comm.to_owned();
            }
            let resource = to_resource(&info, host, cmdline);
            (info, resource)
        });
        &entry.0
    }

    pub fn resource(&mut self, pid: u32) -> Resource {
        self.entry(pid).1.clone()
    }

    fn entry(&mut self, pid: u32) -> &(ProcessInfo, Resource) {
        let host = &self.host;
        let cmdline = self.export_command_line;
        self.by_pid.entry(pid).or_insert_with(|| {
            let info = read_process(pid);
            let resource = to_resource(&info, host, cmdline);
            (info, resource)
        })
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_of_this_process_falls_back_to_executable() {
        let info = read_process(std::process::id());
        assert!(!info.executable.is_empty());
        assert!(!info.service_name.is_empty());
    }
}
