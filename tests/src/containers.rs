//! Meridian's images under testcontainers (0.27; local images only, see
//! `deploy/images/build.sh`): a global, zones and gateways as containers on
//! one Docker network, reaching each other by container name.
//!
//! Users start the same images from their own tests the same way:
//!
//! ```no_run
//! # async fn demo() {
//! use meridian_tests::containers::{Lab, ensure_images};
//! let tag = ensure_images(); // builds meridian/* images when missing
//! let lab = Lab::new("my-test");
//! let global = lab.global(&tag, None).await;
//! let zone = lab.zone(&tag, "zone-1", &global).await;
//! let api = global.api().await; // http://127.0.0.1:<mapped 5681>
//! api.wait_online("zone-1", true, std::time::Duration::from_secs(30)).await;
//! # drop(zone); }
//! ```
//!
//! Writes from the host come through Docker's bridge, not loopback, so they
//! carry the admin token ([`ADMIN_TOKEN`], set on every container).

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::Value;
use testcontainers::{
    ContainerAsync, GenericImage, ImageExt,
    core::{ContainerPort, ExecCommand, WaitFor},
    runners::AsyncRunner,
};

use crate::json_api::JsonApi;

/// The admin token every container of a [`Lab`] is started with
/// (`MERIDIAN_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "containers-test-admin-token";

/// How long a container may take to report healthy.
const STARTUP: Duration = Duration::from_secs(60);

/// Builds the images these tests start, when missing or stale, from the
/// debug binaries the suite already built (`deploy/images/build.sh --profile
/// debug --no-cargo`; the base and PostgreSQL images are built once and
/// kept). Returns the tag. Panics with the script's output when it fails,
/// a missing or stopped Docker engine included.
pub fn ensure_images() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let tag = std::env::var("MERIDIAN_IMAGE_TAG").unwrap_or_else(|_| "dev".to_string());
    let out = Command::new("bash")
        .arg(root.join("deploy/images/build.sh"))
        .args(["--profile", "debug", "--no-cargo"])
        .env("MERIDIAN_IMAGE_TAG", &tag)
        .output()
        .expect("bash deploy/images/build.sh");
    assert!(
        out.status.success(),
        "deploy/images/build.sh failed (these tests need a running Docker engine):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tag
}

/// One test's containers: a Docker network of its own (created by
/// testcontainers, removed with the last container) and unique names.
pub struct Lab {
    network: String,
    prefix: String,
}

/// A container of the lab with its name on the network.
pub struct Node {
    /// The container (removed when dropped).
    pub container: ContainerAsync<GenericImage>,
    /// Its name on the lab's network (also its DNS name there).
    pub name: String,
    api_port: Option<u16>,
}

impl Lab {
    /// A lab named after the test (`label`) and this process.
    pub fn new(label: &str) -> Lab {
        let id = format!("{label}-{}-{:x}", std::process::id(), rand::random::<u32>());
        Lab { network: format!("meridian-tc-{id}"), prefix: format!("mtc-{id}") }
    }

    /// The lab's network name.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// A container's name in this lab.
    pub fn name(&self, part: &str) -> String {
        format!("{}-{part}", self.prefix)
    }

    /// PostgreSQL 15 (`meridian/postgres:15`), healthy; its URL for the
    /// global is `postgres://meridian:meridian@<name>:5432/meridian`.
    pub async fn postgres(&self) -> Node {
        let name = self.name("postgres");
        let container = GenericImage::new("meridian/postgres", "15")
            .with_wait_for(WaitFor::healthcheck())
            .with_network(&self.network)
            .with_container_name(&name)
            .with_env_var("POSTGRES_PASSWORD", "meridian")
            .with_startup_timeout(STARTUP)
            .start()
            .await
            .expect("start meridian/postgres:15 (deploy/images/build.sh builds it)");
        Node { container, name, api_port: None }
    }

