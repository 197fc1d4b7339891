//! Reading what a target holds: the chunk index (every pack index), the
//! manifests, and the locks that keep garbage collection and backups apart.

use crate::error::{Error, Result};
use crate::format::{damaged, manifest_key, pack_of_key, ChunkHash, ChunkLocation, Lock, Manifest, PackIndex};
use crate::parallel;
use crate::target::Target;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests in flight when reading many small objects.
pub(crate) const READ_THREADS: usize = 8;

/// Every chunk the target's pack indexes name, and where it is.
#[derive(Default)]
pub(crate) struct ChunkIndex {
    pub(crate) chunks: HashMap<ChunkHash, ChunkLocation>,
    pub(crate) packs: Vec<PackIndex>,
    /// Index objects that did not decode: their packs are kept by garbage
    /// collection and their chunks are uploaded again by backups.
    pub(crate) damaged: Vec<Error>,
}

impl ChunkIndex {
    pub(crate) fn load(target: &dyn Target) -> Result<ChunkIndex> {
        let keys = target.list("index")?;
        let got = parallel::map(&keys, READ_THREADS, |key| match target.get(key) {
            Ok(bytes) => Ok(Some(PackIndex::decode(&bytes).map_err(damaged(target.url(), key)))),
            // Deleted by a garbage collection since the list.
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        })?;
        let mut index = ChunkIndex::default();
        for (key, idx) in keys.iter().zip(got) {
            match idx {
                Some(Ok(idx)) if Some(idx.pack) == pack_of_key(key) => index.add(idx),
                Some(Ok(idx)) => index.damaged.push(Error::Damaged {
                    target: target.url().to_string(),
                    key: key.clone(),
                    detail: format!("it indexes pack {}, not the one its name says", idx.pack),
                }),
                Some(Err(e)) => index.damaged.push(e),
                None => {}
            }
        }
        Ok(index)
    }

    pub(crate) fn add(&mut self, idx: PackIndex) {
        for &(hash, offset, len) in &idx.chunks {
            self.chunks.entry(hash).or_insert(ChunkLocation { pack: idx.pack, offset, len });
        }
        self.packs.push(idx);
    }
}

/// Reads and checks one backup's manifest.
pub(crate) fn read_manifest(target: &dyn Target, backup_id: &str) -> Result<Manifest> {
    if !backup_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || backup_id.is_empty() {
        return Err(Error::invalid(format!("{backup_id:?} is not a backup id")));
    }
    let key = manifest_key(backup_id);
    let bytes = target.get(&key).map_err(|e| match e {
        e if e.is_not_found() => Error::not_found(format!("backup {backup_id} on {}", target.url())),
        e => e,
    })?;
    let m = Manifest::decode(&bytes).map_err(damaged(target.url(), &key))?;
    if m.backup_id != backup_id {
        return Err(Error::Damaged {
            target: target.url().to_string(),
            key,
            detail: format!("it holds backup {}", m.backup_id),
        });
    }
    Ok(m)
}

/// The ids of every backup on the target.
pub(crate) fn backup_ids(target: &dyn Target) -> Result<Vec<String>> {
    let mut ids: Vec<String> =
        target.list("backups")?.into_iter().filter_map(|k| k.strip_prefix("backups/").map(str::to_string)).collect();
    ids.sort();
    Ok(ids)
}

/// Every manifest on the target, read concurrently: the readable ones, and
/// an error for each that is damaged.
pub(crate) fn read_all_manifests(target: &dyn Target) -> Result<(Vec<Manifest>, Vec<Error>)> {
    let ids = backup_ids(target)?;
    let got = parallel::map(&ids, READ_THREADS, |id| match read_manifest(target, id) {
        Ok(m) => Ok(Some(Ok(m))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e @ Error::Damaged { .. }) => Ok(Some(Err(e))),
        Err(e) => Err(e),
    })?;
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for m in got.into_iter().flatten() {
        match m {
            Ok(m) => good.push(m),
            Err(e) => bad.push(e),
        }
    }
    Ok((good, bad))
}

/// What a lock keeps out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// A backup: adds packs, indexes and a manifest, and relies on the
    /// chunks it found in the index staying there.
    Backup,
    /// A garbage collection: deletes packs no manifest references.
    Gc,
}

impl LockKind {
    fn name(self) -> &'static str {
        match self {
            LockKind::Backup => "backup",
            LockKind::Gc => "gc",
        }
    }
}

/// A held lock object; dropping it deletes the object.
pub(crate) struct LockGuard<'t> {
    target: &'t dyn Target,
    key: String,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // A lock left behind (the delete failed, or the process died) only
        // makes a later garbage collection wait for `break_locks`.
        let _ = self.target.delete(&self.key);
    }
}

/// Takes a lock of `kind`: writes its object, then lists the locks. A
/// garbage collection conflicts with every other lock, a backup only with
/// garbage collections. On a conflict the object is removed again and
/// [`Error::Busy`] returned.
///
/// Why this excludes without a compare-and-swap: each side writes its own
/// object before it lists, and a list shows every object written before it
/// began. Of two conflicting takers, the one that lists second sees the
/// other's object; at worst both see each other and both back off.
pub(crate) fn lock(target: &dyn Target, kind: LockKind) -> Result<LockGuard<'_>> {
    let key = format!("locks/{}-{}", kind.name(), unique_suffix());
    let me = Lock { kind: kind.name().into(), host: host_name(), pid: std::process::id(), since: now_secs() };
    target.put(&key, &me.encode())?;
    let guard = LockGuard { target, key };
    let mut holders = Vec::new();
    for other in target.list("locks")? {
        if other == guard.key {
            continue;
        }
        let conflicts = kind == LockKind::Gc || other.starts_with("locks/gc-");
        if conflicts {
            holders.push(describe_lock(target, &other));
        }
    }
    if holders.is_empty() {
        Ok(guard)
    } else {
        Err(Error::Busy { target: target.url().to_string(), holders: holders.join(", ") })
    }
}

fn describe_lock(target: &dyn Target, key: &str) -> String {
    match target.get(key).map(|b| Lock::decode(&b)) {
        Ok(Ok(l)) => format!("a {} by process {} on {} since {} ({key})", l.kind, l.pid, l.host, l.since),
        _ => key.to_string(),
    }
}

/// The locks on a target, described.
pub(crate) fn list_locks(target: &dyn Target) -> Result<Vec<String>> {
    Ok(target.list("locks")?.iter().map(|k| describe_lock(target, k)).collect())
}

/// Deletes every lock: for locks a killed process left behind. Only safe
/// when no backup or garbage collection is running on the target.
pub(crate) fn break_locks(target: &dyn Target) -> Result<usize> {
    let keys = target.list("locks")?;
    for k in &keys {
        target.delete(k)?;
    }
    Ok(keys.len())
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(host_name().as_bytes());
    h.finalize().to_hex()[..16].to_string()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
