//! The engine under the public API: the in-memory state and its replay
//! (`state`), the one path every change takes to the log and the disk with
//! group commit (`commit`), page claims for data writes (`pages`),
//! checkpoints (`checkpoint`), giving free space back to the file system
//! (`punch`), open and recovery (`open`) and the background thread (`maint`). `record` defines the logged changes.
//!
//! Lock order (outermost first): `checkpoint` → a volume's `admin` → its
//! `gate` → its `stripes` → `state` → `wal` → `commit`. Two exceptions are
//! safe because the later lock never waits for the earlier one: a sync that
//! finds a checkpoint due runs it inline (with `background_checkpoints`
//! off) while the caller may hold `admin`, `gate` or `stripes`, and a
//! checkpoint never takes those.
//!
//! `state`, `wal` and `commit` are never held across a data `pread` or
//! `pwrite` or an `fdatasync` (the WAL batch itself is written under
//! `wal`). Held across I/O, by design: `gate` (shared) and `stripes` for the
//! whole of a write, including its automatic flush; `admin`, and for restore
//! and delete the exclusive `gate`, through the operation's one sync and the
//! release of the old tree; `checkpoint` through a checkpoint's writes and
//! syncs, and through `check`'s second read of a node page that failed
//! (normally none). `check` and `scrub` otherwise hold `checkpoint` and
//! `state` only while they pin a view of the trees (`pin`: with no
//! checkpoint between its plan and its writes, every page a view names has
//! been written), and
//! `check` takes `state` to copy the bookkeeping of one slice of pages at
//! a time; they walk, compare and read with no lock.

pub(crate) mod background;
mod checkpoint;
mod commit;
mod maint;
mod open;
mod pages;
mod pin;
mod punch;
pub(crate) mod record;
mod state;
mod written;

pub(crate) use maint::Keeper;
pub(crate) use open::open;
pub(crate) use pin::PinnedView;
pub(crate) use state::{Entry, State};
pub use written::WriteStats;
pub(crate) use written::{Counted, WriteCounters, Wrote};

use crate::backend::{DirLock, StorageDir, StorageFile};
use crate::catalog::VolumeId;
use crate::error::{Error, Result};
use crate::options::StoreOptions;
use crate::wal::{LogGeometry, Wal};
use maint::Maintenance;
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

const DEFAULT_WRITE_BUFFER: u64 = 64 << 20;

/// Per-volume coordination that lives outside the state lock.
#[derive(Debug)]
pub(crate) struct VolRuntime {
    /// Held by administrative operations (restore, fork, delete, snapshot);
    /// a second one gets `Busy` at once.
    pub(crate) admin: Mutex<()>,
    /// Shared by every I/O in flight, exclusive for a restore or delete, so
    /// those wait for I/O to drain and block new I/O while they swap.
    pub(crate) gate: RwLock<()>,
    /// Serialises read-modify-write of partial blocks.
    pub(crate) stripes: [Mutex<()>; 64],
    /// Open read-write handles.
    pub(crate) writers: AtomicUsize,
    /// Bytes written since the last flush (for the write buffer limit).
    pub(crate) unflushed: std::sync::atomic::AtomicU64,
}

impl Default for VolRuntime {
    fn default() -> Self {
        VolRuntime {
            admin: Mutex::new(()),
            gate: RwLock::new(()),
            stripes: std::array::from_fn(|_| Mutex::new(())),
            writers: AtomicUsize::new(0),
            unflushed: Default::default(),
        }
    }
}

#[derive(Debug, Default)]
struct CommitState {
    durable: u64,
    syncing: bool,
}

#[derive(Debug)]
struct CheckpointState {
    generation: u64,
    catalog_pages: (u64, u64),
    /// The first LSN the durable checkpoint does not cover; `None` until
    /// this process has written one. Nothing changed since that checkpoint
    /// while the WAL's next LSN is still this one: every change to the
    /// trees and the catalog is logged first.
    covered_to: Option<u64>,
}

pub(crate) struct Engine {
    pub(crate) dir: Arc<dyn StorageDir>,
    pub(crate) file: Arc<dyn StorageFile>,
    _lock: DirLock,
    pub(crate) block_size: u32,
    store_id: u64,
    opts: StoreOptions,
    pub(crate) state: Mutex<State>,
    pub(crate) wal: Mutex<Wal>,
    log_geo: LogGeometry,
    commit: Mutex<CommitState>,
    commit_cv: Condvar,
    checkpoint: Mutex<CheckpointState>,
    failed: AtomicBool,
    maint: Arc<Maintenance>,
    /// Data writes begun and finished (`Volume::write_at`, up to the point
    /// their records are appended). A group-commit leader briefly waits for
    /// the writes already under way, so that their flushes share its sync
    /// instead of needing the next one.
    pub(crate) writes_started: AtomicU64,
    pub(crate) writes_finished: AtomicU64,
    /// One snapshot-policy pass at a time.
    pub(crate) policy_pass: Mutex<()>,
    /// Bytes written by kind, and syncs (see `written`).
    pub(crate) written: Arc<WriteCounters>,
    /// The data file, its writes counted as zero fill: new log segments
    /// in never-written space are zeroed through it.
    pub(crate) zero_file: Arc<dyn StorageFile>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir.describe()).finish()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.failed.load(Ordering::Acquire) {
            // A drop cannot report errors; Store::close can.
            let _ = self.close_out();
        }
    }
}

impl Engine {
    /// The random number that names this store for its lifetime.
    pub(crate) fn store_id(&self) -> u64 {
        self.store_id
    }
}

/// A volume's write buffer: as asked, or the default for 0.
pub(crate) fn write_buffer_or_default(asked: u64) -> u64 {
    if asked == 0 {
        DEFAULT_WRITE_BUFFER
    } else {
        asked
    }
}

pub(crate) fn try_admin<'a>(rt: &'a VolRuntime, id: VolumeId, op: &str) -> Result<parking_lot::MutexGuard<'a, ()>> {
    rt.admin.try_lock().ok_or_else(|| Error::Busy {
        what: format!("volume {id}"),
        reason: format!(
            "another administrative operation (restore, fork, snapshot or delete) holds it; {op} was not applied"
        ),
    })
}
