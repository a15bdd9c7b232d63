//! The pod metadata sonde keeps (a small model, not the API's object), its conversion from a
//! `k8s_openapi` Pod, and the resource attributes a process in one of its containers gets:
//! `k8s.*` plus `service.name` / `service.namespace` / `service.version` /
//! `service.instance.id` by the rules in REFERENCE.md.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

/// The workloads that own a pod (through the ReplicaSet for a Deployment, the Job for a CronJob).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub replicaset: Option<String>,
    pub deployment: Option<String>,
    pub statefulset: Option<String>,
    pub daemonset: Option<String>,
    pub job: Option<String>,
    pub cronjob: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    /// Bare id (no `containerd://` prefix).
    pub id: String,
    pub name: String,
    pub image: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owners: Owners,
    pub containers: Vec<ContainerMeta>,
}

impl PodMeta {
    /// The model of an API Pod; the ReplicaSet's Deployment is filled in by the cache.
    pub fn from_api(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let mut owners = Owners::default();
        for o in meta.owner_references.iter().flatten() {
            if o.controller != Some(true) {
                continue;
            }
            let name = Some(o.name.clone());
            match o.kind.as_str() {
                "ReplicaSet" => owners.replicaset = name,
                "StatefulSet" => owners.statefulset = name,
                "DaemonSet" => owners.daemonset = name,
                "Job" => {
                    owners.cronjob = cronjob_of_job(&o.name);
                    owners.job = name;
                }
                _ => {}
            }
        }
        let mut containers = Vec::new();
        if let Some(status) = &pod.status {
            let images: BTreeMap<&str, &str> = pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .map(|c| (c.name.as_str(), c.image.as_deref().unwrap_or("")))
                .collect();
            for cs in status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
            {
                let Some(id) = cs.container_id.as_deref() else {
                    continue;
                };
                let id = id.rsplit("://").next().unwrap_or(id);
                containers.push(ContainerMeta {
                    id: id.to_ascii_lowercase(),
                    name: cs.name.clone(),
                    // The spec's image keeps the tag the user wrote (status may hold a digest).
                    image: images
                        .get(cs.name.as_str())
                        .map_or_else(|| cs.image.clone(), |i| (*i).to_owned()),
                });
            }
        }
        Some(PodMeta {
            uid: meta.uid.clone()?,
            name: meta.name.clone()?,
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            owners,
            containers,
        })
    }

    pub fn container(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers.iter().find(|c| c.id == id)
    }
}

/// A CronJob names its Jobs `<cronjob>-<scheduled minute>`: the same inference the
/// OpenTelemetry Collector's k8sattributes processor makes (no extra API call, no RBAC on jobs).
pub fn cronjob_of_job(job: &str) -> Option<String> {
    let (base, suffix) = job.rsplit_once('-')?;
    (!base.is_empty() && suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()))
        .then(|| base.to_owned())
}

/// The tag of an image reference (`repo:tag`, `host:5000/repo:tag@sha256:..`), if it has one.
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next()?;
    let last = without_digest.rsplit('/').next()?;
    let (_, tag) = last.rsplit_once(':')?;
    (!tag.is_empty()).then_some(tag)
}

/// What the process itself says about its resource (its environment), which always wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessOverrides {
    /// `OTEL_SERVICE_NAME`, or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.
    pub service_name: Option<String>,
    /// Every key the process's `OTEL_RESOURCE_ATTRIBUTES` sets.
    pub resource_keys: Vec<String>,
}

impl ProcessOverrides {
    /// From the NUL-separated contents of `/proc/<pid>/environ`.
    pub fn from_environ(environ: &[u8]) -> Self {
        let mut out = Self::default();
        let mut attr_service = None;
        for var in environ.split(|&c| c == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(v) = var.strip_prefix("OTEL_SERVICE_NAME=") {
                if !v.trim().is_empty() {
                    out.service_name = Some(v.trim().to_owned());
                }
            } else if let Some(v) = var.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
                for (k, val) in v.split(',').filter_map(|kv| kv.split_once('=')) {
                    let k = k.trim();
                    if k == "service.name" && !val.trim().is_empty() {
                        attr_service = Some(val.trim().to_owned());
                    }
                    if !k.is_empty() {
                        out.resource_keys.push(k.to_owned());
                    }
                }
            }
        }
        if out.service_name.is_none() {
            out.service_name = attr_service;
        }
        out
    }
}

const ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";

