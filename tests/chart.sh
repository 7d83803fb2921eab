#!/usr/bin/env bash
# Checks the Helm chart charts/switchboard-operator and the deployment artifacts (no cluster
# needed: the API-server part starts its own private kube-apiserver):
#   - the chart's CRD copy (files/crd.yaml) is byte-identical to crds/ (the generated file);
#   - `helm lint --strict` with default and namespace-scoped values;
#   - `helm template` output (default, rbac.scope=namespace, optional parts on/off) is a list
#     of well-formed Kubernetes objects, and the properties the chart promises hold: restricted
#     security context, probes, namespace scoping, exact least-privilege RBAC, the CRD kept on
#     uninstall and equal to crds/;
#   - values.schema.json and the template guards reject bad values;
#   - NOTES.txt tells the user how to wait for a SignalingCluster;
#   - every value is documented in docs/deployment.md; the Dockerfiles build real packages'
#     binaries as non-root; the built switchboard-operator binary accepts the rendered args.
#   - against a private kube-apiserver (tests/k8s-rig.sh, must be built): the renders are
#     accepted, and `kubectl auth can-i --as=<operator ServiceAccount>` matches the promised
#     access in both scopes (SWITCHBOARD_CHART_NO_APISERVER=1 leaves this part out, loudly).
# Needs: bash, npm (tests/tools.sh fetches helm), python3 with PyYAML (Debian: python3-yaml),
# the built rig (tests/k8s-rig.sh ensure) and the built operator binary (cargo build -p
# switchboard-operator; found in ${CARGO_TARGET_DIR:-target}/{debug,release} or $SWITCHBOARD_OPERATOR_BIN).
# Prints one line per check and `N passed, M failed`; exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

CHART=charts/switchboard-operator
CRD_SRC=crds/switchboard.dev_signalingclusters.yaml
CRD_COPY=$CHART/files/crd.yaml
RELEASE=sb
NS=switchboard-system

die() { echo "tests/chart.sh: error: $*" >&2; exit 1; }

HELM="$(bash tests/tools.sh helm)" || die "could not install helm (tests/tools.sh failed, see above)"
python3 -c 'import yaml' 2>/dev/null \
  || die "python3 with PyYAML is needed to check rendered manifests (Debian: apt-get install -y python3-yaml)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# helm must never talk to a real cluster from here (install --dry-run=client reads kubeconfig).
export KUBECONFIG="$WORK/no-kubeconfig"
export HELM_CACHE_HOME="$WORK/helm-cache" HELM_CONFIG_HOME="$WORK/helm-config" HELM_DATA_HOME="$WORK/helm-data"

passed=0
failed=0
# check NAME CMD...: runs CMD, records pass/fail, shows CMD's output only on failure.
check() {
  local name="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    printf '%s\n' "$out" | tail -n 40 | sed 's/^/     /'
  fi
}

# ---------------------------------------------------------------------------------------
# The rendered-manifest checker. Args: MANIFEST_FILE; options in env (SCOPE, EXPECT_CRD,
# EXPECT_SERVICE_MONITOR, EXPECT_LEADER, EXPECT_REPLICAS). Exits 1 with every problem listed.
cat >"$WORK/check_render.py" <<'PY'
import os, sys, yaml

path = sys.argv[1]
scope = os.environ["SCOPE"]
ns = os.environ["NS"]
release = os.environ["RELEASE"]
crd_src = os.environ["CRD_SRC"]
expect_crd = os.environ.get("EXPECT_CRD", "1") == "1"
expect_sm = os.environ.get("EXPECT_SERVICE_MONITOR", "0") == "1"
expect_leader = os.environ.get("EXPECT_LEADER", "1") == "1"
expect_replicas = int(os.environ.get("EXPECT_REPLICAS", "1"))
fullname = f"{release}-switchboard-operator"
errors = []

def err(msg):
    errors.append(msg)

with open(path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d is not None]

CLUSTER_KINDS = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
objs = {}
for i, d in enumerate(docs):
    if not isinstance(d, dict):
        err(f"document {i} is not a mapping: {d!r:.80}")
        continue
    meta = d.get("metadata") or {}
    name = meta.get("name")
    if not d.get("apiVersion") or not d.get("kind") or not isinstance(name, str) or not name:
        err(f"document {i} lacks apiVersion/kind/metadata.name: {d.get('kind')} {name}")
        continue
    kind = d["kind"]
    if kind in CLUSTER_KINDS:
        if "namespace" in meta:
            err(f"cluster-scoped {kind}/{name} has metadata.namespace")
    elif meta.get("namespace") != ns:
        err(f"{kind}/{name} is not in the release namespace {ns} (got {meta.get('namespace')!r})")
    if len(name) > 63 and kind not in CLUSTER_KINDS | {"CustomResourceDefinition"}:
        err(f"{kind}/{name}: name longer than 63 characters")
    key = (kind, meta.get("namespace"), name)
    if key in objs:
        err(f"duplicate object {key}")
    objs[key] = d

