#!/usr/bin/env python3
"""Checks of deploy/kubernetes, run by `cargo xtask test` (tests/tests/deploy.rs calls each).

  check.py render     every variant renders with `kubectl kustomize`
  check.py validate   every rendered object validates with `kubernetes-validate --strict`
                      (Prometheus Operator kinds excepted: `rules` checks those)
  check.py security   the security invariants of each variant
  check.py rules      `promtool check rules` and `promtool test rules` on the PrometheusRule
  check.py metrics    every rule and dashboard query names only metrics and labels in
                      metric-names.txt; with --live URL, only metrics in a live /metrics
                      scrape and labels on those metrics in it (Prometheus' instance/job
                      and each --cluster-only-label NAME excepted)
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = ["default", "least-privilege", "monitoring", "jaeger"]
OPERATOR_GROUP = "monitoring.coreos.com/"
LEAST_PRIVILEGE_CAPS = {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "CHECKPOINT_RESTORE"}


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def render(variant):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / variant)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"kubectl kustomize {variant}: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name):
    found = find(docs, kind, name)
    if len(found) != 1:
        fail(f"expected one {kind}/{name}, found {len(found)}")
    return found[0]


def cmd_render():
    for v in VARIANTS:
        docs = render(v)
        print(f"{v}: {len(docs)} objects")


def cmd_validate():
    for v in VARIANTS:
        docs = [d for d in render(v) if not d["apiVersion"].startswith(OPERATOR_GROUP)]
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for i, d in enumerate(docs):
                f = Path(tmp) / f"{i:02}-{d['kind']}-{d['metadata']['name']}.yaml"
                f.write_text(yaml.safe_dump(d))
                files.append(str(f))
            out = subprocess.run(["kubernetes-validate", "--strict", "--quiet", *files],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                fail(f"kubernetes-validate {v}:\n{out.stdout}{out.stderr}")
        print(f"{v}: {len(docs)} objects valid")


def container(pod_spec, name="sonde"):
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def check_common(v, docs):
    ns = one(docs, "Namespace", "sonde")
    if ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") != "privileged":
        fail(f"{v}: namespace lacks pod-security enforce=privileged")
    ds = one(docs, "DaemonSet", "sonde")
    pod = ds["spec"]["template"]["spec"]
    c = container(pod)
    sc = c["securityContext"]
    checks = {
        "hostPID": pod.get("hostPID") is True,
        "tolerates every taint": {"operator": "Exists"} in pod.get("tolerations", []),
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "memory limit": "memory" in c["resources"].get("limits", {}),
        "memory request": "memory" in c["resources"].get("requests", {}),
        "grace period >= 30 s": pod.get("terminationGracePeriodSeconds", 30) >= 30,
        "liveness /healthz": c["livenessProbe"]["httpGet"]["path"] == "/healthz",
        "readiness /readyz": c["readinessProbe"]["httpGet"]["path"] == "/readyz",
        "no hostNetwork": not pod.get("hostNetwork", False),
    }
    env = {e["name"]: e for e in c.get("env", [])}
    checks["K8S_NODE_NAME from spec.nodeName"] = (
        env.get("K8S_NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        == "spec.nodeName")
    checks["memory budget follows the limit"] = (
        env.get("SONDE_MEMORY_LIMIT_BYTES", {}).get("valueFrom", {})
        .get("resourceFieldRef", {}).get("resource") == "limits.memory")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ["/sys/kernel/tracing", "/sys/fs/cgroup", "/sys/kernel/btf"]:
        checks[f"{path} mounted read-only"] = mounts.get(path, {}).get("readOnly") is True
    for m in c["volumeMounts"]:
        vol = next(x for x in pod["volumes"] if x["name"] == m["name"])
        if "hostPath" in vol and not m.get("readOnly"):
            checks[f"host mount {m['mountPath']} read-only"] = False
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        fail(f"{v}: DaemonSet violates: {', '.join(bad)}")

    # RBAC: read-only verbs, only pods, replicasets and events.
    role = one(docs, "ClusterRole", "sonde")
    for rule in role["rules"]:
        if set(rule["verbs"]) - {"get", "list", "watch"}:
            fail(f"{v}: ClusterRole grants {rule['verbs']}")
        if set(rule["resources"]) - {"pods", "replicasets", "events"}:
            fail(f"{v}: ClusterRole reads {rule['resources']}")
    # The events watcher runs once per cluster, unprivileged.
    ev = one(docs, "Deployment", "sonde-k8s-events")
    if ev["spec"]["replicas"] != 1 or ev["spec"]["strategy"]["type"] != "Recreate":
        fail(f"{v}: the events Deployment must be one replica, Recreate")
    ec = container(ev["spec"]["template"]["spec"])
    if "--k8s-events" not in ec["args"]:
        fail(f"{v}: the events Deployment does not pass --k8s-events")
    if ec["securityContext"].get("privileged") or ec["securityContext"]["capabilities"]["drop"] != ["ALL"]:
        fail(f"{v}: the events Deployment must be unprivileged with every capability dropped")
    if "--k8s-events" in c["args"]:
        fail(f"{v}: node agents must not watch cluster events (exported N times)")
    svc = one(docs, "Service", "sonde")
    ports = {p["name"] for p in svc["spec"]["ports"]}
    if ports != {"otlp-grpc", "otlp-http", "metrics"}:
        fail(f"{v}: Service ports {ports}")
    return c


def cmd_security():
    for v in VARIANTS:
        docs = render(v)
        c = check_common(v, docs)
        sc = c["securityContext"]
        if v == "least-privilege":
            caps = sc.get("capabilities", {})
            if sc.get("privileged") is not False:
                fail(f"{v}: privileged must be false")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{v}: allowPrivilegeEscalation must be false")
            if caps.get("drop") != ["ALL"]:
                fail(f"{v}: must drop ALL capabilities, drops {caps.get('drop')}")
            if set(caps.get("add", [])) != LEAST_PRIVILEGE_CAPS:
                fail(f"{v}: adds {caps.get('add')}, expected exactly {sorted(LEAST_PRIVILEGE_CAPS)}")
        else:
            if sc.get("privileged") is not True:
                fail(f"{v}: the install is a privileged DaemonSet")
        if v == "jaeger":
            cm = next(d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("sonde-env"))
            if "jaeger" not in cm["data"].get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""):
                fail(f"{v}: sonde does not export to Jaeger")
            jc = container(one(docs, "Deployment", "jaeger")["spec"]["template"]["spec"], "jaeger")
            if {"name": "COLLECTOR_OTLP_ENABLED", "value": "true"} not in jc["env"]:
                fail(f"{v}: Jaeger's OTLP receiver is not enabled")
        if v == "monitoring":
            one(docs, "ServiceMonitor", "sonde")
            one(docs, "PrometheusRule", "sonde-slo")
            one(docs, "ConfigMap", "sonde-grafana-dashboard")
        print(f"{v}: security invariants hold")


def rule_groups():
    docs = render("monitoring")
    return one(docs, "PrometheusRule", "sonde-slo")["spec"]["groups"]


def cmd_rules():
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
        (Path(tmp) / "slo_test.yaml").write_text((HERE / "slo_test.yaml").read_text())
        for args in (["check", "rules", "rules.yaml"], ["test", "rules", "slo_test.yaml"]):
            out = subprocess.run(["promtool", *args], cwd=tmp, capture_output=True, text=True)
            print(out.stdout + out.stderr)
            if out.returncode != 0:
                fail(f"promtool {' '.join(args)}")


PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile",
    "rate", "irate", "increase", "histogram_quantile", "vector", "scalar", "abs", "clamp_min",
    "clamp_max", "label_values", "delta", "deriv", "avg_over_time", "max_over_time",
    "sum_over_time", "time", "absent", "inf", "nan",
}


def names_in(expr):
    """(metric names, label names) a PromQL expression (or Grafana query) uses."""
    expr = re.sub(r"\$\{?\w+\}?", "", expr)            # Grafana variables and macros
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)     # string literals
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", expr):       # label matchers
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    expr = re.sub(r"\{[^}]*\}", "", expr)
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in body.split(",") if x.strip()}
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    m = re.match(r"\s*label_values\((.*),\s*(\w+)\)\s*$", expr)
    if m:
        labels.add(m.group(2))
        expr = m.group(1)
    expr = re.sub(r"\[[^\]]*\]", "", expr)              # range selectors
    metrics = set()
    for tok in re.findall(r"[a-zA-Z_:][\w:]*", expr):
        if tok in PROMQL_WORDS or ":" in tok:            # functions; recording rules
            continue
        metrics.add(tok)
    return metrics, labels


def queries():
    out = []
    for g in rule_groups():
        for r in g["rules"]:
            out.append((r.get("record") or r.get("alert"), r["expr"]))
    dash = json.loads((ROOT / "monitoring/dashboards/sonde.json").read_text())
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["query"]["query"]))
    return out


# Labels Prometheus itself attaches to every scraped series (not in sonde's exposition).
SCRAPE_LABELS = {"instance", "job"}


def scrape(url):
    """{metric name: set of label names} of one live /metrics scrape (classic text format)."""
    import urllib.request
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{(.*)\})?", line)
        if not m:
            continue
        out.setdefault(m.group(1), set()).update(re.findall(r'(\w+)="', m.group(3) or ""))
    return out


def static_names():
    metrics, labels = set(), set()
    for line in (ROOT / "metric-names.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("metric", "label"):
            (metrics if parts[0] == "metric" else labels).add(parts[1])
    return metrics, labels


def cmd_metrics(live=None, cluster_only=()):
    """Static mode: names in metric-names.txt. Live mode: every metric a query names is in the
    scrape, and every label it names is on one of that query's metrics in the scrape, except
    the labels Prometheus adds (SCRAPE_LABELS) and `cluster_only`: labels that exist only for
    processes in Kubernetes pods, which the caller lists explicitly."""
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    problems = []
    qs = queries()
    if live:
        series = scrape(live)
        metrics = set(series)
        allowed_absent = SCRAPE_LABELS | set(cluster_only)
    else:
        metrics, labels = static_names()
    for where, expr in qs:
        m, l = names_in(expr)
        for x in sorted(m - metrics):
            problems.append(f"{where}: metric {x} is not exported")
        if live:
            on = set().union(*(series.get(x, set()) for x in m)) if m else set()
            missing = l - on - allowed_absent
        else:
            missing = l - labels
        for x in sorted(missing):
            problems.append(f"{where}: label {x} is not exported on {', '.join(sorted(m))}")
        for x in re.findall(r"\b[a-z_]+:[\w:]+", expr):
            if x not in recorded:
                problems.append(f"{where}: recording rule {x} is not defined")
    if problems:
        fail("\n".join(problems))
    print(f"{len(qs)} queries use only exported names" + (f" (live: {live})" if live else ""))


def self_test():
    m, l = names_in('sum by (a, b) (rate(x_total{c="1", d=~"5.."}[5m])) / on() group_left() y:z')
    assert m == {"x_total"}, m
    assert l == {"a", "b", "c", "d"}, l
    m, l = names_in('label_values(foo_count{service_namespace=~"$namespace"}, service_name)')
    assert m == {"foo_count"} and l == {"service_namespace", "service_name"}, (m, l)


if __name__ == "__main__":
    self_test()
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "render":
        cmd_render()
    elif what == "validate":
        cmd_validate()
    elif what == "security":
        cmd_security()
    elif what == "rules":
        cmd_rules()
    elif what == "metrics":
        # metrics [--live URL [--cluster-only-label NAME]...]
        args, live, cluster_only = sys.argv[2:], None, []
        while args:
            flag, value, args = args[0], args[1] if len(args) > 1 else fail(__doc__), args[2:]
            if flag == "--live":
                live = value
            elif flag == "--cluster-only-label":
                cluster_only.append(value)
            else:
                fail(__doc__)
        cmd_metrics(live, cluster_only)
    else:
        fail(__doc__)
