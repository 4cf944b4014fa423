#!/usr/bin/env bash
# Two builds of the gateway side by side, in one run: the throughput and CPU per request (and its
# user-space part) of each on the pass-through route (or, with ROUTE=profile, the mobile profile's three gRPC calls),
# interleaved round by round, and their ratio. For judging a change against the
# build before it on a noisy machine. See BENCHMARKS.md.
#
#   git stash && cargo build --release -p bff-mobile && cp target/release/bff-mobile /tmp/before
#   git stash pop && cargo build --release -p bff-mobile
#   bench/compare.sh /tmp/before target/release/bff-mobile
#
# Settings (environment): ROUNDS (default 5), DURATION seconds per run (default 8), CONNS (64),
# ACCEPT_ENCODING (none by default: no compression; `gzip` or `br` to measure the mobile BFF's),
# ROUTE (`pass`, the default, or `profile`; see bench/pair.sh), HTTP2 (`1`: the clients speak
# HTTP/2 with prior knowledge, CONNS/8 connections of 8 streams each, through oha; the pass route
# only).
# Needs: python3, taskset, nginx and wrk (and oha for HTTP2). Both gateways on CPU 1 with one runtime worker each (one
# under load at a time), the load generator and the static backend on CPU 0.
set -euo pipefail

[ $# = 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
ACCEPT_ENCODING=${ACCEPT_ENCODING:-}
HTTP2=${HTTP2:-}

WRAP_BEFORE=()
WRAP_AFTER=()
# shellcheck source=bench/pair.sh
source "$(dirname "$0")/pair.sh"

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # user and system CPU time, in clock ticks
ENCODING=()
[ -z "$ACCEPT_ENCODING" ] || ENCODING=(-H "Accept-Encoding: $ACCEPT_ENCODING")
run() { # PORT SECONDS: requests per second
  if [ -n "$HTTP2" ]; then
    taskset -c 0 oha --no-tui --http2 -c $((CONNS / 8)) -p 8 -z "${2}s" --output-format json \
      "${LOAD[@]}" "${ENCODING[@]}" "$(url "$1")" |
      python3 -c 'import json, sys; r = json.load(sys.stdin); c = r["statusCodeDistribution"]
assert set(c) == {"200"}, c
print(r["summary"]["requestsPerSec"])'
    return
  fi
  taskset -c 0 wrk -t1 -c "$CONNS" -d "${2}s" "${LOAD[@]}" "${ENCODING[@]}" "$(url "$1")" |
    awk '/Requests\/sec/ {print $2}'
}
run "$P_BEFORE" 2 >/dev/null
run "$P_AFTER" 2 >/dev/null

CLK=$(getconf CLK_TCK)
echo "| round | before req/s | after req/s | after / before | before CPU µs/req (user space) | after CPU µs/req (user space) | CPU after / before | user space after / before |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
RATIOS=()
CPU_RATIOS=()
USER_RATIOS=()
for r in $(seq "$ROUNDS"); do
  read -r u0 s0 < <(ticks "$PID_BEFORE"); a=$(run "$P_BEFORE" "$DURATION"); read -r u1 s1 < <(ticks "$PID_BEFORE")
  read -r u2 s2 < <(ticks "$PID_AFTER"); b=$(run "$P_AFTER" "$DURATION"); read -r u3 s3 < <(ticks "$PID_AFTER")
  line=$(python3 -c "
a, b, d, clk = $a, $b, $DURATION, $CLK
per = lambda ticks, rate: ticks / clk * 1e6 / (rate * d)
ca, ua = per($u1 + $s1 - $u0 - $s0, a), per($u1 - $u0, a)
cb, ub = per($u3 + $s3 - $u2 - $s2, b), per($u3 - $u2, b)
print(f'| $r | {a:,.0f} | {b:,.0f} | {b / a:.2f}× | {ca:.1f} ({ua:.1f}) | {cb:.1f} ({ub:.1f}) | {cb / ca:.2f}× | {ub / ua:.2f}× |')
print(b / a, cb / ca, ub / ua)")
  echo "$line" | head -1
  read -r ratio cpu_ratio user_ratio <<<"$(echo "$line" | tail -1)"
  RATIOS+=("$ratio")
  CPU_RATIOS+=("$cpu_ratio")
  USER_RATIOS+=("$user_ratio")
done
python3 -c "import statistics, sys
n = (len(sys.argv) - 1) // 3
med = lambda i: f'**{statistics.median(map(float, sys.argv[1 + i * n:1 + (i + 1) * n])):.2f}×**'
print(f'| median | | | {med(0)} | | | {med(1)} | {med(2)} |')" "${RATIOS[@]}" "${CPU_RATIOS[@]}" "${USER_RATIOS[@]}"
hwm() { awk '/^VmHWM/ { printf "%.1f MB", $2 / 1024 }' "/proc/$1/status"; }
echo
echo "Peak RSS (VmHWM) of each gateway over the run: before $(hwm "$PID_BEFORE"), after $(hwm "$PID_AFTER")."
