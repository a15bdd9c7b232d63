//! The pods of this node, kept current by a watch on the API server (`spec.nodeName=<node>`,
//! so a node agent never receives the whole cluster's pods), indexed by container id and pod
//! uid. The ReplicaSet of a pod is looked up once to find its Deployment. API errors are
//! retried with kube-runtime's backoff while the tracer goes on; identity fills in once the
//! API answers again.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

use crate::{
    cgroup::CgroupIdentity,
    pod::{ContainerMeta, PodMeta},
};

#[derive(Default)]
struct State {
    pods: HashMap<String, Arc<PodMeta>>,
    by_container: HashMap<String, String>,
}

/// Shared, cheap to clone; read by the capture thread, written by the watch task.
#[derive(Clone, Default)]
pub struct PodCache {
    state: Arc<RwLock<State>>,
}

impl PodCache {
    /// The pod (and container, once the pod's status lists it) of a cgroup identity.
    pub fn lookup(&self, id: &CgroupIdentity) -> Option<(Arc<PodMeta>, Option<ContainerMeta>)> {
        let state = self.state.read().ok()?;
        if let Some(pod) = state
            .by_container
            .get(&id.container_id)
            .and_then(|uid| state.pods.get(uid))
        {
            return Some((pod.clone(), pod.container(&id.container_id).cloned()));
        }
        // The container is not in the pod's status yet (or is the pause container): the pod
        // is known by its uid from the cgroup path, the container is not.
        let pod = state.pods.get(id.pod_uid.as_deref()?)?;
        Some((pod.clone(), None))
    }

    pub fn insert(&self, pod: PodMeta) {
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let uid = pod.uid.clone();
        state.by_container.retain(|_, u| u != &uid);
        for c in &pod.containers {
            state.by_container.insert(c.id.clone(), uid.clone());
        }
        state.pods.insert(uid, Arc::new(pod));
    }

    pub fn remove(&self, uid: &str) {
        if let Ok(mut state) = self.state.write() {
            state.pods.remove(uid);
            state.by_container.retain(|_, u| u != uid);
        }
    }

    /// Keeps only these pods (after a watch restart listed them all).
    pub fn retain(&self, uids: &HashSet<String>) {
        if let Ok(mut state) = self.state.write() {
            state.pods.retain(|uid, _| uids.contains(uid));
            state.by_container.retain(|_, uid| uids.contains(uid));
        }
    }

    pub fn len(&self) -> usize {
        self.state.read().map_or(0, |s| s.pods.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Deployment that controls a ReplicaSet, if any.
async fn deployment_of(
    client: &Client,
    namespace: &str,
    replicaset: &str,
) -> Result<Option<String>, kube::Error> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let rs = api.get_opt(replicaset).await?;
    Ok(rs.and_then(|rs| {
        rs.metadata
            .owner_references?
            .into_iter()
            .find(|o| o.controller == Some(true) && o.kind == "Deployment")
            .map(|o| o.name)
    }))
}

/// Keeps `cache` current with the pods on `node` until the task is dropped.
pub async fn watch_pods(client: Client, node: String, cache: PodCache) {
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    // (namespace, replicaset) -> deployment, for ReplicaSets looked up successfully.
    let mut owners: HashMap<(String, String), Option<String>> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    let mut failing = false;
    while let Some(item) = stream.next().await {
        let pod = match item {
            Ok(watcher::Event::Init) => {
                listing = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(uids) = listing.take() {
                    cache.retain(&uids);
                }
                if failing {
                    tracing::info!(
                        "Kubernetes API reachable again: {} pods on {node}",
                        cache.len()
                    );
                }
                failing = false;
                continue;
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid {
                    cache.remove(&uid);
                }
                continue;
            }
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "Kubernetes pod watch: {e}; tracing goes on without pod identity, retrying with backoff"
                    );
                    failing = true;
                }
                continue;
            }
        };
        let Some(mut meta) = PodMeta::from_api(&pod) else {
            continue;
        };
        if let Some(rs) = meta.owners.replicaset.clone() {
            let key = (meta.namespace.clone(), rs);
            let deployment = match owners.get(&key) {
                Some(d) => d.clone(),
                None => match deployment_of(&client, &key.0, &key.1).await {
                    Ok(d) => {
                        if owners.len() > 4096 {
                            owners.clear();
                        }
                        owners.insert(key, d.clone());
                        d
                    }
                    Err(e) => {
                        tracing::debug!("ReplicaSet {}/{}: {e}", key.0, key.1);
                        None
                    }
                },
            };
            meta.owners.deployment = deployment;
        }
        if let Some(l) = listing.as_mut() {
            l.insert(meta.uid.clone());
        }
        cache.insert(meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Runtime;

    fn pod(uid: &str, container: &str) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            containers: vec![ContainerMeta {
                id: container.into(),
                name: "web".into(),
                image: String::new(),
            }],
            ..PodMeta::default()
        }
    }

    fn id(container: &str, pod: Option<&str>) -> CgroupIdentity {
        CgroupIdentity {
            container_id: container.into(),
            pod_uid: pod.map(str::to_owned),
            runtime: Runtime::Containerd,
        }
    }

    #[test]
    fn lookup_by_container_then_pod_uid() {
        let c = PodCache::default();
        c.insert(pod("u1", "c1"));
        let (p, ct) = c.lookup(&id("c1", None)).unwrap();
        assert_eq!(p.uid, "u1");
        assert_eq!(ct.unwrap().name, "web");
        let (p, ct) = c.lookup(&id("pause", Some("u1"))).unwrap();
        assert_eq!(p.uid, "u1");
        assert!(ct.is_none());
        assert!(c.lookup(&id("other", None)).is_none());
        c.insert(pod("u2", "c2"));
        c.retain(&["u2".to_owned()].into_iter().collect());
        assert!(c.lookup(&id("c1", None)).is_none());
        c.remove("u2");
        assert!(c.is_empty());
    }
}
