//! Point 6: `--kds-max-message-bytes` is checked at start, its derived
//! resource limit never reaches zero, and two ends with different caps
//! split to the smaller one; an oversized message names its type and
//! resources.

use std::process::Command;

use base64::{Engine, engine::general_purpose::STANDARD};
use meridian_tests::{
    Global, GlobalSpec, TestDir, Zone,
    json_api::CONVERGE,
    process::binary,
    resources::{gateway, mesh},
};
use serde_json::json;

/// Secrets synced to the small-cap zone, each about 4 KiB: together about
/// twice the zone's 64 KiB cap, so the global must split them.
const SECRETS: usize = 32;
const SECRET_BYTES: usize = 3 * 1024;

fn secret(name: &str, bytes: usize) -> serde_json::Value {
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + name.len()) as u8).collect();
    json!({"type": "Secret", "mesh": "default", "name": name, "data": STANDARD.encode(data)})
}

/// A value under 64 KiB is refused at start by both binaries, with the
/// flag and the reason, and a non-zero exit.
#[test]
fn too_small_a_cap_is_refused_at_start() {
    let dir = TestDir::new("cap-refused");
    for (bin, extra) in [("meridian-global", vec![]), ("meridian-zone", vec!["--zone", "zone-1"])] {
        let out = Command::new(binary(bin))
            .arg("run")
            .args(extra)
            .args(["--data-dir", &dir.part_dir(bin).display().to_string(), "--kds-max-message-bytes", "1000"])
            .env_remove("MERIDIAN_KDS_MAX_MESSAGE_BYTES")
            .output()
            .unwrap_or_else(|e| panic!("run {bin}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} started with a 1000-byte cap");
        assert!(
            stderr.contains("--kds-max-message-bytes") && stderr.contains("at least 65536"),
            "{bin} says which flag and why: {stderr}"
        );
    }
}

/// A global at the smallest cap still takes resources (the limit used to
/// be 0 bytes there), and a zone whose cap is below the global's receives
/// a set of resources that only fits split; one resource over the zone's
/// cap is reported by type and name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_split_to_the_smaller_end() {
    let dir = TestDir::new("cap-split");
    let small =
        GlobalSpec { extra_args: vec!["--kds-max-message-bytes".into(), "65536".into()], ..GlobalSpec::default() };
    let gs = Global::start(&dir, "small-global", small).await;
    gs.api().apply(&mesh("default")).await;
    gs.api().apply(&gateway("gw-1", 8080)).await;
    gs.api().apply(&secret("fits", 16 * 1024)).await;

    let g = Global::start(&dir, "g", GlobalSpec::default()).await;
    g.api().apply(&mesh("default")).await;
    for i in 0..SECRETS {
        g.api().apply(&secret(&format!("s-{i}"), SECRET_BYTES)).await;
    }
    let z = Zone::connect_with(&dir, &g, "zone-1", &["--kds-max-message-bytes", "65536"]).await;
    for i in 0..SECRETS {
        z.api().wait_for(&format!("/meshes/default/secrets/s-{i}"), "synced in split messages", |_| true).await;
    }
    g.api().wait_online("zone-1", true, CONVERGE).await;

    // 70 KiB fits the global's budget but not the zone's 64 KiB message.
    g.api().apply(&secret("too-big", 70 * 1024)).await;
    let line = g.wait_log(&["KDS message cap", "too-big"], CONVERGE).await;
    assert!(line.contains("Secret"), "the error names the type: {line}");
    z.wait_log(&["KDS message cap", "too-big"], CONVERGE).await;
}
