#!/usr/bin/env bash
# k8s-rig.sh - build and run a real Kubernetes API server for the operator tests, offline:
# kube-apiserver (+ kube-controller-manager) v1.20.2 built from Debian bookworm's `kubernetes`
# source package with Debian's Go 1.19, backed by Debian's etcd 3.4, all on 127.0.0.1.
#
#   tests/k8s-rig.sh ensure  # build once: does nothing when the binaries are already there
#   tests/k8s-rig.sh build   # (re)build kube-apiserver + kube-controller-manager into $RIG_DIR/bin
#                            # (~8-10 min on 2 cores; needs root for apt-get)
#   tests/k8s-rig.sh start   # start etcd + kube-apiserver (+ KCM with RIG_WITH_KCM=1), write
#                            # $RIG_RUN_DIR/kubeconfig and print its path on stdout
#   tests/k8s-rig.sh stop    # stop them (by recorded PID, never by name)
#   tests/k8s-rig.sh status  # show whether they are running
#
# Only `build` needs the network, and only Debian's package archive through apt-get.
# Limits of 1.20: no autoscaling/v2 (v2beta2 only), no policy/v1 (v1beta1 only), CRD CEL
# rules (x-kubernetes-validations) are ignored, no /openapi/v3. Without RIG_WITH_KCM=1 no
# controllers run (like envtest): no garbage collection, Deployments get no ReplicaSets.
# With it, garbage collection, ServiceAccount tokens and Deployment -> ReplicaSet -> Pod work;
# Pods stay Pending (no scheduler, no kubelet), so readiness must be faked by patching status.
#
# Tunables (env): RIG_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-k8s-rig),
#   RIG_RUN_DIR (default $RIG_DIR/run; give each concurrent rig its own), RIG_APISERVER_PORT
#   (6443), RIG_ETCD_PORT (12379; peer port = +1), RIG_KCM_PORT (10257), RIG_KEEP_DATA=1 (reuse
#   etcd data across start/stop), RIG_BUILD_KCM=0 (build: skip kube-controller-manager),
#   RIG_WITH_KCM=1 (start: also run kube-controller-manager), RIG_KCM_CONTROLLERS (default *),
#   RIG_AUTHZ (default RBAC), RIG_RUNTIME_CONFIG, RIG_EXTRA_APISERVER_ARGS, RIG_EXTRA_KCM_ARGS
#   (appended verbatim), RIG_FAST_STOP=1 (stop: SIGKILL at once, for throwaway test rigs).
set -euo pipefail

RIG_DIR=${RIG_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-k8s-rig}
# Debian bookworm ships 1.20.2 under this (odd) version string; the orig tarball is upstream's
# `git archive` of v1.20.2 and already contains vendor/.
DEB_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
ORIG_TARBALL="kubernetes_1.20.5+really1.20.2.orig.tar.gz"
ORIG_SHA256="b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc"
SRC_DIR="$RIG_DIR/kubernetes-1.20.2"
BIN_DIR="$RIG_DIR/bin"
RUN_DIR=${RIG_RUN_DIR:-$RIG_DIR/run}
PKI_DIR="$RUN_DIR/pki"
LOG_DIR="$RUN_DIR/logs"
KUBECONFIG_OUT="$RUN_DIR/kubeconfig"
APISERVER_PORT=${RIG_APISERVER_PORT:-6443}
ETCD_PORT=${RIG_ETCD_PORT:-12379}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
KCM_PORT=${RIG_KCM_PORT:-10257}
GO_ROOT=/usr/lib/go-1.19

log() { echo "[k8s-rig] $*" >&2; }
die() { echo "[k8s-rig] ERROR: $*" >&2; exit 1; }

# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------
ensure_deb_src() {
  # `apt-get source` needs deb-src entries; mirror the machine's own binary entries.
  if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/ ; then
    local src=/etc/apt/sources.list.d/debian.sources
    [ -f "$src" ] || die "no $src to derive a deb-src entry from (add a deb-src line for bookworm yourself)"
    log "adding deb-src entries /etc/apt/sources.list.d/debian-src.sources (from $src)"
    sed 's/^Types: deb$/Types: deb-src/' "$src" > /etc/apt/sources.list.d/debian-src.sources
  fi
}

