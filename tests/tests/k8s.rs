//! Kubernetes metadata and events, end to end: the real daemon with real probes traces a real
//! HTTP server placed in cgroups shaped exactly like a containerd pod's under the systemd
//! driver (kubepods.slice/.../cri-containerd-<id>.scope) in this machine's hybrid layout (v1
//! controllers plus the unified v2 hierarchy).
//!
//! The API answers come from a STAND-IN server (tests/apps/k8s_api_standin.py) that speaks the
//! Kubernetes API's JSON for list / get / watch: no real API server can run on these machines
//! (no container runtime, kubelet or etcd). sonde reaches it through a KUBECONFIG, the same way
//! it reaches a real cluster from outside.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use sonde_e2e::{Proc, PyHttpServer, Sonde, Span, TestDir, free_port, http_get, python};

const NODE: &str = "node-e2e";

/// A pod-shaped cgroup in every hierarchy that matters here, holding one process; removed
/// (after moving the process back to the root cgroups) on drop.
struct PodCgroup {
    dirs: Vec<PathBuf>,
    pid: u32,
}

impl PodCgroup {
    fn enter(pid: u32, pod_uid: &str, container_id: &str) -> PodCgroup {
        let rel = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container_id}.scope",
            pod_uid.replace('-', "_")
        );
        let mut dirs = Vec::new();
        for hierarchy in ["unified", "pids", "systemd"] {
            let root = Path::new("/sys/fs/cgroup").join(hierarchy);
            assert!(
                root.join("cgroup.procs").exists(),
                "{} is not a cgroup hierarchy: this test expects the hybrid layout of ENVIRONMENT.md",
                root.display()
            );
            let dir = root.join(&rel);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
            dirs.push(dir);
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroup.contains(&format!("cri-containerd-{container_id}.scope")),
            "{cgroup}"
        );
        PodCgroup { dirs, pid }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Back to the hierarchy's root (if the process is still alive), then remove the
            // pod's directories bottom-up; shared parents stay when another test uses them.
            let root = dir.ancestors().nth(4).unwrap();
            let _ = std::fs::write(root.join("cgroup.procs"), self.pid.to_string());
            for d in dir.ancestors().take(4) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// The stand-in API server (see the module comment) and a kubeconfig pointing at it.
struct StandIn {
    proc: Proc,
    dir: TestDir,
}

impl StandIn {
    fn start(dir: TestDir, port: u16) -> StandIn {
        let mut cmd = Command::new(python());
        cmd.arg("-u")
            .arg(sonde_e2e::apps_dir().join("k8s_api_standin.py"))
            .arg(port.to_string())
            .arg(dir.join("state.json"))
            .arg(dir.path());
        let proc = Proc::spawn("k8s-api-standin", cmd, dir.path()).unwrap();
        proc.wait_for_line("listening on", WAIT).unwrap();
        StandIn { proc, dir }
    }

    fn requests(&self) -> Vec<String> {
        self.proc
            .stdout()
            .lines()
            .filter(|l| l.starts_with("REQ "))
            .map(str::to_owned)
            .collect()
    }

    fn wait_for_request(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.requests().iter().any(|r| r.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "the stand-in API never got {needle:?}; requests: {:#?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn write_state(dir: &TestDir, port: u16, pod_uid: &str, container_id: &str) {
    let pod = |name: &str, uid: &str, node: &str, cid: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": "90",
                "labels": {"app": "shop", "pod-template-hash": "7d9f"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-7d9f",
                    "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "web", "image": "registry.local/shop:1.4.2"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "web",
                "image": "registry.local/shop:1.4.2", "imageID": "", "ready": true, "restartCount": 0,
                "containerID": format!("containerd://{cid}")}]}
        })
    };
    let state = serde_json::json!({
        "pods": [
            pod("shop-7d9f-abcde", pod_uid, NODE, container_id),
            // Another node's pod: the field selector keeps it away from this node's agent.
            pod("shop-7d9f-zzzzz", "0f0f0f0f-0000-4000-8000-000000000000", "other-node", &"f".repeat(64)),
        ],
        "replicasets": {"shop/shop-7d9f": {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "shop-7d9f", "namespace": "shop", "uid": "rs-uid",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop",
                    "uid": "dep-uid", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "shop"}}}
        }},
        "events": [{
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "shop-7d9f-abcde.old", "namespace": "shop", "uid": "ev-old", "resourceVersion": "150"},
            "involvedObject": {"kind": "Pod", "name": "shop-7d9f-abcde", "namespace": "shop", "uid": pod_uid, "apiVersion": "v1"},
            "reason": "Scheduled", "message": "Successfully assigned shop/shop-7d9f-abcde to node-e2e",
            "type": "Normal", "count": 1,
            "firstTimestamp": "2020-01-01T00:00:00Z", "lastTimestamp": "2020-01-01T00:00:00Z",
            "source": {"component": "default-scheduler"}
        }],
        "new_events": [{
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "shop-7d9f-abcde.new", "namespace": "shop", "uid": "ev-new", "resourceVersion": "201"},
            "involvedObject": {"kind": "Pod", "name": "shop-7d9f-abcde", "namespace": "shop", "uid": pod_uid,
                "apiVersion": "v1", "resourceVersion": "90", "fieldPath": "spec.containers{web}"},
            "reason": "BackOff", "message": "Back-off restarting failed container web",
            "type": "Warning", "count": 2, "action": "Restarting",
            "source": {"component": "kubelet", "host": NODE}
        }]
    });
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: e2e\n  user: {{}}\ncontexts:\n- name: e2e\n  context:\n    cluster: standin\n    user: e2e\ncurrent-context: e2e\n"
    );
    std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
}