def get(kind, name, namespaced=True):
    return objs.get((kind, ns if namespaced else None, name))

# --- which objects exist --------------------------------------------------------------
main_role_kind = "ClusterRole" if scope == "cluster" else "Role"
expected = {
    ("ServiceAccount", ns, fullname),
    ("Deployment", ns, fullname),
    ("Service", ns, f"{fullname}-metrics"),
    (main_role_kind, ns if scope == "namespace" else None, fullname),
    (main_role_kind + "Binding", ns if scope == "namespace" else None, fullname),
    ("ClusterRole", None, f"{fullname}-crd-reader"),
    ("ClusterRoleBinding", None, f"{fullname}-crd-reader"),
    ("ClusterRole", None, f"{fullname}-view"),
    ("ClusterRole", None, f"{fullname}-edit"),
}
if expect_leader:
    expected |= {("Role", ns, f"{fullname}-leader-election"), ("RoleBinding", ns, f"{fullname}-leader-election")}
if expect_crd:
    expected.add(("CustomResourceDefinition", None, "signalingclusters.switchboard.dev"))
if expect_sm:
    expected.add(("ServiceMonitor", ns, fullname))
missing = expected - set(objs)
extra = set(objs) - expected
for k in sorted(missing, key=str):
    err(f"missing object {k}")
for k in sorted(extra, key=str):
    err(f"unexpected object {k}")

# --- CRD: kept on uninstall, same content as crds/ -------------------------------------
crd = get("CustomResourceDefinition", "signalingclusters.switchboard.dev", namespaced=False)
if crd is not None:
    ann = crd["metadata"].get("annotations") or {}
    if ann.get("helm.sh/resource-policy") != "keep":
        err("CRD lacks annotation helm.sh/resource-policy: keep")
    try:
        with open(crd_src) as f:
            want = yaml.safe_load(f)
    except OSError as e:
        err(f"cannot compare the rendered CRD with {crd_src}: {e}")
        want = {}
    got = {**crd, "metadata": {k: v for k, v in crd["metadata"].items() if k not in ("labels", "annotations")}}
    want_meta = {k: v for k, v in (want.get("metadata") or {}).items() if k not in ("labels", "annotations")}
    want = {**want, "metadata": want_meta}
    if got != want:
        err(f"rendered CRD differs from {crd_src} (beyond the chart's labels/annotations)")

