//! Propagation status: the body of `GET .../{type}/{name}/_status` at the
//! global (which version of a resource each zone holds, and whether each
//! affected Envoy ACKed or NACKed a configuration carrying it), and the
//! rules that turn per-zone and per-Dataplane facts into states.
//!
//! ```text
//!   zone:      Offline  (not connected)
//!              Rejected (the zone NACKed this version, or an affected Dataplane NACKed it)
//!              Applied  (the zone holds this version and every affected Dataplane ACKed it
//!                        or has no Envoy connected: Offline)
//!              Pending  (otherwise)
//!   resource:  Rejected if any zone is; Applied if every online zone is; else Pending
//! ```
//!
//! Shared by the global (which answers it) and `meridianctl` (`get
//! --status`, `apply --wait`). Field names are a contract (the GUI reads
//! them): fields may be added, never renamed.

use serde::{Deserialize, Serialize};

/// State of a resource, or of a resource in one zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Applied,
    Pending,
    Rejected,
    /// Zones only: the zone is not connected.
    Offline,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Applied => "Applied",
            State::Pending => "Pending",
            State::Rejected => "Rejected",
            State::Offline => "Offline",
        })
    }
}

/// Envoy's answer to the configuration carrying a resource's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataplaneState {
    #[serde(rename = "ACKed")]
    Acked,
    #[serde(rename = "NACKed")]
    Nacked,
    Pending,
    /// No Envoy of the Dataplane is connected (never was, or its newest
    /// xDS subscription is closed): nothing to wait for; it gets the
    /// current configuration when it connects.
    Offline,
}

impl std::fmt::Display for DataplaneState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataplaneState::Acked => "ACKed",
            DataplaneState::Nacked => "NACKed",
            DataplaneState::Pending => "Pending",
            DataplaneState::Offline => "Offline",
        })
    }
}

/// The whole answer for one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The resource type (`MeshGatewayRoute`).
    #[serde(rename = "type")]
    pub ty: String,
    /// Empty for global-scoped types.
    pub mesh: String,
    pub name: String,
    /// The resource's content version at the global (what KDS sends).
    pub version: String,
    pub state: State,
    pub zones: Vec<ZoneStatus>,
}

/// One zone's view of the resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatus {
    pub zone: String,
    pub online: bool,
    /// The version the zone holds (ACKed over KDS), when known.
    pub version: Option<String>,
    pub state: State,
    /// Why it is Rejected: the zone's NACK reason, or the first affected
    /// Dataplane's (`Dataplane <name>: <Envoy's reason>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Dataplanes of this zone whose configuration depends on the resource.
    pub dataplanes: Vec<DataplaneStatus>,
}

/// One affected Dataplane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneStatus {
    /// The Dataplane's name as stored at the global (`<zone>.<name>`).
    pub name: String,
    pub state: DataplaneState,
    /// The resource version of the configuration Envoy last answered for.
    pub version: Option<String>,
    /// Envoy's NACK reason, when NACKed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When Envoy answered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// What a zone reported about the resource over KDS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZoneFacts {
    pub online: bool,
    /// The version it holds.
    pub held: Option<String>,
    /// A version it refused, and why.
    pub rejected: Option<(String, String)>,
}

/// A zone's state from its facts and its affected Dataplanes, for the
/// resource at `version`; with the reason when Rejected.
pub fn zone_state(version: &str, facts: &ZoneFacts, dataplanes: &[DataplaneStatus]) -> (State, Option<String>) {
    if !facts.online {
        return (State::Offline, None);
    }
    if let Some((v, reason)) = &facts.rejected
        && v == version
    {
        return (State::Rejected, Some(reason.clone()));
    }
    if let Some(dp) = dataplanes.iter().find(|d| d.state == DataplaneState::Nacked) {
        let reason = format!("Dataplane {}: {}", dp.name, dp.reason.as_deref().unwrap_or("NACKed"));
        return (State::Rejected, Some(reason));
    }
    let holds = facts.held.as_deref() == Some(version);
    if holds && dataplanes.iter().all(|d| matches!(d.state, DataplaneState::Acked | DataplaneState::Offline)) {
        (State::Applied, None)
    } else {
        (State::Pending, None)
    }
}

/// The resource's state from its zones' states.
pub fn resource_state(zones: &[ZoneStatus]) -> State {
    if zones.iter().any(|z| z.state == State::Rejected) {
        State::Rejected
    } else if zones.iter().filter(|z| z.online).all(|z| z.state == State::Applied) {
        State::Applied
    } else {
        State::Pending
    }
}

/// A Dataplane's answer for the resource at `version`, from what its
/// insight reported (`reported`: the version of the configuration Envoy
/// last answered for, whether it ACKed it) and whether an Envoy of it is
/// connected now (`connected`). An answer for this version counts even
/// after the Envoy left; without one, a Dataplane with no Envoy connected
/// is Offline (it does not hold up Applied, as an offline zone does not).
pub fn dataplane_state(version: &str, reported: Option<(&str, bool)>, connected: bool) -> DataplaneState {
    match reported {
        Some((v, true)) if v == version => DataplaneState::Acked,
        Some((v, false)) if v == version => DataplaneState::Nacked,
        _ if !connected => DataplaneState::Offline,
        _ => DataplaneState::Pending,
    }
}

