#!/usr/bin/env bash
# End-to-end load comparison, in one run, on this machine:
#   direct   wrk → mock backend
#   gateway  wrk → switchyard as shipped (full classification + routing, access log on)
#   quiet    wrk → the same switchyard with RUST_LOG=warn (access log off)
#   nginx    wrk → nginx (plain keep-alive reverse proxy, access log off) → the same backend
#   pingora  wrk → a bare Pingora proxy (no logic, same allocator/threads): the framework's ceiling
# (MODE=queue, MODE=large, MODE=cache and MODE=tls below measure one feature each.)
# Same POST workload for all (1 KB OpenAI-style JSON, benches/post_1k.lua), 32 connections,
# runs interleaved (direct, gateway, quiet, nginx, pingora, direct, …) and the median of
# ROUNDS reported, with each target's own CPU time per request (user + system, from
# /proc/PID/stat over the run).
#
# Usage: benches/load.sh [DURATION] [ROUNDS] [CONNECTIONS]      (defaults: 10s 3 32)
# ALT_BIN=PATH [ALT_ENV='NAME=value'] adds a sixth target, `alt`: another gateway binary (or
# the same one with another setting) on the same policy, quiet, timed in the same rounds.
# Needs: wrk and nginx (apt-get install -y wrk nginx-light). Only 127.0.0.1 is used; every
# process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-10s}
ROUNDS=${2:-3}
CONNS=${3:-32}
PROXY_THREADS=${PROXY_THREADS:-1}
MOCK=127.0.0.1:18001
GATEWAY=127.0.0.1:18080
GATEWAY_ADMIN=127.0.0.1:18090
QUIET=127.0.0.1:18083
QUIET_ADMIN=127.0.0.1:18091
NGINX=127.0.0.1:18081
BARE=127.0.0.1:18082
ALT=127.0.0.1:18084
ALT_ADMIN=127.0.0.1:18092

for tool in wrk nginx; do
    command -v "$tool" >/dev/null || { echo "need $tool: apt-get install -y wrk nginx-light" >&2; exit 1; }
done

# ---- MODE=queue (batch queue, issue 4): durable enqueue throughput and latency of the 202
# path with the embedded store. The batch pool's dispatch window is closed for the run, so
# only enqueues (fsync'd, group-committed) are measured. Usage:
#   MODE=queue benches/load.sh [DURATION] [ROUNDS] [CONNECTIONS]
if [ "${MODE:-}" = queue ]; then
    TARGET=${CARGO_TARGET_DIR:-target}
    cargo build --release --quiet --bin switchyard
    QWORK=$(mktemp -d)
    trap 'kill $QPID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$QWORK"' EXIT
    NOW_MIN=$(( ($(date -u +%s) / 60 + 30) % 1440 ))
    END_MIN=$(( (NOW_MIN + 10) % 1440 ))
    WINDOW=$(printf '%02d:%02d-%02d:%02d' $((NOW_MIN / 60)) $((NOW_MIN % 60)) $((END_MIN / 60)) $((END_MIN % 60)))
    cat >"$QWORK/policy.yaml" <<YAML
listeners: { proxy: $GATEWAY, admin: $GATEWAY_ADMIN, threads: $PROXY_THREADS }
geoip: { database: embedded }
regions: { default: us, map: [ { name: us, continents: [NA] } ] }
rtt_ms: { us: { us: 5 } }
tiers:
  standard: { deadline: 1s, pools: [edge] }
  batch: { deadline: 1h, weight: 0.0, pools: [batch] }
pools:
  - { name: edge, kind: edge, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 64, service_time: 5ms }
  - { name: batch, kind: batch, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 64, service_time: 1s }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, tier: standard }
queue:
  path: $QWORK/queue.redb
  max_jobs: 10000000
  pools: { batch: { window: "$WINDOW" } }
YAML
    RUST_LOG=warn "$TARGET/release/switchyard" run --policy "$QWORK/policy.yaml" >"$QWORK/gateway.log" 2>&1 &
    QPID=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://$GATEWAY_ADMIN/readyz" && break; sleep 0.1; done
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$GATEWAY/v1/chat/completions" -H 'x-slo-tier: batch' -d '{"model":"m"}')
    [ "$code" = 202 ] || { echo "enqueue answered $code" >&2; cat "$QWORK/gateway.log" >&2; exit 1; }
    for r in $(seq "$ROUNDS"); do
        wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s benches/queue_enqueue.lua "http://$GATEWAY/v1/chat/completions" | tee "$QWORK/q.$r.txt" \
            | grep -E 'Requests/sec|50%|99%|Non-2xx|Socket errors' | sed "s/^/round $r: /"
    done
    echo "durable enqueues (202) on $(df -T "$QWORK" | awk 'NR==2 {print $2}'); jobs stored: $(curl -s "http://$GATEWAY_ADMIN/metrics" | awk '/^switchyard_jobs_enqueued_total/ {s += $2} END {print s}')"
    exit 0
fi

