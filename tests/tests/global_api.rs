//! The global's REST API and `meridianctl`, over real HTTP against the real
//! `meridian-global` binary, each scenario once on SQLite and once on
//! PostgreSQL (`<scenario>::sqlite`, `<scenario>::postgres`).
//!
//! - [`lifecycle`]: create, update, stale update (409), invalid (400 with the
//!   field path), dry run, delete, paging, overviews, restart after SIGKILL.
//! - [`seeds`]: the seed examples applied with `meridianctl apply` come back
//!   from `get -o yaml` as applied; their Dataplanes are refused (403).
//! - [`refusals`]: malformed, unknown, mismatched, oversized and
//!   unauthenticated requests get the right status and change nothing.
//! - [`cli`]: exit codes, contexts, offline validation.
//! - [`conformance`]: the incumbent's path segments, `_overview` filters,
//!   the `default` Mesh at start, `GET /config`, display names in meridianctl.
//! - [`tls`]: the API over HTTPS and `meridianctl --ca-cert`.
//!
//! Run: `cargo build --workspace --bins && bash tests/pg-env.sh cargo test -p meridian-tests`.

#[path = "global_api/cli.rs"]
mod cli;
#[path = "global_api/conformance.rs"]
mod conformance;
#[path = "global_api/lifecycle.rs"]
mod lifecycle;
#[path = "global_api/refusals.rs"]
mod refusals;
#[path = "global_api/seeds.rs"]
mod seeds;
#[path = "global_api/tls.rs"]
mod tls;

use meridian_tests::Api;
use serde_json::{Value, json};

/// Two tests running one scenario: on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($scenario:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sqlite() {
            $scenario(meridian_tests::Backend::Sqlite).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn postgres() {
            $scenario(meridian_tests::Backend::Postgres).await
        }
    };
}

/// A valid MeshGateway in `mesh` with one HTTP listener on `port`.
pub fn gateway(mesh: &str, name: &str, port: u32) -> Value {
    json!({
        "type": "MeshGateway",
        "mesh": mesh,
        "name": name,
        "selectors": [{"match": {"kuma.io/service": name}}],
        "conf": {"listeners": [{"port": port, "protocol": "HTTP", "hostname": "foo.example.com"}]}
    })
}

/// The same as YAML, as a user writes it.
pub fn gateway_yaml(mesh: &str, name: &str, port: u32) -> String {
    format!(
        "type: MeshGateway\nmesh: {mesh}\nname: {name}\nselectors:\n- match:\n    kuma.io/service: {name}\nconf:\n  listeners:\n  - port: {port}\n    protocol: HTTP\n    hostname: foo.example.com\n"
    )
}

/// Everything a user can see through the lists, in one value: a write that
/// changed anything (a resource, its labels, its modification time) changes it.
pub async fn snapshot(api: &Api) -> Value {
    let mut out = serde_json::Map::new();
    for plural in ["meshes", "meshgateways", "meshgatewayroutes", "secrets", "dataplanes", "zones", "global-secrets"] {
        let r = api.get(&format!("/{plural}?size=1000")).await;
        assert_eq!(r.status, 200, "GET /{plural}: {}", r.text);
        out.insert(plural.to_string(), r.json);
    }
    Value::Object(out)
}

/// A universal value without the times the store sets.
pub fn without_times(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("creationTime");
        o.remove("modificationTime");
    }
    v
}

/// Every document of a YAML stream, as JSON values.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    meridian_sync_proto::universal::parse_documents(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}
