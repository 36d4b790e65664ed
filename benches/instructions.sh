#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a figure this noisy
# shared 2-core VM cannot blur (wall-clock CPU per request from benches/load.sh moved by
# ±15% between runs of the same build on 2026-12-01; this moves by <1%). It complements
# load.sh (which also sees the kernel, ~60% of a proxy's CPU here); it does not replace it.
#
# For each target: the mock backend, the proxy under `valgrind --tool=callgrind` with
# instrumentation off, a 5 s wrk warm-up, instrumentation on for DURATION of wrk (8
# connections, benches/post_1k.lua), then the count divided by the requests wrk completed.
# Targets: bare Pingora (examples/bare_pingora), Switchyard as shipped (access log on) and
# quiet (RUST_LOG=warn), on load.sh's policy. Usage: benches/instructions.sh [DURATION]
# ONLY="quiet gateway" counts only those targets; KEEP=DIR keeps the callgrind files there
# for `callgrind_annotate --inclusive=yes DIR/cg.quiet.*` (where the instructions go).
# ALT_BIN=PATH [ALT_ENV='NAME=value'] with ONLY="… alt" counts another gateway binary (or
# setting) quiet, on the same policy. ALT_POLICY_EXTRA='YAML' appends top-level YAML to the
# alt target's copy of the policy (e.g. `observe: { traces: { otlp_endpoint:
# http://127.0.0.1:18003 } }`: a second mock backend listens there, answering the exports).
# Needs valgrind (callgrind_control) and wrk. Only 127.0.0.1; every process is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20s}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin switchyard --example mock_backend --example bare_pingora
WORK=$(mktemp -d)
PIDS=()
KEEP=${KEEP:-}
ONLY=${ONLY:-pingora gateway quiet}
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "$KEEP" ] && mkdir -p "$KEEP" && cp "$WORK"/cg.* "$KEEP"/ 2>/dev/null; rm -rf "$WORK"' EXIT
cat >"$WORK/policy.yaml" <<YAML
listeners: { proxy: 127.0.0.1:18080, admin: 127.0.0.1:18090, threads: 1 }
trusted_proxies: [127.0.0.0/8]
geoip: { database: embedded }
regions: { default: us, map: [ { name: eu, continents: [EU] }, { name: us, continents: [NA, SA] } ] }
rtt_ms: { eu: { eu: 5, us: 90 }, us: { us: 5 } }
tiers:
  realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu] }
  standard: { deadline: 1s, weight: 0.3, pools: [edge, gpu] }
pools:
  - { name: edge-us, kind: edge, region: us, endpoints: [127.0.0.1:18001], models: ["*"], concurrency: 256, service_time: 5ms, price: { per_request: 0.00002 } }
  - { name: gpu, kind: gpu, region: us, endpoints: [127.0.0.1:18001], models: ["*"], concurrency: 256, service_time: 40ms, price: { per_gpu_hour: 12 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard }
YAML
"$TARGET/release/examples/mock_backend" --listen 127.0.0.1:18001 --name bench --threads 1 >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
count() { # name port env command...
    local name=$1 port=$2 envv=$3; shift 3
    case " $ONLY " in *" $name "*) ;; *) echo 0 >"$WORK/$name.ipr"; return ;; esac
    env $envv valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.$name.%p" "$@" >"$WORK/$name.log" 2>&1 &
    local vp=$!
    for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
    wrk -t1 -c8 -d5s -s benches/post_1k.lua "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
    callgrind_control -i on "$vp" >/dev/null 2>&1
    wrk -t1 -c8 -d"$DURATION" -s benches/post_1k.lua "http://127.0.0.1:$port/v1/chat/completions" >"$WORK/wrk.$name.txt"
    callgrind_control -i off "$vp" >/dev/null 2>&1
    callgrind_control -d "$vp" >/dev/null 2>&1
    kill -KILL "$vp"; wait "$vp" 2>/dev/null || true # counted and dumped: no graceful shutdown
    local req ir
    req=$(awk '/requests in/ {print $1}' "$WORK/wrk.$name.txt")
    ir=$(cat "$WORK"/cg."$name".* | awk '/^summary:|^totals:/ {s += $2} END {print s}')
    printf '%-8s %9d requests  %8d instructions/request\n' "$name" "$req" $((ir / req))
    echo $((ir / req)) >"$WORK/$name.ipr"
}
count pingora 18082 X=1 "$TARGET/release/examples/bare_pingora" 127.0.0.1:18082 127.0.0.1:18001 1
count gateway 18080 X=1 "$TARGET/release/switchyard" run --policy "$WORK/policy.yaml"
count quiet 18080 RUST_LOG=warn "$TARGET/release/switchyard" run --policy "$WORK/policy.yaml"
ALT_POLICY="$WORK/policy.yaml"
if [ -n "${ALT_POLICY_EXTRA:-}" ]; then
    ALT_POLICY="$WORK/alt-policy.yaml"
    { cat "$WORK/policy.yaml"; echo "$ALT_POLICY_EXTRA"; } >"$ALT_POLICY"
    "$TARGET/release/examples/mock_backend" --listen 127.0.0.1:18003 --name collector --threads 1 >"$WORK/collector.log" 2>&1 &
    PIDS+=($!)
fi
[ -z "${ALT_BIN:-}" ] || count alt 18080 "RUST_LOG=warn ${ALT_ENV:-}" "$ALT_BIN" run --policy "$ALT_POLICY"
[ "$ONLY" = "pingora gateway quiet" ] || exit 0
awk -v b="$(cat "$WORK/pingora.ipr")" -v g="$(cat "$WORK/gateway.ipr")" -v q="$(cat "$WORK/quiet.ipr")" \
    'BEGIN { printf "user-space instructions per request: shipped/bare-pingora %.2f   quiet/bare-pingora %.2f\n", g / b, q / b }'
