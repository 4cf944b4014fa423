#!/usr/bin/env bash
# Two builds of the gateway side by side under callgrind: user-space instructions per request of
# the pass-through route (or, with ROUTE=profile, of the mobile profile's three gRPC calls). They
# repeat from run to run whatever else the machine is doing, where bench/compare.sh's throughput
# moves with the host. See BENCHMARKS.md.
#
#   bench/callgrind.sh /tmp/before target/release/bff-mobile
#
# Each gateway runs under `valgrind --tool=callgrind` with the suite's configuration
# (bench/pair.sh); after a warm-up its counters are zeroed, wrk sends requests for DURATION
# seconds over CONNS connections, and the counts are dumped and divided by the requests wrk
# completed. SHA-256 (the functions of `sha2::sha256`, which callgrind runs in software where the
# CPU has instructions for it) is reported apart and left out of the total, but for what the
# compiler inlined into its callers (a PGO build inlines more of it); callgrind counts a large
# copy (`rep movsb`) a byte at a time, which overstates `memcpy`.
#
# Settings (environment): DURATION seconds of counted load (default 10), CONNS (default 8), ROUTE
# (see bench/pair.sh), KEEP a folder to keep the callgrind files in (for callgrind_annotate; default: removed), TOP
# functions to list per build (default 25).
# Needs: valgrind, python3, taskset, nginx, wrk and curl.
set -euo pipefail

[ $# = 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
DURATION=${DURATION:-10}
CONNS=${CONNS:-8}
TOP=${TOP:-25}
for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "[callgrind] error: $tool is missing (apt-get install valgrind)" >&2; exit 1; }
done
KEEP=${KEEP:-}
if [ -n "$KEEP" ]; then mkdir -p "$KEEP"; OUTDIR=$(realpath "$KEEP"); else OUTDIR=$(mktemp -d -t bff-callgrind.XXXXXX); fi

grind() { echo valgrind --tool=callgrind --dump-instr=no "--callgrind-out-file=$OUTDIR/$1.out"; }
read -ra WRAP_BEFORE < <(grind before)
read -ra WRAP_AFTER < <(grind after)
# shellcheck source=bench/pair.sh
source "$(dirname "$0")/pair.sh"
[ -n "$KEEP" ] || trap 'cleanup; rm -rf "$OUTDIR"' EXIT

load() { # PORT SECONDS: requests completed, all of them answered 2xx
  local out
  out=$(taskset -c 0 wrk -t1 -c "$CONNS" -d "${2}s" "${LOAD[@]}" "$(url "$1")")
  ! grep -q "Non-2xx" <<<"$out" || die "answers other than 2xx: $out"
  awk '/requests in/ {print $1}' <<<"$out"
}
# count NAME PID PORT: prints "requests instructions sha256" for one counted run
count() {
  load "$3" 3 >/dev/null
  callgrind_control -z "$2" >/dev/null 2>&1
  local n
  n=$(load "$3" "$DURATION")
  callgrind_control -d "$2" >/dev/null 2>&1
  local dump
  dump=$(find "$OUTDIR" -name "$1.out.*" -newer "$WORK/before.toml" | sort | tail -1)
  [ -n "$dump" ] || die "no callgrind dump for $1"
  callgrind_annotate --inclusive=no --threshold=100 "$dump" >"$OUTDIR/$1.txt"
  python3 - "$OUTDIR/$1.txt" "$n" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
num = lambda s: int(s.replace(",", ""))
total = num(re.search(r"^\s*([\d,]+).*PROGRAM TOTALS", text, re.M).group(1))
sha = sum(num(m.group(1)) for m in re.finditer(r"^\s*([\d,]+)\s.*\bsha2::sha256::", text, re.M))
print(sys.argv[2], total, sha)
PY
}
read -r N_B I_B S_B < <(count before "$PID_BEFORE" "$P_BEFORE")
read -r N_A I_A S_A < <(count after "$PID_AFTER" "$P_AFTER")

python3 - "$N_B" "$I_B" "$S_B" "$N_A" "$I_A" "$S_A" "$OUTDIR" "$TOP" <<'PY'
import re, sys
nb, ib, sb, na, ia, sa = map(int, sys.argv[1:7])
outdir, top = sys.argv[7], int(sys.argv[8])
pb, pa = (ib - sb) / nb, (ia - sa) / na
print("| build | requests | instructions a request, SHA-256 left out | SHA-256 a request |")
print("|---|---:|---:|---:|")
print(f"| before | {nb:,} | {pb:,.0f} | {sb / nb:,.0f} |")
print(f"| after | {na:,} | {pa:,.0f} | {sa / na:,.0f} |")
print(f"\nafter / before: **{pa / pb:.3f}×** ({pa - pb:+,.0f} instructions a request)\n")
def fns(name, n, total):
    # callgrind_annotate also lists the functions that hold the whole run (main, the runtime's
    # block_on) at nearly the total: they are left out.
    rows = {}
    for line in open(f"{outdir}/{name}.txt"):
        m = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        count = int(m.group(1).replace(",", ""))
        if count < total / 2:
            rows[m.group(2).split(" [")[0]] = count / n
    return rows
b, a = fns("before", nb, ib), fns("after", na, ia)
names = sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0), b.get(k, 0)))[:top]
print("| function (self) | before a request | after a request |")
print("|---|---:|---:|")
for k in names:
    print(f"| `{k[-110:]}` | {b.get(k, 0):,.0f} | {a.get(k, 0):,.0f} |")
PY
[ -z "$KEEP" ] || echo -e "\ncallgrind files kept in $OUTDIR"