# --- Deployment: restricted pod security, probes, args --------------------------------
dep = get("Deployment", fullname)
if dep is not None:
    spec = dep["spec"]
    if spec.get("replicas") != expect_replicas:
        err(f"Deployment replicas {spec.get('replicas')} != {expect_replicas}")
    sel = spec["selector"]["matchLabels"]
    tlabels = spec["template"]["metadata"]["labels"]
    if any(tlabels.get(k) != v for k, v in sel.items()):
        err("Deployment selector does not match the pod template labels")
    pod = spec["template"]["spec"]
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        err("pod securityContext.runAsNonRoot is not true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        err("pod seccompProfile is not RuntimeDefault")
    if pod.get("serviceAccountName") != fullname:
        err(f"serviceAccountName {pod.get('serviceAccountName')!r} != {fullname}")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        err("pod uses host namespaces")
    conts = pod.get("containers") or []
    if len(conts) != 1:
        err(f"expected one container, got {len(conts)}")
    for c in conts:
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            err("container readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            err("container allowPrivilegeEscalation is not false")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            err("container does not drop ALL capabilities")
        if sc.get("privileged"):
            err("container is privileged")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    err(f"container resources.{part}.{r} not set")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
        if "metrics" not in ports:
            err("container has no port named metrics")
        for probe, want_path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            hg = (c.get(probe) or {}).get("httpGet") or {}
            if hg.get("path") != want_path or hg.get("port") not in ("metrics", ports.get("metrics")):
                err(f"{probe} is not GET {want_path} on the metrics port: {hg}")
        args = c.get("args") or []
        if not args or args[0] != "run":
            err(f"container args do not start with 'run': {args}")
        ns_args = [a for a in args if a.startswith("--namespace")]
        if scope == "namespace" and ns_args != [f"--namespace={ns}"]:
            err(f"namespace scope: expected --namespace={ns} in args, got {ns_args}")
        if scope == "cluster" and ns_args:
            err(f"cluster scope: unexpected {ns_args} in args")
        want_le = "--leader-elect=true" if expect_leader else "--leader-elect=false"
        if [a for a in args if a.startswith("--leader-elect")] != [want_le]:
            err(f"expected exactly {want_le} in args (the operator elects by default): {args}")
        if not any(a.startswith("--metrics-addr=") and a.endswith(f":{ports.get('metrics')}") for a in args):
            err(f"--metrics-addr does not match the metrics port: {args}")
    svc = get("Service", f"{fullname}-metrics")
    if svc is not None:
        if any(tlabels.get(k) != v for k, v in svc["spec"]["selector"].items()):
            err("metrics Service selector does not match the operator pods")
        if [p.get("targetPort") for p in svc["spec"]["ports"]] != ["metrics"]:
            err("metrics Service does not target the metrics port")

# --- RBAC: exactly what the controller uses, nothing wider ----------------------------
def rules_of(kind, name, namespaced):
    o = get(kind, name, namespaced)
    return (o or {}).get("rules") or []

def flatten(rules):
    out = set()
    for r in rules:
        for g in r.get("apiGroups") or []:
            for res in r.get("resources") or []:
                for v in r.get("verbs") or []:
                    for rn in r.get("resourceNames") or [None]:
                        out.add((g, res, v, rn))
    return out

for (kind, _, name), o in objs.items():
    if kind not in ("Role", "ClusterRole"):
        continue
    for r in o.get("rules") or []:
        for field in ("apiGroups", "resources", "verbs"):
            if "*" in (r.get(field) or []):
                err(f"{kind}/{name} uses a wildcard in {field}")
        if "nonResourceURLs" in r:
            err(f"{kind}/{name} grants nonResourceURLs")
    for g, res, v, rn in flatten(o.get("rules") or []):
        if res == "customresourcedefinitions" and v != "get":
            err(f"{kind}/{name} grants {v} on CRDs (read only allowed)")
        if res in ("secrets",) and v == "delete":
            err(f"{kind}/{name} grants delete on secrets")

CHILD = ["get", "list", "watch", "create", "patch", "delete"]
want_main = set()
def grant(group, resources, verbs, names=(None,)):
    for res in resources:
        for v in verbs:
            for n in names:
                want_main.add((group, res, v, n))
grant("switchboard.dev", ["signalingclusters"], ["get", "list", "watch"])
grant("switchboard.dev", ["signalingclusters/status"], ["get", "patch"])
grant("", ["secrets"], ["get", "list", "watch", "create", "patch"])
grant("", ["services"], CHILD)
grant("apps", ["deployments", "statefulsets"], CHILD)
grant("networking.k8s.io", ["ingresses", "networkpolicies"], CHILD)
grant("autoscaling", ["horizontalpodautoscalers"], CHILD)
grant("policy", ["poddisruptionbudgets"], CHILD)
grant("events.k8s.io", ["events"], ["create", "patch"])
got_main = flatten(rules_of(main_role_kind, fullname, scope == "namespace"))
if got_main != want_main:
    for x in sorted(want_main - got_main, key=str):
        err(f"{main_role_kind}/{fullname} lacks {x}")
    for x in sorted(got_main - want_main, key=str):
        err(f"{main_role_kind}/{fullname} grants more than the controller uses: {x}")

want_crd = {("apiextensions.k8s.io", "customresourcedefinitions", "get", "signalingclusters.switchboard.dev")}
if flatten(rules_of("ClusterRole", f"{fullname}-crd-reader", False)) != want_crd:
    err("crd-reader ClusterRole is not exactly get on signalingclusters.switchboard.dev")

if expect_leader:
    want_lease = {("coordination.k8s.io", "leases", "create", None)}
    for v in ("get", "update"):
        want_lease.add(("coordination.k8s.io", "leases", v, fullname))
    if flatten(rules_of("Role", f"{fullname}-leader-election", True)) != want_lease:
        err("leader-election Role is not exactly create + get/update on the operator's Lease")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"] if dep else []
    if f"--lease-name={fullname}" not in args or f"--lease-namespace={ns}" not in args:
        err(f"Lease flags do not name the Lease the Role grants: {args}")

# Bindings: point at a rendered role and at the operator's ServiceAccount.
for (kind, bns, name), o in objs.items():
    if not kind.endswith("Binding"):
        continue
    ref = o["roleRef"]
    rkind = ref["kind"]
    if (rkind, bns if rkind == "Role" else None, ref["name"]) not in objs:
        err(f"{kind}/{name} refers to {rkind}/{ref['name']} which the chart does not render")
    subs = o.get("subjects") or []
    if subs != [{"kind": "ServiceAccount", "name": fullname, "namespace": ns}]:
        err(f"{kind}/{name} subjects are not exactly the operator ServiceAccount: {subs}")

# Aggregated roles: read for view, write for edit, never status writes.
view = get("ClusterRole", f"{fullname}-view", False)
edit = get("ClusterRole", f"{fullname}-edit", False)
if view is not None:
    labels = view["metadata"].get("labels") or {}
    for r in ("view", "edit", "admin"):
        if labels.get(f"rbac.authorization.k8s.io/aggregate-to-{r}") != "true":
            err(f"-view ClusterRole lacks aggregate-to-{r}")
    if {v for (_, _, v, _) in flatten(view["rules"])} != {"get", "list", "watch"}:
        err("-view ClusterRole grants more than get/list/watch")
if edit is not None:
    labels = edit["metadata"].get("labels") or {}
    for r in ("edit", "admin"):
        if labels.get(f"rbac.authorization.k8s.io/aggregate-to-{r}") != "true":
            err(f"-edit ClusterRole lacks aggregate-to-{r}")
    if labels.get("rbac.authorization.k8s.io/aggregate-to-view") == "true":
        err("-edit ClusterRole aggregates into view")
    for (g, res, v, _) in flatten(edit["rules"]):
        if res == "signalingclusters/status" and v not in ("get", "list", "watch"):
            err("-edit ClusterRole lets users write status")
    if ("switchboard.dev", "signalingclusters", "create", None) not in flatten(edit["rules"]):
        err("-edit ClusterRole cannot create SignalingClusters")

sm = get("ServiceMonitor", fullname)
if sm is not None:
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        err(f"ServiceMonitor apiVersion {sm['apiVersion']}")
    if [e.get("port") for e in sm["spec"]["endpoints"]] != ["metrics"]:
        err("ServiceMonitor does not scrape the metrics port")

if errors:
    print(f"{path}: {len(errors)} problem(s):")
    for e in errors:
        print(f"  - {e}")
    sys.exit(1)
print(f"{len(objs)} objects ok")
PY

export NS RELEASE CRD_SRC

# render NAME [helm args...]: helm template into $WORK/NAME.yaml.
render() {
  local name="$1"; shift
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" "$@" >"$WORK/$name.yaml"
}

# render_and_check NAME ENV... -- [helm args...]
render_and_check() {
  local name="$1"; shift
  local envs=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  render "$name" "$@" || return 1
  env "${envs[@]}" python3 "$WORK/check_render.py" "$WORK/$name.yaml"
}

# must_fail EXPECTED_SUBSTRING [helm args...]: helm template must fail, mentioning the substring.
must_fail() {
  local want="$1"; shift
  local out
  if out="$("$HELM" template "$RELEASE" "$CHART" --namespace "$NS" "$@" 2>&1)"; then
    echo "helm template $* succeeded; it must be rejected"
    return 1
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    echo "helm template $* failed without mentioning '$want':"
    echo "$out"
    return 1
  fi
}

# crd_without_cel_below_1_25: rendered for Kubernetes 1.20, the CRD is crds/ minus every
# x-kubernetes-validations (which 1.20-1.24 refuse); rendered for 1.25 it keeps them.
crd_without_cel_below_1_25() {
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --kube-version 1.20.0 --show-only templates/crd.yaml >"$WORK/crd-1.20.yaml" || return 1
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --kube-version 1.25.0 --show-only templates/crd.yaml >"$WORK/crd-1.25.yaml" || return 1
  python3 - "$WORK/crd-1.20.yaml" "$WORK/crd-1.25.yaml" "$CRD_SRC" <<'PY'
import sys, yaml
old, new, src = (yaml.safe_load(open(p)) for p in sys.argv[1:4])
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k != "x-kubernetes-validations"}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
def count(v):
    if isinstance(v, dict):
        return ("x-kubernetes-validations" in v) + sum(count(x) for x in v.values())
    if isinstance(v, list):
        return sum(count(x) for x in v)
    return 0
errors = []
if count(old) != 0:
    errors.append(f"the 1.20 render still has {count(old)} x-kubernetes-validations")
if count(new) != count(src) or count(src) == 0:
    errors.append(f"the 1.25 render has {count(new)} x-kubernetes-validations, {sys.argv[3]} {count(src)}")
if old["spec"] != strip(src["spec"]):
    errors.append("the 1.20 render's spec is not crds/ minus the CEL rules")
if new["spec"] != src["spec"]:
    errors.append("the 1.25 render's spec differs from crds/")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
}

crd_copy_matches() {
  [ -f "$CRD_SRC" ] || { echo "$CRD_SRC is missing (generate it: cargo run -p switchboard-operator -- crd > $CRD_SRC)"; return 1; }
  [ -f "$CRD_COPY" ] || { echo "$CRD_COPY is missing: cp $CRD_SRC $CRD_COPY"; return 1; }
  cmp -s "$CRD_SRC" "$CRD_COPY" || {
    echo "$CRD_COPY differs from $CRD_SRC (the chart would install a stale CRD): cp $CRD_SRC $CRD_COPY"
    diff -u "$CRD_SRC" "$CRD_COPY" | head -n 20
    return 1
  }
}

notes_show_wait() {
  local out
  out="$("$HELM" install "$RELEASE" "$CHART" --namespace "$NS" --dry-run=client "$@" 2>&1)" || { echo "$out"; return 1; }
  grep -qF "kubectl wait --for=condition=Ready sigc/demo" <<<"$out" \
    || { echo "NOTES.txt does not show 'kubectl wait --for=condition=Ready sigc/<name>':"; echo "$out" | sed -n '/NOTES:/,$p'; return 1; }
  grep -qF "kind: SignalingCluster" <<<"$out" \
    || { echo "NOTES.txt does not show a first SignalingCluster example"; return 1; }
  # The example is `spec: {}`: no turnUrls, so no TURN secret is generated; never promise one.
  if grep -qiF "TURN secrets" <<<"$out" || ! grep -qF "no TURN server" <<<"$out"; then
    echo "NOTES.txt promises TURN secrets for spec: {} (or does not say it has no TURN server):"
    echo "$out" | sed -n '/NOTES:/,$p'; return 1
  fi
}

# The operator binary accepts exactly the args the chart renders (clap parses and validates
# every flag before it acts on --help, so an unknown or misspelt flag fails here).
operator_bin() {
  if [ -n "${SWITCHBOARD_OPERATOR_BIN:-}" ]; then echo "$SWITCHBOARD_OPERATOR_BIN"; return; fi
  local dir="${CARGO_TARGET_DIR:-target}" newest="" f
  for f in "$dir/debug/switchboard-operator" "$dir/release/switchboard-operator"; do
    if [ -x "$f" ] && { [ -z "$newest" ] || [ "$f" -nt "$newest" ]; }; then newest="$f"; fi
  done
  echo "$newest"
}
args_parse_with_binary() {
  local bin render
  bin="$(operator_bin)"
  [ -n "$bin" ] || { echo "no switchboard-operator binary under ${CARGO_TARGET_DIR:-target}/{debug,release}: cargo build -p switchboard-operator (or set SWITCHBOARD_OPERATOR_BIN)"; return 1; }
  for render in default namespaced noleader; do
    local args=()
    mapfile -t args < <(python3 - "$WORK/$render.yaml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Deployment":
        print("\n".join(d["spec"]["template"]["spec"]["containers"][0]["args"]))
PY
)
    [ "${#args[@]}" -gt 0 ] || { echo "$render: no Deployment args rendered"; return 1; }
    "$bin" "${args[@]}" --help >/dev/null || { echo "$render: '$bin ${args[*]}' is refused by the binary"; return 1; }
  done
}

# The Dockerfiles build a real package's binary and run it as non-root (no Docker engine is
# needed for this; the images themselves are not built by the tests).
dockerfiles_consistent() {
  python3 - <<'PY'
import re, sys, tomllib
problems = []
for df, pkg, port in (("Dockerfile.server", "switchboard-server", "8080"),
                      ("Dockerfile.operator", "switchboard-operator", "8090")):
    try:
        text = open(df).read()
    except OSError as e:
        problems.append(f"{df}: {e}")
        continue
    crate_dir = {"switchboard-server": "server", "switchboard-operator": "operator"}[pkg]
    manifest = tomllib.load(open(f"{crate_dir}/Cargo.toml", "rb"))
    if manifest["package"]["name"] != pkg:
        problems.append(f"{crate_dir}/Cargo.toml is not package {pkg}")
    bins = [b["name"] for b in manifest.get("bin", [])]
    if pkg not in bins:
        problems.append(f"{crate_dir}/Cargo.toml has no [[bin]] {pkg}")
    if not re.search(rf"cargo build --release --locked -p {re.escape(pkg)}\s", text):
        problems.append(f"{df}: does not build -p {pkg} with --release --locked")
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if len(stages) < 2:
        problems.append(f"{df}: not multi-stage")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"{df}: final USER is missing or root: {users}")
    if f"/usr/local/bin/{pkg}" not in re.findall(r'^ENTRYPOINT\s+\["([^"]+)"', text, re.M):
        problems.append(f"{df}: ENTRYPOINT is not /usr/local/bin/{pkg}")
    if port not in re.findall(r"^EXPOSE\s+(\d+)", text, re.M):
        problems.append(f"{df}: does not EXPOSE {port}")
# The server image's uid must be the one the operator's pod template runs as.
rs = open("operator/src/resources/deployment.rs").read()
m = re.search(r"SERVER_UID: i64 = (\d+)", rs)
if not m:
    problems.append("operator/src/resources/deployment.rs: SERVER_UID not found")
elif not re.search(rf"^USER\s+{m.group(1)}(:|$)", open("Dockerfile.server").read(), re.M):
    problems.append(f"Dockerfile.server USER is not the operator's SERVER_UID {m.group(1)}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
PY
}

# Every value the schema knows is documented in docs/deployment.md's table (as `key`).
values_documented() {
  python3 - "$CHART/values.schema.json" docs/deployment.md <<'PY'
import json, sys
schema = json.load(open(sys.argv[1]))
doc = open(sys.argv[2]).read()
missing = []
def walk(node, prefix):
    for key, sub in (node.get("properties") or {}).items():
        path = f"{prefix}{key}"
        if key == "global":
            continue
        # A key documented as a whole (e.g. `resources`) covers its children; otherwise
        # strict objects are chart structure whose leaves must each be documented.
        if f"`{path}`" in doc:
            continue
        if sub.get("type") == "object" and sub.get("additionalProperties") is False:
            walk(sub, path + ".")
        else:
            missing.append(path)
walk(schema, "")
if missing:
    print("values not documented in docs/deployment.md: " + ", ".join(missing))
    sys.exit(1)
PY
}

# ---------------------------------------------------------------------------------------
# Against a real kube-apiserver: a private instance of tests/k8s-rig.sh (own run dir and
# ports, stopped on exit). Proves the rendered objects are accepted by the API server (with
# kubectl's schema validation), and that the RBAC behaves as promised when the authorizer
# evaluates it (kubectl auth can-i --as the operator's ServiceAccount).
K8S_RIG_DIR="${RIG_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-k8s-rig}"
# start_rig runs inside check's command substitution (a subshell), so "was it started" is
# the existence of its run dir, not a variable.
stop_rig() {
  if [ -d "$WORK/rig" ]; then
    RIG_RUN_DIR="$WORK/rig" bash tests/k8s-rig.sh stop >/dev/null 2>&1 || true
  fi
}
trap 'stop_rig; rm -rf "$WORK"' EXIT

# Two free loopback ports p, p+1 for etcd (client, peer) and one for the API server.
free_ports() {
  python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    etcd, api = random.randrange(20000, 30000), random.randrange(30000, 40000)
    if free(etcd) and free(etcd + 1) and free(api):
        print(etcd, api); break
PY
}

start_rig() {
  [ -x "$K8S_RIG_DIR/bin/kube-apiserver" ] \
    || { echo "no kube-apiserver in $K8S_RIG_DIR/bin: run tests/k8s-rig.sh ensure (tests/run.sh does)"; return 1; }
  local ports
  ports="$(free_ports)"
  mkdir -p "$WORK/rig"
  RIG_RUN_DIR="$WORK/rig" RIG_ETCD_PORT="${ports% *}" RIG_APISERVER_PORT="${ports#* }" \
    bash tests/k8s-rig.sh start >/dev/null
}

# apply_render FILE: the CRD with `kubectl create --validate=false` (1.20 predates
# x-kubernetes-validations, and server-side apply would refuse that unknown field), every
# other object with server-side apply after kubectl's client-side schema validation.
apply_render() {
  local file="$1" crd_file="$WORK/crd-only.yaml" rest_file="$WORK/rest.yaml"
  python3 - "$file" "$crd_file" "$rest_file" <<'PY' || return 1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crd = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
yaml.safe_dump_all(crd, open(sys.argv[2], "w"))
yaml.safe_dump_all(rest, open(sys.argv[3], "w"))
PY
  if [ -s "$crd_file" ] && ! "$KUBECTL" get crd signalingclusters.switchboard.dev >/dev/null 2>&1; then
    "$KUBECTL" create --validate=false -f "$crd_file" || return 1
    "$KUBECTL" wait --for=condition=Established --timeout=30s crd/signalingclusters.switchboard.dev || return 1
  fi
  "$KUBECTL" apply --server-side --field-manager=chart-test -f "$rest_file"
}

# expect_can SUBJECT LINES: each line "yes|no VERB RESOURCE [kubectl auth can-i flags]".
expect_can() {
  local subject="$1" lines="$2" want verb res rest got bad=0
  while read -r want verb res rest; do
    [ -n "$want" ] || continue
    # shellcheck disable=SC2086 # $rest holds flags such as "-n ns --subresource=status"
    if "$KUBECTL" auth can-i "$verb" "$res" $rest --as="$subject" >/dev/null 2>&1; then got=yes; else got=no; fi
    if [ "$got" != "$want" ]; then
      echo "$subject: can-i $verb $res $rest = $got, expected $want"
      bad=1
    fi
  done <<<"$lines"
  return "$bad"
}

rbac_cluster_scope() {
  local sa="system:serviceaccount:sb-cluster:sbc-switchboard-operator"
  expect_can "$sa" "
yes watch signalingclusters.switchboard.dev -n elsewhere
no patch signalingclusters.switchboard.dev -n elsewhere
no update signalingclusters.switchboard.dev -n elsewhere
yes patch signalingclusters.switchboard.dev -n elsewhere --subresource=status
no update signalingclusters.switchboard.dev -n elsewhere --subresource=status
no create signalingclusters.switchboard.dev -n elsewhere
no delete signalingclusters.switchboard.dev -n elsewhere
yes create secrets -n elsewhere
yes watch secrets -n elsewhere
no delete secrets -n elsewhere
no update secrets -n elsewhere
yes delete deployments.apps -n elsewhere
yes patch statefulsets.apps -n elsewhere
yes create ingresses.networking.k8s.io -n elsewhere
yes delete horizontalpodautoscalers.autoscaling -n elsewhere
yes delete poddisruptionbudgets.policy -n elsewhere
no create events -n elsewhere
yes create events.events.k8s.io -n elsewhere
no list pods -n elsewhere
no create pods/exec -n elsewhere
no list configmaps -n elsewhere
no list nodes
yes get customresourcedefinitions.apiextensions.k8s.io/signalingclusters.switchboard.dev
no get customresourcedefinitions.apiextensions.k8s.io/other.example.com
no list customresourcedefinitions.apiextensions.k8s.io
no update customresourcedefinitions.apiextensions.k8s.io/signalingclusters.switchboard.dev
no delete customresourcedefinitions.apiextensions.k8s.io/signalingclusters.switchboard.dev
no create customresourcedefinitions.apiextensions.k8s.io
yes create leases.coordination.k8s.io -n sb-cluster
yes update leases.coordination.k8s.io/sbc-switchboard-operator -n sb-cluster
no update leases.coordination.k8s.io/someone-else -n sb-cluster
no patch leases.coordination.k8s.io/sbc-switchboard-operator -n sb-cluster
no update leases.coordination.k8s.io/sbc-switchboard-operator -n elsewhere
no create clusterroles.rbac.authorization.k8s.io
no create rolebindings.rbac.authorization.k8s.io -n elsewhere
"
}

rbac_namespace_scope() {
  local sa="system:serviceaccount:sb-ns:sbn-switchboard-operator"
  expect_can "$sa" "
yes watch signalingclusters.switchboard.dev -n sb-ns
yes patch signalingclusters.switchboard.dev -n sb-ns --subresource=status
no watch signalingclusters.switchboard.dev -n elsewhere
no watch signalingclusters.switchboard.dev --all-namespaces
yes list secrets -n sb-ns
no list secrets -n elsewhere
yes create deployments.apps -n sb-ns
no create deployments.apps -n elsewhere
yes get customresourcedefinitions.apiextensions.k8s.io/signalingclusters.switchboard.dev
no update customresourcedefinitions.apiextensions.k8s.io/signalingclusters.switchboard.dev
yes update leases.coordination.k8s.io/sbn-switchboard-operator -n sb-ns
no update leases.coordination.k8s.io/sbn-switchboard-operator -n elsewhere
"
}

# The -edit / -view ClusterRoles bound directly in one namespace (aggregation into the
# built-in roles needs kube-controller-manager, which this rig does not run).
aggregated_roles_behave() {
  "$KUBECTL" -n elsewhere create rolebinding alice-edit --clusterrole=sbc-switchboard-operator-edit --user=alice >/dev/null || return 1
  "$KUBECTL" -n elsewhere create rolebinding bob-view --clusterrole=sbc-switchboard-operator-view --user=bob >/dev/null || return 1
  expect_can alice "
yes create signalingclusters.switchboard.dev -n elsewhere
yes delete signalingclusters.switchboard.dev -n elsewhere
yes get signalingclusters.switchboard.dev -n elsewhere --subresource=status
no patch signalingclusters.switchboard.dev -n elsewhere --subresource=status
no create signalingclusters.switchboard.dev -n sb-ns
no list secrets -n elsewhere
" && expect_can bob "
yes list signalingclusters.switchboard.dev -n elsewhere
no create signalingclusters.switchboard.dev -n elsewhere
no patch signalingclusters.switchboard.dev -n elsewhere
"
}

# The chart's CRD serves the NOTES.txt example and `kubectl get sigc`.
notes_example_accepted() {
  "$KUBECTL" -n elsewhere create -f - <<'YAML' || return 1
apiVersion: switchboard.dev/v1alpha1
kind: SignalingCluster
metadata:
  name: demo
spec: {}
YAML
  "$KUBECTL" -n elsewhere get sigc demo
}

# helm install / upgrade / uninstall on the rig (Kubernetes 1.20), with exactly the commands
# docs/operator.md "Install" gives (plain `helm install`, no extra flags; only the image is
# the placeholder the docs use): the chart leaves the CEL rules out of the CRD below 1.25.
# Uninstall removes the operator but keeps the CRD and so every SignalingCluster.
helm_lifecycle_keeps_crd() {
  local h=("$HELM" --namespace sb-helm) flags=(--set image.repository=registry.example.com/switchboard/switchboard-operator)
  "${h[@]}" install sbh "$CHART" --create-namespace "${flags[@]}" >/dev/null || return 1
  if "$KUBECTL" get crd signalingclusters.switchboard.dev -o yaml | grep -q x-kubernetes-validations; then
    echo "the CRD installed on 1.20 carries x-kubernetes-validations"; return 1
  fi
  "$KUBECTL" get crd signalingclusters.switchboard.dev -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}' \
    | grep -qx keep || { echo "installed CRD lacks helm.sh/resource-policy=keep"; return 1; }
  "$KUBECTL" -n sb-helm create -f - >/dev/null <<'YAML' || return 1
apiVersion: switchboard.dev/v1alpha1
kind: SignalingCluster
metadata:
  name: survivor
spec: {}
YAML
  "${h[@]}" upgrade sbh "$CHART" "${flags[@]}" --set replicaCount=2 >/dev/null || return 1
  [ "$("$KUBECTL" -n sb-helm get deploy sbh-switchboard-operator -o jsonpath='{.spec.replicas}')" = 2 ] \
    || { echo "helm upgrade did not scale the operator to 2"; return 1; }
  "${h[@]}" uninstall sbh >/dev/null || return 1
  "$KUBECTL" get crd signalingclusters.switchboard.dev >/dev/null \
    || { echo "helm uninstall deleted the CRD"; return 1; }
  "$KUBECTL" -n sb-helm get sigc survivor >/dev/null \
    || { echo "helm uninstall deleted a SignalingCluster"; return 1; }
  if "$KUBECTL" -n sb-helm get deploy sbh-switchboard-operator >/dev/null 2>&1 \
     || "$KUBECTL" get clusterrole sbh-switchboard-operator >/dev/null 2>&1; then
    echo "helm uninstall left the operator's Deployment or ClusterRole behind"; return 1
  fi
}

