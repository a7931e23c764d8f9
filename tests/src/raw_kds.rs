//! A KDS client written only from the wire description (REFERENCE §4), not
//! from Meridian's generated KDS types: the envelope is declared here with
//! `prost`, the calls go through `tonic::client::Grpc` by method path, and
//! Envoy's delta messages come from `envoy-types`. If Meridian drifts from
//! the documented wire shape, this client stops working.

use std::{collections::HashMap, path::Path};

pub use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
pub use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Status, Streaming,
    client::Grpc,
    codec::CompressionEncoding,
    metadata::{MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

pub const KUMA_RESOURCE_TYPE_URL: &str = "type.googleapis.com/kuma.mesh.v1alpha1.KumaResource";
pub const GLOBAL_TO_ZONE_PATH: &str = "/kuma.mesh.v1alpha1.KDSSyncService/GlobalToZoneSync";
pub const ZONE_TO_GLOBAL_PATH: &str = "/kuma.mesh.v1alpha1.KDSSyncService/ZoneToGlobalSync";
/// Kuma 2.14's `GlobalKDSService` (api/mesh/v1alpha1/kds.proto).
pub const HEALTH_CHECK_PATH: &str = "/kuma.mesh.v1alpha1.GlobalKDSService/HealthCheck";
pub const STREAM_STATS_PATH: &str = "/kuma.mesh.v1alpha1.GlobalKDSService/StreamStats";

/// `message ZoneHealthCheckRequest {}`
#[derive(Clone, PartialEq, Message)]
pub struct ZoneHealthCheckRequest {}

/// `message ZoneHealthCheckResponse { google.protobuf.Duration interval = 1; }`
#[derive(Clone, PartialEq, Message)]
pub struct ZoneHealthCheckResponse {
    #[prost(message, optional, tag = "1")]
    pub interval: Option<envoy_types::pb::google::protobuf::Duration>,
}

/// `KumaResource { Meta meta = 1; Any spec = 2; Any status = 3; }`
#[derive(Clone, PartialEq, Message)]
pub struct KumaResource {
    #[prost(message, optional, tag = "1")]
    pub meta: Option<Meta>,
    #[prost(message, optional, tag = "2")]
    pub spec: Option<Any>,
    #[prost(message, optional, tag = "3")]
    pub status: Option<Any>,
}

/// `Meta { string name = 1; string mesh = 2; string version = 5; map<string,string> labels = 6; }`
#[derive(Clone, PartialEq, Message)]
pub struct Meta {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub mesh: String,
    #[prost(string, tag = "5")]
    pub version: String,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
}

/// Wraps a spec (`type.googleapis.com/kuma.mesh.v1alpha1.<Type>`) in the envelope.
pub fn envelope(spec_type: &str, mesh: &str, name: &str, version: &str, labels: &[(&str, &str)], spec: Vec<u8>) -> Any {
    let r = KumaResource {
        meta: Some(Meta {
            name: name.to_string(),
            mesh: mesh.to_string(),
            version: version.to_string(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }),
        spec: Some(Any { type_url: format!("type.googleapis.com/kuma.mesh.v1alpha1.{spec_type}"), value: spec }),
        status: None,
    };
    Any { type_url: KUMA_RESOURCE_TYPE_URL.to_string(), value: r.encode_to_vec() }
}

/// Opens the envelope of a received resource.
pub fn open(any: &Any) -> KumaResource {
    assert_eq!(any.type_url, KUMA_RESOURCE_TYPE_URL, "resource payload type");
    KumaResource::decode(any.value.as_slice()).expect("KumaResource decodes")
}

/// A delta-xDS resource entry: wire name `<name>.<mesh>`.
pub fn resource(mesh: &str, name: &str, version: &str, any: Any) -> Resource {
    Resource { name: format!("{name}.{mesh}"), version: version.to_string(), resource: Some(any), ..Default::default() }
}

/// One zone's identity towards a global.
pub struct RawKds {
    channel: Channel,
    zone: String,
    token: Option<String>,
    /// Compression of every message sent, and the one advertised for
    /// receiving (a Kuma zone uses gzip both ways).
    compression: Option<CompressionEncoding>,
}

impl RawKds {
    /// Connects to `address` (`grpcs://` with `ca`, or `grpc://`) as `zone`.
    pub async fn connect(address: &str, ca: Option<&Path>, zone: &str, token: Option<&str>) -> RawKds {
        let (uri, tls) = match (address.strip_prefix("grpcs://"), address.strip_prefix("grpc://")) {
            (Some(rest), _) => (format!("https://{rest}"), true),
            (None, Some(rest)) => (format!("http://{rest}"), false),
            _ => panic!("address {address:?} is neither grpcs:// nor grpc://"),
        };
        let mut ep = Endpoint::from_shared(uri).expect("endpoint");
        if tls {
            let ca = std::fs::read(ca.expect("grpcs:// needs the CA")).expect("read the CA");
            ep = ep
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost"))
                .expect("TLS config");
        }
        let channel = ep.connect().await.unwrap_or_else(|e| panic!("connect to {address}: {e}"));
        RawKds { channel, zone: zone.to_string(), token: token.map(str::to_string), compression: None }
    }

    /// Compresses every message sent with `encoding` and accepts it in
    /// what comes back, as a Kuma zone does with gzip.
    pub fn compressed(mut self, encoding: CompressionEncoding) -> RawKds {
        self.compression = Some(encoding);
        self
    }

    fn grpc(&self) -> Grpc<Channel> {
        let grpc = Grpc::new(self.channel.clone());
        match self.compression {
            Some(c) => grpc.send_compressed(c).accept_compressed(c),
            None => grpc,
        }
    }

    /// Calls `GlobalKDSService.HealthCheck`.
    pub async fn health_check(&self) -> Result<ZoneHealthCheckResponse, Status> {
        let mut grpc = self.grpc();
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<ZoneHealthCheckRequest, ZoneHealthCheckResponse>::new();
        let path = http::uri::PathAndQuery::from_static(HEALTH_CHECK_PATH);
        Ok(grpc.unary(self.request(ZoneHealthCheckRequest {}), path, codec).await?.into_inner())
    }

    /// Opens `GlobalKDSService.StreamStats` with empty messages; returns
    /// how the call ended (it stays open for an authenticated zone).
    pub async fn stream_stats(&self) -> Result<(), Status> {
        let (_tx, rx) = mpsc::channel::<ZoneHealthCheckRequest>(1);
        let mut grpc = self.grpc();
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<ZoneHealthCheckRequest, ZoneHealthCheckRequest>::new();
        let path = http::uri::PathAndQuery::from_static(STREAM_STATS_PATH);
        let mut stream = grpc.streaming(self.request(ReceiverStream::new(rx)), path, codec).await?.into_inner();
        stream.message().await.map(|_| ())
    }

    fn request<S>(&self, stream: S) -> Request<S> {
        let mut req = Request::new(stream);
        let md = req.metadata_mut();
        let v = |s: &str| MetadataValue::try_from(s).expect("metadata value");
        md.insert("client-id", v(&self.zone));
        md.insert("kds-version", v("v3"));
        md.insert("features", v(""));
        md.insert("version", v("raw-kds-test"));
        if let Some(t) = &self.token {
            md.insert("authorization", v(&format!("Bearer {t}")));
        }
        req
    }

    /// Opens `GlobalToZoneSync`: the caller sends requests, reads responses.
    pub async fn global_to_zone(
        &self,
    ) -> Result<(mpsc::Sender<DeltaDiscoveryRequest>, Streaming<DeltaDiscoveryResponse>), Status> {
        self.global_to_zone_with_headers().await.map(|(tx, rx, _)| (tx, rx))
    }

    /// [`Self::global_to_zone`], with the response headers the global sent
    /// (`grpc-encoding` among them).
    pub async fn global_to_zone_with_headers(
        &self,
    ) -> Result<(mpsc::Sender<DeltaDiscoveryRequest>, Streaming<DeltaDiscoveryResponse>, MetadataMap), Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut grpc = self.grpc();
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<DeltaDiscoveryRequest, DeltaDiscoveryResponse>::new();
        let path = http::uri::PathAndQuery::from_static(GLOBAL_TO_ZONE_PATH);
        let resp = grpc.streaming(self.request(ReceiverStream::new(rx)), path, codec).await?;
        let (headers, stream, _) = resp.into_parts();
        Ok((tx, stream, headers))
    }

    /// Opens `ZoneToGlobalSync`: roles reversed, the caller sends responses.
    pub async fn zone_to_global(
        &self,
    ) -> Result<(mpsc::Sender<DeltaDiscoveryResponse>, Streaming<DeltaDiscoveryRequest>), Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut grpc = self.grpc();
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::new();
        let path = http::uri::PathAndQuery::from_static(ZONE_TO_GLOBAL_PATH);
        let resp = grpc.streaming(self.request(ReceiverStream::new(rx)), path, codec).await?;
        Ok((tx, resp.into_inner()))
    }
}

/// Reads the next message within `timeout`.
pub async fn next<T>(stream: &mut Streaming<T>, timeout: std::time::Duration) -> T {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => panic!("the global closed the stream"),
        Ok(Err(status)) => panic!("the stream failed: {status}"),
        Err(_) => panic!("no message within {timeout:?}"),
    }
}