# ---- MODE=openloop (latency users feel, issue 13): fixed-rate open-loop load
# (examples/openloop.rs: latency from each request's scheduled start, no coordinated
# omission) at RATES req/s against the backend directly, through nginx and through the
# gateway as shipped; reports p50/p99/p99.9 and the added latency of each proxy over direct.
# Usage: RATES="2000 10000" MODE=openloop benches/load.sh [DURATION_SECONDS]
if [ "${MODE:-}" = openloop ]; then
    TARGET=${CARGO_TARGET_DIR:-target}
    SECS=${1:-10}
    SECS=${SECS%s}
    cargo build --release --quiet --bin switchyard --example mock_backend --example openloop
    OWORK=$(mktemp -d)
    OPIDS=()
    trap 'for p in "${OPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OWORK"' EXIT
    "$TARGET/release/examples/mock_backend" --listen "$MOCK" --name bench --threads 1 >"$OWORK/mock.log" 2>&1 &
    OPIDS+=($!)
    cat >"$OWORK/policy.yaml" <<YAML
listeners: { proxy: $GATEWAY, admin: $GATEWAY_ADMIN, threads: $PROXY_THREADS }
geoip: { database: embedded }
regions: { default: us, map: [ { name: us, continents: [NA] } ] }
rtt_ms: { us: { us: 5 } }
tiers:
  standard: { deadline: 1s, weight: 0.3, pools: [edge, gpu] }
pools:
  - { name: edge-us, kind: edge, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 256, service_time: 5ms, price: { per_request: 0.00002 } }
  - { name: gpu, kind: gpu, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 256, service_time: 40ms, price: { per_gpu_hour: 12 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, tier: standard }
YAML
    "$TARGET/release/switchyard" run --policy "$OWORK/policy.yaml" >"$OWORK/gateway.log" 2>&1 &
    OPIDS+=($!)
    cat >"$OWORK/nginx.conf" <<NGINX
worker_processes $PROXY_THREADS;
daemon off;
pid $OWORK/nginx.pid;
error_log $OWORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $OWORK/nginx-body;
    proxy_temp_path $OWORK/nginx-proxy;
    upstream backend { server $MOCK; keepalive 128; }
    server {
        listen $NGINX;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
NGINX
    nginx -c "$OWORK/nginx.conf" &
    OPIDS+=($!)
    for addr in $MOCK $GATEWAY $NGINX; do
        for _ in $(seq 100); do curl -s -o /dev/null "http://$addr/" && break; sleep 0.1; done
    done
    for rate in ${RATES:-2000 10000}; do
        echo
        echo "open loop at $rate req/s for ${SECS}s (1 KB chat POST; latency from each request's scheduled start)"
        printf '%-8s %8s %8s %10s %10s %10s %10s\n' target ok errors 'p50 us' 'p99 us' 'p99.9 us' 'max us'
        declare -A O50 O99 O999
        for t in direct nginx gateway; do
            case $t in direct) a=$MOCK ;; nginx) a=$NGINX ;; gateway) a=$GATEWAY ;; esac
            line=$("$TARGET/release/examples/openloop" "$a" /v1/chat/completions benches/post_1k.json "$rate" "$SECS" 64)
            get() { echo "$line" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
            O50[$t]=$(get p50_us); O99[$t]=$(get p99_us); O999[$t]=$(get p999_us)
            printf '%-8s %8s %8s %10s %10s %10s %10s\n' "$t" "$(get ok)" "$(get errors)" "${O50[$t]}" "${O99[$t]}" "${O999[$t]}" "$(get max_us)"
        done
        for t in nginx gateway; do
            printf 'added by %-8s p50 %+8d us   p99 %+8d us   p99.9 %+8d us\n' "$t" \
                $((O50[$t] - O50[direct])) $((O99[$t] - O99[direct])) $((O999[$t] - O999[direct]))
        done
    done
    echo "(target at 2000 req/s: the gateway's added p99 <= 1000 us)"
    exit 0
fi

# ---- MODE=grpc (gRPC inference, issue 15): ModelInfer with a 1 KB tensor over h2c
# (examples/grpc_load.rs: 4 connections x 8 streams, closed loop) straight to a mock gRPC
# backend and through the gateway (route oip-v2-grpc); req/s and p50/p99, interleaved.
# Usage: MODE=grpc benches/load.sh [DURATION_SECONDS] [ROUNDS]
if [ "${MODE:-}" = grpc ]; then
    TARGET=${CARGO_TARGET_DIR:-target}
    SECS=${1:-10}
    SECS=${SECS%s}
    cargo build --release --quiet --bin switchyard --example grpc_load
    GWORK=$(mktemp -d)
    GPIDS=()
    trap 'for p in "${GPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$GWORK"' EXIT
    GRPC_MOCK=127.0.0.1:18002
    "$TARGET/release/examples/grpc_load" serve "$GRPC_MOCK" >"$GWORK/mock.log" 2>&1 &
    GPIDS+=($!)
    cat >"$GWORK/policy.yaml" <<YAML
listeners: { proxy: $GATEWAY, admin: $GATEWAY_ADMIN, threads: $PROXY_THREADS }
geoip: { database: embedded }
regions: { default: us, map: [ { name: us, continents: [NA] } ] }
rtt_ms: { us: { us: 5 } }
tiers:
  standard: { deadline: 1s, pools: [gpu] }
pools:
  - { name: gpu, kind: gpu, region: us, endpoints: [{ http: "$MOCK", grpc: "$GRPC_MOCK" }], models: ["*"], concurrency: 256, service_time: 5ms, price: { per_gpu_hour: 12 } }
routes:
  - { name: grpc, match: "/inference.GRPCInferenceService/*", protocol: oip-v2-grpc, tier: standard }
YAML
    "$TARGET/release/switchyard" run --policy "$GWORK/policy.yaml" >"$GWORK/gateway.log" 2>&1 &
    GPIDS+=($!)
    for _ in $(seq 100); do curl -s -o /dev/null "http://$GATEWAY_ADMIN/readyz" && break; sleep 0.1; done
    echo
    echo "gRPC ModelInfer, 1 KB tensor, 4 connections x 8 streams, ${SECS}s x ${2:-3} interleaved rounds"
    for r in $(seq "${2:-3}"); do
        for t in direct gateway; do
            case $t in direct) a=$GRPC_MOCK ;; gateway) a=$GATEWAY ;; esac
            echo "$t round $r: $("$TARGET/release/examples/grpc_load" load "$a" "$SECS" 4 8)"
        done
    done
    exit 0