/// Distinct ids per run (tests may run concurrently on one machine).
fn ids() -> (String, String) {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = format!("{:032x}", n ^ (u128::from(std::process::id()) << 64));
    let uid = format!(
        "{}-{}-4{}-8{}-{}",
        &seed[0..8],
        &seed[8..12],
        &seed[13..16],
        &seed[17..20],
        &seed[20..32]
    );
    (uid, format!("{seed}{seed}"))
}

fn server_spans(sonde: &Sonde, port: u16, pred: impl Fn(&Span) -> bool) -> Vec<Span> {
    sonde.wait_for_spans(|s| servers(s, port).into_iter().any(&pred), WAIT)
}

fn assert_pod_identity(s: &Span, pod_uid: &str, container_id: &str) {
    let r = |k: &str| s.resource_str(k);
    assert_eq!(r("k8s.pod.name"), Some("shop-7d9f-abcde"), "{s:?}");
    assert_eq!(r("k8s.pod.uid"), Some(pod_uid));
    assert_eq!(r("k8s.namespace.name"), Some("shop"));
    assert_eq!(r("k8s.node.name"), Some(NODE));
    assert_eq!(r("k8s.container.name"), Some("web"));
    assert_eq!(r("k8s.replicaset.name"), Some("shop-7d9f"));
    assert_eq!(r("k8s.deployment.name"), Some("shop"));
    assert_eq!(r("container.id"), Some(container_id));
    // service.* by the semantic conventions' Kubernetes rules (REFERENCE.md).
    assert_eq!(r("service.name"), Some("shop"));
    assert_eq!(r("service.namespace"), Some("shop"));
    assert_eq!(r("service.version"), Some("1.4.2"));
    assert_eq!(r("service.instance.id"), Some("shop.shop-7d9f-abcde.web"));
}

#[test]
fn pod_process_gets_its_pod_identity_host_process_none() {
    let (pod_uid, container_id) = ids();
    let dir = TestDir::new("k8s-api").unwrap();
    let api_port = free_port();
    write_state(&dir, api_port, &pod_uid, &container_id);
    let api = StandIn::start(dir, api_port);
    let server = PyHttpServer::start(&[("index.html", 100)]);
    let _cgroup = PodCgroup::enter(server.pid(), &pod_uid, &container_id);
    let kubeconfig = api.dir.join("kubeconfig");
    let sonde = Sonde::start_with_env(
        &["--port", &server.port().to_string()],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("K8S_NODE_NAME", NODE),
        ],
    );
    // The pod watch is per node, and the owner Deployment comes through the ReplicaSet.
    api.wait_for_request(r#"REQ GET /api/v1/pods {"fieldSelector": ["spec.nodeName=node-e2e"]"#);
    api.wait_for_request("REQ GET /apis/apps/v1/namespaces/shop/replicasets/shop-7d9f");
    std::thread::sleep(Duration::from_millis(500));

    let (status, _) = http_get(&server.url("/index.html"));
    assert_eq!(status, 200);
    server_spans(&sonde, server.port(), |_| true);
    std::thread::sleep(Duration::from_millis(1500));
    let spans = sonde.spans();
    let srv = servers(&spans, server.port());
    assert_eq!(srv.len(), 1, "{}", sonde_e2e::dump_spans(&spans));
    assert_eq!(
        srv[0].resource_i64("process.pid"),
        Some(i64::from(server.pid()))
    );
    assert_pod_identity(srv[0], &pod_uid, &container_id);
    // The client is this test process, on the host: no pod identity at all.
    let cl = clients(&spans, server.port());
    assert_eq!(cl.len(), 1, "{}", sonde_e2e::dump_spans(&spans));
    for key in cl[0].resource.keys() {
        assert!(
            !key.starts_with("k8s."),
            "host process got {key}: {:?}",
            cl[0]
        );
    }
    assert_ne!(cl[0].resource_str("service.name"), Some("shop"));
    assert!(
        !sonde.stderr().contains("Kubernetes"),
        "no Kubernetes warning expected: {}",
        sonde.stderr()
    );
}

