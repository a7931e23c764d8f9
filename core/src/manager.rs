//! Typed access to the store: encode/decode, validation, origin rules and
//! optimistic concurrency, the same for the global and for zones.

use std::collections::BTreeMap;

use meridian_store::{ListPage, ListQuery, ResourceKey, Store, StoreError, StoredResource, WriteOp, WriteResource};
use meridian_sync_proto::{
    Meta, Resource, ResourceType, Spec, SyncDirection, kds, universal, universal::InvalidResource, validate,
};

use crate::{
    liveness::now_millis,
    metrics::StoreMetrics,
    origin::{LABEL_ORIGIN, LABEL_ZONE, ORIGIN_GLOBAL, ORIGIN_ZONE, is_reserved_label, origin},
};

/// Default cap on one resource's encoded size: KDS messages are capped at
/// 4 MiB, so one resource must leave room for its envelope.
pub const DEFAULT_MAX_RESOURCE_BYTES: usize = 1024 * 1024;
/// A content version's length (sha256, hex), counted in size checks of
/// resources not yet versioned.
const VERSION_ROOM: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which control plane this is; decides what users may write here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Global,
    /// A zone; `federated` when it syncs with a global (then global types
    /// are read-only here).
    Zone {
        federated: bool,
    },
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Global => "global",
            Role::Zone { .. } => "zone",
        }
    }
}

/// A decoded stored resource with its concurrency token.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub resource: Resource,
    /// Store revision of the last write: the optimistic-concurrency token.
    pub revision: i64,
    /// Content hash.
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{ty} {name:?} not found{}", mesh_suffix(mesh))]
    NotFound { ty: ResourceType, mesh: String, name: String },
    #[error("mesh {0:?} does not exist")]
    MeshNotFound(String),
    #[error("{0}")]
    Invalid(InvalidResource),
    #[error(
        "{ty} {name:?} was changed concurrently: expected revision {expected}, current is {actual}; read it again and retry"
    )]
    Conflict { ty: ResourceType, name: String, expected: i64, actual: i64 },
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "{ty} {name:?} is {size} bytes as it travels to zones (spec, labels and envelope, with room for the labels the control plane adds); the limit is {limit} bytes"
    )]
    TooLarge { ty: ResourceType, name: String, size: usize, limit: usize },
    #[error("stored {0} cannot be decoded: {1}")]
    Corrupt(ResourceKey, String),
    #[error(transparent)]
    Store(StoreError),
}

fn mesh_suffix(mesh: &str) -> String {
    if mesh.is_empty() { String::new() } else { format!(" in mesh {mesh:?}") }
}

impl ManagerError {
    fn from_store(e: StoreError, ty: ResourceType) -> ManagerError {
        match e {
            StoreError::NotFound(k) => ManagerError::NotFound { ty, mesh: k.mesh, name: k.name },
            StoreError::Conflict { key, expected, actual } => {
                ManagerError::Conflict { ty, name: key.name, expected, actual }
            }
            other => ManagerError::Store(other),
        }
    }
}

/// Typed resource access for one control plane.
#[derive(Clone)]
pub struct Manager {
    store: Store,
    role: Role,
    max_resource_bytes: usize,
    metrics: Option<StoreMetrics>,
}

impl Manager {
    pub fn new(store: Store, role: Role) -> Manager {
        Manager { store, role, max_resource_bytes: DEFAULT_MAX_RESOURCE_BYTES, metrics: None }
    }

    /// Counts store operations into `metrics` (registered by the caller).
    pub fn with_metrics(mut self, metrics: StoreMetrics) -> Manager {
        self.metrics = Some(metrics);
        self
    }

    /// The largest resource accepted, in bytes as it travels over KDS
    /// ([`kds::travelling_size`]).
    pub fn max_resource_bytes(&self) -> usize {
        self.max_resource_bytes
    }

    pub fn with_max_resource_bytes(mut self, limit: usize) -> Manager {
        self.max_resource_bytes = limit;
        self
    }

