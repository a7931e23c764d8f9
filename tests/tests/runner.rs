//! `meridian-zone dataplane run` as a service, with real processes: a zone,
//! Envoy, backends, and the runner started the way a gateway host would.
//!
//! - the zone is down when the runner starts: it retries, registers once
//!   the zone is up, and traffic flows through the gateway; SIGTERM drains
//!   Envoy, deregisters the Dataplane and exits 0;
//! - SIGKILL of the runner leaves no Envoy behind (parent-death signal);
//! - the zone's sweeper (`--dataplane-cleanup-after`) deletes the Dataplane
//!   whose Envoy is gone, keeps the connected one and the one that never had
//!   a proxy;
//! - bad flags, a bad Dataplane file and a zone refusal exit 1 naming the
//!   flag or field, with nothing registered.

use std::{ffi::OsString, path::Path};

use meridian_tests::{
    TestDir, WAIT, Zone, eventually,
    process::{Announce, Process, binary, envoy_binary},
    traffic::{self, free_port},
};

const REGISTERED: &str = "meridian-zone dataplane: registered ";
const ENVOY_PID: &str = "meridian-zone dataplane: Envoy pid ";

/// A gateway Dataplane file for `name` (service `gw`) in `dir`.
fn dataplane_file(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, body).expect("write the Dataplane file");
    f
}

fn gateway_dataplane_yaml(name: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: gw\n"
    )
}

/// MeshGateway `gw` (HTTP on `port`) routing `/` to service `app`.
fn gateway_yaml(port: u16) -> String {
    format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf: {{listeners: [{{port: {port}, protocol: HTTP}}]}}
---
type: MeshGatewayRoute
mesh: default
name: app
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  http:
    rules:
    - matches: [{{path: {{match: PREFIX, value: /}}}}]
      backends: [{{destination: {{kuma.io/service: app}}}}]
"#
    )
}

/// The runner's arguments for `file` against `zone`'s API and xDS.
fn run_args(zone: &Zone, file: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["dataplane", "run", "--dataplane-file"].map(OsString::from).to_vec();
    a.push(file.into());
    match zone.xds_ca() {
        Some(ca) => {
            a.extend(["--cp-address".into(), format!("https://{}", zone.xds()).into()]);
            a.extend(["--ca-cert".into(), ca.into()]);
        }
        None => a.extend(["--cp-address".into(), format!("grpc://{}", zone.xds()).into()]),
    }
    a.extend(["--api-url".into(), zone.api_url().into()]);
    a.extend(["--admin-port".into(), "0".into(), "--envoy".into(), envoy_binary().into()]);
    a.extend(["--drain-time".into(), "1s".into(), "--log-level".into(), "info".into()]);
    a.extend(extra.iter().map(OsString::from));
    a.extend(["--", "--concurrency", "1"].map(OsString::from));
    a
}

/// Writes a Dataplane token for `name` issued by `zone` (a standalone
/// zone holds its own signing keys) and returns the file's path.
async fn token_file(zone: &Zone, dir: &TestDir, name: &str) -> String {
    let token = zone.dataplane_token(name).await.expect("the zone issues Dataplane tokens");
    let path = dir.part_dir("tokens").join(format!("{name}.token"));
    std::fs::write(&path, token).expect("write the token");
    path.display().to_string()
}

/// A runner process labelled `label`.
fn runner(dir: &TestDir, label: &str) -> Process {
    Process::new(label, binary("meridian-zone"), &dir.logs())
}

/// Waits for a stdout line starting with `prefix`; returns the rest.
async fn announced(p: &Process, prefix: &str) -> String {
    eventually(&format!("{} announces {prefix:?}", p.label()), WAIT, || async {
        p.stdout()
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
            .ok_or_else(|| format!("stdout so far: {}", p.stdout()))
    })
    .await
}

/// Whether process `pid` is gone (absent, or a zombie nobody reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) STATE ...`: comm may hold spaces, the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

async fn wait_process_gone(pid: u32, what: &str) {
    eventually(what, WAIT, || async { if process_gone(pid) { Ok(()) } else { Err(format!("pid {pid} alive")) } }).await;
}

