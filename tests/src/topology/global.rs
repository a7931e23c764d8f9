//! A `meridian-global` process of a topology.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use crate::{
    Api, Ctl, JsonApi,
    db::{Backend, TestStore},
    process::{Announce, Process, binary},
    topology::TestDir,
};

/// How to run a global.
#[derive(Debug, Clone)]
pub struct GlobalSpec {
    /// The backend of the new store made for this global (a SQLite file in
    /// its data directory, or a fresh PostgreSQL database).
    pub backend: Backend,
    /// `--store` of an existing store, shared with another global; when set,
    /// `backend` is ignored and no store is made or dropped.
    pub shared_store: Option<String>,
    /// `--kds-plaintext true`: zones dial `grpc://` (default: TLS with the
    /// generated CA, `grpcs://`).
    pub plaintext_kds: bool,
    /// `--api-trust-loopback`: with `false`, even loopback callers need the
    /// admin token.
    pub trust_loopback: bool,
    /// `--api-tls-cert` and `--api-tls-key`: serve the API over HTTPS.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// Let the global create the `default` Mesh at start. `false` (the
    /// default) passes `--skip-default-mesh`: most scenarios start from an
    /// empty store and create the Meshes they use.
    pub default_mesh: bool,
    /// Run under `ulimit -n N` (soft and hard open-file limit), through
    /// `sh -c 'ulimit -n N; exec ...'`; the pid stays the global's.
    pub open_files_limit: Option<u64>,
    /// More flags, appended as given (`--max-connections`, ...).
    pub extra_args: Vec<String>,
}

impl Default for GlobalSpec {
    fn default() -> Self {
        GlobalSpec {
            backend: Backend::Sqlite,
            shared_store: None,
            plaintext_kds: false,
            trust_loopback: true,
            api_tls: None,
            default_mesh: false,
            open_files_limit: None,
            extra_args: Vec::new(),
        }
    }
}

impl GlobalSpec {
    /// The defaults on `backend`.
    pub fn on(backend: Backend) -> GlobalSpec {
        GlobalSpec { backend, ..GlobalSpec::default() }
    }
}

/// A running global: its process, data directory, store and clients.
/// Restarts keep the ports, the data directory and the store.
pub struct Global {
    process: Process,
    spec: GlobalSpec,
    data_dir: PathBuf,
    /// The store made for this global (`None` when shared).
    store: Option<TestStore>,
    store_url: String,
    admin_token: String,
    api_url: String,
    api: JsonApi,
    api_addr: SocketAddr,
    kds_addr: SocketAddr,
    ca: Option<PathBuf>,
    /// The diagnostics listener (`/healthy`, `/ready`, `/metrics`).
    diagnostics_addr: SocketAddr,
}

/// What a start announced.
struct Announced {
    api_url: String,
    api_addr: SocketAddr,
    kds_addr: SocketAddr,
    ca: Option<PathBuf>,
    diagnostics_addr: SocketAddr,
}

/// The lines `meridian-global run` prints once it listens.
const API_LINE: &str = "meridian-global: API on ";
const KDS_TLS_LINE: &str = "meridian-global: KDS on grpcs://";
const KDS_PLAIN_LINE: &str = "meridian-global: KDS on grpc://";
const CA_LINE: &str = "meridian-global: KDS CA at ";
const DIAGNOSTICS_LINE: &str = "meridian-global: diagnostics on http://";

