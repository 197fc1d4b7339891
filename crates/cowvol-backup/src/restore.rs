//! Restoring a backup into a new volume of any store, through the engine's
//! public API: create the volume, write every chunk (checking its hash),
//! flush, and take a snapshot with the backed-up snapshot's name,
//! description, owner and labels.

use crate::error::{Error, Result};
use crate::format::{pack_key, ChunkHash, ChunkLocation, Manifest};
use crate::parallel;
use crate::repo::{self, ChunkIndex};
use crate::target::Target;
use cowvol::{SnapshotInfo, SnapshotOptions, Store, Volume, VolumeInfo, VolumeOptions, RESERVED_LABEL_PREFIX};
use std::sync::atomic::{AtomicU64, Ordering};

/// How a backup is restored.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The new volume's name (it must not exist yet).
    pub volume_name: String,
    /// Ranged reads in flight. Default 4.
    pub downloads: usize,
}

impl RestoreOptions {
    /// Restore into a new volume named `name`.
    pub fn named(name: impl Into<String>) -> RestoreOptions {
        RestoreOptions { volume_name: name.into(), downloads: 4 }
    }
}

/// What [`restore`] made.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The new volume.
    pub volume: VolumeInfo,
    /// Its snapshot, named as the backed-up one.
    pub snapshot: SnapshotInfo,
    /// Chunks written.
    pub chunks: u64,
    /// Bytes written (holes are not written).
    pub bytes_written: u64,
}

/// One ranged read: consecutive chunks of one pack.
struct Fetch {
    pack: ChunkHash,
    offset: u64,
    len: u64,
    /// `(chunk number, hash, offset in this read, length)`.
    chunks: Vec<(u64, ChunkHash, u64, u32)>,
}

/// The largest ranged read; consecutive chunks of a pack are read together
/// up to this size.
const FETCH_BYTES: u64 = 8 << 20;

/// Restores backup `backup_id` from `target` into a new volume of `store`,
/// with a snapshot of the backed-up snapshot's name. Every chunk is checked
/// against its hash before it is written; `progress` hears chunks written
/// and the total, from the download threads.
///
/// If the restore fails after the volume was created, the volume is
/// deleted again; a crash meanwhile leaves a volume without the snapshot
/// (delete it and restore again).
///
/// # Errors
/// [`Error::NotFound`] for a missing backup; [`Error::MissingChunk`] when
/// the target lacks a chunk (checked before the volume is created);
/// [`Error::Damaged`] for a damaged manifest or a chunk whose bytes do not
/// match its hash; [`Error::Store`] when the volume cannot be created (a
/// taken name) or written.
pub fn restore(
    target: &dyn Target,
    backup_id: &str,
    store: &Store,
    opts: &RestoreOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Restored> {
    let manifest = repo::read_manifest(target, backup_id)?;
    let index = ChunkIndex::load(target)?;
    let fetches = plan_fetches(target, &manifest, &index)?;
    let volume = store.create_volume(VolumeOptions::new(opts.volume_name.clone(), manifest.size_bytes))?;
    let written = store.open_volume(volume.id).map_err(Error::from).and_then(|handle| {
        let written = write_chunks(target, &manifest, &fetches, &handle, opts.downloads, progress)?;
        handle.flush()?;
        Ok(written)
    });
    let snapshot = written.and_then(|w| Ok((w, store.create_snapshot(volume.id, snapshot_options(&manifest))?)));
    match snapshot {
        Ok(((chunks, bytes_written), snapshot)) => Ok(Restored { volume, snapshot, chunks, bytes_written }),
        Err(e) => {
            let _ = store.delete_volume(volume.id);
            Err(e)
        }
    }
}

fn snapshot_options(m: &Manifest) -> SnapshotOptions {
    let mut opts = SnapshotOptions::named(m.snapshot.name.clone());
    opts.description = m.snapshot.description.clone();
    opts.owner = m.snapshot.owner.clone();
    // Labels the engine reserves (policy runs, stream origins) describe
    // the source store, not this one.
    opts.labels = m
        .snapshot
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    opts
}

/// Groups the manifest's chunks into ranged reads, failing before anything
/// is written if a chunk is in no pack.
fn plan_fetches(target: &dyn Target, m: &Manifest, index: &ChunkIndex) -> Result<Vec<Fetch>> {
    let mut located: Vec<(ChunkLocation, u64, ChunkHash)> = Vec::new();
    for (n, hash) in m.chunks() {
        let loc = index.chunks.get(&hash).ok_or_else(|| Error::MissingChunk {
            target: target.url().to_string(),
            backup: m.backup_id.clone(),
            chunk: hash.to_hex(),
        })?;
        located.push((*loc, n, hash));
    }
    located.sort_by_key(|(loc, n, _)| (loc.pack, loc.offset, *n));
    let mut fetches: Vec<Fetch> = Vec::new();
    for (loc, n, hash) in located {
        match fetches.last_mut() {
            Some(f)
                if f.pack == loc.pack
                    && loc.offset >= f.offset
                    && loc.offset + loc.len as u64 - f.offset <= FETCH_BYTES =>
            {
                let end = (f.offset + f.len).max(loc.offset + loc.len as u64);
                f.chunks.push((n, hash, loc.offset - f.offset, loc.len));
                f.len = end - f.offset;
            }
            _ => fetches.push(Fetch {
                pack: loc.pack,
                offset: loc.offset,
                len: loc.len as u64,
                chunks: vec![(n, hash, 0, loc.len)],
            }),
        }
    }
    Ok(fetches)
}

fn write_chunks(
    target: &dyn Target,
    m: &Manifest,
    fetches: &[Fetch],
    handle: &Volume,
    downloads: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(u64, u64)> {
    let total: u64 = fetches.iter().map(|f| f.chunks.len() as u64).sum();
    let done = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    parallel::map(fetches, downloads, |f| {
        let key = pack_key(&f.pack);
        let data = target.get_range(&key, f.offset, f.len)?;
        for &(n, hash, at, len) in &f.chunks {
            let chunk = &data[at as usize..at as usize + len as usize];
            if ChunkHash::of(chunk) != hash || len as u64 != m.chunk_len(n) {
                return Err(Error::Damaged {
                    target: target.url().to_string(),
                    key: key.clone(),
                    detail: format!("chunk {hash} (at byte {} of the pack) does not match its hash", f.offset + at),
                });
            }
            handle.write_at(chunk, n * m.chunk_bytes as u64)?;
            bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        let d = done.fetch_add(f.chunks.len() as u64, Ordering::Relaxed) + f.chunks.len() as u64;
        progress(d, total);
        Ok(())
    })?;
    Ok((total, bytes.into_inner()))
}
