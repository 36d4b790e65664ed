#!/usr/bin/env bash
# Loopback load on two HTTP servers, interleaved: the hand-written mock (testkit/src/mock.rs,
# via `mock_backend --threads 1`) and any other server answering POST /v1/chat/completions,
# e.g. the minimal hyper 1.x one of issue 16 item 9 (a scratch crate, not in the repository;
# figures in testkit/src/mock.rs). Per run: req/s, p50/p99 (µs) from wrk, and the server's
# own CPU µs per request (utime+stime from /proc/PID/stat around the run). Needs wrk, curl.
#   benches/mock_vs_hyper.sh MOCK_BIN 'OTHER_CMD --listen 127.0.0.1:18102' [ROUNDS] [SECS]
# MOCK_BIN is started on 127.0.0.1:18101. Prints one line per run, then medians.
set -euo pipefail
mock_bin=$1 other_cmd=$2 rounds=${3:-3} secs=${4:-5}
here=$(cd "$(dirname "$0")" && pwd)
tck=$(getconf CLK_TCK) out=$(mktemp)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -f "$out"' EXIT
"$mock_bin" --listen 127.0.0.1:18101 --threads 1 >/dev/null & pids+=($!); mock_pid=$!
$other_cmd >/dev/null & pids+=($!); other_pid=$!
for port in 18101 18102; do
  for _ in $(seq 50); do curl -sf -o /dev/null -d @"$here/post_1k.json" \
    "http://127.0.0.1:$port/v1/chat/completions" && break; sleep 0.1; done
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
usec() { awk '{v=$1; if (v ~ /us$/) m=1; else if (v ~ /ms$/) m=1000; else m=1000000;
  sub(/[a-z]+$/, "", v); printf "%.0f", v*m}' <<<"$1"; }
run() { # name pid port conns round
  local c0 w c1 n rps p50 p99 bad
  c0=$(cpu "$2")
  w=$(wrk -t1 -c"$4" -d"${secs}s" --latency -s "$here/post_1k.lua" \
      "http://127.0.0.1:$3/v1/chat/completions")
  c1=$(cpu "$2")
  n=$(awk '/requests in/ {print $1}' <<<"$w")
  rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<<"$w")
  p50=$(usec "$(awk '$1=="50%" {print $2}' <<<"$w")")
  p99=$(usec "$(awk '$1=="99%" {print $2}' <<<"$w")")
  bad=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$w")
  printf '%-6s c=%-3s round=%s req/s=%-7s p50_us=%-6s p99_us=%-6s cpu_us/req=%.2f %s\n' \
    "$1" "$4" "$5" "$rps" "$p50" "$p99" "$(awk -v d=$((c1 - c0)) -v t="$tck" -v n="$n" \
    'BEGIN {print d * 1e6 / t / n}')" "$bad" | tee -a "$out"
}
for conns in 32 1; do
  for r in $(seq "$rounds"); do
    if (( r % 2 )); then run mock "$mock_pid" 18101 "$conns" "$r"; run other "$other_pid" 18102 "$conns" "$r"
    else run other "$other_pid" 18102 "$conns" "$r"; run mock "$mock_pid" 18101 "$conns" "$r"; fi
  done
done
echo "medians over $rounds rounds (load average now: $(cut -d' ' -f1-3 /proc/loadavg)):"
for s in mock other; do for conns in 32 1; do
  line="$s c=$conns"
  for f in req/s p50_us p99_us cpu_us/req; do
    line+=" $f=$(grep "^$s *c=$conns " "$out" | grep -o "$f=[0-9.]*" | cut -d= -f2 | sort -n |
      awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')"
  done
  echo "$line"
done; done
