#!/usr/bin/env bash
# bff-mobile built with profile-guided optimisation (PGO): built once with instrumentation, run
# under the suite's workload, and built again with the profile it wrote, so that the compiler lays
# out and inlines the request path for the branches requests take. See BENCHMARKS.md.
#
#   bench/pgo.sh                                  # writes target/pgo/<host>/release/bff-mobile
#   GATEWAY_BIN=target/pgo/x86_64-unknown-linux-gnu/release/bff-mobile bench/run.sh
#
# The workload (bench/pair.sh's configuration, two gateways on CPU 1, the load on CPU 0): the
# pass-through route over 64 HTTP/1.1 connections, the same with brotli-compressed answers, the
# same over HTTP/2 client connections, and the mobile profile's three gRPC calls to the demo
# backends for 64 users. What it does not run stays unprofiled or is laid out as cold: API keys,
# Redis, the response cache and HTTP/2 to backends among them.
#
# Settings (environment): DURATION seconds per load (default 10), LLVM_PROFDATA (otherwise found
# in rustup's llvm-tools component or as llvm-profdata-<major> from the distribution; its LLVM
# major version must be rustc's).
# Needs: what bench/pair.sh needs (python3, taskset, nginx, wrk, curl), oha, and llvm-profdata.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
say() { printf '[pgo] %s\n' "$*" >&2; }
fail() { printf '[pgo] error: %s\n' "$*" >&2; exit 1; }

HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
find_profdata() {
  local candidate
  for candidate in "${LLVM_PROFDATA:-}" \
    "$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata" \
    "$(command -v "llvm-profdata-$LLVM_MAJOR" || true)" \
    "$(command -v llvm-profdata || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if "$candidate" --version | grep -q "LLVM version $LLVM_MAJOR\."; then
      echo "$candidate"
      return
    fi
  done
  fail "no llvm-profdata of LLVM $LLVM_MAJOR (rustc's): rustup component add llvm-tools, or install llvm-$LLVM_MAJOR, or set LLVM_PROFDATA"
}
PROFDATA=$(find_profdata)
command -v oha >/dev/null || fail "oha is missing (cargo install oha --locked)"
say "llvm-profdata: $PROFDATA"

DATA=$(mktemp -d -t bff-pgo.XXXXXX)
trap 'rm -rf "$DATA"' EXIT
# `--target` keeps the flags off build scripts and procedural macros, which would otherwise be
# instrumented too and write profiles of their own while the crates build.
say "building bff-mobile with instrumentation"
RUSTFLAGS="-Cprofile-generate=$DATA/raw" cargo build --release --locked -p bff-mobile \
  --target "$HOST" --target-dir target/pgo-instrumented
say "building the demo backends"
cargo build --release --locked -p demo-backends

say "running the workload, ${DURATION} s a load"
(
  BEFORE=$(realpath "target/pgo-instrumented/$HOST/release/bff-mobile")
  AFTER=$BEFORE
  WRAP_BEFORE=()
  WRAP_AFTER=()
  ROUTE=profile
  # shellcheck source=bench/pair.sh
  source bench/pair.sh
  gateway="http://127.0.0.1:$P_BEFORE"
  auth=(-H "Authorization: Bearer $TOKEN")
  wrk=(taskset -c 0 wrk -t1)
  "${wrk[@]}" -c 64 -d "${DURATION}s" "${auth[@]}" "$gateway/api/catalog/item.json" | grep Requests/sec
  "${wrk[@]}" -c 8 -d "${DURATION}s" "${auth[@]}" -H "Accept-Encoding: br, gzip" \
    "$gateway/api/catalog/item.json" | grep Requests/sec
  taskset -c 0 oha --no-tui --output-format quiet --http2 -c 8 -p 8 -z "${DURATION}s" \
    "${auth[@]}" "$gateway/api/catalog/item.json"
  "${wrk[@]}" -c 8 -d "${DURATION}s" -s "$WORK/users.lua" "$gateway/api/v2/user/profile" | grep Requests/sec
  # The profile is written as a gateway exits: a graceful stop, then the rest of pair.sh's cleanup.
  kill -TERM "$PID_BEFORE" "$PID_AFTER"
  wait "$PID_BEFORE" "$PID_AFTER" || true
)
shopt -s nullglob
raw=("$DATA"/raw/*.profraw)
[ ${#raw[@]} -gt 0 ] || fail "the instrumented gateway wrote no profile"
mkdir -p target/pgo
"$PROFDATA" merge -o target/pgo/bff-mobile.profdata "${raw[@]}"

say "building bff-mobile with the profile"
RUSTFLAGS="-Cprofile-use=$(realpath target/pgo/bff-mobile.profdata)" cargo build --release --locked \
  -p bff-mobile --target "$HOST" --target-dir target/pgo
say "done: target/pgo/$HOST/release/bff-mobile"