impl Global {
    /// Starts a global named `label` (its data directory and log prefix) in `dir`.
    pub async fn start(dir: &TestDir, label: &str, spec: GlobalSpec) -> Global {
        crate::init_crypto();
        let data_dir = dir.part_dir(label);
        let store = match &spec.shared_store {
            Some(_) => None,
            None => Some(TestStore::create(spec.backend, &data_dir).await),
        };
        let store_url = spec.shared_store.clone().or_else(|| store.as_ref().map(|s| s.url.clone())).unwrap_or_default();
        let mut g = Global {
            process: match spec.open_files_limit {
                None => Process::new(label, binary("meridian-global"), &dir.logs()),
                Some(_) => Process::new(label, PathBuf::from("/bin/sh"), &dir.logs()),
            },
            spec,
            data_dir,
            store,
            store_url,
            admin_token: format!("it-{:032x}", rand::random::<u128>()),
            api_url: String::new(),
            api: JsonApi::new("http://127.0.0.1:0"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kds_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca: None,
            diagnostics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let first = g.launch().await;
        g.api = JsonApi::new(&first.api_url);
        (g.api_url, g.api_addr, g.kds_addr, g.ca, g.diagnostics_addr) =
            (first.api_url, first.api_addr, first.kds_addr, first.ca, first.diagnostics_addr);
        g
    }

    /// Starts the process on the remembered ports (port 0 the first time);
    /// returns what it announced.
    async fn launch(&self) -> Announced {
        let mut args: Vec<OsString> = match self.spec.open_files_limit {
            None => Vec::new(),
            Some(n) => vec![
                "-c".into(),
                format!("ulimit -n {n} && exec \"$0\" \"$@\"").into(),
                binary("meridian-global").into(),
            ],
        };
        args.extend(["run".into(), "--data-dir".into(), OsString::from(self.data_dir.clone())]);
        let mut flag = |k: &str, v: String| args.extend([OsString::from(k), OsString::from(v)]);
        flag("--store", self.store_url.clone());
        flag("--api-addr", self.api_addr.to_string());
        flag("--kds-addr", self.kds_addr.to_string());
        flag("--admin-token", self.admin_token.clone());
        flag("--api-trust-loopback", self.spec.trust_loopback.to_string());
        flag("--log-level", "info".into());
        flag("--diagnostics-address", self.diagnostics_addr.to_string());
        if self.spec.plaintext_kds {
            flag("--kds-plaintext", "true".into());
        }
        if let Some((cert, key)) = &self.spec.api_tls {
            flag("--api-tls-cert", cert.display().to_string());
            flag("--api-tls-key", key.display().to_string());
        }
        if !self.spec.default_mesh {
            args.push("--skip-default-mesh".into());
        }
        args.extend(self.spec.extra_args.iter().map(OsString::from));
        let mut prefixes = vec![API_LINE];
        if self.spec.plaintext_kds {
            prefixes.push(KDS_PLAIN_LINE);
        } else {
            prefixes.extend([KDS_TLS_LINE, CA_LINE]);
        }
        prefixes.push(DIAGNOSTICS_LINE);
        let found = self.process.start(&args, &Announce::lines(&prefixes)).await;
        let api_url = found[0].clone();
        let api_addr: SocketAddr = api_url
            .split_once("://")
            .and_then(|(_, a)| a.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("bad API line {api_url:?}"));
        let kds_addr: SocketAddr = found[1].parse().unwrap_or_else(|e| panic!("bad KDS address {:?}: {e}", found[1]));
        let ca = (!self.spec.plaintext_kds).then(|| {
            let p = PathBuf::from(&found[2]);
            if p.is_absolute() { p } else { self.data_dir.join(p) }
        });
        let last = found.last().map(String::as_str).unwrap_or_default();
        let diagnostics_addr: SocketAddr =
            last.parse().unwrap_or_else(|e| panic!("bad diagnostics address {last:?}: {e}"));
        Announced { api_url, api_addr, kds_addr, ca, diagnostics_addr }
    }

    /// Starts the global again on the same ports, data directory and
    /// store; kills the running process first (SIGKILL) if there is one.
    pub async fn restart(&self) {
        self.process.kill();
        let again = self.launch().await;
        assert_eq!(
            (again.api_addr, again.kds_addr, again.ca.as_deref(), again.diagnostics_addr),
            (self.api_addr, self.kds_addr, self.ca.as_deref(), self.diagnostics_addr),
            "a restart keeps the ports and the CA"
        );
    }

    /// SIGKILL: no goodbye to zones, no insight closed.
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

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://127.0.0.1:PORT` of the diagnostics listener (`/healthy`,
    /// `/ready`, `/metrics`, no token).
    pub fn diagnostics_url(&self) -> String {
        format!("http://{}", self.diagnostics_addr)
    }

    /// The JSON client of the API (loopback callers are admin unless
    /// `trust_loopback` is off), with convergence waits.
    pub fn api(&self) -> &JsonApi {
        &self.api
    }

    /// Raw HTTP (status, ETag, text) without a token.
    pub fn http(&self) -> Api {
        Api::new(&self.api_url, None)
    }

    /// Raw HTTP with the admin token.
    pub fn admin_http(&self) -> Api {
        Api::new(&self.api_url, Some(self.admin_token.clone()))
    }

    /// `meridianctl --api-url <this global>`, isolated from the user's config.
    pub fn ctl(&self) -> Ctl {
        Ctl::new().args(["--api-url", &self.api_url])
    }

    /// `http://127.0.0.1:PORT` (or `https://`).
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The admin token it runs with.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The `--store` URL.
    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    pub fn backend(&self) -> Backend {
        self.store.as_ref().map_or(self.spec.backend, |s| s.backend)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The API's socket address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// `grpcs://127.0.0.1:PORT` (or `grpc://` in plaintext).
    pub fn kds_url(&self) -> String {
        format!("{}://{}", if self.spec.plaintext_kds { "grpc" } else { "grpcs" }, self.kds_addr)
    }

    pub fn kds_addr(&self) -> SocketAddr {
        self.kds_addr
    }

    /// The generated KDS CA zones trust (TLS only).
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// A fresh zone token for `zone`, valid for an hour.
    pub async fn zone_token(&self, zone: &str) -> String {
        self.api.post_text("/tokens/zone", &serde_json::json!({"zone": zone, "validFor": "1h"})).await
    }

    /// Everything every start wrote to stderr.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Waits for a stderr line containing every needle; returns it.
    pub async fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        self.process.wait_log(needles, timeout).await
    }

    /// Stops the process and drops the PostgreSQL database made for it.
    pub async fn cleanup(&self) {
        self.process.kill();
        if let Some(store) = &self.store {
            store.drop_database().await;
        }
    }
}
