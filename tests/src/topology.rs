//! One topology for every multi-process test: a global (SQLite or
//! PostgreSQL), zones, gateway Envoys and backends, each a named part.
//!
//! ```text
//!   Topology::builder("my-test")
//!     .global(Backend::Sqlite)            ─▶ Global   "global"   meridian-global run
//!     .zone("zone-1")                     ─▶ Zone     "zone-1"   meridian-zone run (token from the global;
//!                                                                standalone when there is no global)
//!     .http_backend("demo", "zone-1")     ─▶ HttpBackend "demo"  + Dataplane "demo" {kuma.io/service: demo}
//!     .gateway("zone-1", "edge-gw", "edge")─▶ Envoy   "edge-gw"  + builtin gateway Dataplane "edge-gw"
//!     .start().await                                             {kuma.io/service: edge}
//!
//!   TestDir  <tmp>/meridian-<test>-XXXX/{<part>/, logs/<part>-<n>.{stdout,stderr}}
//! ```
//!
//! Every process goes through [`crate::process::Process`]: found in the
//! workspace's target directory (or `envoy` on PATH), started with only the
//! flags given, waited for until it announces itself, killed on drop. When a
//! test panics, each process prints the tail of its stderr and the test
//! directory is kept. Parts can also be made one at a time
//! ([`Global::start`], [`Zone::connect`], [`Envoy::start`]) in a [`TestDir`],
//! for tests that build their topology step by step.

mod envoy;
mod global;
mod zone;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

pub use envoy::{Envoy, XdsMode};
pub use global::{Global, GlobalSpec};
pub use zone::{Federation, Zone};

use crate::{
    db::Backend,
    traffic::{self, HttpBackend, TcpBackend},
};

/// Upper bound of a wait for the topology to converge (a zone receiving a
/// resource, an Envoy getting ready). Generous: several topologies run at
/// once on two cores with debug binaries. A guard, never a measurement.
pub const WAIT: Duration = Duration::from_secs(30);

/// The directory of one test: data directories and logs of every part. Kept
/// (and its path printed) when the test fails.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// A new directory named after `test`.
    pub fn new(test: &str) -> TestDir {
        let dir =
            tempfile::Builder::new().prefix(&format!("meridian-{test}-")).tempdir().expect("create the test directory");
        let path = dir.path().to_path_buf();
        TestDir { dir: Some(dir), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where every process's stdout and stderr go.
    pub fn logs(&self) -> PathBuf {
        self.path.join("logs")
    }

    /// A part's own directory (created).
    pub fn part_dir(&self, label: &str) -> PathBuf {
        let d = self.path.join(label);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        d
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            eprintln!("test directory kept: {}", d.keep().display());
        }
    }
}

/// A builtin gateway declared on the builder.
struct GatewaySpec {
    zone: String,
    name: String,
    service: String,
    mode: XdsMode,
}

/// What [`Topology::builder`] collects; [`TopologyBuilder::start`] starts it.
pub struct TopologyBuilder {
    test: String,
    global: Option<GlobalSpec>,
    /// Zones and the extra flags each is started with.
    zones: Vec<(String, Vec<String>)>,
    meshes: Vec<String>,
    http_backends: Vec<(String, String)>,
    tcp_backends: Vec<(String, String)>,
    gateways: Vec<GatewaySpec>,
}

impl TopologyBuilder {
    /// A global with a new store on `backend`, other settings default.
    pub fn global(self, backend: Backend) -> Self {
        self.global_spec(GlobalSpec::on(backend))
    }

    /// A global run as `spec` says.
    pub fn global_spec(mut self, spec: GlobalSpec) -> Self {
        self.global = Some(spec);
        self
    }

    /// A zone named `name`: connected to the global with a fresh zone token,
    /// or standalone when the topology has no global.
    pub fn zone(mut self, name: &str) -> Self {
        self.zones.push((name.to_string(), Vec::new()));
        self
    }

    /// A zone as [`TopologyBuilder::zone`], started with the `extra` flags.
    pub fn zone_with(mut self, name: &str, extra: &[&str]) -> Self {
        self.zones.push((name.to_string(), extra.iter().map(|s| s.to_string()).collect()));
        self
    }

    /// A Mesh, created at the global (or at each standalone zone) and waited
    /// for in every zone. Backends and gateways imply mesh `default`.
    pub fn mesh(mut self, name: &str) -> Self {
        if !self.meshes.iter().any(|m| m == name) {
            self.meshes.push(name.to_string());
        }
        self
    }

    /// An HTTP backend answering with its name, registered in `zone` as
    /// Dataplane `name` (mesh `default`, inbound `kuma.io/service: name`).
    pub fn http_backend(mut self, name: &str, zone: &str) -> Self {
        self.http_backends.push((name.to_string(), zone.to_string()));
        self.mesh("default")
    }

    /// A TCP backend answering `<name>: <line>`, registered like an HTTP one.
    pub fn tcp_backend(mut self, name: &str, zone: &str) -> Self {
        self.tcp_backends.push((name.to_string(), zone.to_string()));
        self.mesh("default")
    }

    /// A builtin gateway in `zone`: Dataplane `name` (mesh `default`,
    /// `kuma.io/service: service`) and a delta-ADS Envoy for it.
    pub fn gateway(self, zone: &str, name: &str, service: &str) -> Self {
        self.gateway_with(zone, name, service, XdsMode::Delta)
    }

    /// [`TopologyBuilder::gateway`] with the ADS variant chosen.
    pub fn gateway_with(mut self, zone: &str, name: &str, service: &str, mode: XdsMode) -> Self {
        self.gateways.push(GatewaySpec {
            zone: zone.to_string(),
            name: name.to_string(),
            service: service.to_string(),
            mode,
        });
        self.mesh("default")
    }