cmd_build() {
  local t0; t0=$(date +%s)
  mkdir -p "$RIG_DIR/src" "$BIN_DIR" "$RIG_DIR/cache/home"
  # Two concurrent builds would delete each other's source tree: serialize them.
  exec 9>"$RIG_DIR/.build.lock"
  flock 9
  ensure_deb_src
  log "apt-get update + install toolchain (golang-1.19-go), reflect2 1.0.2, etcd"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    golang-1.19-go golang-github-modern-go-reflect2-dev etcd-server etcd-client \
    make rsync openssl curl ca-certificates dpkg-dev >/dev/null
  log "downloading Debian source package kubernetes=$DEB_SRC_VERSION"
  ( cd "$RIG_DIR/src" && \
    { [ -f "$ORIG_TARBALL" ] || apt-get source --download-only "kubernetes=$DEB_SRC_VERSION"; } )
  echo "$ORIG_SHA256  $RIG_DIR/src/$ORIG_TARBALL" | sha256sum -c - >&2

  log "unpacking to $SRC_DIR"
  rm -rf "$SRC_DIR"
  tar xzf "$RIG_DIR/src/$ORIG_TARBALL" -C "$RIG_DIR"
  # Debian's quilt patches only touch kubectl printing; they are not needed here.

  # reflect2 v1.0.1 (vendored by 1.20) reads runtime internals that changed in Go 1.18 and
  # crashes at startup; Debian packages v1.0.2, which is API-compatible.
  log "patching vendor: modern-go/reflect2 v1.0.1 -> v1.0.2"
  local v="$SRC_DIR/vendor/github.com/modern-go/reflect2"
  cp "$v/LICENSE" "$RIG_DIR/cache/reflect2.LICENSE"
  rm -rf "$v"; mkdir -p "$v"
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
     /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$v/"
  cp "$RIG_DIR/cache/reflect2.LICENSE" "$v/LICENSE"
  sed -i 's#github.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.2#' "$SRC_DIR/go.mod"
  sed -i 's#^\# github.com/modern-go/reflect2 v1.0.1 => github.com/modern-go/reflect2 v1.0.1#\# github.com/modern-go/reflect2 v1.0.2 => github.com/modern-go/reflect2 v1.0.2#; s#^\# github.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.1#\# github.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.2#' "$SRC_DIR/vendor/modules.txt"

  # Gotcha: WHAT takes space-separated package paths in ONE make variable, not several targets.
  local what="cmd/kube-apiserver"
  [ "${RIG_BUILD_KCM:-1}" = 1 ] && what="$what cmd/kube-controller-manager"
  log "make WHAT='$what' (Go $("$GO_ROOT/bin/go" version | awk '{print $3}'), GOPATH mode, vendored deps, GOPROXY=off)"
  if ! (
    cd "$SRC_DIR"
    export PATH="$GO_ROOT/bin:$PATH"
    export GOCACHE="$RIG_DIR/cache/go-build" GOPROXY=off GOSUMDB=off GOFLAGS= CGO_ENABLED=0
    export HOME="$RIG_DIR/cache/home"
    # Version info (v1.20.2) comes from the git-archive export-subst stamp; no .git needed.
    make WHAT="$what"
  ) > "$RIG_DIR/build.log" 2>&1; then
    tail -40 "$RIG_DIR/build.log" >&2
    die "make failed, see $RIG_DIR/build.log"
  fi
  tail -5 "$RIG_DIR/build.log" >&2
  local b
  for b in kube-apiserver kube-controller-manager; do
    if [ -x "$SRC_DIR/_output/bin/$b" ]; then   # cp+mv: safe even while the old binary runs
      cp "$SRC_DIR/_output/bin/$b" "$BIN_DIR/.$b.new" && mv -f "$BIN_DIR/.$b.new" "$BIN_DIR/$b"
    fi
  done
  # KUBEBUILDER_ASSETS-style layout (envtest looks for etcd, kube-apiserver, kubectl here).
  ln -sfn "$(command -v etcd)" "$BIN_DIR/etcd"
  ln -sfn "$(command -v kubectl || echo /usr/bin/kubectl)" "$BIN_DIR/kubectl"
  "$BIN_DIR/kube-apiserver" --version >&2
  log "build done in $(( $(date +%s) - t0 ))s; binaries in $BIN_DIR"
}

