//! Point 10: a zone given two globals (one PostgreSQL) fails over when the
//! one it uses is killed, and a change made at the other arrives.

use std::time::Duration;

use meridian_tests::{
    Backend, Global, GlobalSpec, TestDir, Zone,
    json_api::CONVERGE,
    resources::{gateway, listener_port, mesh},
};

/// The zone notices a dead global (HTTP/2 keepalive, 10 s) and redials.
const FAILOVER: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_fails_over_to_the_other_global() {
    let dir = TestDir::new("failover");
    let ga =
        Global::start(&dir, "global-a", GlobalSpec { plaintext_kds: true, ..GlobalSpec::on(Backend::Postgres) }).await;
    ga.api().apply(&mesh("default")).await;
    let shared =
        GlobalSpec { shared_store: Some(ga.store_url().to_string()), plaintext_kds: true, ..GlobalSpec::default() };
    let gb = Global::start(&dir, "global-b", shared).await;

    let (url_a, url_b) = (ga.kds_url(), gb.kds_url());
    let token = ga.zone_token("zone-1").await;
    let both = format!("{url_a},{url_b}");
    let z = Zone::start_at(&dir, "zone-1", "zone-1", &both, None, Some(&token)).await;
    z.api().wait_for("/meshes/default", "synced from a global", |_| true).await;

    // Which global the zone uses, from its log.
    let line = z.wait_log(&["connected to the global"], CONVERGE).await;
    let (used, other, other_url) = if line.contains(&url_a) { (&ga, &gb, &url_b) } else { (&gb, &ga, &url_a) };
    assert!(line.contains(&url_a) || line.contains(&url_b), "the line names a configured global: {line}");

    used.kill();
    z.wait_log(&["connected to the global", other_url], FAILOVER).await;
    other.api().apply(&gateway("gw-after", 8080)).await;
    z.api()
        .wait_for("/meshes/default/meshgateways/gw-after", "written at the surviving global", |v| {
            listener_port(v) == Some(8080)
        })
        .await;
    other.api().wait_online("zone-1", true, CONVERGE).await;
}
