#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md, on this machine: one instance on the in-process bus,
# three instances on one Redis (a redis-server of its own on an ephemeral port), each scenario
# against the built-in ceiling relay in the same run, and redis-benchmark PUBLISH against that
# Redis. Every measurement is repeated (REPEATS, default 3); the JSON reports land in OUT, and
# load/bench/plot.py turns them into the tables and plots of the doc.
#
#   load/bench/run.sh [OUT]            default OUT: target/bench/<UTC timestamp>
#   SERVER_BIN=path  switchboard-server to measure (default: target/release/switchboard-server)
#   LOAD_BIN=path    switchboard-load (default: target/release/switchboard-load)
#   REPEATS=n        repetitions (default 3)
#   QUIET_LOAD=x     wait (at most 10 min) for the 1-minute load average to drop below x
#                    before each repetition (default 1.5; the machine is shared)
#   ONLY="a b"       run only these groups: connections relay fanout churn paced redis peerjs cluster
#                    (cluster: three instances through one Redis, then through a 3-master
#                    Redis Cluster with sharded pub/sub, in the same repetition)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
out=${1:-$root/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
server_bin=${SERVER_BIN:-$root/target/release/switchboard-server}
load_bin=${LOAD_BIN:-$root/target/release/switchboard-load}
repeats=${REPEATS:-3}
quiet=${QUIET_LOAD:-1.5}
only=${ONLY:-connections relay fanout churn paced redis peerjs cluster}
mkdir -p "$out/logs"

if [ ! -x "$server_bin" ] || [ ! -x "$load_bin" ]; then
  cargo build --release -p switchboard-server -p switchboard-load
fi
command -v redis-server >/dev/null || { echo "run.sh: redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
command -v redis-benchmark >/dev/null || { echo "run.sh: redis-benchmark is needed (apt-get install redis-tools)" >&2; exit 1; }

# Ten thousand participants need ten thousand descriptors on each side.
ulimit -n "$(ulimit -Hn)"
secret=$(openssl rand -hex 32)
export JWT_SECRET=$secret
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wants() { [[ " $only " == *" $1 "* ]]; }
# wait_for_line FILE PATTERN TENTHS: until FILE has a line matching PATTERN, at most TENTHS/10 s;
# returns either way (the caller checks what came of the start).
wait_for_line() {
  for _ in $(seq "$3"); do
    grep -q "$2" "$1" && return 0
    sleep 0.1
  done
  return 0
}

# start_server NAME [ENV=VALUE...]: a server with the rate limit lifted; sets $url and $pid.
start_server() {
  local name=$1; shift
  env "$@" JWT_SECRET="$secret" WEBRTC_RATE_LIMIT_PER_SECOND=1000000 WEBRTC_RATE_LIMIT_BURST=1000000 \
    WEBRTC_RATE_LIMIT_BYTES_PER_SECOND=1000000000 WEBRTC_RATE_LIMIT_BYTES_BURST=1000000000 \
    SWITCHBOARD_MAX_CONNECTIONS_PER_IP=100000 \
    RUST_LOG=warn "$server_bin" --listen 127.0.0.1:0 >"$out/logs/$name.out" 2>"$out/logs/$name.err" &
  pid=$!
  pids+=("$pid")
  wait_for_line "$out/logs/$name.out" '^listening on' 150
  url=http://$(sed -n 's/^listening on //p' "$out/logs/$name.out")
  [ "$url" != "http://" ] || { echo "run.sh: server $name did not start:" >&2; cat "$out/logs/$name.err" >&2; exit 1; }
}
stop() { kill -9 "$@" 2>/dev/null || true; wait "$@" 2>/dev/null || true; }

# cluster_port: a free loopback port below 55535 whose cluster bus port (+10000) is free too.
cluster_port() {
  python3 -c '
import random, socket
for _ in range(1000):
    p = random.randint(20000, 45000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
    except OSError:
        continue
    print(p); break'
}
# cpu_secs PID...: each process's user+system CPU seconds so far, space-separated.
cpu_secs() {
  local tck; tck=$(getconf CLK_TCK)
  for p in "$@"; do awk -v t="$tck" '{printf "%.2f ", ($14 + $15) / t}' "/proc/$p/stat"; done
}
# redis_cpu LABEL PIDS BEFORE: appends how much CPU each Redis process spent since BEFORE.
redis_cpu() {
  local label=$1 before=$3 after
  after=$(cpu_secs $2)
  python3 -c 'import sys; b=[float(x) for x in sys.argv[2].split()]; a=[float(x) for x in sys.argv[3].split()]; d=[y-x for x,y in zip(b,a)]; print(sys.argv[1] + ": redis CPU s per process " + " ".join("%.2f" % x for x in d) + ", total %.2f" % sum(d))' \
    "$label" "$before" "$after" | tee -a "$out/redis-cpu.txt"
}
# start_redis_cluster N NAME: N masters (no replicas) in cluster mode, joined with redis-cli;
# sets $seeds (comma-separated redis:// URLs) and $cpids.
start_redis_cluster() {
  local n=$1 name=$2 ports=() p
  cpids=()
  for i in $(seq "$n"); do
    p=$(cluster_port)
    mkdir -p "$out/logs/$name-$p"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$out/logs/$name-$p" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      >"$out/logs/$name-$p.log" 2>&1 &
    cpids+=("$!"); pids+=("$!"); ports+=("$p")
    for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 0 --cluster-yes \
    >"$out/logs/$name-create.log" 2>&1 || { echo "run.sh: redis-cli --cluster create failed:" >&2; tail -5 "$out/logs/$name-create.log" >&2; exit 1; }
  for _ in $(seq 100); do
    redis-cli -p "${ports[0]}" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1
  done
  seeds=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}"); seeds=${seeds%,}
}

# The PeerJS server (npm `peer`), the server most users would otherwise pick, installed once.
peerjs_dir=$root/target/bench-peerjs
if wants peerjs && [ ! -x "$peerjs_dir/node_modules/.bin/peerjs" ]; then
  command -v npm >/dev/null || { echo "run.sh: npm is needed for the PeerJS comparison (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$peerjs_dir"
  (cd "$peerjs_dir" && npm install --no-audit --no-fund --silent peer@1.0.2)
fi
# start_peerjs NAME: a PeerJS server on loopback (key `peerjs`, path `/`); sets $url and $pid.
start_peerjs() {
  local port; port=$(free_port)
  node "$peerjs_dir/node_modules/peer/dist/bin/peerjs.js" --host 127.0.0.1 --port "$port" --concurrent_limit 100000 \
    >"$out/logs/$1.out" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_for_line "$out/logs/$1.out" 'Started PeerServer' 100
  url=peerjs://127.0.0.1:$port
}

# measure LABEL ARGS...: one switchboard-load run; its JSON goes to $out/LABEL.json.
measure() {
  local label=$1; shift
  echo "== $label: switchboard-load $*" | tee -a "$out/commands.txt"
  local rc=0
  "$load_bin" "$@" --progress plain --json-out "$out/$label.json" >"$out/logs/$label.txt" 2>"$out/logs/$label.err" || rc=$?
  grep -E '^(result|  - )' "$out/logs/$label.txt" || true
  [ "$rc" -le 2 ] || { echo "run.sh: $label could not run (exit $rc):" >&2; tail -5 "$out/logs/$label.err" >&2; }
}

wait_quiet() {
  local waited=0
  while awk -v q="$quiet" '{exit !($1 >= q)}' /proc/loadavg && [ $waited -lt 600 ]; do
    sleep 15; waited=$((waited + 15))
  done
  echo "load average before repetition $1: $(cut -d' ' -f1-3 /proc/loadavg) (waited ${waited}s)" | tee -a "$out/commands.txt"
}

{
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "server: $server_bin ($("$server_bin" --version 2>/dev/null || true))"
  echo "repeats: $repeats"
} | tee "$out/machine.txt"

for r in $(seq "$repeats"); do
  wait_quiet "$r"
  # --- one instance, in-process bus ---------------------------------------------------------
  if wants connections; then
    for n in 1000 5000 10000; do
      start_server "conn-$n-r$r"
      measure "connections-$n-r$r" ceiling --run connections --url "$url" --participants "$n" --rooms $((n / 20)) --hold-secs 3 --concurrency 64
      stop "$pid"
    done
  fi
  if wants relay; then
    start_server "relay-r$r"
    measure "relay-ice-r$r" ceiling --run relay --url "$url" --pairs 50 --messages 2000 --size ice
    measure "relay-sdp-r$r" ceiling --run relay --url "$url" --pairs 50 --messages 500 --size sdp
    stop "$pid"
  fi
  if wants fanout; then
    start_server "fanout-r$r"
    measure "fanout-r$r" ceiling --run fanout --url "$url" --rooms 10 --room-size 10 --messages 200
    stop "$pid"
  fi
  if wants churn; then
    start_server "churn-r$r"
    measure "churn-r$r" ceiling --run churn --url "$url" --rooms 10 --churners 2 --cycles 20 --rate 500
    stop "$pid"
  fi
  if wants paced; then
    # Latency against offered rate, 100 senders, about 5 s per rate.
    start_server "paced-r$r"
    for rate in 250 2000 10000 20000 40000; do
      measure "paced-$rate-r$r" relay --url "$url" --pairs 50 --rate "$rate" --messages $(( rate / 20 > 10 ? rate / 20 : 10 ))
    done
    stop "$pid"
  fi
  if wants peerjs; then
    start_peerjs "peerjs-conn-r$r"
    measure "peerjs-connections-10000-r$r" connections --url "$url" --participants 10000 --hold-secs 3 --concurrency 64
    stop "$pid"
    start_peerjs "peerjs-relay-r$r"
    measure "peerjs-relay-ice-r$r" relay --url "$url" --pairs 50 --messages 2000 --size ice
    measure "peerjs-relay-sdp-r$r" relay --url "$url" --pairs 50 --messages 500 --size sdp
    stop "$pid"
  fi
  # --- three instances, one Redis -----------------------------------------------------------
  if wants redis; then
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$out/logs/redis-r$r.log" 2>&1 &
    rpid=$!; pids+=("$rpid")
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    urls=()
    spids=()
    for i in 1 2 3; do
      start_server "redis-$i-r$r" REDIS_URL="redis://127.0.0.1:$rport"
      urls+=("$url"); spids+=("$pid")
    done
    three=$(IFS=,; echo "${urls[*]}")
    measure "redis-relay-r$r" ceiling --run relay --url "$three" --pairs 50 --messages 2000 --redis-url "redis://127.0.0.1:$rport"
    measure "redis-fanout-r$r" fanout --url "$three" --rooms 10 --room-size 10 --messages 200
    measure "redis-churn-r$r" churn --url "$three" --rooms 10 --churners 2 --cycles 20 --rate 500
    for rate in 250 5000 20000; do
      measure "redis-paced-$rate-r$r" relay --url "$three" --pairs 50 --rate "$rate" --messages $(( rate / 20 > 10 ? rate / 20 : 10 ))
    done
    stop "${spids[@]}" "$rpid"
  fi
  # --- three instances: one Redis, then a 3-master Redis Cluster, same load ----------------
  if wants cluster; then
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$out/logs/one-redis-r$r.log" 2>&1 &
    rpid=$!; pids+=("$rpid")
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    urls=(); spids=()
    for i in 1 2 3; do
      start_server "one-redis-$i-r$r" REDIS_URL="redis://127.0.0.1:$rport"
      urls+=("$url"); spids+=("$pid")
    done
    for u in "${urls[@]}"; do
      for _ in $(seq 100); do curl -sf "$u/webrtc/health/ready" >/dev/null && break; sleep 0.1; done
    done
    three=$(IFS=,; echo "${urls[*]}")
    before=$(cpu_secs "$rpid")
    measure "one-redis-relay-r$r" relay --url "$three" --pairs 50 --messages 2000
    redis_cpu "one-redis-relay-r$r" "$rpid" "$before"
    before=$(cpu_secs "$rpid")
    measure "one-redis-fanout-r$r" fanout --url "$three" --rooms 10 --room-size 10 --messages 200
    redis_cpu "one-redis-fanout-r$r" "$rpid" "$before"
    stop "${spids[@]}" "$rpid"
    start_redis_cluster 3 "cluster-r$r"
    urls=(); spids=()
    for i in 1 2 3; do
      start_server "cluster-$i-r$r" REDIS_CLUSTER_URLS="$seeds"
      urls+=("$url"); spids+=("$pid")
    done
    # Ready means every master's canary came back: the subscriptions are in place.
    for u in "${urls[@]}"; do
      for _ in $(seq 100); do curl -sf "$u/webrtc/health/ready" >/dev/null && break; sleep 0.1; done
    done
    three=$(IFS=,; echo "${urls[*]}")
    before=$(cpu_secs "${cpids[@]}")
    measure "cluster-relay-r$r" relay --url "$three" --pairs 50 --messages 2000
    redis_cpu "cluster-relay-r$r" "${cpids[*]}" "$before"
    before=$(cpu_secs "${cpids[@]}")
    measure "cluster-fanout-r$r" fanout --url "$three" --rooms 10 --room-size 10 --messages 200
    redis_cpu "cluster-fanout-r$r" "${cpids[*]}" "$before"
    stop "${spids[@]}" "${cpids[@]}"
  fi
done
echo "results in $out (plots and tables: python3 load/bench/plot.py $out)"
