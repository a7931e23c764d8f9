//! Surviving failures: a killed global or zone restarts from its store and
//! only the differences travel; a zone cut off (SIGSTOP) goes offline and
//! catches up when it resumes.

use std::{collections::BTreeSet, time::Duration};

use meridian_tests::{
    Backend, Global, GlobalSpec, TestDir,
    json_api::{CONVERGE, eventually, stat, subscriptions},
    resources::{dataplane, gateway, listener_port},
};
use serde_json::Value;

use crate::{global_and_zones, global_with_mesh, synced_zone};

const UP: &str = "Dataplane (zone to global)";
/// Bound on "the global marks a cut-off zone offline" (promised: 15 s).
const OFFLINE_DEADLINE: Duration = Duration::from_secs(25);

fn ids(overview: &Value) -> BTreeSet<String> {
    subscriptions(overview).iter().filter_map(|s| s["id"].as_str().map(str::to_string)).collect()
}

/// The newest subscription of `zone` that is not one of `old`, once `ready`
/// holds for it.
async fn new_subscription(g: &Global, zone: &str, old: &BTreeSet<String>, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("a new subscription of {zone} with its counters"), CONVERGE, || async {
        let ov = g.api().zone_overview(zone).await?;
        let last = subscriptions(&ov).pop().ok_or("no subscription")?;
        let id = last["id"].as_str().unwrap_or_default();
        if old.contains(id) {
            return Err(format!("still the old subscription {id}"));
        }
        if ready(&last) { Ok(last) } else { Err(format!("counters not there yet: {}", last["status"])) }
    })
    .await
}

/// Done when 3, global side: with N Dataplanes synced, SIGKILL the global,
/// change one and delete another in the zone, restart the global from the
/// same store: it converges and the new subscription carried one resource,
/// not N.
async fn global_restart_resends_only_differences(name: &str, backend: Backend) {
    const N: usize = 5;
    let topo = global_and_zones(name, GlobalSpec::on(backend), &["zone-1"]).await;
    let (g, z) = (topo.global(), topo.zone("zone-1"));
    for i in 0..N {
        z.api().apply(&dataplane(&format!("dp-{i}"), &format!("10.0.0.{i}"), "web")).await;
    }
    let want: Vec<String> = (0..N).map(|i| format!("zone-1.dp-{i}")).collect();
    eventually("the global holds every Dataplane", CONVERGE, || async {
        let names = g.api().names("/meshes/default/dataplanes").await?;
        if names == want { Ok(()) } else { Err(format!("{names:?}")) }
    })
    .await;
    let before = ids(&g.api().wait_online("zone-1", true, CONVERGE).await);

    g.kill();
    z.api().apply(&dataplane("dp-2", "10.0.1.99", "web")).await;
    assert_eq!(z.api().delete("/meshes/default/dataplanes/dp-4").await.0, 200);
    g.restart().await;

    g.api()
        .wait_for("/meshes/default/dataplanes/zone-1.dp-2", "changed while the global was down", |v| {
            v["networking"]["address"] == "10.0.1.99"
        })
        .await;
    g.api().wait_gone("/meshes/default/dataplanes/zone-1.dp-4").await;
    assert_eq!(g.api().names("/meshes/default/dataplanes").await.expect("list"), want[..N - 1]);
    let sub = new_subscription(g, "zone-1", &before, |s| stat(s, UP, "responsesAcknowledged") >= 1).await;
    assert_eq!(stat(&sub, UP, "resourcesSent"), 1, "only the changed Dataplane travels: {}", sub["status"]);
    assert_eq!(stat(&sub, UP, "responsesRejected"), 0);
    // Downwards too: the zone already held the mesh, so nothing was resent.
    assert_eq!(stat(&sub, "Mesh", "resourcesSent"), 0, "{}", sub["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_restart_resends_only_differences_sqlite() {
    global_restart_resends_only_differences("restart-global-sqlite", Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_restart_resends_only_differences_postgres() {
    global_restart_resends_only_differences("restart-global-pg", Backend::Postgres).await;
}

/// Done when 3, zone side: SIGKILL a zone, change one gateway and delete
/// another at the global, restart the zone: it converges and the new
/// subscription carried only the changed gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_restart_receives_only_changes() {
    let dir = TestDir::new("restart-zone");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    for (i, port) in [(1, 8081), (2, 8082), (3, 8083)] {
        g.api().apply(&gateway(&format!("gw-{i}"), port)).await;
    }
    let z = synced_zone(&dir, &g, "zone-1").await;
    for i in 1..=3 {
        z.api().wait_for(&format!("/meshes/default/meshgateways/gw-{i}"), "synced", |_| true).await;
    }
    let before = ids(&g.api().wait_online("zone-1", true, CONVERGE).await);

    z.kill();
    g.api().apply(&gateway("gw-2", 9092)).await;
    assert_eq!(g.api().delete("/meshes/default/meshgateways/gw-3").await.0, 200);
    z.restart().await;

    z.api()
        .wait_for("/meshes/default/meshgateways/gw-2", "changed while down", |v| listener_port(v) == Some(9092))
        .await;
    z.api().wait_gone("/meshes/default/meshgateways/gw-3").await;
    assert_eq!(listener_port(&z.api().get("/meshes/default/meshgateways/gw-1").await), Some(8081));
    let sub = new_subscription(&g, "zone-1", &before, |s| stat(s, "MeshGateway", "responsesAcknowledged") >= 1).await;
    assert_eq!(stat(&sub, "MeshGateway", "resourcesSent"), 1, "only the changed gateway travels: {}", sub["status"]);
    assert_eq!(stat(&sub, "Mesh", "resourcesSent"), 0, "{}", sub["status"]);
}

/// Done when 4: a zone cut off with SIGSTOP is marked offline; what the
/// global applies meanwhile reaches it after SIGCONT, and it is online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_zone_goes_offline_and_converges_on_resume() {
    let topo = global_and_zones("pause", GlobalSpec::default(), &["zone-1"]).await;
    let (g, z) = (topo.global(), topo.zone("zone-1"));
    g.api().wait_online("zone-1", true, CONVERGE).await;

    z.pause();
    g.api().wait_online("zone-1", false, OFFLINE_DEADLINE).await;
    g.api().apply(&gateway("gw-while-paused", 8088)).await;
    z.resume();

    z.api().wait_for("/meshes/default/meshgateways/gw-while-paused", "after resume", |_| true).await;
    g.api().wait_online("zone-1", true, CONVERGE).await;
}

/// REFERENCE §4 ("streams that hang are not noticed"): a global that stops
/// answering (SIGSTOP) is noticed by its zone; after SIGCONT both directions
/// catch up with what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_global_is_noticed_and_both_sides_catch_up() {
    let topo = global_and_zones("pause-global", GlobalSpec::default(), &["zone-1"]).await;
    let (g, z) = (topo.global(), topo.zone("zone-1"));
    g.api().wait_online("zone-1", true, CONVERGE).await;

    g.pause();
    z.wait_log(&["sync with the global failed"], OFFLINE_DEADLINE).await;
    z.api().apply(&dataplane("dp-while-paused", "10.0.0.7", "web")).await;
    g.resume();

    g.api().wait_for("/meshes/default/dataplanes/zone-1.dp-while-paused", "after resume", |_| true).await;
    g.api().apply(&gateway("gw-after-resume", 8089)).await;
    z.api().wait_for("/meshes/default/meshgateways/gw-after-resume", "after resume", |_| true).await;
    g.api().wait_online("zone-1", true, CONVERGE).await;
}
