//! One shutdown signal (issue 8, point 2): SIGTERM ends every stream, each
//! peer's subscription is closed with a disconnect time, and the process
//! exits 0 within 2 s. Without it a zone looked online for ~12 s after its
//! global stopped (until its subscription went stale).
//!
//! Run: `cargo build --workspace --bins && cargo nextest run -p meridian-tests --test shutdown`

use std::time::Duration;

use meridian_tests::{Backend, Topology, WAIT, eventually, json_api::subscriptions};
use serde_json::Value;

/// The bound the issue promises for a clean stop.
const STOP_WITHIN: Duration = Duration::from_secs(2);

/// The subscription with `id` among a zone's or a Dataplane's subscriptions.
fn by_id(subs: &[Value], id: &Value) -> Option<Value> {
    subs.iter().find(|s| &s["id"] == id).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_the_global_closes_every_zone_subscription_and_exits_zero() {
    let topo = Topology::builder("shutdown-global").global(Backend::Sqlite).zone("zone-1").zone("zone-2").start().await;
    let global = topo.global();
    let mut open = Vec::new();
    for zone in ["zone-1", "zone-2"] {
        let ov = global.api().wait_online(zone, true, WAIT).await;
        let last = subscriptions(&ov).last().cloned().expect("an open subscription");
        assert!(last.get("disconnectTime").is_none(), "{ov}");
        open.push((zone, last["id"].clone()));
    }

    let status = global.process().sigterm_within(STOP_WITHIN).await;
    assert!(status.success(), "the global exits 0 on SIGTERM, got {status}; stderr:\n{}", global.stderr());

    // What the stopped global wrote is in the store: start it again and read
    // the old subscriptions before any zone could have reconnected.
    global.restart().await;
    for (zone, id) in open {
        let ov = global.api().zone_overview(zone).await.expect("zone overview");
        let closed =
            by_id(&subscriptions(&ov), &id).unwrap_or_else(|| panic!("subscription {id} of {zone} kept: {ov}"));
        assert!(
            closed.get("disconnectTime").is_some(),
            "{zone}'s subscription closed with a disconnect time: {closed}"
        );
    }
    // And the zones come back to the new instance.
    for zone in ["zone-1", "zone-2"] {
        global.api().wait_online(zone, true, WAIT).await;
    }
    topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_a_zone_with_envoys_connected_closes_its_streams_and_exits_zero() {
    let topo = Topology::builder("shutdown-zone")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, envoy) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    global.api().wait_online("zone-1", true, WAIT).await;
    envoy.wait_ready().await;
    let insight_path = "/meshes/default/dataplane-insights/edge-gw";
    let envoy_sub = eventually("the Envoy's xDS subscription is recorded", WAIT, || async {
        let i = zone.api().fetch(insight_path).await?;
        let subs = i["subscriptions"].as_array().cloned().unwrap_or_default();
        subs.iter().find(|s| s.get("disconnectTime").is_none()).cloned().ok_or_else(|| i.to_string())
    })
    .await;

    let status = zone.process().sigterm_within(STOP_WITHIN).await;
    assert!(status.success(), "the zone exits 0 on SIGTERM, got {status}; stderr:\n{}", zone.stderr());

    // The global learns at once (the zone closed its stream), not after the
    // subscription goes stale.
    let ov = global.api().wait_online("zone-1", false, Duration::from_secs(5)).await;
    let last = subscriptions(&ov).last().cloned().expect("a subscription");
    assert!(last.get("disconnectTime").is_some(), "closed, not stale: {ov}");

    // The zone closed the Envoy's subscription before it exited.
    zone.restart().await;
    let i = zone.api().fetch(insight_path).await.expect("insight after restart");
    let subs = i["subscriptions"].as_array().cloned().unwrap_or_default();
    let closed = by_id(&subs, &envoy_sub["id"]).unwrap_or_else(|| panic!("the old subscription is kept: {i}"));
    assert!(closed.get("disconnectTime").is_some(), "the Envoy's subscription has a disconnect time: {closed}");
    topo.cleanup().await;
}
