//! Gives a process's OTLP resource its Kubernetes identity: from the resource's
//! `process.pid`, the process's cgroup (container id, pod uid) and environment (its own
//! OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win), then the pod cache. Also applies the
//! namespace/label selection. Runs on the capture thread: only cache reads and, once per
//! process, two small /proc reads.
use std::{collections::HashMap, path::PathBuf};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
};

use crate::{
    cache::PodCache,
    cgroup::{self, CgroupIdentity},
    pod::{self, ProcessOverrides},
    selection::PodSelection,
};

struct Process {
    cgroup: Option<CgroupIdentity>,
    overrides: ProcessOverrides,
}

/// Processes remembered at most (the map is cleared past it; entries are cheap to rebuild).
const MAX_PROCESSES: usize = 16_384;

pub struct Enricher {
    pods: PodCache,
    selection: PodSelection,
    proc_root: PathBuf,
    processes: HashMap<u32, Process>,
}

fn str_value(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::StringValue(v.to_owned())),
    })
}

fn pid_of(resource: &Resource) -> Option<u32> {
    resource.attributes.iter().find_map(|a| {
        match (a.key.as_str(), a.value.as_ref()?.value.as_ref()?) {
            ("process.pid", Value::IntValue(p)) => u32::try_from(*p).ok(),
            _ => None,
        }
    })
}

fn executable_of(resource: &Resource) -> Option<&str> {
    resource.attributes.iter().find_map(|a| {
        match (a.key.as_str(), a.value.as_ref()?.value.as_ref()?) {
            ("process.executable.name", Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        }
    })
}

impl Enricher {
    pub fn new(pods: PodCache, selection: PodSelection) -> Self {
        Self::with_proc_root(pods, selection, "/proc")
    }

    /// Reads processes under `proc_root` instead of /proc (tests).
    pub fn with_proc_root(
        pods: PodCache,
        selection: PodSelection,
        proc_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            pods,
            selection,
            proc_root: proc_root.into(),
            processes: HashMap::new(),
        }
    }

    fn process(&mut self, pid: u32) -> &Process {
        if self.processes.len() >= MAX_PROCESSES && !self.processes.contains_key(&pid) {
            self.processes.clear();
        }
        let root = &self.proc_root;
        self.processes.entry(pid).or_insert_with(|| {
            let dir = root.join(pid.to_string());
            Process {
                cgroup: std::fs::read_to_string(dir.join("cgroup"))
                    .ok()
                    .and_then(|c| cgroup::identity(&c)),
                overrides: std::fs::read(dir.join("environ"))
                    .map(|e| ProcessOverrides::from_environ(&e))
                    .unwrap_or_default(),
            }
        })
    }

    /// The process exited: its pid may be reused.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Forgets processes that have exited (their pids may be reused by another container).
    pub fn prune(&mut self) {
        let root = &self.proc_root;
        self.processes
            .retain(|pid, _| root.join(pid.to_string()).exists());
    }

    /// Adds the Kubernetes attributes of the resource's process. Returns false when the
    /// selection excludes that process's pod (its telemetry is then dropped).
    pub fn enrich(&mut self, resource: &mut Resource) -> bool {
        let Some(pid) = pid_of(resource) else {
            return true;
        };
        if executable_of(resource).is_some_and(cgroup::is_infrastructure) {
            return true;
        }
        let has_includes = self.selection.has_includes();
        let pods = self.pods.clone();
        let process = self.process(pid);
        let Some(id) = process.cgroup.clone() else {
            // A host process: no pod, so no include rule selects it.
            return !has_includes;
        };
        let overrides = process.overrides.clone();
        let Some((pod, container)) = pods.lookup(&id) else {
            // A container whose pod is not known (yet): keep it, identity comes later.
            return true;
        };
        if !self.selection.selects(&pod) {
            return false;
        }
        for (key, value) in pod::attributes(&pod, container.as_ref(), &overrides) {
            match resource.attributes.iter_mut().find(|a| a.key == key) {
                Some(existing) => existing.value = str_value(&value),
                None => resource.attributes.push(KeyValue {
                    key,
                    value: str_value(&value),
                    ..Default::default()
                }),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::{ContainerMeta, PodMeta};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn resource(pid: i64) -> Resource {
        Resource {
            attributes: vec![
                KeyValue {
                    key: "service.name".into(),
                    value: str_value("python3.11"),
                    ..Default::default()
                },
                KeyValue {
                    key: "process.pid".into(),
                    value: Some(AnyValue {
                        value: Some(Value::IntValue(pid)),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn get(r: &Resource, k: &str) -> Option<String> {
        r.attributes.iter().find(|a| a.key == k).and_then(|a| {
            match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        })
    }

    fn fake_proc(dir: &std::path::Path, pid: u32, cgroup: &str, environ: &[u8]) {
        let p = dir.join(pid.to_string());
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("cgroup"), cgroup).unwrap();
        std::fs::write(p.join("environ"), environ).unwrap();
    }

    #[test]
    fn pod_process_gets_identity_host_process_none() {
        let dir = std::env::temp_dir().join(format!("sonde-k8s-enrich-{}", std::process::id()));
        fake_proc(
            &dir,
            10,
            &format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope\n"),
            b"",
        );
        fake_proc(&dir, 11, "0::/user.slice/session-1.scope\n", b"");
        fake_proc(
            &dir,
            12,
            &format!("0::/kubepods.slice/cri-containerd-{ID}.scope\n"),
            b"OTEL_SERVICE_NAME=mine\0",
        );
        let cache = PodCache::default();
        cache.insert(PodMeta {
            uid: "u1".into(),
            name: "shop-1".into(),
            namespace: "prod".into(),
            node: "node-1".into(),
            containers: vec![ContainerMeta {
                id: ID.into(),
                name: "web".into(),
                image: "shop:1".into(),
            }],
            ..PodMeta::default()
        });
        let mut e = Enricher::with_proc_root(cache, PodSelection::default(), &dir);
        let mut r = resource(10);
        assert!(e.enrich(&mut r));
        assert_eq!(get(&r, "k8s.pod.name").as_deref(), Some("shop-1"));
        assert_eq!(get(&r, "service.name").as_deref(), Some("shop-1"));
        assert_eq!(get(&r, "k8s.container.name").as_deref(), Some("web"));
        let mut r = resource(11);
        assert!(e.enrich(&mut r));
        assert_eq!(get(&r, "k8s.pod.name"), None);
        assert_eq!(get(&r, "service.name").as_deref(), Some("python3.11"));
        let mut r = resource(12);
        assert!(e.enrich(&mut r));
        assert_eq!(get(&r, "service.name").as_deref(), Some("python3.11"));
        assert_eq!(get(&r, "k8s.namespace.name").as_deref(), Some("prod"));

        let exclude_prod = PodSelection {
            exclude_namespaces: vec!["prod".into()],
            ..PodSelection::default()
        };
        let cache = e.pods.clone();
        let mut e = Enricher::with_proc_root(cache, exclude_prod, &dir);
        assert!(!e.enrich(&mut resource(10)));
        assert!(e.enrich(&mut resource(11)));
        std::fs::remove_dir_all(dir.join("11")).unwrap();
        e.prune();
        assert_eq!(e.processes.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
