//! Looking after a target: listing backups, deleting them, retention,
//! garbage collection of chunks no backup references, and verification.

use crate::error::{Error, Result};
use crate::format::{index_key, manifest_key, pack_key, pack_of_key, ChunkHash, Manifest, SnapshotMeta};
use crate::parallel;
use crate::repo::{self, ChunkIndex, LockKind};
use crate::target::Target;
use std::collections::{BTreeMap, HashSet};

/// A backup as [`list_backups`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// Its id.
    pub id: String,
    /// The snapshot it holds.
    pub snapshot: SnapshotMeta,
    /// The volume's size in bytes.
    pub size_bytes: u64,
    /// Its chunk size.
    pub chunk_bytes: u32,
    /// Chunks holding data.
    pub chunks: u64,
    /// Bytes those chunks hold (what a restore writes).
    pub data_bytes: u64,
    /// When the backup finished (seconds since the Unix epoch).
    pub finished_at: u64,
    /// The backup it was made incrementally against, if any.
    pub base: Option<String>,
}

impl BackupInfo {
    fn of(m: &Manifest) -> BackupInfo {
        BackupInfo {
            id: m.backup_id.clone(),
            snapshot: m.snapshot.clone(),
            size_bytes: m.size_bytes,
            chunk_bytes: m.chunk_bytes,
            chunks: m.chunks().count() as u64,
            data_bytes: m.chunks().map(|(n, _)| m.chunk_len(n)).sum(),
            finished_at: m.finished_at,
            base: (!m.base.is_empty()).then(|| m.base.clone()),
        }
    }
}

/// The backups on a target, oldest snapshot first, and an error for each
/// manifest that is damaged.
///
/// # Errors
/// Target errors.
pub fn list_backups(target: &dyn Target) -> Result<(Vec<BackupInfo>, Vec<Error>)> {
    let (manifests, damaged) = repo::read_all_manifests(target)?;
    let mut list: Vec<BackupInfo> = manifests.iter().map(BackupInfo::of).collect();
    // Snapshot ids grow within a store: they order snapshots taken in the
    // same second.
    list.sort_by_key(|b| (b.snapshot.created_at, b.snapshot.snapshot_id, b.finished_at, b.id.clone()));
    Ok((list, damaged))
}

/// One backup's record.
///
/// # Errors
/// [`Error::NotFound`]; [`Error::Damaged`] for a damaged manifest.
pub fn backup_info(target: &dyn Target, backup_id: &str) -> Result<BackupInfo> {
    Ok(BackupInfo::of(&repo::read_manifest(target, backup_id)?))
}

/// Deletes a backup: its manifest only. Its chunks stay until a garbage
/// collection finds no other backup references them. Returns whether it
/// was there; deleting twice is not an error.
///
/// # Errors
/// Target errors.
pub fn delete_backup(target: &dyn Target, backup_id: &str) -> Result<bool> {
    let there = match repo::read_manifest(target, backup_id) {
        Ok(_) | Err(Error::Damaged { .. }) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e),
    };
    target.delete(&manifest_key(backup_id))?;
    Ok(there)
}

/// Retention: for each volume (by source store and volume name), or only
/// for `volume_name` when given, keeps the `keep_last` backups of the
/// newest snapshots and deletes the others. Returns the deleted backups.
/// Run [`collect_garbage`] afterwards to free their chunks.
///
/// # Errors
/// Target errors.
pub fn prune(target: &dyn Target, keep_last: usize, volume_name: Option<&str>) -> Result<Vec<BackupInfo>> {
    let (list, _) = list_backups(target)?;
    let mut groups: BTreeMap<(u64, String), Vec<BackupInfo>> = BTreeMap::new();
    for b in list.into_iter().filter(|b| volume_name.is_none_or(|v| b.snapshot.volume_name == v)) {
        groups.entry((b.snapshot.store_id, b.snapshot.volume_name.clone())).or_default().push(b);
    }
    let mut deleted = Vec::new();
    for (_, mut backups) in groups {
        // `list_backups` sorted oldest first; the newest `keep_last` stay.
        let drop_n = backups.len().saturating_sub(keep_last);
        for b in backups.drain(..drop_n) {
            target.delete(&manifest_key(&b.id))?;
            deleted.push(b);
        }
    }
    Ok(deleted)
}

/// What [`collect_garbage`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Backups whose chunks were kept.
    pub backups: u64,
    /// Packs deleted because no backup references any of their chunks.
    pub packs_deleted: u64,
    /// Chunk bytes those packs held.
    pub bytes_deleted: u64,
    /// Packs without an index (left by an interrupted backup) deleted.
    pub orphan_packs_deleted: u64,
    /// Packs kept because at least one of their chunks is referenced.
    pub packs_kept: u64,
    /// Bytes of unreferenced chunks inside kept packs (not reclaimed:
    /// packs are deleted whole, never rewritten).
    pub unreferenced_bytes_kept: u64,
    /// Temporary files of interrupted writes removed.
    pub leftovers_removed: u64,
}

