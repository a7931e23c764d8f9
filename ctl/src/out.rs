//! Writing to stdout and stderr without panicking when a pipe closes
//! (`meridianctl get meshes | head -1`).

use std::io::Write;

use serde_json::Value;

/// Writes `text` as is to stdout.
pub fn text(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Writes one line to stdout.
pub fn line(line: &str) {
    text(&format!("{line}\n"));
}

/// Writes pretty JSON and a newline to stdout.
pub fn json(v: &Value) {
    line(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// Writes one line to stderr.
pub fn err(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}
