#!/usr/bin/env bash
# Two builds of the gateway under a flood of distinct rate-limit keys, one after the other: each
# request through the pass-through route comes from another client address (`X-Forwarded-For`,
# believed from 127.0.0.1) on a policy that counts per address, so that the in-memory limiter
# tracks a new key a request, until `ratelimit.max_keys` (1,000,000 by default) holds it. Prints
# each gateway's RSS before and after the flood, the keys sent, and the ratio. See BENCHMARKS.md.
#
#   bench/keyflood.sh /tmp/before target/release/bff-mobile
#
# Settings (environment): DURATION seconds of flood per gateway (default 60: about 2,000,000
# keys at the pass-through's rate on a 2-core machine), CONNS (64).
# Needs: python3, taskset, nginx, wrk and curl (bench/pair.sh).
set -euo pipefail

[ $# = 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
DURATION=${DURATION:-60}
CONNS=${CONNS:-64}
WRAP_BEFORE=()
WRAP_AFTER=()
LIMIT_KEY=client_ip
ROUTE=pass
# shellcheck source=bench/pair.sh
source "$(dirname "$0")/pair.sh"

# A new address a request: 10.0.0.0/8 holds 16,777,216 of them.
cat >"$WORK/flood.lua" <<'LUA'
n = 0
request = function()
  n = n + 1
  wrk.headers["X-Forwarded-For"] =
    string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format()
end
LUA

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# flood NAME PID PORT: prints "keys rss_before_kb rss_after_kb hwm_kb"
flood() {
  local before out keys
  before=$(rss_kb "$2")
  out=$(taskset -c 0 wrk -t1 -c "$CONNS" -d "${DURATION}s" -s "$WORK/flood.lua" "${LOAD[@]}" "$(url "$3")")
  ! grep -q "Non-2xx" <<<"$out" || die "answers other than 2xx from $1: $out"
  keys=$(awk '/requests in/ {print $1}' <<<"$out")
  # Keys admitted within the last two minutes stay live (a 60 s sliding window): the store is
  # still full when read.
  sleep 2
  echo "$keys $before $(rss_kb "$2") $(hwm_kb "$2")"
}

echo "[keyflood] flooding the first build for ${DURATION}s" >&2
read -r K_B R0_B R1_B H_B < <(flood before "$PID_BEFORE" "$P_BEFORE")
echo "[keyflood] flooding the second build for ${DURATION}s" >&2
read -r K_A R0_A R1_A H_A < <(flood after "$PID_AFTER" "$P_AFTER")

for k in "$K_B" "$K_A"; do
  [ "$k" -ge 1200000 ] || echo "[keyflood] warning: $k keys did not fill a store of 1,000,000 well; raise DURATION" >&2
done
echo
echo "| build | keys sent | RSS before | RSS after the flood | growth | peak RSS |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| before | $K_B | $(mb "$R0_B") MB | $(mb "$R1_B") MB | $(mb $((R1_B - R0_B))) MB | $(mb "$H_B") MB |"
echo "| after | $K_A | $(mb "$R0_A") MB | $(mb "$R1_A") MB | $(mb $((R1_A - R0_A))) MB | $(mb "$H_A") MB |"
echo
awk -v b=$((R1_B - R0_B)) -v a=$((R1_A - R0_A)) 'BEGIN {printf "growth after / before: **%.2fx**\n", a / b}'