/// Deletes every pack none of whose chunks a backup references, with its
/// index, and packs left without an index by interrupted backups.
///
/// Crash-safe and idempotent: it holds the target's GC lock (no backup
/// runs meanwhile), refuses to delete anything if a manifest cannot be
/// read (it could not tell what that backup needs), and deletes an index
/// before its pack, so a crash leaves at worst a pack without an index,
/// which the next run deletes.
///
/// # Errors
/// [`Error::Busy`] while a backup or another collection holds the target;
/// [`Error::Damaged`] when a manifest is damaged (delete that backup
/// first); target errors.
pub fn collect_garbage(target: &dyn Target) -> Result<GcReport> {
    let _lock = repo::lock(target, LockKind::Gc)?;
    let (manifests, damaged) = repo::read_all_manifests(target)?;
    if let Some(e) = damaged.into_iter().next() {
        return Err(e);
    }
    let referenced: HashSet<ChunkHash> = manifests.iter().flat_map(|m| m.chunks().map(|(_, h)| h)).collect();
    let index = ChunkIndex::load(target)?;
    let mut report = GcReport { backups: manifests.len() as u64, ..Default::default() };
    let mut indexed: HashSet<ChunkHash> = index.packs.iter().map(|p| p.pack).collect();
    // A damaged index still names its pack: keep that pack.
    for e in &index.damaged {
        if let Error::Damaged { key, .. } = e {
            indexed.extend(pack_of_key(key));
        }
    }
    for p in &index.packs {
        let used: u64 = p.chunks.iter().filter(|c| referenced.contains(&c.0)).map(|c| c.2 as u64).sum();
        let all: u64 = p.chunks.iter().map(|c| c.2 as u64).sum();
        if p.chunks.iter().any(|c| referenced.contains(&c.0)) {
            report.packs_kept += 1;
            report.unreferenced_bytes_kept += all - used;
            continue;
        }
        target.delete(&index_key(&p.pack))?;
        target.delete(&pack_key(&p.pack))?;
        report.packs_deleted += 1;
        report.bytes_deleted += all;
    }
    for key in target.list("packs")? {
        if pack_of_key(&key).is_some_and(|p| !indexed.contains(&p)) {
            target.delete(&key)?;
            report.orphan_packs_deleted += 1;
        }
    }
    report.leftovers_removed = target.remove_leftovers()?;
    Ok(report)
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Backups checked.
    pub backups: u64,
    /// Chunk references checked.
    pub chunks: u64,
    /// Pack bytes read to check chunk contents.
    pub bytes_read: u64,
    /// What is wrong, one sentence each; empty when all is well.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks backups: every manifest (or only `backup_id`) reads back and
/// every chunk it names is in an indexed pack; with `read_data`, every
/// referenced chunk is also downloaded and checked against its hash.
///
/// # Errors
/// Target errors, and [`Error::NotFound`] for a missing `backup_id`;
/// damage is reported in [`VerifyReport::problems`], not as an error.
pub fn verify(target: &dyn Target, backup_id: Option<&str>, read_data: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let manifests = match backup_id {
        Some(id) => match repo::read_manifest(target, id) {
            Ok(m) => vec![m],
            Err(e @ Error::Damaged { .. }) => {
                report.problems.push(e.to_string());
                Vec::new()
            }
            Err(e) => return Err(e),
        },
        None => {
            let (good, bad) = repo::read_all_manifests(target)?;
            report.problems.extend(bad.iter().map(Error::to_string));
            good
        }
    };
    let index = ChunkIndex::load(target)?;
    report.problems.extend(index.damaged.iter().map(Error::to_string));
    let mut wanted: BTreeMap<ChunkHash, Vec<Wanted>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for m in &manifests {
        report.backups += 1;
        for (_, hash) in m.chunks() {
            report.chunks += 1;
            match index.chunks.get(&hash) {
                Some(loc) if seen.insert(hash) => wanted.entry(loc.pack).or_default().push((loc.offset, loc.len, hash)),
                Some(_) => {}
                None => report.problems.push(
                    Error::MissingChunk {
                        target: target.url().to_string(),
                        backup: m.backup_id.clone(),
                        chunk: hash.to_hex(),
                    }
                    .to_string(),
                ),
            }
        }
    }
    if read_data {
        let packs: Vec<(ChunkHash, Vec<Wanted>)> = wanted.into_iter().collect();
        let found =
            parallel::map(&packs, repo::READ_THREADS.min(4), |(pack, chunks)| check_pack(target, pack, chunks))?;
        for (bytes, problems) in found {
            report.bytes_read += bytes;
            report.problems.extend(problems);
        }
    }
    Ok(report)
}

/// A chunk to check: its offset and length in its pack, and its hash.
type Wanted = (u64, u32, ChunkHash);

/// Downloads one pack and checks the chunks `chunks` names in it.
fn check_pack(target: &dyn Target, pack: &ChunkHash, chunks: &[Wanted]) -> Result<(u64, Vec<String>)> {
    let key = pack_key(pack);
    let data = match target.get(&key) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => {
            return Ok((0, vec![format!("{key} on {} is missing but indexed", target.url())]))
        }
        Err(e) => return Err(e),
    };
    let mut problems = Vec::new();
    for &(offset, len, hash) in chunks {
        let chunk = data.get(offset as usize..offset as usize + len as usize);
        if chunk.is_none_or(|c| ChunkHash::of(c) != hash) {
            problems.push(
                Error::Damaged {
                    target: target.url().to_string(),
                    key: key.clone(),
                    detail: format!("chunk {hash} (at byte {offset} of the pack) does not match its hash"),
                }
                .to_string(),
            );
        }
    }
    Ok((data.len() as u64, problems))
}

/// The locks on a target, described (a backup or collection in progress,
/// or one a killed process left).
///
/// # Errors
/// Target errors.
pub fn locks(target: &dyn Target) -> Result<Vec<String>> {
    repo::list_locks(target)
}

/// Deletes every lock on the target. Only for locks a killed process left:
/// with a backup running, a collection could then delete chunks it relies
/// on. Returns how many there were.
///
/// # Errors
/// Target errors.
pub fn break_locks(target: &dyn Target) -> Result<usize> {
    repo::break_locks(target)
}
