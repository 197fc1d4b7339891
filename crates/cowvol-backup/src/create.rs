//! Making a backup: read the snapshot chunk by chunk, name each chunk by
//! its hash, upload the chunks the target lacks in packs, then write the
//! manifest.
//!
//! Order of durable writes (docs/backup.md, "Crash safety"): a pack, then
//! its index, then, after every pack the backup needs has its index, the
//! manifest. A crash anywhere leaves only objects no manifest references:
//! the target stays readable, and garbage collection removes them.

use crate::error::{Error, Result};
use crate::format::{
    index_key, manifest_key, pack_key, ChunkHash, ChunkRun, Manifest, PackBuilder, PackIndex, SnapshotMeta,
};
use crate::repo::{self, ChunkIndex, LockKind};
use crate::target::Target;
use cowvol::{BackupRecord, BackupState, SnapshotId, SnapshotInfo, SnapshotQuery, Store, Volume};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

/// How a backup is made.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Bytes per chunk: the unit of deduplication. A power of two from
    /// 4 KiB to 16 MiB. Default 256 KiB. Smaller chunks find more shared
    /// data and re-upload less around a small write, at the cost of a
    /// larger manifest (36 bytes per chunk).
    pub chunk_bytes: u32,
    /// A pack is uploaded once it holds this many bytes of new chunks.
    /// Default 16 MiB: few requests, and little to redo after a crash.
    pub pack_bytes: u64,
    /// Packs uploaded at the same time. Default 4.
    pub uploads: usize,
    /// Read only what changed since the volume's newest snapshot backed up
    /// to the same target (through [`Store::diff`]) and take the other
    /// chunks' hashes from that backup's manifest. Default true. Without
    /// it, every mapped block is read and hashed; either way only chunks
    /// the target lacks are uploaded.
    pub incremental: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions { chunk_bytes: 256 << 10, pack_bytes: 16 << 20, uploads: 4, incremental: true }
    }
}

/// What [`backup`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup's id on the target.
    pub backup_id: String,
    /// The backup this one read changes against, if incremental.
    pub base: Option<String>,
    /// The manifest was already on the target: nothing was read or sent.
    pub already_there: bool,
    /// Chunks holding data in the snapshot.
    pub chunks: u64,
    /// Chunks read from the snapshot and hashed.
    pub chunks_read: u64,
    /// Chunks uploaded (the target had none of them).
    pub chunks_uploaded: u64,
    /// Bytes read from the snapshot.
    pub bytes_read: u64,
    /// Bytes of chunk data uploaded.
    pub chunk_bytes_uploaded: u64,
    /// Bytes of every object written (packs, indexes, manifest).
    pub bytes_uploaded: u64,
    /// Packs uploaded.
    pub packs_uploaded: u64,
}

/// Progress of a backup, after each chunk.
#[derive(Debug, Clone, Copy)]
pub struct BackupProgress {
    /// Chunks handled so far.
    pub chunks_done: u64,
    /// Chunks to handle in all.
    pub chunks_total: u64,
    /// Chunk bytes queued for upload so far.
    pub bytes_queued: u64,
}

