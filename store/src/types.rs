//! The records the store keeps and the requests it answers. All of them are
//! plain data: the store never looks inside `spec`.

use std::collections::BTreeMap;
use std::fmt;

/// Identity of a resource: unique within the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// Resource type, e.g. `MeshTrafficPermission`. Opaque to the store.
    pub type_name: String,
    /// Owning mesh; `""` for globally scoped types.
    pub mesh: String,
    /// Name, unique within (type, mesh).
    pub name: String,
}

impl ResourceKey {
    /// Builds a key from anything string-like.
    pub fn new(type_name: impl Into<String>, mesh: impl Into<String>, name: impl Into<String>) -> Self {
        Self { type_name: type_name.into(), mesh: mesh.into(), name: name.into() }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mesh.is_empty() {
            write!(f, "{}/{}", self.type_name, self.name)
        } else {
            write!(f, "{}/{}/{}", self.type_name, self.mesh, self.name)
        }
    }
}

/// A resource as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResource {
    /// Identity.
    pub key: ResourceKey,
    /// Labels; list queries can filter on them.
    pub labels: BTreeMap<String, String>,
    /// Opaque payload (the caller's protobuf encoding).
    pub spec: Vec<u8>,
    /// Opaque content hash computed by the caller; part of no-op detection.
    pub version: String,
    /// Store revision of the last write to this resource: the optimistic
    /// concurrency token to pass back as `expected_revision`.
    pub revision: i64,
    /// Creation time, unix milliseconds.
    pub create_time: i64,
    /// Time of the last effective write, unix milliseconds.
    pub modify_time: i64,
}

/// What a caller writes: a resource without the store-assigned fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResource {
    /// Identity.
    pub key: ResourceKey,
    /// Labels, replaced as a whole on update.
    pub labels: BTreeMap<String, String>,
    /// Opaque payload.
    pub spec: Vec<u8>,
    /// Opaque content hash; a write whose labels, spec and version all equal
    /// the stored ones is a no-op.
    pub version: String,
}

impl WriteResource {
    /// True when writing `self` over `current` would change nothing.
    pub(crate) fn same_content(&self, current: &StoredResource) -> bool {
        self.labels == current.labels && self.spec == current.spec && self.version == current.version
    }
}

/// One operation of [`crate::Store::apply_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert; fails with `AlreadyExists` if the key is present.
    Create(WriteResource),
    /// Replace; fails with `NotFound`, or `Conflict` when `expected_revision`
    /// is given and differs from the stored revision.
    Update {
        /// The new content.
        res: WriteResource,
        /// Optimistic-concurrency token; `None` writes unconditionally.
        expected_revision: Option<i64>,
    },
    /// Insert or replace.
    Upsert(WriteResource),
    /// Remove; fails with `NotFound`, or `Conflict` on a stale `expected_revision`.
    Delete {
        /// What to delete.
        key: ResourceKey,
        /// Optimistic-concurrency token; `None` deletes unconditionally.
        expected_revision: Option<i64>,
    },
}

/// A list request: one type, optionally one mesh, all given labels equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Resource type to list.
    pub type_name: String,
    /// `Some(mesh)` restricts to that mesh (`Some("")` = global scope only);
    /// `None` lists every mesh.
    pub mesh: Option<String>,
    /// Every pair must be present with an equal value.
    pub labels: BTreeMap<String, String>,
    /// Number of matching items to skip (after ordering by mesh, name).
    pub offset: u64,
    /// Maximum number of items to return; `None` = all.
    pub limit: Option<u64>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Matching items ordered by (mesh, name), bytewise.
    pub items: Vec<StoredResource>,
    /// Number of matching items ignoring offset and limit.
    pub total: u64,
    /// Store revision of the snapshot the page was read from: `watch` from it
    /// to follow what happens next.
    pub revision: i64,
}

/// Kind of a [`Change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The resource was created or its content changed.
    Upsert,
    /// The resource was deleted.
    Delete,
}

impl ChangeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Upsert => "upsert",
            ChangeKind::Delete => "delete",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "upsert" => Some(ChangeKind::Upsert),
            "delete" => Some(ChangeKind::Delete),
            _ => None,
        }
    }
}

/// One entry of the change feed: exactly one per consumed revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The store revision this change took.
    pub revision: i64,
    /// What happened.
    pub kind: ChangeKind,
    /// `Upsert`: the new state (its `revision` equals the change's).
    /// `Delete`: the last state before deletion (its `revision` is that of
    /// the last write before the delete).
    pub resource: StoredResource,
}

/// Precondition of [`crate::Store::put_status`]. Status records carry no
/// revision; their content `version` is the compare-and-set token of a
/// read-modify-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusExpect {
    /// Write whatever is stored (last writer wins).
    Any,
    /// Only create: fail with `StatusConflict` if the key is stored.
    Absent,
    /// Only replace the record whose `version` is this one: fail with
    /// `StatusConflict` if it is absent or has another version.
    Version(String),
}
