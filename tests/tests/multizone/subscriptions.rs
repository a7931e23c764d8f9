//! Issue 9 item 9: subscriptions are closed. A global instance killed
//! (SIGKILL) cannot close its zones' subscriptions; the instance that takes
//! over closes what no live instance records, so the incumbent's rule
//! (online = any subscription without a disconnect time) holds again.
//! (Two globals on one PostgreSQL keep both their zones online:
//! `sync::two_globals_on_one_postgres_reach_every_zone`.)

use std::collections::BTreeSet;

use meridian_tests::{
    GlobalSpec,
    json_api::{CONVERGE, eventually, subscriptions},
};

use crate::global_and_zones;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_globals_subscriptions_are_closed_by_its_successor() {
    let topo = global_and_zones("subs-closed", GlobalSpec::default(), &["zone-1"]).await;
    let g = topo.global();
    let before: BTreeSet<String> = subscriptions(&g.api().wait_online("zone-1", true, CONVERGE).await)
        .iter()
        .filter(|s| s["disconnectTime"].is_null())
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(before.len(), 1, "one open subscription while connected");

    g.kill();
    g.restart().await;

    // The zone reconnects; the dead instance's subscription gets a
    // disconnect time and only the new one stays open.
    let open = eventually("the dead instance's subscription is closed", CONVERGE, || async {
        let ov = g.api().zone_overview("zone-1").await?;
        let open: Vec<String> = subscriptions(&ov)
            .iter()
            .filter(|s| s["disconnectTime"].is_null())
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect();
        let old_closed = subscriptions(&ov)
            .iter()
            .filter(|s| before.contains(s["id"].as_str().unwrap_or_default()))
            .all(|s| s["disconnectTime"].is_string());
        if old_closed && open.len() == 1 && !before.contains(&open[0]) {
            Ok(open)
        } else {
            Err(format!("open subscriptions {open:?}, old closed: {old_closed}"))
        }
    })
    .await;
    assert_eq!(open.len(), 1);
    g.api().wait_online("zone-1", true, CONVERGE).await;
}
