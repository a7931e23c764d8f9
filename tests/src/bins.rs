//! Finding the workspace's binaries (they belong to other packages, so
//! `CARGO_BIN_EXE_*` does not name them).

use std::path::PathBuf;

/// The path of a workspace binary, e.g. `meridian-global`.
///
/// Looks beside the running test executable first (`target/<profile>/deps/..`,
/// which follows `CARGO_TARGET_DIR` and the profile), then in
/// `<workspace>/target/debug`. Panics with what to do when it is missing.
pub fn path(name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent())
    {
        candidates.push(profile_dir.join(name));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if let Some(workspace) = manifest.parent() {
        candidates.push(workspace.join("target").join("debug").join(name));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    panic!(
        "binary {name:?} not found (looked at: {}). Build the workspace binaries first: \
         `cargo build --workspace --bins`, then `bash tests/pg-env.sh cargo test -p meridian-tests`",
        looked.join(", ")
    );
}
