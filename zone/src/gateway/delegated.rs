//! Delegated gateways (an external proxy such as Kong with Envoy beside
//! it): one TCP listener per `outbound`, forwarding to the endpoints of the
//! service the outbound's tags name.

use envoy_types::pb::envoy::{
    config::listener::v3::{Filter, FilterChain, Listener, filter},
    extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy},
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use meridian_sync_proto::pb::mesh::dataplane::Networking;

use super::{Ctx, clusters, listeners::stat_name};

/// Where an outbound listens when it names no address.
const DEFAULT_OUTBOUND_ADDRESS: &str = "127.0.0.1";

pub(super) fn outbound_listeners(networking: &Networking, ctx: &mut Ctx) -> Vec<Listener> {
    let mut out = Vec::new();
    for (i, o) in networking.outbound.iter().enumerate() {
        let address = if o.address.is_empty() { DEFAULT_OUTBOUND_ADDRESS } else { o.address.as_str() };
        if address.parse::<std::net::IpAddr>().is_err() || o.port == 0 || o.port > u32::from(u16::MAX) {
            ctx.warn(format!("networking.outbound[{i}]: {address}:{} is not an IP address and port; skipped", o.port));
            continue;
        }
        if o.tags.is_empty() {
            ctx.warn(format!("networking.outbound[{i}]: no tags; skipped"));
            continue;
        }
        let name = format!("outbound:{address}:{}", o.port);
        let cluster = ctx.cluster_for(&o.tags);
        let proxy = TcpProxy {
            stat_prefix: stat_name(&name),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)),
            ..Default::default()
        };
        out.push(Listener {
            name: name.clone(),
            stat_prefix: stat_name(&name),
            address: Some(clusters::socket_address(address, o.port)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
                }],
                ..Default::default()
            }],
            enable_reuse_port: Some(BoolValue { value: false }),
            ..Default::default()
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}
