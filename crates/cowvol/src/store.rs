//! The store: opening and recovery, the in-memory state, checkpoints,
//! group commit, and the administrative operations on volumes and snapshots.
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
//! syncs, and through `check` and `scrub`.

use crate::backend::{DirLock, FileDir, StorageDir, StorageFile};
use crate::catalog::{
    now_secs, AccessMode, CatalogImage, SnapshotId, SnapshotInfo, SnapshotStatus, TemplateInfo, VolumeId, VolumeInfo,
    VolumeOrigin,
};
use crate::error::{Error, Result};
use crate::format::{self, Crc, Superblock, DATA_FILE, SUPERBLOCK_SLOTS};
use crate::options::{
    Deleted, ForkOptions, OpenMode, RestoreOptions, Restored, SnapshotOptions, StoreOptions, VolumeOptions,
};
use crate::space::{Run, Space};
use crate::tree::{self, Geometry, Mapping, Node, Root};
use crate::volume::{Target, Volume};
use crate::wal::{self, LogGeometry, Record, Wal};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Nodes released per step when freeing a deleted tree; the state lock is
/// dropped between steps so I/O on other volumes keeps flowing.
const RELEASE_STEP: usize = 64;
/// Quarantined pages that trigger a checkpoint to make them reusable.
const QUARANTINE_CHECKPOINT: usize = 1 << 16;
const DEFAULT_WRITE_BUFFER: u64 = 64 << 20;
/// Longest a group-commit leader waits for writes under way to append
/// their records before it syncs.
const GATHER_WAIT: Duration = Duration::from_micros(200);

/// A tree node with its level (0 = leaf).
type LeveledNode = (Arc<Node>, u32);

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

#[derive(Debug)]
pub(crate) struct VolState {
    pub(crate) info: VolumeInfo,
    pub(crate) root: Root,
    pub(crate) geo: Geometry,
    pub(crate) rt: Arc<VolRuntime>,
}

#[derive(Debug)]
pub(crate) struct SnapState {
    pub(crate) info: SnapshotInfo,
    pub(crate) root: Root,
    pub(crate) geo: Geometry,
}

#[derive(Debug)]
pub(crate) struct TemplState {
    pub(crate) info: TemplateInfo,
    pub(crate) root: Root,
    pub(crate) geo: Geometry,
}

/// Everything the state lock protects.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) space: Space,
    pub(crate) volumes: BTreeMap<u64, VolState>,
    pub(crate) snapshots: BTreeMap<u64, SnapState>,
    pub(crate) templates: BTreeMap<u64, TemplState>,
    pub(crate) next_volume: u64,
    pub(crate) next_snapshot: u64,
    pub(crate) next_template: u64,
    /// Trees detached by delete, restore, discard or a finished checkpoint,
    /// waiting to be released in bounded steps.
    pub(crate) garbage: Vec<Arc<Node>>,
    pub(crate) bits: u32,
    pub(crate) block_size: u64,
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
}

pub(crate) struct Inner {
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
}

/// Wakes the background thread; shared by the store and that thread, so
/// the thread can wait without keeping the store alive.
#[derive(Debug, Default)]
struct Maintenance {
    checkpoint_due: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
}

/// Held by every user-facing handle (`Store` clones and `Volume`s). When the
/// last one goes, the background thread is stopped and joined, so the store
/// closes on the dropping thread and its lock is free when the drop returns.
#[derive(Debug)]
pub(crate) struct Keeper {
    maint: Arc<Maintenance>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.maint.stop.store(true, Ordering::Release);
        self.maint.cv.notify_all();
        if let Some(t) = self.thread.lock().take() {
            // A panic on the thread has already been reported; close anyway.
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir.describe()).finish()
    }
}

/// An open store: a directory holding volumes and their snapshots.
///
/// Cheap to clone; all clones and every [`Volume`] handle share one store,
/// which checkpoints and closes when the last of them is dropped.
///
/// ```
/// use cowvol::{Store, StoreOptions, VolumeOptions, SnapshotOptions};
/// # fn main() -> cowvol::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = Store::open(dir.path(), StoreOptions::default())?;
/// let info = store.create_volume(VolumeOptions::new("disk", 1 << 20))?;
/// let vol = store.open_volume(info.id)?;
/// vol.write_at(b"hello", 0)?;
/// let snap = store.create_snapshot(info.id, SnapshotOptions::named("before"))?;
/// vol.write_at(b"HELLO", 0)?;
/// let mut buf = [0u8; 5];
/// store.open_snapshot(info.id, snap.id)?.read_at(&mut buf, 0)?;
/// assert_eq!(&buf, b"hello");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Store {
    // Field order matters: the keeper (which joins the background thread)
    // drops before the store itself.
    pub(crate) keeper: Arc<Keeper>,
    pub(crate) inner: Arc<Inner>,
}

fn random_u64() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::collections::hash_map::RandomState::new().hash_one((t, std::process::id()))
}

/// A volume's write buffer: as asked, or the default for 0.
pub(crate) fn write_buffer_or_default(asked: u64) -> u64 {
    if asked == 0 {
        DEFAULT_WRITE_BUFFER
    } else {
        asked
    }
}

pub(crate) fn validate_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!("{kind} name {name:?} must be 1 to 255 bytes without control characters")));
    }
    Ok(())
}