/// The id a snapshot's backup has on any target: 16 hex digits of a hash
/// of the store's id, the snapshot's id and its creation time. The same
/// snapshot always gets the same id, so repeating a backup (after a crash,
/// or by mistake) finds the first one instead of making another.
pub fn backup_id_of(store: &Store, snapshot: &SnapshotInfo) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&store.store_id().to_le_bytes());
    h.update(&snapshot.id.get().to_le_bytes());
    h.update(&snapshot.created_at.to_le_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// Backs `snapshot` up to `target` and records the outcome in the
/// snapshot's backup state: `InProgress` first, then `BackedUp` once the
/// manifest is durable, or `Failed` with the error's text.
///
/// Cost: reads the changed chunks (every mapped chunk for a first backup),
/// uploads the chunks the target lacks, and reads every pack index on the
/// target once.
///
/// # Errors
/// [`Error::Store`] for a missing or not-ready snapshot or a read error;
/// target errors; [`Error::Busy`] while a garbage collection holds the
/// target; [`Error::InvalidArgument`] for bad options.
pub fn backup(
    store: &Store,
    snapshot: SnapshotId,
    target: &dyn Target,
    opts: &BackupOptions,
    progress: &mut dyn FnMut(BackupProgress),
) -> Result<BackupReport> {
    check_options(opts)?;
    let info = store.snapshot(snapshot)?;
    if !info.is_ready() {
        return Err(Error::invalid(format!(
            "snapshot {} is {}: only a ready snapshot can be backed up",
            info.id, info.status
        )));
    }
    let backup_id = backup_id_of(store, &info);
    let record = |state, reason: String| BackupRecord {
        state,
        target: target.url().to_string(),
        backup_id: backup_id.clone(),
        reason,
        at: repo::now_secs(),
    };
    store.set_snapshot_backup(snapshot, Some(record(BackupState::InProgress, String::new())))?;
    let result = Backup { store, target, opts, info: &info, backup_id: backup_id.clone() }.run(progress);
    let outcome = match &result {
        Ok(_) => record(BackupState::BackedUp, String::new()),
        Err(e) => record(BackupState::Failed, e.to_string()),
    };
    // The snapshot may have been deleted meanwhile; the backup's own
    // outcome is what the caller needs to hear.
    let recorded = store.set_snapshot_backup(snapshot, Some(outcome));
    let report = result?;
    recorded?;
    Ok(report)
}

fn check_options(opts: &BackupOptions) -> Result<()> {
    let c = opts.chunk_bytes;
    if !c.is_power_of_two() || !(4096..=16 << 20).contains(&c) {
        return Err(Error::invalid(format!(
            "a chunk size of {c} bytes: it must be a power of two from 4 KiB to 16 MiB"
        )));
    }
    if opts.uploads == 0 || opts.pack_bytes == 0 {
        return Err(Error::invalid("uploads and pack size must be at least 1"));
    }
    Ok(())
}

/// One backup under way.
struct Backup<'a> {
    store: &'a Store,
    target: &'a dyn Target,
    opts: &'a BackupOptions,
    info: &'a SnapshotInfo,
    backup_id: String,
}

/// What a chunk of the new backup will hold.
enum Source {
    /// Read it from the snapshot and hash it.
    Read,
    /// Unchanged since the base backup, which named it so.
    Known(ChunkHash),
}

/// What the reading side works from.
struct Inputs<'a> {
    handle: &'a Volume,
    plan: &'a BTreeMap<u64, Source>,
    index: &'a ChunkIndex,
}

/// What the reading side shares with the upload threads: the queue of
/// sealed packs (bounded, so reading waits for uploads) and the first
/// error, which stops both sides.
struct Pipe<'a> {
    tx: SyncSender<(Vec<u8>, PackIndex)>,
    failure: &'a Mutex<Option<Error>>,
}