#[test]
fn identity_fills_in_once_an_unreachable_api_answers() {
    let (pod_uid, container_id) = ids();
    let dir = TestDir::new("k8s-api").unwrap();
    let api_port = free_port();
    write_state(&dir, api_port, &pod_uid, &container_id);
    let kubeconfig = dir.join("kubeconfig");
    let server = PyHttpServer::start(&[("index.html", 100)]);
    let _cgroup = PodCgroup::enter(server.pid(), &pod_uid, &container_id);
    // The API is down when sonde starts: it traces all the same.
    let sonde = Sonde::start_with_env(
        &["--port", &server.port().to_string()],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("K8S_NODE_NAME", NODE),
        ],
    );
    assert_eq!(http_get(&server.url("/index.html")).0, 200);
    let spans = server_spans(&sonde, server.port(), |_| true);
    let first = servers(&spans, server.port())[0].clone();
    assert_eq!(first.resource_str("k8s.pod.name"), None);
    // The API comes back: the watch retries with backoff and identity fills in.
    let api = StandIn::start(dir, api_port);
    api.wait_for_request("REQ GET /apis/apps/v1/namespaces/shop/replicasets/shop-7d9f");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http_get(&server.url("/index.html")).0, 200);
    let spans = server_spans(&sonde, server.port(), |s| {
        s.resource_str("k8s.pod.name").is_some()
    });
    let with_identity: Vec<&Span> = servers(&spans, server.port())
        .into_iter()
        .filter(|s| s.resource_str("k8s.pod.name").is_some())
        .collect();
    assert_pod_identity(with_identity[0], &pod_uid, &container_id);
    // One warning for the outage, not one per retry.
    let warnings = sonde.stderr().matches("Kubernetes pod watch").count();
    assert!(warnings <= 1, "{}", sonde.stderr());
}

#[test]
fn a_new_event_on_the_watch_becomes_exactly_one_log_record() {
    let (pod_uid, container_id) = ids();
    let dir = TestDir::new("k8s-api").unwrap();
    let api_port = free_port();
    write_state(&dir, api_port, &pod_uid, &container_id);
    let api = StandIn::start(dir, api_port);
    let kubeconfig = api.dir.join("kubeconfig");
    let sonde = Sonde::start_with_env(
        &["--k8s-events"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    api.wait_for_request(r#"REQ GET /api/v1/events {"allowWatchBookmarks""#);
    std::fs::write(api.dir.join("emit"), "").unwrap();
    api.proc
        .wait_for_line("SENT Event shop-7d9f-abcde.new", WAIT)
        .unwrap();
    let records = || -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for line in sonde.stdout().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            for rl in v["resourceLogs"].as_array().into_iter().flatten() {
                for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                    for rec in sl["logRecords"].as_array().into_iter().flatten() {
                        out.push(serde_json::json!({"resource": rl["resource"], "record": rec}));
                    }
                }
            }
        }
        out
    };
    let deadline = Instant::now() + WAIT;
    while records().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no log record:\n{}",
            sonde.stdout()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Long enough for a duplicate to show up if there were one.
    std::thread::sleep(Duration::from_secs(3));
    let recs = records();
    assert_eq!(
        recs.len(),
        1,
        "the old event must not be exported: {recs:#?}"
    );
    let attrs = |v: &serde_json::Value| -> std::collections::HashMap<String, serde_json::Value> {
        v["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let val = kv["value"]
                    .as_object()
                    .and_then(|o| o.values().next().cloned());
                (
                    kv["key"].as_str().unwrap_or("").to_owned(),
                    val.unwrap_or_default(),
                )
            })
            .collect()
    };
    let res = attrs(&recs[0]["resource"]);
    let rec = &recs[0]["record"];
    let a = attrs(rec);
    let s = |v: &str| serde_json::Value::String(v.into());
    assert_eq!(
        rec["body"]["stringValue"],
        s("Back-off restarting failed container web")
    );
    assert_eq!(rec["severityText"], s("WARN"));
    assert_eq!(rec["severityNumber"], serde_json::json!(13));
    assert_eq!(res["k8s.node.name"], s(NODE));
    assert_eq!(res["k8s.object.kind"], s("Pod"));
    assert_eq!(res["k8s.object.name"], s("shop-7d9f-abcde"));
    assert_eq!(res["k8s.object.uid"], s(&pod_uid));
    assert_eq!(res["k8s.object.fieldpath"], s("spec.containers{web}"));
    assert_eq!(res["k8s.object.api_version"], s("v1"));
    assert_eq!(res["k8s.object.resource_version"], s("90"));
    assert_eq!(a["k8s.event.reason"], s("BackOff"));
    assert_eq!(a["k8s.event.action"], s("Restarting"));
    assert_eq!(a["k8s.event.name"], s("shop-7d9f-abcde.new"));
    assert_eq!(a["k8s.event.uid"], s("ev-new"));
    assert_eq!(
        a["k8s.event.count"],
        s("2"),
        "64-bit integers are strings in OTLP/JSON"
    );
    assert!(a.contains_key("k8s.event.start_time"));
    assert_eq!(a["k8s.namespace.name"], s("shop"));
}
