//! Kubernetes for sonde: which pod a traced process runs in (cgroup -> container -> pod, from
//! a watch of this node's pods), the resource attributes that follow (`k8s.*`, `service.*`),
//! which pods to trace, and the cluster's events as OTLP log records.
//!
//! Pure parts (cgroup parsing, the attribute rules, the selection, the event mapping) are
//! tested with plain values; the API client is kube-rs (rustls with ring), found the standard
//! way: in-cluster service account, else `KUBECONFIG`. Off Kubernetes nothing starts and
//! nothing is logged.
pub mod cache;
pub mod cgroup;
pub mod enrich;
pub mod events;
pub mod pod;
pub mod selection;

pub use cache::PodCache;
pub use enrich::Enricher;
pub use selection::{LabelRule, PodSelection};

/// The command-line flags (flattened into `sonde run`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct K8sArgs {
    /// Export the cluster's Kubernetes events as OTLP log records instead of tracing this
    /// node. Run it in one place only (the manifests' one-replica Deployment).
    #[arg(long)]
    pub k8s_events: bool,
    /// Keep only the telemetry of pods in this namespace (repeatable).
    #[arg(long = "k8s-include-namespace", value_name = "NAMESPACE")]
    pub include_namespaces: Vec<String>,
    /// Drop the telemetry of pods in this namespace (repeatable).
    #[arg(long = "k8s-exclude-namespace", value_name = "NAMESPACE")]
    pub exclude_namespaces: Vec<String>,
    /// Keep only the telemetry of pods with this label (`key` or `key=value`, repeatable).
    #[arg(long = "k8s-include-label", value_name = "KEY[=VALUE]")]
    pub include_labels: Vec<String>,
    /// Drop the telemetry of pods with this label (`key` or `key=value`, repeatable).
    #[arg(long = "k8s-exclude-label", value_name = "KEY[=VALUE]")]
    pub exclude_labels: Vec<String>,
    /// This node's name (the DaemonSet sets K8S_NODE_NAME from the downward API): only its
    /// pods are watched.
    #[arg(long, env = "K8S_NODE_NAME", value_name = "NODE")]
    pub k8s_node_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("--{flag} {value:?}: expected KEY or KEY=VALUE")]
    Label { flag: &'static str, value: String },
}

/// The resolved Kubernetes settings.
#[derive(Clone, Debug, Default)]
pub struct K8sConfig {
    pub events: bool,
    pub node: Option<String>,
    pub selection: PodSelection,
    /// The environment points at an API server (in-cluster, or KUBECONFIG).
    pub api: bool,
}

impl K8sArgs {
    pub fn resolve(self, env: impl Fn(&str) -> Option<String>) -> Result<K8sConfig, K8sError> {
        let labels = |flag: &'static str, v: Vec<String>| -> Result<Vec<LabelRule>, K8sError> {
            v.into_iter()
                .map(|s| LabelRule::parse(&s).ok_or(K8sError::Label { flag, value: s }))
                .collect()
        };
        Ok(K8sConfig {
            events: self.k8s_events,
            node: self.k8s_node_name.filter(|n| !n.trim().is_empty()),
            selection: PodSelection {
                include_namespaces: self.include_namespaces,
                exclude_namespaces: self.exclude_namespaces,
                include_labels: labels("k8s-include-label", self.include_labels)?,
                exclude_labels: labels("k8s-exclude-label", self.exclude_labels)?,
            },
            api: env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty())
                || env("KUBECONFIG").is_some_and(|k| !k.is_empty()),
        })
    }
}

/// A client for the API server, or `None` off Kubernetes (silently) or when the
/// configuration cannot be loaded (one warning).
pub async fn client(config: &K8sConfig) -> Option<kube::Client> {
    if !config.api {
        return None;
    }
    let loaded = match kube::Config::infer().await {
        Ok(c) => kube::Client::try_from(c).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    loaded
        .map_err(|e| tracing::warn!("Kubernetes API configuration: {e}; no pod identity"))
        .ok()
}

/// Starts the pod watch of this node (when on Kubernetes) and returns the enricher the capture
/// loop uses. Must be called within a tokio runtime.
pub async fn start_enricher(config: &K8sConfig) -> Enricher {
    let cache = PodCache::default();
    match (client(config).await, &config.node) {
        (Some(client), Some(node)) => {
            tokio::spawn(cache::watch_pods(client, node.clone(), cache.clone()));
        }
        (Some(_), None) => {
            tracing::warn!(
                "K8S_NODE_NAME is not set: no pod identity (set it from the downward API)"
            );
        }
        (None, _) => {}
    }
    Enricher::new(cache, config.selection.clone())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        k8s: K8sArgs,
    }

    #[test]
    fn flags_resolve() {
        let cli = Cli::try_parse_from([
            "x",
            "--k8s-include-namespace",
            "prod",
            "--k8s-exclude-label",
            "sonde.io/trace=false",
            "--k8s-node-name",
            "node-1",
        ])
        .unwrap();
        let c = cli.k8s.resolve(|_| None).unwrap();
        assert_eq!(c.node.as_deref(), Some("node-1"));
        assert!(!c.api);
        assert_eq!(c.selection.include_namespaces, vec!["prod".to_owned()]);
        let cli = Cli::try_parse_from(["x", "--k8s-include-label", "=bad"]).unwrap();
        assert!(cli.k8s.resolve(|_| None).is_err());
        let c = K8sArgs::default()
            .resolve(|k| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.0.0.1".into()))
            .unwrap();
        assert!(c.api);
    }
}