apiserver_checks() {
  KUBECTL="$(bash tests/tools.sh kubectl)" || die "could not install kubectl (tests/tools.sh)"
  if ! check "start a private kube-apiserver (tests/k8s-rig.sh)" start_rig; then
    return
  fi
  export KUBECONFIG="$WORK/rig/kubeconfig"
  local ns
  for ns in sb-cluster sb-ns elsewhere; do
    "$KUBECTL" create namespace "$ns" >/dev/null || die "cannot create namespace $ns in the rig"
  done
  "$HELM" template sbc "$CHART" --namespace sb-cluster >"$WORK/api-cluster.yaml" || die "helm template failed"
  "$HELM" template sbn "$CHART" --namespace sb-ns --set rbac.scope=namespace --set crds.create=false \
    >"$WORK/api-ns.yaml" || die "helm template failed"
  check "helm install as documented (1.20), upgrade, uninstall keeps the CRD and SignalingClusters" helm_lifecycle_keeps_crd
  check "API server accepts the default render (CRD established)" apply_render "$WORK/api-cluster.yaml"
  check "API server accepts the rbac.scope=namespace render" apply_render "$WORK/api-ns.yaml"
  check "RBAC (cluster scope): exactly the promised access, as the ServiceAccount" rbac_cluster_scope
  check "RBAC (namespace scope): confined to the release namespace" rbac_namespace_scope
  check "-edit/-view ClusterRoles: edit spec, read status, view read-only" aggregated_roles_behave
  check "the chart's CRD accepts the NOTES.txt example; kubectl get sigc works" notes_example_accepted
  export KUBECONFIG="$WORK/no-kubeconfig"
}

