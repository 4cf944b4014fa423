#!/usr/bin/env bash
# The gateway against nginx on one machine, in one run. See BENCHMARKS.md for what each figure
# means and the targets it is held to.
#
#   bench/run.sh                 # the whole suite, about 6 minutes after the build
#   DURATION=5 ROUNDS=1 bench/run.sh   # a quick pass
#   ALLOCATORS=1 bench/run.sh    # also the gateway built with another allocator, interleaved
#   H2=0 bench/run.sh            # without the gateway that speaks HTTP/2 to the backend
#
# Settings (environment):
#   DURATION     seconds per load run (default 10)
#   ROUNDS       interleaved throughput rounds, nginx then gateway in each (default 3)
#   CONNS        connections of the throughput runs (default 64)
#   PIN          1 (default): proxies on CPU 1, load generator and backends on CPU 0, one worker
#                each; 0: no pinning, as many workers as CPUs for both proxies
#   ACCESS_LOG   0 (default): no access log in either proxy; 1: both log every request to a file
#   ALLOCATORS   1: add a gateway built with another allocator to the throughput and memory runs
#   ALLOCATOR    that allocator: system (default; the build uses jemalloc) or mimalloc
#   H2           1 (default): add a second gateway, the same but for `protocol = "http2"` to the
#                backend (nginx, cleartext HTTP/2), to the throughput and memory runs; 0: leave it out
#   SKIP_BUILD   1: use the release binaries already built
#   GATEWAY_BIN  the gateway binary to measure (default: target/release/bff-mobile), such as an
#                earlier build kept aside, to run the suite on it in the same hour
#   OUT          also write the report (markdown) to this file
#
# Needs: cargo, python3, taskset, nginx and wrk (installed with apt-get when missing and run as root), and
# oha (installed with `cargo install oha --locked` when missing). Sends traffic to 127.0.0.1 only.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
PIN=${PIN:-1}
ACCESS_LOG=${ACCESS_LOG:-0}
ALLOCATORS=${ALLOCATORS:-0}
ALLOCATOR=${ALLOCATOR:-system}
H2=${H2:-1}
IDLE_CONNS=${IDLE_CONNS:-1000}
case "$ALLOCATOR" in
  system) ALLOCATOR_FLAGS=(--no-default-features) ;;
  mimalloc) ALLOCATOR_FLAGS=(--features mimalloc) ;;
  *) echo "ALLOCATOR: system or mimalloc" >&2; exit 2 ;;
esac
SKIP_BUILD=${SKIP_BUILD:-0}
OUT=${OUT:-}
OHA_VERSION=${OHA_VERSION:-1.16.0}
FANOUT_LATENCY_MS=20
HIGH_CONNS=1000

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
cd "$ROOT"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# === tools ===

export PATH="$HOME/.cargo/bin:$PATH"
command -v python3 >/dev/null || die "python3 is needed"
command -v taskset >/dev/null || die "taskset (util-linux) is needed"
if ! command -v nginx >/dev/null && [ -x /usr/sbin/nginx ]; then PATH="$PATH:/usr/sbin"; fi
if ! command -v nginx >/dev/null; then
  [ "$(id -u)" = 0 ] || die "nginx is missing: apt-get install -y nginx"
  log "installing nginx"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  PATH="$PATH:/usr/sbin"
fi
if ! command -v wrk >/dev/null; then
  [ "$(id -u)" = 0 ] || die "wrk is missing: apt-get install -y wrk"
  log "installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if ! command -v oha >/dev/null; then
  log "installing oha $OHA_VERSION (cargo install, a few minutes)"
  nice -n 10 cargo install oha --locked --version "$OHA_VERSION" >&2
fi

if [ "$SKIP_BUILD" != 1 ]; then
  log "building release binaries"
  if [ "$ALLOCATORS" = 1 ]; then
    nice -n 10 cargo build --release -q -p bff-mobile "${ALLOCATOR_FLAGS[@]}"
    mkdir -p target/bench && cp target/release/bff-mobile "target/bench/bff-mobile-$ALLOCATOR"
  fi
  nice -n 10 cargo build --release -q -p bff-mobile -p demo-backends
fi
GATEWAY_BIN=${GATEWAY_BIN:-$ROOT/target/release/bff-mobile}
DEMO_BIN=$ROOT/target/release/demo-backends
ALT_BIN=$ROOT/target/bench/bff-mobile-$ALLOCATOR
if [ ! -x "$GATEWAY_BIN" ] || [ ! -x "$DEMO_BIN" ]; then die "release binaries missing (run without SKIP_BUILD=1)"; fi
[ "$ALLOCATORS" != 1 ] || [ -x "$ALT_BIN" ] || die "$ALLOCATOR build missing (run without SKIP_BUILD=1)"

