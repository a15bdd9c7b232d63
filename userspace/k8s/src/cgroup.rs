//! Container id and pod uid of a process from its `/proc/<pid>/cgroup`: containerd, CRI-O,
//! Docker and Podman under the systemd and cgroupfs drivers, cgroup v1, v2 and hybrid layouts.
//! Pure: fed the file's text. Runtime helper processes (CRI-O's and Podman's `conmon`) are
//! recognised and skipped; a pod's pause container has an id the API never lists as one of
//! the pod's containers, so it never gets an identity either.

/// The container runtime a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A bare 64-hex id under `kubepods` (cgroupfs driver): containerd or Docker via dockershim.
    Unknown,
}

/// What a process's cgroups say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// The container id, 64 lowercase hex digits, without the runtime prefix.
    pub container_id: String,
    /// The pod's uid when the path holds a kubelet pod slice (`pod<uid>`).
    pub pod_uid: Option<String>,
    pub runtime: Runtime,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A path segment naming a container, or `Err(())` for a runtime helper (conmon) to skip.
fn container_segment(seg: &str) -> Option<Result<(String, Runtime), ()>> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    for (prefix, runtime) in [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(rest) = seg.strip_prefix(prefix) {
            if rest.starts_with("conmon-") {
                return Some(Err(()));
            }
            return is_container_id(rest).then(|| Ok((rest.to_ascii_lowercase(), runtime)));
        }
    }
    is_container_id(seg).then(|| Ok((seg.to_ascii_lowercase(), Runtime::Unknown)))
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd).
fn pod_segment(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let at = seg.rfind("pod")?;
    if at > 0 && !seg[..at].ends_with('-') {
        return None;
    }
    let uid = seg[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    ok.then_some(uid)
}

/// The container of a process from its `/proc/<pid>/cgroup` text; `None` for host processes,
/// runtime helpers (conmon) and anything unrecognised. Every hierarchy line is considered
/// (v1 `N:controllers:/path`, v2 `0::/path`); the deepest container segment wins.
pub fn identity(cgroup: &str) -> Option<CgroupIdentity> {
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let Some(pos) = segs.iter().rposition(|s| container_segment(s).is_some()) else {
            continue;
        };
        let Some(Ok((container_id, runtime))) = container_segment(segs[pos]) else {
            // A conmon scope: not an application process.
            return None;
        };
        let pod_uid = segs[..pos].iter().rev().find_map(|s| pod_segment(s));
        return Some(CgroupIdentity {
            container_id,
            pod_uid,
            runtime,
        });
    }
    None
}

/// Whether a process is a container runtime's helper rather than an application, by its
/// executable name (the pause container's `/pause`, CRI-O's and Podman's `conmon`).
pub fn is_infrastructure(executable: &str) -> bool {
    matches!(executable, "pause" | "conmon")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "7c5c6f1e-2b9a-4f7e-9d61-5d0f2a8b3c4e";

    fn uid_(u: &str) -> String {
        u.replace('-', "_")
    }

    fn check(text: &str, runtime: Runtime, pod: Option<&str>) {
        assert_eq!(
            identity(text),
            Some(CgroupIdentity {
                container_id: ID.into(),
                pod_uid: pod.map(str::to_owned),
                runtime
            }),
            "{text}"
        );
    }

    #[test]
    fn containerd_systemd_cgroup_v2() {
        check(
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
                uid_(UID)
            ),
            Runtime::Containerd,
            Some(UID),
        );
    }

    #[test]
    fn containerd_systemd_guaranteed_qos_has_no_qos_slice() {
        check(
            &format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
                uid_(UID)
            ),
            Runtime::Containerd,
            Some(UID),
        );
    }

    #[test]
    fn containerd_cgroupfs_cgroup_v1() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n11:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        check(&text, Runtime::Unknown, Some(UID));
    }

    #[test]
    fn hybrid_v1_controllers_with_v2_unified() {
        // This machine's layout: v1 controllers plus the v2 hierarchy at /sys/fs/cgroup/unified.
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            uid_(UID)
        );
        let text = format!(
            "13:misc:/\n12:cpu,cpuacct:{path}\n4:memory:{path}\n1:name=systemd:{path}\n0::{path}\n"
        );
        check(&text, Runtime::Containerd, Some(UID));
        // Only the unified line moved (as a root test does with cgroup.procs in v2).
        let text = format!(
            "12:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::{path}\n"
        );
        check(&text, Runtime::Containerd, Some(UID));
    }

    #[test]
    fn crio_systemd_and_cgroupfs() {
        check(
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{ID}.scope",
                uid_(UID)
            ),
            Runtime::CriO,
            Some(UID),
        );
        check(
            &format!("0::/kubepods/burstable/pod{UID}/crio-{ID}"),
            Runtime::CriO,
            Some(UID),
        );
    }

    #[test]
    fn crio_conmon_is_skipped() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-conmon-{ID}.scope",
            uid_(UID)
        );
        assert_eq!(identity(&text), None);
        assert_eq!(
            identity(&format!("0::/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn docker_systemd_and_cgroupfs_outside_kubernetes() {
        check(
            &format!("0::/system.slice/docker-{ID}.scope"),
            Runtime::Docker,
            None,
        );
        check(&format!("4:memory:/docker/{ID}\n"), Runtime::Unknown, None);
        check(
            &format!("0::/machine.slice/libpod-{ID}.scope/container"),
            Runtime::Podman,
            None,
        );
    }

    #[test]
    fn nested_init_scope_below_the_container() {
        check(
            &format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope/init.scope",
                uid_(UID)
            ),
            Runtime::Containerd,
            Some(UID),
        );
    }

    #[test]
    fn host_processes_have_none() {
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/\n",
            "12:pids:/system.slice/ssh.service\n0::/system.slice/ssh.service\n",
            "",
            "garbage without colons",
            "0::/kubepods.slice/kubepods-besteffort.slice\n",
            &format!("0::/system.slice/cri-containerd-{}.scope", &ID[..40]),
        ] {
            assert_eq!(identity(text), None, "{text}");
        }
    }

    #[test]
    fn infrastructure_processes() {
        assert!(is_infrastructure("pause"));
        assert!(is_infrastructure("conmon"));
        assert!(!is_infrastructure("python3.11"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = identity(&s);
        }
    }
}
