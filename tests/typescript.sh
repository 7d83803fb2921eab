#!/usr/bin/env bash
# Compiles the usage examples in tests/fixtures/typescript/ against server/static/switchboard.d.ts
# and switchboard.d.mts with `tsc --noEmit --strict`, for each module resolution an app may use,
# so the declarations are valid TypeScript and describe the API an app writes against.
#
# TypeScript comes from npm (pinned below) into ~/.cache/switchboard-tools/typescript; npm
# checks the tarball against the registry's integrity hash. Idempotent.
# Environment:
#   SWITCHBOARD_TOOLS_DIR        install dir parent (default ~/.cache/switchboard-tools)
#   SWITCHBOARD_TYPESCRIPT       npm version (default pinned below)
set -euo pipefail

TS_VERSION="${SWITCHBOARD_TYPESCRIPT:-5.9.3}"
TOOLS_DIR="${SWITCHBOARD_TOOLS_DIR:-$HOME/.cache/switchboard-tools}"
TS_DIR="$TOOLS_DIR/typescript"
root="$(cd "$(dirname "$0")/.." && pwd)"

die() { echo "typescript.sh: error: $*" >&2; exit 1; }
log() { echo "typescript.sh: $*" >&2; }

TSC="$TS_DIR/node_modules/.bin/tsc"
if ! "$TSC" --version 2>/dev/null | grep -qx "Version $TS_VERSION"; then
  command -v npm >/dev/null 2>&1 \
    || die "npm is not installed; it is needed to fetch typescript@$TS_VERSION (apt-get install -y npm)"
  mkdir -p "$TS_DIR"
  log "installing typescript@$TS_VERSION into $TS_DIR"
  npm install --silent --no-audit --no-fund --prefix "$TS_DIR" "typescript@$TS_VERSION" >&2 \
    || die "npm install typescript@$TS_VERSION failed"
  "$TSC" --version >/dev/null 2>&1 || die "$TSC does not run after npm install"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$root"/server/static/switchboard.js "$root"/server/static/switchboard.mjs \
  "$root"/server/static/switchboard.d.ts "$root"/server/static/switchboard.d.mts \
  "$root"/tests/fixtures/typescript/*.ts "$root"/tests/fixtures/typescript/*.mts "$work/"

for mode in "esnext bundler" "node16 node16" "nodenext nodenext" "preserve bundler"; do
  set -- $mode
  log "tsc --module $1 --moduleResolution $2"
  (cd "$work" && "$TSC" --noEmit --strict --target es2022 --lib es2022,dom \
      --module "$1" --moduleResolution "$2" module-usage.mts classic-usage.ts) \
    || die "switchboard.d.ts does not type-check with --module $1 --moduleResolution $2 (errors above)"
done
log "switchboard.d.ts and switchboard.d.mts type-check ($("$TSC" --version))"
