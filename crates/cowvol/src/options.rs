//! Options and result types of the public API.

use crate::catalog::{limits, AccessMode, SnapshotId, SnapshotInfo, SnapshotKind, VolumeId};
use crate::error::Result;
use std::collections::BTreeMap;
use std::time::Duration;

/// How a store is opened. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Block size in bytes: a power of two from 4 KiB to 1 MiB. Fixed when
    /// the store is created; ignored when opening an existing store, which
    /// keeps its own. Default: 4096.
    pub block_size: u32,
    /// WAL bytes written after a checkpoint before the next one starts.
    /// Bounds recovery time and the space held by overwritten blocks.
    /// Default: 64 MiB.
    pub checkpoint_wal_bytes: u64,
    /// Run checkpoints on a background thread (the default). When false,
    /// the operation that crosses the threshold runs the checkpoint itself
    /// after releasing its locks, which makes the order of disk operations
    /// deterministic (useful for crash-point enumeration).
    pub background_checkpoints: bool,
    /// Run every volume's snapshot policy on a background thread this
    /// often, with the wall clock (see [`crate::Store::run_policies`]).
    /// Default: `None`: the host calls `run_policies` when it decides.
    pub policy_interval: Option<Duration>,
    /// Bytes of metadata kept in memory: groups of reference counts (up
    /// to an eighth of it), the count changes not yet folded into them
    /// (about as much again), the free map and the reserved bitmap (a bit
    /// per page of the file), and tree nodes in the rest. Written nodes
    /// beyond what is left are dropped (least recently used first, by a
    /// clock) and read back from their pages when needed; nodes changed
    /// since the last checkpoint count against it too and are kept until
    /// it writes them (a checkpoint is asked for when they reach half of
    /// this). Default: 256 MiB.
    pub node_cache_bytes: u64,
    /// Give the file space of free pages back to the file system (punch
    /// holes) once the checkpoint that freed them is durable, in bounded
    /// steps: on the background thread, or at syncs when
    /// `background_checkpoints` is off. Whole aligned 1 MiB chunks only,
    /// and about one growth step of free space stays allocated. Default:
    /// true. When false, [`crate::Store::punch_free_space`] still does it
    /// on request.
    pub punch_free_space: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_size: 4096,
            checkpoint_wal_bytes: 64 << 20,
            background_checkpoints: true,
            policy_interval: None,
            node_cache_bytes: 256 << 20,
            punch_free_space: true,
        }
    }
}

/// How a volume is created.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Unique among live volumes; 1 to [`limits::MAX_NAME_BYTES`] (255)
    /// bytes, without control characters, line separators or bidirectional
    /// formatting characters (see [`crate::limits`]).
    pub name: String,
    /// Logical size in bytes (at least 1).
    pub size_bytes: u64,
    /// Who may write. Default: [`AccessMode::ReadWriteOnce`].
    pub access_mode: AccessMode,
    /// Read cache budget in bytes. Data reads go through the operating
    /// system's page cache and all extent metadata stays in memory, so this
    /// is recorded in the catalog and reported, and 0 (the default) means
    /// "no cowvol-level cache".
    pub cache_bytes: u64,
    /// Bytes written without a flush after which cowvol flushes on its own,
    /// bounding what a crash can lose. 0 means the default, 64 MiB.
    pub write_buffer_bytes: u64,
    /// Free-form owner (a tenant, a team), for platforms that keep tenants
    /// apart. Empty for a new volume means none; for a volume made from a
    /// snapshot or template, empty means the owner of what it is made from.
    /// At most [`limits::MAX_OWNER_BYTES`] (255) bytes, the characters of a name.
    pub owner: String,
}

impl VolumeOptions {
    /// Options for a volume of `size_bytes` named `name`, defaults elsewhere.
    pub fn new(name: impl Into<String>, size_bytes: u64) -> Self {
        VolumeOptions {
            name: name.into(),
            size_bytes,
            access_mode: AccessMode::default(),
            cache_bytes: 0,
            write_buffer_bytes: 0,
            owner: String::new(),
        }
    }
}

/// How a snapshot is taken.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// Unique among the snapshots of the volume; 1 to
    /// [`limits::MAX_NAME_BYTES`] (255) bytes, the characters of a volume name.
    pub name: String,
    /// Free text, at most [`limits::MAX_DESCRIPTION_BYTES`] (4096) bytes;
    /// tab and line feed are the only control characters allowed.
    pub description: String,
    /// Free-form owner, at most [`limits::MAX_OWNER_BYTES`] (255) bytes.
    pub owner: String,
    /// Free key/value labels: at most [`limits::MAX_LABELS`] (64); keys of 1
    /// to [`limits::MAX_LABEL_KEY_BYTES`] (63) bytes with the characters of a
    /// name, values of at most [`limits::MAX_LABEL_VALUE_BYTES`] (255) bytes
    /// without control characters.
    pub labels: BTreeMap<String, String>,
    /// Manual (the default) or automatic. Retention prunes only automatic
    /// snapshots, so mark one `Auto` only when a policy may delete it.
    pub kind: SnapshotKind,
    /// Delete the snapshot in the first policy pass ([`crate::Store::run_policies`])
    /// at or after this time (seconds since the Unix epoch), unless it is
    /// held then. Must lie in the future. Default: never.
    pub expires_at: Option<u64>,
    /// Makes a retried create safe: a second [`crate::Store::create_snapshot`]
    /// or [`crate::Store::begin_snapshot`] with the same key on the same
    /// volume within [`IDEMPOTENCY_WINDOW_SECS`] of the first returns the
    /// first snapshot (whatever else the retry asks for) instead of taking
    /// another. The key is forgotten when that snapshot is deleted. The
    /// characters and length of a name. Group snapshots and a restore's
    /// safety snapshot take none. Default: none.
    pub idempotency_key: Option<String>,
}

