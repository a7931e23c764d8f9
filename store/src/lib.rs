//! `meridian-store`: a persistent resource store with a gap-free change feed,
//! on SQLite (one process) or PostgreSQL (several processes on one database).
//!
//! # Model
//!
//! A resource is an opaque record — key `(type_name, mesh, name)`, labels,
//! `spec` bytes and a caller-computed content `version` — the store never
//! looks inside it. The store keeps one **revision** counter: every effective
//! write takes the next revision and appends one [`Change`] holding the full
//! record to the change log, in the same transaction. A write whose labels,
//! spec and version equal the stored ones is a no-op: no revision, no change,
//! so re-applying the same configuration wakes nobody.
//!
//! ```text
//!  create/update/upsert/delete/apply_batch
//!        │  one transaction: lock meta row ─ write resources ─ append changes
//!        │                   ─ meta.revision += n ─ (pg_notify) ─ commit
//!        ▼
//!  ┌───────────┐  ┌────────────────────────┐  ┌──────────────────────────┐
//!  │ meta      │  │ resources              │  │ changes (the log)        │
//!  │ revision  │  │ current state          │  │ revision → full record   │
//!  └───────────┘  └────────────────────────┘  └──────────────────────────┘
//!        │ after commit: wake-up                          ▲
//!        ▼  (in-process watch channel; PostgreSQL:        │ "revision > last",
//!           LISTEN meridian_changes from any process)     │ pages of 500
//!  watch(from) ── wait for wake-up (or 5 s backstop) ─────┘
//! ```
//!
//! Revisions commit in order: every writer first locks the single meta row,
//! so on PostgreSQL writers in different processes queue there and a reader
//! of "revision > X" never skips one that commits later. On SQLite a
//! process-wide mutex plus `BEGIN IMMEDIATE` does the same. Therefore a
//! watcher that remembers the last revision it saw can always resume from it
//! without gaps or duplicates, until [`Store::compact`] drops that part of
//! the log (then it gets [`StoreError::Compacted`] and should re-list:
//! [`ListPage::revision`] is the point to watch from).
//!
//! Batches are atomic: any failed op rolls back the whole batch and consumes
//! no revision.
//!
//! # Status
//!
//! Status (insights, heartbeats) changes far more often than configuration
//! and is not configuration (Kubernetes keeps `status` apart from `spec`).
//! It lives in its own `status` table with the same key, read and written
//! through [`Store::put_status`], [`Store::get_status`],
//! [`Store::list_status`] and [`Store::delete_status`]: current state only,
//! no revision, no change-log row, no `pg_notify`, so a heartbeat wakes no
//! [`Store::watch`]. Other replicas on one PostgreSQL read the shared table;
//! in-process followers can wait on [`Store::status_changes`].
//!
//! # Compaction
//!
//! [`compact_every`] drops change-log rows older than a retention age or
//! beyond a maximum count ([`Retention`]). A watcher left behind gets
//! [`StoreError::Compacted`] and re-lists (resyncs).

mod backend;
mod compaction;
mod error;
mod listener;
mod recent;
mod store;
mod types;
mod watcher;

pub use compaction::{Retention, compact_every};
pub use error::StoreError;
pub use listener::LISTENER_APPLICATION_NAME;
pub use store::{DEFAULT_ACQUIRE_TIMEOUT, Store, StoreOptions};
pub use types::{
    Change, ChangeKind, ListPage, ListQuery, ResourceKey, StatusExpect, StoredResource, WriteOp, WriteResource,
};
