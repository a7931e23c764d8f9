//! A `meridian-zone run` process of a topology: federated with a global
//! (token, KDS address, CA) or standalone. Its xDS server speaks TLS with
//! the CA it generates into its data directory (unless started with
//! `--xds-plaintext`); [`Zone::xds_flags`] is what a bootstrap needs.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use crate::{
    JsonApi,
    process::{Announce, Process, binary},
    topology::{Global, TestDir},
};

/// The lines `meridian-zone run` prints once it listens.
const API_LINE: &str = "meridian-zone: API on ";
const XDS_LINE: &str = "meridian-zone: xDS on ";
const DIAGNOSTICS_LINE: &str = "meridian-zone: diagnostics on http://";

/// Where a zone syncs from.
#[derive(Debug, Clone)]
pub struct Federation {
    /// `--global-address`: `grpcs://...` or `grpc://...`.
    pub address: String,
    /// `--global-ca` for `grpcs://`.
    pub ca: Option<PathBuf>,
    /// The token file's content (`None`: an empty token file).
    pub token: Option<String>,
}

/// A running zone; restarts keep its API and xDS ports and data directory.
pub struct Zone {
    process: Process,
    name: String,
    data_dir: PathBuf,
    federation: Option<Federation>,
    api: JsonApi,
    api_addr: SocketAddr,
    /// The diagnostics listener (`/healthy`, `/ready`, `/metrics`).
    diagnostics_addr: SocketAddr,
    xds_addr: SocketAddr,
    /// Flags added to every start; `--skip-default-mesh` unless the zone
    /// was started with [`Zone::standalone_with`].
    extra_args: Vec<String>,
    /// The API that issues this zone's Dataplane tokens: the global's, or
    /// the zone's own when standalone; `None` for a zone dialling a bare
    /// address ([`Zone::start_at`]).
    token_issuer: Option<String>,
}

impl Zone {
    /// Zone `name` with a fresh token from `global`; its label is its name.
    pub async fn connect(dir: &TestDir, global: &Global, name: &str) -> Zone {
        let token = global.zone_token(name).await;
        let zone = Zone::start(dir, name, name, global, Some(&token)).await;
        zone.wait_token_keys().await;
        zone
    }

    /// Waits until the zone holds the global's Dataplane-token public key
    /// (synced over KDS), so that its Envoys' tokens verify at once.
    async fn wait_token_keys(&self) {
        self.api
            .wait_for("/global-secrets/dataplane-token-signing-public-key-1", "holds the token key", |_| true)
            .await;
    }

    /// A Dataplane token for Dataplane `name` in mesh `default`, valid for
    /// an hour, from the API that issues this zone's tokens (`None` when
    /// there is none).
    pub async fn dataplane_token(&self, name: &str) -> Option<String> {
        let issuer = JsonApi::new(self.token_issuer.as_deref()?);
        let body = serde_json::json!({"name": name, "mesh": "default", "validFor": "1h"});
        Some(issuer.post_text("/tokens/dataplane", &body).await)
    }

    /// A ZoneIngress token for ingress `name` (a Dataplane token with no
    /// mesh, `"type": "ingress"`), valid for an hour, from the API that
    /// issues this zone's tokens (`None` when there is none).
    pub async fn ingress_token(&self, name: &str) -> Option<String> {
        let issuer = JsonApi::new(self.token_issuer.as_deref()?);
        let body = serde_json::json!({"name": name, "type": "ingress", "validFor": "1h"});
        Some(issuer.post_text("/tokens/dataplane", &body).await)
    }

    /// Zone `name` (label `label`) presenting `token` (`None`: an empty
    /// token file) to `global`.
    pub async fn start(dir: &TestDir, label: &str, name: &str, global: &Global, token: Option<&str>) -> Zone {
        let federation = Federation {
            address: global.kds_url(),
            ca: global.ca().map(Path::to_path_buf),
            token: token.map(str::to_string),
        };
        let mut zone = Zone::launch_new(dir, label, name, Some(federation)).await;
        zone.token_issuer = Some(global.api().base().to_string());
        zone
    }