start=$(date +%s)
echo "helm: $HELM ($("$HELM" version --short))"

check "CRD copy $CRD_COPY equals $CRD_SRC" crd_copy_matches
check "helm lint --strict (default values)" "$HELM" lint --strict "$CHART"
check "CRD for Kubernetes < 1.25 has no CEL rules, otherwise equals crds/" crd_without_cel_below_1_25
check "helm lint --strict (rbac.scope=namespace)" "$HELM" lint --strict "$CHART" --set rbac.scope=namespace
check "helm template (default values): objects and promises" \
  render_and_check default SCOPE=cluster --
check "helm template (rbac.scope=namespace): Role in $NS, --namespace flag" \
  render_and_check namespaced SCOPE=namespace -- --set rbac.scope=namespace
check "helm template (crds.create=false): no CRD" \
  render_and_check nocrd SCOPE=cluster EXPECT_CRD=0 -- --set crds.create=false
check "helm template (serviceMonitor on, 3 replicas)" \
  render_and_check monitored SCOPE=cluster EXPECT_SERVICE_MONITOR=1 EXPECT_REPLICAS=3 -- \
  --set metrics.serviceMonitor.enabled=true --set replicaCount=3
check "helm template (leader election off, 1 replica): no Lease Role" \
  render_and_check noleader SCOPE=namespace EXPECT_LEADER=0 -- \
  --set leaderElection.enabled=false --set rbac.scope=namespace
