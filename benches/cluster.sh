#!/usr/bin/env bash
# Cluster mode's figures (issue #10, benches/README.md "Cluster"): three gateway nodes and one
# redis-server on this machine, one simulator behind them, qrlink-load in front.
#
#   cargo build --release --bins
#   benches/cluster.sh                 # every scenario
#   benches/cluster.sh rate            # some of them
#
# Scenarios:
#   rate    three load generators at RATE/3 each (RATE 2100/s), one per node, for 30 s, sessions
#           cancelled after their first QR: new sessions/s and first-QR latency across the
#           cluster, and Redis commands per link attempt (INFO commandstats before and after).
#   hold    3 × HOLD_N (3000) sessions held 30 s, one generator per node: Redis memory per open
#           session (INFO memory, used_memory at the plateau − before) and commands per attempt
#           with its QR frame.
#   resume  HOLD_N sessions held on node 1, and among them 100 that each hang up and resume
#           on node 2, then on node 1, … (every resume moves it), 20 cycles:
#           cross-node resume → replayed frame.
#   kill    HOLD_N sessions held on node 1 (long hold); once every one is open (Redis's set of
#           sessions), `kill -9` of node 1; the generator (`--resume-on-drop`) resumes every
#           dropped session on nodes 2 and 3 on the link page's schedule: resumed, lost, and
#           drop (socket lost, seen by the client) → replayed frame p50/p90/p99/max.
# Its own ports (simulator 3190, nodes 3191–3193, Redis 6391) and source addresses
# (127.0.0.21–50), so it can run beside run-figures.sh. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000

BIN=${BIN:-target/release}
RATE=${RATE:-2100}
HOLD_N=${HOLD_N:-3000}
OUT=${OUT:-/tmp/qrlink-cluster/$(date +%Y%m%d-%H%M%S)}
SIM_URL=http://127.0.0.1:3190
REDIS_PORT=6391
mkdir -p "$OUT"
echo "results in $OUT"

