//! `Dataplane` (a builtin gateway, a delegated gateway or a service proxy) and
//! `ZoneIngress`: addresses, ports and tags of proxies.

use std::net::{IpAddr, Ipv4Addr};

use super::selectors::{self, SERVICE_TAG, TagRules, Values};
use super::{FieldPath, Report, address, port};
use crate::pb::mesh::dataplane::Networking;
use crate::pb::mesh::dataplane::networking::gateway::GatewayType;
use crate::pb::mesh::dataplane::networking::{Gateway, Inbound, Outbound};
use crate::pb::mesh::{Dataplane, ZoneIngress};

/// Where the admin listener of a proxy binds.
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub(super) fn check(r: &mut Report, spec: &Dataplane) {
    let at = FieldPath::new("networking");
    let Some(net) = &spec.networking else {
        r.add(&at, "must be defined");
        return;
    };

    if let Some(admin) = &net.admin {
        let admin_at = at.field("admin").field("port");
        if uses_inbound_port(net, admin.port) {
            r.add(&admin_at, "must differ from inbound");
        }
        if uses_outbound_port(net, admin.port) {
            r.add(&admin_at, "must differ from outbound");
        }
    }

    match net.gateway.as_ref().map(|g| (g, GatewayType::try_from(g.r#type))) {
        Some((gateway, Ok(GatewayType::Delegated))) => {
            if !net.inbound.is_empty() {
                r.add(&at.field("inbound"), "inbound cannot be defined for delegated gateways");
            }
            gateway_tags(r, &at.field("gateway"), gateway);
        }
        Some((gateway, Ok(GatewayType::Builtin))) => {
            if !net.inbound.is_empty() {
                r.add(&at.field("inbound"), "inbound cannot be defined for builtin gateways");
            }
            if !net.outbound.is_empty() {
                r.add(&at.field("outbound"), "outbound cannot be defined for builtin gateways");
            }
            gateway_tags(r, &at.field("gateway"), gateway);
        }
        Some((gateway, Err(_))) => {
            r.add(&at.field("gateway").field("type"), "must be one of DELEGATED, BUILTIN");
            gateway_tags(r, &at.field("gateway"), gateway);
        }
        None => {
            // Ours (the incumbent's before 2.14): a service proxy is only found
            // through the services of its inbounds.
            if net.inbound.is_empty() {
                r.add(&at, "has to contain at least one inbound interface or gateway");
            }
        }
    }

    networking(r, &at, net);
}

fn gateway_tags(r: &mut Report, at: &FieldPath, gateway: &Gateway) {
    let rules = TagRules {
        require_service: true,
        values: Values::Tag,
        protocol: selectors::Protocol::TcpOnly,
        ..TagRules::default()
    };
    selectors::tags(r, &at.field("tags"), &gateway.tags, rules);
}

fn networking(r: &mut Report, at: &FieldPath, net: &Networking) {
    address(r, &at.field("address"), &net.address);
    for (i, inbound) in net.inbound.iter().enumerate() {
        self::inbound(r, &at.field("inbound").index(i), inbound, &net.address);
    }
    for (i, outbound) in net.outbound.iter().enumerate() {
        self::outbound(r, &at.field("outbound").index(i), outbound);
    }
}

fn inbound(r: &mut Report, at: &FieldPath, inbound: &Inbound, dataplane_address: &str) {
    port(r, &at.field("port"), inbound.port);
    if inbound.service_port != 0 {
        port(r, &at.field("servicePort"), inbound.service_port);
    }
    // The application must not listen where the proxy does.
    let same_port = inbound.service_port == 0 || inbound.service_port == inbound.port;
    let service_address_at = at.field("serviceAddress");
    if !inbound.service_address.is_empty() {
        if !super::is_ip(&inbound.service_address) {
            r.add(&service_address_at, "serviceAddress has to be valid IP address");
        }
        if inbound.service_address == dataplane_address && same_port {
            r.add(&service_address_at, "serviceAddress and servicePort has to differ from address and port");
        }
    }
    if !inbound.address.is_empty() {
        if !super::is_ip(&inbound.address) {
            r.add(&at.field("address"), "address has to be valid IP address");
        }
        if inbound.address == inbound.service_address && same_port {
            r.add(&service_address_at, "serviceAddress and servicePort has to differ from address and port");
        }
    }
    let rules = TagRules { values: Values::Tag, protocol: selectors::Protocol::Known, ..TagRules::default() };
    let tags_at = at.field("tags");
    selectors::tags(r, &tags_at, &inbound.tags, rules);
    if !inbound.tags.contains_key(SERVICE_TAG) {
        r.add(&tags_at.key(SERVICE_TAG), "tag has to exist");
    }
}

fn outbound(r: &mut Report, at: &FieldPath, outbound: &Outbound) {
    port(r, &at.field("port"), outbound.port);
    if !outbound.address.is_empty() && !super::is_ip(&outbound.address) {
        r.add(&at.field("address"), "address has to be valid IP address");
    }
    let rules = TagRules { require_service: true, values: Values::Tag, ..TagRules::default() };
    selectors::tags(r, &at.field("tags"), &outbound.tags, rules);
}

/// Whether a listener on `port` of the loopback address would collide with
/// one of the inbounds: the proxy's side (inbound address, else the
/// Dataplane's) or the application's (service address, else loopback).
fn uses_inbound_port(net: &Networking, port: u32) -> bool {
    net.inbound.iter().any(|inbound| {
        let proxy_address = if inbound.address.is_empty() { &net.address } else { &inbound.address };
        let service_address = if inbound.service_address.is_empty() { "127.0.0.1" } else { &inbound.service_address };
        let service_port = if inbound.service_port == 0 { inbound.port } else { inbound.service_port };
        (port == inbound.port && overlaps_loopback(proxy_address))
            || (port == service_port && overlaps_loopback(service_address))
    })
}

/// Whether a listener on `port` of the loopback address would collide with an
/// outbound (which listens on its address, else loopback).
fn uses_outbound_port(net: &Networking, port: u32) -> bool {
    net.outbound.iter().any(|outbound| {
        let address = if outbound.address.is_empty() { "127.0.0.1" } else { &outbound.address };
        port == outbound.port && overlaps_loopback(address)
    })
}

/// Loopback and `address` overlap when `address` is loopback or a wildcard.
fn overlaps_loopback(address: &str) -> bool {
    address.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified() || ip == LOOPBACK)
}

pub(super) fn check_zone_ingress(r: &mut Report, spec: &ZoneIngress) {
    let at = FieldPath::new("networking");
    let net = spec.networking.clone().unwrap_or_default();

    if let Some(admin) = &net.admin {
        let collides = (admin.port == net.port && overlaps_loopback(&net.address))
            || (admin.port == net.advertised_port && overlaps_loopback(&net.advertised_address));
        if collides {
            r.add(&at.field("admin").field("port"), "must differ from port");
        }
    }
    if net.advertised_address.is_empty() && net.advertised_port != 0 {
        r.add(&at.field("advertisedAddress"), "has to be defined with advertisedPort");
    }
    if net.advertised_port == 0 && !net.advertised_address.is_empty() {
        r.add(&at.field("advertisedPort"), "has to be defined with advertisedAddress");
    }
    if !net.address.is_empty() {
        address(r, &at.field("address"), &net.address);
    }
    if !net.advertised_address.is_empty() {
        address(r, &at.field("advertisedAddress"), &net.advertised_address);
    }
    port(r, &at.field("port"), net.port);
    if net.advertised_port != 0 {
        port(r, &at.field("advertisedPort"), net.advertised_port);
    }

    let rules = TagRules { require_service: true, values: Values::Tag, ..TagRules::default() };
    for (i, service) in spec.available_services.iter().enumerate() {
        selectors::tags(r, &FieldPath::new("availableServices").index(i).field("tags"), &service.tags, rules);
    }
}
