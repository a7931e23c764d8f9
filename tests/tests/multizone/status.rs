//! Status is not configuration (issue 8, point 4), across real processes: a
//! connected zone's ZoneInsight refreshes and an Envoy's DataplaneInsight
//! ACK records (in the zone, and synced to the global) add no change-log
//! row on either side; a config change costs exactly its own row per side.

use std::path::Path;

use meridian_store::Store;
use meridian_tests::{
    Envoy, GlobalSpec, TestDir, XdsMode,
    json_api::{CONVERGE, eventually, subscriptions},
    resources::{gateway, gateway_dataplane},
};
use serde_json::Value;

use crate::{global_with_mesh, synced_zone};

/// ZoneInsight refreshes observed before counting (one every 3 s).
const REFRESHES: usize = 3;

async fn change_log_rows(db: &Path) -> u64 {
    let store = Store::connect(&format!("sqlite:{}", db.display())).await.expect("open the store read-side");
    store.change_log_rows().await.expect("count change-log rows")
}

fn last_update(overview: &Value) -> String {
    subscriptions(overview).last().map(|s| s["status"]["lastUpdateTime"].to_string()).unwrap_or_default()
}

fn acked(insight: &Value) -> Value {
    insight["subscriptions"][0]["status"]["ackedVersions"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_acks_add_no_change_log_rows() {
    let dir = TestDir::new("status-rows");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&gateway("gw-1", 18_181)).await;
    let z = synced_zone(&dir, &g, "zone-1").await;
    z.api().wait_for("/meshes/default/meshgateways/gw-1", "synced", |_| true).await;

    z.api().apply(&gateway_dataplane("gw-dp", "127.0.0.1", "gw-1-svc")).await;
    let _envoy = Envoy::start(&dir, &z, "gw-dp", XdsMode::Delta).await;

    // The Envoy ACKed listeners in the zone, and that insight reached the global.
    const ZONE_INSIGHT: &str = "/meshes/default/dataplane-insights/gw-dp";
    const GLOBAL_INSIGHT: &str = "/meshes/default/dataplane-insights/zone-1.gw-dp";
    let has_lds = |v: &Value| acked(v).get("lds").is_some();
    z.api().wait_for(ZONE_INSIGHT, "Envoy ACKed listeners", has_lds).await;
    let at_global = g.api().wait_for(GLOBAL_INSIGHT, "synced ACKs", has_lds).await;
    g.api().wait_online("zone-1", true, CONVERGE).await;

    let global_db = g.data_dir().join("global.db");
    let zone_db = z.data_dir().join("zone.db");
    let (g0, z0) = (change_log_rows(&global_db).await, change_log_rows(&zone_db).await);

    // Several ZoneInsight refreshes while connected...
    let mut seen = vec![last_update(&g.api().zone_overview("zone-1").await.expect("overview"))];
    while seen.len() <= REFRESHES {
        let next = eventually("the ZoneInsight refreshes", CONVERGE, || async {
            let t = last_update(&g.api().zone_overview("zone-1").await?);
            if seen.contains(&t) { Err(format!("still {t}")) } else { Ok(t) }
        })
        .await;
        seen.push(next);
    }
    assert_eq!(change_log_rows(&global_db).await, g0, "ZoneInsight refreshes added change-log rows at the global");
    assert_eq!(change_log_rows(&zone_db).await, z0, "the connected zone added change-log rows");

    // ...then one config change: the Envoy ACKs it, the zone records the
    // ACK and syncs it to the global; only the change itself is logged.
    g.api().apply(&gateway("gw-1", 18_182)).await;
    let before = acked(&at_global);
    let zone_now = z.api().wait_for(ZONE_INSIGHT, "the new listener ACKed", |v| acked(v) != before).await;
    g.api().wait_for(GLOBAL_INSIGHT, "the new ACK synced", |v| acked(v) == acked(&zone_now)).await;
    assert_eq!(change_log_rows(&global_db).await, g0 + 1, "global: only the MeshGateway update is logged");
    assert_eq!(change_log_rows(&zone_db).await, z0 + 1, "zone: only the received MeshGateway is logged");
}

/// Writes `doc` into the SQLite store at `db` (as another process would)
/// and compacts the change log up to it: whoever follows that log from
/// before this write must resync.
async fn write_and_compact(db: &Path, doc: Value) -> u64 {
    let store = Store::connect(&format!("sqlite:{}", db.display())).await.expect("open the store");
    let r = meridian_sync_proto::universal::from_value(doc).expect("resource");
    store.upsert(meridian_core::Manager::encode(&r)).await.expect("write");
    let head = store.current_revision().await.expect("revision");
    store.compact(head).await.expect("compact");
    store.change_log_rows().await.expect("rows")
}

/// Compaction overtakes every change-feed follower: the global's KDS cache
/// and the zone's upward stream and xDS cache find their position
/// compacted, resync from current state, and the write made meanwhile
/// still reaches the other side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_behind_compaction_resync() {
    let dir = TestDir::new("compacted");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    let z = synced_zone(&dir, &g, "zone-1").await;

    // The global is frozen while a gateway lands in its store and the log is
    // compacted past it; the feed its KDS cache follows then starts after.
    g.pause();
    let rows = write_and_compact(&g.data_dir().join("global.db"), gateway("gw-late", 18_183)).await;
    assert_eq!(rows, 0, "the whole log was compacted");
    g.resume();
    z.api().wait_for("/meshes/default/meshgateways/gw-late", "reached the zone after a resync", |_| true).await;
    g.wait_log(&["compacted past our position"], CONVERGE).await;

    // The same for the zone's followers: a Dataplane written while it is frozen.
    z.pause();
    let dp = serde_json::json!({"type": "Dataplane", "mesh": "default", "name": "dp-late",
        "networking": {"address": "10.0.0.9", "inbound": [{"port": 9000, "tags": {"kuma.io/service": "web"}}]}});
    assert_eq!(write_and_compact(&z.data_dir().join("zone.db"), dp).await, 0);
    z.resume();
    g.api().wait_for("/meshes/default/dataplanes/zone-1.dp-late", "reached the global after a resync", |_| true).await;
    z.wait_log(&["compacted past the zone-to-global feed"], CONVERGE).await;
    z.wait_log(&["compacted under the xDS cache"], CONVERGE).await;
    // Later changes flow as usual on both sides.
    g.api().apply(&gateway("gw-late", 18_184)).await;
    z.api()
        .wait_for("/meshes/default/meshgateways/gw-late", "updated", |v| v["conf"]["listeners"][0]["port"] == 18_184)
        .await;
}