fi

# ---- MODE=large (request bodies, issue 15): a ~5 MiB OpenAI chat body (base64 image,
# benches/post_5m.lua) sent straight to the mock backend and through the gateway, which reads
# it whole, routes it by model and sends it on through its own sender (bodies > 64 KiB).
#   latency  1 connection: p50/p99 per request, direct vs gateway (target: added p50 ≤ 2 ms)
#   memory   32 connections: the gateway's peak RSS (VmHWM) vs its RSS at rest
# Usage: MODE=large benches/load.sh [DURATION] [ROUNDS] [CONNECTIONS]
if [ "${MODE:-}" = large ]; then
    TARGET=${CARGO_TARGET_DIR:-target}
    cargo build --release --quiet --bin switchyard --example mock_backend
    LWORK=$(mktemp -d)
    LPIDS=()
    trap 'for p in "${LPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$LWORK"' EXIT
    "$TARGET/release/examples/mock_backend" --listen "$MOCK" --name bench --threads 1 >"$LWORK/mock.log" 2>&1 &
    LPIDS+=($!)
    cat >"$LWORK/policy.yaml" <<YAML
listeners: { proxy: $GATEWAY, admin: $GATEWAY_ADMIN, threads: $PROXY_THREADS }
geoip: { database: embedded }
regions: { default: us, map: [ { name: us, continents: [NA] } ] }
rtt_ms: { us: { us: 5 } }
tiers:
  standard: { deadline: 5s, pools: [gpu] }
pools:
  - { name: gpu, kind: gpu, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 256, service_time: 5ms, price: { per_gpu_hour: 12 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 16MiB, tier: standard }
YAML
    RUST_LOG=warn "$TARGET/release/switchyard" run --policy "$LWORK/policy.yaml" >"$LWORK/gateway.log" 2>&1 &
    GPID=$!
    LPIDS+=($GPID)
    for _ in $(seq 100); do curl -s -o /dev/null "http://$GATEWAY_ADMIN/readyz" && break; sleep 0.1; done
    lrun() { # name addr conns round
        wrk -t1 -c"$3" -d"$DURATION" --latency -s benches/post_5m.lua "http://$2/v1/chat/completions" >"$LWORK/$1.$4.txt"
        errs=$(grep -E 'Non-2xx|Socket errors' "$LWORK/$1.$4.txt" || true)
        [ -z "$errs" ] || echo "warning: $1 round $4: $errs" >&2
    }
    lms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
    lmedian() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
    lrun warm "$GATEWAY" 1 0
    RSS_REST=$(awk '/^VmRSS/ { print $2 }' "/proc/$GPID/status")
    for r in $(seq "$ROUNDS"); do
        lrun direct "$MOCK" 1 "$r"
        lrun gateway "$GATEWAY" 1 "$r"
    done
    lrun gateway32 "$GATEWAY" "$CONNS" 1
    lrun direct32 "$MOCK" "$CONNS" 1
    PEAK=$(awk '/^VmHWM/ { print $2 }' "/proc/$GPID/status")
    declare -A LRPS LP50 LP99
    for t in direct gateway; do
        LRPS[$t]=$(for r in $(seq "$ROUNDS"); do awk '/Requests\/sec/ { print $2 }' "$LWORK/$t.$r.txt"; done | lmedian)
        LP50[$t]=$(for r in $(seq "$ROUNDS"); do lms "$(awk '$1 == "50%" { print $2 }' "$LWORK/$t.$r.txt")"; echo; done | lmedian)
        LP99[$t]=$(for r in $(seq "$ROUNDS"); do lms "$(awk '$1 == "99%" { print $2 }' "$LWORK/$t.$r.txt")"; echo; done | lmedian)
    done
    for t in direct32 gateway32; do
        LRPS[$t]=$(awk '/Requests\/sec/ { print $2 }' "$LWORK/$t.1.txt")
        LP50[$t]=$(lms "$(awk '$1 == "50%" { print $2 }' "$LWORK/$t.1.txt")")
        LP99[$t]=$(lms "$(awk '$1 == "99%" { print $2 }' "$LWORK/$t.1.txt")")
    done
    echo
    echo "POST ~5 MiB chat body (base64 image), $DURATION x $ROUNDS interleaved rounds (medians); proxy threads: $PROXY_THREADS"
    printf '%-10s %6s %10s %10s %10s\n' target conns 'req/s' 'p50 ms' 'p99 ms'
    printf '%-10s %6s %10.1f %10.3f %10.3f\n' direct 1 "${LRPS[direct]}" "${LP50[direct]}" "${LP99[direct]}"
    printf '%-10s %6s %10.1f %10.3f %10.3f\n' gateway 1 "${LRPS[gateway]}" "${LP50[gateway]}" "${LP99[gateway]}"
    printf '%-10s %6s %10.1f %10.3f %10.3f\n' direct "$CONNS" "${LRPS[direct32]}" "${LP50[direct32]}" "${LP99[direct32]}"
    printf '%-10s %6s %10.1f %10.3f %10.3f\n' gateway "$CONNS" "${LRPS[gateway32]}" "${LP50[gateway32]}" "${LP99[gateway32]}"
    awk -v g="${LP50[gateway]}" -v d="${LP50[direct]}" -v rest="$RSS_REST" -v peak="$PEAK" -v c="$CONNS" 'BEGIN {
        printf "\nadded p50 at 1 connection: %.3f ms (target <= 2)\n", g - d
        printf "gateway RSS at rest %.1f MiB, peak with %d connections of 5 MiB bodies %.1f MiB (%.1f MiB per request in flight)\n", rest / 1024, c, peak / 1024, (peak - rest) / 1024 / c
    }'
    exit 0
