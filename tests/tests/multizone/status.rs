//! Status is not configuration (issue 8, point 4), across real processes: a
//! connected global's heartbeats and an Envoy's DataplaneInsight ACK
//! records (in the zone, and synced to the global) add no change-log row on
//! either side; a config change costs exactly its own row per side.
//!
//! And status costs what changed (issue 13): an idle zone's ZoneInsight is
//! not rewritten, yet the zone stays online past the stale window (the
//! global instance's heartbeat proves its subscriptions alive); a change
//! shows in the insight promptly; a revoked token still cuts the zone off,
//! found from the store's change feed rather than by polling.

use std::path::Path;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use meridian_core::liveness::{Heartbeats, SUBSCRIPTION_STALE_MILLIS};
use meridian_store::Store;
use meridian_tests::{
    Envoy, GlobalSpec, TestDir, XdsMode,
    json_api::{CONVERGE, eventually, stat, subscriptions},
    raw_kds::{DeltaDiscoveryRequest, RawKds},
    resources::{gateway, gateway_dataplane, route},
    scale::TYPES,
};
use serde_json::{Value, json};

use crate::{global_with_mesh, synced_zone};

/// Heartbeats of the global instance observed before counting (one every 3 s).
const REFRESHES: usize = 3;

async fn change_log_rows(db: &Path) -> u64 {
    let store = Store::connect(&format!("sqlite:{}", db.display())).await.expect("open the store read-side");
    store.change_log_rows().await.expect("count change-log rows")
}

/// The newest heartbeat of any global instance in the store at `db` (unix ms).
async fn newest_heartbeat(db: &Path) -> Result<i64, String> {
    let store = Store::connect(&format!("sqlite:{}", db.display())).await.map_err(|e| e.to_string())?;
    let beats = Heartbeats::load(&store).await.map_err(|e| e.to_string())?;
    beats.0.values().copied().max().ok_or_else(|| "no heartbeat yet".to_string())
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

    // Several heartbeats of the global instance while connected...
    let mut seen = vec![newest_heartbeat(&global_db).await.expect("the global beats while a zone is connected")];
    while seen.len() <= REFRESHES {
        let next = eventually("the global instance beats again", CONVERGE, || async {
            let t = newest_heartbeat(&global_db).await?;
            if seen.contains(&t) { Err(format!("still {t}")) } else { Ok(t) }
        })
        .await;
        seen.push(next);
    }
    assert_eq!(change_log_rows(&global_db).await, g0, "status writes added change-log rows at the global");
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

/// Whether every type a subscription was sent was acknowledged, for at
/// least the raw zone's [`TYPES`].
fn settled(sub: &Value) -> bool {
    TYPES.iter().all(|t| {
        let sent = stat(sub, t, "responsesSent");
        sent > 0 && stat(sub, t, "responsesAcknowledged") == sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_zone_costs_no_insight_write_stays_online_and_is_cut_off_on_revocation() {
    let dir = TestDir::new("status-idle");
    let g = global_with_mesh(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&gateway("gw", 18_191)).await;
    let global_db = g.data_dir().join("global.db");

    // A zone played by a raw KDS client: it subscribes, ACKs every response
    // and does nothing else, so after its initial sync it is idle.
    let token = g.zone_token("zone-1").await;
    let raw = RawKds::connect(&g.kds_url(), g.ca(), "zone-1", Some(&token)).await;
    let (tx, mut rx) = raw.global_to_zone().await.expect("open GlobalToZoneSync");
    for ty in TYPES {
        tx.send(DeltaDiscoveryRequest { type_url: ty.to_string(), ..Default::default() }).await.expect("subscribe");
    }
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _raw = raw;
        let ended = loop {
            match rx.message().await {
                Ok(Some(resp)) => {
                    let ack = DeltaDiscoveryRequest {
                        type_url: resp.type_url.clone(),
                        response_nonce: resp.nonce.clone(),
                        ..Default::default()
                    };
                    if tx.send(ack).await.is_err() {
                        break None;
                    }
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        let _ = ended_tx.send(ended);
    });

    // The initial sync is recorded: every type sent and acknowledged.
    let sub = eventually("the initial sync is in the ZoneInsight", CONVERGE, || async {
        let ov = g.api().zone_overview("zone-1").await?;
        let last = subscriptions(&ov).last().cloned().ok_or("no subscription")?;
        if ov["online"] == true && settled(&last) { Ok(last) } else { Err(format!("not settled: {last}")) }
    })
    .await;
    let written = sub["status"]["lastUpdateTime"].clone();
    // Written no later than now.
    let written_ms = meridian_core::liveness::now_millis();

    // Idle past the stale window: the global instance beats, the insight
    // is not rewritten, and the zone still shows online.
    eventually("the global beats past the stale window", std::time::Duration::from_secs(60), || async {
        let beat = newest_heartbeat(&global_db).await?;
        if beat > written_ms + SUBSCRIPTION_STALE_MILLIS + 1_000 { Ok(()) } else { Err(format!("beat at {beat}")) }
    })
    .await;
    let ov = g.api().zone_overview("zone-1").await.expect("overview");
    let last = subscriptions(&ov).last().cloned().expect("subscription");
    assert_eq!(last["status"]["lastUpdateTime"], written, "an idle zone's ZoneInsight was rewritten: {last}");
    assert_eq!(ov["online"], true, "an idle zone went offline: {ov}");

    // A change shows in the insight promptly (the flusher writes it).
    g.api().apply(&route("r-1", "gw", "svc-1")).await;
    eventually("the route's response is in the ZoneInsight", CONVERGE, || async {
        let ov = g.api().zone_overview("zone-1").await?;
        let last = subscriptions(&ov).last().cloned().ok_or("no subscription")?;
        let acked = stat(&last, "MeshGatewayRoute", "responsesAcknowledged");
        if acked >= 2 { Ok(()) } else { Err(format!("MeshGatewayRoute acknowledged {acked}")) }
    })
    .await;

    // Revoking the token cuts the idle stream off (from the change feed).
    let claims = token.split('.').nth(1).expect("JWT <header>.<claims>.<signature>");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url claims")).expect("JSON claims");
    let jti = claims["jti"].as_str().expect("jti");
    g.api()
        .apply(&json!({"type": "GlobalSecret", "name": "zone-token-revocations", "data": STANDARD.encode(jti)}))
        .await;
    let ended = tokio::time::timeout(CONVERGE, ended_rx)
        .await
        .expect("the revoked zone's stream was not cut off")
        .expect("the stream task ended");
    let status = ended.expect("the stream ended with a status");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    g.api().wait_online("zone-1", false, CONVERGE).await;
}