PIDS=()
stop() { # the generators' targets first, Redis last (a node stopping finds it up)
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[$i]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap stop EXIT

wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

redis() { redis-cli -p $REDIS_PORT "$@"; }

port_free() { # refuse to start beside something else on our ports: wait_port would find it
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port $1 is taken by another process" >&2
    return 1
  fi
}

start_all() {
  for port in $REDIS_PORT 3190 3191 3192 3193; do port_free $port; done
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no \
    >>"$OUT/redis.log" 2>&1 &
  PIDS+=($!)
  wait_port $REDIS_PORT
  RUST_LOG=warn "$BIN/qrlink" simulate --listen 127.0.0.1:3190 --api-key k --qr-ttl 60s \
    >>"$OUT/simulator.log" 2>&1 &
  PIDS+=($!)
  wait_port 3190
  NODES=()
  for n in 1 2 3; do
    RUST_LOG=warn "$BIN/qrlink" --listen 127.0.0.1:319$n --unipile-api-url "$SIM_URL" \
      --unipile-api-key k --max-sessions 100000 --max-sessions-per-ip 100000 \
      --sessions-per-ip-per-minute 100000000 --upstream-http "${UPSTREAM_HTTP:-2}" \
      --redis-url redis://127.0.0.1:$REDIS_PORT --node-id node$n ${GW_ARGS:-} \
      >>"$OUT/node$n.log" 2>&1 &
    PIDS+=($!)
    NODES+=($!)
    wait_port 319$n
  done
}

commands() { # total Redis commands so far (INFO commandstats)
  redis INFO commandstats | awk -F'[=,:]' '/^cmdstat_/ {n += $3} END {print n + 0}'
}

node_get() { # node n's PATH (/metrics, /healthz)
  curl -fsS "http://127.0.0.1:319$1$2" || true
}

used_memory() {
  redis INFO memory | awk -F: '/^used_memory:/ {print $2 + 0}'
}

load() { # name node source-ips args...
  local name=$1 node=$2 src=$3
  shift 3
  "$BIN/qrlink-load" --label "$name@node$node" --json "$OUT/$name-node$node.json" \
    --url ws://127.0.0.1:319$node --source-ips "$src" --gateway-pid "${NODES[$((node - 1))]}" "$@" \
    >"$OUT/$name-node$node.txt" 2>&1
}

SRC=(127.0.0.21-127.0.0.30 127.0.0.31-127.0.0.40 127.0.0.41-127.0.0.50)

scenario() {
  local name=$1
  start_all
  case $name in
    rate)
      local c0 c1 n=$((RATE / 3 * 30))
      c0=$(commands)
      local loads=()
      for node in 1 2 3; do
        load rate $node "${SRC[$((node - 1))]}" --sessions $n --rate $((RATE / 3)) --warmup 300 \
          --concurrency 4000 --hold-ms 0 --duration-limit 90s &
        loads+=($!)
      done
      wait "${loads[@]}"
      c1=$(commands)
      echo "rate: $((3 * n)) sessions (and 900 warm-up), Redis commands $c0 -> $c1" | tee -a "$OUT/summary.txt"
      ;;
    hold)
      local c0 c1 m0 m1
      c0=$(commands)
      m0=$(used_memory)
      local loads=()
      for node in 1 2 3; do
        load hold $node "${SRC[$((node - 1))]}" --sessions "$HOLD_N" --rate 300 --warmup 0 \
          --concurrency 20000 --hold-ms 30000 --duration-limit 120s &
        loads+=($!)
      done
      # The plateau: every session open (3 × HOLD_N), read while they are held.
      for _ in $(seq 600); do
        open=$(redis SCARD qrlink:sessions)
        [ "$open" -ge $((3 * HOLD_N)) ] && break
        sleep 0.1
      done
      m1=$(used_memory)
      c1=$(commands)
      echo "hold: $open sessions open; Redis used_memory $m0 -> $m1 bytes:" \
        "$(( (m1 - m0) / open )) bytes per open session; commands $c0 -> $c1:" \
        "$(( (c1 - c0) / open )) per session (open + first qr)" | tee -a "$OUT/summary.txt"
      wait "${loads[@]}"
      ;;
    resume)
      load resume 1 "${SRC[0]}" --resume-url ws://127.0.0.1:3192 --sessions $((HOLD_N + 100)) \
        --rate 300 --warmup 0 --concurrency 20000 --hold-ms 30000 --resume-sample 100 \
        --resume-cycles 20 --resume-after-ms 10000 --resume-pause-ms 200 --duration-limit 120s
      grep -E 'resume|replay' "$OUT/resume-node1.txt" | tee -a "$OUT/summary.txt"
      ;;
    kill)
      load kill 1 "${SRC[0]}" --sessions "$HOLD_N" --rate 300 --warmup 0 --concurrency 20000 \
        --hold-ms 60000 --resume-on-drop ws://127.0.0.1:3192,ws://127.0.0.1:3193 \
        --duration-limit 150s &
      local gen=$! issued=0 pending=1
      # Every session has its first qr frame (with the resume token), and node 1 has written
      # everything to Redis (what a resume elsewhere reads; `pending_writes` of its /healthz):
      # polled, bounded to 60 s.
      for _ in $(seq 600); do
        issued=$(node_get 1 /metrics | awk '/^qrlink_qr_issued_total/ {q += $NF} END {print q + 0}')
        pending=$(node_get 1 /healthz | grep -o '"pending_writes":[0-9]*' | cut -d: -f2)
        pending=${pending:-1}
        [ "$issued" -ge "$HOLD_N" ] && [ "$pending" -eq 0 ] && break
        sleep 0.1
      done
      local open
      open=$(redis SCARD qrlink:sessions)
      local victim=${NODES[0]} ttl
      # What is left of node 1's heartbeat (TTL 2 s, renewed every 0.5 s): a resume elsewhere
      # waits for it to go, so the figure follows it.
      ttl=$(redis PTTL qrlink:node:node1)
      kill -9 "$victim"
      echo "kill: $open sessions open, $issued first QRs issued on node1; kill -9 at" \
        "$(date -u +%T), its heartbeat had $ttl ms left; load average" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
      wait "$victim" 2>/dev/null || true
      local left=()
      for pid in "${PIDS[@]}"; do [ "$pid" = "$victim" ] || left+=("$pid"); done
      PIDS=("${left[@]}")
      wait "$gen" || true
      grep -E 'resume on drop|drop -> replay|lost:|retried:' "$OUT/kill-node1.txt" |
        tee -a "$OUT/summary.txt"
      ;;
  esac
  for f in "$OUT/$name"-node*.txt; do
    echo "== $f" >>"$OUT/tables.txt"
    cat "$f" >>"$OUT/tables.txt"
  done
  stop
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(rate hold resume kill)
for s in "${scenarios[@]}"; do
  scenario "$s"
done
cat "$OUT/summary.txt"
