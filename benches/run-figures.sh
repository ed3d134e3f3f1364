#!/usr/bin/env bash
# Measures the figures of issue #6 (see benches/README.md): for each scenario, RUNS runs, each
# against a freshly started simulator and gateway (or Express peer), then the medians.
#
#   cargo build --release --bins && (cd benches/peer-express && npm ci)
#   benches/run-figures.sh                 # every scenario
#   benches/run-figures.sh rate hold9k     # some of them
#
# Scenarios: rate, hold1k, hold9k, express1k, express9k; for comparing settings: hold3k (memory),
# cpu (800 sessions/s for 10 s, no hold); churn (CHURN_N sessions, 100000, opened and closed at
# CHURN_RATE, 500/s, after a CHURN_WARMUP, 5000, session warm-up: leaked sessions, tasks, fds, RSS).
# Resume (protocol v1.1; the gateway runs its default grace, 120 s): resume9k (resume → replay
# latency with 9,000 held sessions around), detach9k (memory per detached session: 9,000 held,
# then hung up), resume (RESUME_N sessions, 2000, of RESUME_CYCLES detach/resume cycles, 20, then
# cancel: leaked sessions, tasks, fds, RSS). Environment: RUNS (3), RATE (3000, the rate scenario),
# HOLD_RATE (500, the hold and express scenarios),
# BIN (target/release), GW_BIN (the gateway's qrlink only, default BIN: another build to compare,
# with this tree's simulator and load generator), OUT (a new folder under /tmp/qrlink-bench), GW_ENV (extra environment
# for the gateway, e.g. "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"), GW_ARGS
# (extra gateway flags), UPSTREAM_HTTP (the gateway's --upstream-http; unset: its default,
# auto), SIM_TLS (1, the default: the simulator serves HTTPS with a self-signed certificate, as
# Unipile is HTTPS, and the gateway and the Express peer trust it through --upstream-ca-file and
# NODE_EXTRA_CA_CERTS; 0: plain HTTP, as the figures before issue #13 were measured), SIM_ALPN
# (both, h2 or http/1.1: what the TLS simulator offers), GW_PORT, SIM_PORT, PEER_PORT (3000,
# 3100, 3200), LOAD_ARGS (extra qrlink-load flags, e.g. "--settle 12s"). Loopback only; needs
# `ulimit -n 20000` to be allowed (it raises it).
# The 30-minute soak of issue #14 is benches/soak.sh (its own ports, its own simulator settings).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000

BIN=${BIN:-target/release}
RUNS=${RUNS:-3}
RATE=${RATE:-3000}
OUT=${OUT:-/tmp/qrlink-bench/$(date +%Y%m%d-%H%M%S)}
SRC=127.0.0.2-127.0.0.20
GW_PORT=${GW_PORT:-3000}
SIM_PORT=${SIM_PORT:-3100}
PEER_PORT=${PEER_PORT:-3200}
SIM_TLS=${SIM_TLS:-1}
SIM_ALPN=${SIM_ALPN:-both}
# The load generator reaches the simulator's control API over plain HTTP (the TLS simulator
# serves it on the same port); the gateway and the peer reach the Unipile API as configured.
SIM_URL=http://127.0.0.1:$SIM_PORT
UPSTREAM_URL=$SIM_URL
CERT=
mkdir -p "$OUT"
if [ "$SIM_TLS" = 1 ]; then
  UPSTREAM_URL=https://127.0.0.1:$SIM_PORT
  CERT=$OUT/simulator-cert.pem
fi
echo "results in $OUT"

