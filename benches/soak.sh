#!/usr/bin/env bash
# The soak of issue #14 (not in CI; see "Soak" in benches/README.md): SOAK_RATE (500) sessions/s
# for SOAK_MINUTES (30) against the release gateway, run with its defaults plus admission limits
# opened for loopback load, and `qrlink simulate` with short QR lifetimes (3 QRs of 3 s: an
# unscanned intent times out after ~9 s). Roles: 40% hang up (detach, expire after the default
# 120 s grace), 20% detach/resume twice then cancel, 20% scanned, 20% wait for the timeout;
# SOAK_FAULTS (10) upstream faults/s scripted on the simulator. The gateway is read every 10 s;
# verdict: RSS, fds and tasks, mean over minutes 5-10 vs the last 5 minutes of load, within 10%.
# Then the gateway drains through the grace (back to 0 sessions, tasks and fds at the baseline).
#
#   cargo build --release --bins
#   benches/soak.sh                         # ~33 min; the JSON in $OUT/soak.json
#   SOAK_MINUTES=1 SOAK_STEADY=10s SOAK_WINDOW=20s SOAK_DRAIN=5s benches/soak.sh  # a try
#   benches/soak-plot.sh $OUT/soak.json benches/soak.png
#
# Environment: BIN (target/release), GW_PORT (3300), SIM_PORT (3400), OUT (a new folder under /tmp/qrlink-bench), SOAK_STEADY
# (300s: when the first window starts), SOAK_WINDOW (300s), SOAK_DRAIN (200s: the drain's
# bound, longer than the grace), LOAD_ARGS (extra qrlink-load flags). Loopback only; raises
# `ulimit -n` to 20000.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000

BIN=${BIN:-target/release}
RATE=${SOAK_RATE:-500}
MINUTES=${SOAK_MINUTES:-30}
OUT=${OUT:-/tmp/qrlink-bench/soak-$(date +%Y%m%d-%H%M%S)}
# Not run-figures.sh's ports: the soak may run while someone else measures.
GW_PORT=${GW_PORT:-3300} SIM_PORT=${SIM_PORT:-3400}
SIM_URL=http://127.0.0.1:$SIM_PORT
mkdir -p "$OUT"
echo "results in $OUT"

SIM= GW=
stop() {
  for pid in $GW $SIM; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
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

for port in "$SIM_PORT" "$GW_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is taken: another gateway or simulator runs (GW_PORT, SIM_PORT)" >&2
    exit 1
  fi
done
RUST_LOG=warn "$BIN/qrlink" simulate --listen "127.0.0.1:$SIM_PORT" --api-key k --qr-ttl 3s --qr-count 3 \
  >>"$OUT/simulator.log" 2>&1 &
SIM=$!
wait_port "$SIM_PORT"
# The defaults (HTTP/1.1 upstream, 120 s grace, ...) but the admission limits: all the load comes
# from 19 loopback addresses, and ~24,000 sessions are detached at any time (200 hang-ups/s ×
# 120 s) where the default --max-sessions is 10,000.
RUST_LOG=warn "$BIN/qrlink" --listen "127.0.0.1:$GW_PORT" --unipile-api-url "$SIM_URL" --unipile-api-key k \
  --max-sessions 100000 --max-sessions-per-ip 100000 --sessions-per-ip-per-minute 100000000 \
  >>"$OUT/gateway.log" 2>&1 &
GW=$!
wait_port "$GW_PORT"

N=$((RATE * MINUTES * 60))
# shellcheck disable=SC2086 # LOAD_ARGS is a list of flags
"$BIN/qrlink-load" --label "soak ${MINUTES}m" --json "$OUT/soak.json" --url "ws://127.0.0.1:$GW_PORT" \
  --soak --soak-mix 40,20,20,20 --soak-faults "${SOAK_FAULTS:-10}" --soak-sample-every 10s \
  --soak-steady-after "${SOAK_STEADY:-300s}" --soak-window "${SOAK_WINDOW:-300s}" \
  --resume-cycles 2 --resume-pause-ms 200 --scan-after-ms 500 --timeout-wait 30s \
  --sessions "$N" --rate "$RATE" --warmup 2000 --concurrency 4000 --sample-every 1s \
  --sim-url "$SIM_URL" --source-ips 127.0.0.2-127.0.0.20 --gateway-pid "$GW" --sim-pid "$SIM" \
  --duration-limit "$((MINUTES * 60 + 60))s" --drain-timeout "${SOAK_DRAIN:-200s}" ${LOAD_ARGS:-} \
  | tee "$OUT/table.txt"
