//! Hardening (issue 10), probed as an attacker or a bad day would: each
//! test drives the real binaries over real sockets.
//!
//! Run: `cargo build --workspace --bins && bash tests/pg-env.sh cargo test -p meridian-tests --test hardening`
//! (the PostgreSQL test starts a second, throwaway cluster of its own).
//!
//! | test                                                        | point |
//! |-------------------------------------------------------------|-------|
//! | rebinding::foreign_host_from_loopback_is_not_admin          | 2: DNS rebinding; wrong token from loopback |
//! | rebinding::api_host_names_are_trusted_from_loopback         | 2: `--api-host` |
//! | labels::system_labels_are_refused_in_user_writes            | 3: reserved labels (REST and meridianctl) |
//! | labels::synced_resources_keep_their_system_labels           | 3: the KDS path still sets them |
//! | envoy_input::regexes_envoy_refuses_are_refused_at_apply     | 7: RE2 program size, control characters |
//! | nack::a_rejected_listener_does_not_freeze_the_rest          | 8: after a NACK the next change reaches Envoy; the rejected piece in DataplaneInsight |
//! | store_down::stopped_postgres_fails_fast_and_recovers        | 9: PostgreSQL stopped under a running global |
//! | adversary::cross_site_posts_get_no_loopback_trust           | a page of another site POSTs through a browser on the host (CSRF) |
//! | adversary::invented_methods_add_no_metric_series            | HTTP methods as metric labels |
//! | adversary::a_root_ca_lifetime_past_year_9999_keeps_the_global_up | `caCert.expiration: 100000y` |
//! | adversary::a_zone_cannot_send_an_ingress_of_another_zone    | a zone's ZoneIngress whose `zone` names another zone is NACKed |
//! | adversary::a_gateway_does_not_relay_loopback_trust          | a Dataplane at 127.0.0.1:<API port> + `Host: localhost` through the gateway was admin |
//! | group_commit::acknowledged_writes_survive_a_sigkill_mid_burst | issue 13: SQLite group commit answers every PUT, loses no acknowledged one |

mod hardening {
    pub mod adversary;
    pub mod envoy_input;
    pub mod group_commit;
    pub mod labels;
    pub mod nack;
    pub mod rebinding;
    pub mod store_down;
}