fi

# ---- MODE=limits (tenants, issue 11): the same 1 KB POST as tenant `bench`, whose limits
# never trip, against two gateways interleaved: `local` (limits.backend: local) and `redis`
# (limits.backend: redis: the tenant's leases, topped up and charged by a background sync;
# a request waits for Redis only when its lease is empty).
# Redis at REDIS_URL (default redis://127.0.0.1:6379). Usage:
#   MODE=limits benches/load.sh [DURATION] [ROUNDS] [CONNECTIONS]
if [ "${MODE:-}" = limits ]; then
    TARGET=${CARGO_TARGET_DIR:-target}
    REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
    GATEWAY2=127.0.0.1:18083
    GATEWAY2_ADMIN=127.0.0.1:18093
    cargo build --release --quiet --bin switchyard --example mock_backend
    LWORK=$(mktemp -d)
    LPIDS=()
    trap 'for p in "${LPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$LWORK"' EXIT
    "$TARGET/release/examples/mock_backend" --listen "$MOCK" --name bench --threads 1 >"$LWORK/mock.log" 2>&1 &
    LPIDS+=($!)
    KEY_SHA=$(printf %s bench-key | sha256sum | cut -d' ' -f1)
    lpolicy() { # proxy admin limits-block
        cat <<YAML
listeners: { proxy: $1, admin: $2, threads: $PROXY_THREADS }
geoip: { database: embedded }
regions: { default: us, map: [ { name: us, continents: [NA] } ] }
rtt_ms: { us: { us: 5 } }
tiers:
  standard: { deadline: 1s, pools: [edge] }
tenants:
  - name: bench
    key_sha256: $KEY_SHA
    tier: standard
    limits: { requests_per_second: 1000000, burst: 1000000, max_concurrency: 100000, spend_per_day_usd: 1000000 }
pools:
  - { name: edge, kind: edge, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 256, service_time: 5ms, price: { per_request: 0.00002 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard }
$3
YAML
    }
    lpolicy "$GATEWAY" "$GATEWAY_ADMIN" "" >"$LWORK/local.yaml"
    lpolicy "$GATEWAY2" "$GATEWAY2_ADMIN" "limits: { backend: redis, redis_url: \"$REDIS_URL\", redis_prefix: sybench$$ }" >"$LWORK/redis.yaml"
    for m in local redis; do
        RUST_LOG=warn "$TARGET/release/switchyard" run --policy "$LWORK/$m.yaml" >"$LWORK/$m.log" 2>&1 &
        LPIDS+=($!)
    done
    for a in $GATEWAY_ADMIN $GATEWAY2_ADMIN; do
        for _ in $(seq 100); do curl -s -o /dev/null "http://$a/readyz" && break; sleep 0.1; done
    done
    curl -s "http://$GATEWAY2_ADMIN/admin/tenants" | grep -q '"backend":"redis"' \
        || { echo "the redis gateway does not reach $REDIS_URL" >&2; cat "$LWORK/redis.log" >&2; exit 1; }
    for r in $(seq "$ROUNDS"); do
        for m in local redis; do
            case $m in local) a=$GATEWAY ;; redis) a=$GATEWAY2 ;; esac
            wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s benches/post_1k_tenant.lua "http://$a/v1/chat/completions" >"$LWORK/$m.$r.txt"
            errs=$(grep -E 'Non-2xx|Socket errors' "$LWORK/$m.$r.txt" || true)
            [ -z "$errs" ] || echo "warning: $m round $r: $errs" >&2
        done
    done
    lms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
    lmedian() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
    echo
    echo "tenant limits: 1 KB POST, $CONNS connections, $DURATION x $ROUNDS interleaved rounds (medians); proxy threads: $PROXY_THREADS"
    printf '%-8s %12s %10s %10s\n' backend 'req/s' 'p50 ms' 'p99 ms'
    for m in local redis; do
        rps=$(for r in $(seq "$ROUNDS"); do awk '/Requests\/sec/ { print $2 }' "$LWORK/$m.$r.txt"; done | lmedian)
        p50=$(for r in $(seq "$ROUNDS"); do lms "$(awk '$1 == "50%" { print $2 }' "$LWORK/$m.$r.txt")"; echo; done | lmedian)
        p99=$(for r in $(seq "$ROUNDS"); do lms "$(awk '$1 == "99%" { print $2 }' "$LWORK/$m.$r.txt")"; echo; done | lmedian)
        printf '%-8s %12.0f %10.3f %10.3f\n' "$m" "$rps" "$p50" "$p99"
    done
    curl -s "http://$GATEWAY2_ADMIN/metrics" | grep -E '^switchyard_limits_(shared|redis_errors_total|syncs_total)' || true
    exit 0