# === layout ===

NCPU=$(nproc)
if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ]; then
  # The proxy under test has CPU 1 to itself; the load generator and the backends share CPU 0.
  PROXY_PIN=(taskset -c 1); LOAD_PIN=(taskset -c 0); WORKERS=1
else
  PIN=0; PROXY_PIN=(); LOAD_PIN=(); WORKERS=$NCPU
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[[ "$IDLE_CONNS" =~ ^[1-9][0-9]*$ ]] || die "IDLE_CONNS: a number of connections, at least 1"
MOST_CONNS=$((HIGH_CONNS > IDLE_CONNS ? HIGH_CONNS : IDLE_CONNS))
[ "$(ulimit -n)" -ge $((MOST_CONNS * 3)) ] || die "open-file limit $(ulimit -n) is too low for $MOST_CONNS connections"

WORK=$(mktemp -d -t bff-bench.XXXXXX)
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

# Free ports, chosen by the kernel.
read -r P_DIRECT P_FOR_NGINX P_FOR_GW P_FOR_GW2 P_FOR_H2 P_NGINX P_GW P_GW2 P_H2 P_REST P_GRPC < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(11)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

wait_http() { # URL [tries]
  local _
  for _ in $(seq "${2:-100}"); do
    curl -fso /dev/null "$1" && return 0
    sleep 0.1
  done
  die "nothing answers at $1"
}

# === the static backend: nginx serving a 1 KB JSON document ===
# Three server blocks, one per caller (direct, nginx, gateway), identical but for their port and
# log, so each caller's upstream connections can be counted: $connection is the connection's
# serial number, so distinct values are the connections opened.

mkdir -p "$WORK/static" "$WORK/backend" "$WORK/proxy"
python3 - "$WORK/static/item.json" <<'EOF'
import json, sys
doc = {"id": "item-042", "title": "The Broken Kingdom", "kind": "series", "year": 2021,
       "rating": 8.4, "genres": ["drama", "fantasy"],
       "image": "https://img.demo.invalid/items/item-042?w=360", "summary": ""}
doc["summary"] = "x" * (1024 - len(json.dumps(doc, separators=(",", ":"))))
body = json.dumps(doc, separators=(",", ":"))
assert len(body) == 1024, len(body)
open(sys.argv[1], "w").write(body)
EOF

NGINX_AS=()
if [ "$(id -u)" = 0 ]; then
  # Never run nginx as root: the master and its workers run as nobody.
  chown -R 65534:65534 "$WORK/backend" "$WORK/proxy"
  NGINX_AS=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi

nginx_common() { # DIR
  cat <<EOF
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; multi_accept on; }
EOF
}
nginx_temp_paths() { # DIR
  for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $1/${t}_temp;"; done
}

backend_block() { # PORT NAME [LISTEN OPTION]
  cat <<EOF
  server {
    listen 127.0.0.1:$1 ${3:-} backlog=4096;
    access_log $WORK/backend/$2.log reuse;
    location / { root $WORK/static; try_files /item.json =404; }
  }
EOF
}
{
  echo "worker_processes 1;"
  nginx_common "$WORK/backend"
  echo "http {"
  nginx_temp_paths "$WORK/backend"
  cat <<EOF
  default_type application/json;
  sendfile on; tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 300s;
  log_format reuse '\$connection \$connection_requests';
EOF
  backend_block "$P_DIRECT" direct
  backend_block "$P_FOR_NGINX" nginx
  backend_block "$P_FOR_GW" gateway
  backend_block "$P_FOR_GW2" alt
  backend_block "$P_FOR_H2" h2 http2   # cleartext HTTP/2 (prior knowledge)
  echo "}"
} > "$WORK/backend/nginx.conf"

# === the reference: nginx as a reverse proxy ===

