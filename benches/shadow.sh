#!/usr/bin/env bash
# Shadow traffic's cost to clients, side by side in one run: two gateways on the same
# release binary and the same live backend (5 ms), one serving a split model plainly
# (`plain`), the other mirroring 100 % of it to a shadow pool that answers in 500 ms
# (`mirror`). Runs interleaved (plain, mirror, plain, …), ROUNDS of DURATION each, wrk with
# CONNECTIONS; reports each run's requests/s, p50 and p99, the gateway's CPU time per client
# request (user + system from /proc/PID/stat over the run) and the copies sent and dropped.
#
# Usage: benches/shadow.sh [DURATION] [ROUNDS] [CONNECTIONS]      (defaults: 10s 3 8)
# Needs wrk. Builds into $CARGO_TARGET_DIR (release). Only 127.0.0.1; every process started
# here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-10s}
ROUNDS=${2:-3}
CONNS=${3:-8}
TARGET=${CARGO_TARGET_DIR:-target}
LIVE=127.0.0.1:18201
SHADOW=127.0.0.1:18202
PLAIN=127.0.0.1:18210
PLAIN_ADMIN=127.0.0.1:18211
MIRROR=127.0.0.1:18220
MIRROR_ADMIN=127.0.0.1:18221

command -v wrk >/dev/null || { echo "need wrk" >&2; exit 1; }
cargo build --release --quiet --bin switchyard --example mock_backend
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$TARGET/release/examples/mock_backend" --listen $LIVE --name live --latency-ms 5 --threads 2 >/dev/null 2>&1 &
PIDS+=($!)
"$TARGET/release/examples/mock_backend" --listen $SHADOW --name shadow --latency-ms 500 --threads 2 >/dev/null 2>&1 &
PIDS+=($!)

policy() { # $1 proxy, $2 admin, $3 shadow block (or empty)
    cat <<YAML
listeners: { proxy: $1, admin: $2, threads: 1 }
geoip: { database: embedded }
regions: { default: us, map: [ { name: us, continents: [NA] } ] }
rtt_ms: { us: { us: 1 } }
tiers:
  standard: { deadline: 5s, pools: [edge, gpu] }
pools:
  - { name: live, kind: edge, region: us, endpoints: [$LIVE], models: ["*"], concurrency: 4096, service_time: 5ms, price: { per_request: 0.00002 } }
  - { name: shadow, kind: gpu, region: us, endpoints: [$SHADOW], models: ["*"], concurrency: 100000, service_time: 500ms, price: { per_request: 0.0001 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, tier: standard }
models:
  llama-3-8b:
    versions:
      - { name: v1, weight: 100, pools: [live] }
      - { name: v2, weight: 0, pools: [shadow] }
$3
YAML
}
policy $PLAIN $PLAIN_ADMIN "" >"$WORK/plain.yaml"
policy $MIRROR $MIRROR_ADMIN "    shadow: { version: v2, percent: 100, max_in_flight: 100000 }" >"$WORK/mirror.yaml"
for name in plain mirror; do
    RUST_LOG=warn "$TARGET/release/switchyard" run --policy "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    eval "${name^^}_PID=$!"
done
sleep 2

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
printf '%-7s %5s %10s %9s %9s %14s %10s %10s\n' target round req/s p50 p99 cpu_us/req copies_sent dropped
for round in $(seq 1 "$ROUNDS"); do
    for name in plain mirror; do
        pid_var=${name^^}_PID; addr_var=${name^^}; admin_var=${name^^}_ADMIN
        pid=${!pid_var}
        before=$(ticks "$pid")
        out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s benches/post_1k.lua "http://${!addr_var}/v1/chat/completions")
        # Copies still in flight when the run ends are the mirror's too: wait for them.
        sleep 1.5
        after=$(ticks "$pid")
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p50=$(echo "$out" | awk '$1=="50%" {print $2}')
        p99=$(echo "$out" | awk '$1=="99%" {print $2}')
        cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
        report=$(curl -s "http://${!admin_var}/admin/rollouts")
        sent=$(echo "$report" | python3 -c 'import json,sys; s=json.load(sys.stdin)["models"]["llama-3-8b"]["shadow"]; print(s["sent"] if s else 0)')
        dropped=$(echo "$report" | python3 -c 'import json,sys; s=json.load(sys.stdin)["models"]["llama-3-8b"]["shadow"]; print(s["dropped_busy"] if s else 0)')
        printf '%-7s %5s %10s %9s %9s %14s %10s %10s\n' "$name" "$round" "$rps" "$p50" "$p99" "$cpu" "$sent" "$dropped"
    done
done