fi

# ---- MODE=cache (prediction cache, issue 3): in one run, interleaved, the same ~1 KB
# deterministic chat request as
#   hit      wrk → switchyard, identical body: answered from the cache
#   miss     wrk → switchyard, every body different (benches/post_1k_unique.lua): the full
#            miss path (key, flight, route, proxy, capture, store) → mock backend
#   direct   wrk → mock backend
#   static   wrk → nginx answering `return 200` with a body of the same size
#   pingora  wrk → bare Pingora answering the same body itself from `request_filter`
#            (examples/bare_pingora with a static body): the framework's ceiling for an
#            answer from memory
# Targets: hit ≥ 2× miss req/s, hit ≥ 50% of static req/s (issue 13; 60% in issue 3),
# hit p99 < 1 ms (issue 13). Usage:
#   MODE=cache benches/load.sh [DURATION] [ROUNDS] [CONNECTIONS]
if [ "${MODE:-}" = cache ]; then
    TARGET=${CARGO_TARGET_DIR:-target}
    cargo build --release --quiet --bin switchyard --example mock_backend --example bare_pingora
    CWORK=$(mktemp -d)
    CPIDS=()
    trap 'for p in "${CPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$CWORK"' EXIT
    "$TARGET/release/examples/mock_backend" --listen "$MOCK" --name bench --threads 1 >"$CWORK/mock.log" 2>&1 &
    CPIDS+=($!)
    cat >"$CWORK/policy.yaml" <<YAML
listeners: { proxy: $GATEWAY, admin: $GATEWAY_ADMIN, threads: $PROXY_THREADS }
geoip: { database: embedded }
regions: { default: us, map: [ { name: us, continents: [NA] } ] }
rtt_ms: { us: { us: 5 } }
tiers:
  standard: { deadline: 1s, pools: [gpu] }
pools:
  - { name: gpu, kind: gpu, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 256, service_time: 5ms, price: { per_gpu_hour: 12 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard, cache: { ttl: 1h } }
cache: { max_bytes: 256MiB }
YAML
    RUST_LOG=warn "$TARGET/release/switchyard" run --policy "$CWORK/policy.yaml" >"$CWORK/gateway.log" 2>&1 &
    CPIDS+=($!)
    for _ in $(seq 100); do curl -s -o /dev/null "http://$GATEWAY_ADMIN/readyz" && break; sleep 0.1; done
    # nginx answers a static body as long as the backend's answer.
    BODY=$(curl -s "http://$MOCK/v1/chat/completions" -H 'content-type: application/json' \
        -d '{"model":"llama-3-8b","temperature":0,"messages":[]}' | tr -d "'\\\\")
    cat >"$CWORK/nginx.conf" <<NGINX
worker_processes $PROXY_THREADS;
daemon off;
pid $CWORK/nginx.pid;
error_log $CWORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $CWORK/nginx-body;
    server {
        listen $NGINX;
        location / { default_type application/json; return 200 '$BODY'; }
    }
}
NGINX
    nginx -c "$CWORK/nginx.conf" &
    CPIDS+=($!)
    for _ in $(seq 100); do curl -s -o /dev/null "http://$NGINX/" && break; sleep 0.1; done
    printf '%s' "$BODY" >"$CWORK/static.json"
    "$TARGET/release/examples/bare_pingora" "$BARE" "$MOCK" "$PROXY_THREADS" "$CWORK/static.json" >"$CWORK/bare.log" 2>&1 &
    CPIDS+=($!)
    for _ in $(seq 100); do curl -s -o /dev/null "http://$BARE/" && break; sleep 0.1; done
    # Warm the entry and check that the hit path really hits.
    # (The body is the one benches/cache_hit_1k.lua sends.)
    CONTENT=$(printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 20))
    HIT_BODY="{\"model\":\"llama-3-8b\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"$CONTENT\"}]}"
    for _ in 1 2; do
        hdr=$(curl -s -o /dev/null -D - "http://$GATEWAY/v1/chat/completions" -H 'content-type: application/json' \
            --data-binary "$HIT_BODY" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-switchyard-cache" { print $2 }')
    done
    [ "$hdr" = hit ] || { echo "the warm-up repeat was '$hdr', not a hit" >&2; cat "$CWORK/gateway.log" >&2; exit 1; }
    crun() { # name addr script round
        wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$3" "http://$2/v1/chat/completions" >"$CWORK/$1.$4.txt"
        errs=$(grep -E 'Non-2xx|Socket errors' "$CWORK/$1.$4.txt" || true)
        [ -z "$errs" ] || echo "warning: $1 round $4: $errs" >&2
    }
    cms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
    for r in $(seq "$ROUNDS"); do
        crun hit "$GATEWAY" benches/cache_hit_1k.lua "$r"
        crun miss "$GATEWAY" benches/post_1k_unique.lua "$r"
        crun direct "$MOCK" benches/cache_hit_1k.lua "$r"
        crun static "$NGINX" benches/cache_hit_1k.lua "$r"
        crun pingora "$BARE" benches/cache_hit_1k.lua "$r"
    done
    cmedian() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
    declare -A CRPS CP50 CP99
    for t in hit miss direct static pingora; do
        CRPS[$t]=$(for r in $(seq "$ROUNDS"); do awk '/Requests\/sec/ { print $2 }' "$CWORK/$t.$r.txt"; done | cmedian)
        CP50[$t]=$(for r in $(seq "$ROUNDS"); do cms "$(awk '$1 == "50%" { print $2 }' "$CWORK/$t.$r.txt")"; echo; done | cmedian)
        CP99[$t]=$(for r in $(seq "$ROUNDS"); do cms "$(awk '$1 == "99%" { print $2 }' "$CWORK/$t.$r.txt")"; echo; done | cmedian)
    done
    echo
    echo "prediction cache: ~1 KB chat POST, $CONNS connections, $DURATION x $ROUNDS interleaved rounds (medians); proxy threads: $PROXY_THREADS"
    printf '%-8s %12s %10s %10s\n' target 'req/s' 'p50 ms' 'p99 ms'
    for t in hit miss direct static pingora; do
        printf '%-8s %12.0f %10.3f %10.3f\n' "$t" "${CRPS[$t]}" "${CP50[$t]}" "${CP99[$t]}"
    done
    curl -s "http://$GATEWAY_ADMIN/metrics" | grep -E '^switchyard_cache_(lookups_total|entries|bytes)' || true
    awk -v h="${CRPS[hit]}" -v m="${CRPS[miss]}" -v s="${CRPS[static]}" -v b="${CRPS[pingora]}" -v p="${CP99[hit]}" 'BEGIN {
        printf "\nhit/miss req/s: %.2f (target >= 2)   hit/static req/s: %.2f (target >= 0.5)   hit/bare-pingora-static req/s: %.2f   hit p99: %.3f ms (target < 1)\n", h / m, h / s, h / b, p
    }'
    exit 0