# --------------------------------------------------------------------------
# start / stop
# --------------------------------------------------------------------------
pid_alive() { # pidfile expected-comm (comm is truncated to 15 chars by the kernel)
  local f="$1" comm="$2" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

gen_pki() {
  mkdir -p "$PKI_DIR"; chmod 700 "$PKI_DIR"
  [ -f "$PKI_DIR/ca.crt" ] && [ -f "$PKI_DIR/sa.key" ] && [ -f "$PKI_DIR/tokens.csv" ] \
    && [ -f "$PKI_DIR/front-proxy-client.crt" ] && return 0
  log "generating CA, serving cert, service-account keys, admin token in $PKI_DIR"
  (
    cd "$PKI_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=switchboard-rig-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 3650 -extfile san.ext 2>/dev/null
    # Client certificate for the admin (system:masters), an alternative to the token.
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
      -subj "/O=system:masters/CN=rig-admin" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > client.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out admin.crt -days 3650 -extfile client.ext 2>/dev/null
    # Front-proxy CA + client cert: the aggregation layer refuses to start without them.
    openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 3650 \
      -subj "/CN=switchboard-rig-front-proxy-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr \
      -subj "/CN=front-proxy-client" 2>/dev/null
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
      -CAcreateserial -out front-proxy-client.crt -days 3650 -extfile client.ext 2>/dev/null
    # Service-account signing key pair: the apiserver verifies, KCM's token controller signs.
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    echo "$(openssl rand -hex 24),rig-admin,rig-admin-uid,system:masters" > tokens.csv
    chmod 600 ./*.key tokens.csv
  )
}

admin_token() { cut -d, -f1 "$PKI_DIR/tokens.csv"; }

# GET a path on the apiserver as the admin; curl instead of kubectl so that starting the
# rig needs no kubectl at all.
api_get() {
  curl -fsS --max-time 5 --cacert "$PKI_DIR/ca.crt" -H "Authorization: Bearer $(admin_token)" \
    "https://127.0.0.1:$APISERVER_PORT$1"
}

write_kubeconfig() {
  cat > "$KUBECONFIG_OUT" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: rig
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < "$PKI_DIR/ca.crt")
users:
- name: rig-admin
  user:
    token: $(admin_token)
- name: rig-admin-cert
  user:
    client-certificate-data: $(base64 -w0 < "$PKI_DIR/admin.crt")
    client-key-data: $(base64 -w0 < "$PKI_DIR/admin.key")
contexts:
- name: rig
  context:
    cluster: rig
    user: rig-admin
- name: rig-cert
  context:
    cluster: rig
    user: rig-admin-cert
current-context: rig
KCFG
  chmod 600 "$KUBECONFIG_OUT"
}

cmd_start() {
  [ -x "$BIN_DIR/kube-apiserver" ] || die "no $BIN_DIR/kube-apiserver; run '$0 ensure' first"
  command -v etcd >/dev/null || die "etcd not installed (apt-get install etcd-server, or run '$0 ensure')"
  if pid_alive "$RUN_DIR/etcd.pid" etcd || pid_alive "$RUN_DIR/kube-apiserver.pid" kube-apiserver \
     || pid_alive "$RUN_DIR/kube-controller-manager.pid" kube-controller; then
    die "already running in $RUN_DIR (run '$0 stop' first)"
  fi
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  gen_pki
  if [ "${RIG_KEEP_DATA:-0}" != 1 ]; then rm -rf "$RUN_DIR/etcd-data"; fi
  mkdir -p "$RUN_DIR/etcd-data"; chmod 700 "$RUN_DIR/etcd-data"

  log "starting etcd $(etcd --version | awk 'NR==1{print $3}') on 127.0.0.1:$ETCD_PORT"
  setsid etcd --name rig \
    --data-dir "$RUN_DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "rig=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls "" \
    --quota-backend-bytes $((2*1024*1024*1024)) \
    --auto-compaction-mode periodic --auto-compaction-retention 5m \
    > "$LOG_DIR/etcd.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/etcd.pid"
  local i
  for i in $(seq 1 100); do
    if curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; then break; fi
    pid_alive "$RUN_DIR/etcd.pid" etcd || { tail -20 "$LOG_DIR/etcd.log" >&2; die "etcd exited"; }
    sleep 0.2
  done
  [ "$i" -lt 100 ] || { cmd_stop; die "etcd not healthy after 20s (see $LOG_DIR/etcd.log)"; }

  log "starting kube-apiserver $("$BIN_DIR/kube-apiserver" --version | awk '{print $2}') on https://127.0.0.1:$APISERVER_PORT"
  # The ServiceAccount admission plugin is off: with no token controller it would reject
  # every Pod; the Endpoint reconciler is off because nothing listens on the advertised IP.
  # shellcheck disable=SC2086
  setsid "$BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$APISERVER_PORT" --insecure-port 0 \
    --cert-dir "$PKI_DIR" \
    --tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
    --client-ca-file "$PKI_DIR/ca.crt" \
    --requestheader-client-ca-file "$PKI_DIR/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI_DIR/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI_DIR/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --token-auth-file "$PKI_DIR/tokens.csv" \
    --authorization-mode "${RIG_AUTHZ:-RBAC}" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI_DIR/sa.pub" \
    --service-account-signing-key-file "$PKI_DIR/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.0.0.0/24 \
    --allow-privileged=true \
    --disable-admission-plugins ServiceAccount \
    --endpoint-reconciler-type none \
    ${RIG_RUNTIME_CONFIG:+--runtime-config "$RIG_RUNTIME_CONFIG"} \
    --profiling=false \
    ${RIG_EXTRA_APISERVER_ARGS:-} \
    > "$LOG_DIR/kube-apiserver.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/kube-apiserver.pid"
  write_kubeconfig
  for i in $(seq 1 300); do
    if api_get /readyz >/dev/null 2>&1; then break; fi
    pid_alive "$RUN_DIR/kube-apiserver.pid" kube-apiserver || { tail -30 "$LOG_DIR/kube-apiserver.log" >&2; cmd_stop; die "kube-apiserver exited"; }
    sleep 0.2
  done
  [ "$i" -lt 300 ] || { tail -30 "$LOG_DIR/kube-apiserver.log" >&2; cmd_stop; die "kube-apiserver not ready after 60s"; }
  # /readyz can pass before the bootstrap controllers created the default namespace.
  for i in $(seq 1 100); do
    api_get /api/v1/namespaces/default >/dev/null 2>&1 && break
    sleep 0.2
  done
  if [ "${RIG_WITH_KCM:-0}" = 1 ]; then start_kcm; fi
  log "ready (etcd pid $(cat "$RUN_DIR/etcd.pid"), kube-apiserver pid $(cat "$RUN_DIR/kube-apiserver.pid"); logs in $LOG_DIR)"
  echo "$KUBECONFIG_OUT"
}

start_kcm() {
  [ -x "$BIN_DIR/kube-controller-manager" ] || { cmd_stop; die "RIG_WITH_KCM=1 but no $BIN_DIR/kube-controller-manager (re-run '$0 build' without RIG_BUILD_KCM=0)"; }
  mkdir -p "$PKI_DIR/kcm"
  log "starting kube-controller-manager on 127.0.0.1:$KCM_PORT (GC, namespace, deployment/replicaset, serviceaccount/token, ...)"
  # shellcheck disable=SC2086
  setsid "$BIN_DIR/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_OUT" \
    --authentication-kubeconfig "$KUBECONFIG_OUT" --authorization-kubeconfig "$KUBECONFIG_OUT" \
    --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --port 0 \
    --cert-dir "$PKI_DIR/kcm" \
    --service-account-private-key-file "$PKI_DIR/sa.key" \
    --root-ca-file "$PKI_DIR/ca.crt" \
    --cluster-signing-cert-file "$PKI_DIR/ca.crt" --cluster-signing-key-file "$PKI_DIR/ca.key" \
    --controllers "${RIG_KCM_CONTROLLERS:-*}" \
    ${RIG_EXTRA_KCM_ARGS:-} \
    > "$LOG_DIR/kube-controller-manager.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/kube-controller-manager.pid"
  local i
  # The default ServiceAccount appears once the serviceaccount controller runs: a cheap
  # "KCM is working" signal.
  for i in $(seq 1 150); do
    api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1 && break
    pid_alive "$RUN_DIR/kube-controller-manager.pid" kube-controller || { tail -30 "$LOG_DIR/kube-controller-manager.log" >&2; cmd_stop; die "kube-controller-manager exited"; }
    sleep 0.2
  done
  [ "$i" -lt 150 ] || log "WARNING: default ServiceAccount not created after 30s (see $LOG_DIR/kube-controller-manager.log)"
}

# Alive = exists and is not a zombie (a container's PID 1 may reap orphans only lazily).
proc_running() {
  [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

stop_one() { # name [comm]
  local f="$RUN_DIR/$1.pid" pid i
  if pid_alive "$f" "${2:-$1}"; then
    pid=$(cat "$f")
    log "stopping $1 (pid $pid)"
    # RIG_FAST_STOP=1: throwaway rigs (tests) skip the graceful shutdowns (~6 s in total).
    if [ "${RIG_FAST_STOP:-0}" = 1 ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do proc_running "$pid" || break; sleep 0.1; done
    if proc_running "$pid"; then log "$1 still alive, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

cmd_stop() {
  stop_one kube-controller-manager kube-controller
  stop_one kube-apiserver
  stop_one etcd
}

cmd_status() {
  local n
  for n in etcd kube-apiserver kube-controller-manager; do
    if pid_alive "$RUN_DIR/$n.pid" "$(echo "$n" | cut -c1-15)"; then
      echo "$n: running (pid $(cat "$RUN_DIR/$n.pid"))"
    else
      echo "$n: stopped"
    fi
  done
}

cmd_ensure() {
  mkdir -p "$RIG_DIR"
  # Wait for a build already in progress (its lock), then check what it produced.
  exec 9>"$RIG_DIR/.build.lock"
  flock 9
  if [ -x "$BIN_DIR/kube-apiserver" ] && { [ "${RIG_BUILD_KCM:-1}" = 0 ] || [ -x "$BIN_DIR/kube-controller-manager" ]; } \
     && command -v etcd >/dev/null; then
    log "already built: $BIN_DIR"
  else
    cmd_build
  fi
}

case "${1:-}" in
  ensure) cmd_ensure ;;
  build)  cmd_build ;;
  start)  cmd_start ;;
  stop)   cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {ensure|build|start|stop|status}" >&2; exit 2 ;;
esac
