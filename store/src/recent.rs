//! The changes this process committed last, kept in memory so that the
//! watchers of [`crate::Store::watch`] woken by a commit read them from
//! here instead of each querying the change log (on SQLite a read
//! transaction is four round trips to a worker thread per watcher per
//! commit; a zone runs five watchers).
//!
//! Only a contiguous run of revisions starting right after the watcher's
//! position is served from memory; anything else (a gap: a revision written
//! by another process, or evicted) is read from the database as before, so
//! the feed stays gap-free and ordered. The store feeds it only on SQLite,
//! where this process's commits are serialized, in revision order.

use std::collections::VecDeque;

use crate::types::Change;

/// Changes kept at most.
const MAX_CHANGES: usize = 1024;
/// Spec bytes kept at most (the oldest changes go first).
const MAX_BYTES: usize = 1 << 20;

/// The last changes committed through one `Store` (its clones included).
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// Consecutive revisions, oldest first.
    changes: VecDeque<Change>,
    /// Spec bytes held in `changes`.
    bytes: usize,
    /// The revision of the last change this process committed (0: none yet).
    head: i64,
    /// The compaction horizon this process set: nothing at or below it is served.
    compacted: i64,
}

/// What [`Recent::after`] knows about the changes after a revision.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Known {
    /// These changes, consecutive from the revision on (not empty).
    Changes(Vec<Change>),
    /// Nothing newer was committed by this process.
    UpToDate,
    /// Not known here: read the change log.
    Unknown,
}

impl Recent {
    /// Records the changes of one commit, in revision order. A commit that
    /// does not follow the last one recorded (another process wrote in
    /// between) starts the run afresh.
    pub(crate) fn committed(&mut self, changes: Vec<Change>) {
        let Some(first) = changes.first() else { return };
        if self.changes.back().is_some_and(|last| last.revision + 1 != first.revision) {
            self.changes.clear();
            self.bytes = 0;
        }
        for c in changes {
            self.head = c.revision;
            self.bytes += c.resource.spec.len();
            self.changes.push_back(c);
        }
        while self.changes.len() > MAX_CHANGES || (self.bytes > MAX_BYTES && self.changes.len() > 1) {
            if let Some(old) = self.changes.pop_front() {
                self.bytes -= old.resource.spec.len();
            }
        }
    }

    /// The change log was compacted up to `horizon` by this process.
    pub(crate) fn compacted(&mut self, horizon: i64) {
        self.compacted = self.compacted.max(horizon);
        while self.changes.front().is_some_and(|c| c.revision <= self.compacted) {
            if let Some(old) = self.changes.pop_front() {
                self.bytes -= old.resource.spec.len();
            }
        }
    }

    /// Up to `limit` changes after revision `after`, if they are all here.
    pub(crate) fn after(&self, after: i64, limit: usize) -> Known {
        if after < self.compacted || limit == 0 {
            return Known::Unknown;
        }
        if after == self.head && self.head > 0 {
            return Known::UpToDate;
        }
        let Some(first) = self.changes.front() else { return Known::Unknown };
        let Some(skip) = after.checked_sub(first.revision - 1).and_then(|n| usize::try_from(n).ok()) else {
            return Known::Unknown;
        };
        if skip >= self.changes.len() {
            return Known::Unknown;
        }
        Known::Changes(self.changes.iter().skip(skip).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ChangeKind, ResourceKey, StoredResource};

    fn change(revision: i64) -> Change {
        Change {
            revision,
            kind: ChangeKind::Upsert,
            resource: StoredResource {
                key: ResourceKey::new("Dataplane", "default", format!("dp-{revision}")),
                labels: Default::default(),
                spec: vec![0; 10],
                version: "v".into(),
                revision,
                create_time: 0,
                modify_time: 0,
            },
        }
    }

    fn revisions(k: Known) -> Vec<i64> {
        match k {
            Known::Changes(c) => c.iter().map(|c| c.revision).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn serves_a_contiguous_run_only() {
        let mut r = Recent::default();
        assert_eq!(r.after(0, 10), Known::Unknown, "nothing committed yet");
        r.committed(vec![change(5), change(6)]);
        r.committed(vec![change(7)]);
        assert_eq!(revisions(r.after(4, 10)), vec![5, 6, 7]);
        assert_eq!(revisions(r.after(5, 1)), vec![6]);
        assert_eq!(r.after(7, 10), Known::UpToDate);
        assert_eq!(r.after(3, 10), Known::Unknown, "revision 4 is not here");
        assert_eq!(r.after(8, 10), Known::Unknown, "ahead of this process: another writer");
        // Another process wrote 8: the run starts afresh at 9.
        r.committed(vec![change(9)]);
        assert_eq!(r.after(7, 10), Known::Unknown);
        assert_eq!(revisions(r.after(8, 10)), vec![9]);
    }

    #[test]
    fn compaction_and_bounds() {
        let mut r = Recent::default();
        r.committed((1..=MAX_CHANGES as i64 + 10).map(change).collect());
        assert_eq!(r.after(5, 10), Known::Unknown, "evicted");
        assert_eq!(revisions(r.after(20, 2)), vec![21, 22]);
        r.compacted(30);
        assert_eq!(r.after(25, 10), Known::Unknown, "behind the compaction horizon");
        assert_eq!(revisions(r.after(30, 1)), vec![31]);
    }
}
