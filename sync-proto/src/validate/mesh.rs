//! `Mesh`: its mTLS certificate authority backends.

use std::collections::BTreeSet;

use super::{FieldPath, Report, quote};
use crate::pb::mesh::Mesh;

/// How many CA backends a mesh may declare (the incumbent's limit).
const MAX_MTLS_BACKENDS: usize = 1;

pub(super) fn check(r: &mut Report, spec: &Mesh) {
    let Some(mtls) = &spec.mtls else { return };
    let at = FieldPath::new("mtls");
    let backends_at = at.field("backends");
    if mtls.backends.len() > MAX_MTLS_BACKENDS {
        r.add(&backends_at, format!("cannot have more than {MAX_MTLS_BACKENDS} backends"));
    }
    let mut names = BTreeSet::new();
    for (i, backend) in mtls.backends.iter().enumerate() {
        let backend_at = backends_at.index(i);
        // Ours: a backend is referred to by name and interpreted by type.
        if backend.name.is_empty() {
            r.add(&backend_at.field("name"), "cannot be empty");
        } else if !names.insert(backend.name.as_str()) {
            r.add(
                &backend_at.field("name"),
                format!("{} name is already used for another backend", quote(&backend.name)),
            );
        }
        if backend.r#type.is_empty() {
            r.add(&backend_at.field("type"), "cannot be empty");
        }
    }
    if !mtls.enabled_backend.is_empty() && !names.contains(mtls.enabled_backend.as_str()) {
        r.add(&at.field("enabledBackend"), "has to be set to one of the backends in the mesh");
    }
}
