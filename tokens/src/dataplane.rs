//! What a Dataplane token binds, and the check against a Dataplane: the
//! incumbent's rules (`pkg/xds/auth/universal`): `Mesh` equals the
//! Dataplane's mesh; `Name`, when set, its name; every token tag is present
//! among the Dataplane's inbound and gateway tags, and each value the
//! Dataplane gives it is one the token allows.

use std::collections::{BTreeMap, BTreeSet};

use meridian_sync_proto::pb;

use crate::{DataplaneClaims, TokenError};

/// What a Dataplane token is checked against: the Dataplane's identity
/// and its tags (every inbound's and the gateway's), key → values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneBinding {
    /// The Dataplane's mesh.
    pub mesh: String,
    /// The Dataplane's name.
    pub name: String,
    /// Every tag of its inbounds and gateway, with all the values it takes.
    pub tags: BTreeMap<String, BTreeSet<String>>,
}

impl DataplaneBinding {
    /// The binding of Dataplane `name` in `mesh` with spec `dp` (`None`:
    /// not registered, so only name and mesh can be checked).
    pub fn new(mesh: &str, name: &str, dp: Option<&pb::mesh::Dataplane>) -> DataplaneBinding {
        let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if let Some(net) = dp.and_then(|d| d.networking.as_ref()) {
            let inbound = net.inbound.iter().map(|i| &i.tags);
            for t in inbound.chain(net.gateway.iter().map(|g| &g.tags)) {
                for (k, v) in t {
                    tags.entry(k.clone()).or_default().insert(v.clone());
                }
            }
        }
        DataplaneBinding { mesh: mesh.to_string(), name: name.to_string(), tags }
    }
}

/// Checks that `claims` allow the Dataplane `dp`.
///
/// Errors (all [`TokenError::is_forbidden`]): another mesh or name
/// ([`TokenError::WrongDataplane`]), a token tag the Dataplane lacks
/// ([`TokenError::MissingTag`]) or gives a value the token does not allow
/// ([`TokenError::TagNotAllowed`]).
pub fn check_binding(claims: &DataplaneClaims, dp: &DataplaneBinding) -> Result<(), TokenError> {
    if claims.mesh != dp.mesh {
        return Err(TokenError::WrongDataplane { what: "mesh", token: claims.mesh.clone(), actual: dp.mesh.clone() });
    }
    if !claims.name.is_empty() && claims.name != dp.name {
        return Err(TokenError::WrongDataplane {
            what: "Dataplane",
            token: claims.name.clone(),
            actual: dp.name.clone(),
        });
    }
    for (tag, allowed) in &claims.tags {
        let Some(values) = dp.tags.get(tag) else {
            return Err(TokenError::MissingTag { tag: tag.clone() });
        };
        if let Some(v) = values.iter().find(|v| !allowed.contains(v)) {
            return Err(TokenError::TagNotAllowed { tag: tag.clone(), value: v.clone(), allowed: allowed.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(inbound: &[&[(&str, &str)]], gateway: Option<&[(&str, &str)]>) -> pb::mesh::Dataplane {
        use pb::mesh::dataplane::{Networking, networking};
        let tags = |t: &[(&str, &str)]| t.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        pb::mesh::Dataplane {
            networking: Some(Networking {
                inbound: inbound.iter().map(|t| networking::Inbound { tags: tags(t), ..Default::default() }).collect(),
                gateway: gateway.map(|t| networking::Gateway { tags: tags(t), ..Default::default() }),
                ..Default::default()
            }),
        }
    }

    fn claims(name: &str, tags: &[(&str, &[&str])]) -> DataplaneClaims {
        DataplaneClaims {
            name: name.into(),
            mesh: "default".into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect(),
            token_type: "dataplane".into(),
            jti: "j".into(),
            iat: 0,
            nbf: 0,
            exp: 0,
        }
    }

    #[test]
    fn name_and_mesh_bind() {
        let b = DataplaneBinding::new("default", "gw-1", None);
        assert_eq!(check_binding(&claims("gw-1", &[]), &b), Ok(()));
        assert_eq!(check_binding(&claims("", &[]), &b), Ok(()), "no name: any name");
        let e = check_binding(&claims("gw-2", &[]), &b).expect_err("other name");
        assert!(e.is_forbidden() && e.to_string().contains("\"gw-2\""), "{e}");
        let other_mesh = DataplaneBinding::new("payments", "gw-1", None);
        assert!(matches!(
            check_binding(&claims("gw-1", &[]), &other_mesh),
            Err(TokenError::WrongDataplane { what: "mesh", .. })
        ));
    }

    #[test]
    fn every_token_tag_present_and_every_value_allowed() {
        let gw = dp(&[], Some(&[("kuma.io/service", "edge")]));
        let b = DataplaneBinding::new("default", "gw-1", Some(&gw));
        assert_eq!(check_binding(&claims("", &[("kuma.io/service", &["edge", "edge-2"])]), &b), Ok(()));
        assert_eq!(
            check_binding(&claims("", &[("kuma.io/service", &["web"])]), &b),
            Err(TokenError::TagNotAllowed {
                tag: "kuma.io/service".into(),
                value: "edge".into(),
                allowed: vec!["web".into()]
            })
        );
        assert_eq!(
            check_binding(&claims("", &[("version", &["v1"])]), &b),
            Err(TokenError::MissingTag { tag: "version".into() })
        );
        // two inbounds: both values must be allowed
        let two = dp(&[&[("kuma.io/service", "a")], &[("kuma.io/service", "b")]], None);
        let b = DataplaneBinding::new("default", "x", Some(&two));
        assert!(check_binding(&claims("", &[("kuma.io/service", &["a"])]), &b).is_err());
        assert_eq!(check_binding(&claims("", &[("kuma.io/service", &["a", "b"])]), &b), Ok(()));
    }
}
