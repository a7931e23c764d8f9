//! Propagation status from the global: `get TYPE NAME --status` and
//! `apply --wait` (body and states: [`meridian_sync_proto::propagation`]).

use std::time::{Duration, Instant};

use meridian_sync_proto::{
    ResourceType, kds,
    propagation::{DataplaneState, ResourceStatus, State},
};
use serde_json::Value;

use crate::{
    cli::{GetArgs, Output},
    client::Client,
    documents::{id, segments},
    error::{CtlError, EXIT_INVALID, EXIT_OK, EXIT_TIMEOUT},
    get::yaml_stream,
    out, table,
};

/// How often `apply --wait` asks again.
const POLL: Duration = Duration::from_millis(500);

/// `GET .../{type}/{name}/_status`.
///
/// Errors: the server's refusal (404 when the resource does not exist; a
/// zone's API has no `_status`), or no answer.
pub async fn fetch(client: &Client, ty: ResourceType, mesh: &str, name: &str) -> Result<ResourceStatus, CtlError> {
    let mut segs = segments(ty, mesh, name);
    segs.push("_status".into());
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let reply = client.get(&segs).await?;
    serde_json::from_value(reply.body)
        .map_err(|e| CtlError::input(format!("unexpected _status body from the server (is it the global?): {e}")))
}

/// `get TYPE NAME --status`: fetches and prints the status.
pub async fn get(client: &Client, args: &GetArgs) -> Result<u8, CtlError> {
    let ty = crate::get::resource_type(&args.resource_type)?;
    let name = args.name.as_deref().ok_or_else(|| CtlError::input("--status needs a resource name"))?;
    print(&fetch(client, ty, &args.mesh, name).await?, args.output);
    Ok(EXIT_OK)
}

/// Prints one status: a table per zone and Dataplane, or the body as JSON/YAML.
pub fn print(status: &ResourceStatus, output: Output) {
    let v = serde_json::to_value(status).unwrap_or(Value::Null);
    match output {
        Output::Table => out::text(&table_of(status)),
        Output::Json => out::json(&v),
        Output::Yaml => out::text(&yaml_stream(&[v])),
    }
}

/// `MeshGatewayRoute default/r: Applied (version abc...)` then one row per
/// zone and per affected Dataplane.
pub fn table_of(s: &ResourceStatus) -> String {
    let ty = ResourceType::from_name(&s.ty).unwrap_or(ResourceType::Mesh);
    let mut rows = Vec::new();
    for z in &s.zones {
        rows.push(vec![
            z.zone.clone(),
            String::new(),
            z.state.to_string(),
            short(z.version.as_deref()),
            z.reason.clone().unwrap_or_default(),
        ]);
        for d in &z.dataplanes {
            rows.push(vec![
                String::new(),
                d.name.clone(),
                d.state.to_string(),
                short(d.version.as_deref()),
                d.reason.clone().unwrap_or_default(),
            ]);
        }
    }
    format!(
        "{} {}: {} (version {})\n{}",
        s.ty,
        id(ty, &s.mesh, &s.name),
        s.state,
        short(Some(&s.version)),
        table::render(&["ZONE", "DATAPLANE", "STATE", "VERSION", "REASON"], &rows)
    )
}

/// The first 12 characters of a version (content hashes), `-` for none.
fn short(v: Option<&str>) -> String {
    match v {
        Some(v) => v.chars().take(12).collect(),
        None => "-".into(),
    }
}

/// One applied resource to wait for.
pub struct Applied {
    pub ty: ResourceType,
    pub mesh: String,
    pub name: String,
}

/// `apply --wait`: asks for the status of each resource until every one
/// is Applied in every zone (and no zone is offline) → 0; as soon as one
/// is Rejected → 1, naming the zones and Dataplanes that NACKed and why;
/// when `timeout` passes first → 3, naming what did not confirm (offline
/// zones included). Types the global does not send to zones are skipped.
pub async fn wait(client: &Client, applied: &[Applied], timeout: Duration) -> Result<u8, CtlError> {
    let start = Instant::now();
    let waited: Vec<&Applied> = applied.iter().filter(|a| kds::GLOBAL_TO_ZONE.contains(&a.ty)).collect();
    let mut last: Vec<ResourceStatus> = Vec::new();
    loop {
        last.clear();
        for a in &waited {
            last.push(fetch(client, a.ty, &a.mesh, &a.name).await?);
        }
        let rejected: Vec<&ResourceStatus> = last.iter().filter(|s| s.state == State::Rejected).collect();
        if !rejected.is_empty() {
            for s in rejected {
                report(s, "rejected");
            }
            return Ok(EXIT_INVALID);
        }
        let done = last.iter().all(|s| s.state == State::Applied && s.zones.iter().all(|z| z.online));
        if done {
            for s in &last {
                let zones = s.zones.len();
                let dps: usize = s.zones.iter().map(|z| z.dataplanes.len()).sum();
                out::line(&format!(
                    "applied {} {} in {zones} zone(s), ACKed by {dps} Dataplane(s)",
                    s.ty,
                    id(ResourceType::from_name(&s.ty).unwrap_or(ResourceType::Mesh), &s.mesh, &s.name)
                ));
            }
            return Ok(EXIT_OK);
        }
        if start.elapsed() >= timeout {
            for s in last.iter().filter(|s| !(s.state == State::Applied && s.zones.iter().all(|z| z.online))) {
                report(s, &format!("not confirmed within {}s", timeout.as_secs()));
            }
            return Ok(EXIT_TIMEOUT);
        }
        tokio::time::sleep(POLL.min(timeout.saturating_sub(start.elapsed()))).await;
    }
}

/// Writes to stderr which zones and Dataplanes are not Applied, and why.
fn report(s: &ResourceStatus, what: &str) {
    let ty = ResourceType::from_name(&s.ty).unwrap_or(ResourceType::Mesh);
    out::err(&format!("error: {} {}: {what}", s.ty, id(ty, &s.mesh, &s.name)));
    for z in s.zones.iter().filter(|z| z.state != State::Applied) {
        let why = match z.state {
            State::Offline => "offline (not connected to the global; it gets the change when it reconnects)".into(),
            State::Rejected => format!("rejected: {}", z.reason.as_deref().unwrap_or("")),
            _ if z.version.as_deref() != Some(s.version.as_str()) => "pending: the zone has not ACKed it yet".into(),
            _ => "pending: not every affected Dataplane ACKed it yet".into(),
        };
        out::err(&format!("  zone {}: {why}", z.zone));
        for d in z.dataplanes.iter().filter(|d| d.state != DataplaneState::Acked) {
            let why = match d.state {
                DataplaneState::Nacked => format!("NACKed: {}", d.reason.as_deref().unwrap_or("")),
                DataplaneState::Offline => "no Envoy connected (it gets the change when one connects)".into(),
                _ => "no answer from its Envoy for this version yet".into(),
            };
            out::err(&format!("    Dataplane {}: {why}", d.name));
        }
    }
}
