//! The change feed behind [`crate::Store::watch`].
//!
//! A watcher is a lazy stream (no task, no channel): when its buffer is
//! empty it queries the change log for revisions after the last one it
//! yielded, one bounded page at a time; when the log has nothing newer it
//! waits for a wake-up (a commit in this process, a PostgreSQL
//! notification) or the periodic backstop re-query ([`crate::StoreOptions`]), then queries again.
//! Because every query starts from the last yielded revision and the log is
//! gap-free, a missed wake-up can only delay a change, never lose it.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::recent::Known;
use crate::types::Change;

/// What a watcher reads: the change log and its wake-ups. The store
/// implements it; the watcher knows nothing else of the store.
pub(crate) trait ChangeLog: Clone + Send + Sync + 'static {
    /// Up to `limit` changes with revision > `after`, in order.
    fn read_changes(
        &self,
        after: i64,
        limit: i64,
    ) -> impl std::future::Future<Output = Result<Vec<Change>, StoreError>> + Send;
    /// What this process knows, in memory, of the changes after `after`
    /// ([`crate::recent::Recent`]); asked only after a wake-up.
    fn recent_changes(&self, after: i64, limit: usize) -> Known;
    /// Ticks on every commit this process sees (and PostgreSQL notifications).
    fn subscribe_wake(&self) -> watch::Receiver<u64>;
    /// How long to wait for a wake-up before querying anyway.
    fn requery_interval(&self) -> Duration;
}

/// Changes fetched per query: bounds a watcher's buffer (and its memory)
/// while it catches up on a long log.
const PAGE_SIZE: i64 = 500;
/// Delay before retrying after a database error; doubles up to the max.
const MIN_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(10);

struct Watcher<L> {
    store: L,
    /// Revision of the last change yielded (or the starting point).
    last: i64,
    /// Fetched and not yet yielded; at most PAGE_SIZE entries.
    buf: VecDeque<Change>,
    wake: watch::Receiver<u64>,
    /// Set after a database error: wait this long before the next query.
    retry: Option<Duration>,
    /// A terminal error was yielded; the stream ends.
    done: bool,
    /// The last wait ended with a wake-up (a commit in this process), not
    /// the backstop: the in-memory recent changes may answer the next query.
    woken: bool,
}

pub(crate) fn watch<L: ChangeLog>(
    store: L,
    from_revision: i64,
) -> impl Stream<Item = Result<Change, StoreError>> + Send + Unpin + 'static {
    let wake = store.subscribe_wake();
    let watcher = Watcher {
        store,
        last: from_revision.max(0),
        buf: VecDeque::new(),
        wake,
        retry: None,
        done: false,
        woken: false,
    };
    Box::pin(futures::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    }))
}

impl<L: ChangeLog> Watcher<L> {
    async fn next(&mut self) -> Option<Result<Change, StoreError>> {
        loop {
            if let Some(change) = self.buf.pop_front() {
                self.last = change.revision;
                return Some(Ok(change));
            }
            if self.done {
                return None;
            }
            if let Some(delay) = self.retry {
                tokio::time::sleep(delay).await;
            }
            // Mark wake-ups seen *before* querying: one arriving during the
            // query makes the wait below return at once.
            self.wake.borrow_and_update();
            if self.woken {
                match self.store.recent_changes(self.last, PAGE_SIZE as usize) {
                    Known::Changes(changes) => {
                        self.buf.extend(changes);
                        continue;
                    }
                    Known::UpToDate => {
                        self.woken = self.wait().await;
                        continue;
                    }
                    Known::Unknown => {}
                }
            }
            match self.store.read_changes(self.last, PAGE_SIZE).await {
                Ok(changes) => {
                    self.retry = None;
                    if changes.is_empty() {
                        self.woken = self.wait().await;
                    } else {
                        self.buf.extend(changes);
                    }
                }
                Err(error) if error.is_transient() => {
                    let delay = self.retry.map_or(MIN_RETRY, |d| (d * 2).min(MAX_RETRY));
                    self.retry = Some(delay);
                    return Some(Err(error));
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// Waits for a wake-up or, as a backstop only (SQLite writers in other
    /// processes, a notification lost in transit), the re-query interval.
    /// True when a wake-up ended the wait.
    async fn wait(&mut self) -> bool {
        let backstop = self.store.requery_interval();
        tokio::select! {
            changed = self.wake.changed() => {
                if changed.is_err() {
                    // Sender gone (cannot happen while we hold the store): poll.
                    tokio::time::sleep(backstop).await;
                    return false;
                }
                true
            }
            () = tokio::time::sleep(backstop) => false,
        }
    }
}