    /// Starts the global, then the zones (waiting until each holds every
    /// declared mesh), the backends and their Dataplanes, then the gateway
    /// Dataplanes and their Envoys (not waiting for readiness: an Envoy is
    /// LIVE only once its gateway has listeners).
    pub async fn start(self) -> Topology {
        crate::init_crypto();
        let dir = TestDir::new(&self.test);
        let global = match self.global {
            Some(spec) => Some(Global::start(&dir, "global", spec).await),
            None => None,
        };
        if let Some(g) = &global {
            for mesh in &self.meshes {
                g.api().apply(&crate::resources::mesh(mesh)).await;
            }
        }
        let mut zones = BTreeMap::new();
        for (name, extra) in &self.zones {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let zone = match &global {
                Some(g) if extra.is_empty() => Zone::connect(&dir, g, name).await,
                Some(g) => Zone::connect_with(&dir, g, name, &extra).await,
                None => {
                    let z = if extra.is_empty() {
                        Zone::standalone(&dir, name).await
                    } else {
                        let mut extra = extra.clone();
                        extra.push("--skip-default-mesh");
                        Zone::standalone_with(&dir, name, &extra).await
                    };
                    for mesh in &self.meshes {
                        z.api().apply(&crate::resources::mesh(mesh)).await;
                    }
                    z
                }
            };
            for mesh in &self.meshes {
                zone.api().wait_for(&format!("/meshes/{mesh}"), "holds the mesh", |_| true).await;
            }
            zones.insert(name.clone(), zone);
        }
        let zone_of = |name: &str| -> &Zone {
            zones.get(name).unwrap_or_else(|| panic!("zone {name:?} is not declared on the builder"))
        };
        let mut http = BTreeMap::new();
        for (name, zone) in &self.http_backends {
            let backend = traffic::http_backend(name).await;
            zone_of(zone).api().apply_yaml(&traffic::backend_dataplane(name, &[(backend.port, name)])).await;
            http.insert(name.clone(), backend);
        }
        let mut tcp = BTreeMap::new();
        for (name, zone) in &self.tcp_backends {
            let port = traffic::tcp_backend(name).await;
            zone_of(zone).api().apply_yaml(&traffic::backend_dataplane(name, &[(port, name)])).await;
            tcp.insert(name.clone(), TcpBackend { name: name.clone(), port });
        }
        let mut envoys = BTreeMap::new();
        for gw in &self.gateways {
            let zone = zone_of(&gw.zone);
            zone.api().apply_yaml(&traffic::gateway_dataplane(&gw.name, &gw.service)).await;
            envoys.insert(gw.name.clone(), Envoy::start(&dir, zone, &gw.name, gw.mode).await);
        }
        Topology { envoys, zones, global, http, tcp, dir }
    }
}

/// A running topology. Parts are dropped (killed) envoys first, then zones,
/// then the global; the test directory last. Every part's controls (kill,
/// pause, resume, restart, sigterm) take `&self`, so a test can hold the
/// global and its zones at once.
pub struct Topology {
    envoys: BTreeMap<String, Envoy>,
    zones: BTreeMap<String, Zone>,
    global: Option<Global>,
    http: BTreeMap<String, HttpBackend>,
    tcp: BTreeMap<String, TcpBackend>,
    dir: TestDir,
}

impl Topology {
    /// A builder; `test` names the test directory.
    pub fn builder(test: &str) -> TopologyBuilder {
        TopologyBuilder {
            test: test.to_string(),
            global: None,
            zones: Vec::new(),
            meshes: Vec::new(),
            http_backends: Vec::new(),
            tcp_backends: Vec::new(),
            gateways: Vec::new(),
        }
    }

    /// The test directory (for parts started later).
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// The global; panics when the topology has none.
    pub fn global(&self) -> &Global {
        self.global.as_ref().expect("this topology has no global")
    }

    /// Zone `name`; panics when there is none.
    pub fn zone(&self, name: &str) -> &Zone {
        self.zones.get(name).unwrap_or_else(|| panic!("no zone {name:?} in this topology"))
    }

    /// The Envoy of gateway `name`; panics when there is none.
    pub fn envoy(&self, name: &str) -> &Envoy {
        self.envoys.get(name).unwrap_or_else(|| panic!("no Envoy {name:?} in this topology"))
    }

    /// HTTP backend `name`.
    pub fn http_backend(&self, name: &str) -> &HttpBackend {
        self.http.get(name).unwrap_or_else(|| panic!("no HTTP backend {name:?} in this topology"))
    }

    /// TCP backend `name`.
    pub fn tcp_backend(&self, name: &str) -> &TcpBackend {
        self.tcp.get(name).unwrap_or_else(|| panic!("no TCP backend {name:?} in this topology"))
    }

    /// Starts an Envoy for Dataplane `name` of `zone` (registered by the
    /// caller) and keeps it as part `name`.
    pub async fn add_envoy(&mut self, zone: &str, name: &str, mode: XdsMode) -> &Envoy {
        let envoy = Envoy::start(&self.dir, self.zone(zone), name, mode).await;
        self.envoys.insert(name.to_string(), envoy);
        self.envoy(name)
    }

    /// Stops and forgets Envoy `name` (SIGKILL).
    pub fn remove_envoy(&mut self, name: &str) {
        self.envoys.remove(name);
    }

    /// Kills every process and drops the PostgreSQL database made for the
    /// global.
    pub async fn cleanup(mut self) {
        self.envoys.clear();
        self.zones.clear();
        if let Some(g) = &self.global {
            g.cleanup().await;
        }
    }
}