if [ "$ACCESS_LOG" = 1 ]; then PROXY_LOG="access_log $WORK/proxy/access.log combined;"; else PROXY_LOG="access_log off;"; fi
{
  echo "worker_processes $WORKERS;"
  nginx_common "$WORK/proxy"
  echo "http {"
  nginx_temp_paths "$WORK/proxy"
  cat <<EOF
  $PROXY_LOG
  tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 300s;
  upstream static {
    server 127.0.0.1:$P_FOR_NGINX;
    keepalive 256;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }
  upstream demo {   # the demo backends' REST services: one fan-out part through a proxy
    server 127.0.0.1:$P_REST;
    keepalive 16;
  }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location /api/catalog/ {
      proxy_pass http://static/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
    location /api/demo/ {
      proxy_pass http://demo/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} > "$WORK/proxy/nginx.conf"

# === the gateway ===

SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
ISSUER="https://bench.invalid"
TOKEN=$(python3 - "$SECRET" "$ISSUER" <<'EOF'
import base64, hashlib, hmac, json, sys, time
secret, issuer = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
claims = {"iss": issuer, "aud": "bff-mobile", "sub": "user-0042", "iat": now, "exp": now + 6 * 3600,
          "scope": "profile:read feed:read"}
body = b64(json.dumps(claims).encode())
sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
EOF
)
AUTH="Authorization: Bearer $TOKEN"
if [ "$ACCESS_LOG" = 1 ]; then GW_LOG_LEVEL="info"; else GW_LOG_LEVEL="warn"; fi

cat > "$WORK/gateway.toml" <<EOF
# Pass-through to the static backend, and the mobile routes against the demo backends.
[server]
listen = "127.0.0.1:$P_GW"
request_timeout_ms = 10000

[telemetry]
log_format = "json"
log_level = "$GW_LOG_LEVEL"   # "warn" leaves out the access line of every request

[auth]
mode = "jwt"
verified_cache_max_entries = 10000   # the verified-token cache, on

[[auth.issuers]]
issuer = "$ISSUER"
audiences = ["bff-mobile"]
hs256_secret = "$SECRET"

[ratelimit]
failure_mode = "fail_open_local"

[ratelimit.policies.default]   # in memory; high enough that no request is limited
algorithm = "sliding_window"
limit = 1000000000
period_secs = 60

[cache]
enabled = false   # the fan-out is measured, not a cached answer

[client]
min_client_version = "2.0.0"

[[proxy]]
prefix = "/api/catalog"
upstream = "static"
rewrite = "/"
scopes = []
methods = ["GET", "HEAD"]

[[proxy]]   # one fan-out part through the gateway, as through nginx
prefix = "/api/demo"
upstream = "demo"
rewrite = "/"
scopes = []
methods = ["GET"]

[upstreams.static]
url = "http://127.0.0.1:$P_FOR_GW"
timeout_ms = 5000

[upstreams.demo]
url = "http://127.0.0.1:$P_REST"
timeout_ms = 5000

[upstreams.user]
url = "http://127.0.0.1:$P_GRPC"
timeout_ms = 800

[upstreams.subscription]
url = "http://127.0.0.1:$P_GRPC"
timeout_ms = 300

[upstreams.preferences]
url = "http://127.0.0.1:$P_GRPC"
timeout_ms = 300

[upstreams.content]
url = "http://127.0.0.1:$P_REST"
timeout_ms = 500

[upstreams.ads]
url = "http://127.0.0.1:$P_REST"
timeout_ms = 250

[upstreams.recommendations]
url = "http://127.0.0.1:$P_REST"
timeout_ms = 400
EOF
"$GATEWAY_BIN" check --config "$WORK/gateway.toml" >/dev/null
# The build with the other allocator, when compared, gets its own port and its own backend port (and log).
sed -e "s|127.0.0.1:$P_GW\"|127.0.0.1:$P_GW2\"|" -e "s|127.0.0.1:$P_FOR_GW\"|127.0.0.1:$P_FOR_GW2\"|" \
  "$WORK/gateway.toml" >"$WORK/gateway-alt.toml"
# The gateway that speaks HTTP/2 to the backend: the same but for its ports and the protocol.
sed -e "s|127.0.0.1:$P_GW\"|127.0.0.1:$P_H2\"|" \
  -e "s|^url = \"http://127.0.0.1:$P_FOR_GW\"|url = \"http://127.0.0.1:$P_FOR_H2\"\nprotocol = \"http2\"|" \
  "$WORK/gateway.toml" >"$WORK/gateway-h2.toml"
grep -q '^protocol = "http2"' "$WORK/gateway-h2.toml" || die "gateway-h2.toml: no protocol line"
"$GATEWAY_BIN" check --config "$WORK/gateway-h2.toml" >/dev/null

# === start everything ===

LAST_PID=""
start() { # LOGNAME CMD...: runs CMD in the background, its pid in LAST_PID
  local name=$1; shift
  "$@" >"$WORK/$name.out" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

log "starting the static backend, nginx, the demo backends and the gateway"
start backend "${LOAD_PIN[@]}" "${NGINX_AS[@]}" nginx -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" -g 'daemon off;'
BACKEND_PID=$LAST_PID
start proxy "${PROXY_PIN[@]}" "${NGINX_AS[@]}" nginx -e "$WORK/proxy/error.log" -c "$WORK/proxy/nginx.conf" -g 'daemon off;'
PROXY_PID=$LAST_PID
start demo "${LOAD_PIN[@]}" "$DEMO_BIN" --grpc-listen "127.0.0.1:$P_GRPC" --rest-listen "127.0.0.1:$P_REST"
GW_ENV=(env -u RUST_LOG "TOKIO_WORKER_THREADS=$WORKERS")
start gateway "${PROXY_PIN[@]}" "${GW_ENV[@]}" "$GATEWAY_BIN" --config "$WORK/gateway.toml"
GW_PID=$LAST_PID
ALT_PID=""
if [ "$ALLOCATORS" = 1 ]; then
  start gateway-alt "${PROXY_PIN[@]}" "${GW_ENV[@]}" "$ALT_BIN" --config "$WORK/gateway-alt.toml"
  ALT_PID=$LAST_PID
fi
H2_PID=""
if [ "$H2" = 1 ]; then
  start gateway-h2 "${PROXY_PIN[@]}" "${GW_ENV[@]}" "$GATEWAY_BIN" --config "$WORK/gateway-h2.toml"
  H2_PID=$LAST_PID
fi

DIRECT_URL="http://127.0.0.1:$P_DIRECT/item.json"
NGINX_URL="http://127.0.0.1:$P_NGINX/api/catalog/item.json"
GW_URL="http://127.0.0.1:$P_GW/api/catalog/item.json"
GW2_URL="http://127.0.0.1:$P_GW2/api/catalog/item.json"
H2_URL="http://127.0.0.1:$P_H2/api/catalog/item.json"
PROFILE_URL="http://127.0.0.1:$P_GW/api/v2/user/profile"
wait_http "$DIRECT_URL"
wait_http "$NGINX_URL"
wait_http "http://127.0.0.1:$P_REST/healthz"
wait_http "http://127.0.0.1:$P_GW/healthz"
[ -z "$ALT_PID" ] || wait_http "http://127.0.0.1:$P_GW2/healthz"
[ -z "$H2_PID" ] || wait_http "http://127.0.0.1:$P_H2/healthz"

# The answers are the same document through each path.
for url in "$DIRECT_URL" "$NGINX_URL"; do
  [ "$(curl -fs "$url" | wc -c)" = 1024 ] || die "$url does not answer the 1 KB document"
done
[ "$(curl -fs "$GW_URL" -H "$AUTH" | wc -c)" = 1024 ] || die "the gateway's pass-through does not answer the 1 KB document"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$GW_URL")" = 401 ] || die "the gateway's pass-through answers without a token"
if [ -n "$H2_PID" ]; then
  [ "$(curl -fs "$H2_URL" -H "$AUTH" | wc -c)" = 1024 ] || die "the HTTP/2 gateway's pass-through does not answer the 1 KB document"
fi

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
rss_total_kb() { # PID...
  local total=0 p v
  for p in "$@"; do v=$(rss_kb "$p" 2>/dev/null || echo 0); total=$((total + ${v:-0})); done
  echo "$total"
}

# === load ===

mkdir -p "$WORK/results"
CLK_TCK=$(getconf CLK_TCK)
WRK_THREADS=$([ "$PIN" = 1 ] && echo 1 || echo "$NCPU")

pids_of() { # WHO: the processes whose CPU time a run is charged to
  case $1 in
    nginx) echo "$PROXY_PID" $(pgrep -P "$PROXY_PID") ;;
    gateway) echo "$GW_PID" ;;
    alt) echo "$ALT_PID" ;;
    h2) echo "$H2_PID" ;;
    *) echo "$BACKEND_PID" $(pgrep -P "$BACKEND_PID") ;;
  esac
}
# PID...: time on a CPU, in nanoseconds, summed over the threads alive (from the scheduler's count).
# A thread that ends takes its time with it: the report reads it only for the one-at-a-time hop,
# whose proxies start and end no thread.
run_ns_of() {
  local total=0 p t ns
  for p in "$@"; do
    for t in /proc/"$p"/task/*/schedstat; do
      read -r ns _ <"$t" 2>/dev/null || continue
      total=$((total + ns))
    done
  done
  echo "$total"
}
ticks_of() { # PID...: user and system CPU time, in clock ticks (threads included)
  local user=0 system=0 p u s
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat")
    user=$((user + u)) system=$((system + s))
  done
  echo "$user $system"
}

# load NAME WHO TOOL URL [ARGS...]: one run of oha or wrk from the load CPUs; the report goes to
# $WORK/results/NAME.json (oha's JSON shape, wrk's text converted to it) and the CPU time WHO
# spent to NAME.cpu.
load() {
  local name=$1 who=$2 tool=$3 url=$4 user0 system0 user1 system1 ns0 ns1
  shift 4
  local pids
  pids=$(pids_of "$who")
  # shellcheck disable=SC2086
  read -r user0 system0 < <(ticks_of $pids)
  # shellcheck disable=SC2086
  ns0=$(run_ns_of $pids)
  case $tool in
    oha)
      "${LOAD_PIN[@]}" oha --no-tui --output-format json --disable-compression "$@" "$url" \
        >"$WORK/results/$name.json" 2>"$WORK/results/$name.err" \
        || die "oha failed on $name: $(cat "$WORK/results/$name.err")"
      ;;
    wrk)
      "${LOAD_PIN[@]}" wrk -t "$WRK_THREADS" "$@" "$url" >"$WORK/results/$name.txt" 2>&1 \
        || die "wrk failed on $name: $(cat "$WORK/results/$name.txt")"
      python3 - "$WORK/results/$name.txt" >"$WORK/results/$name.json" <<'PY'
import json, re, sys
t = open(sys.argv[1]).read()
n = int(re.search(r"(\d+) requests in", t)[1])
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errors = sum(map(int, sock.groups())) if sock else 0
print(json.dumps({"summary": {"requestsPerSec": float(re.search(r"Requests/sec:\s+([\d.]+)", t)[1])},
                  "statusCodeDistribution": {"200": n - non2xx, "non-2xx": non2xx},
                  "errorDistribution": {"socket errors": errors} if errors else {}}))
PY
      ;;
  esac
  # shellcheck disable=SC2086
  read -r user1 system1 < <(ticks_of $pids)
  # shellcheck disable=SC2086
  ns1=$(run_ns_of $pids)
  # Total ticks, ticks a second, the user-space share of the total, and the total in nanoseconds
  # (finer than ticks, for runs of a few hundred requests).
  echo "$((user1 + system1 - user0 - system0)) $CLK_TCK $((user1 - user0)) $((ns1 - ns0))" >"$WORK/results/$name.cpu"
}
rps() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"]))' "$WORK/results/$1.json"; }
count_lines() { wc -l <"$WORK/backend/$1.log"; }

# Memory at rest: after start-up and the few requests above.
RSS_IDLE_KB=$(rss_kb "$GW_PID")
ALT_RSS_IDLE_KB=0
[ -z "$ALT_PID" ] || ALT_RSS_IDLE_KB=$(rss_kb "$ALT_PID")
H2_RSS_IDLE_KB=0
[ -z "$H2_PID" ] || H2_RSS_IDLE_KB=$(rss_kb "$H2_PID")
# shellcheck disable=SC2046
NGINX_RSS_IDLE_KB=$(rss_total_kb $(pids_of nginx))

# Idle keep-alive connections, each left open after one request through the proxy (a client
# between requests): what one costs the proxy in memory, from its RSS before they opened and with
# them open. Measured on both proxies before any load, while the allocator holds no memory freed
# by earlier requests that would absorb the growth.
idle_keepalive() { # URL HEADER PID...: "rss_before_kb rss_with_kb failed" on stdout
  local url=$1 header=$2
  shift 2
  "${LOAD_PIN[@]}" python3 - "$url" "$header" "$IDLE_CONNS" "$@" <<'EOF'
import socket, sys, time, urllib.parse
url, header, n, pids = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
def rss():
    return sum(int(l.split()[1]) for p in pids for l in open(f"/proc/{p}/status") if l.startswith("VmRSS:"))
lines = [f"GET {url.path} HTTP/1.1", f"Host: {url.netloc}"] + ([header] if header else [])
request = ("\r\n".join(lines) + "\r\n\r\n").encode()
def answered(s):  # one whole 200 answer, read to the end of its Content-Length
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    fields = head.decode("latin-1").split("\r\n")
    length = next((int(f.split(":", 1)[1]) for f in fields if f.lower().startswith("content-length:")), None)
    if length is None:  # an answer of another shape counts as failed, not as a crash of the run
        return False
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            return False
        body += chunk
    return fields[0].split()[1] == "200"
before, socks, failed = rss(), [], 0
for _ in range(n):
    s = socket.create_connection((url.hostname, url.port))
    s.sendall(request)
    failed += not answered(s)
    socks.append(s)
time.sleep(1)
print(before, rss(), failed)
for s in socks:
    s.close()
EOF
}
log "memory of $IDLE_CONNS idle keep-alive connections: nginx, then the gateway"
# shellcheck disable=SC2046
read -r NGINX_IDLE_BEFORE_KB NGINX_IDLE_WITH_KB NGINX_IDLE_FAILED < <(idle_keepalive "$NGINX_URL" "" $(pids_of nginx))
read -r IDLE_BEFORE_KB IDLE_WITH_KB IDLE_FAILED < <(idle_keepalive "$GW_URL" "$AUTH" "$GW_PID")

log "warm-up, and the load generator's ceiling (direct to the backend)"
load direct-max direct wrk "$DIRECT_URL" -d "${DURATION}s" -c "$CONNS"
load warm-nginx nginx wrk "$NGINX_URL" -d 2s -c "$CONNS"
load warm-gateway gateway wrk "$GW_URL" -d 2s -c "$CONNS" -H "$AUTH"
[ -z "$ALT_PID" ] || load warm-alt alt wrk "$GW2_URL" -d 2s -c "$CONNS" -H "$AUTH"
[ -z "$H2_PID" ] || load warm-h2 h2 wrk "$H2_URL" -d 2s -c "$CONNS" -H "$AUTH"

# Throughput: closed loop, CONNS connections, interleaved so both see the same machine.
LINES_BEFORE="$(count_lines nginx) $(count_lines gateway) $(count_lines alt) $(count_lines h2)"
for r in $(seq "$ROUNDS"); do
  log "throughput round $r/$ROUNDS: nginx"
  load "tput-nginx-$r" nginx wrk "$NGINX_URL" -d "${DURATION}s" -c "$CONNS"
  log "throughput round $r/$ROUNDS: gateway ($(rps "tput-nginx-$r") req/s for nginx)"
  load "tput-gateway-$r" gateway wrk "$GW_URL" -d "${DURATION}s" -c "$CONNS" -H "$AUTH"
  if [ -n "$ALT_PID" ]; then
    log "throughput round $r/$ROUNDS: gateway with $ALLOCATOR"
    load "tput-alt-$r" alt wrk "$GW2_URL" -d "${DURATION}s" -c "$CONNS" -H "$AUTH"
  fi
  if [ -n "$H2_PID" ]; then
    log "throughput round $r/$ROUNDS: gateway speaking HTTP/2 to the backend"
    load "tput-h2-$r" h2 wrk "$H2_URL" -d "${DURATION}s" -c "$CONNS" -H "$AUTH"
  fi
done
sleep 1
# Connections each proxy opened to the backend over the throughput rounds, against requests.
reuse_since() { # LINES_BEFORE: requests and connections in each proxy's backend log since then
  # shellcheck disable=SC2086 # the line counts, one argument each
  python3 - "$WORK/backend" $1 <<'EOF'
import json, sys
d, skips = sys.argv[1], [int(n) for n in sys.argv[2:]]
def reuse(name, skip):
    lines = [l for l in open(f"{d}/{name}.log").read().split("\n")[skip:] if l.strip()]
    return {"requests": len(lines), "connections": len({l.split()[0] for l in lines})}
print(json.dumps({n: reuse(n, k) for n, k in zip(("nginx", "gateway", "alt", "h2"), skips)}))
EOF
}
reuse_since "$LINES_BEFORE" >"$WORK/results/reuse.json"

# Added latency: open loop, latency measured from when each request was due (corrected for
# coordinated omission), direct then nginx then gateway. At half of nginx's best rate (the target),
# and at half of the gateway's own (median) rate, so the figure is also known below saturation.
latency_runs() { # TAG RATE
  local who url extra
  for who in direct nginx gateway; do
    case $who in
      direct) url=$DIRECT_URL; extra=() ;;
      nginx) url=$NGINX_URL; extra=() ;;
      gateway) url=$GW_URL; extra=(-H "$AUTH") ;;
    esac
    log "latency at $2 req/s: $who"
    load "$1-$who" "$who" oha "$url" -z "${DURATION}s" -c "$CONNS" -q "$2" --latency-correction "${extra[@]}"
  done
}
NGINX_MAX=$(for r in $(seq "$ROUNDS"); do rps "tput-nginx-$r"; done | sort -n | tail -1)
GW_MEDIAN=$(for r in $(seq "$ROUNDS"); do rps "tput-gateway-$r"; done | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')
RATE=$((NGINX_MAX / 2))
RATE_GW=$((GW_MEDIAN / 2))
latency_runs lat "$RATE"
latency_runs latgw "$RATE_GW"

# The three-part fan-out: user, subscription and preferences each answer after 20 ms (and
# content, called directly as the baseline).
for svc in user subscription preferences content; do
  curl -fs "http://127.0.0.1:$P_REST/admin/faults" -H 'content-type: application/json' \
    -d "{\"service\":\"$svc\",\"latency_ms\":$FANOUT_LATENCY_MS}" >/dev/null
done
code=$(curl -s -o "$WORK/profile.json" -w '%{http_code}' "$PROFILE_URL" -H "$AUTH")
if [ "$code" != 200 ] || ! grep -q '"complete":true' "$WORK/profile.json"; then
  die "the profile route answers $code: $(cat "$WORK/profile.json")"
fi
# One request at a time: concurrent requests of one caller for one resource share one
# computation (single flight), which would make the route look faster than its parts.
log "fan-out: three parts of ${FANOUT_LATENCY_MS} ms"
load fanout gateway oha "$PROFILE_URL" -z "${DURATION}s" -c 1 -H "$AUTH"
# The gateway's own timing of each part (`_meta`), against the whole request, one at a time.
python3 - "$PROFILE_URL" "$TOKEN" >"$WORK/results/fanout-meta.json" <<'EOF'
import http.client, json, statistics, sys, time, urllib.parse
url, token = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2]
conn = http.client.HTTPConnection(url.hostname, url.port)
totals, slowest = [], []
for _ in range(100):
    started = time.perf_counter()
    conn.request("GET", url.path, headers={"Authorization": f"Bearer {token}"})
    body = json.loads(conn.getresponse().read())
    totals.append((time.perf_counter() - started) * 1e3)
    slowest.append(max(p["latency_ms"] for p in body["_meta"]["parts"].values()))
print(json.dumps({"total_p50": statistics.median(totals), "slowest_part_p50": statistics.median(slowest),
                  "over_p50": statistics.median(t - s for t, s in zip(totals, slowest))}))
EOF
# The baseline: one part alone, a call straight to a demo service with the same fault (the fault
# ends on time, but the call takes a little longer than 20 ms: its answer wakes idle processes).
log "fan-out baseline: one ${FANOUT_LATENCY_MS} ms part, called directly"
load part-direct demo oha "http://127.0.0.1:$P_REST/content/items/item-001" -z "${DURATION}s" -c 1
# The same part through one proxy hop, nginx's and the gateway's pass-through, one request at a
# time: what a hop costs on this host when the proxy's core idles while the part sleeps.
log "fan-out reference: that part through nginx, then through the gateway's pass-through"
load part-nginx nginx oha "http://127.0.0.1:$P_NGINX/api/demo/content/items/item-001" -z "${DURATION}s" -c 1
load part-gateway gateway oha "http://127.0.0.1:$P_GW/api/demo/content/items/item-001" -z "${DURATION}s" -c 1 -H "$AUTH"
curl -fs -X POST "http://127.0.0.1:$P_REST/admin/reset" >/dev/null
# The gateway's own cost of the fan-out: the same route without the delay, one request at a time
# (no pause between requests to cool the caches), and the CPU time the gateway spends on each.
log "fan-out without the delay: the gateway's CPU per request"
load fanout-warm gateway oha "$PROFILE_URL" -z "${DURATION}s" -c 1 -H "$AUTH"

# Memory under HIGH_CONNS connections: RSS (all of a proxy's processes) and open client connections,
# sampled while they are open; the gateway, then nginx and the other allocator's build for reference.
high_conns() { # WHO PORT URL [ARGS...]: peak RSS in kB and peak open connections, on stdout
  local who=$1 port=$2 url=$3 sampler
  shift 3
  echo "0 0" >"$WORK/peak-$who"
  ( peak=0; open_peak=0
    while :; do
      # shellcheck disable=SC2046
      v=$(rss_total_kb $(pids_of "$who"))
      o=$(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l)
      [ "$v" -gt "$peak" ] && peak=$v
      [ "$o" -gt "$open_peak" ] && open_peak=$o
      echo "$peak $open_peak" >"$WORK/peak-$who.tmp" && mv "$WORK/peak-$who.tmp" "$WORK/peak-$who"
      sleep 0.2
    done ) &
  sampler=$!
  PIDS+=("$sampler")
  log "memory under $HIGH_CONNS connections: $who"
  load "high-$who" "$who" oha "$url" -z "${DURATION}s" -c "$HIGH_CONNS" "$@"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  cat "$WORK/peak-$who"
}
LINES_BEFORE="$(count_lines nginx) $(count_lines gateway) $(count_lines alt) $(count_lines h2)"
read -r RSS_LOADED_KB HIGH_OPEN < <(high_conns gateway "$P_GW" "$GW_URL" -H "$AUTH")
reuse_since "$LINES_BEFORE" >"$WORK/results/reuse-high.json"
sleep 1
RSS_AFTER_KB=$(rss_kb "$GW_PID")
CLOSED_AT=$SECONDS
read -r NGINX_RSS_LOADED_KB _ < <(high_conns nginx "$P_NGINX" "$NGINX_URL")
# The gateway idled meanwhile, as after a burst: what it gave back to the system.
RSS_LATER_KB=$(rss_kb "$GW_PID")
LATER_SECS=$((SECONDS - CLOSED_AT + 1))
ALT_RSS_LOADED_KB=0
[ -z "$ALT_PID" ] || read -r ALT_RSS_LOADED_KB _ < <(high_conns alt "$P_GW2" "$GW2_URL" -H "$AUTH")
H2_RSS_LOADED_KB=0
if [ -n "$H2_PID" ]; then
  LINES_BEFORE="$(count_lines nginx) $(count_lines gateway) $(count_lines alt) $(count_lines h2)"
  read -r H2_RSS_LOADED_KB _ < <(high_conns h2 "$P_H2" "$H2_URL" -H "$AUTH")
  reuse_since "$LINES_BEFORE" >"$WORK/results/reuse-high-h2.json"
fi

# === report ===

machine_json=$(python3 - <<EOF
import json, platform, subprocess
def out(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:
        return "unknown"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
print(json.dumps({"cpu": cpu, "cores": $NCPU, "kernel": platform.release(),
  "nginx": out("nginx", "-v"), "oha": out("oha", "--version"), "wrk": out("wrk", "--version"),
  "rustc": out("rustc", "--version")}))
EOF
)
python3 "$BENCH/report.py" "$WORK/results" <<EOF | tee ${OUT:+"$OUT"}
{"rounds": $ROUNDS, "duration": $DURATION, "conns": $CONNS, "pin": $PIN, "workers": $WORKERS,
 "access_log": $ACCESS_LOG, "allocators": $ALLOCATORS, "allocator": "$ALLOCATOR", "rate": $RATE, "high_conns": $HIGH_CONNS,
 "high_open": $HIGH_OPEN, "fanout_latency_ms": $FANOUT_LATENCY_MS, "rate_gw": $RATE_GW,
 "nginx_rss_idle_kb": $NGINX_RSS_IDLE_KB, "nginx_rss_loaded_kb": $NGINX_RSS_LOADED_KB,
 "alt_rss_idle_kb": $ALT_RSS_IDLE_KB, "alt_rss_loaded_kb": $ALT_RSS_LOADED_KB,
 "h2": $H2, "h2_rss_idle_kb": $H2_RSS_IDLE_KB, "h2_rss_loaded_kb": $H2_RSS_LOADED_KB,
 "idle_conns": $IDLE_CONNS, "idle_before_kb": $IDLE_BEFORE_KB, "idle_with_kb": $IDLE_WITH_KB, "idle_failed": $IDLE_FAILED,
 "nginx_idle_before_kb": $NGINX_IDLE_BEFORE_KB, "nginx_idle_with_kb": $NGINX_IDLE_WITH_KB, "nginx_idle_failed": $NGINX_IDLE_FAILED,
 "rss_idle_kb": $RSS_IDLE_KB, "rss_loaded_kb": $RSS_LOADED_KB, "rss_after_kb": $RSS_AFTER_KB,
 "rss_later_kb": $RSS_LATER_KB, "later_secs": $LATER_SECS,
 "machine": $machine_json}
EOF
