#!/usr/bin/env bash
# Instructions the server executes per relayed message and per join, counted by callgrind:
# repeatable on a loaded, shared machine, where wall-clock rates are not. Each figure is the
# difference between a small and a large run of the same scenario divided by the difference in
# work, so start-up, shutdown and the joins of a relay run cancel out.
#
#   load/bench/callgrind.sh relay|joins|across [OUT]     default OUT: target/callgrind/<UTC timestamp>
#   SERVER_BIN=path  switchboard-server (default: target/release/switchboard-server)
#   LOAD_BIN=path    switchboard-load (default: target/release/switchboard-load)
#   CEILING=1        also count the ceiling relay (`switchboard-load serve-ceiling`) on the same load
#
# relay:  5 pairs, 400 then 1,200 messages per side (200 B): (I_1200 - I_400) / 8,000
# joins:  200 then 600 idle participants, 20 per room:     (I_600 - I_200) / 400
# across: relay with the pairs split over two servers on one redis-server; both servers' counts
#         added up (the ceiling has no bus: CEILING is ignored)
# Profiles stay in OUT for `callgrind_annotate --inclusive=yes OUT/<file>`.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
what=${1:?relay, joins or across}
out=${2:-$root/target/callgrind/$(date -u +%Y%m%dT%H%M%SZ)}
server_bin=${SERVER_BIN:-$root/target/release/switchboard-server}
load_bin=${LOAD_BIN:-$root/target/release/switchboard-load}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
mkdir -p "$out"
export JWT_SECRET=callgrind-secret-0123456789abcdef0123456789ab
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
refs() { sed -n 's/.*I *refs: *//p' "$1" | tr -d , | head -1; }

# server NAME [ENV=VALUE...]: a server under callgrind, rate limits lifted; sets $url and $vpid.
server() {
  local name=$1; shift
  env "$@" WEBRTC_RATE_LIMIT_PER_SECOND=1000000 WEBRTC_RATE_LIMIT_BURST=1000000 \
    WEBRTC_RATE_LIMIT_BYTES_PER_SECOND=1000000000 WEBRTC_RATE_LIMIT_BYTES_BURST=1000000000 \
    SWITCHBOARD_MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$out/$name.cg" "$server_bin" --listen 127.0.0.1:0 \
    >"$out/$name.out" 2>"$out/$name.err" &
  vpid=$!; pids+=("$vpid")
  for _ in $(seq 900); do grep -q '^listening on' "$out/$name.out" 2>/dev/null && break; sleep 0.1; done
  url=http://$(sed -n 's/^listening on //p' "$out/$name.out")
  [ "$url" != "http://" ] || { echo "callgrind.sh: server $name did not start" >&2; cat "$out/$name.err" >&2; exit 1; }
}
# ceiling NAME: the ceiling relay under callgrind; sets $url and $vpid.
ceiling() {
  local port; port=$(free_port)
  SWITCHBOARD_LOAD_CEILING_SECRET=$(printf %s "$JWT_SECRET" | od -An -tx1 | tr -d ' \n') \
    valgrind --tool=callgrind --callgrind-out-file="$out/$1.cg" "$load_bin" serve-ceiling --listen "127.0.0.1:$port" \
    >"$out/$1.out" 2>"$out/$1.err" &
  vpid=$!; pids+=("$vpid")
  for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  url=http://127.0.0.1:$port
}
# stop PID...: SIGINT (callgrind writes its profile at exit), SIGTERM if that is not enough.
stop() {
  kill -INT "$@" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$@" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
}
load() { "$load_bin" "$@" --progress none >>"$out/load.txt" 2>&1; }
args_for() {
  case $what in
    relay|across) echo "relay --pairs 5 --size ice --messages $1" ;;
    joins) echo "connections --participants $1 --rooms $(($1 / 20)) --hold-secs 1" ;;
  esac
}
case $what in
  relay|across) small=400; large=1200; work=8000; unit=message ;;
  joins) small=200; large=600; work=400; unit=join ;;
  *) echo "callgrind.sh: relay, joins or across" >&2; exit 1 ;;
esac

count() {  # count TARGET SIZE: instructions of one run
  local target=$1 n=$2 name=$1-$2
  case $target in
    switchboard)
      if [ "$what" = across ]; then
        local rport; rport=$(free_port)
        redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$out/redis-$n.log" 2>&1 &
        local rpid=$!; pids+=("$rpid")
        for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
        server "$name-a" REDIS_URL="redis://127.0.0.1:$rport"; local a=$vpid ua=$url
        server "$name-b" REDIS_URL="redis://127.0.0.1:$rport"; local b=$vpid ub=$url
        # shellcheck disable=SC2046
        load $(args_for "$n") --url "$ua,$ub"
        stop "$a" "$b"; kill "$rpid"; wait "$rpid" 2>/dev/null || true
        echo $(( $(refs "$out/$name-a.err") + $(refs "$out/$name-b.err") ))
      else
        server "$name"; local p=$vpid
        # shellcheck disable=SC2046
        load $(args_for "$n") --url "$url"
        stop "$p"
        refs "$out/$name.err"
      fi ;;
    ceiling)
      ceiling "$name"; local p=$vpid
      # shellcheck disable=SC2046
      load $(args_for "$n") --url "$url"
      stop "$p"
      refs "$out/$name.err" ;;
  esac
}
targets=(switchboard)
[ "${CEILING:-0}" = 1 ] && [ "$what" != across ] && targets+=(ceiling)
for t in "${targets[@]}"; do
  i_small=$(count "$t" "$small"); i_large=$(count "$t" "$large")
  echo "$what $t: $(( (i_large - i_small) / work )) instructions per $unit ($i_small at $small, $i_large at $large)" | tee -a "$out/summary.txt"
done
