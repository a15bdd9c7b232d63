//! The Kubernetes install (deploy/kubernetes): every variant renders with `kubectl kustomize`
//! and validates with `kubernetes-validate --strict`, the security invariants of each
//! variant hold, the PrometheusRule passes `promtool check rules` and its unit tests (fast
//! burn fires on a failing series, quiet on a healthy one), and every rule and dashboard query
//! names only metrics sonde exports. The checks are in deploy/kubernetes/tests/check.py (YAML
//! is Python's home ground); this file puts them in the suite.
use std::{path::PathBuf, process::Command};

fn check(what: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf();
    let out = Command::new("python3")
        .arg(root.join("deploy/kubernetes/tests/check.py"))
        .arg(what)
        .output()
        .expect("python3 runs (installed by xtask/bootstrap.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check.py {what} failed:\n{text}");
}

#[test]
fn every_variant_renders() {
    check("render");
}

#[test]
fn every_rendered_object_validates_strictly() {
    check("validate");
}

#[test]
fn security_invariants_of_each_variant() {
    check("security");
}

#[test]
fn prometheus_rules_check_and_burn_rate_alerts_fire_as_specified() {
    check("rules");
}

#[test]
fn queries_use_only_exported_metric_names() {
    check("metrics");
}
