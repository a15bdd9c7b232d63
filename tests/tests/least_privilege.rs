//! The least-privilege variant of the Kubernetes install, proven here: the real daemon runs
//! with exactly the capabilities deploy/kubernetes/least-privilege adds (BPF, PERFMON,
//! SYS_PTRACE, DAC_READ_SEARCH, CHECKPOINT_RESTORE; `setpriv` limits the bounding set, so root
//! keeps only those) and traces an HTTP exchange end to end; with one removed, it names it.
//! tracefs is mounted beforehand, as on a node (mounting it is what would need CAP_SYS_ADMIN).
//!
//! One test function: it points `SONDE_BIN` at a `setpriv` wrapper, which is process-wide.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::{os::unix::fs::PermissionsExt, path::PathBuf};

use common::*;
use sonde_e2e::{Sonde, TestDir, TestServer, http_get};

const LEAST: &[&str] = &[
    "bpf",
    "perfmon",
    "sys_ptrace",
    "dac_read_search",
    "checkpoint_restore",
];

fn wrapper(dir: &TestDir, sonde: &std::path::Path, name: &str, caps: &[&str]) -> PathBuf {
    let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-all,{} --inh-caps=-all -- {} \"$@\"\n",
            set.join(","),
            sonde.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn use_bin(path: &std::path::Path) {
    // SAFETY: the only test in this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("SONDE_BIN", path) };
}

fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_owned();
    u64::from_str_radix(&hex, 16).unwrap()
}

#[test]
fn least_privilege_capabilities_suffice_and_a_missing_one_is_named() {
    sonde_e2e::sonde::ensure_tracefs_mounted();
    let dir = TestDir::new("least-privilege").unwrap();
    // The real binary, resolved before SONDE_BIN points at a wrapper.
    let bin = sonde_e2e::sonde::sonde_bin().unwrap();

    // Exactly the five capabilities: probes load, an exchange becomes its spans.
    use_bin(&wrapper(&dir, &bin, "sonde-least", LEAST));
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &server.port().to_string()]);
    let expected = [2u32, 19, 38, 39, 40]
        .iter()
        .fold(0u64, |acc, bit| acc | (1 << bit));
    assert_eq!(
        effective_caps(sonde.pid()),
        expected,
        "the daemon must run with exactly the least-privilege set"
    );
    let (status, _) = http_get(&format!("http://127.0.0.1:{}/len/3", server.port()));
    assert_eq!(status, 200);
    let spans = wait_servers(&sonde, server.port(), 1);
    let srv = servers(&spans, server.port());
    assert_eq!(srv.len(), 1, "{}", sonde_e2e::dump_spans(&spans));
    assert_eq!(srv[0].attr_i64("http.response.status_code"), Some(200));
    assert_eq!(
        srv[0].resource_i64("process.pid"),
        Some(i64::from(server.pid()))
    );
    assert!(
        !sonde.stderr().contains("missing"),
        "no capability should be reported missing: {}",
        sonde.stderr()
    );
    drop(sonde);

    // Without CAP_BPF the probes cannot load: the daemon says which capability is missing.
    let without_bpf: Vec<&str> = LEAST.iter().copied().filter(|c| *c != "bpf").collect();
    use_bin(&wrapper(&dir, &bin, "sonde-no-bpf", &without_bpf));
    let Err(err) = Sonde::try_start_with_env(&[], &[]) else {
        panic!("sonde started without CAP_BPF");
    };
    assert!(err.to_string().contains("CAP_BPF"), "{err}");

    // Without CAP_CHECKPOINT_RESTORE it runs, and names what it lacks.
    let without_cr: Vec<&str> = LEAST
        .iter()
        .copied()
        .filter(|c| *c != "checkpoint_restore")
        .collect();
    use_bin(&wrapper(&dir, &bin, "sonde-no-cr", &without_cr));
    let sonde = Sonde::start(&["--port", &server.port().to_string()]);
    assert!(
        sonde.stderr().contains("missing CAP_CHECKPOINT_RESTORE"),
        "{}",
        sonde.stderr()
    );
}
