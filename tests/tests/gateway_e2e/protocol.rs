//! The ADS protocol as seen by a client: unknown Dataplanes are refused,
//! only what changed travels, a reconnect with known versions costs
//! nothing, and ACKs are never answered.

use std::{collections::HashMap, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
};
use meridian_zone::gateway::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::Streaming;

use meridian_tests::{Topology, WAIT, Zone, traffic};

fn node(id: &str) -> Option<Node> {
    Some(Node { id: id.to_string(), ..Default::default() })
}

struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    async fn open(zone: &Zone, first: DeltaDiscoveryRequest) -> Result<DeltaClient, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::new(zone.xds_channel().await.expect("connect"));
        let name = first.node.as_ref().and_then(|n| n.id.split_once('.')).map(|(_, n)| n.to_string());
        // Requests queued by the test: a handful at a time.
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue");
        let rx = client
            .delta_aggregated_resources(with_token(zone, name, ReceiverStream::new(rx)).await)
            .await?
            .into_inner();
        Ok(DeltaClient { tx, rx })
    }

    async fn next(&mut self) -> Result<DeltaDiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(WAIT, self.rx.next()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err(tonic::Status::unavailable("stream ended")),
            Err(_) => Err(tonic::Status::deadline_exceeded("no response")),
        }
    }

    async fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx.send(r).await.expect("send");
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

/// A request carrying a Dataplane token for `name` (as Envoy sends it:
/// the raw token in the `authorization` metadata).
async fn with_token<T>(zone: &Zone, name: Option<String>, body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    if let Some(name) = name
        && let Some(token) = zone.dataplane_token(&name).await
    {
        req.metadata_mut().insert("authorization", token.parse().expect("token as metadata"));
    }
    req
}

