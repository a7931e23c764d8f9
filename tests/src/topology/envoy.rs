//! A real Envoy for one Dataplane of a zone, bootstrapped the way users do
//! it: a Dataplane token from the global (or the standalone zone), then
//! `meridian-zone dataplane bootstrap --mesh M --name N
//! --dataplane-token-file F` (node id `<mesh>.<name>`; xDS over TLS with the
//! zone's CA, `--ca-cert`), then
//! `envoy -c bootstrap.yaml`.

use std::{ffi::OsString, path::PathBuf, process::ExitStatus, sync::Mutex};

use crate::{
    json_api::eventually,
    process::{Announce, Process, binary, envoy_binary},
    topology::{TestDir, WAIT, Zone},
    traffic::{self, Reply},
};

/// Which ADS variant Envoy speaks (`--xds-mode` of the bootstrap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsMode {
    /// Incremental (delta) ADS, the default.
    Delta,
    /// State of the world.
    Sotw,
}

/// A running Envoy; its stderr is its log.
pub struct Envoy {
    process: Process,
    name: String,
    /// The Dataplane token it presents.
    token: Option<String>,
    args: Vec<OsString>,
    admin_file: PathBuf,
    /// `127.0.0.1:PORT` of the admin listener of the current start.
    admin: Mutex<String>,
}

impl Envoy {
    /// Writes the bootstrap of Dataplane `name` in mesh `default` pointing
    /// at `zone`'s xDS server, starts Envoy on it and waits for its admin
    /// address (not for readiness: see [`Envoy::wait_ready`]).
    pub async fn start(dir: &TestDir, zone: &Zone, name: &str, mode: XdsMode) -> Envoy {
        // A Dataplane token for it, issued where the zone's tokens come from.
        let token = zone.dataplane_token(name).await;
        Envoy::start_with_token(dir, zone, name, mode, token.as_deref()).await
    }

    /// [`Envoy::start`] presenting `token` on its ADS stream (`None`: no
    /// token at all).
    pub async fn start_with_token(dir: &TestDir, zone: &Zone, name: &str, mode: XdsMode, token: Option<&str>) -> Envoy {
        let work = dir.part_dir(name);
        let mode = match mode {
            XdsMode::Delta => "delta",
            XdsMode::Sotw => "sotw",
        };
        let mut cmd = tokio::process::Command::new(binary("meridian-zone"));
        cmd.args(["dataplane", "bootstrap", "--mesh", "default", "--name", name, "--admin-address", "127.0.0.1:0"])
            .args(zone.xds_flags())
            .args(["--xds-mode", mode]);
        if let Some(token) = token {
            let file = work.join("dataplane-token");
            std::fs::write(&file, token).expect("write the Dataplane token");
            cmd.arg("--dataplane-token-file").arg(file);
        }
        let out = cmd.output().await.expect("run meridian-zone dataplane bootstrap");
        assert!(out.status.success(), "dataplane bootstrap: {}", String::from_utf8_lossy(&out.stderr));
        let boot = work.join("bootstrap.yaml");
        std::fs::write(&boot, &out.stdout).expect("write the bootstrap");
        let admin_file = work.join("admin-address");
        let mut args: Vec<OsString> = vec!["-c".into(), boot.into()];
        // Several Envoys on one machine: no shared memory for hot restart.
        args.extend(
            ["--disable-hot-restart", "--concurrency", "1", "-l", "info", "--drain-time-s", "1"].map(OsString::from),
        );
        args.extend(["--admin-address-path".into(), admin_file.clone().into()]);
        let envoy = Envoy {
            process: Process::new(name, envoy_binary(), &dir.logs()),
            name: name.to_string(),
            token: token.map(str::to_string),
            args,
            admin_file,
            admin: Mutex::new(String::new()),
        };
        envoy.launch().await;
        envoy
    }

    async fn launch(&self) {
        let _ = std::fs::remove_file(&self.admin_file);
        let found = self.process.start(&self.args, &Announce::File(self.admin_file.clone())).await;
        *self.admin.lock().unwrap_or_else(|p| p.into_inner()) = found[0].clone();
    }

    /// Kills Envoy (SIGKILL) and starts it again on the same bootstrap (its
    /// admin port may change).
    pub async fn restart(&self) {
        self.process.kill();
        self.launch().await;
    }

    /// SIGKILL.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// SIGTERM, then waits for the exit; returns its status.
    pub async fn sigterm(&self) -> ExitStatus {
        self.process.sigterm().await
    }

    /// The process itself: pid, stdout, `sigterm_within`, `wait_exit`.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The Dataplane name (node id `default.<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Dataplane token it presents on xDS, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `127.0.0.1:PORT` of the admin listener.
    pub fn admin(&self) -> String {
        self.admin.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.process.stderr()
    }

    /// Waits for `/ready` to say LIVE (listeners and clusters arrived).
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/ready", self.admin());
        eventually(&format!("Envoy {} ready", self.name), WAIT, || async {
            let r = reqwest::get(&url).await.map_err(|e| e.to_string())?;
            let body = r.text().await.map_err(|e| e.to_string())?;
            if body.trim() == "LIVE" { Ok(()) } else { Err(body) }
        })
        .await;
    }

    /// An admin endpoint's text.
    pub async fn admin_get(&self, path: &str) -> Result<String, String> {
        let r = reqwest::get(format!("http://{}{path}", self.admin())).await.map_err(|e| e.to_string())?;
        r.text().await.map_err(|e| e.to_string())
    }

    /// `GET path` with `Host: host` through this Envoy's listener on
    /// 127.0.0.1:`port` (the MeshGateway's listener port).
    pub async fn get(&self, port: u16, host: &str, path: &str) -> Result<Reply, String> {
        traffic::get(port, host, path).await
    }
}
