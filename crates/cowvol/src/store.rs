//! The public [`Store`]: opening and closing a store, and the
//! administrative operations on volumes and snapshots. Each change is one
//! logged record made durable before the call returns (see `engine`).

use crate::backend::{FileDir, StorageDir};
use crate::catalog::{
    limits, now_secs, AccessMode, SnapshotId, SnapshotInfo, SnapshotStatus, VolumeId, VolumeInfo, VolumeOrigin,
};
use crate::engine::record::Record;
use crate::engine::{self, try_admin, Engine, Keeper, State, VolRuntime};
use crate::error::{Error, Result};
use crate::options::{
    AutoFlush, Deleted, ForkOptions, HandleOptions, OpenMode, RestoreOptions, Restored, SnapshotOptions, StoreOptions,
    VolumeOptions,
};
use crate::tree;
use crate::volume::{Target, Volume};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
    pub(crate) engine: Arc<Engine>,
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
        let (keeper, engine) = engine::open(dir, opts, |engine, now| {
            // Failures are per volume and retried on the next pass.
            let _ = engine.run_policies(now);
        })?;
        Ok(Store { keeper, engine })
    }

    /// Closes this handle of the store, making every change durable and
    /// reporting any error that dropping it would swallow. The store stays
    /// open while other clones or volume handles exist. Writes nothing when
    /// nothing changed since the last checkpoint; when the log since then
    /// is short, only syncs it (the next open replays it); otherwise writes
    /// one checkpoint.
    ///
    /// # Errors
    /// I/O errors of the final sync or checkpoint.
    pub fn close(self) -> Result<()> {
        self.engine.close_out()
    }

    /// The block size the store was created with.
    pub fn block_size(&self) -> u32 {
        self.engine.block_size
    }

    /// The store's identity: a random number chosen when the store was
    /// created, the same for its whole life. Snapshot ids are unique only
    /// within a store; the pair names a snapshot across stores (streams
    /// and backups record it).
    pub fn store_id(&self) -> u64 {
        self.engine.store_id()
    }

    /// Writes a checkpoint now: every change so far is saved outside the WAL.
    ///
    /// # Errors
    /// I/O errors; after one, the store refuses writes.
    pub fn checkpoint(&self) -> Result<()> {
        self.engine.checkpoint()
    }

    /// Gives the file space of free pages back to the file system now,
    /// instead of waiting for the background steps: punches every whole
    /// free 1 MiB chunk beyond the space kept for growth, in bounded steps
    /// that hold no lock while punching. Returns the bytes punched. Pages
    /// freed since the last checkpoint are not free yet: checkpoint first
    /// to include them. Cost: proportional to the free space punched.
    ///
    /// # Errors
    /// [`Error::Poisoned`] after an earlier I/O error; I/O errors of the
    /// punch itself (which leave the store writable).
    pub fn punch_free_space(&self) -> Result<u64> {
        self.engine.punch_free_space()
    }

    /// Creates an empty volume. Durable when it returns. O(1).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when a live volume has the name;
    /// [`Error::InvalidArgument`] for an empty size or bad name.
    pub fn create_volume(&self, opts: VolumeOptions) -> Result<VolumeInfo> {
        limits::volume(&opts.name, &opts.owner)?;
        if opts.size_bytes == 0 {
            return Err(Error::invalid("volume size must be at least 1 byte"));
        }
        let bs = self.engine.block_size as u64;
        if opts.size_bytes.div_ceil(bs) > 1 << 48 {
            return Err(Error::invalid(format!("volume size {} is too large", opts.size_bytes)));
        }
        self.engine.commit_growing(|st| {
            let info = st.new_volume_info(opts, None)?;
            Ok((info.clone(), Some(Record::CreateVolume(info))))
        })
    }

    /// Every live volume, by id. The hidden volume a receive in progress
    /// stages its data in is left out (see [`crate::stream`]).
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        let st = self.engine.state.lock();
        st.volumes.values().filter(|v| !limits::is_reserved_volume(&v.info.name)).map(|v| v.info.clone()).collect()
    }

    /// One volume's record.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn volume(&self, id: VolumeId) -> Result<VolumeInfo> {
        Ok(self.engine.state.lock().vol(id)?.info.clone())
    }

    /// Finds a live volume by name.
    pub fn volume_by_name(&self, name: &str) -> Option<VolumeInfo> {
        let st = self.engine.state.lock();
        if limits::is_reserved_volume(name) {
            return None;
        }
        let id = *st.volume_names.get(name)?;
        st.volumes.get(&id).map(|v| v.info.clone())
    }

    /// Finds a snapshot of `volume` by name (the volume may have been
    /// deleted since). Costs what that volume's snapshots cost, whatever
    /// the store holds.
    pub fn snapshot_by_name(&self, volume: VolumeId, name: &str) -> Option<SnapshotInfo> {
        let st = self.engine.state.lock();
        let id = st.snapshot_named(volume, name)?;
        st.snapshots.get(&id.0).map(|s| s.info.clone())
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
        self.open_volume_with_options(id, HandleOptions { mode, ..Default::default() })
    }

    /// Opens a handle on a volume with every [`HandleOptions`] field
    /// chosen, e.g. a read-write handle that never flushes on its own:
    ///
    /// ```
    /// use cowvol::{AutoFlush, HandleOptions, Store, StoreOptions, VolumeOptions};
    /// # fn main() -> cowvol::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let mut disk = VolumeOptions::new("disk", 64 << 20);
    /// disk.write_buffer_bytes = 1 << 20;
    /// let disk = store.create_volume(disk)?;
    /// let opts = HandleOptions { auto_flush: AutoFlush::Never, ..Default::default() };
    /// let vol = store.open_volume_with_options(disk.id, opts)?;
    /// vol.write_at(&vec![7u8; 4 << 20], 0)?; // four times the write buffer, no sync
    /// vol.flush()?; // durable from here on
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::open_volume`].
    pub fn open_volume_with_options(&self, id: VolumeId, opts: HandleOptions) -> Result<Volume> {
        let st = self.engine.state.lock();
        let v = st.vol(id)?;
        let writable = opts.mode == OpenMode::ReadWrite;
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
            self.keeper.clone(),
            self.engine.clone(),
            Target::Volume(id),
            v.info.size_bytes,
            v.rt.clone(),
            writable,
            match opts.auto_flush {
                AutoFlush::AfterWriteBuffer => v.info.write_buffer_bytes,
                // No count of unflushed bytes ever exceeds it.
                AutoFlush::Never => u64::MAX,
            },
        ))
    }

    /// Opens a read-only handle on a snapshot.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the snapshot does not exist or is not of
    /// `volume`; [`Error::InvalidArgument`] when it is not ready.
    pub fn open_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<Volume> {
        let st = self.engine.state.lock();
        let s = st.ready_snap_of(volume, snapshot)?;
        Ok(Volume::new(
            self.keeper.clone(),
            self.engine.clone(),
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
        let engine = &self.engine;
        engine.ensure_writable()?;
        let rt = engine.state.lock().vol(id)?.rt.clone();
        let _admin = try_admin(&rt, id, "delete")?;
        let timeout = RestoreOptions::default().timeout;
        let _gate = rt.gate.try_write_for(timeout).ok_or_else(|| Error::Timeout {
            what: format!("deleting volume {id}"),
            waited_ms: timeout.as_millis() as u64,
        })?;
        engine.commit(|st| {
            st.vol(id)?;
            Ok(((), Some(Record::DeleteVolume { vol: id.0 })))
        })?;
        engine.release_garbage();
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
        self.engine.take_snapshot(volume, opts, SnapshotStatus::Ready, now_secs())
    }

    /// The snapshots taken of a volume, oldest first. Works for a deleted
    /// volume whose snapshots remain.
    pub fn list_snapshots(&self, volume: VolumeId) -> Vec<SnapshotInfo> {
        let st = self.engine.state.lock();
        st.snapshots_of(volume).into_iter().map(|s| s.info.clone()).collect()
    }

    /// Every snapshot in the store, oldest first.
    pub fn all_snapshots(&self) -> Vec<SnapshotInfo> {
        self.engine.state.lock().snapshots.values().map(|s| s.info.clone()).collect()
    }

    /// One snapshot's record.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it does not exist or belongs to another volume.
    pub fn get_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<SnapshotInfo> {
        Ok(self.engine.state.lock().snap_of(volume, snapshot)?.info.clone())
    }

    /// Bytes of data that only this snapshot holds: what deleting it would
    /// free. Blocks it shares with its volume, another snapshot, a fork or a
    /// template are not counted. Cost: proportional to the part of its tree
    /// that no other tree shares. While a checkpoint is being written, or
    /// `check` or `scrub` holds a pinned view, every tree is held once more,
    /// so the figure may read low for that moment.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the snapshot does not exist.
    pub fn snapshot_exclusive_bytes(&self, snapshot: SnapshotId) -> Result<u64> {
        let mut st = self.engine.state.lock();
        let State { snapshots, space, nodes, block_size, .. } = &mut *st;
        let s = snapshots.get(&snapshot.0).ok_or_else(|| Error::not_found(format!("snapshot {snapshot}")))?;
        Ok(tree::exclusive_pages(&s.root, s.geo, space, nodes)? * *block_size)
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
        let engine = &self.engine;
        engine.ensure_writable()?;
        if let Some(safety) = &opts.safety_snapshot {
            safety.check_limits()?;
            safety.check_expiry(now_secs())?;
            safety.refuse_idempotency_key("a restore's safety snapshot")?;
        }
        let rt = {
            let st = engine.state.lock();
            st.ready_snap_of(volume, snapshot)?;
            st.vol(volume)?.rt.clone()
        };
        let _admin = try_admin(&rt, volume, "restore")?;
        let _gate = rt.gate.try_write_for(opts.timeout).ok_or_else(|| Error::Timeout {
            what: format!("restoring volume {volume} to {snapshot}"),
            waited_ms: opts.timeout.as_millis() as u64,
        })?;
        let adds_a_snapshot = opts.safety_snapshot.is_some();
        let build = |st: &mut State| {
            st.ready_snap_of(volume, snapshot)?;
            let safety = match opts.safety_snapshot {
                Some(o) => Some(st.new_snapshot_info(volume, o, SnapshotStatus::Ready, now_secs())?),
                None => None,
            };
            let rec = Record::Restore { vol: volume.0, snap: snapshot.0, safety: safety.clone() };
            Ok((safety, Some(rec)))
        };
        // A restore alone can only free space; with a safety snapshot it adds one.
        let safety = if adds_a_snapshot { engine.commit_growing(build) } else { engine.commit(build) }?;
        engine.release_garbage();
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
        self.engine.delete_snapshot(volume, snapshot)
    }

    /// Creates a writable volume that shares every block with `source`'s live
    /// state, or with one of its snapshots. Writes on either side never show
    /// on the other. O(1).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::AlreadyExists`] for a taken name;
    /// [`Error::Busy`] when another administrative operation holds the source.
    pub fn fork_volume(&self, source: VolumeId, opts: ForkOptions) -> Result<VolumeInfo> {
        limits::volume(&opts.name, &opts.owner)?;
        let engine = &self.engine;
        engine.ensure_writable()?;
        let rt = {
            let st = engine.state.lock();
            match opts.from_snapshot {
                Some(s) => {
                    st.ready_snap_of(source, s)?;
                    st.volumes.get(&source.0).map(|v| v.rt.clone())
                }
                None => Some(st.vol(source)?.rt.clone()),
            }
        };
        let _admin = rt.as_ref().map(|rt| try_admin(rt, source, "fork")).transpose()?;
        engine.commit_growing(|st| {
            let (origin, size_bytes, write_buffer_bytes) = match opts.from_snapshot {
                Some(s) => (VolumeOrigin::Snapshot(source, s), st.ready_snap_of(source, s)?.info.size_bytes, 0),
                None => {
                    let v = &st.vol(source)?.info;
                    (VolumeOrigin::Volume(source), v.size_bytes, v.write_buffer_bytes)
                }
            };
            let vopts = VolumeOptions {
                name: opts.name,
                size_bytes,
                access_mode: opts.access_mode,
                cache_bytes: 0,
                write_buffer_bytes,
                owner: opts.owner,
            };
            let info = st.new_volume_info(vopts, Some(origin))?;
            Ok((info.clone(), Some(Record::Fork(info))))
        })
    }
}

