#!/usr/bin/env python3
"""Change-log growth under idle load: a global, N zones and M connected Envoys.

Starts `meridian-global` (SQLite, plaintext KDS), N `meridian-zone`s synced to
it, one Mesh and one MeshGateway applied at the global, and M gateway
Dataplanes spread over the zones, each with a real Envoy (`meridian-zone
dataplane run`). Then nothing changes: the zones stay connected (ZoneInsight
refreshes) and the Envoys stay on ADS (DataplaneInsight on ACKs). Every
--every seconds it samples, per store (global + each zone): rows in the change
log, rows in the status table (absent before status existed), and the store's
size on disk (database + WAL + shared memory), and prints one CSV line:

    elapsed_s,store,changes,status,bytes

Usage (binaries from `cargo build --workspace --bins`, Envoy on PATH):

    python3 tests/status-bench.py --minutes 30 --bin-dir target/debug > after.csv

--bin-dir may point at binaries of another commit (the "before" run). All
processes run in a temporary directory and are stopped (SIGTERM, then
SIGKILL) at the end; --keep keeps the directory.
"""

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

START_TIMEOUT_S = 60


def log(msg):
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Proc:
    def __init__(self, label, argv, workdir):
        self.label = label
        self.stdout = os.path.join(workdir, f"{label}.stdout")
        self.stderr = os.path.join(workdir, f"{label}.stderr")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env["NO_COLOR"] = "1"
        env.setdefault("MERIDIAN_LOG_LEVEL", "warn")
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=open(self.stdout, "w"),
            stderr=open(self.stderr, "w"),
            env=env,
            start_new_session=True,
        )

    def wait_lines(self, prefixes):
        deadline = time.time() + START_TIMEOUT_S
        while True:
            text = open(self.stdout).read()
            found = []
            for p in prefixes:
                hit = [l[len(p):].strip() for l in text.splitlines() if l.startswith(p)]
                found.append(hit[0] if hit else None)
            if all(f is not None for f in found):
                return found
            if self.p.poll() is not None:
                raise SystemExit(f"{self.label} exited: {open(self.stderr).read()[-2000:]}")
            if time.time() > deadline:
                raise SystemExit(f"{self.label} did not print {prefixes}")
            time.sleep(0.1)

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def wait_http(url, check, what):
    deadline = time.time() + START_TIMEOUT_S
    while True:
        try:
            if check(json.loads(http("GET", url))):
                return
        except Exception:  # not there yet
            pass
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def sample(path):
    """(change-log rows, status rows or '', bytes on disk) of one SQLite store."""
    size = sum(os.path.getsize(path + s) for s in ("", "-wal", "-shm") if os.path.exists(path + s))
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        changes = con.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
        try:
            status = con.execute("SELECT COUNT(*) FROM status").fetchone()[0]
        except sqlite3.OperationalError:  # before the status table existed
            status = ""
    finally:
        con.close()
    return changes, status, size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="target/debug")
    ap.add_argument("--zones", type=int, default=10)
    ap.add_argument("--envoys", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--every", type=float, default=60, help="seconds between samples")
    ap.add_argument("--envoy", default=shutil.which("envoy") or "envoy")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    bins = os.path.abspath(a.bin_dir)
    work = tempfile.mkdtemp(prefix="meridian-status-bench-")
    log(f"work dir {work}")
    procs = []
    try:
        g = Proc("global", [f"{bins}/meridian-global", "run", "--data-dir", f"{work}/global",
                            "--api-addr", "127.0.0.1:0", "--kds-addr", "127.0.0.1:0",
                            "--kds-plaintext", "true"], work)
        procs.append(g)
        api, kds = g.wait_lines(["meridian-global: API on ", "meridian-global: KDS on "])
        http("PUT", f"{api}/meshes/default", {"type": "Mesh", "name": "default"})
        http("PUT", f"{api}/meshes/default/meshgateways/gw", {
            "type": "MeshGateway", "mesh": "default", "name": "gw",
            "selectors": [{"match": {"kuma.io/service": "gw-svc"}}],
            "conf": {"listeners": [{"port": 18080, "protocol": "HTTP", "hostname": "*"}]}})
        zones = []
        for i in range(1, a.zones + 1):
            name = f"zone-{i}"
            token = http("POST", f"{api}/tokens/zone", {"zone": name, "validFor": "24h"})
            os.makedirs(f"{work}/{name}", exist_ok=True)
            tf = f"{work}/{name}/token"
            open(tf, "w").write(token)
            z = Proc(name, [f"{bins}/meridian-zone", "run", "--zone", name, "--data-dir", f"{work}/{name}",
                            "--api-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0",
                            "--global-address", kds, "--token-file", tf], work)
            procs.append(z)
            zapi, xds = z.wait_lines(["meridian-zone: API on ", "meridian-zone: xDS on "])
            zones.append((name, zapi, xds))
        for name, zapi, _ in zones:
            wait_http(f"{zapi}/meshes/default", lambda j: j.get("name") == "default", f"{name} has the mesh")
        for n in range(a.envoys):
            name, zapi, xds = zones[n % len(zones)]
            dp = f"gw-{n}"
            f = f"{work}/{dp}.json"
            json.dump({"type": "Dataplane", "mesh": "default", "name": dp,
                       "networking": {"address": "127.0.0.1",
                                      "gateway": {"type": "BUILTIN", "tags": {"kuma.io/service": "gw-svc"}}}},
                      open(f, "w"))
            e = Proc(f"envoy-{dp}", [f"{bins}/meridian-zone", "dataplane", "run", "-f", f, "--api-url", zapi,
                                      "--xds-address", xds, "--admin-address", "127.0.0.1:0",
                                      "--envoy", a.envoy, "--config-dir", f"{work}/{dp}",
                                      "--", "--concurrency", "1", "-l", "warn"], work)
            procs.append(e)
        # Every Envoy has ACKed: its DataplaneInsight reached the global.
        wait_http(f"{api}/meshes/default/dataplanes/_overview?size=1000",
                  lambda j: sum(1 for i in j["items"] if i.get("dataplaneInsight", {}).get("subscriptions")) >= a.envoys,
                  "every Envoy's DataplaneInsight at the global")
        wait_http(f"{api}/zones/_overview", lambda j: sum(1 for i in j["items"] if i["online"]) >= a.zones,
                  "every zone online")
        log(f"{a.zones} zones and {a.envoys} Envoys up; sampling every {a.every:.0f} s for {a.minutes} min")
        stores = [("global", f"{work}/global/global.db")] + [(n, f"{work}/{n}/zone.db") for n, _, _ in zones]
        print("elapsed_s,store,changes,status,bytes", flush=True)
        t0 = time.time()
        while True:
            elapsed = time.time() - t0
            tot = [0, 0, 0]
            for label, path in stores:
                c, s, b = sample(path)
                print(f"{elapsed:.0f},{label},{c},{s},{b}", flush=True)
                tot[0] += c
                tot[1] += s or 0
                tot[2] += b
            print(f"{elapsed:.0f},all,{tot[0]},{tot[1]},{tot[2]}", flush=True)
            dead = [p.label for p in procs if p.p.poll() is not None]
            if dead:
                log(f"exited: {dead}")
            if elapsed >= a.minutes * 60:
                break
            time.sleep(max(0.0, t0 + (int(elapsed / a.every) + 1) * a.every - time.time()))
    finally:
        for p in reversed(procs):
            p.stop()
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