impl Backup<'_> {
    fn run(&self, progress: &mut dyn FnMut(BackupProgress)) -> Result<BackupReport> {
        let mut report = BackupReport { backup_id: self.backup_id.clone(), ..Default::default() };
        if self.manifest_already_there()? {
            report.already_there = true;
            return Ok(report);
        }
        let _lock = repo::lock(self.target, LockKind::Backup)?;
        let index = ChunkIndex::load(self.target)?;
        let handle = self.store.open_snapshot(self.info.volume_id, self.info.id)?;
        let (plan, base) = self.plan(&handle, &index)?;
        report.base = base;
        let runs =
            self.read_and_upload(&Inputs { handle: &handle, plan: &plan, index: &index }, &mut report, progress)?;
        let manifest = Manifest {
            backup_id: self.backup_id.clone(),
            finished_at: repo::now_secs(),
            snapshot: self.meta(),
            size_bytes: self.info.size_bytes,
            block_size: self.store.block_size(),
            chunk_bytes: self.opts.chunk_bytes,
            base: report.base.clone().unwrap_or_default(),
            runs,
        };
        let bytes = manifest.encode();
        self.target.put(&manifest_key(&self.backup_id), &bytes)?;
        report.bytes_uploaded += bytes.len() as u64;
        Ok(report)
    }

    /// A readable manifest of this backup already on the target means a
    /// repeat: nothing to do. A damaged one is written again.
    fn manifest_already_there(&self) -> Result<bool> {
        match repo::read_manifest(self.target, &self.backup_id) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(Error::Damaged { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn meta(&self) -> SnapshotMeta {
        let i = self.info;
        SnapshotMeta {
            store_id: self.store.store_id(),
            snapshot_id: i.id.get(),
            name: i.name.clone(),
            description: i.description.clone(),
            volume_name: i.volume_name.clone(),
            created_at: i.created_at,
            owner: i.owner.clone(),
            labels: i.labels.clone(),
        }
    }

    /// Which chunks hold data and where their hash comes from, ascending,
    /// and the base backup's id when one was used.
    fn plan(&self, handle: &Volume, index: &ChunkIndex) -> Result<(BTreeMap<u64, Source>, Option<String>)> {
        if self.opts.incremental {
            if let Some((base, changed)) = self.base_and_changes()? {
                let mut plan = BTreeMap::new();
                for (n, hash) in base.chunks() {
                    // A chunk the base names but the target lost is read
                    // and uploaded again rather than trusted.
                    let known = index.chunks.contains_key(&hash) && !changed.contains(&n);
                    plan.insert(n, if known { Source::Known(hash) } else { Source::Read });
                }
                for n in changed {
                    plan.insert(n, Source::Read);
                }
                return Ok((plan, Some(base.backup_id)));
            }
        }
        let mut plan = BTreeMap::new();
        for e in handle.extents(0, self.info.size_bytes)?.into_iter().filter(|e| e.data) {
            for n in self.chunks_of(e.offset, e.len) {
                plan.insert(n, Source::Read);
            }
        }
        Ok((plan, None))
    }

    fn chunks_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let c = self.opts.chunk_bytes as u64;
        offset / c..(offset + len).div_ceil(c)
    }

    /// The newest older snapshot of the same volume backed up to this
    /// target with this chunk size and volume size, its manifest, and the
    /// chunks [`Store::diff`] says changed since. `None` when there is no
    /// such backup (or it cannot be read): the backup is then full.
    fn base_and_changes(&self) -> Result<Option<(Manifest, BTreeSet<u64>)>> {
        let q = SnapshotQuery {
            volume: Some(self.info.volume_id),
            backup: Some(BackupState::BackedUp),
            newest_first: true,
            ..Default::default()
        };
        for cand in self.store.search_snapshots(&q).snapshots {
            let Some(rec) = cand.backup.as_ref().filter(|r| r.target == self.target.url()) else { continue };
            if cand.id == self.info.id || (cand.created_at, cand.id) > (self.info.created_at, self.info.id) {
                continue;
            }
            let Ok(base) = repo::read_manifest(self.target, &rec.backup_id) else { continue };
            let same_source =
                base.snapshot.store_id == self.store.store_id() && base.snapshot.snapshot_id == cand.id.get();
            if !same_source || base.chunk_bytes != self.opts.chunk_bytes || base.size_bytes != self.info.size_bytes {
                continue;
            }
            let Ok(diff) = self.store.diff(cand.id, self.info.id) else { continue };
            let changed = diff.extents.iter().flat_map(|e| self.chunks_of(e.offset, e.len)).collect();
            return Ok(Some((base, changed)));
        }
        Ok(None)
    }

    /// Reads the chunks the plan says to, packs the new ones and uploads
    /// them on `opts.uploads` threads; returns the manifest's runs once
    /// every pack and index is durable.
    fn read_and_upload(
        &self,
        input: &Inputs<'_>,
        report: &mut BackupReport,
        progress: &mut dyn FnMut(BackupProgress),
    ) -> Result<Vec<ChunkRun>> {
        let (tx, rx) = sync_channel::<(Vec<u8>, PackIndex)>(self.opts.uploads);
        let rx = Mutex::new(rx);
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let uploaded = Mutex::new((0u64, 0u64));
        let mut runs: Vec<ChunkRun> = Vec::new();
        std::thread::scope(|s| {
            for _ in 0..self.opts.uploads {
                s.spawn(|| self.upload_worker(&rx, &failure, &uploaded));
            }
            let pipe = Pipe { tx, failure: &failure };
            let outcome = self.read_chunks(input, report, progress, &pipe, &mut runs);
            // Closing the channel lets the upload threads finish.
            drop(pipe);
            if let Err(e) = outcome {
                failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let (packs, bytes) = uploaded.into_inner().unwrap_or_else(|p| p.into_inner());
        report.packs_uploaded = packs;
        report.bytes_uploaded += bytes;
        Ok(runs)
    }

    /// The producer: reads, hashes, deduplicates and fills packs.
    fn read_chunks(
        &self,
        input: &Inputs<'_>,
        report: &mut BackupReport,
        progress: &mut dyn FnMut(BackupProgress),
        pipe: &Pipe<'_>,
        runs: &mut Vec<ChunkRun>,
    ) -> Result<()> {
        let c = self.opts.chunk_bytes as u64;
        let mut queued: HashSet<ChunkHash> = HashSet::new();
        let mut pack = PackBuilder::new();
        let mut buf = Vec::new();
        let total = input.plan.len() as u64;
        for (done, (&n, source)) in input.plan.iter().enumerate() {
            if pipe.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                break;
            }
            let hash = match source {
                Source::Known(h) => Some(*h),
                Source::Read => {
                    let len = (self.info.size_bytes - n * c).min(c);
                    buf.resize(len as usize, 0);
                    input.handle.read_at(&mut buf, n * c)?;
                    report.chunks_read += 1;
                    report.bytes_read += len;
                    // An all-zero chunk reads back the same as a hole.
                    (!buf.iter().all(|&b| b == 0)).then(|| ChunkHash::of(&buf))
                }
            };
            let Some(hash) = hash else { continue };
            if matches!(source, Source::Read) && !input.index.chunks.contains_key(&hash) && queued.insert(hash) {
                pack.add(hash, &buf);
                report.chunks_uploaded += 1;
                report.chunk_bytes_uploaded += buf.len() as u64;
                if pack.bytes.len() as u64 >= self.opts.pack_bytes {
                    let full = std::mem::replace(&mut pack, PackBuilder::new());
                    if pipe.tx.send(full.seal()).is_err() {
                        break;
                    }
                }
            }
            report.chunks += 1;
            match runs.last_mut() {
                Some(r) if r.first + r.hashes.len() as u64 == n => r.hashes.push(hash),
                _ => runs.push(ChunkRun { first: n, hashes: vec![hash] }),
            }
            progress(BackupProgress {
                chunks_done: done as u64 + 1,
                chunks_total: total,
                bytes_queued: report.chunk_bytes_uploaded,
            });
        }
        if !pack.is_empty() {
            let _ = pipe.tx.send(pack.seal());
        }
        Ok(())
    }

    /// An upload thread: a pack, then its index (the index is what makes
    /// the pack's chunks count as present).
    fn upload_worker(
        &self,
        rx: &Mutex<Receiver<(Vec<u8>, PackIndex)>>,
        failure: &Mutex<Option<Error>>,
        uploaded: &Mutex<(u64, u64)>,
    ) {
        loop {
            let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok((bytes, idx)) = next else { return };
            if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                continue;
            }
            let index_bytes = idx.encode();
            let put = self
                .target
                .put(&pack_key(&idx.pack), &bytes)
                .and_then(|()| self.target.put(&index_key(&idx.pack), &index_bytes));
            match put {
                Ok(()) => {
                    let mut u = uploaded.lock().unwrap_or_else(|p| p.into_inner());
                    u.0 += 1;
                    u.1 += (bytes.len() + index_bytes.len()) as u64;
                }
                Err(e) => {
                    failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                }
            }
        }
    }
}