check "schema rejects rbac.scope=bogus" must_fail "/rbac/scope" --set rbac.scope=bogus
check "schema rejects an unknown key" must_fail "additional properties" --set rbac.scopee=namespace
check "schema rejects image.pullPolicy=Sometimes" must_fail "/image/pullPolicy" --set image.pullPolicy=Sometimes
check "schema rejects a non-integer replicaCount" must_fail "/replicaCount" --set replicaCount=two
check "template refuses replicaCount=2 without leader election" \
  must_fail "needs leaderElection.enabled=true" --set replicaCount=2 --set leaderElection.enabled=false
check "template refuses a ServiceMonitor without the metrics Service" \
  must_fail "needs metrics.service.enabled=true" \
  --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false
check "NOTES.txt shows kubectl wait and a first SignalingCluster" notes_show_wait
check "every chart value is documented in docs/deployment.md" values_documented
check "Dockerfiles build real binaries, multi-stage, non-root" dockerfiles_consistent
check "switchboard-operator accepts the rendered args (default, namespace, no leader election)" args_parse_with_binary

if [ "${SWITCHBOARD_CHART_NO_APISERVER:-0}" = 1 ]; then
  echo "NOTE API-server checks not run (SWITCHBOARD_CHART_NO_APISERVER=1)"
else
  apiserver_checks
fi

echo "$passed passed, $failed failed ($(( $(date +%s) - start )) s)"
[ "$failed" -eq 0 ]
