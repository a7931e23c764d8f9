//! `availableServices` of this zone's own ZoneIngresses: per mesh and full
//! healthy-inbound tag set, how many local Dataplanes serve it
//! ([`crate::gateway::ingress::available_services`]). Other zones read it
//! (synced through the global) to weight this zone's ingress as an
//! endpoint.
//!
//! ```text
//!   store change feed ── Dataplane / ZoneIngress changed ──▶ wait DEBOUNCE (more changes join)
//!        ▼
//!   list Dataplanes ─▶ services ─▶ each local ZoneIngress whose value differs ─▶ write (If-Match revision)
//! ```
//!
//! Driven by the change feed, not a timer (the incumbent rewrites every
//! `ingressUpdateInterval`, 1 s); a write happens only when the value
//! changed, so the write's own change event finds nothing to do.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use meridian_core::{Manager, ManagerError};
use meridian_store::{ListQuery, StoreError};
use meridian_sync_proto::{ResourceType, Spec};
use tokio_util::sync::CancellationToken;

use crate::gateway::MeshSnapshot;

/// How long a burst of changes is collected before recomputing (a
/// hundred Dataplanes registering cost one write, not a hundred).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Recomputes and writes the available services of `zone`'s own
/// ZoneIngresses, once now, then after every burst of Dataplane or
/// ZoneIngress changes, until `stop`. Store failures are logged and the
/// next change retries.
pub async fn run(manager: Manager, zone: String, stop: CancellationToken) -> anyhow::Result<()> {
    let store = manager.store().clone();
    loop {
        let revision = match store.current_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "availableServices: cannot read the store revision; retrying");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = reconcile(&manager, &zone).await {
            tracing::warn!(error = %e, "availableServices: cannot update the ZoneIngresses; retrying on the next change");
        }
        let mut feed = std::pin::pin!(store.watch(revision));
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                n = feed.next() => n,
            };
            match next {
                Some(Ok(c)) => {
                    let t = c.resource.key.type_name.as_str();
                    if [ResourceType::Dataplane, ResourceType::ZoneIngress, ResourceType::MeshGateway]
                        .iter()
                        .any(|ty| ty.name() == t)
                    {
                        break;
                    }
                }
                Some(Err(StoreError::Compacted { .. })) | None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "availableServices: change feed error; recomputing");
                    break;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(DEBOUNCE) => {}
        }
    }
}