    /// Zone `name` with a fresh token from `global`, started with `extra`
    /// flags (besides `--skip-default-mesh`).
    pub async fn connect_with(dir: &TestDir, global: &Global, name: &str, extra: &[&str]) -> Zone {
        let token = global.zone_token(name).await;
        let federation =
            Federation { address: global.kds_url(), ca: global.ca().map(Path::to_path_buf), token: Some(token) };
        let mut args = vec!["--skip-default-mesh".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut zone = Zone::launch_with(dir, name, name, Some(federation), args).await;
        zone.token_issuer = Some(global.api().base().to_string());
        zone.wait_token_keys().await;
        zone
    }

    /// Zone `name` dialling `address` (trusting `ca` for grpcs://).
    pub async fn start_at(
        dir: &TestDir,
        label: &str,
        name: &str,
        address: &str,
        ca: Option<&Path>,
        token: Option<&str>,
    ) -> Zone {
        let federation = Federation {
            address: address.to_string(),
            ca: ca.map(Path::to_path_buf),
            token: token.map(str::to_string),
        };
        Zone::launch_new(dir, label, name, Some(federation)).await
    }

    /// A standalone zone (no `--global-address`): it owns every type and
    /// takes writes of all of them through its API.
    pub async fn standalone(dir: &TestDir, name: &str) -> Zone {
        Zone::launch_new(dir, name, name, None).await
    }

    /// A standalone zone started with `extra` flags and WITHOUT
    /// `--skip-default-mesh` (so it creates the `default` Mesh, as the
    /// incumbent does, unless `extra` says otherwise).
    pub async fn standalone_with(dir: &TestDir, name: &str, extra: &[&str]) -> Zone {
        Zone::launch_with(dir, name, name, None, extra.iter().map(|s| s.to_string()).collect()).await
    }

    /// The tests create the Meshes they use: `--skip-default-mesh`.
    async fn launch_new(dir: &TestDir, label: &str, name: &str, federation: Option<Federation>) -> Zone {
        Zone::launch_with(dir, label, name, federation, vec!["--skip-default-mesh".to_string()]).await
    }

    async fn launch_with(
        dir: &TestDir,
        label: &str,
        name: &str,
        federation: Option<Federation>,
        extra_args: Vec<String>,
    ) -> Zone {
        crate::init_crypto();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut z = Zone {
            process: Process::new(label, binary("meridian-zone"), &dir.logs()),
            name: name.to_string(),
            data_dir: dir.part_dir(label),
            federation,
            api: JsonApi::new("http://127.0.0.1:0"),
            api_addr: any,
            xds_addr: any,
            diagnostics_addr: any,
            extra_args,
            token_issuer: None,
        };
        let (api_addr, xds_addr, diagnostics_addr) = z.launch().await;
        z.api = JsonApi::new(&format!("http://{api_addr}"));
        (z.api_addr, z.xds_addr, z.diagnostics_addr) = (api_addr, xds_addr, diagnostics_addr);
        if z.federation.is_none() {
            z.token_issuer = Some(z.api.base().to_string());
        }
        z
    }

    /// Starts the process on the remembered ports (port 0 the first time);
    /// returns its API, xDS and diagnostics addresses.
    async fn launch(&self) -> (SocketAddr, SocketAddr, SocketAddr) {
        let mut args: Vec<OsString> = ["run", "--zone", &self.name].map(OsString::from).to_vec();
        args.extend(["--data-dir".into(), self.data_dir.clone().into()]);
        args.extend(["--api-addr".into(), self.api_addr.to_string().into()]);
        args.extend(["--xds-addr".into(), self.xds_addr.to_string().into()]);
        args.extend(["--log-level".into(), "info,meridian_zone=debug".into()]);
        args.extend(["--diagnostics-address".into(), self.diagnostics_addr.to_string().into()]);
        args.extend(self.extra_args.iter().map(OsString::from));
        if let Some(f) = &self.federation {
            let token_file = self.data_dir.join("zone-token");
            std::fs::write(&token_file, f.token.as_deref().unwrap_or("")).expect("write the token file");
            args.extend(["--global-address".into(), f.address.clone().into()]);
            args.extend(["--token-file".into(), token_file.into()]);
            if let Some(ca) = &f.ca {
                args.extend(["--global-ca".into(), ca.clone().into()]);
            }
        }
        let found = self.process.start(&args, &Announce::lines(&[API_LINE, XDS_LINE, DIAGNOSTICS_LINE])).await;
        let api_addr: SocketAddr = found[0]
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad API line {:?}", found[0]));
        let xds_addr: SocketAddr = found[1].parse().unwrap_or_else(|e| panic!("bad xDS address {:?}: {e}", found[1]));
        let diagnostics_addr: SocketAddr =
            found[2].parse().unwrap_or_else(|e| panic!("bad diagnostics address {:?}: {e}", found[2]));
        (api_addr, xds_addr, diagnostics_addr)
    }

    /// Starts the zone again on the same ports and data directory; kills
    /// the running process first (SIGKILL) if there is one.
    pub async fn restart(&self) {
        self.process.kill();
        let again = self.launch().await;
        assert_eq!(again, (self.api_addr, self.xds_addr, self.diagnostics_addr), "a restart keeps the ports");
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

    /// SIGSTOP: the process stays, but answers nothing.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.process.resume();
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT` of the diagnostics listener (`/healthy`,
    /// `/ready`, `/metrics`, no token).
    pub fn diagnostics_url(&self) -> String {
        format!("http://{}", self.diagnostics_addr)
    }

    /// The JSON client of its API (loopback callers are admin).
    pub fn api(&self) -> &JsonApi {
        &self.api
    }

    /// `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> &str {
        self.api.base()
    }

    /// Where its Envoys dial ADS.
    pub fn xds(&self) -> SocketAddr {
        self.xds_addr
    }

    /// Whether its xDS server speaks plaintext (started with `--xds-plaintext`).
    pub fn xds_plaintext(&self) -> bool {
        self.extra_args.iter().any(|a| a == "--xds-plaintext")
    }

    /// The CA its xDS server's certificate chains to, what bootstraps get
    /// as `--ca-cert`: the generated `<data-dir>/xds-ca.crt`, or the
    /// `--xds-tls-cert` file itself (tests give self-signed ones); `None`
    /// with `--xds-plaintext`.
    pub fn xds_ca(&self) -> Option<PathBuf> {
        if self.xds_plaintext() {
            return None;
        }
        let given = self.extra_args.iter().position(|a| a == "--xds-tls-cert");
        Some(match given.and_then(|i| self.extra_args.get(i + 1)) {
            Some(cert) => PathBuf::from(cert),
            None => self.data_dir.join("xds-ca.crt"),
        })
    }

    /// The bootstrap flags that reach its xDS server: `--xds-address` and
    /// `--ca-cert CA` (or `--xds-plaintext`).
    pub fn xds_flags(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--xds-address".into(), self.xds_addr.to_string().into()];
        match self.xds_ca() {
            Some(ca) => args.extend(["--ca-cert".into(), ca.into()]),
            None => args.push("--xds-plaintext".into()),
        }
        args
    }

    /// A gRPC channel to its xDS server as Envoy dials it: TLS trusting
    /// [`Zone::xds_ca`] for `localhost` (plaintext with `--xds-plaintext`).
    pub async fn xds_channel(&self) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        crate::init_crypto();
        match self.xds_ca() {
            Some(ca) => {
                let pem = std::fs::read(&ca).unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
                Endpoint::from_shared(format!("https://{}", self.xds_addr))?
                    .tls_config(
                        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name("localhost"),
                    )?
                    .connect()
                    .await
            }
            None => Endpoint::from_shared(format!("http://{}", self.xds_addr))?.connect().await,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Waits for a stderr line containing every needle; returns it.
    pub async fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        self.process.wait_log(needles, timeout).await
    }
}
