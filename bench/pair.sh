# Sourced by compare.sh and callgrind.sh: starts the static backend (nginx serving a 1 KB JSON
# document on CPU 0) and two gateways, BEFORE and AFTER, on CPU 1 with one runtime worker each,
# with the suite's configuration (JWT with the verified-token cache, the in-memory limiter, no
# response cache), and waits until both answer. WRAP_BEFORE and WRAP_AFTER (arrays, which the
# caller sets, empty for none) prefix each gateway's command (a profiler).
#
# ROUTE (environment) says what the load asks for:
#   pass     (default) the pass-through route to the static backend;
#   profile  the mobile BFF's `GET /api/v2/user/profile`: three gRPC calls to the demo backends
#            (started on CPU 0 from DEMO, target/release/demo-backends by default).
# The profile's load sends 64 users' tokens in turn (a wrk script), so that its calls are not
# coalesced; the pass-through's sends one token as a plain header, which costs wrk less.
#
# LIMIT_KEY (environment): what the limiter counts per, `subject` (the default: one key for the
# pass-through's one token) or `client_ip` (the address in `X-Forwarded-For`, which the gateways
# believe from 127.0.0.1; bench/keyflood.sh).
#
# Sets WORK, PIDS (stopped on exit), PID_BEFORE, PID_AFTER, P_BEFORE, P_AFTER, url() and LOAD
# (wrk's arguments that add the route's headers).
# shellcheck shell=bash
ROUTE=${ROUTE:-pass}
LIMIT_KEY=${LIMIT_KEY:-subject}
case "$LIMIT_KEY" in
  subject | client_ip) ;;
  *) echo "LIMIT_KEY: subject or client_ip" >&2; exit 2 ;;
esac
case "$ROUTE" in
  pass) ROUTE_PATH=/api/catalog/item.json ;;
  profile) ROUTE_PATH=/api/v2/user/profile ;;
  *) echo "ROUTE: pass or profile" >&2; exit 2 ;;
esac
die() { printf '[%s] error: %s\n' "$(basename "$0" .sh)" "$*" >&2; exit 1; }
if ! command -v nginx >/dev/null && [ -x /usr/sbin/nginx ]; then PATH="$PATH:/usr/sbin"; fi
for tool in python3 taskset nginx wrk curl; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
[ "$(nproc)" -ge 2 ] || die "two CPUs are needed"
for bin in "$BEFORE" "$AFTER"; do [ -x "$bin" ] || die "$bin is not an executable"; done
if [ "$ROUTE" = profile ]; then
  DEMO=${DEMO:-$(dirname "$0")/../target/release/demo-backends}
  [ -x "$DEMO" ] || die "$DEMO is not an executable (cargo build --release -p demo-backends, or set DEMO)"
fi

WORK=$(mktemp -d -t bff-pair.XXXXXX)
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

read -r P_BACKEND P_BEFORE P_AFTER P_GRPC P_REST < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
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
# Tokens of users 1 to 64, and wrk's script that sends them in turn.
python3 - "$SECRET" >"$WORK/users.lua" <<'EOF'
import base64, hashlib, hmac, json, sys, time
secret = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
tokens = []
for n in range(1, 65):
    body = b64(json.dumps({"iss": "https://bench.invalid", "aud": "bff-mobile", "sub": f"user-{n:04}",
                           "iat": now, "exp": now + 6 * 3600, "scope": "feed:read profile:read"}).encode())
    sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    tokens.append(f"{head}.{body}.{sig}")
print("tokens = {" + ",".join(f'"{t}"' for t in tokens) + "}")
print("""n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[n % #tokens + 1],
                               ["X-Client-Version"] = "iOS-3.0.0"})
end""")
EOF
TOKEN=$(sed -n 's/^tokens = {"\([^"]*\)".*/\1/p' "$WORK/users.lua")
# shellcheck disable=SC2034 # for the scripts that source this one
case "$ROUTE" in
  pass) LOAD=(-H "Authorization: Bearer $TOKEN") ;;
  profile) LOAD=(-s "$WORK/users.lua") ;;
esac

gateway_config() { # PORT
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
$([ "$LIMIT_KEY" = client_ip ] && echo 'trusted_proxies = ["127.0.0.1/32"]')
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
key = "$LIMIT_KEY"
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
  # The profile's parts, with the timeouts of the suite's configuration.
  local part
  for part in user:800 subscription:300 preferences:300; do
    printf '[upstreams.%s]\nurl = "http://127.0.0.1:%s"\ntimeout_ms = %s\n' "${part%%:*}" "$P_GRPC" "${part##*:}"
  done
}
gateway_config "$P_BEFORE" >"$WORK/before.toml"
gateway_config "$P_AFTER" >"$WORK/after.toml"

start() { # LOG CMD...
  local log=$1; shift
  "$@" >"$WORK/$log" 2>&1 &
  PIDS+=("$!")
}
start backend.out taskset -c 0 "${NGINX_AS[@]}" nginx -c "$WORK/backend/nginx.conf" -g 'daemon off;'
if [ "$ROUTE" = profile ]; then
  start demo.out taskset -c 0 "$DEMO" --grpc-listen "127.0.0.1:$P_GRPC" --rest-listen "127.0.0.1:$P_REST"
fi
start before.out env -u RUST_LOG TOKIO_WORKER_THREADS=1 taskset -c 1 "${WRAP_BEFORE[@]}" "$BEFORE" --config "$WORK/before.toml"
PID_BEFORE=${PIDS[-1]}
start after.out env -u RUST_LOG TOKIO_WORKER_THREADS=1 taskset -c 1 "${WRAP_AFTER[@]}" "$AFTER" --config "$WORK/after.toml"
PID_AFTER=${PIDS[-1]}

url() { echo "http://127.0.0.1:$1$ROUTE_PATH"; }
for port in "$P_BEFORE" "$P_AFTER"; do
  for _ in $(seq 600); do
    curl -fso /dev/null -H "Authorization: Bearer $TOKEN" -H "X-Client-Version: iOS-3.0.0" "$(url "$port")" && continue 2
    sleep 0.1
  done
  cat "$WORK"/*.out >&2
  die "the gateway on port $port does not answer"
done
