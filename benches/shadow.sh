#!/usr/bin/env bash
# Shadow traffic's cost to clients, side by side in one run: two gateways on the same
# release binary and the same live backend (5 ms), one serving a split model plainly
# (`plain`), the other mirroring 100 % of it to a shadow pool that answers in 500 ms
# (`mirror`). Runs interleaved (plain, mirror, plain, …), ROUNDS of DURATION each, wrk with
# CONNECTIONS; reports each run's requests/s, p50 and p99, the gateway's CPU time per client
# request (user + system from /proc/PID/stat over the run) and the shadow thread's part of it
# (its /proc/PID/task/TID/stat: what the copies cost on their own thread), the copies sent and dropped and
# the TCP connections the shadow backend accepted during the run (keep-alive reuse: 0 once
# the copies' connections are open).
#
# ALT_BIN=PATH adds a third gateway, `alt`: another build (e.g. main's) mirroring the same
# way, timed in the same rounds, so two builds compare side by side on one machine state.
# INSTR=1 counts user-space instructions per client request instead (callgrind, each
# gateway alone: valgrind serialises its threads, so the figure does not depend on the
# machine's load; see benches/instructions.sh): a 3 s warm-up, DURATION counted, then the
# copies still in flight are waited for inside the count. KEEP=DIR keeps the callgrind files
# (`callgrind_annotate --inclusive=yes DIR/cg.mirror.*`: where a copy's instructions go).
#
# Usage: benches/shadow.sh [DURATION] [ROUNDS] [CONNECTIONS]      (defaults: 10s 3 8)
# Needs wrk (and valgrind for INSTR=1). Builds into $CARGO_TARGET_DIR (release). Only
# 127.0.0.1; every process started here is stopped on exit.
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
ALT=127.0.0.1:18230
ALT_ADMIN=127.0.0.1:18231
ALT_BIN=${ALT_BIN:-}
INSTR=${INSTR:-}

command -v wrk >/dev/null || { echo "need wrk" >&2; exit 1; }
cargo build --release --quiet --bin switchyard --example mock_backend
WORK=$(mktemp -d)
PIDS=()
KEEP=${KEEP:-}
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "$KEEP" ] && mkdir -p "$KEEP" && cp "$WORK"/cg.* "$KEEP"/ 2>/dev/null; rm -rf "$WORK"' EXIT

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
policy $ALT $ALT_ADMIN "    shadow: { version: v2, percent: 100, max_in_flight: 100000 }" >"$WORK/alt.yaml"
NAMES="plain mirror"
[ -z "$ALT_BIN" ] || NAMES="plain mirror alt"
bin() { if [ "$1" = alt ]; then echo "$ALT_BIN"; else echo "$TARGET/release/switchyard"; fi; }
shadow_conns() { curl -s "http://$SHADOW/_mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])'; }
copies() { # $1 admin address, $2 field
    curl -s "http://$1/admin/rollouts" | python3 -c "import json,sys; s=json.load(sys.stdin)['models']['llama-3-8b']['shadow']; print(s['$2'] if s else 0)"
}

if [ -n "$INSTR" ]; then
    command -v callgrind_control >/dev/null || { echo "need valgrind" >&2; exit 1; }
    printf '%-7s %9s %12s %12s %10s\n' target requests instr/req copies_sent dropped
    for name in $NAMES; do
        addr_var=${name^^}; admin_var=${name^^}_ADMIN
        RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.$name.%p" \
            "$(bin $name)" run --policy "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
        vp=$!
        PIDS+=($vp)
        for _ in $(seq 200); do curl -s -o /dev/null "http://${!admin_var}/admin/rollouts" && break; sleep 0.2; done
        wrk -t1 -c"$CONNS" -d3s -s benches/post_1k.lua "http://${!addr_var}/v1/chat/completions" >/dev/null
        sleep 3
        sent0=$(copies "${!admin_var}" sent)
        callgrind_control -i on "$vp" >/dev/null 2>&1
        out=$(wrk -t1 -c"$CONNS" -d"$DURATION" -s benches/post_1k.lua "http://${!addr_var}/v1/chat/completions")
        # The copies of the counted requests finish inside the count.
        for _ in $(seq 100); do [ "$(copies "${!admin_var}" in_flight)" = 0 ] && break; sleep 0.2; done
        callgrind_control -i off "$vp" >/dev/null 2>&1
        callgrind_control -d "$vp" >/dev/null 2>&1
        sent=$(( $(copies "${!admin_var}" sent) - sent0 ))
        dropped=$(copies "${!admin_var}" dropped_busy)
        kill -KILL "$vp"; wait "$vp" 2>/dev/null || true
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        ir=$(cat "$WORK"/cg."$name".* | awk '/^summary:|^totals:/ {s += $2} END {print s}')
        printf '%-7s %9s %12s %12s %10s\n' "$name" "$reqs" $((ir / reqs)) "$sent" "$dropped"
    done
    exit 0
fi

for name in $NAMES; do
    RUST_LOG=warn "$(bin $name)" run --policy "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    eval "${name^^}_PID=$!"
done
sleep 2

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The shadow thread's own ticks (0 without one): what the copies cost, apart from the
# proxy threads' share of the request.
shadow_ticks() {
    local t s=0
    for t in /proc/"$1"/task/*; do
        [ "$(cat "$t/comm" 2>/dev/null)" = shadow ] || continue
        s=$((s + $(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')))
    done
    echo "$s"
}
HZ=$(getconf CLK_TCK)
printf '%-7s %5s %10s %9s %9s %14s %14s %10s %10s %8s\n' target round req/s p50 p99 cpu_us/req shadow_us/req copies_sent dropped conns
for round in $(seq 1 "$ROUNDS"); do
    for name in $NAMES; do
        pid_var=${name^^}_PID; addr_var=${name^^}; admin_var=${name^^}_ADMIN
        pid=${!pid_var}
        before=$(ticks "$pid")
        sbefore=$(shadow_ticks "$pid")
        conns0=$(shadow_conns)
        out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s benches/post_1k.lua "http://${!addr_var}/v1/chat/completions")
        # Copies still in flight when the run ends are the mirror's too: wait for them.
        sleep 1.5
        after=$(ticks "$pid")
        safter=$(shadow_ticks "$pid")
        conns=$(( $(shadow_conns) - conns0 - 1 )) # (less the stats request itself)
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p50=$(echo "$out" | awk '$1=="50%" {print $2}')
        p99=$(echo "$out" | awk '$1=="99%" {print $2}')
        cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
        scpu=$(awk -v t=$((safter - sbefore)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
        sent=$(copies "${!admin_var}" sent)
        dropped=$(copies "${!admin_var}" dropped_busy)
        printf '%-7s %5s %10s %9s %9s %14s %14s %10s %10s %8s\n' "$name" "$round" "$rps" "$p50" "$p99" "$cpu" "$scpu" "$sent" "$dropped" "$conns"
    done
done