/// One pass: writes every local ZoneIngress whose `availableServices`
/// differ from what the local Dataplanes offer now (or whose `zone` is
/// not this zone's name). Returns how many were
/// written. A concurrent change (409) is left to the next pass, which that
/// change triggers.
pub async fn reconcile(manager: &Manager, zone: &str) -> Result<usize, ManagerError> {
    let list = |ty: ResourceType| ListQuery { type_name: ty.name().to_string(), ..ListQuery::default() };
    // The ingresses first: a zone without one of its own (most of them)
    // does not read and decode every Dataplane after each burst.
    let ingresses: Vec<_> = manager
        .list_stored(&list(ResourceType::ZoneIngress))
        .await
        .map_err(ManagerError::Store)?
        .items
        .into_iter()
        .filter(|stored| meridian_core::origin::is_local_to(&stored.labels, zone))
        .collect();
    if ingresses.is_empty() {
        return Ok(0);
    }
    let mut meshes: BTreeMap<String, MeshSnapshot> = BTreeMap::new();
    let mut stored_items =
        manager.list_stored(&list(ResourceType::Dataplane)).await.map_err(ManagerError::Store)?.items;
    // MeshGateways: which gateway Dataplanes serve crossMesh listeners.
    stored_items
        .extend(manager.list_stored(&list(ResourceType::MeshGateway)).await.map_err(ManagerError::Store)?.items);
    for stored in stored_items {
        match Manager::decode(&stored) {
            Ok(e) => {
                let mesh = e.resource.meta.mesh.clone();
                meshes.entry(mesh.clone()).or_insert_with(|| MeshSnapshot::new(mesh)).upsert(&e.resource);
            }
            Err(e) => tracing::warn!(error = %e, "availableServices: skipping an undecodable resource"),
        }
    }
    let services = crate::gateway::ingress::available_services(meshes.values());
    let mut written = 0;
    for stored in ingresses {
        let Ok(entry) = Manager::decode(&stored) else { continue };
        let mut resource = entry.resource;
        let Spec::ZoneIngress(zi) = &mut resource.spec else { continue };
        if zi.available_services == services && zi.zone == zone {
            continue;
        }
        zi.available_services = services.clone();
        // The zone it is in, for the other zones (the incumbent's global
        // sets it on receipt; here the zone writes it itself).
        zi.zone = zone.to_string();
        let name = resource.meta.name.clone();
        match manager.apply(resource, Some(entry.revision), false).await {
            Ok(_) => {
                written += 1;
                tracing::info!(ingress = %name, services = services.len(), "availableServices updated");
            }
            Err(ManagerError::Conflict { .. } | ManagerError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::Role;
    use meridian_store::Store;
    use meridian_sync_proto::universal;

    async fn apply(m: &Manager, yaml: &str) {
        for r in universal::parse_resources(yaml).expect("yaml") {
            m.apply(r.expect("resource"), None, false).await.expect("apply");
        }
    }

    async fn services(m: &Manager, name: &str) -> Vec<(String, String, u32)> {
        let e = m.get(ResourceType::ZoneIngress, "", name).await.expect("get").expect("exists");
        let Spec::ZoneIngress(zi) = e.resource.spec else { panic!("a ZoneIngress") };
        zi.available_services
            .iter()
            .map(|s| {
                (
                    s.mesh.clone(),
                    s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                    s.instances,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn written_when_changed_only_and_to_local_ingresses_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::connect(&format!("sqlite:{}", dir.path().join("z.db").display())).await.expect("store");
        let m = Manager::new(store, Role::Zone { federated: false });
        apply(&m, "type: Mesh\nname: default\n").await;
        apply(&m, "type: ZoneIngress\nname: ingress-1\nnetworking: {address: 127.0.0.1, port: 10001, advertisedAddress: 192.0.2.1, advertisedPort: 10001}").await;
        assert_eq!(reconcile(&m, "zone-1").await.expect("reconcile"), 1, "its zone is set");
        assert_eq!(reconcile(&m, "zone-1").await.expect("reconcile"), 0, "nothing to announce yet");
        apply(
            &m,
            "type: Dataplane\nmesh: default\nname: b-1\nnetworking: {address: 10.0.0.1, inbound: [{port: 80, tags: {kuma.io/service: b}}]}\n---\ntype: Dataplane\nmesh: default\nname: b-2\nnetworking: {address: 10.0.0.2, inbound: [{port: 80, tags: {kuma.io/service: b}}]}\n---\ntype: Dataplane\nmesh: default\nname: a-1\nnetworking: {address: 10.0.0.3, inbound: [{port: 80, tags: {kuma.io/service: a}, health: {ready: false}}]}",
        )
        .await;
        assert_eq!(reconcile(&m, "zone-1").await.expect("reconcile"), 1);
        assert_eq!(services(&m, "ingress-1").await, [("default".to_string(), "kuma.io/service=b".to_string(), 2)]);
        let rev = m.get(ResourceType::ZoneIngress, "", "ingress-1").await.expect("get").expect("exists").revision;
        assert_eq!(reconcile(&m, "zone-1").await.expect("reconcile"), 0, "unchanged: no write");
        let again = m.get(ResourceType::ZoneIngress, "", "ingress-1").await.expect("get").expect("exists").revision;
        assert_eq!(rev, again);
        m.delete(ResourceType::Dataplane, "default", "b-2", None).await.expect("delete");
        assert_eq!(reconcile(&m, "zone-1").await.expect("reconcile"), 1);
        assert_eq!(services(&m, "ingress-1").await, [("default".to_string(), "kuma.io/service=b".to_string(), 1)]);
    }
}
