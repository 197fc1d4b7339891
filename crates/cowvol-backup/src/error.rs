//! The crate's one error type. It wraps the engine's [`cowvol::Error`] for
//! everything that happens in a store, and adds what happens on a target.

use std::fmt;

/// What went wrong in a backup operation. Messages are sentences naming
/// the target, the object key or the backup that matters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed (reading the snapshot, writing the restored volume,
    /// recording the backup state).
    #[error(transparent)]
    Store(#[from] cowvol::Error),
    /// A target operation failed: the object store or the file system
    /// answered with an error, or could not be reached.
    #[error("{op} {key} on {target} failed: {detail}")]
    Target {
        /// The target, as its URL (never with credentials).
        target: String,
        /// What was being done: `put`, `get`, `list`, `delete`.
        op: &'static str,
        /// The object key (or prefix, for a list).
        key: String,
        /// What the target said.
        detail: String,
    },
    /// An object the target holds is not what was written: bad magic, bad
    /// checksum, cut short, or a chunk whose bytes do not hash to its name.
    #[error("{key} on {target} is damaged: {detail}")]
    Damaged {
        /// The target.
        target: String,
        /// The damaged object.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A chunk a backup needs is in no pack index on the target.
    #[error("backup {backup} needs chunk {chunk}, which no pack on {target} holds")]
    MissingChunk {
        /// The target.
        target: String,
        /// The backup.
        backup: String,
        /// The chunk's hash, in hex.
        chunk: String,
    },
    /// No backup, target object or snapshot of that name.
    #[error("{what} was not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// A request that cannot be carried out as given.
    #[error("{0}")]
    InvalidArgument(String),
    /// Garbage collection and backups exclude each other on one target:
    /// another one holds it.
    #[error("{target} is in use: {holders}; try again when it is done")]
    Busy {
        /// The target.
        target: String,
        /// The locks found, described.
        holders: String,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(msg: impl fmt::Display) -> Error {
        Error::InvalidArgument(msg.to_string())
    }

    pub(crate) fn not_found(what: impl fmt::Display) -> Error {
        Error::NotFound { what: what.to_string() }
    }

    /// Whether the error says an object or backup does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}