impl Engine {
    /// Deletes a snapshot (see [`Store::delete_snapshot`]).
    pub(crate) fn delete_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<Deleted> {
        let deleted = self.commit(|st| match st.snapshots.get(&snapshot.0) {
            Some(s) if s.info.volume_id == volume && s.info.held => {
                Err(Error::Held { what: format!("snapshot {snapshot} ({:?})", s.info.name) })
            }
            Some(s) if s.info.volume_id == volume => {
                Ok((Deleted { existed: true }, Some(Record::DeleteSnapshot { snap: snapshot.0 })))
            }
            _ => Ok((Deleted { existed: false }, None)),
        })?;
        self.release_garbage();
        Ok(deleted)
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
        opts.check_limits()?;
        opts.check_expiry(created_at)?;
        self.ensure_writable()?;
        let rt = self.state.lock().vol(volume)?.rt.clone();
        let _admin = try_admin(&rt, volume, "snapshot")?;
        self.commit_growing(|st| {
            // A retry returns what the first call created; nothing is logged.
            if let Some(first) = st.idempotent_snapshot(volume, opts.idempotency_key.as_deref(), created_at) {
                return Ok((first.clone(), None));
            }
            let info = st.new_snapshot_info(volume, opts, status, created_at)?;
            Ok((info.clone(), Some(Record::CreateSnapshot(info))))
        })
    }
}
