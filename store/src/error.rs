//! The store's error type.

use crate::types::ResourceKey;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Update or delete of a key that is not stored.
    #[error("resource {0} not found")]
    NotFound(ResourceKey),
    /// Create of a key that is already stored.
    #[error("resource {0} already exists")]
    AlreadyExists(ResourceKey),
    /// `expected_revision` did not match the stored revision.
    #[error("resource {key}: expected revision {expected}, stored revision is {actual}")]
    Conflict {
        /// The contended resource.
        key: ResourceKey,
        /// The revision the caller expected.
        expected: i64,
        /// The revision actually stored.
        actual: i64,
    },
    /// A status write's [`crate::StatusExpect`] did not hold (another
    /// writer got there first): read again and retry.
    #[error("status {0} was changed concurrently")]
    StatusConflict(ResourceKey),
    /// The change log no longer holds what a watch asked for.
    #[error("changes after revision {requested} were compacted; watch from revision {oldest} or later")]
    Compacted {
        /// The `from_revision` (or last seen revision) of the watch.
        requested: i64,
        /// The lowest `from_revision` still served (the compaction horizon).
        oldest: i64,
    },
    /// The connection URL was not understood.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials included only if the caller put them there).
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Creating the SQLite file's directory failed.
    #[error("cannot create directory for {path}: {source}")]
    CreateDir {
        /// The database file path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row could not be decoded (bad labels JSON, unknown change
    /// kind, a gap in the change log).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True for errors worth retrying as they are (database and connection
    /// trouble); false for answers about the data (not found, conflict, ...).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Database(_))
    }
}