/// How long an idempotency key keeps returning the snapshot it created:
/// 24 hours, longer than any client retries a timed-out call.
pub const IDEMPOTENCY_WINDOW_SECS: u64 = 24 * 3600;

impl SnapshotOptions {
    /// A snapshot named `name` with no description.
    pub fn named(name: impl Into<String>) -> Self {
        SnapshotOptions { name: name.into(), ..Default::default() }
    }

    /// Checks every field against [`crate::limits`].
    pub(crate) fn check_limits(&self) -> Result<()> {
        limits::described("snapshot", &self.name, &self.description, &self.owner, &self.labels)?;
        match &self.idempotency_key {
            Some(key) => limits::name("idempotency key", key),
            None => Ok(()),
        }
    }

    /// Refuses an expiry that is not after `now`, the snapshot's creation.
    pub(crate) fn check_expiry(&self, now: u64) -> Result<()> {
        match self.expires_at {
            Some(t) if t <= now => Err(crate::Error::invalid(format!(
                "snapshot {:?} would expire at {t}, which is not after its creation at {now}",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses an idempotency key where it is not honoured (`what` is where).
    pub(crate) fn refuse_idempotency_key(&self, what: &str) -> Result<()> {
        if self.idempotency_key.is_some() {
            return Err(crate::Error::invalid(format!("{what} takes no idempotency key")));
        }
        Ok(())
    }
}

/// How a restore waits for in-flight I/O, and whether it keeps the state
/// it discards.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// How long to wait for I/O in flight on the volume to drain before
    /// giving up with [`crate::Error::Timeout`]. Default: 30 seconds.
    pub timeout: Duration,
    /// A safety net: take this snapshot of the volume's current state in
    /// the same atomic step as the restore, so the rollback can itself be
    /// undone. Default: none.
    pub safety_snapshot: Option<SnapshotOptions>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions { timeout: Duration::from_secs(30), safety_snapshot: None }
    }
}

/// How a fork is made.
#[derive(Debug, Clone, Default)]
pub struct ForkOptions {
    /// Name of the new volume, as [`VolumeOptions::name`].
    pub name: String,
    /// Fork this snapshot of the source instead of its live state.
    pub from_snapshot: Option<SnapshotId>,
    /// Access mode of the new volume. Default: read-write-once.
    pub access_mode: AccessMode,
    /// Owner of the new volume; empty (the default) means the source
    /// volume's owner (the snapshot's, when the source volume is gone).
    /// As [`VolumeOptions::owner`].
    pub owner: String,
}

/// Whether a handle may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenMode {
    /// Read and write (the default), subject to the volume's access mode.
    #[default]
    ReadWrite,
    /// Read only; never counts against read-write-once.
    ReadOnly,
}

/// When a read-write handle makes its writes durable on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoFlush {
    /// After the volume's [`VolumeOptions::write_buffer_bytes`] of writes
    /// not yet flushed, the write that crosses the bound flushes (the
    /// default): it bounds what a crash can lose, at the cost of a sync
    /// the caller did not ask for.
    #[default]
    AfterWriteBuffer,
    /// Never: writes become durable only when a flush is asked for
    /// ([`crate::Volume::flush`] on this or any other handle of the store,
    /// since a flush covers the whole store), or as a side effect of the
    /// engine's own syncs (checkpoints, administrative operations). For a
    /// caller that owns the durability contract, such as a block-device
    /// server whose clients send their own flushes; a crash before the
    /// next flush may lose any number of writes made since the last one,
    /// each block reading either its old or its new contents.
    Never,
}

/// How a handle on a volume is opened ([`crate::Store::open_volume_with_options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandleOptions {
    /// Read-write (the default) or read-only.
    pub mode: OpenMode,
    /// When the handle flushes on its own. Default:
    /// [`AutoFlush::AfterWriteBuffer`]. Ignored for read-only handles.
    pub auto_flush: AutoFlush,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The volume rolled back.
    pub volume_id: VolumeId,
    /// The snapshot it now matches.
    pub snapshot_id: SnapshotId,
    /// The snapshot of the discarded state, when one was asked for.
    pub safety_snapshot: Option<SnapshotInfo>,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// False when the object was already gone (the delete still succeeded).
    pub existed: bool,
}