async fn envoy_pid(p: &Process) -> u32 {
    let pid = announced(p, ENVOY_PID).await;
    pid.parse().unwrap_or_else(|e| panic!("bad pid {pid:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_the_zone_then_serves_and_sigterm_deregisters() {
    envoy_binary();
    let dir = TestDir::new("runner-zone-down");
    let app = traffic::http_backend("app").await;
    let zone = Zone::standalone(&dir, "zone-1").await;
    zone.api().apply_yaml(traffic::MESH).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("app-1", &[(app.port, "app")])).await;
    let port = free_port();
    zone.api().apply_yaml(&gateway_yaml(port)).await;
    let token = token_file(&zone, &dir, "gw-1").await;
    zone.kill();

    // The zone is down: the runner retries instead of exiting.
    let file = dataplane_file(&dir.part_dir("run"), "gw-1", &gateway_dataplane_yaml("gw-1"));
    let run = runner(&dir, "run-gw-1");
    run.start(&run_args(&zone, &file, &["--dataplane-token-file", &token]), &Announce::Nothing).await;
    eventually("two failed registration attempts", WAIT, || async {
        let n = run.stderr().matches("cannot register the Dataplane yet").count();
        if n >= 2 { Ok(()) } else { Err(format!("{n} attempts logged")) }
    })
    .await;
    assert!(run.is_running(), "the runner exited while the zone was down:\n{}", run.stderr());

    // The zone comes back: the runner registers, Envoy gets config and
    // traffic flows through the gateway.
    zone.restart().await;
    assert_eq!(announced(&run, REGISTERED).await, "default/gw-1");
    let pid = envoy_pid(&run).await;
    let r = eventually("traffic through the gateway reaches the app", WAIT, || async {
        let r = traffic::get(port, "any.example.com", "/hello").await?;
        if r.backend() == "app" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(r.status, 200);
    zone.api().get("/meshes/default/dataplanes/gw-1").await;
    // Envoy's own lines land in the runner's log (target envoy), not on stdout.
    assert!(!run.stdout().contains("[info]"), "Envoy wrote on the runner's stdout:\n{}", run.stdout());

    // SIGTERM: drain, stop Envoy, deregister, exit 0.
    let status = run.sigterm().await;
    assert!(status.success(), "dataplane run after SIGTERM: {status:?}\n{}", run.stderr());
    let log = run.stderr();
    assert!(log.contains("Envoy drains its listeners"), "the drain request reached Envoy's admin: {log}");
    assert!(log.contains("Dataplane deregistered"), "{log}");
    assert!(zone.api().find("/meshes/default/dataplanes/gw-1").await.expect("GET").is_none());
    wait_process_gone(pid, "Envoy exits with the runner").await;
    let _ = zone.sigterm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_no_envoy_and_the_sweeper_removes_only_the_disconnected() {
    envoy_binary();
    let dir = TestDir::new("runner-sweeper");
    let zone = Zone::standalone_with(&dir, "zone-1", &["--dataplane-cleanup-after", "2s"]).await;
    zone.api().wait_for("/meshes/default", "has the default mesh", |_| true).await;
    // A Dataplane that never had a proxy: the sweeper keeps it.
    zone.api().apply_yaml(&traffic::backend_dataplane("app-1", &[(free_port(), "app")])).await;

    let work = dir.part_dir("run");
    let runners: Vec<Process> = ["gw-a", "gw-b"].iter().map(|n| runner(&dir, &format!("run-{n}"))).collect();
    let mut pids = Vec::new();
    for (name, run) in ["gw-a", "gw-b"].iter().zip(&runners) {
        let file = dataplane_file(&work, name, &gateway_dataplane_yaml(name));
        let token = token_file(&zone, &dir, name).await;
        run.start(&run_args(&zone, &file, &["--dataplane-token-file", &token]), &Announce::lines(&[REGISTERED])).await;
        pids.push(envoy_pid(run).await);
    }
    for name in ["gw-a", "gw-b"] {
        zone.api()
            .wait_for(&format!("/meshes/default/dataplane-insights/{name}"), "connected", |i| {
                i["subscriptions"].as_array().is_some_and(|s| s.iter().any(|s| s.get("disconnectTime").is_none()))
            })
            .await;
    }

    // SIGKILL of the runner: no graceful path runs, yet Envoy goes too.
    runners[0].kill();
    wait_process_gone(pids[0], "gw-a's Envoy dies with its runner").await;
    assert!(!process_gone(pids[1]), "gw-b's Envoy must be untouched");

    // The zone sees gw-a's stream end; 2 s later the sweeper deletes it.
    zone.api().wait_gone("/meshes/default/dataplanes/gw-a").await;
    assert!(zone.api().find("/meshes/default/dataplane-insights/gw-a").await.expect("GET").is_none());
    let log = zone.wait_log(&["deleted a Dataplane disconnected", "gw-a"], WAIT).await;
    assert!(!log.contains("gw-b"), "{log}");
    // gw-b has been connected all along, and app-1 never had a proxy: both kept.
    zone.api().get("/meshes/default/dataplanes/gw-b").await;
    zone.api().get("/meshes/default/dataplanes/app-1").await;
    assert!(runners[1].is_running());

    let status = runners[1].sigterm().await;
    assert!(status.success(), "{status:?}");
    let _ = zone.sigterm().await;
}

/// Runs the runner to its exit; returns (exit code, stderr).
async fn run_to_exit(dir: &TestDir, label: &str, args: Vec<OsString>) -> (Option<i32>, String) {
    let run = runner(dir, label);
    run.start(&args, &Announce::Nothing).await;
    let status = run.wait_exit(WAIT).await;
    (status.code(), run.stderr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_files_exit_1_naming_the_problem_and_register_nothing() {
    envoy_binary();
    let dir = TestDir::new("runner-bad-input");
    let zone = Zone::standalone_with(&dir, "zone-1", &[]).await;
    zone.api().wait_for("/meshes/default", "has the default mesh", |_| true).await;
    let work = dir.part_dir("run");
    let good = dataplane_file(&work, "gw-1", &gateway_dataplane_yaml("gw-1"));
    let no_tags = dataplane_file(
        &work,
        "bad",
        "type: Dataplane\nmesh: default\nname: gw-1\nnetworking:\n  address: 127.0.0.1\n  gateway:\n    tags: {}\n",
    );
    let empty_token = work.join("empty.token");
    std::fs::write(&empty_token, "\n").expect("write");
    let empty_token = empty_token.to_string_lossy().to_string();

    let cases: Vec<(&str, Vec<OsString>, &str)> = vec![
        ("invalid-file", run_args(&zone, &no_tags, &[]), "networking.gateway.tags"),
        ("bad-scheme", run_args(&zone, &good, &["--cp-address", "ftp://127.0.0.1:5678"]), "--cp-address"),
        ("bad-port", run_args(&zone, &good, &["--admin-port", "70000"]), "--admin-port"),
        ("empty-token", run_args(&zone, &good, &["--dataplane-token-file", &empty_token]), "--dataplane-token-file"),
        ("no-envoy", run_args(&zone, &good, &["--envoy", "/nonexistent/envoy"]), "--envoy"),
        // A refusal that will not change (401: a wrong token) is not retried.
        ("wrong-token", run_args(&zone, &good, &["--api-token", "wrong"]), "401"),
    ];
    for (label, args, needle) in cases {
        let (code, stderr) = run_to_exit(&dir, label, args).await;
        assert_eq!(code, Some(1), "{label}: exit code; stderr:\n{stderr}");
        assert!(stderr.contains(needle), "{label}: stderr names {needle:?}:\n{stderr}");
        assert!(!stderr.contains("Envoy started"), "{label}: Envoy was started:\n{stderr}");
    }
    let names = zone.api().names("/meshes/default/dataplanes").await.expect("list");
    assert!(names.is_empty(), "nothing registered: {names:?}");
    let _ = zone.sigterm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_exiting_by_itself_ends_the_runner_after_deregistering() {
    envoy_binary();
    let dir = TestDir::new("runner-envoy-exits");
    let zone = Zone::standalone_with(&dir, "zone-1", &[]).await;
    zone.api().wait_for("/meshes/default", "has the default mesh", |_| true).await;
    let file = dataplane_file(&dir.part_dir("run"), "gw-1", &gateway_dataplane_yaml("gw-1"));
    let run = runner(&dir, "run-gw-1");
    let token = token_file(&zone, &dir, "gw-1").await;
    run.start(&run_args(&zone, &file, &["--dataplane-token-file", &token]), &Announce::lines(&[REGISTERED])).await;
    let pid = envoy_pid(&run).await;
    let envoy = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    rustix::process::kill_process(envoy, rustix::process::Signal::KILL).expect("kill Envoy");

    let status = run.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(128 + 9), "the runner exits with Envoy's status: {status:?}");
    let log = run.stderr();
    assert!(log.contains("Envoy exited by itself"), "{log}");
    assert!(zone.api().find("/meshes/default/dataplanes/gw-1").await.expect("GET").is_none(), "deregistered");
    let _ = zone.sigterm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_a_dataplane_whose_zone_was_killed_with_its_stream_open() {
    envoy_binary();
    let dir = TestDir::new("runner-sweeper-zone-killed");
    let zone = Zone::standalone_with(&dir, "zone-1", &["--dataplane-cleanup-after", "2s"]).await;
    zone.api().wait_for("/meshes/default", "has the default mesh", |_| true).await;
    let file = dataplane_file(&dir.part_dir("run"), "gw-1", &gateway_dataplane_yaml("gw-1"));
    let run = runner(&dir, "run-gw-1");
    let token = token_file(&zone, &dir, "gw-1").await;
    run.start(&run_args(&zone, &file, &["--dataplane-token-file", &token]), &Announce::lines(&[REGISTERED])).await;
    let pid = envoy_pid(&run).await;
    zone.api()
        .wait_for("/meshes/default/dataplane-insights/gw-1", "connected", |i| {
            i["subscriptions"].as_array().is_some_and(|s| s.iter().any(|s| s.get("disconnectTime").is_none()))
        })
        .await;

    // The zone dies without closing the subscription, then the gateway
    // host vanishes: nobody records a disconnect.
    zone.kill();
    run.kill();
    wait_process_gone(pid, "Envoy dies with its runner").await;
    zone.restart().await;
    let insight = zone.api().get("/meshes/default/dataplane-insights/gw-1").await;
    assert!(
        insight["subscriptions"].as_array().is_some_and(|s| s.iter().any(|s| s.get("disconnectTime").is_none())),
        "the killed zone left the subscription open: {insight}"
    );
    // The restarted zone (SQLite: the store's only writer) knows that
    // stream is dead, and removes the Dataplane once the age has passed.
    zone.api().wait_gone("/meshes/default/dataplanes/gw-1").await;
    let _ = zone.sigterm().await;
}