/// `POST /_diff`: what applying some resources would change in the Envoy
/// configuration of each zone's Dataplanes (only those with a change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    pub zones: Vec<ZoneDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneDiff {
    pub zone: String,
    pub dataplanes: Vec<DataplaneDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneDiff {
    /// The Dataplane's name as stored at the global (`<zone>.<name>`).
    pub name: String,
    pub mesh: String,
    pub changes: Vec<EnvoyChange>,
}

/// One Envoy resource that would change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyChange {
    /// `listener`, `route configuration`, `cluster`, `endpoints` or `secret`.
    pub kind: String,
    /// The Envoy resource's name (listener, route configuration, cluster...).
    pub name: String,
    /// `added`, `removed` or `modified`.
    pub change: String,
    /// Unified diff of the resource's text dump (`a/`: now, `b/`: after);
    /// empty for secrets (key material is never shown).
    pub diff: String,
}

/// The report as text: per zone and Dataplane, each changed resource and
/// its unified diff; `no Envoy configuration would change` when empty.
pub fn render_diff(report: &DiffReport) -> String {
    let mut out = String::new();
    for z in &report.zones {
        for d in &z.dataplanes {
            out.push_str(&format!("zone {}, Dataplane {} (mesh {}):\n", z.zone, d.name, d.mesh));
            for c in &d.changes {
                let mark = match c.change.as_str() {
                    "added" => '+',
                    "removed" => '-',
                    _ => '~',
                };
                out.push_str(&format!("{mark} {} {} ({})\n", c.kind, c.name, c.change));
                out.push_str(&c.diff);
                if !c.diff.is_empty() && !c.diff.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    }
    if out.is_empty() {
        out.push_str("no Envoy configuration would change\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(state: DataplaneState) -> DataplaneStatus {
        DataplaneStatus { name: "zone-1.gw".into(), state, version: None, reason: Some("bind".into()), time: None }
    }

    fn facts(online: bool, held: Option<&str>) -> ZoneFacts {
        ZoneFacts { online, held: held.map(str::to_string), rejected: None }
    }

    #[test]
    fn zone_states_follow_the_contract() {
        let acked = [dp(DataplaneState::Acked)];
        assert_eq!(zone_state("v2", &facts(false, Some("v2")), &acked).0, State::Offline);
        assert_eq!(zone_state("v2", &facts(true, Some("v2")), &acked).0, State::Applied);
        assert_eq!(zone_state("v2", &facts(true, Some("v2")), &[]).0, State::Applied, "no affected Dataplane");
        assert_eq!(zone_state("v2", &facts(true, Some("v1")), &acked).0, State::Pending, "older version held");
        assert_eq!(zone_state("v2", &facts(true, Some("v2")), &[dp(DataplaneState::Pending)]).0, State::Pending);
        let offline = [dp(DataplaneState::Acked), dp(DataplaneState::Offline)];
        assert_eq!(zone_state("v2", &facts(true, Some("v2")), &offline).0, State::Applied, "no Envoy to wait for");
        let (s, reason) = zone_state("v2", &facts(true, Some("v2")), &[dp(DataplaneState::Nacked)]);
        assert_eq!((s, reason.as_deref()), (State::Rejected, Some("Dataplane zone-1.gw: bind")));
        let refused = ZoneFacts { rejected: Some(("v2".into(), "bad".into())), ..facts(true, Some("v1")) };
        assert_eq!(zone_state("v2", &refused, &acked), (State::Rejected, Some("bad".into())));
        let old_refusal = ZoneFacts { rejected: Some(("v1".into(), "bad".into())), ..facts(true, Some("v2")) };
        assert_eq!(zone_state("v2", &old_refusal, &acked).0, State::Applied, "a refusal of another version");
    }

    #[test]
    fn offline_zones_do_not_block_applied_and_rejected_wins() {
        let z = |state, online| ZoneStatus {
            zone: "z".into(),
            online,
            version: None,
            state,
            reason: None,
            dataplanes: vec![],
        };
        assert_eq!(resource_state(&[z(State::Applied, true), z(State::Offline, false)]), State::Applied);
        assert_eq!(resource_state(&[z(State::Applied, true), z(State::Pending, true)]), State::Pending);
        assert_eq!(resource_state(&[z(State::Rejected, true), z(State::Applied, true)]), State::Rejected);
        assert_eq!(dataplane_state("v", Some(("v", true)), true), DataplaneState::Acked);
        assert_eq!(dataplane_state("v", Some(("u", false)), true), DataplaneState::Pending);
        assert_eq!(dataplane_state("v", None, true), DataplaneState::Pending);
        assert_eq!(dataplane_state("v", None, false), DataplaneState::Offline, "no Envoy connected");
        assert_eq!(dataplane_state("v", Some(("u", true)), false), DataplaneState::Offline);
        assert_eq!(dataplane_state("v", Some(("v", true)), false), DataplaneState::Acked, "answered, then left");
    }

    #[test]
    fn json_names_are_the_contract() {
        let s = ResourceStatus {
            ty: "MeshGatewayRoute".into(),
            mesh: "default".into(),
            name: "r".into(),
            version: "v".into(),
            state: State::Pending,
            zones: vec![ZoneStatus {
                zone: "zone-1".into(),
                online: true,
                version: None,
                state: State::Pending,
                reason: None,
                dataplanes: vec![dp(DataplaneState::Nacked)],
            }],
        };
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["type"], "MeshGatewayRoute");
        assert_eq!(v["zones"][0]["version"], serde_json::Value::Null);
        assert_eq!(v["zones"][0]["dataplanes"][0]["state"], "NACKed");
        assert_eq!(serde_json::from_value::<ResourceStatus>(v).expect("back"), s);
    }
}
