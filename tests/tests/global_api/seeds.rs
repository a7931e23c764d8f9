//! The seed examples, applied verbatim with `meridianctl apply -f`, come back
//! from `meridianctl get -o yaml` equal to what was applied; the global
//! refuses their Dataplanes (403) and changes nothing for them.

use meridian_tests::{Backend, Topology};
use serde_json::Value;

use crate::{snapshot, without_times, yaml_docs};

crate::on_both_stores!(run);

const SEEDS: &str = include_str!("../../../sync-proto/testdata/seeds.yaml");

/// The seed file's documents as text, split at `---` lines, verbatim.
fn seed_documents() -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in SEEDS.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.retain(|d| !yaml_docs(d).is_empty());
    docs
}

fn is_dataplane(doc: &str) -> bool {
    yaml_docs(doc).first().is_some_and(|v| v["type"] == "Dataplane")
}

async fn run(backend: Backend) {
    let topo = Topology::builder("global-api-seeds").global(backend).start().await;
    let g = topo.global();
    let api = g.http();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let docs = seed_documents();
    let (dataplanes, others): (Vec<String>, Vec<String>) = docs.into_iter().partition(|d| is_dataplane(d));
    assert_eq!((others.len(), dataplanes.len()), (5, 2), "the seed file changed");
    let seeds_path = dir.path().join("seeds.yaml");
    std::fs::write(&seeds_path, others.join("---\n")).unwrap_or_else(|e| panic!("{e}"));
    let seeds_path = seeds_path.display().to_string();

    // Offline, every seed (Dataplanes included) is valid.
    let all_path = dir.path().join("all.yaml");
    std::fs::write(&all_path, SEEDS).unwrap_or_else(|e| panic!("{e}"));
    let out = meridian_tests::Ctl::new().args(["validate", "-f", &all_path.display().to_string()]).run().await.ok();
    assert_eq!(
        out.lines(),
        [
            "OK Mesh default",
            "OK MeshGateway default/edge-gateway",
            "OK MeshGatewayRoute default/edge-gateway-route",
            "OK MeshGateway default/edge-gateway-tcp",
            "OK MeshGatewayRoute default/edge-gateway-route-tcp",
            "OK Dataplane default/gateway-instance-1",
            "OK Dataplane default/kong-01",
        ]
    );

    let out = g.ctl().with(["apply", "-f", &seeds_path]).run().await.ok();
    assert_eq!(
        out.lines(),
        [
            "created Mesh default",
            "created MeshGateway default/edge-gateway",
            "created MeshGateway default/edge-gateway-tcp",
            "created MeshGatewayRoute default/edge-gateway-route",
            "created MeshGatewayRoute default/edge-gateway-route-tcp",
        ]
    );

    // Each comes back as applied (parsed YAML values, times aside).
    for doc in &others {
        let applied = yaml_docs(doc).remove(0);
        let ty = applied["type"].as_str().unwrap_or_default().to_string();
        let name = applied["name"].as_str().unwrap_or_default().to_string();
        let mut args = vec!["get".to_string(), ty.clone(), name.clone(), "-o".into(), "yaml".into()];
        if let Some(mesh) = applied["mesh"].as_str() {
            args.extend(["-m".to_string(), mesh.to_string()]);
        }
        let out = g.ctl().with(args).run().await.ok();
        let got: Vec<Value> = yaml_docs(&out.stdout).into_iter().map(without_times).collect();
        assert_eq!(got, [applied], "{ty} {name} came back different:\n{}", out.stdout);
    }
    // And as lists: `get meshgateways -o yaml` is the gateways' documents.
    let out = g.ctl().with(["get", "meshgateways", "-o", "yaml"]).run().await.ok();
    let got: Vec<Value> = yaml_docs(&out.stdout).into_iter().map(without_times).collect();
    let mut expected: Vec<Value> =
        others.iter().map(|d| yaml_docs(d).remove(0)).filter(|v| v["type"] == "MeshGateway").collect();
    expected.sort_by_key(|v| v["name"].as_str().map(str::to_string));
    assert_eq!(got, expected);

    // Applying again changes nothing.
    let out = g.ctl().with(["apply", "-f", &seeds_path]).run().await.ok();
    assert!(out.lines().iter().all(|l| l.starts_with("unchanged ")), "{}", out.stdout);

    // The Dataplanes are refused: 403 with a clear message, nothing stored.
    let before = snapshot(&api).await;
    let out = g.ctl().with(["apply", "-f", "-"]).run_stdin(&dataplanes.join("---\n")).await.expect_code(1);
    for name in ["gateway-instance-1", "kong-01"] {
        let line = format!("error: Dataplane default/{name}: Dataplane resources are created in zones");
        assert!(out.stderr.contains(&line), "{line:?} missing in:\n{}", out.stderr);
    }
    let body = yaml_docs(&dataplanes[0]).remove(0);
    let refused = api.put("/meshes/default/dataplanes/gateway-instance-1", &body).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.details().contains("created in zones"), "{}", refused.text);
    assert_eq!(snapshot(&api).await, before);
    assert_eq!(api.get("/meshes/default/dataplanes").await.json["total"], 0);

    topo.cleanup().await;
}
