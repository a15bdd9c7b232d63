//! Which pods' telemetry sonde keeps: include and exclude by namespace and by pod label.
//! Exclusion wins over inclusion; with no include rule every pod is included.

use crate::pod::PodMeta;

/// `key` (the label is present) or `key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRule {
    pub key: String,
    pub value: Option<String>,
}

impl LabelRule {
    pub fn parse(s: &str) -> Option<Self> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (s.trim(), None),
        };
        (!key.is_empty()).then(|| LabelRule {
            key: key.to_owned(),
            value,
        })
    }

    fn matches(&self, pod: &PodMeta) -> bool {
        match (pod.labels.get(&self.key), &self.value) {
            (Some(_), None) => true,
            (Some(v), Some(want)) => v == want,
            (None, _) => false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSelection {
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub include_labels: Vec<LabelRule>,
    pub exclude_labels: Vec<LabelRule>,
}

impl PodSelection {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Whether any include rule is set (then processes outside every pod are not selected).
    pub fn has_includes(&self) -> bool {
        !self.include_namespaces.is_empty() || !self.include_labels.is_empty()
    }

    pub fn selects(&self, pod: &PodMeta) -> bool {
        if self.exclude_namespaces.iter().any(|n| n == &pod.namespace)
            || self.exclude_labels.iter().any(|r| r.matches(pod))
        {
            return false;
        }
        (self.include_namespaces.is_empty()
            || self.include_namespaces.iter().any(|n| n == &pod.namespace))
            && (self.include_labels.is_empty()
                || self.include_labels.iter().any(|r| r.matches(pod)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..PodMeta::default()
        }
    }

    #[test]
    fn include_and_exclude() {
        let all = PodSelection::default();
        assert!(all.selects(&pod("kube-system", &[])));
        let s = PodSelection {
            include_namespaces: vec!["prod".into()],
            exclude_labels: vec![LabelRule::parse("sonde.io/trace=false").unwrap()],
            ..PodSelection::default()
        };
        assert!(s.selects(&pod("prod", &[("app", "shop")])));
        assert!(!s.selects(&pod("dev", &[("app", "shop")])));
        assert!(!s.selects(&pod("prod", &[("sonde.io/trace", "false")])));
        assert!(s.selects(&pod("prod", &[("sonde.io/trace", "true")])));
        let s = PodSelection {
            include_labels: vec![LabelRule::parse("tier").unwrap()],
            exclude_namespaces: vec!["kube-system".into()],
            ..PodSelection::default()
        };
        assert!(s.selects(&pod("prod", &[("tier", "web")])));
        assert!(!s.selects(&pod("prod", &[("app", "x")])));
        assert!(!s.selects(&pod("kube-system", &[("tier", "web")])));
        assert_eq!(LabelRule::parse("=x"), None);
    }
}