SIM= GW=
stop() {
  for pid in $GW $SIM; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  SIM= GW=
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

start_sim() {
  local tls=()
  [ "$SIM_TLS" = 1 ] && tls=(--tls --cert-out "$CERT" --alpn "$SIM_ALPN")
  RUST_LOG=warn "$BIN/qrlink" simulate --listen "127.0.0.1:$SIM_PORT" --api-key k --qr-ttl 60s \
    "${tls[@]}" >>"$OUT/simulator.log" 2>&1 &
  SIM=$!
  wait_port "$SIM_PORT"
}

start_gateway() {
  # Admission limits opened up: all the load comes from 19 loopback addresses.
  local upstream=()
  [ -n "$CERT" ] && upstream+=(--upstream-ca-file "$CERT")
  [ -n "${UPSTREAM_HTTP:-}" ] && upstream+=(--upstream-http "$UPSTREAM_HTTP")
  # shellcheck disable=SC2086 # GW_ENV and GW_ARGS are lists
  env RUST_LOG=warn ${GW_ENV:-} "${GW_BIN:-$BIN}/qrlink" --listen "127.0.0.1:$GW_PORT" \
    --unipile-api-url "$UPSTREAM_URL" --unipile-api-key k \
    --max-sessions 100000 --max-sessions-per-ip 100000 \
    --sessions-per-ip-per-minute 100000000 "${upstream[@]}" ${GW_ARGS:-} \
    >>"$OUT/gateway.log" 2>&1 &
  GW=$!
  wait_port "$GW_PORT"
}

start_express() {
  # Node's fetch trusts the simulator's certificate as Node trusts any extra root.
  env ${CERT:+NODE_EXTRA_CA_CERTS=$CERT} UNIPILE_API_URL="$UPSTREAM_URL" UNIPILE_API_KEY=k \
    PORT="$PEER_PORT" node benches/peer-express/server.js >>"$OUT/express.log" 2>&1 &
  GW=$!
  wait_port "$PEER_PORT"
}

load() { # name run args...
  local name=$1 run=$2
  shift 2
  echo "== $name run $run" | tee -a "$OUT/tables.txt"
  # shellcheck disable=SC2086 # LOAD_ARGS is a list of flags
  "$BIN/qrlink-load" --label "$name#$run" --json "$OUT/$name-$run.json" "$@" ${LOAD_ARGS:-} \
    | tee -a "$OUT/tables.txt"
}

scenario() {
  local name=$1 i
  for i in $(seq "$RUNS"); do
    start_sim
    case $name in
      rate)
        start_gateway
        load "$name" "$i" --url ws://127.0.0.1:$GW_PORT --sessions $((RATE * 30)) --rate "$RATE" --warmup 500 \
          --concurrency 2000 --hold-ms 0 --source-ips $SRC --gateway-pid "$GW" --sim-pid "$SIM" \
          --duration-limit 90s ;;
      cpu)
        start_gateway
        load "$name" "$i" --url ws://127.0.0.1:$GW_PORT --sessions 8000 --rate 800 --warmup 400 \
          --concurrency 2000 --hold-ms 0 --source-ips $SRC --gateway-pid "$GW" --sim-pid "$SIM" \
          --duration-limit 60s ;;
      churn)
        # ~200 s of churn; the drain waits (an event, bounded) until the gateway's sessions are
        # 0 and its tasks and fds are back to the baseline taken after the warm-up. The gateway
        # runs its default resume grace (120 s): the 90% that close or drop stay detached that
        # long, so the drain (and the wait after the warm-up) take about 2 minutes more.
        start_gateway
        load "$name" "$i" --url ws://127.0.0.1:$GW_PORT --churn --churn-mix 80,10,10 \
          --sessions "${CHURN_N:-100000}" --rate "${CHURN_RATE:-500}" --warmup "${CHURN_WARMUP:-5000}" \
          --concurrency 2000 --source-ips $SRC --gateway-pid "$GW" --sim-pid "$SIM" \
          --duration-limit 300s --drain-timeout 200s ;;
      hold3k)
        start_gateway
        load "$name" "$i" --url ws://127.0.0.1:$GW_PORT --sessions 3000 --rate 500 --warmup 200 \
          --concurrency 20000 --hold-ms 10000 --source-ips $SRC --gateway-pid "$GW" \
          --sim-pid "$SIM" --duration-limit 60s ;;
      hold1k | hold9k)
        local n=1000 hold=15000 scan=8000 hang=6000
        [ "$name" = hold9k ] && n=9000 hold=40000 scan=20000 hang=19000
        start_gateway
        load "$name" "$i" --url ws://127.0.0.1:$GW_PORT --sessions $n --rate "${HOLD_RATE:-500}" --warmup 200 --concurrency 20000 \
          --hold-ms $hold --scan-after-ms $scan --scan-sample 100 --hangup-sample 100 \
          --hangup-after-ms $hang --sim-url $SIM_URL --source-ips $SRC --gateway-pid "$GW" \
          --sim-pid "$SIM" --duration-limit 120s ;;
      resume9k)
        # 9,000 sessions held (45 s) and, among them, 100 that each do 20 detach/resume cycles
        # (200 ms between hang-up and resume, close and drop alternating) from 20 s after
        # their first QR, when all 9,000 are open.
        start_gateway
        load "$name" "$i" --url ws://127.0.0.1:$GW_PORT --sessions 9100 --rate "${HOLD_RATE:-500}" --warmup 200 \
          --concurrency 20000 --hold-ms 45000 --resume-sample 100 --resume-cycles 20 \
          --resume-after-ms 20000 --resume-pause-ms 200 --source-ips $SRC --gateway-pid "$GW" \
          --sim-pid "$SIM" --duration-limit 120s ;;
      detach9k)
        # 9,000 sessions held 25 s (the plateau: attached), then hung up (1001): the reading
        # 5 s after the last has them all detached (the grace is 120 s). DETACH_HOLD_MS=0 hangs
        # each up right after its first QR: no high-water of 9,000 attached sessions under the
        # detached ones.
        start_gateway
        load "$name" "$i" --url ws://127.0.0.1:$GW_PORT --sessions 9000 --rate "${HOLD_RATE:-500}" --warmup 200 \
          --concurrency 20000 --hold-ms "${DETACH_HOLD_MS:-25000}" --settle 5s --source-ips $SRC --gateway-pid "$GW" \
          --sim-pid "$SIM" --duration-limit 120s ;;
      resume)
        start_gateway
        load "$name" "$i" --url ws://127.0.0.1:$GW_PORT --sessions "${RESUME_N:-2000}" --rate 200 --warmup 200 \
          --concurrency 100 --resume-cycles "${RESUME_CYCLES:-20}" --source-ips $SRC \
          --gateway-pid "$GW" --sim-pid "$SIM" --duration-limit 300s --drain-timeout 60s ;;
      express1k | express9k)
        local n=1000 hold=15000 scan=8000 hang=6000
        [ "$name" = express9k ] && n=9000 hold=40000 scan=20000 hang=19000
        start_express
        load "$name" "$i" --mode express --url http://127.0.0.1:$PEER_PORT --sessions $n --rate "${HOLD_RATE:-500}" --warmup 200 \
          --concurrency 20000 --hold-ms $hold --scan-after-ms $scan --scan-sample 100 \
          --hangup-sample 100 --hangup-after-ms $hang --sim-url $SIM_URL --source-ips $SRC \
          --gateway-pid "$GW" --sim-pid "$SIM" --duration-limit 120s ;;
      *) echo "unknown scenario $name" >&2; exit 2 ;;
    esac
    stop
  done
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(rate hold1k hold9k express1k express9k)
for s in "${scenarios[@]}"; do
  uptime | tee -a "$OUT/tables.txt"
  scenario "$s"
