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

/// The `kuma.io/origin` label of a resource, if any.
pub fn origin(r: &Resource) -> Option<&str> {
    r.meta.labels.get(LABEL_ORIGIN).map(String::as_str)
}