impl Store {
    /// Opens the store in directory `path`, creating it when it does not exist.
    ///
    /// Opening recovers from any crash: it replays the WAL after the last
    /// checkpoint, resolves every interrupted operation, and writes a new
    /// checkpoint. Cost: proportional to the metadata and the WAL length.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process (or another `Store` in this
    /// one) holds the directory; [`Error::Corruption`] when the metadata
    /// cannot be trusted; [`Error::InvalidArgument`] for a bad block size.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let path = path.as_ref();
        let dir = FileDir::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Self::open_in(Arc::new(dir), opts)
    }

    /// Opens a store in any [`StorageDir`], such as the simulated disk of
    /// [`crate::testing`].
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_in(dir: Arc<dyn StorageDir>, opts: StoreOptions) -> Result<Store> {
        let lock = dir.lock().map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Error::Locked { path: dir.describe().into() }
            } else {
                Error::io("locking the store", e)
            }
        })?;
        let inner = match dir.open_file(DATA_FILE, false) {
            Ok(file) => {
                let sb = read_superblock(&*file)?;
                recover(dir, file, lock, opts, sb)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, lock, opts)?,
            Err(e) => return Err(Error::io(format!("opening {DATA_FILE}"), e)),
        };
        let inner = Arc::new(inner);
        let thread = if inner.opts.background_checkpoints || inner.opts.policy_interval.is_some() {
            spawn_maintenance(Arc::downgrade(&inner), inner.maint.clone(), inner.opts.policy_interval)
        } else {
            None
        };
        let keeper = Arc::new(Keeper { maint: inner.maint.clone(), thread: Mutex::new(thread) });
        Ok(Store { keeper, inner })
    }

    /// Checkpoints and closes this handle of the store, reporting any error
    /// that dropping it would swallow. The store stays open while other
    /// clones or volume handles exist.
    ///
    /// # Errors
    /// I/O errors of the final checkpoint.
    pub fn close(self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// The block size the store was created with.
    pub fn block_size(&self) -> u32 {
        self.inner.block_size
    }

    /// Writes a checkpoint now: every change so far is saved outside the WAL.
    ///
    /// # Errors
    /// I/O errors; after one, the store refuses writes.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Creates an empty volume. Durable when it returns. O(1).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when a live volume has the name;
    /// [`Error::InvalidArgument`] for an empty size or bad name.
    pub fn create_volume(&self, opts: VolumeOptions) -> Result<VolumeInfo> {
        validate_name("volume", &opts.name)?;
        if opts.size_bytes == 0 {
            return Err(Error::invalid("volume size must be at least 1 byte"));
        }
        let bs = self.inner.block_size as u64;
        if opts.size_bytes.div_ceil(bs) > 1 << 48 {
            return Err(Error::invalid(format!("volume size {} is too large", opts.size_bytes)));
        }
        let inner = &self.inner;
        inner.ensure_writable()?;
        let (info, lsn) = {
            let mut st = inner.state.lock();
            st.check_volume_name_free(&opts.name)?;
            let info = VolumeInfo {
                id: VolumeId(st.next_volume),
                name: opts.name,
                size_bytes: opts.size_bytes,
                access_mode: opts.access_mode,
                cache_bytes: opts.cache_bytes,
                write_buffer_bytes: write_buffer_or_default(opts.write_buffer_bytes),
                created_at: now_secs(),
                origin: None,
                policy: None,
            };
            let lsn = inner.apply_and_log(&mut st, Record::CreateVolume(info.clone()))?;
            (info, lsn)
        };
        inner.sync_to(lsn)?;
        Ok(info)
    }

    /// Every live volume, by id.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        self.inner.state.lock().volumes.values().map(|v| v.info.clone()).collect()
    }

    /// One volume's record.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn volume(&self, id: VolumeId) -> Result<VolumeInfo> {
        Ok(self.inner.state.lock().vol(id)?.info.clone())
    }

    /// Finds a live volume by name.
    pub fn volume_by_name(&self, name: &str) -> Option<VolumeInfo> {
        let st = self.inner.state.lock();
        st.volumes.values().find(|v| v.info.name == name).map(|v| v.info.clone())
    }

    /// Opens a read-write handle on a volume.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Busy`] when the volume is
    /// read-write-once and another read-write handle is open;
    /// [`Error::ReadOnly`] for a read-only-many volume.
    pub fn open_volume(&self, id: VolumeId) -> Result<Volume> {
        self.open_volume_with(id, OpenMode::ReadWrite)
    }

    /// Opens a handle on a volume with an explicit [`OpenMode`].
    ///
    /// # Errors
    /// As [`Store::open_volume`].
    pub fn open_volume_with(&self, id: VolumeId, mode: OpenMode) -> Result<Volume> {
        let st = self.inner.state.lock();
        let v = st.vol(id)?;
        let writable = mode == OpenMode::ReadWrite;
        if writable {
            match v.info.access_mode {
                AccessMode::ReadOnlyMany => {
                    return Err(Error::ReadOnly { what: format!("volume {id} (access mode read-only-many)") })
                }
                AccessMode::ReadWriteOnce => {
                    if v.rt.writers.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
                        return Err(Error::Busy {
                            what: format!("volume {id}"),
                            reason: "it is read-write-once and another read-write handle is open".into(),
                        });
                    }
                }
                AccessMode::ReadWriteMany => {
                    v.rt.writers.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        Ok(Volume::new(
            self.clone(),
            Target::Volume(id),
            v.info.size_bytes,
            v.rt.clone(),
            writable,
            v.info.write_buffer_bytes,
        ))
    }

    /// Opens a read-only handle on a snapshot.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the snapshot does not exist or is not of
    /// `volume`; [`Error::InvalidArgument`] when it is not ready.
    pub fn open_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<Volume> {
        let st = self.inner.state.lock();
        let s = st.ready_snap_of(volume, snapshot)?;
        Ok(Volume::new(
            self.clone(),
            Target::Snapshot(snapshot),
            s.info.size_bytes,
            Arc::new(VolRuntime::default()),
            false,
            u64::MAX,
        ))
    }

    /// Deletes a volume. Its snapshots stay (they can be listed, opened and
    /// forked into new volumes); its forks are independent volumes and are
    /// untouched. Open handles fail with [`Error::NotFound`] afterwards.
    /// Frees, in bounded steps, the blocks only it referenced.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Busy`] when another administrative
    /// operation holds the volume; [`Error::Timeout`] when in-flight I/O
    /// does not drain within 30 seconds (nothing is deleted then).
    pub fn delete_volume(&self, id: VolumeId) -> Result<()> {
        let inner = &self.inner;
        inner.ensure_writable()?;
        let rt = inner.state.lock().vol(id)?.rt.clone();
        let _admin = try_admin(&rt, id, "delete")?;
        let timeout = RestoreOptions::default().timeout;
        let _gate = rt.gate.try_write_for(timeout).ok_or_else(|| Error::Timeout {
            what: format!("deleting volume {id}"),
            waited_ms: timeout.as_millis() as u64,
        })?;
        let lsn = {
            let mut st = inner.state.lock();
            st.vol(id)?;
            inner.apply_and_log(&mut st, Record::DeleteVolume { vol: id.0 })?
        };
        inner.sync_to(lsn)?;
        inner.reclaim();
        Ok(())
    }

    /// Takes a crash-consistent snapshot of a volume: it holds exactly the
    /// writes that completed before the call. Durable when it returns
    /// (one sync, shared with concurrent flushes). O(1): it shares the
    /// volume's tree root, whatever the volume's size.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::AlreadyExists`] when the volume has a
    /// snapshot of that name; [`Error::Busy`] when another administrative
    /// operation holds the volume.
    pub fn create_snapshot(&self, volume: VolumeId, opts: SnapshotOptions) -> Result<SnapshotInfo> {
        self.inner.take_snapshot(volume, opts, SnapshotStatus::Ready, now_secs())
    }

    /// The snapshots taken of a volume, oldest first. Works for a deleted
    /// volume whose snapshots remain.
    pub fn list_snapshots(&self, volume: VolumeId) -> Vec<SnapshotInfo> {
        let st = self.inner.state.lock();
        st.snapshots.values().filter(|s| s.info.volume_id == volume).map(|s| s.info.clone()).collect()
    }

    /// Every snapshot in the store, oldest first.
    pub fn all_snapshots(&self) -> Vec<SnapshotInfo> {
        self.inner.state.lock().snapshots.values().map(|s| s.info.clone()).collect()
    }

    /// One snapshot's record.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it does not exist or belongs to another volume.
    pub fn get_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<SnapshotInfo> {
        Ok(self.inner.state.lock().snap_of(volume, snapshot)?.info.clone())
    }

    /// Bytes of data that only this snapshot holds: what deleting it would
    /// free. Blocks it shares with its volume, another snapshot, a fork or a
    /// template are not counted. Cost: proportional to the part of its tree
    /// that no other tree shares. While a checkpoint is being written it
    /// holds every tree, so the figure may read low for that moment.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the snapshot does not exist.
    pub fn snapshot_exclusive_bytes(&self, snapshot: SnapshotId) -> Result<u64> {
        let st = self.inner.state.lock();
        let s = st.snapshots.get(&snapshot.0).ok_or_else(|| Error::not_found(format!("snapshot {snapshot}")))?;
        Ok(tree::exclusive_pages(&s.root, &st.space) * st.block_size)
    }

    /// Rolls a volume back to one of its snapshots by swapping its tree root:
    /// O(1) in the volume's size, atomic, durable when it returns. Open
    /// handles see the snapshot's data on their next I/O. Irreversible: the
    /// blocks only the discarded state referenced are freed.
    ///
    /// # Errors
    /// [`Error::Busy`] at once when another administrative operation holds
    /// the volume; [`Error::Timeout`] when in-flight I/O does not drain in
    /// `opts.timeout`. Both mean nothing was changed.
    pub fn restore_snapshot(&self, volume: VolumeId, snapshot: SnapshotId, opts: RestoreOptions) -> Result<Restored> {
        let inner = &self.inner;
        inner.ensure_writable()?;
        if let Some(safety) = &opts.safety_snapshot {
            validate_name("snapshot", &safety.name)?;
        }
        let rt = {
            let st = inner.state.lock();
            st.ready_snap_of(volume, snapshot)?;
            st.vol(volume)?.rt.clone()
        };
        let _admin = try_admin(&rt, volume, "restore")?;
        let _gate = rt.gate.try_write_for(opts.timeout).ok_or_else(|| Error::Timeout {
            what: format!("restoring volume {volume} to {snapshot}"),
            waited_ms: opts.timeout.as_millis() as u64,
        })?;
        let (lsn, safety) = {
            let mut st = inner.state.lock();
            st.ready_snap_of(volume, snapshot)?;
            let safety = match opts.safety_snapshot {
                Some(o) => Some(st.new_snapshot_info(volume, o, SnapshotStatus::Ready, now_secs())?),
                None => None,
            };
            let rec = Record::Restore { vol: volume.0, snap: snapshot.0, safety: safety.clone() };
            (inner.apply_and_log(&mut st, rec)?, safety)
        };
        inner.sync_to(lsn)?;
        inner.reclaim();
        Ok(Restored { volume_id: volume, snapshot_id: snapshot, safety_snapshot: safety })
    }

    /// Deletes a snapshot. Idempotent: a snapshot that is already gone is
    /// reported with `existed: false`. Never changes the live volume, its
    /// other snapshots or forks. Frees, in bounded steps after the delete is
    /// durable, the blocks only this snapshot referenced.
    ///
    /// # Errors
    /// [`Error::Held`] when the snapshot is held (nothing is deleted).
    pub fn delete_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<Deleted> {
        self.inner.delete_snapshot(volume, snapshot)
    }

    /// Creates a writable volume that shares every block with `source`'s live
    /// state, or with one of its snapshots. Writes on either side never show
    /// on the other. O(1).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::AlreadyExists`] for a taken name;
    /// [`Error::Busy`] when another administrative operation holds the source.
    pub fn fork_volume(&self, source: VolumeId, opts: ForkOptions) -> Result<VolumeInfo> {
        validate_name("volume", &opts.name)?;
        let inner = &self.inner;
        inner.ensure_writable()?;
        let rt = {
            let st = inner.state.lock();
            match opts.from_snapshot {
                Some(s) => {
                    st.ready_snap_of(source, s)?;
                    st.volumes.get(&source.0).map(|v| v.rt.clone())
                }
                None => Some(st.vol(source)?.rt.clone()),
            }
        };
        let _admin = rt.as_ref().map(|rt| try_admin(rt, source, "fork")).transpose()?;
        let (info, lsn) = {
            let mut st = inner.state.lock();
            st.check_volume_name_free(&opts.name)?;
            let (size, wbuf) = match opts.from_snapshot {
                Some(s) => {
                    let s = st.ready_snap_of(source, s)?;
                    (s.info.size_bytes, DEFAULT_WRITE_BUFFER)
                }
                None => {
                    let v = st.vol(source)?;
                    (v.info.size_bytes, v.info.write_buffer_bytes)
                }
            };
            let info = VolumeInfo {
                id: VolumeId(st.next_volume),
                name: opts.name,
                size_bytes: size,
                access_mode: opts.access_mode,
                cache_bytes: 0,
                write_buffer_bytes: wbuf,
                created_at: now_secs(),
                origin: Some(match opts.from_snapshot {
                    Some(s) => VolumeOrigin::Snapshot(source, s),
                    None => VolumeOrigin::Volume(source),
                }),
                policy: None,
            };
            let lsn = inner.apply_and_log(&mut st, Record::Fork(info.clone()))?;
            (info, lsn)
        };
        inner.sync_to(lsn)?;
        Ok(info)
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

impl State {
    pub(crate) fn vol(&self, id: VolumeId) -> Result<&VolState> {
        self.volumes.get(&id.0).ok_or_else(|| Error::not_found(format!("volume {id}")))
    }

    pub(crate) fn snap_of(&self, volume: VolumeId, snap: SnapshotId) -> Result<&SnapState> {
        match self.snapshots.get(&snap.0) {
            Some(s) if s.info.volume_id == volume => Ok(s),
            _ => Err(Error::not_found(format!("snapshot {snap} of volume {volume}"))),
        }
    }

    /// A snapshot of `volume` whose data can be used (status `Ready`).
    pub(crate) fn ready_snap_of(&self, volume: VolumeId, snap: SnapshotId) -> Result<&SnapState> {
        let s = self.snap_of(volume, snap)?;
        if !s.info.is_ready() {
            return Err(Error::invalid(format!(
                "snapshot {snap} ({:?}) is {}, not ready: it holds no data",
                s.info.name, s.info.status
            )));
        }
        Ok(s)
    }

    /// The record of a new snapshot of `volume`, checking that the volume
    /// exists and that the name is free among its snapshots.
    pub(crate) fn new_snapshot_info(
        &mut self,
        volume: VolumeId,
        opts: SnapshotOptions,
        status: SnapshotStatus,
        created_at: u64,
    ) -> Result<SnapshotInfo> {
        let v = self.vol(volume)?;
        let (size_bytes, volume_name) = (v.info.size_bytes, v.info.name.clone());
        if self.snapshots.values().any(|s| s.info.volume_id == volume && s.info.name == opts.name) {
            return Err(Error::AlreadyExists { what: format!("snapshot {:?} of volume {volume}", opts.name) });
        }
        let id = SnapshotId(self.next_snapshot);
        // Reserve the id now: a group takes several before any is applied.
        self.next_snapshot += 1;
        Ok(SnapshotInfo {
            id,
            volume_id: volume,
            volume_name,
            name: opts.name,
            description: opts.description,
            size_bytes,
            created_at,
            owner: opts.owner,
            labels: opts.labels,
            kind: opts.kind,
            status,
            held: false,
        })
    }

    pub(crate) fn check_volume_name_free(&self, name: &str) -> Result<()> {
        if self.volumes.values().any(|v| v.info.name == name) {
            return Err(Error::AlreadyExists { what: format!("volume {name:?}") });
        }
        Ok(())
    }

    fn geometry(&self, size_bytes: u64) -> Geometry {
        Geometry::for_blocks(self.bits, size_bytes.div_ceil(self.block_size))
    }

    /// Applies one logged change to the in-memory state. The same code runs
    /// for a live operation (before its record is appended) and for replay,
    /// so recovery rebuilds exactly what the live path built.
    pub(crate) fn apply(&mut self, rec: &Record) -> Result<()> {
        let missing = |what: String| Error::corruption("WAL", "replay", format!("{what} does not exist"));
        match rec {
            Record::Map { vol, lblock, page, crcs } => {
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                for (i, &crc) in crcs.iter().enumerate() {
                    let m = Mapping { page: page + i as u64, crc };
                    tree::insert(&mut v.root, v.geo, lblock + i as u64, m, &mut self.space);
                }
            }
            Record::Unmap { vol, lblock, count } => {
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                tree::remove_range(&mut v.root, v.geo, *lblock, lblock + count, &mut self.space, &mut self.garbage);
            }
            Record::CreateVolume(info) => self.insert_volume(info.clone(), None),
            Record::Fork(info) => {
                let root = match info.origin.ok_or_else(|| missing("fork origin".into()))? {
                    VolumeOrigin::Volume(v) => self.volumes.get(&v.0).map(|v| v.root.clone()),
                    VolumeOrigin::Snapshot(_, s) => self.snapshots.get(&s.0).map(|s| s.root.clone()),
                    VolumeOrigin::Template(t) => self.templates.get(&t.0).map(|t| t.root.clone()),
                };
                let root = root.ok_or_else(|| missing(format!("the origin of volume {}", info.id)))?;
                self.insert_volume(info.clone(), root);
            }
            Record::DeleteVolume { vol } => {
                let v = self.volumes.remove(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                self.garbage.extend(v.root);
                // A two-step snapshot of it can never be committed now.
                for s in self.snapshots.values_mut().filter(|s| s.info.volume_id.0 == *vol) {
                    if s.info.status == SnapshotStatus::Creating {
                        s.info.status = SnapshotStatus::Failed;
                    }
                }
            }
            Record::CreateSnapshot(info) => self.insert_snapshot(info)?,
            Record::CreateSnapshots(list) => {
                for info in list {
                    self.insert_snapshot(info)?;
                }
            }
            Record::CommitSnapshot { snap } => {
                let s = self.snapshots.get(snap).ok_or_else(|| missing(format!("snapshot {snap}")))?;
                let v = self.volumes.get(&s.info.volume_id.0).ok_or_else(|| missing(format!("volume of {snap}")))?;
                let (root, geo) = (v.root.clone(), v.geo);
                let s = self.snapshots.get_mut(snap).ok_or_else(|| missing(format!("snapshot {snap}")))?;
                s.info.status = SnapshotStatus::Ready;
                // Creating snapshots hold no tree, so nothing is replaced.
                self.garbage.extend(std::mem::replace(&mut s.root, root));
                s.geo = geo;
            }
            Record::UpdateSnapshot(info) => {
                let s = self.snapshots.get_mut(&info.id.0).ok_or_else(|| missing(format!("snapshot {}", info.id)))?;
                s.info = info.clone();
            }
            Record::CreateTemplate(info) => {
                let (root, geo) = {
                    let s = self.snapshots.get(&info.source.1 .0);
                    let s = s.ok_or_else(|| missing(format!("snapshot {}", info.source.1)))?;
                    (s.root.clone(), s.geo)
                };
                self.next_template = self.next_template.max(info.id.0 + 1);
                self.templates.insert(info.id.0, TemplState { info: info.clone(), root, geo });
            }
            Record::DeleteTemplate { tmpl } => {
                let t = self.templates.remove(tmpl).ok_or_else(|| missing(format!("template {tmpl}")))?;
                self.garbage.extend(t.root);
            }
            Record::SetPolicy { vol, policy } => {
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                v.info.policy = *policy;
            }
            Record::DeleteSnapshot { snap } => {
                let s = self.snapshots.remove(snap).ok_or_else(|| missing(format!("snapshot {snap}")))?;
                self.garbage.extend(s.root);
            }
            Record::Restore { vol, snap, safety } => {
                if let Some(info) = safety {
                    self.insert_snapshot(info)?;
                }
                let root = self.snapshots.get(snap).ok_or_else(|| missing(format!("snapshot {snap}")))?.root.clone();
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                let old = std::mem::replace(&mut v.root, root);
                self.garbage.extend(old);
            }
        }
        Ok(())
    }

    /// Adds a snapshot: a `Ready` one shares its volume's tree as it is
    /// now; any other holds no tree.
    fn insert_snapshot(&mut self, info: &SnapshotInfo) -> Result<()> {
        let v = self.volumes.get(&info.volume_id.0).ok_or_else(|| {
            Error::corruption("WAL", "replay", format!("volume {} of a new snapshot does not exist", info.volume_id))
        })?;
        let root = if info.is_ready() { v.root.clone() } else { None };
        let snap = SnapState { info: info.clone(), root, geo: v.geo };
        self.next_snapshot = self.next_snapshot.max(info.id.0 + 1);
        self.snapshots.insert(info.id.0, snap);
        Ok(())
    }

    fn insert_volume(&mut self, info: VolumeInfo, root: Root) {
        let geo = self.geometry(info.size_bytes);
        self.next_volume = self.next_volume.max(info.id.0 + 1);
        self.volumes.insert(info.id.0, VolState { info, root, geo, rt: Arc::new(VolRuntime::default()) });
    }

    /// Every tree root with its geometry: volumes, snapshots, and garbage
    /// not yet released.
    pub(crate) fn all_roots(&self) -> Vec<(&Node, u32)> {
        let mut v: Vec<(&Node, u32)> = Vec::new();
        v.extend(self.volumes.values().filter_map(|x| x.root.as_deref().map(|r| (r, x.geo.levels - 1))));
        v.extend(self.snapshots.values().filter_map(|x| x.root.as_deref().map(|r| (r, x.geo.levels - 1))));
        v.extend(self.templates.values().filter_map(|x| x.root.as_deref().map(|r| (r, x.geo.levels - 1))));
        v
    }
}

impl Inner {
    pub(crate) fn ensure_writable(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Io {
                during: "accepting a write".into(),
                source: std::io::Error::other(
                    "an earlier write or sync of the store failed; it refuses writes until reopened",
                ),
            });
        }
        Ok(())
    }

    /// Claims pages for a data write. On a full disk, a checkpoint can turn
    /// freed (quarantined) pages into free ones: run it and try once more.
    pub(crate) fn claim_pages(&self, n: u64) -> Result<Vec<Run>> {
        let (first, zero) = {
            let mut st = self.state.lock();
            let runs = st.space.claim(n);
            (runs, st.space.take_unwritten(n))
        };
        self.zero_pages(zero);
        match first {
            Err(Error::NoSpace { .. }) if self.has_reclaimable_pages() => {
                self.checkpoint()?;
                self.state.lock().space.claim(n)
            }
            other => other,
        }
    }

    /// Fills free pages from `Space::take_unwritten` with zeroes, with no
    /// lock held, and frees them again. Best effort: a failed write leaves
    /// the pages as they were, and nothing reads them before they are
    /// claimed and written.
    fn zero_pages(&self, runs: Vec<Run>) {
        if runs.is_empty() {
            return;
        }
        let bs = self.block_size as u64;
        let data_start = format::data_start(self.block_size);
        let longest = runs.iter().map(|r| r.len).max().unwrap_or(0);
        let zeroes = vec![0u8; (longest * bs) as usize];
        for r in &runs {
            let _ = self.file.write_at(&zeroes[..(r.len * bs) as usize], data_start + r.start * bs);
        }
        self.state.lock().space.unclaim(&runs);
    }

    fn has_reclaimable_pages(&self) -> bool {
        let st = self.state.lock();
        !st.space.quarantine.is_empty() || !st.space.obsolete.is_empty()
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Makes the store drop like a crashed process (see `testing::abandon`).
    pub(crate) fn abandon(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Holds off checkpoints (for `check`).
    pub(crate) fn checkpoint_guard(&self) -> impl Drop + '_ {
        self.checkpoint.lock()
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.wal.lock().poison();
    }

    /// Applies a change in memory and appends its record to the WAL, keeping
    /// spare WAL segments topped up. Returns the LSN that must be durable
    /// for the change to be (pass it to [`Inner::sync_to`]).
    pub(crate) fn apply_and_log(&self, st: &mut State, rec: Record) -> Result<u64> {
        self.apply_and_log_many(st, std::slice::from_ref(&rec))
    }

    pub(crate) fn apply_and_log_many(&self, st: &mut State, recs: &[Record]) -> Result<u64> {
        // Measure first: nothing is applied unless every record can be logged.
        let mut incoming = 0;
        let mut wal = self.wal.lock();
        for rec in recs {
            let len = rec.encoded_len();
            if !wal.fits(len) {
                return Err(Error::invalid(
                    "the change is too large for one WAL record (a name, description or label is too long)",
                ));
            }
            incoming += len;
        }
        while wal.spares.len() < wal.spares_needed(incoming) {
            let page = self.log_geo.new_segment(&mut st.space, &*self.file)?;
            wal.spares.push(page);
        }
        for (i, rec) in recs.iter().enumerate() {
            let result = st.apply(rec).and_then(|()| wal.append(rec).map(drop));
            if let Err(e) = result {
                if i > 0 || !matches!(e, Error::Corruption { .. }) {
                    // The in-memory state changed but the log did not follow:
                    // the store can no longer promise anything after this.
                    drop(wal);
                    self.fail();
                }
                return Err(e);
            }
        }
        let lsn = wal.next_lsn();
        let want_checkpoint = wal.bytes_since_checkpoint > self.opts.checkpoint_wal_bytes
            || st.space.quarantine.len() > QUARANTINE_CHECKPOINT;
        drop(wal);
        if want_checkpoint {
            self.request_checkpoint();
        }
        Ok(lsn)
    }

    /// Waits until every record below `lsn` is durable. Concurrent callers
    /// share one sync: the first becomes the leader, writes the open batch
    /// and syncs; the others wait and are covered by it (group commit).
    pub(crate) fn sync_to(&self, lsn: u64) -> Result<()> {
        let mut c = self.commit.lock();
        loop {
            self.ensure_writable()?;
            if c.durable >= lsn {
                break;
            }
            if c.syncing {
                self.commit_cv.wait(&mut c);
                continue;
            }
            c.syncing = true;
            drop(c);
            self.gather_writes();
            let result = self.sync_once();
            c = self.commit.lock();
            c.syncing = false;
            self.commit_cv.notify_all();
            match result {
                Ok(end) => c.durable = c.durable.max(end),
                Err(e) => return Err(e),
            }
        }
        drop(c);
        self.run_inline_checkpoint_if_due()
    }

    /// Lets the data writes that are under way (their `pwrite` done or in
    /// progress, their record not yet appended) join the sync about to
    /// start: without this, concurrent writers that each flush alternate
    /// between syncs and two threads get no more syncs shared than one.
    /// Bounded by [`GATHER_WAIT`]; no lock is held while waiting.
    fn gather_writes(&self) {
        let started = self.writes_started.load(Ordering::Acquire);
        if self.writes_finished.load(Ordering::Acquire) >= started {
            return;
        }
        let deadline = std::time::Instant::now() + GATHER_WAIT;
        while self.writes_finished.load(Ordering::Acquire) < started && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
    }

    /// Deletes a snapshot (see [`Store::delete_snapshot`]).
    pub(crate) fn delete_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<Deleted> {
        let inner = self;
        inner.ensure_writable()?;
        let lsn = {
            let mut st = inner.state.lock();
            match st.snapshots.get(&snapshot.0) {
                Some(s) if s.info.volume_id == volume && s.info.held => {
                    return Err(Error::Held { what: format!("snapshot {snapshot} ({:?})", s.info.name) })
                }
                Some(s) if s.info.volume_id == volume => {}
                _ => return Ok(Deleted { existed: false }),
            }
            inner.apply_and_log(&mut st, Record::DeleteSnapshot { snap: snapshot.0 })?
        };
        inner.sync_to(lsn)?;
        inner.reclaim();
        Ok(Deleted { existed: true })
    }

    /// Takes (or, with status `Creating`, registers) one snapshot of
    /// `volume` in one logged step, durable when it returns.
    pub(crate) fn take_snapshot(
        &self,
        volume: VolumeId,
        opts: SnapshotOptions,
        status: SnapshotStatus,
        created_at: u64,
    ) -> Result<SnapshotInfo> {
        validate_name("snapshot", &opts.name)?;
        self.ensure_writable()?;
        let rt = self.state.lock().vol(volume)?.rt.clone();
        let _admin = try_admin(&rt, volume, "snapshot")?;
        let (info, lsn) = {
            let mut st = self.state.lock();
            let info = st.new_snapshot_info(volume, opts, status, created_at)?;
            let lsn = self.apply_and_log(&mut st, Record::CreateSnapshot(info.clone()))?;
            (info, lsn)
        };
        self.sync_to(lsn)?;
        Ok(info)
    }

    fn sync_once(&self) -> Result<u64> {
        let end = {
            let mut wal = self.wal.lock();
            if let Err(e) = wal.write_out() {
                drop(wal);
                self.fail();
                return Err(e);
            }
            wal.next_lsn()
        };
        if let Err(e) = self.file.sync() {
            self.fail();
            return Err(Error::io("syncing the data file", e));
        }
        self.wal.lock().mark_durable(end);
        Ok(end)
    }

    /// Flushes: every change made before the call is durable when it returns.
    pub(crate) fn flush(&self) -> Result<()> {
        let lsn = self.wal.lock().next_lsn();
        self.sync_to(lsn)
    }

    fn request_checkpoint(&self) {
        *self.maint.checkpoint_due.lock() = true;
        self.maint.cv.notify_all();
    }

    fn run_inline_checkpoint_if_due(&self) -> Result<()> {
        if self.opts.background_checkpoints {
            return Ok(());
        }
        let due = std::mem::take(&mut *self.maint.checkpoint_due.lock());
        if due {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Releases garbage trees in bounded steps, dropping the state lock
    /// between steps.
    pub(crate) fn reclaim(&self) {
        loop {
            let mut st = self.state.lock();
            let State { garbage, space, .. } = &mut *st;
            if tree::release_some(garbage, space, RELEASE_STEP) {
                break;
            }
        }
    }

    /// Writes a checkpoint: every node changed since the last one, then the
    /// catalog, a sync, the superblock in the other slot, and a sync. Then
    /// the pages the previous checkpoint needed and this one does not are
    /// freed.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let mut ck = self.checkpoint.lock();
        self.ensure_writable()?;
        let result = self.checkpoint_locked(&mut ck);
        if result.is_err() {
            self.fail();
        }
        result
    }

    fn checkpoint_locked(&self, ck: &mut CheckpointState) -> Result<()> {
        struct Captured {
            roots: Vec<(Arc<Node>, u32)>,
            volumes: Vec<(VolumeInfo, Option<Arc<Node>>)>,
            snapshots: Vec<(SnapshotInfo, Option<Arc<Node>>)>,
            templates: Vec<(TemplateInfo, Option<Arc<Node>>)>,
            next_volume: u64,
            next_snapshot: u64,
            next_template: u64,
        }
        let (cap, log_start, retired, quarantine, obsolete, placed) = {
            let mut st = self.state.lock();
            let mut wal = self.wal.lock();
            let (log_start, retired) = wal.checkpoint_start()?;
            let mut roots = Vec::new();
            let volumes = st
                .volumes
                .values()
                .map(|v| {
                    roots.extend(v.root.clone().map(|r| (r, v.geo.levels - 1)));
                    (v.info.clone(), v.root.clone())
                })
                .collect();
            let snapshots = st
                .snapshots
                .values()
                .map(|s| {
                    roots.extend(s.root.clone().map(|r| (r, s.geo.levels - 1)));
                    (s.info.clone(), s.root.clone())
                })
                .collect();
            let templates = st
                .templates
                .values()
                .map(|t| {
                    roots.extend(t.root.clone().map(|r| (r, t.geo.levels - 1)));
                    (t.info.clone(), t.root.clone())
                })
                .collect();
            let cap = Captured {
                roots,
                volumes,
                snapshots,
                templates,
                next_volume: st.next_volume,
                next_snapshot: st.next_snapshot,
                next_template: st.next_template,
            };
            let q = std::mem::take(&mut st.space.quarantine);
            let o = std::mem::take(&mut st.space.obsolete);
            let placed = Self::assign_node_pages(&mut st, &cap.roots)?;
            (cap, log_start, retired, q, o, placed)
        };
        // Captured nodes are shared with the capture, so no writer changes
        // them in place while they are written out below.
        self.write_nodes(&placed.0, &placed.1)?;
        // Drop these references while the capture still holds every node.
        drop(placed);
        let image = CatalogImage {
            next_volume: cap.next_volume,
            next_snapshot: cap.next_snapshot,
            next_template: cap.next_template,
            volumes: with_root_pages(&cap.volumes),
            snapshots: with_root_pages(&cap.snapshots),
            templates: with_root_pages(&cap.templates),
        };
        let bytes = image.encode();
        let bs = self.block_size as u64;
        let npages = (bytes.len() as u64).div_ceil(bs).max(1);
        let (cat_page, offset) = {
            let mut st = self.state.lock();
            let p = st.space.alloc_contiguous(npages)?;
            for q in p..p + npages {
                st.space.set_reserved(q, true);
            }
            (p, st.space.offset_of(p))
        };
        self.file.write_at(&bytes, offset).map_err(|e| Error::io("writing the catalog", e))?;
        self.file.sync().map_err(|e| Error::io("syncing a checkpoint", e))?;
        let sb = Superblock {
            block_size: self.block_size,
            fanout_bits: format::fanout_bits_for(self.block_size),
            generation: ck.generation + 1,
            store_id: self.store_id,
            catalog_page: cat_page,
            catalog_len: bytes.len() as u64,
            catalog_crc: Crc::of(&bytes).0,
            log: log_start,
        };
        let slot = SUPERBLOCK_SLOTS[(sb.generation % 2) as usize];
        self.file.write_at(&sb.encode(), slot).map_err(|e| Error::io("writing the superblock", e))?;
        self.file.sync().map_err(|e| Error::io("syncing the superblock", e))?;
        {
            let mut c = self.commit.lock();
            c.durable = c.durable.max(log_start.lsn);
        }
        self.wal.lock().mark_durable(log_start.lsn);
        let (old_page, old_n) = std::mem::replace(&mut ck.catalog_pages, (cat_page, npages));
        self.state.lock().space.catalog_reserve = 2 * npages + 1;
        ck.generation = sb.generation;
        let seg_pages = self.log_geo.segment_pages;
        let mut meta = obsolete;
        meta.extend(old_page..old_page + old_n);
        for s in retired {
            meta.extend(s..s + seg_pages);
        }
        let mut st = self.state.lock();
        st.space.release(quarantine, meta);
        st.garbage.extend(cap.roots.into_iter().map(|(r, _)| r));
        drop(cap.volumes);
        drop(cap.snapshots);
        drop(cap.templates);
        drop(st);
        self.reclaim();
        Ok(())
    }

    /// Gives every captured node without a disk address a page and writes it.
    /// Gives every captured node without a disk address a page (under the
    /// state lock, at capture, so the pages come out of the metadata
    /// reserve before any write can take them).
    fn assign_node_pages(st: &mut State, roots: &[LeveledNode]) -> Result<(Vec<LeveledNode>, Vec<Run>)> {
        let mut dirty: Vec<(Arc<Node>, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<(&Arc<Node>, u32)> = roots.iter().map(|(r, l)| (r, *l)).collect();
        while let Some((n, level)) = stack.pop() {
            if n.addr() != 0 || !seen.insert(Arc::as_ptr(n)) {
                continue;
            }
            dirty.push((n.clone(), level));
            if let tree::Body::Interior(children) = &n.body {
                stack.extend(children.iter().flatten().map(|c| (c, level - 1)));
            }
        }
        let runs = if dirty.is_empty() { Vec::new() } else { st.space.alloc(dirty.len() as u64)? };
        for r in &runs {
            for p in r.start..r.start + r.len {
                st.space.set_reserved(p, true);
            }
        }
        for ((n, _), p) in dirty.iter().zip(runs.iter().flat_map(|r| r.start..r.start + r.len)) {
            n.set_addr(p);
        }
        st.space.dirty_nodes = 0;
        Ok((dirty, runs))
    }

    /// Writes the nodes `assign_node_pages` placed, one `pwrite` per run.
    fn write_nodes(&self, dirty: &[LeveledNode], runs: &[Run]) -> Result<()> {
        let bs = self.block_size as usize;
        let mut i = 0;
        for r in runs {
            let mut buf = Vec::with_capacity(r.len as usize * bs);
            for p in r.start..r.start + r.len {
                let (n, level) = &dirty[i];
                buf.extend_from_slice(&tree::encode_node(n, *level, p, bs));
                i += 1;
            }
            let off = format::data_start(self.block_size) + r.start * bs as u64;
            self.file.write_at(&buf, off).map_err(|e| Error::io("writing tree nodes", e))?;
        }
        Ok(())
    }
}

/// Catalog entries with the page of their tree's root (0 for none).
fn with_root_pages<T: Clone>(items: &[(T, Option<Arc<Node>>)]) -> Vec<(T, u64)> {
    items.iter().map(|(i, r)| (i.clone(), r.as_ref().map_or(0, |r| r.addr()))).collect()
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.failed.load(Ordering::Acquire) {
            // A drop cannot report errors; Store::close can.
            let _ = self.checkpoint();
        }
    }
}

/// The background thread: checkpoints when asked, and runs snapshot
/// policies every `policies` (when set) with the wall clock.
fn spawn_maintenance(
    weak: Weak<Inner>,
    maint: Arc<Maintenance>,
    policies: Option<Duration>,
) -> Option<std::thread::JoinHandle<()>> {
    let tick = policies.map_or(Duration::from_millis(500), |p| p.min(Duration::from_millis(500)));
    let spawned = std::thread::Builder::new().name("cowvol-maint".into()).spawn(move || {
        let mut last_policy_run = std::time::Instant::now();
        loop {
            let due = {
                let mut m = maint.checkpoint_due.lock();
                if !*m && !maint.stop.load(Ordering::Acquire) {
                    maint.cv.wait_for(&mut m, tick);
                }
                std::mem::take(&mut *m)
            };
            if maint.stop.load(Ordering::Acquire) {
                return;
            }
            let policies_due = policies.is_some_and(|p| last_policy_run.elapsed() >= p);
            if !due && !policies_due {
                continue;
            }
            let Some(inner) = weak.upgrade() else { return };
            if due {
                // Errors poison the store; the next operation reports them.
                let _ = inner.checkpoint();
            }
            if policies_due {
                last_policy_run = std::time::Instant::now();
                // Failures are per volume and retried on the next pass.
                let _ = inner.run_policies(now_secs());
            }
        }
    });
    // Without the thread, checkpoints still happen inline at close; a
    // store that cannot spawn threads is only slower to reopen.
    spawned.ok()
}

/// Reads both superblock slots and returns the valid one with the higher
/// generation. A store file exists only once its first superblock was
/// durable (creation renames it into place), so finding none is corruption.
fn read_superblock(file: &dyn StorageFile) -> Result<Superblock> {
    let mut best: Option<Superblock> = None;
    let mut errors = Vec::new();
    for slot in SUPERBLOCK_SLOTS {
        let mut buf = vec![0u8; format::SUPERBLOCK_LEN];
        file.read_at(&mut buf, slot).map_err(|e| Error::io("reading the superblock", e))?;
        match Superblock::decode(&buf) {
            Ok(Some(sb)) => {
                if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                    best = Some(sb);
                }
            }
            Ok(None) => {}
            Err(Error::Corruption { detail, .. }) => {
                errors.push(Error::corruption("superblock", format!("{DATA_FILE} byte offset {slot}"), detail))
            }
            Err(e) => errors.push(e),
        }
    }
    match best {
        Some(sb) => Ok(sb),
        None => Err(errors.into_iter().next().unwrap_or_else(|| {
            Error::corruption(
                "superblock",
                format!("{DATA_FILE} offsets 0 and 4096"),
                "neither slot holds a superblock",
            )
        })),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one constructor shared by create and recover; each argument is a distinct piece of opened state"
)]
fn new_inner(
    dir: Arc<dyn StorageDir>,
    file: Arc<dyn StorageFile>,
    lock: DirLock,
    opts: StoreOptions,
    block_size: u32,
    store_id: u64,
    state: State,
    generation: u64,
    catalog_pages: (u64, u64),
) -> Result<Inner> {
    let log_geo = LogGeometry::new(format::data_start(block_size), block_size);
    let mut state = state;
    let first = log_geo.new_segment(&mut state.space, &*file)?;
    let next = log_geo.new_segment(&mut state.space, &*file)?;
    let wal = Wal::start(file.clone(), log_geo, random_u64(), first, next, 1)?;
    Ok(Inner {
        dir,
        file,
        _lock: lock,
        block_size,
        store_id,
        opts,
        state: Mutex::new(state),
        wal: Mutex::new(wal),
        log_geo,
        commit: Mutex::new(CommitState::default()),
        commit_cv: Condvar::new(),
        checkpoint: Mutex::new(CheckpointState { generation, catalog_pages }),
        failed: AtomicBool::new(false),
        maint: Arc::new(Maintenance::default()),
        writes_started: AtomicU64::new(0),
        writes_finished: AtomicU64::new(0),
        policy_pass: Mutex::new(()),
    })
}

fn empty_state(file: Arc<dyn StorageFile>, block_size: u32, npages: u64) -> State {
    let mut space = Space::new(file, block_size, format::data_start(block_size), npages);
    space.segment_pages = LogGeometry::new(format::data_start(block_size), block_size).segment_pages;
    State {
        space,
        volumes: BTreeMap::new(),
        snapshots: BTreeMap::new(),
        templates: BTreeMap::new(),
        next_volume: 1,
        next_snapshot: 1,
        next_template: 1,
        garbage: Vec::new(),
        bits: format::fanout_bits_for(block_size),
        block_size: block_size as u64,
    }
}

/// Name the data file has until its first checkpoint is durable, so that a
/// crash during creation leaves no half-made store behind.
const NEW_DATA_FILE: &str = "cowvol.dat.new";

fn create(dir: Arc<dyn StorageDir>, lock: DirLock, opts: StoreOptions) -> Result<Inner> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(4096..=1 << 20).contains(&bs) {
        return Err(Error::invalid(format!("block size {bs} must be a power of two from 4096 to 1048576")));
    }
    let io = |what: &'static str| move |e| Error::io(what, e);
    dir.remove(NEW_DATA_FILE).map_err(io("removing an unfinished store file"))?;
    let file = dir.open_file(NEW_DATA_FILE, true).map_err(io("creating the data file"))?;
    let state = empty_state(file.clone(), bs, 1);
    let inner = new_inner(dir.clone(), file, lock, opts, bs, random_u64(), state, 0, (0, 0))?;
    inner.checkpoint()?;
    dir.rename(NEW_DATA_FILE, DATA_FILE).map_err(io("naming the data file"))?;
    dir.sync_dir().map_err(io("syncing the store directory"))?;
    Ok(inner)
}

fn recover(
    dir: Arc<dyn StorageDir>,
    file: Arc<dyn StorageFile>,
    lock: DirLock,
    opts: StoreOptions,
    sb: Superblock,
) -> Result<Inner> {
    let bs = sb.block_size;
    let bsz = bs as u64;
    let ds = format::data_start(bs);
    let len = file.len().map_err(|e| Error::io("reading the data file length", e))?;
    let npages = len.saturating_sub(ds) / bsz;
    let mut st = empty_state(file.clone(), bs, npages);
    let cat_pages = sb.catalog_len.div_ceil(bsz).max(1);
    if sb.catalog_page == 0 || sb.catalog_page + cat_pages > npages || sb.catalog_len > 1 << 32 {
        return Err(Error::corruption(
            "superblock",
            "catalog pointer",
            format!("catalog at page {} ({} bytes) lies outside the file", sb.catalog_page, sb.catalog_len),
        ));
    }
    let mut cat = vec![0u8; sb.catalog_len as usize];
    file.read_at(&mut cat, st.space.offset_of(sb.catalog_page)).map_err(|e| Error::io("reading the catalog", e))?;
    let image = CatalogImage::decode(&cat, sb.catalog_crc, &format!("{DATA_FILE} page {}", sb.catalog_page))?;
    for p in sb.catalog_page..sb.catalog_page + cat_pages {
        st.space.set_reserved(p, true);
    }
    // Load every tree, sharing nodes that several trees reference.
    let mut loaded: HashMap<u64, (Arc<Node>, u32)> = HashMap::new();
    st.next_volume = image.next_volume.max(1);
    st.next_snapshot = image.next_snapshot.max(1);
    for (info, root) in image.volumes {
        let geo = st.geometry(info.size_bytes);
        let root = load_tree(&*file, &mut st.space, &mut loaded, root, geo)?;
        st.insert_volume(info, root);
    }
    for (info, root) in image.snapshots {
        let geo = st.geometry(info.size_bytes);
        let root = load_tree(&*file, &mut st.space, &mut loaded, root, geo)?;
        st.next_snapshot = st.next_snapshot.max(info.id.0 + 1);
        st.snapshots.insert(info.id.0, SnapState { info, root, geo });
    }
    st.next_template = image.next_template.max(1);
    for (info, root) in image.templates {
        let geo = st.geometry(info.size_bytes);
        let root = load_tree(&*file, &mut st.space, &mut loaded, root, geo)?;
        st.next_template = st.next_template.max(info.id.0 + 1);
        st.templates.insert(info.id.0, TemplState { info, root, geo });
    }
    drop(loaded);
    // Read the log first so its segments count as metadata below.
    let log_geo = LogGeometry::new(ds, bs);
    let log = wal::read_log(&*file, log_geo, sb.log, npages)?;
    for &s in &log.segments {
        for p in s..(s + log_geo.segment_pages).min(npages) {
            st.space.set_reserved(p, true);
        }
    }
    // Reference counts are what the trees reference, recomputed, never read.
    let mut counts: Vec<(u64, u32)> = Vec::new();
    tree::visit_unique(st.all_roots(), |n, _| {
        if let tree::Body::Leaf(entries) = &n.body {
            counts.extend(entries.iter().map(|e| (e.page, 1)));
        }
    });
    for (p, _) in counts {
        if st.space.is_reserved(p) {
            return Err(Error::corruption("tree", format!("page {p}"), "a data page is also metadata"));
        }
        let c = st.space.refcount(p);
        st.space.set_refcount(p, c + 1);
    }
    // Replay the WAL.
    let mut records = log.records;
    let keep = first_unverifiable(&*file, &st, &records, log.durable_lsn, npages)?;
    records.truncate(keep);
    for (lsn, rec) in &records {
        validate_record(&st, rec, npages).map_err(|e| match e {
            Error::Corruption { detail, .. } => Error::corruption("WAL", format!("record {lsn}"), detail),
            e => e,
        })?;
        st.apply(rec)?;
    }
    // A snapshot still `Creating` lost its moment: it fails, and the
    // checkpoint below makes that durable before open returns.
    for s in st.snapshots.values_mut() {
        if s.info.status == SnapshotStatus::Creating {
            s.info.status = SnapshotStatus::Failed;
        }
    }
    {
        let State { garbage, space, .. } = &mut st;
        while !tree::release_some(garbage, space, usize::MAX) {}
    }
    // Pages freed during replay stay out of the free map until the
    // checkpoint below is durable; the old log's pages are freed then too.
    let quarantined = st.space.quarantine.clone();
    for &p in &quarantined {
        st.space.set_reserved(p, true);
    }
    st.space.rebuild_free_map();
    for &p in &quarantined {
        st.space.set_reserved(p, false);
    }
    for &s in &log.segments {
        for p in s..(s + log_geo.segment_pages).min(npages) {
            st.space.obsolete(p);
        }
    }
    let inner = new_inner(dir, file, lock, opts, bs, sb.store_id, st, sb.generation, (sb.catalog_page, cat_pages))?;
    inner.checkpoint()?;
    Ok(inner)
}

/// Checks that a record only names pages inside the file, before replay
/// trusts it.
fn validate_record(st: &State, rec: &Record, npages: u64) -> Result<()> {
    if let Record::Map { page, crcs, vol, lblock } = rec {
        let end = page + crcs.len() as u64;
        if *page == 0 || end > npages {
            return Err(Error::corruption("WAL", "map record", format!("pages {page}..{end} lie outside the file")));
        }
        if (*page..end).any(|p| st.space.is_reserved(p)) {
            return Err(Error::corruption("WAL", "map record", format!("pages {page}..{end} overlap metadata")));
        }
        if let Some(v) = st.volumes.get(vol) {
            if (lblock + crcs.len() as u64) * st.block_size > v.info.size_bytes.next_multiple_of(st.block_size) {
                return Err(Error::corruption("WAL", "map record", "blocks beyond the volume's end"));
            }
        }
    }
    Ok(())
}

/// Finds the first record whose data blocks did not reach the disk. Only
/// records after the last durable marker can be such; for them every data
/// block is read and checked against its CRC. Each page is written at most
/// once in the replayed window (see `space`), so a block that fails here
/// was never synced, and neither was anything logged after it.
fn first_unverifiable(
    file: &dyn StorageFile,
    st: &State,
    records: &[(u64, Record)],
    durable_lsn: u64,
    npages: u64,
) -> Result<usize> {
    let bs = st.block_size as usize;
    let mut buf = Vec::new();
    for (i, (lsn, rec)) in records.iter().enumerate() {
        if *lsn < durable_lsn {
            continue;
        }
        if let Record::Map { page, crcs, .. } = rec {
            if *page == 0 || page + crcs.len() as u64 > npages {
                return Ok(i);
            }
            buf.resize(bs * crcs.len(), 0);
            file.read_at(&mut buf, st.space.offset_of(*page))
                .map_err(|e| Error::io("verifying unsynced WAL data", e))?;
            if buf.chunks(bs).zip(crcs).any(|(b, &c)| Crc::of(b).0 != c) {
                return Ok(i);
            }
        }
    }
    Ok(records.len())
}

fn load_tree(
    file: &dyn StorageFile,
    space: &mut Space,
    loaded: &mut HashMap<u64, (Arc<Node>, u32)>,
    root: u64,
    geo: Geometry,
) -> Result<Root> {
    if root == 0 {
        return Ok(None);
    }
    let npages = space.npages();
    load_node(file, space, loaded, root, geo.levels - 1, geo, npages).map(Some)
}

fn load_node(
    file: &dyn StorageFile,
    space: &mut Space,
    loaded: &mut HashMap<u64, (Arc<Node>, u32)>,
    page: u64,
    level: u32,
    geo: Geometry,
    npages: u64,
) -> Result<Arc<Node>> {
    if let Some((n, l)) = loaded.get(&page) {
        if *l != level {
            return Err(Error::corruption("tree", format!("page {page}"), "node shared at two different levels"));
        }
        return Ok(n.clone());
    }
    if page == 0 || page >= npages {
        return Err(Error::corruption("tree", format!("page {page}"), "node pointer outside the file"));
    }
    let mut buf = vec![0u8; space_block(space)];
    file.read_at(&mut buf, space.offset_of(page))
        .map_err(|e| Error::io(format!("reading tree node at page {page}"), e))?;
    let decoded = tree::decode_node(&buf, page, level, geo, npages)?;
    let mut children = Vec::new();
    if let tree::DecodedNode::Interior(v) = &decoded {
        for &(i, child) in v {
            children.push((i, load_node(file, space, loaded, child, level - 1, geo, npages)?));
        }
    }
    space.set_reserved(page, true);
    let node = Arc::new(tree::build_node(decoded, children, geo, page));
    loaded.insert(page, (node.clone(), level));
    Ok(node)
}

fn space_block(space: &Space) -> usize {
    (space.offset_of(1) - space.offset_of(0)) as usize
}