done

# Medians over the runs of each scenario.
for s in "${scenarios[@]}"; do
  jq -s --arg s "$s" '
    def median: sort | .[(length - 1) / 2 | floor];
    {scenario: $s, runs: length,
     achieved_per_s: (map(.rate.achieved_per_s) | median),
     sustained_min_per_s: (map(.rate.sustained_min_per_s) | median),
     first_qr_p50_ms: (map(.latency_ms.first_qr.p50) | median),
     first_qr_p99_ms: (map(.latency_ms.first_qr.p99) | median),
     frame_p99_ms: (map(.latency_ms.frame.p99) | median),
     hangup_p99_ms: (map(.latency_ms.hangup_to_upstream_closed.p99) | median),
     hangups_upstream_still_open: (map(.hangups.upstream_still_open) | median),
     rss_per_open_session_kib: (map(.gateway.rss_per_open_session_kib) | median),
     rss_slope_kib: (map(.gateway.rss_slope_kib_per_session // 0) | median),
     cpu_ms_per_session_to_plateau: (map(.gateway.cpu_ms_per_session_to_plateau) | median),
     cpu_ms_per_session_total: (map(.gateway.cpu_ms_per_session_total) | median),
     failed: (map(.sessions.failed) | add)}
    + (if $s == "churn" then
        {leaked_sessions: (map(.churn.leaked_sessions) | max),
         leaked_tasks: (map(.churn.leaked_tasks) | median),
         leaked_fds: (map(.churn.leaked_fds) | median),
         rss_ratio: (map(.churn.rss_ratio) | median),
         peak_rss_kib: (map(.churn.peak_rss_kib) | median),
         verdicts_failed: (map(.churn.verdicts[] | select(.pass | not) | .criterion) | unique)}
      else {} end)
    + (if .[0].resume then
        {resume_cycles_done: (map(.resume.cycles_done) | add),
         resume_to_replay_p50_ms: (map(.resume.resume_to_replay_ms.p50) | median),
         resume_to_replay_p99_ms: (map(.resume.resume_to_replay_ms.p99) | median),
         upgrade_to_replay_p99_ms: (map(.resume.upgrade_to_replay_ms.p99) | median),
         resume_failures: (map(.resume.failures | to_entries[]) | group_by(.key)
           | map({key: .[0].key, value: (map(.value) | add)}) | from_entries),
         resume_verdicts_failed: (map(.resume.leak.verdicts[]? | select(.pass | not) | .criterion) | unique)}
      else {} end)
    + (if .[0].detached then
        {detached: (map(.detached.after - .detached.before) | median),
         rss_per_detached_session_kib: (map(.detached.rss_per_detached_session_kib) | median)}
      else {} end)' "$OUT/$s"-*.json
done | tee "$OUT/medians.json"
