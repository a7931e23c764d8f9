//! The whole way: a MeshGateway and its MeshGatewayRoute applied at the
//! GLOBAL travel over KDS to a zone, the zone turns them into Envoy
//! configuration for its gateway Envoy, and a request through that Envoy
//! reaches the HTTP backend registered (as a Dataplane) in the zone. A
//! change at the global then re-routes the next request.

use meridian_tests::{
    Backend, Topology, WAIT, eventually,
    resources::{self, label},
    traffic::free_port,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_applied_at_the_global_reaches_the_backend_and_a_change_reroutes() {
    let topo = Topology::builder("e2e-from-global")
        .global(Backend::Sqlite)
        .zone("zone-1")
        .http_backend("blue", "zone-1")
        .http_backend("green", "zone-1")
        .gateway("zone-1", "edge-gw", "edge")
        .start()
        .await;
    let (global, zone, envoy) = (topo.global(), topo.zone("zone-1"), topo.envoy("edge-gw"));
    let port = free_port();

    // Applied at the global, never at the zone.
    global.api().apply_yaml(&resources::gateway_and_route_yaml(port, "/shop", "blue")).await;
    let synced =
        zone.api().wait_for("/meshes/default/meshgatewayroutes/edge-route", "synced from the global", |_| true).await;
    assert_eq!(synced["conf"]["http"]["rules"][0]["backends"][0]["destination"]["kuma.io/service"], "blue");
    // A zone refuses local writes to what the global owns.
    assert_eq!(zone.api().put("/meshes/default/meshgatewayroutes/edge-route", &synced).await.0, 403);
    envoy.wait_ready().await;

    let reply = eventually("a request through the zone's Envoy reaches blue", WAIT, || async {
        let r = envoy.get(port, "edge.example.com", "/shop/cart").await?;
        if r.status == 200 && r.backend() == "blue" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    let echo = reply.echo().expect("blue answers with its echo");
    assert_eq!(echo["path"], "/shop/cart", "{echo}");
    assert_eq!(echo["headers"]["host"], "edge.example.com", "{echo}");
    let seen = topo.http_backend("blue").seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(seen.iter().any(|e| e["path"] == "/shop/cart"), "blue saw the request: {seen:?}");
    // Outside the route's prefix nothing matches.
    assert_eq!(envoy.get(port, "edge.example.com", "/other").await.expect("request").status, 404);

    // One change at the global: the route's backend becomes green and its
    // prefix /store. The next requests follow, with no restart anywhere.
    global.api().apply_yaml(&resources::gateway_and_route_yaml(port, "/store", "green")).await;
    let reply = eventually("the change at the global re-routes to green", WAIT, || async {
        let r = envoy.get(port, "edge.example.com", "/store/cart").await?;
        if r.status == 200 && r.backend() == "green" { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    assert_eq!(reply.echo().expect("green's echo")["path"], "/store/cart");
    let old = envoy.get(port, "edge.example.com", "/shop/cart").await.expect("request");
    assert_eq!(old.status, 404, "the old prefix no longer routes: {old:?}");

    // The zone's copy is the global's: same spec, origin global.
    let route = zone.api().get("/meshes/default/meshgatewayroutes/edge-route").await;
    assert_eq!(route["conf"]["http"]["rules"][0]["backends"][0]["destination"]["kuma.io/service"], "green");
    assert_eq!(label(&route, "kuma.io/origin"), Some("global"), "{route}");
    topo.cleanup().await;
}
