//! Hardening (issue 10), the listener and stream points, against the real
//! binaries: listeners that cannot be held open (1), revocation on an open
//! stream (4), message caps (6), and a zone failing over between globals
//! (10). The other points live in `tests/tests/hardening.rs`.
//!
//! Run: `cargo build --workspace --bins && bash tests/pg-env.sh cargo test -p meridian-tests --test hardening_listeners`
//!
//! | test                                                   | proves |
//! |--------------------------------------------------------|--------|
//! | failover::zone_fails_over_to_the_other_global          | 10 (two globals on one PostgreSQL, SIGKILL) |
//! | listeners::idle_connections_do_not_starve_the_api_or_new_zones | 1 (1024 open files; slow headers; 413) |
//! | message_cap::too_small_a_cap_is_refused_at_start       | 6 (start-up check) |
//! | message_cap::caps_split_to_the_smaller_end              | 6 (64 KiB global takes resources; split to the zone's cap; oversize named and withheld, the stream lives) |
//! | message_cap::a_zone_resource_too_large_to_relay_is_refused | 5 (two zones, a near-cap ZoneIngress: NACKed, not relayed; one that fits is) |
//! | revocation::revoked_token_cuts_the_zone_to_global_stream | 4 (raw client, deterministic) |
//! | revocation::revoked_real_zone_pushes_nothing_more       | 4 (real zone) |

mod hardening_listeners {
    pub mod failover;
    pub mod listeners;
    pub mod message_cap;
    pub mod revocation;
}

/// A resource's spec, encoded as it travels in the KDS envelope.
fn spec_bytes(resource: &serde_json::Value) -> Vec<u8> {
    meridian_sync_proto::universal::from_value(resource.clone()).expect("resource parses").spec.encode()
}