fi

# ---- MODE=tls (TLS on both sides, issue 10): in one run, interleaved, the same 1 KB POST to
# the same mock backend through
#   gw-plain   wrk → switchyard, plain HTTP/1.1 listener            (keep-alive)
#   gw-tls     wrk → switchyard, TLS listener (rustls)              (keep-alive)
#   ng-plain   wrk → nginx, plain reverse proxy                     (keep-alive)
#   ng-tls     wrk → nginx terminating TLS (OpenSSL), same proxy    (keep-alive)
# and the handshake rate (new TLS connections/s: `Connection: close`, one request per
# connection, benches/post_1k_close.lua; session resumption off on nginx, none in rustls's
# default) for both TLS listeners: gw-hs, ng-hs. One self-signed P-256 certificate
# (openssl) for both. Usage:
#   MODE=tls benches/load.sh [DURATION] [ROUNDS] [CONNECTIONS]
if [ "${MODE:-}" = tls ]; then
    command -v openssl >/dev/null || { echo "need openssl" >&2; exit 1; }
    TARGET=${CARGO_TARGET_DIR:-target}
    cargo build --release --quiet --bin switchyard --example mock_backend
    GATEWAY_TLS=127.0.0.1:18443
    NGINX_TLS=127.0.0.1:18444
    TWORK=$(mktemp -d)
    TPIDS=()
    trap 'for p in "${TPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TWORK"' EXIT
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TWORK/server.key" -out "$TWORK/server.pem" 2>/dev/null
    "$TARGET/release/examples/mock_backend" --listen "$MOCK" --name bench --threads 1 >"$TWORK/mock.log" 2>&1 &
    TPIDS+=($!)
    cat >"$TWORK/policy.yaml" <<YAML
listeners: { proxy: $GATEWAY, admin: $GATEWAY_ADMIN, threads: $PROXY_THREADS, tls: { listen: $GATEWAY_TLS, cert: server.pem, key: server.key } }
geoip: { database: embedded }
regions: { default: us, map: [ { name: us, continents: [NA] } ] }
rtt_ms: { us: { us: 5 } }
tiers:
  standard: { deadline: 1s, pools: [gpu] }