/// The resource attributes of a process running in `container` of `pod` (the container may be
/// unknown while the pod's status lags). Attributes the process sets itself are left out:
/// the caller keeps the process's own values.
pub fn attributes(
    pod: &PodMeta,
    container: Option<&ContainerMeta>,
    process: &ProcessOverrides,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() && !out.iter().any(|(key, _)| key == k) {
            out.push((k.to_owned(), v.to_owned()));
        }
    };
    let annotation = |attr: &str| {
        pod.annotations
            .get(&format!("{ANNOTATION_PREFIX}{attr}"))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let label = |l: &str| {
        pod.labels
            .get(l)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let o = &pod.owners;

    // service.name: the process's own setting is already on its resource (not repeated here).
    if process.service_name.is_none() {
        let name = annotation("service.name")
            .or_else(|| label("app.kubernetes.io/instance"))
            .or_else(|| label("app.kubernetes.io/name"))
            .or(o.deployment.as_deref())
            .or(o.replicaset.as_deref())
            .or(o.statefulset.as_deref())
            .or(o.daemonset.as_deref())
            .or(o.cronjob.as_deref())
            .or(o.job.as_deref())
            .or(Some(pod.name.as_str()).filter(|n| !n.is_empty()))
            .or(container.map(|c| c.name.as_str()));
        if let Some(name) = name {
            put("service.name", name);
        }
    }
    put(
        "service.namespace",
        annotation("service.namespace").unwrap_or(&pod.namespace),
    );
    if let Some(version) = annotation("service.version")
        .or_else(|| label("app.kubernetes.io/version"))
        .or_else(|| container.and_then(|c| image_tag(&c.image)))
    {
        put("service.version", version);
    }
    match (annotation("service.instance.id"), container) {
        (Some(id), _) => put("service.instance.id", id),
        (None, Some(c)) => put(
            "service.instance.id",
            &format!("{}.{}.{}", pod.namespace, pod.name, c.name),
        ),
        (None, None) => {}
    }
    put("k8s.namespace.name", &pod.namespace);
    put("k8s.pod.name", &pod.name);
    put("k8s.pod.uid", &pod.uid);
    put("k8s.node.name", &pod.node);
    if let Some(c) = container {
        put("k8s.container.name", &c.name);
        put("container.id", &c.id);
        let without_digest = c.image.split('@').next().unwrap_or(&c.image);
        match image_tag(&c.image) {
            Some(tag) => {
                let name = without_digest
                    .strip_suffix(tag)
                    .and_then(|n| n.strip_suffix(':'))
                    .unwrap_or(without_digest);
                put("container.image.name", name);
                put("container.image.tag", tag);
            }
            None => put("container.image.name", without_digest),
        }
    }
    for (k, v) in [
        ("k8s.replicaset.name", &o.replicaset),
        ("k8s.deployment.name", &o.deployment),
        ("k8s.statefulset.name", &o.statefulset),
        ("k8s.daemonset.name", &o.daemonset),
        ("k8s.job.name", &o.job),
        ("k8s.cronjob.name", &o.cronjob),
    ] {
        if let Some(v) = v {
            put(k, v);
        }
    }
    // Any other resource.opentelemetry.io/<attr> annotation sets <attr>.
    for (k, v) in &pod.annotations {
        if let Some(attr) = k.strip_prefix(ANNOTATION_PREFIX)
            && !attr.is_empty()
            && !(attr == "service.name" && process.service_name.is_some())
        {
            put(attr, v);
        }
    }
    out.retain(|(k, _)| !process.resource_keys.iter().any(|p| p == k));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodMeta {
        PodMeta {
            uid: "u-1".into(),
            name: "shop-7d9f-abcde".into(),
            namespace: "prod".into(),
            node: "node-1".into(),
            owners: Owners {
                replicaset: Some("shop-7d9f".into()),
                deployment: Some("shop".into()),
                ..Owners::default()
            },
            containers: vec![ContainerMeta {
                id: "c1".into(),
                name: "web".into(),
                image: "registry:5000/acme/shop:1.4.2".into(),
            }],
            ..PodMeta::default()
        }
    }

    fn get<'a>(attrs: &'a [(String, String)], k: &str) -> Option<&'a str> {
        attrs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn deployment_pod_gets_the_semconv_identity() {
        let p = pod();
        let a = attributes(&p, p.container("c1"), &ProcessOverrides::default());
        assert_eq!(get(&a, "service.name"), Some("shop"));
        assert_eq!(get(&a, "service.namespace"), Some("prod"));
        assert_eq!(get(&a, "service.version"), Some("1.4.2"));
        assert_eq!(
            get(&a, "service.instance.id"),
            Some("prod.shop-7d9f-abcde.web")
        );
        assert_eq!(get(&a, "k8s.pod.name"), Some("shop-7d9f-abcde"));
        assert_eq!(get(&a, "k8s.pod.uid"), Some("u-1"));
        assert_eq!(get(&a, "k8s.node.name"), Some("node-1"));
        assert_eq!(get(&a, "k8s.container.name"), Some("web"));
        assert_eq!(get(&a, "k8s.replicaset.name"), Some("shop-7d9f"));
        assert_eq!(get(&a, "k8s.deployment.name"), Some("shop"));
        assert_eq!(
            get(&a, "container.image.name"),
            Some("registry:5000/acme/shop")
        );
        assert_eq!(get(&a, "container.image.tag"), Some("1.4.2"));
    }

    #[test]
    fn service_name_order() {
        let mut p = pod();
        let none = ProcessOverrides::default();
        p.labels
            .insert("app.kubernetes.io/name".into(), "by-name".into());
        assert_eq!(
            get(&attributes(&p, None, &none), "service.name"),
            Some("by-name")
        );
        p.labels
            .insert("app.kubernetes.io/instance".into(), "by-instance".into());
        assert_eq!(
            get(&attributes(&p, None, &none), "service.name"),
            Some("by-instance")
        );
        p.annotations.insert(
            "resource.opentelemetry.io/service.name".into(),
            "by-annotation".into(),
        );
        assert_eq!(
            get(&attributes(&p, None, &none), "service.name"),
            Some("by-annotation")
        );
        // The process's own OTEL_SERVICE_NAME wins: nothing is set over it.
        let own = ProcessOverrides::from_environ(b"PATH=/bin\0OTEL_SERVICE_NAME=mine\0");
        assert_eq!(own.service_name.as_deref(), Some("mine"));
        assert_eq!(get(&attributes(&p, None, &own), "service.name"), None);
        // Owner chain, then pod name.
        let mut p = pod();
        p.owners = Owners::default();
        assert_eq!(
            get(&attributes(&p, None, &none), "service.name"),
            Some("shop-7d9f-abcde")
        );
        p.owners.statefulset = Some("db".into());
        assert_eq!(
            get(&attributes(&p, None, &none), "service.name"),
            Some("db")
        );
        p.owners = Owners {
            job: Some("report-29000000".into()),
            cronjob: cronjob_of_job("report-29000000"),
            ..Owners::default()
        };
        assert_eq!(
            get(&attributes(&p, None, &none), "service.name"),
            Some("report")
        );
    }

    #[test]
    fn annotations_and_labels_for_namespace_version_instance() {
        let mut p = pod();
        p.labels
            .insert("app.kubernetes.io/version".into(), "2.0".into());
        for (k, v) in [
            ("service.namespace", "shop-team"),
            ("service.instance.id", "i-1"),
            ("deployment.environment.name", "staging"),
        ] {
            p.annotations
                .insert(format!("resource.opentelemetry.io/{k}"), v.into());
        }
        let a = attributes(&p, p.container("c1"), &ProcessOverrides::default());
        assert_eq!(get(&a, "service.namespace"), Some("shop-team"));
        assert_eq!(get(&a, "service.version"), Some("2.0"));
        assert_eq!(get(&a, "service.instance.id"), Some("i-1"));
        assert_eq!(get(&a, "deployment.environment.name"), Some("staging"));
    }

    #[test]
    fn process_resource_attributes_win_key_by_key() {
        let p = pod();
        let own = ProcessOverrides::from_environ(
            b"OTEL_RESOURCE_ATTRIBUTES=service.name=api,service.namespace=mine\0",
        );
        assert_eq!(own.service_name.as_deref(), Some("api"));
        let a = attributes(&p, p.container("c1"), &own);
        assert_eq!(get(&a, "service.name"), None);
        assert_eq!(get(&a, "service.namespace"), None);
        assert_eq!(get(&a, "k8s.pod.name"), Some("shop-7d9f-abcde"));
    }

    #[test]
    fn image_tags_and_cronjobs() {
        assert_eq!(image_tag("nginx:1.25"), Some("1.25"));
        assert_eq!(image_tag("nginx"), None);
        assert_eq!(image_tag("host:5000/nginx"), None);
        assert_eq!(image_tag("host:5000/nginx:1@sha256:abc"), Some("1"));
        assert_eq!(image_tag("nginx@sha256:abc"), None);
        assert_eq!(cronjob_of_job("backup-28765432"), Some("backup".into()));
        assert_eq!(cronjob_of_job("migrate-db"), None);
    }

    #[test]
    fn api_pod_converts() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-7d9f-abcde", "namespace": "prod", "uid": "u-1",
                "labels": {"app": "shop"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-7d9f",
                    "uid": "rs-1", "controller": true}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "shop:1.4.2"}]},
            "status": {"containerStatuses": [{"name": "web", "image": "docker.io/library/shop:1.4.2",
                "imageID": "", "ready": true, "restartCount": 0,
                "containerID": "containerd://ABCDEF"}]}
        }))
        .unwrap();
        let m = PodMeta::from_api(&pod).unwrap();
        assert_eq!(m.owners.replicaset.as_deref(), Some("shop-7d9f"));
        assert_eq!(m.containers[0].id, "abcdef");
        assert_eq!(m.containers[0].image, "shop:1.4.2");
        assert_eq!(m.node, "node-1");
    }
}