    fn observe<T, E>(&self, op: &'static str, started: std::time::Instant, r: &Result<T, E>) {
        if let Some(m) = &self.metrics {
            m.observe(op, started, r);
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The global instances' heartbeats, which say whether a ZoneInsight's
    /// open subscription is still recorded by a live instance
    /// ([`crate::liveness::Heartbeats`]).
    ///
    /// Errors: the store's.
    pub async fn heartbeats(&self) -> Result<crate::liveness::Heartbeats, ManagerError> {
        crate::liveness::Heartbeats::load(&self.store).await.map_err(ManagerError::Store)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether `ty` is status (ZoneInsight, DataplaneInsight): kept in the
    /// store's status table, outside the configuration change feed, so
    /// heartbeats and ACK records wake no config watcher. Reads of these
    /// types through this Manager go there.
    pub fn is_status(ty: ResourceType) -> bool {
        matches!(ty, ResourceType::ZoneInsight | ResourceType::DataplaneInsight | ResourceType::ZoneIngressInsight)
    }

    /// Lists raw records of `q.type_name` from where that type lives (the
    /// status table for [`Manager::is_status`] types, else the resources).
    pub async fn list_stored(&self, q: &ListQuery) -> Result<ListPage, StoreError> {
        match ResourceType::from_name(&q.type_name) {
            Some(ty) if Self::is_status(ty) => self.store.list_status(q).await,
            _ => self.store.list(q).await,
        }
    }

    pub fn key(ty: ResourceType, mesh: &str, name: &str) -> ResourceKey {
        ResourceKey::new(ty.name(), if ty.is_mesh_scoped() { mesh } else { "" }, name)
    }

    /// Decodes a stored record.
    pub fn decode(stored: &StoredResource) -> Result<Entry, ManagerError> {
        let corrupt = |m: String| ManagerError::Corrupt(stored.key.clone(), m);
        let ty = ResourceType::from_name(&stored.key.type_name)
            .ok_or_else(|| corrupt(format!("unknown type {:?}", stored.key.type_name)))?;
        let spec = Spec::decode(ty, &stored.spec).map_err(|e| corrupt(e.to_string()))?;
        Ok(Entry {
            resource: Resource {
                meta: Meta {
                    mesh: stored.key.mesh.clone(),
                    name: stored.key.name.clone(),
                    labels: stored.labels.clone(),
                    creation_time: stored.create_time,
                    modification_time: stored.modify_time,
                },
                spec,
            },
            revision: stored.revision,
            version: stored.version.clone(),
        })
    }

    /// The store record for a resource.
    pub fn encode(r: &Resource) -> WriteResource {
        let ty = r.resource_type();
        WriteResource {
            key: Self::key(ty, &r.meta.mesh, &r.meta.name),
            labels: r.meta.labels.clone(),
            spec: r.spec.encode(),
            version: r.version(),
        }
    }

    pub async fn get(&self, ty: ResourceType, mesh: &str, name: &str) -> Result<Option<Entry>, ManagerError> {
        let started = std::time::Instant::now();
        let r = self.get_inner(ty, mesh, name).await;
        self.observe("get", started, &r);
        r
    }

    async fn get_inner(&self, ty: ResourceType, mesh: &str, name: &str) -> Result<Option<Entry>, ManagerError> {
        let key = Self::key(ty, mesh, name);
        let stored = if Self::is_status(ty) { self.store.get_status(&key).await } else { self.store.get(&key).await };
        match stored.map_err(ManagerError::Store)? {
            Some(s) => Self::decode(&s).map(Some),
            None => Ok(None),
        }
    }

    /// One page of `ty` (in `mesh`, or every mesh when `None`), with the total.
    pub async fn list(
        &self,
        ty: ResourceType,
        mesh: Option<&str>,
        labels: BTreeMap<String, String>,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<(Vec<Entry>, u64), ManagerError> {
        let started = std::time::Instant::now();
        let r = self.list_inner(ty, mesh, labels, offset, limit).await;
        self.observe("list", started, &r);
        r
    }

    async fn list_inner(
        &self,
        ty: ResourceType,
        mesh: Option<&str>,
        labels: BTreeMap<String, String>,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<(Vec<Entry>, u64), ManagerError> {
        let page = self
            .list_stored(&ListQuery {
                type_name: ty.name().to_string(),
                mesh: mesh.map(str::to_string),
                labels,
                offset,
                limit,
            })
            .await
            .map_err(ManagerError::Store)?;
        let items = page.items.iter().map(Self::decode).collect::<Result<Vec<_>, _>>()?;
        Ok((items, page.total))
    }

    pub async fn mesh_exists(&self, mesh: &str) -> Result<bool, ManagerError> {
        Ok(self.get(ResourceType::Mesh, "", mesh).await?.is_some())
    }

    /// The stored resource (`ty`, `mesh`, `name`) and whether the mesh it
    /// lives in exists (`true` for types outside meshes), read together:
    /// one store round trip for a mesh-scoped configuration type (the
    /// Dataplane PUT path), instead of one for each.
    async fn existing_and_mesh(
        &self,
        ty: ResourceType,
        mesh: &str,
        name: &str,
    ) -> Result<(Option<Entry>, bool), ManagerError> {
        if !ty.is_mesh_scoped() || Self::is_status(ty) {
            let existing = self.get(ty, mesh, name).await?;
            let mesh_found = !ty.is_mesh_scoped() || self.mesh_exists(mesh).await?;
            return Ok((existing, mesh_found));
        }
        let started = std::time::Instant::now();
        let keys = [Self::key(ty, mesh, name), Self::key(ResourceType::Mesh, "", mesh)];
        let read = self.store.get_many(&keys).await.map_err(ManagerError::Store);
        self.observe("get", started, &read);
        let mut read = read?.into_iter();
        let existing = read.next().flatten().map(|s| Self::decode(&s)).transpose()?;
        let mesh_found = read.next().flatten().is_some();
        Ok((existing, mesh_found))
    }

    /// Checks a resource as a user write would: structure, semantics, size,
    /// the mesh it lives in. Changes nothing.
    pub async fn check(&self, r: &Resource) -> Result<(), ManagerError> {
        self.check_content(r)?;
        if r.resource_type().is_mesh_scoped() && !self.mesh_exists(&r.meta.mesh).await? {
            return Err(ManagerError::MeshNotFound(r.meta.mesh.clone()));
        }
        Ok(())
    }

    /// [`Manager::check`] without the mesh: structure, semantics, size.
    fn check_content(&self, r: &Resource) -> Result<(), ManagerError> {
        let ty = r.resource_type();
        let mut violations = universal::meta_violations(ty, &r.meta.mesh, &r.meta.name);
        if let Err(e) = validate::resource(r) {
            violations.extend(e.violations);
        }
        if !violations.is_empty() {
            return Err(ManagerError::Invalid(InvalidResource {
                type_name: ty.name().to_string(),
                mesh: r.meta.mesh.clone(),
                name: r.meta.name.clone(),
                violations,
            }));
        }
        // Measured as the resource will travel over KDS (envelope and labels
        // included, with room for what the global adds when relaying it), so
        // that what is accepted here can always be sent on: the same figure
        // the KDS receivers check ([`crate::received`]).
        let spec = r.spec.encode();
        let size = kds::travelling_size(ty, &r.meta.mesh, &r.meta.name, &r.meta.labels, VERSION_ROOM, &spec)
            + kds::RELAY_ALLOWANCE;
        if size > self.max_resource_bytes {
            return Err(ManagerError::TooLarge { ty, name: r.meta.name.clone(), size, limit: self.max_resource_bytes });
        }
        Ok(())
    }

    /// Whether a user (REST/CLI) may write `ty` here, given the current state.
    fn check_user_write(&self, ty: ResourceType, existing: Option<&Entry>) -> Result<(), ManagerError> {
        if Self::is_status(ty) {
            return Err(ManagerError::Forbidden(format!("{ty} is read-only: the control plane maintains it")));
        }
        match self.role {
            Role::Global => {
                if ty.sync_direction() == SyncDirection::ZoneToGlobal {
                    return Err(ManagerError::Forbidden(format!(
                        "{ty} resources are created in zones and synced to the global; register them through the zone's API"
                    )));
                }
                if existing.is_some_and(|e| origin(&e.resource) == Some(ORIGIN_ZONE)) {
                    return Err(ManagerError::Forbidden(format!("{ty} was synced from a zone; change it in its zone")));
                }
            }
            Role::Zone { federated } => {
                if ty == ResourceType::Zone {
                    return Err(ManagerError::Forbidden("Zone resources are managed on the global".into()));
                }
                if federated && ty.sync_direction() == SyncDirection::GlobalToZone {
                    return Err(ManagerError::Forbidden(format!(
                        "{ty} resources are managed by the global control plane in a multi-zone deployment; apply them there"
                    )));
                }
                if existing.is_some_and(|e| origin(&e.resource) == Some(ORIGIN_GLOBAL)) {
                    return Err(ManagerError::Forbidden(format!(
                        "{ty} was synced from the global; change it on the global"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Rules that compare a write with what it replaces: a Mesh's enabled CA
    /// backend cannot be swapped while mTLS is on
    /// ([`validate::mesh_update`]).
    fn check_update(existing: Option<&Entry>, r: &Resource) -> Result<(), ManagerError> {
        let (Some(old), Spec::Mesh(new)) = (existing, &r.spec) else { return Ok(()) };
        let Spec::Mesh(old) = &old.resource.spec else { return Ok(()) };
        let violations = validate::mesh_update(old, new);
        if violations.is_empty() {
            return Ok(());
        }
        Err(ManagerError::Invalid(InvalidResource {
            type_name: r.resource_type().name().to_string(),
            mesh: r.meta.mesh.clone(),
            name: r.meta.name.clone(),
            violations,
        }))
    }

    /// Refuses labels only the control plane sets ([`crate::origin::RESERVED_LABELS`]),
    /// one violation per label, at `labels["<key>"]`.
    fn check_user_labels(r: &Resource) -> Result<(), ManagerError> {
        let violations: Vec<validate::Violation> = r
            .meta
            .labels
            .keys()
            .filter(|k| is_reserved_label(k))
            .map(|k| {
                validate::Violation::new(
                    validate::FieldPath::new("labels").key(k).to_string(),
                    format!("{k:?} is set by the control plane (on resources synced over KDS) and cannot be written by users"),
                )
            })
            .collect();
        if violations.is_empty() {
            return Ok(());
        }
        let ty = r.resource_type();
        Err(ManagerError::Invalid(InvalidResource {
            type_name: ty.name().to_string(),
            mesh: r.meta.mesh.clone(),
            name: r.meta.name.clone(),
            violations,
        }))
    }

    /// Creates or updates a resource on behalf of a user. With
    /// `expected_revision`, refuses to overwrite a newer write (Conflict).
    /// With `dry_run`, checks everything and writes nothing. Returns the
    /// entry and whether it was created.
    ///
    /// Errors: [`ManagerError::Invalid`] for a reserved label
    /// (`labels["kuma.io/origin"]`, see [`crate::origin::RESERVED_LABELS`]) or a
    /// validation failure; `Forbidden` for what users may not write here.
    pub async fn apply(
        &self,
        r: Resource,
        expected_revision: Option<i64>,
        dry_run: bool,
    ) -> Result<(Entry, bool), ManagerError> {
        let ty = r.resource_type();
        let (existing, mesh_found) = self.existing_and_mesh(ty, &r.meta.mesh, &r.meta.name).await?;
        self.check_user_write(ty, existing.as_ref())?;
        Self::check_user_labels(&r)?;
        self.check_content(&r)?;
        if !mesh_found {
            return Err(ManagerError::MeshNotFound(r.meta.mesh.clone()));
        }
        Self::check_update(existing.as_ref(), &r)?;
        if let (Some(expected), Some(e)) = (expected_revision, existing.as_ref())
            && e.revision != expected
        {
            return Err(ManagerError::Conflict { ty, name: r.meta.name.clone(), expected, actual: e.revision });
        }
        if existing.is_none() && expected_revision.is_some_and(|rev| rev > 0) {
            return Err(ManagerError::NotFound { ty, mesh: r.meta.mesh.clone(), name: r.meta.name.clone() });
        }
        if dry_run {
            let created = existing.is_none();
            let version = r.version();
            return Ok((Entry { resource: r, revision: existing.map_or(0, |e| e.revision), version }, created));
        }
        let write = Self::encode(&r);
        let started = std::time::Instant::now();
        let written = match expected_revision {
            Some(rev) if existing.is_some() => self.store.update(write, Some(rev)).await.map(|s| (s, false)),
            _ => self.store.upsert(write).await,
        };
        self.observe("write", started, &written);
        let (stored, created) = written.map_err(|e| ManagerError::from_store(e, ty))?;
        Ok((Self::decode(&stored)?, created))
    }

    /// Deletes a resource on behalf of a user. Deleting a Mesh deletes
    /// everything inside it in the same transaction.
    pub async fn delete(
        &self,
        ty: ResourceType,
        mesh: &str,
        name: &str,
        expected_revision: Option<i64>,
    ) -> Result<(), ManagerError> {
        let existing = self.get(ty, mesh, name).await?.ok_or_else(|| ManagerError::NotFound {
            ty,
            mesh: mesh.to_string(),
            name: name.to_string(),
        })?;
        self.check_user_write(ty, Some(&existing))?;
        let mut ops = Vec::new();
        // Status that goes with the deleted resources, removed after them.
        let mut status = Vec::new();
        if ty == ResourceType::Zone && self.role == Role::Global {
            (ops, status) = self.zone_removal(name).await?;
        }
        if ty == ResourceType::Dataplane {
            status.push(Self::key(ResourceType::DataplaneInsight, mesh, name));
        }
        if ty == ResourceType::ZoneIngress {
            status.push(Self::key(ResourceType::ZoneIngressInsight, mesh, name));
        }
        if ty == ResourceType::Mesh {
            for inner in ResourceType::ALL.into_iter().filter(|t| t.is_mesh_scoped()) {
                let (items, _) = self.list(inner, Some(name), BTreeMap::new(), 0, None).await?;
                for e in items {
                    if self.role == Role::Global && origin(&e.resource) == Some(ORIGIN_ZONE) {
                        continue; // owned by a zone; it goes when the zone removes it
                    }
                    if Self::is_status(inner) {
                        status.push(Self::key(inner, &e.resource.meta.mesh, &e.resource.meta.name));
                        continue;
                    }
                    ops.push(WriteOp::Delete {
                        key: Self::key(inner, &e.resource.meta.mesh, &e.resource.meta.name),
                        expected_revision: None,
                    });
                }
            }
        }
        ops.push(WriteOp::Delete { key: Self::key(ty, mesh, name), expected_revision });
        let started = std::time::Instant::now();
        let written = self.store.apply_batch(ops).await;
        self.observe("delete", started, &written);
        written.map_err(|e| ManagerError::from_store(e, ty))?;
        for key in status {
            self.store.delete_status(&key).await.map_err(ManagerError::Store)?;
        }
        Ok(())
    }
}

impl Manager {
    /// Deleting a zone: refused while it is online; otherwise everything it
    /// synced up (and its insight) goes with it: the config deletes, and the
    /// status keys to delete after them.
    async fn zone_removal(&self, zone: &str) -> Result<(Vec<WriteOp>, Vec<ResourceKey>), ManagerError> {
        let mut ops = Vec::new();
        let mut status = Vec::new();
        if let Some(insight) = self.get(ResourceType::ZoneInsight, "", zone).await? {
            if let Spec::ZoneInsight(zi) = &insight.resource.spec
                && self.heartbeats().await?.zone_online(zi, now_millis())
            {
                return Err(ManagerError::Forbidden(format!(
                    "zone {zone:?} is online; stop its control plane (or disable it with enabled: false and wait until it is offline) before deleting it"
                )));
            }
            status.push(Self::key(ResourceType::ZoneInsight, "", zone));
        }
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_ZONE.to_string(), zone.to_string());
        labels.insert(LABEL_ORIGIN.to_string(), ORIGIN_ZONE.to_string());
        for ty in ResourceType::ALL.into_iter().filter(|t| t.sync_direction() == SyncDirection::ZoneToGlobal) {
            let (items, _) = self.list(ty, None, labels.clone(), 0, None).await?;
            for e in items {
                let key = Self::key(ty, &e.resource.meta.mesh, &e.resource.meta.name);
                if Self::is_status(ty) {
                    status.push(key);
                } else {
                    ops.push(WriteOp::Delete { key, expected_revision: None });
                }
            }
        }
        Ok((ops, status))
    }
}
