#!/usr/bin/env bash
# Two builds of the gateway side by side, in one run: the pass-through throughput and CPU per
# request of each, interleaved round by round, and their ratio. For judging a change against the
# build before it on a noisy machine. See BENCHMARKS.md.
#
#   git stash && cargo build --release -p bff-mobile && cp target/release/bff-mobile /tmp/before
#   git stash pop && cargo build --release -p bff-mobile
#   bench/compare.sh /tmp/before target/release/bff-mobile
#
# Settings (environment): ROUNDS (default 5), DURATION seconds per run (default 8), CONNS (64),
# ACCEPT_ENCODING (none by default: no compression; `gzip` or `br` to measure the mobile BFF's).
# Needs: python3, taskset, nginx and wrk. Both gateways on CPU 1 with one runtime worker each (one
# under load at a time), the load generator and the static backend on CPU 0.
set -euo pipefail

[ $# = 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
ACCEPT_ENCODING=${ACCEPT_ENCODING:-}

die() { printf '[compare] error: %s\n' "$*" >&2; exit 1; }
if ! command -v nginx >/dev/null && [ -x /usr/sbin/nginx ]; then PATH="$PATH:/usr/sbin"; fi
for tool in python3 taskset nginx wrk curl; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
[ "$(nproc)" -ge 2 ] || die "two CPUs are needed"
for bin in "$BEFORE" "$AFTER"; do [ -x "$bin" ] || die "$bin is not an executable"; done

WORK=$(mktemp -d -t bff-compare.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r P_BACKEND P_BEFORE P_AFTER < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

# The static backend: nginx serving a 1 KB JSON document, as in bench/run.sh.
mkdir -p "$WORK/static" "$WORK/backend"
python3 - "$WORK/static/item.json" <<'EOF'
import json, sys
doc = {"id": "item-042", "title": "The Broken Kingdom", "summary": ""}
doc["summary"] = "x" * (1024 - len(json.dumps(doc, separators=(",", ":"))))
open(sys.argv[1], "w").write(json.dumps(doc, separators=(",", ":")))
EOF
NGINX_AS=()
if [ "$(id -u)" = 0 ]; then
  chown -R 65534:65534 "$WORK/backend"
  NGINX_AS=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
{
  echo "worker_processes 1; pid $WORK/backend/nginx.pid; error_log $WORK/backend/error.log warn;"
  echo "events { worker_connections 8192; }"
  echo "http { access_log off; default_type application/json; sendfile on; tcp_nodelay on;"
  echo "  keepalive_requests 10000000; keepalive_timeout 300s;"
  for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $WORK/backend/${t}_temp;"; done
  echo "  server { listen 127.0.0.1:$P_BACKEND backlog=4096;"
  echo "    location / { root $WORK/static; try_files /item.json =404; } } }"
} >"$WORK/backend/nginx.conf"

SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
TOKEN=$(python3 - "$SECRET" <<'EOF'
import base64, hashlib, hmac, json, sys, time
secret = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
body = b64(json.dumps({"iss": "https://bench.invalid", "aud": "bff-mobile", "sub": "user-0042",
                       "iat": now, "exp": now + 6 * 3600, "scope": "feed:read"}).encode())
sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
EOF
)
gateway_config() { # PORT
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
[telemetry]
log_level = "warn"
[auth]
mode = "jwt"
verified_cache_max_entries = 10000
[[auth.issuers]]
issuer = "https://bench.invalid"
audiences = ["bff-mobile"]
hs256_secret = "$SECRET"
[ratelimit.policies.default]
algorithm = "sliding_window"
limit = 1000000000
period_secs = 60
[cache]
enabled = false
[[proxy]]
prefix = "/api/catalog"
upstream = "static"
rewrite = "/"
scopes = []
methods = ["GET", "HEAD"]
[upstreams.static]
url = "http://127.0.0.1:$P_BACKEND"
timeout_ms = 5000
EOF
}
gateway_config "$P_BEFORE" >"$WORK/before.toml"
gateway_config "$P_AFTER" >"$WORK/after.toml"

start() { # LOG CMD...
  local log=$1; shift
  "$@" >"$WORK/$log" 2>&1 &
  PIDS+=("$!")
}
start backend.out taskset -c 0 "${NGINX_AS[@]}" nginx -c "$WORK/backend/nginx.conf" -g 'daemon off;'
start before.out env -u RUST_LOG TOKIO_WORKER_THREADS=1 taskset -c 1 "$BEFORE" --config "$WORK/before.toml"
PID_BEFORE=${PIDS[-1]}
start after.out env -u RUST_LOG TOKIO_WORKER_THREADS=1 taskset -c 1 "$AFTER" --config "$WORK/after.toml"
PID_AFTER=${PIDS[-1]}

url() { echo "http://127.0.0.1:$1/api/catalog/item.json"; }
for port in "$P_BEFORE" "$P_AFTER"; do
  for _ in $(seq 100); do
    curl -fso /dev/null -H "Authorization: Bearer $TOKEN" "$(url "$port")" && continue 2
    sleep 0.1
  done
  cat "$WORK"/*.out >&2
  die "the gateway on port $port does not answer"
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ENCODING=()
[ -z "$ACCEPT_ENCODING" ] || ENCODING=(-H "Accept-Encoding: $ACCEPT_ENCODING")
run() { # PORT SECONDS: requests per second
  taskset -c 0 wrk -t1 -c "$CONNS" -d "${2}s" -H "Authorization: Bearer $TOKEN" "${ENCODING[@]}" "$(url "$1")" |
    awk '/Requests\/sec/ {print $2}'
}
run "$P_BEFORE" 2 >/dev/null
run "$P_AFTER" 2 >/dev/null

CLK=$(getconf CLK_TCK)
echo "| round | before req/s | after req/s | after / before | before CPU µs/req | after CPU µs/req |"
echo "|---|---:|---:|---:|---:|---:|"
RATIOS=()
for r in $(seq "$ROUNDS"); do
  t0=$(ticks "$PID_BEFORE"); a=$(run "$P_BEFORE" "$DURATION"); t1=$(ticks "$PID_BEFORE")
  t2=$(ticks "$PID_AFTER"); b=$(run "$P_AFTER" "$DURATION"); t3=$(ticks "$PID_AFTER")
  line=$(python3 -c "
a, b, d, clk = $a, $b, $DURATION, $CLK
ca = ($t1 - $t0) / clk * 1e6 / (a * d)
cb = ($t3 - $t2) / clk * 1e6 / (b * d)
print(f'| $r | {a:,.0f} | {b:,.0f} | {b / a:.2f}× | {ca:.1f} | {cb:.1f} |')
print(b / a)")
  echo "$line" | head -1
  RATIOS+=("$(echo "$line" | tail -1)")
done
python3 -c "import statistics, sys; print(f'| median | | | **{statistics.median(map(float, sys.argv[1:])):.2f}×** | | |')" "${RATIOS[@]}"
hwm() { awk '/^VmHWM/ { printf "%.1f MB", $2 / 1024 }' "/proc/$1/status"; }
echo
echo "Peak RSS (VmHWM) of each gateway over the run: before $(hwm "$PID_BEFORE"), after $(hwm "$PID_AFTER")."
