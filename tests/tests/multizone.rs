//! Multi-zone sync (issue 4), proven against the real binaries: a global
//! and zones as separate processes on loopback sockets, SQLite and (where it
//! matters for the global) PostgreSQL. Every wait is a bounded poll; no test
//! asserts how long something took. Topologies come from
//! [`meridian_tests::Topology`] (or its parts, for tests that build step by step).
//!
//! Run: `cargo build --workspace --bins && bash tests/pg-env.sh cargo test -p meridian-tests --test multizone`
//! (the PostgreSQL tests fail without tests/pg-env.sh).
//!
//! | test                                                  | proves |
//! |-------------------------------------------------------|--------|
//! | sync::global_resources_follow_to_both_zones           | 1 |
//! | sync::zone_dataplanes_reach_the_global_under_their_zone | 2 |
//! | resume::global_restart_resends_only_differences_*     | 3 (global; SQLite and PostgreSQL) |
//! | resume::zone_restart_receives_only_changes            | 3 (zone) |
//! | resume::paused_zone_goes_offline_and_converges_on_resume | 4 |
//! | resume::paused_global_is_noticed_and_both_sides_catch_up | §4: hung streams are noticed |
//! | nack::invalid_dataplane_from_a_zone_is_nacked_alone   | 5a (and 8 upwards) |
//! | nack::invalid_gateway_in_the_global_store_is_nacked_alone | 5b (PostgreSQL) |
//! | auth::zones_are_authenticated                         | 6 |
//! | sync::two_globals_on_one_postgres_reach_every_zone    | 7 |
//! | nack::reference_client_subscribes_to_mesh_gateways    | 8 |
//! | sync::zone_deletion_is_refused_online_and_cascades_offline | zone deletion |
//! | sync::zone_ingress_is_rebroadcast_to_other_zones      | §4: ZoneIngress relay; plaintext KDS |
//! | defaults::zones_receive_the_globals_default_mesh_and_never_create_one | issue 9 item 12 |
//! | kuma_wire::gzip_and_zstd_compressed_zones_sync_both_ways | issue 9 item 5: gzip/zstd on the KDS wire |
//! | kuma_wire::a_message_inflating_past_the_cap_ends_only_its_stream | issue 9 item 5: decompression bounded by the message cap |
//! | kuma_wire::hashed_names_are_stored_as_sent_with_the_zones_display_name | issue 9 item 7: Kuma zones' names and display names |
//! | kuma_wire::health_check_answers_the_interval_and_the_rest_is_unimplemented | issue 9 item 8: GlobalKDSService.HealthCheck |
//! | subscriptions::a_killed_globals_subscriptions_are_closed_by_its_successor | issue 9 item 9: dead instances' subscriptions closed |
//! | unserved::*                                           | issue 8: unserved types answered empty, stream stays up |
//! | status::heartbeats_and_acks_add_no_change_log_rows    | issue 8 §4: status is not configuration |
//! | status::followers_behind_compaction_resync            | issue 8 §4: compaction; followers resync |
//! | status::an_idle_zone_costs_no_insight_write_stays_online_and_is_cut_off_on_revocation | issue 13: idle zones cost no store work; liveness by instance heartbeat; revocation from the change feed |

mod multizone {
    pub mod auth;
    pub mod defaults;
    pub mod kuma_wire;
    pub mod nack;
    pub mod resume;
    pub mod status;
    pub mod subscriptions;
    pub mod sync;
    pub mod unserved;
}

use meridian_tests::{Global, GlobalSpec, TestDir, Topology, Zone, resources};

/// A global run as `spec` says, holding mesh `default`, and `zones`
/// connected to it, each holding the mesh: the usual topology of these tests.
async fn global_and_zones(test: &str, spec: GlobalSpec, zones: &[&str]) -> Topology {
    let builder = Topology::builder(test).global_spec(spec).mesh("default");
    zones.iter().fold(builder, |b, z| b.zone(z)).start().await
}

/// A global with mesh `default` (for tests that build step by step).
async fn global_with_mesh(dir: &TestDir, label: &str, spec: GlobalSpec) -> Global {
    let g = Global::start(dir, label, spec).await;
    g.api().apply(&resources::mesh("default")).await;
    g
}

/// A zone connected to `global`, holding mesh `default` from it.
async fn synced_zone(dir: &TestDir, global: &Global, name: &str) -> Zone {
    let z = Zone::connect(dir, global, name).await;
    z.api().wait_for("/meshes/default", "synced from the global", |_| true).await;
    z
}

/// The protobuf bytes of a universal-format resource's spec.
fn spec_bytes(resource: &serde_json::Value) -> Vec<u8> {
    meridian_sync_proto::universal::from_value(resource.clone()).expect("resource parses").spec.encode()
}