    /// A global (`meridian/global:<tag>`), healthy; on `postgres` when
    /// given, else on SQLite in its volume. Its KDS certificate names its
    /// container name.
    pub async fn global(&self, tag: &str, postgres: Option<&Node>) -> Node {
        let name = self.name("global");
        let mut req = GenericImage::new("meridian/global", tag)
            .with_exposed_port(ContainerPort::Tcp(5681))
            .with_wait_for(WaitFor::healthcheck())
            .with_network(&self.network)
            .with_container_name(&name)
            .with_env_var("MERIDIAN_ADMIN_TOKEN", ADMIN_TOKEN)
            .with_env_var("MERIDIAN_KDS_TLS_SAN", &name)
            .with_startup_timeout(STARTUP);
        if let Some(pg) = postgres {
            req = req.with_env_var("MERIDIAN_STORE", format!("postgres://meridian:meridian@{}:5432/meridian", pg.name));
        }
        let container = req.start().await.expect("start meridian/global");
        let mut node = Node { container, name, api_port: None };
        node.refresh_port().await;
        node
    }

    /// A zone (`meridian/zone:<tag>`) federated to `global` over KDS (TLS
    /// with the global's generated CA, a zone token it issued), healthy.
    pub async fn zone(&self, tag: &str, zone: &str, global: &Node) -> Node {
        let token = global
            .exec(&["meridianctl", "--api-url", "http://127.0.0.1:5681", "generate", "zone-token", "--zone", zone])
            .await;
        let ca = global.exec(&["cat", "/var/lib/meridian/kds-ca.crt"]).await;
        let name = self.name(zone);
        let container = GenericImage::new("meridian/zone", tag)
            .with_exposed_port(ContainerPort::Tcp(5682))
            .with_wait_for(WaitFor::healthcheck())
            .with_network(&self.network)
            .with_container_name(&name)
            .with_env_var("MERIDIAN_ZONE", zone)
            .with_env_var("MERIDIAN_ADMIN_TOKEN", ADMIN_TOKEN)
            .with_env_var("MERIDIAN_GLOBAL_ADDRESS", format!("grpcs://{}:5685", global.name))
            // The KDS trust and the zone's credential: one place each.
            .with_env_var("MERIDIAN_GLOBAL_CA", "/etc/meridian/kds-ca.crt")
            .with_env_var("MERIDIAN_TOKEN_FILE", "/etc/meridian/zone.token")
            // Gateways dial its xDS server by the container name: in its certificate.
            .with_env_var("MERIDIAN_XDS_TLS_SAN", &name)
            .with_copy_to("/etc/meridian/kds-ca.crt", ca.into_bytes())
            .with_copy_to("/etc/meridian/zone.token", token.trim().as_bytes().to_vec())
            .with_startup_timeout(STARTUP)
            .start()
            .await
            .expect("start meridian/zone");
        let mut node = Node { container, name, api_port: None };
        node.refresh_port().await;
        node
    }

    /// A builtin gateway for Dataplane `dp_name` (tags `kuma.io/service:
    /// <service>`) in the zone `zone`, Envoy ready; its address is the
    /// container's own on the network. Port `listener` is published.
    ///
    /// Its Dataplane token is issued by `global`; Envoy trusts the zone's
    /// generated xDS CA (xDS over TLS, the zone's default).
    pub async fn gateway(
        &self,
        tag: &str,
        global: &Node,
        zone: &Node,
        dp_name: &str,
        service: &str,
        listener: u16,
    ) -> Node {
        let name = self.name(dp_name);
        let token = global
            .exec(&[
                "meridianctl",
                "--api-url",
                "http://127.0.0.1:5681",
                "generate",
                "dataplane-token",
                "--mesh",
                "default",
                "--name",
                dp_name,
            ])
            .await;
        let ca = zone.exec(&["cat", "/var/lib/meridian/xds-ca.crt"]).await;
        let script = format!(
            "printf 'type: Dataplane\\nmesh: default\\nname: {dp_name}\\nnetworking:\\n  address: %s\\n  gateway:\\n    type: BUILTIN\\n    tags:\\n      kuma.io/service: {service}\\n' \"$(hostname -i | cut -d' ' -f1)\" > /tmp/dp.yaml && exec meridian-zone dataplane run -f /tmp/dp.yaml --api-url http://{zone}:5682 --cp-address https://{zone}:5678 --ca-cert /etc/meridian/xds-ca.crt --dataplane-token-file /etc/meridian/dataplane.token --admin-address 127.0.0.1:9901 -- --log-level warn",
            zone = zone.name
        );
        let container = GenericImage::new("meridian/zone", tag)
            .with_exposed_port(ContainerPort::Tcp(listener))
            .with_wait_for(WaitFor::healthcheck())
            .with_entrypoint("sh")
            .with_network(&self.network)
            .with_container_name(&name)
            .with_env_var("MERIDIAN_ADMIN_TOKEN", ADMIN_TOKEN)
            .with_copy_to("/etc/meridian/xds-ca.crt", ca.into_bytes())
            .with_copy_to("/etc/meridian/dataplane.token", token.trim().as_bytes().to_vec())
            .with_cmd(["-c", &script])
            .with_health_check(
                testcontainers::core::Healthcheck::cmd([
                    "curl",
                    "-fsS",
                    "-o",
                    "/dev/null",
                    "http://127.0.0.1:9901/ready",
                ])
                .with_interval(Duration::from_secs(1))
                .with_retries(3),
            )
            .with_startup_timeout(STARTUP)
            .start()
            .await
            .expect("start a gateway (meridian/zone dataplane run)");
        Node { container, name, api_port: None }
    }

