#!/usr/bin/env bash
# Installs every prerequisite sonde needs on a fresh Debian 12 machine of this kind.
# Idempotent: each step checks whether its result is already present before acting.
# Called by `cargo xtask bootstrap` (and so by `cargo xtask run` / `cargo xtask test`).
set -euo pipefail

log() { printf '[bootstrap] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev   # bpf-linker against rustc's LLVM
  postgresql postgresql-contrib                         # real PostgreSQL + pgbench for tests/bench
  nginx-light wrk                                       # real HTTP server and load generator
  curl iproute2 procps
  prometheus                                            # promtool for exposition checks
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services; the tests run their own instances.
  for svc in nginx postgresql prometheus; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

# The kernel programs need a nightly whose LLVM matches bpf-linker's (22). Pinned by date so a
# newer nightly (LLVM 23) can never break the build, in one place: ebpf/probes/rust-toolchain.toml.
EBPF_TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../ebpf/probes/rust-toolchain.toml")
if [ -z "$EBPF_TOOLCHAIN" ]; then
  log "no channel in ebpf/probes/rust-toolchain.toml"
  exit 1
fi
if ! rustup component list --toolchain "$EBPF_TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup: $EBPF_TOOLCHAIN with rust-src"
  rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal --component rust-src
fi

if ! command -v bpf-linker >/dev/null 2>&1; then
  log "cargo: building bpf-linker against LLVM 22 (about 4 minutes)"
  PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker --no-default-features --features llvm-22
fi

# `cargo xtask fuzz` (and the short fuzz runs of `cargo xtask test`) drive libFuzzer through it.
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

PY_PACKAGES=(django gunicorn psycopg2-binary "psycopg[binary]" opentelemetry-sdk
  opentelemetry-exporter-otlp opentelemetry-instrumentation-django
  opentelemetry-instrumentation-psycopg2 opentelemetry-proto grpcio requests uvicorn
  pyyaml kubernetes-validate)                            # deploy/kubernetes checks
if ! python3 - <<'PY' 2>/dev/null
import django, gunicorn, psycopg2, psycopg, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc
import opentelemetry.instrumentation.django, opentelemetry.instrumentation.psycopg2, opentelemetry.proto, grpc, requests
import uvicorn.workers
import yaml, kubernetes_validate
PY
then
  log "pip: ${PY_PACKAGES[*]}"
  python3 -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
# kubectl (kustomize renders the manifests offline) ships with this machine image; Debian's own
# archive has no kubectl package, so a machine without it cannot pass the deploy tests.
if ! command -v kubectl >/dev/null 2>&1; then
  log "error: kubectl is missing (needed by tests/tests/deploy.rs to render deploy/kubernetes)"
  exit 1
fi
log "ok"
