//! Point 9: PostgreSQL stopped under a running global. Requests fail fast
//! with a 503 that names the store, zones keep serving what they hold, and
//! the global recovers on its own when the database is back.
//!
//! The shared test server (tests/pg-env.sh) cannot be stopped, so this test
//! runs a second, throwaway cluster of its own (initdb + pg_ctl, as user
//! `postgres` when run as root, like pg-env.sh).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use meridian_tests::{Global, GlobalSpec, TestDir, WAIT, Zone, eventually, resources};

/// The PostgreSQL binaries: pg-env.sh's (`MERIDIAN_PG_ENV_BIN`), else the
/// newest under /usr/lib/postgresql.
fn pg_bin() -> PathBuf {
    if let Some(d) = std::env::var_os("MERIDIAN_PG_ENV_BIN") {
        return PathBuf::from(d);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).filter(|p| p.join("initdb").is_file()).collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().expect("no PostgreSQL binaries: run the test under `bash tests/pg-env.sh` (it installs them)")
}

/// A PostgreSQL cluster in a temporary directory; stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

/// Whether the test runs as root (then the cluster runs as `postgres`: the
/// server refuses root).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn as_postgres(program: &Path, args: &[&str]) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    c.args(args).current_dir("/");
    c
}

fn run(mut c: Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    fn create() -> Cluster {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("meridian-pg-down-").tempdir().expect("tempdir");
        if is_root() {
            run({
                let mut c = Command::new("chown");
                c.arg("postgres:").arg(dir.path());
                c
            });
        }
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf-8 path");
        run(as_postgres(
            &bin.join("initdb"),
            &["-D", data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8"],
        ));
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let c = Cluster { bin, dir, port };
        c.start();
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&self) {
        let opts =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log").display().to_string();
        run(as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "-o", &opts, "start"],
        ));
    }

    /// Stops the server the hard way: no shutdown checkpoint, every client
    /// connection cut.
    fn stop_immediate(&self) {
        run(as_postgres(&self.bin.join("pg_ctl"), &["-D", &self.data(), "-m", "immediate", "-w", "stop"]));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"), &["-D", &self.data(), "-m", "immediate", "stop"]).output();
    }
}

/// A bound on one request, far under the 30 s a request used to hang:
/// a guard that the answer comes at all, not a measurement.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

async fn status_and_body(req: reqwest::RequestBuilder) -> (u16, String) {
    match req.timeout(ANSWER_WITHIN).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) if e.is_timeout() => panic!("no answer within {ANSWER_WITHIN:?} while the database is down: {e}"),
        Err(e) => panic!("request failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_postgres_fails_fast_and_recovers() {
    let pg = Cluster::create();
    let dir = TestDir::new("hardening-store-down");
    let g = Global::start(&dir, "global", GlobalSpec { shared_store: Some(pg.url()), ..GlobalSpec::default() }).await;
    g.api().apply(&resources::mesh("default")).await;
    g.api().apply(&resources::gateway("gw-1", 8080)).await;
    let z = Zone::connect(&dir, &g, "zone-1").await;
    z.api().wait_for("/meshes/default/meshgateways/gw-1", "gw-1 in the zone", |_| true).await;

    pg.stop_immediate();
    let http = reqwest::Client::new();
    let base = g.api_url().trim_end_matches('/').to_string();
    let gw1 = format!("{base}/meshes/default/meshgateways/gw-1");
    let (status, body) = status_and_body(http.get(&gw1)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Store unavailable") && body.contains("resource store"), "a clear body: {body}");
    let gw2 = format!("{base}/meshes/default/meshgateways/gw-2");
    let (status, body) = status_and_body(http.put(&gw2).json(&resources::gateway("gw-2", 8081))).await;
    assert_eq!(status, 503, "{body}");
    // The zone serves what it holds.
    let (status, body) =
        z.api().put("/meshes/default/dataplanes/dp-1", &resources::dataplane("dp-1", "10.0.0.1", "web")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(z.api().get("/meshes/default/meshgateways/gw-1").await["name"], "gw-1");

    pg.start();
    // Back on its own: reads, writes, and the change feed to the zone.
    eventually("the global reads again", WAIT, || async {
        match http.get(&gw1).timeout(ANSWER_WITHIN).send().await {
            Ok(r) if r.status().as_u16() == 200 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let (status, body) = status_and_body(http.put(&gw2).json(&resources::gateway("gw-2", 8081))).await;
    assert_eq!(status, 201, "{body}");
    z.api().wait_for("/meshes/default/meshgateways/gw-2", "gw-2 reaches the zone", |_| true).await;
    g.api()
        .wait_for("/meshes/default/dataplanes/zone-1.dp-1", "the zone's Dataplane reaches the global", |_| true)
        .await;
    drop(z);
    g.cleanup().await;
}