    /// An HTTP echo backend (perl, on the base image) on port 5000 that
    /// answers `echo from <label>: <method> <path>`.
    pub async fn echo(&self, label: &str) -> Node {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
        let script = std::fs::read(root.join("deploy/compose/echo.pl")).expect("deploy/compose/echo.pl");
        let name = self.name(&format!("echo-{label}"));
        let container = GenericImage::new("meridian/base", "bookworm")
            .with_wait_for(WaitFor::message_on_stdout("listening on 5000"))
            .with_network(&self.network)
            .with_container_name(&name)
            .with_env_var("ECHO_NAME", label)
            .with_copy_to("/srv/echo.pl", script)
            .with_cmd(["perl", "/srv/echo.pl"])
            .with_startup_timeout(STARTUP)
            .start()
            .await
            .expect("start the echo backend");
        Node { container, name, api_port: None }
    }
}

impl Node {
    /// Re-reads the published API port (it changes when Docker restarts
    /// the container).
    pub async fn refresh_port(&mut self) {
        for port in [5681u16, 5682] {
            if let Ok(p) = self.container.get_host_port_ipv4(ContainerPort::Tcp(port)).await {
                self.api_port = Some(p);
            }
        }
    }

    /// The REST API through its published port (reads; writes use
    /// [`Node::put`]).
    pub async fn api(&self) -> JsonApi {
        JsonApi::new(&format!("http://127.0.0.1:{}", self.api_port.expect("a global or zone")))
    }

    /// `PUT path` with the admin token: status and body.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port.expect("a global or zone"));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("HTTP client")
            .put(url)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("PUT");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// A published port of the container on the host.
    pub async fn host_port(&self, port: u16) -> u16 {
        self.container.get_host_port_ipv4(ContainerPort::Tcp(port)).await.expect("published port")
    }

    /// The container's address on its (only) network.
    pub fn ip(&self) -> String {
        docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", self.container.id()])
            .trim()
            .to_string()
    }

    /// Runs `cmd` in the container; its stdout. Panics on a non-zero exit.
    pub async fn exec(&self, cmd: &[&str]) -> String {
        let mut r = self.container.exec(ExecCommand::new(cmd.iter().copied())).await.expect("docker exec");
        let out = String::from_utf8_lossy(&r.stdout_to_vec().await.unwrap_or_default()).to_string();
        let err = String::from_utf8_lossy(&r.stderr_to_vec().await.unwrap_or_default()).to_string();
        let mut code = None;
        for _ in 0..50 {
            code = r.exit_code().await.ok().flatten();
            if code.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(code, Some(0), "{cmd:?} in {}: {out}{err}", self.name);
        out
    }
}

/// Runs the `docker` CLI (for what testcontainers does not offer: network
/// disconnect/connect, kill); its stdout. Panics on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}