pools:
  - { name: gpu, kind: gpu, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 256, service_time: 5ms, price: { per_gpu_hour: 12 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard }
YAML
    RUST_LOG=warn "$TARGET/release/switchyard" run --policy "$TWORK/policy.yaml" >"$TWORK/gateway.log" 2>&1 &
    TPIDS+=($!)
    cat >"$TWORK/nginx.conf" <<NGINX
worker_processes $PROXY_THREADS;
daemon off;
pid $TWORK/nginx.pid;
error_log $TWORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TWORK/nginx-body;
    proxy_temp_path $TWORK/nginx-proxy;
    upstream backend { server $MOCK; keepalive 128; }
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {
        listen $NGINX;
        listen $NGINX_TLS ssl;
        ssl_certificate $TWORK/server.pem;
        ssl_certificate_key $TWORK/server.key;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
    nginx -c "$TWORK/nginx.conf" &
    TPIDS+=($!)
    for _ in $(seq 100); do curl -s -o /dev/null "http://$GATEWAY_ADMIN/readyz" && break; sleep 0.1; done
    for url in "http://$GATEWAY" "https://$GATEWAY_TLS" "http://$NGINX" "https://$NGINX_TLS"; do
        for _ in $(seq 50); do curl -sk -o /dev/null "$url/" && break; sleep 0.1; done
        code=$(curl -sk -o /dev/null -w '%{http_code}' "$url/v1/chat/completions" \
            -H 'content-type: application/json' -d '{"model":"llama-3-8b","messages":[]}')
        [ "$code" = 200 ] || { echo "$url answered $code" >&2; cat "$TWORK"/*.log >&2; exit 1; }
    done
    trun() { # name url script round
        wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$3" "$2/v1/chat/completions" >"$TWORK/$1.$4.txt"
        errs=$(grep -E 'Non-2xx|Socket errors' "$TWORK/$1.$4.txt" || true)
        [ -z "$errs" ] || echo "warning: $1 round $4: $errs" >&2
    }
    tms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
    NAMES="gw-plain gw-tls ng-plain ng-tls gw-hs ng-hs"
    for r in $(seq "$ROUNDS"); do
        trun gw-plain "http://$GATEWAY" benches/post_1k.lua "$r"
        trun gw-tls "https://$GATEWAY_TLS" benches/post_1k.lua "$r"
        trun ng-plain "http://$NGINX" benches/post_1k.lua "$r"
        trun ng-tls "https://$NGINX_TLS" benches/post_1k.lua "$r"
        trun gw-hs "https://$GATEWAY_TLS" benches/post_1k_close.lua "$r"
        trun ng-hs "https://$NGINX_TLS" benches/post_1k_close.lua "$r"
    done
    tmedian() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
    declare -A TRPS TP50 TP99
    for t in $NAMES; do
        TRPS[$t]=$(for r in $(seq "$ROUNDS"); do awk '/Requests\/sec/ { print $2 }' "$TWORK/$t.$r.txt"; done | tmedian)
        TP50[$t]=$(for r in $(seq "$ROUNDS"); do tms "$(awk '$1 == "50%" { print $2 }' "$TWORK/$t.$r.txt")"; echo; done | tmedian)
        TP99[$t]=$(for r in $(seq "$ROUNDS"); do tms "$(awk '$1 == "99%" { print $2 }' "$TWORK/$t.$r.txt")"; echo; done | tmedian)
    done
    echo
    echo "TLS: POST 1 KB JSON, $CONNS connections, $DURATION x $ROUNDS interleaved rounds (medians); proxy threads: $PROXY_THREADS"
    echo "(*-hs: one request per connection, i.e. new TLS connections per second)"
    printf '%-9s %12s %10s %10s\n' target 'req/s' 'p50 ms' 'p99 ms'
    for t in $NAMES; do
        printf '%-9s %12.0f %10.3f %10.3f\n' "$t" "${TRPS[$t]}" "${TP50[$t]}" "${TP99[$t]}"
    done
    awk -v gp="${TRPS[gw-plain]}" -v gt="${TRPS[gw-tls]}" -v np="${TRPS[ng-plain]}" -v nt="${TRPS[ng-tls]}" \
        -v gh="${TRPS[gw-hs]}" -v nh="${TRPS[ng-hs]}" -v gl="${TP50[gw-tls]}" -v nl="${TP50[ng-tls]}" 'BEGIN {
        printf "\ngateway tls/plain req/s: %.2f   nginx tls/plain req/s: %.2f\n", gt / gp, nt / np
        printf "gateway/nginx over TLS req/s: %.2f   p50: %.2f   handshakes/s gateway/nginx: %.2f\n", gt / nt, gl / nl, gh / nh
    }'
    exit 0
fi

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin switchyard --example mock_backend --example bare_pingora
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$TARGET/release/examples/mock_backend" --listen "$MOCK" --name bench --threads 1 >"$WORK/mock.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/policy.yaml" <<YAML
listeners: { proxy: $GATEWAY, admin: $GATEWAY_ADMIN, threads: $PROXY_THREADS }
trusted_proxies: [127.0.0.0/8]
geoip: { database: embedded }
regions:
  default: us
  map:
    - { name: eu, continents: [EU] }
    - { name: us, continents: [NA, SA] }
rtt_ms: { eu: { eu: 5, us: 90 }, us: { us: 5 } }
tiers:
  realtime: { deadline: 150ms, weight: 0.8, pools: [edge, gpu] }
  standard: { deadline: 1s, weight: 0.3, pools: [edge, gpu] }
pools:
  - { name: edge-us, kind: edge, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 256, service_time: 5ms, price: { per_request: 0.00002 } }
  - { name: gpu, kind: gpu, region: us, endpoints: [$MOCK], models: ["*"], concurrency: 256, service_time: 40ms, price: { per_gpu_hour: 12 } }
routes:
  - { name: chat, match: /v1/chat/completions, protocol: openai, max_body: 64KiB, tier: standard }
YAML
# The gateway as shipped (default log level: the access log on, to stderr, here a file), and
# a second instance with logging off, on the same policy and ports shifted by one.
"$TARGET/release/switchyard" run --policy "$WORK/policy.yaml" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
declare -A PID
PID[gateway]=$!
RUST_LOG=warn "$TARGET/release/switchyard" run --policy "$WORK/policy.yaml" \
    --listen "$QUIET" --admin-listen "$QUIET_ADMIN" >"$WORK/gateway-quiet.log" 2>&1 &
PIDS+=($!)
PID[quiet]=$!
TARGETS="direct gateway quiet nginx pingora"
if [ -n "${ALT_BIN:-}" ]; then
    env RUST_LOG=warn ${ALT_ENV:-} "$ALT_BIN" run --policy "$WORK/policy.yaml" \
        --listen "$ALT" --admin-listen "$ALT_ADMIN" >"$WORK/gateway-alt.log" 2>&1 &
    PIDS+=($!)
    PID[alt]=$!
    TARGETS="$TARGETS alt"
fi

cat >"$WORK/nginx.conf" <<NGINX
worker_processes $PROXY_THREADS;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    upstream backend { server $MOCK; keepalive 128; }
    server {
        listen $NGINX;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" &
PIDS+=($!)
PID[nginx]=$!
"$TARGET/release/examples/bare_pingora" "$BARE" "$MOCK" "$PROXY_THREADS" >"$WORK/bare.log" 2>&1 &
PIDS+=($!)
PID[pingora]=$!
PID[direct]=${PIDS[0]}

ADDRS="$MOCK $GATEWAY $QUIET $NGINX $BARE"
[ -z "${ALT_BIN:-}" ] || ADDRS="$ADDRS $ALT"
for addr in $ADDRS; do
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://$addr/" && break
        sleep 0.1
    done
done

# Every target must answer the workload correctly before it is timed.
for addr in $ADDRS; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/v1/chat/completions" \
        -H 'content-type: application/json' -d '{"model":"llama-3-8b","messages":[]}')
    [ "$code" = 200 ] || { echo "target $addr answered $code" >&2; cat "$WORK"/*.log >&2; exit 1; }
done

# CPU time (user + system) of a target's processes, in clock ticks: nginx is its master and
# workers; every other target is one process.
ticks() { # name
    local pids=${PID[$1]}
    [ "$1" = nginx ] && pids="$pids $(pgrep -P "${PID[nginx]}" | tr '\n' ' ')"
    for p in $pids; do awk '{ print $14 + $15 }' "/proc/$p/stat"; done | awk '{ s += $1 } END { print s }'
}
HZ=$(getconf CLK_TCK)
run() { # name addr round
    local before after
    before=$(ticks "$1")
    wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s benches/post_1k.lua "http://$2/v1/chat/completions" >"$WORK/$1.$3.txt"
    after=$(ticks "$1")
    # CPU µs per request of the target itself over the run.
    awk -v b="$before" -v a="$after" -v hz="$HZ" '/ requests in / { printf "%.2f\n", (a - b) * 1e6 / hz / $1 }' \
        "$WORK/$1.$3.txt" >"$WORK/$1.$3.cpu"
}
to_ms() { # wrk latency like 812.00us / 1.23ms / 1.01s → ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
for r in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
        case $t in direct) a=$MOCK ;; gateway) a=$GATEWAY ;; quiet) a=$QUIET ;; nginx) a=$NGINX ;; pingora) a=$BARE ;; alt) a=$ALT ;; esac
        run "$t" "$a" "$r"
        errs=$(grep -E 'Non-2xx|Socket errors' "$WORK/$t.$r.txt" || true)
        [ -z "$errs" ] || echo "warning: $t round $r: $errs" >&2
    done
done

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
declare -A RPS P50 P99 CPU
for t in $TARGETS; do
    CPU[$t]=$(for r in $(seq "$ROUNDS"); do cat "$WORK/$t.$r.cpu"; done | median)
    RPS[$t]=$(for r in $(seq "$ROUNDS"); do awk '/Requests\/sec/ { print $2 }' "$WORK/$t.$r.txt"; done | median)
    P50[$t]=$(for r in $(seq "$ROUNDS"); do to_ms "$(awk '$1 == "50%" { print $2 }' "$WORK/$t.$r.txt")"; echo; done | median)
    P99[$t]=$(for r in $(seq "$ROUNDS"); do to_ms "$(awk '$1 == "99%" { print $2 }' "$WORK/$t.$r.txt")"; echo; done | median)
done

echo
echo "POST 1 KB JSON, $CONNS connections, $DURATION x $ROUNDS interleaved rounds (medians); proxy threads: $PROXY_THREADS"
echo "gateway = as shipped (access log on); quiet = the same with RUST_LOG=warn (access log off)"
[ -z "${ALT_BIN:-}" ] || echo "alt = $ALT_BIN ${ALT_ENV:-} (quiet)"
printf '%-8s %12s %10s %10s %12s\n' target 'req/s' 'p50 ms' 'p99 ms' 'CPU us/req'
for t in $TARGETS; do
    printf '%-8s %12.0f %10.3f %10.3f %12.2f\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${CPU[$t]}"
done
awk -v g="${RPS[gateway]}" -v n="${RPS[nginx]}" -v d="${RPS[direct]}" -v b="${RPS[pingora]}" -v gp="${P50[gateway]}" -v np="${P50[nginx]}" \
    -v gc="${CPU[gateway]}" -v qc="${CPU[quiet]}" -v bc="${CPU[pingora]}" -v nc="${CPU[nginx]}" 'BEGIN {
    printf "\ngateway/nginx req/s: %.2f   gateway/nginx p50: %.2f\n", g / n, gp / np
    printf "gateway/bare-pingora req/s: %.2f   bare-pingora/nginx req/s: %.2f   gateway/direct: %.2f   nginx/direct: %.2f\n", g / b, b / n, g / d, n / d
    printf "CPU per request: shipped/bare-pingora %.2f (target <= 1.05)   quiet/bare-pingora %.2f   log on/off %.2f   shipped/nginx %.2f\n", gc / bc, qc / bc, gc / qc, gc / nc
}'
[ -z "${ALT_BIN:-}" ] || awk -v ac="${CPU[alt]}" -v qc="${CPU[quiet]}" -v ar="${RPS[alt]}" -v qr="${RPS[quiet]}" -v ap="${P99[alt]}" -v qp="${P99[quiet]}" 'BEGIN {
    printf "alt/quiet: CPU per request %.2f   req/s %.2f   p99 %.2f\n", ac / qc, ar / qr, ap / qp
}'
