//! Origin rules: where a resource was authored (`kuma.io/origin`), which zone
//! owns a zone-origin resource, and the name a user gave it. The label names
//! and values are the incumbent's (Kuma's `mesh_proto` metadata labels).

use meridian_sync_proto::Resource;

/// `global` or `zone`: where a resource was authored.
pub const LABEL_ORIGIN: &str = "kuma.io/origin";
/// Values of [`LABEL_ORIGIN`].
pub const ORIGIN_GLOBAL: &str = "global";
pub const ORIGIN_ZONE: &str = "zone";
/// The zone that owns a zone-origin resource.
pub const LABEL_ZONE: &str = "kuma.io/zone";
/// The name the user gave, when the stored name differs.
pub const LABEL_DISPLAY_NAME: &str = "kuma.io/display-name";

/// Labels only the control plane writes: [`LABEL_ORIGIN`], [`LABEL_ZONE`]
/// and [`LABEL_DISPLAY_NAME`] are set by the KDS apply path
/// ([`crate::received`]) and by a zone on what it sends up. A user write
/// carrying one of them is refused ([`crate::Manager::apply`]): a hand-written
/// `kuma.io/origin: zone` at the global would never sync and could not be
/// deleted. (Kuma keeps the same set system-owned: `mesh_proto` metadata
/// labels.)
pub const RESERVED_LABELS: [&str; 3] = [LABEL_ORIGIN, LABEL_ZONE, LABEL_DISPLAY_NAME];

/// Whether `key` is one of [`RESERVED_LABELS`].
pub fn is_reserved_label(key: &str) -> bool {
    RESERVED_LABELS.contains(&key)
}

/// The `kuma.io/origin` label of a resource, if any.
pub fn origin(r: &Resource) -> Option<&str> {
    r.meta.labels.get(LABEL_ORIGIN).map(String::as_str)
}

/// Whether a resource with `labels` was authored in zone `zone`: not
/// received from the global (`kuma.io/origin: global`), and not another
/// zone's resource relayed by the global (`kuma.io/zone` names another).
pub fn is_local_to(labels: &std::collections::BTreeMap<String, String>, zone: &str) -> bool {
    labels.get(LABEL_ORIGIN).map(String::as_str) != Some(ORIGIN_GLOBAL)
        && labels.get(LABEL_ZONE).is_none_or(|z| z == zone)
}

/// Whether zone `zone` may send `r` up as its own: a ZoneIngress whose
/// `zone` names another zone is refused (the other zones take an ingress's
/// `zone` as the locality of the services it announces, so one zone could
/// otherwise pass its ingress off as another's). An empty `zone` is the
/// sender's. Returns the NACK reason.
pub fn check_sent_by(r: &Resource, zone: &str) -> Result<(), String> {
    match &r.spec {
        meridian_sync_proto::Spec::ZoneIngress(zi) if !zi.zone.is_empty() && zi.zone != zone => {
            Err(format!("zone: is {:?}, but the ZoneIngress comes from zone {zone:?}", zi.zone))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use meridian_sync_proto::{Resource, Spec, pb::mesh::ZoneIngress};

    use super::check_sent_by;

    #[test]
    fn a_zone_cannot_send_another_zones_ingress() {
        let ingress = |zone: &str| {
            Resource::new("", "ingress-1", Spec::ZoneIngress(ZoneIngress { zone: zone.into(), ..Default::default() }))
        };
        assert_eq!(
            check_sent_by(&ingress("zone-2"), "zone-1"),
            Err("zone: is \"zone-2\", but the ZoneIngress comes from zone \"zone-1\"".to_string())
        );
        assert_eq!(check_sent_by(&ingress("zone-1"), "zone-1"), Ok(()));
        assert_eq!(check_sent_by(&ingress(""), "zone-1"), Ok(()));
    }
}