fn request(type_url: String, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Two HTTP ports, a route on each; route `one` matches `one_path`, route
/// `two` also attaches to port one when `two_on_one`.
fn two_ports(one_path: &str, two_on_one: bool) -> String {
    let extra = if two_on_one { ", {match: {kuma.io/service: gw, p: one}}" } else { "" };
    format!(
        r#"
type: MeshGateway
mesh: default
name: gw
selectors: [{{match: {{kuma.io/service: gw}}}}]
conf:
  listeners:
  - {{port: 18001, protocol: HTTP, tags: {{p: one}}}}
  - {{port: 18002, protocol: HTTP, tags: {{p: two}}}}
---
type: MeshGatewayRoute
mesh: default
name: one
selectors: [{{match: {{kuma.io/service: gw, p: one}}}}]
conf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: {one_path}}}}}], backends: [{{destination: {{kuma.io/service: web}}}}]}}]}}}}
---
type: MeshGatewayRoute
mesh: default
name: two
selectors: [{{match: {{kuma.io/service: gw, p: two}}}}{extra}]
conf: {{http: {{rules: [{{matches: [{{path: {{match: PREFIX, value: /}}}}], backends: [{{destination: {{kuma.io/service: web}}}}]}}]}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sends_only_what_changed_and_refuses_unknown_dataplanes() {
    let topo = Topology::builder("e2e-protocol").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("web-1", &[(19001, "web")])).await;
    zone.api().apply_yaml(&two_ports("/", false)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;

    // An unknown Dataplane: a clear error, no configuration.
    let mut unknown = match DeltaClient::open(
        zone,
        DeltaDiscoveryRequest { node: node("default.nope"), type_url: CLUSTER_TYPE(), ..Default::default() },
    )
    .await
    {
        Ok(c) => c,
        Err(status) => panic!("stream refused before it started: {status}"),
    };
    let err = unknown.next().await.expect_err("no configuration for an unknown Dataplane");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.message().contains("not registered"), "{err}");

    // Subscribe to everything, ACK everything.
    let first = DeltaDiscoveryRequest { node: node("default.gw-1"), ..request(CLUSTER_TYPE(), &[]) };
    let mut c = DeltaClient::open(zone, first).await.expect("open");
    let mut held: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut remember = |r: &DeltaDiscoveryResponse| {
        let h = held.entry(r.type_url.clone()).or_default();
        for res in &r.resources {
            h.insert(res.name.clone(), res.version.clone());
        }
    };
    let cds = c.next().await.expect("cds");
    assert_eq!(cds.resources.len(), 1);
    remember(&cds);
    c.ack(&cds).await;
    c.send(request(ENDPOINT_TYPE(), &["web"])).await;
    let eds = c.next().await.expect("eds");
    remember(&eds);
    c.ack(&eds).await;
    c.send(request(LISTENER_TYPE(), &[])).await;
    let lds = c.next().await.expect("lds");
    assert_eq!(lds.resources.len(), 2);
    remember(&lds);
    c.ack(&lds).await;
    c.send(request(ROUTE_TYPE(), &["gw:HTTP:18001:*", "gw:HTTP:18002:*"])).await;
    let rds = c.next().await.expect("rds");
    assert_eq!(rds.resources.len(), 2);
    remember(&rds);
    c.ack(&rds).await;

    // Change the route of port 18001 only: one RDS response, one resource.
    zone.api().apply_yaml(&two_ports("/one", false)).await;
    let r = c.next().await.expect("rds update");
    assert_eq!(r.type_url, ROUTE_TYPE(), "only routes changed: {r:?}");
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["gw:HTTP:18001:*"]);
    assert!(r.removed_resources.is_empty());
    // Reject it: the NACK is recorded, and it blocks nothing else.
    c.send(DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        error_detail: Some(envoy_types::pb::google::rpc::Status {
            code: 3,
            message: "bad route".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    meridian_tests::eventually("the NACK in the DataplaneInsight", WAIT, || async {
        let i = zone.api().fetch("/meshes/default/dataplane-insights/gw-1").await?;
        let status = &i["subscriptions"][0]["status"];
        let rejected = status["rds"]["responsesRejected"].as_str() == Some("1");
        if rejected && status["lastNackReason"].as_str().is_some_and(|r| r.contains("bad route")) {
            Ok(())
        } else {
            Err(i.to_string())
        }
    })
    .await;
    // Re-applying identical resources changes nothing; the next response is
    // the endpoint change that follows (nothing stray in between).
    zone.api().apply_yaml(&two_ports("/one", false)).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("web-2", &[(19002, "web")])).await;
    let r = c.next().await.expect("eds update");
    assert_eq!(r.type_url, ENDPOINT_TYPE(), "{r:?}");
    assert_eq!(r.resources.len(), 1);
    remember(&r);
    c.ack(&r).await;
    drop(c);

    // A reconnect that names what it holds gets only the differences.
    let mut initial = DeltaDiscoveryRequest { node: node("default.gw-1"), ..request(LISTENER_TYPE(), &[]) };
    initial.initial_resource_versions = held.get(&LISTENER_TYPE()).cloned().unwrap_or_default();
    let mut c = DeltaClient::open(zone, initial).await.expect("reopen");
    let lds = c.next().await.expect("lds");
    assert!(lds.resources.is_empty() && lds.removed_resources.is_empty(), "{lds:?}");
    let mut rds_init = request(ROUTE_TYPE(), &["gw:HTTP:18001:*", "gw:HTTP:18002:*"]);
    rds_init.initial_resource_versions = held.get(&ROUTE_TYPE()).cloned().unwrap_or_default();
    c.send(rds_init).await;
    // The client still holds the route configuration it rejected: only
    // that one travels again.
    let rds = c.next().await.expect("rds");
    assert_eq!(rds.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["gw:HTTP:18001:*"]);
    drop(c);
    let _ = zone.sigterm().await;
}

async fn next(rx: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
        Ok(Some(Ok(r))) => r,
        other => panic!("no response: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_answers_changes_not_acks() {
    let topo = Topology::builder("e2e-protocol").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    zone.api().apply_yaml(&two_ports("/", false)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;
    let mut client = AggregatedDiscoveryServiceClient::new(zone.xds_channel().await.expect("connect"));
    // Requests queued by the test: a handful at a time.
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    tx.send(DiscoveryRequest { node: node("default.gw-1"), type_url: LISTENER_TYPE(), ..Default::default() })
        .await
        .expect("send");
    let req = with_token(zone, Some("gw-1".to_string()), ReceiverStream::new(rx)).await;
    let mut rx = client.stream_aggregated_resources(req).await.expect("open").into_inner();
    let lds: DiscoveryResponse = next(&mut rx).await;
    assert_eq!(lds.resources.len(), 2);
    // SotW ACKs repeat the full name list (none for LDS).
    let ack = |r: &DiscoveryResponse, names: &[&str]| DiscoveryRequest {
        type_url: r.type_url.clone(),
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    tx.send(ack(&lds, &[])).await.expect("ack");
    // The ACK gets nothing; the next thing to arrive answers the RDS request.
    tx.send(DiscoveryRequest {
        type_url: ROUTE_TYPE(),
        resource_names: vec!["gw:HTTP:18001:*".into()],
        ..Default::default()
    })
    .await
    .expect("rds");
    let rds = next(&mut rx).await;
    assert_eq!(rds.type_url, ROUTE_TYPE());
    assert_eq!(rds.resources.len(), 1);
    tx.send(ack(&rds, &["gw:HTTP:18001:*"])).await.expect("ack");
    // A change: the whole subscribed set again, under a new version.
    zone.api().apply_yaml(&two_ports("/", true)).await;
    let rds2 = next(&mut rx).await;
    assert_eq!(rds2.type_url, ROUTE_TYPE());
    assert_eq!(rds2.resources.len(), 1);
    assert_ne!(rds2.version_info, rds.version_info);
    drop(tx);
    let _ = zone.sigterm().await;
}

/// Issue 8: a type the zone does not serve (here Envoy's secrets, SDS) gets
/// an empty first response and the stream stays up: a later subscription
/// to a served type still gets its resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_type_gets_an_empty_response_and_the_stream_stays_up() {
    let topo = Topology::builder("e2e-protocol-unserved").zone("zone").start().await;
    let zone = topo.zone("zone");
    zone.api().apply_yaml(traffic::MESH).await;
    zone.api().apply_yaml(&traffic::backend_dataplane("web-1", &[(19001, "web")])).await;
    zone.api().apply_yaml(&two_ports("/", false)).await;
    zone.api().apply_yaml(&traffic::gateway_dataplane("gw-1", "gw")).await;

    let unserved = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".to_string();
    let first = DeltaDiscoveryRequest { node: node("default.gw-1"), ..request(unserved.clone(), &[]) };
    let mut c = DeltaClient::open(zone, first).await.expect("open");
    let empty = c.next().await.expect("an empty response");
    assert_eq!(empty.type_url, unserved);
    assert!(empty.resources.is_empty() && empty.removed_resources.is_empty(), "{empty:?}");
    assert!(!empty.nonce.is_empty());
    c.ack(&empty).await;
    c.send(request(CLUSTER_TYPE(), &[])).await;
    let cds = c.next().await.expect("cds after the unserved type");
    assert_eq!(cds.type_url, CLUSTER_TYPE());
    assert_eq!(cds.resources.len(), 1);
    c.ack(&cds).await;

    // The xDS stream reports through the zone's registry like KDS streams.
    let http = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
    meridian_tests::eventually("xDS figures in /metrics", WAIT, || async {
        let text = http
            .get(format!("{}/metrics", zone.api_url()))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let acked = text.lines().any(|l| {
            l.starts_with("meridian_kds_events_total{")
                && l.contains("direction=\"xds\"")
                && l.contains("event=\"acked\"")
        });
        if acked { Ok(()) } else { Err(text) }
    })
    .await;
}
