//! The one error type users match on.

use std::io;
use std::path::PathBuf;

/// Result type of every fallible cowvol call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, as a kind the caller can match on plus the
/// context that explains it.
///
/// `Busy` and `Timeout` are promises as well as failures: when an operation
/// returns either of them, nothing was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named volume, snapshot or object does not exist.
    #[error("{what} was not found")]
    NotFound {
        /// What was looked for, e.g. `volume vol-3`.
        what: String,
    },
    /// An object with that name already exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// The object that collides, e.g. `volume "db"`.
        what: String,
    },
    /// Another administrative operation holds the object; retry later.
    /// Nothing was applied.
    #[error("{what} is busy: {reason}")]
    Busy {
        /// The object that is held.
        what: String,
        /// Who holds it.
        reason: String,
    },
    /// The snapshot is held (protected): it cannot be deleted, by hand or
    /// by retention, until the hold is released. Nothing was deleted.
    #[error("{what} is held; release the hold before deleting it")]
    Held {
        /// The held object, e.g. `snapshot snap-4 ("nightly")`.
        what: String,
    },
    /// In-flight I/O did not drain within the allowed time. Nothing was applied.
    #[error("{what} timed out after {waited_ms} ms waiting for in-flight I/O to drain; nothing was changed")]
    Timeout {
        /// The operation that gave up.
        what: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// An I/O range falls outside the volume.
    #[error("range {offset}+{len} is outside {what} of {size} bytes")]
    OutOfRange {
        /// The volume or snapshot addressed.
        what: String,
        /// Start of the requested range.
        offset: u64,
        /// Length of the requested range.
        len: u64,
        /// Logical size of the target.
        size: u64,
    },
    /// A write was attempted through a read-only handle or on a read-only object.
    #[error("{what} is read-only")]
    ReadOnly {
        /// The read-only target.
        what: String,
    },
    /// Another opener holds the store: another process, or another
    /// [`crate::Store`] of this process. Nothing was read or changed.
    #[error("store {} is locked: another process or another Store of this process has it open", path.display())]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The underlying file system is full. Nothing was written; the store works
    /// again once space is freed.
    #[error("no space left while {during}")]
    NoSpace {
        /// The operation that needed space.
        during: String,
    },
    /// An argument is not acceptable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Stored data or metadata failed verification.
    #[error("corruption in {what} at {location}: {detail}")]
    Corruption {
        /// Which structure is damaged (superblock, WAL, tree node, data block, ...).
        what: String,
        /// Where: file and byte offset, or block address.
        location: String,
        /// What check failed.
        detail: String,
    },
    /// An earlier write or sync of the store failed, so what the disk holds
    /// after it is uncertain: the store refuses every change from then on
    /// (reads still work) until it is reopened, which recovers it to what
    /// was durable. Nothing was applied.
    #[error("the store refuses {during}: an earlier write or sync failed; reopen the store to recover")]
    Poisoned {
        /// What was refused.
        during: String,
    },
    /// A send/receive stream failed verification: it is damaged, cut
    /// short, reordered, or not a cowvol stream. The receive was refused and
    /// nothing of it became visible.
    #[error("bad stream at byte {offset}: {fault}: {detail}")]
    Stream {
        /// What kind of damage.
        fault: StreamFault,
        /// Byte offset in the stream of the frame that failed.
        offset: u64,
        /// What the check found.
        detail: String,
    },
    /// An incremental stream's base snapshot is not in the receiving store,
    /// or is there with other contents. Nothing was received.
    #[error("cannot receive onto {what}: {detail}")]
    BaseMismatch {
        /// The base the stream needs, e.g. `snapshot 3 of store 4f2a...`.
        what: String,
        /// Missing, or which check differed.
        detail: String,
    },
    /// An I/O error from the operating system; the store refuses further
    /// writes after a failed write or sync.
    #[error("I/O error while {during}: {source}")]
    Io {
        /// What the store was doing.
        during: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// The kinds of damage [`Error::Stream`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamFault {
    /// The input ended inside a frame or before the end frame.
    Truncated,
    /// The bytes are not a cowvol stream frame (wrong magic or frame kind).
    NotAStream,
    /// A stream format version this build does not read.
    UnsupportedVersion,
    /// A frame's checksum does not match its bytes.
    Checksum,
    /// A frame is out of sequence: missing, repeated or reordered.
    OutOfOrder,
    /// A frame's fields are inconsistent (a range outside the volume, a
    /// block size this store does not use, a bad length).
    Malformed,
    /// The end frame's totals or digest disagree with what was received.
    Mismatch,
}

impl std::fmt::Display for StreamFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamFault::Truncated => "truncated",
            StreamFault::NotAStream => "not a cowvol stream",
            StreamFault::UnsupportedVersion => "unsupported version",
            StreamFault::Checksum => "checksum mismatch",
            StreamFault::OutOfOrder => "frame out of order",
            StreamFault::Malformed => "malformed frame",
            StreamFault::Mismatch => "totals do not match",
        })
    }
}

impl Error {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub(crate) fn corruption(what: impl Into<String>, location: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corruption { what: what.into(), location: location.into(), detail: detail.into() }
    }

    /// Wraps an OS error, turning "disk full" into [`Error::NoSpace`].
    pub(crate) fn io(during: impl Into<String>, source: io::Error) -> Self {
        let during = during.into();
        if source.raw_os_error() == Some(libc::ENOSPC) || source.kind() == io::ErrorKind::StorageFull {
            Error::NoSpace { during }
        } else {
            Error::Io { during, source }
        }
    }
}
