//! An in-memory disk with a volatile write cache, for crash and fault tests.
//!
//! Real disks (and the kernel page cache in front of them) acknowledge writes
//! long before the bytes are safe. A store is only correct if it never relies
//! on data it has not synced, and the only way to test that exhaustively is to
//! cut the power at every interesting moment and look at what is left. This
//! module provides such a disk:
//!
//! * Every file keeps a *durable* image (what is on the platter) and a list of
//!   *pending* operations issued since its last successful
//!   [`StorageFile::sync`]. Reads see the pending operations on top of the
//!   durable image, just as reads through a page cache do.
//! * [`SimDir::crash`] cuts the power: it returns a fresh disk holding only
//!   what survived under a chosen [`LossMode`], and kills the old one so
//!   threads still running against it fail with `EIO` instead of silently
//!   writing into a disk nobody will ever look at.
//! * Knobs inject the failures that are hard to provoke on real hardware: a
//!   power cut after exactly N operations, failing `fsync`s and a full disk.
//! * A failed sync behaves as on Linux: the operations it should have made
//!   durable are lost (write-back failed and the kernel marked the pages
//!   clean, so no later sync retries them), yet reads keep seeing them, from
//!   the page cache, until [`StorageFile::drop_cache`] drops it.
//! * Locks: [`StorageDir::lock`] is one lock per disk (the `LOCK` file of
//!   the real backend); [`StorageFile::try_lock`] locks one file, following
//!   it through renames, as `flock` does.
//!
//! # Metadata model
//!
//! Directory metadata is *ordered*: creating a file with
//! [`StorageDir::open_file`] makes it durable at once as an empty file, so
//! [`StorageDir::sync_dir`] only counts as an operation and has no other
//! effect. File lengths, on the other hand, are data of the file: a length
//! change made by a write, `set_len` or `allocate` is pending until the file
//! is synced, like any other write.

use super::SplitMix64;
use crate::backend::{DirLock, StorageDir, StorageFile};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Unit of atomicity when a write is torn: disks persist whole sectors, so a
/// torn write is a mixture of old and new sectors, never of bytes.
const SECTOR: u64 = 512;

/// Largest file the simulation agrees to hold. A real file system refuses
/// absurd lengths with `EFBIG`; refusing them here too keeps a buggy offset
/// from turning into a multi-terabyte allocation that kills the test process.
fn max_file_len() -> u64 {
    (1u64 << 34).min(isize::MAX as u64)
}

/// Source of the disk numbers shown by [`StorageDir::describe`], so error
/// messages tell apart the disks before and after a simulated crash.
static NEXT_DISK_ID: AtomicU64 = AtomicU64::new(1);

/// What happens to unsynced operations when [`SimDir::crash`] cuts the power.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossMode {
    /// Every unsynced operation is lost: the harshest outcome a correct
    /// store must survive, and the one that finds missing syncs fastest.
    DropAll,
    /// Every unsynced operation survives, as if the cache was flushed just
    /// before the cut; finds recovery code that mishandles "too much" data.
    KeepAll,
    /// Each unsynced operation survives independently, in any combination:
    /// models a drive that reorders its cache freely.
    Random {
        /// Probability that one unsynced operation survives.
        keep_prob: f64,
        /// Probability that a surviving write spanning more than one sector
        /// is torn; each of its sectors then survives with probability 1/2.
        tear_prob: f64,
    },
    /// The unsynced operations of all files survive in global issue order up
    /// to a random cut point; the write at the cut may be torn at sector
    /// granularity. Models a drive that writes its cache in order.
    Prefix,
}

/// Counters of the operations a [`SimDir`] disk has served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Counted operations issued, the same number as [`SimDir::ops_count`].
    pub ops: u64,
    /// File syncs that succeeded (directory syncs and failed syncs are not
    /// included, so the number measures real flush cost).
    pub syncs: u64,
    /// `write_at` calls that succeeded.
    pub writes: u64,
    /// Bytes passed to the `write_at` calls that succeeded.
    pub bytes_written: u64,
}

/// A simulated store directory on an in-memory disk.
///
/// Clones share the same disk, so a test can keep one clone for inspection
/// and fault injection while the store under test owns another.
#[derive(Clone)]
pub struct SimDir {
    disk: Arc<Mutex<Disk>>,
    id: u64,
}

impl fmt::Debug for SimDir {
    // Deliberately does not lock the disk nor dump its contents: images can
    // be large and a Debug call must never block behind a busy disk.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDir").field("disk", &self.id).finish()
    }
}

impl Default for SimDir {
    fn default() -> Self {
        SimDir::new()
    }
}

/// One unsynced operation, kept so a crash can decide its fate.
#[derive(Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Punch { offset: u64, len: u64 },
    Allocate { offset: u64, len: u64 },
}

#[derive(Debug)]
struct Pending {
    /// Position in the disk-wide issue order, which `LossMode::Prefix` needs
    /// to cut across files consistently.
    seq: u64,
    op: Op,
}

/// Which bytes of a file hold disk space: everything below the larger of
/// its length and its reserved end, except punched holes. Writes and
/// `allocate` fill holes again; truncation drops what lies past the end.
#[derive(Debug, Default, Clone)]
struct Blocks {
    /// End of the space reserved by `allocate`, which may lie past the length.
    reserved_end: u64,
    /// Punched ranges, start -> length, disjoint and not adjacent.
    holes: BTreeMap<u64, u64>,
    hole_bytes: u64,
}

impl Blocks {
    /// Bytes held by a file of length `len`.
    fn usage(&self, len: u64) -> u64 {
        len.max(self.reserved_end).saturating_sub(self.hole_bytes)
    }

    /// Bytes of holes inside `[start, end)`.
    fn holes_in(&self, start: u64, end: u64) -> u64 {
        self.holes
            .range(..end)
            .rev()
            .take_while(|(&s, &l)| s + l > start)
            .map(|(&s, &l)| (s + l).min(end) - s.max(start))
            .sum()
    }

    /// What a file of length `len` would hold after `op`, without applying it.
    fn usage_after(&self, len: u64, op: &Op) -> u64 {
        match op {
            Op::Write { offset, data } => {
                let end = offset + data.len() as u64;
                len.max(end).max(self.reserved_end) - (self.hole_bytes - self.holes_in(*offset, end))
            }
            Op::Allocate { offset, len: n } => {
                let end = offset + n;
                len.max(end).max(self.reserved_end) - (self.hole_bytes - self.holes_in(*offset, end))
            }
            Op::SetLen(n) => n - self.holes_in(0, *n),
            Op::Punch { .. } => self.usage(len),
        }
    }

    /// `[start, end)` holds space again.
    fn fill(&mut self, start: u64, end: u64) {
        let inside: Vec<(u64, u64)> =
            self.holes.range(..end).rev().take_while(|(&s, &l)| s + l > start).map(|(&s, &l)| (s, l)).collect();
        for (s, l) in inside {
            self.holes.remove(&s);
            self.hole_bytes -= l;
            for (a, b) in [(s, start.max(s)), (end.min(s + l), s + l)] {
                if b > a {
                    self.holes.insert(a, b - a);
                    self.hole_bytes += b - a;
                }
            }
        }
    }

    /// `[start, end)` gives its space back.
    fn punch(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        self.fill(start, end);
        let (mut a, mut b) = (start, end);
        if let Some((&s, &l)) = self.holes.range(..a).next_back().filter(|(&s, &l)| s + l == a) {
            self.holes.remove(&s);
            self.hole_bytes -= l;
            a = s;
        }
        if let Some(&l) = self.holes.get(&b) {
            self.holes.remove(&b);
            self.hole_bytes -= l;
            b += l;
        }
        self.holes.insert(a, b - a);
        self.hole_bytes += b - a;
    }

    /// The file is cut (or set) to `len`: reservations and holes past it go.
    fn truncate(&mut self, len: u64) {
        self.reserved_end = self.reserved_end.min(len);
        self.fill(len, u64::MAX);
    }
}

#[derive(Debug, Default)]
struct SimFileState {
    name: String,
    durable: Vec<u8>,
    durable_alloc: Blocks,
    /// The durable image with every pending operation applied, maintained
    /// eagerly so reads cost O(read length) however many writes are pending.
    visible: Vec<u8>,
    alloc: Blocks,
    pending: Vec<Pending>,
    /// Holder of the file's lock, see [`StorageFile::try_lock`].
    lock_token: Option<u64>,
}

impl SimFileState {
    fn new(name: String) -> Self {
        SimFileState { name, ..SimFileState::default() }
    }

    /// Space the file takes: its length, or further if space was reserved
    /// past the end, less the holes punched in it.
    fn usage(&self) -> u64 {
        self.alloc.usage(self.visible.len() as u64)
    }

    /// What the file would take after `op`.
    fn usage_after(&self, op: &Op) -> u64 {
        self.alloc.usage_after(self.visible.len() as u64, op)
    }
}

#[derive(Debug)]
struct Disk {
    id: u64,
    /// Files live in a vector so handles can address them by index; the
    /// trait has no way to remove a file, so indices never go stale.
    files: Vec<SimFileState>,
    names: BTreeMap<String, usize>,
    /// Superseded by a crash: everything fails from now on.
    crashed: bool,
    /// Killed by the op-count cut: everything fails until `crash`.
    cut: bool,
    cut_after: Option<u64>,
    fail_syncs: u64,
    capacity: Option<u64>,
    lock_token: Option<u64>,
    next_token: u64,
    /// `drop_cache` leaves the cache alone: models recovery that reads
    /// through the page cache.
    keep_cache: bool,
    next_seq: u64,
    stats: SimStats,
}

impl Disk {
    fn new(capacity: Option<u64>) -> Self {
        Disk {
            id: NEXT_DISK_ID.fetch_add(1, Ordering::Relaxed),
            files: Vec::new(),
            names: BTreeMap::new(),
            crashed: false,
            cut: false,
            cut_after: None,
            fail_syncs: 0,
            capacity,
            lock_token: None,
            next_token: 0,
            keep_cache: false,
            next_seq: 0,
            stats: SimStats::default(),
        }
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed || self.cut {
            Err(eio())
        } else {
            Ok(())
        }
    }

    /// Admits one counted operation, or kills the disk if the configured cut
    /// point has been reached. Called before the operation touches anything,
    /// so the failing operation leaves no trace.
    fn begin_counted(&mut self) -> io::Result<()> {
        self.alive()?;
        match self.cut_after {
            Some(0) => {
                self.cut = true;
                return Err(eio());
            }
            Some(ref mut n) => *n -= 1,
            None => {}
        }
        self.stats.ops += 1;
        Ok(())
    }

    fn usage(&self) -> u64 {
        self.files.iter().fold(0u64, |sum, f| sum.saturating_add(f.usage()))
    }

    /// Refuses a change that would raise file `idx`'s usage to `new_usage`
    /// beyond the capacity. Changes that do not grow usage always pass, so a
    /// full disk can still be shrunk or overwritten in place.
    fn check_space(&self, idx: usize, new_usage: u64) -> io::Result<()> {
        let Some(cap) = self.capacity else {
            return Ok(());
        };
        let old_usage = self.files[idx].usage();
        if new_usage <= old_usage {
            return Ok(());
        }
        let total = self.usage().saturating_add(new_usage - old_usage);
        if total > cap {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// Records `op` as pending on file `idx` and applies it to the visible
    /// image. The caller has validated sizes and space.
    fn push(&mut self, idx: usize, op: Op) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let file = &mut self.files[idx];
        let new_len = match &op {
            Op::Write { offset, data } => offset + data.len() as u64,
            Op::SetLen(len) => *len,
            Op::Allocate { offset, len } => offset + len,
            Op::Punch { .. } => 0,
        };
        let cur = file.visible.len() as u64;
        if new_len > cur {
            // `usize` conversion is safe: sizes were checked against
            // `max_file_len`, which fits in `isize`.
            file.visible
                .try_reserve((new_len - cur) as usize)
                .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        }
        apply(&mut file.visible, &mut file.alloc, &op);
        file.pending.push(Pending { seq, op });
        Ok(())
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// The end of `[offset, offset + len)`, refused with `EFBIG` when the file
/// could not grow that far.
fn checked_end(offset: u64, len: u64) -> io::Result<u64> {
    offset
        .checked_add(len)
        .filter(|&end| end <= max_file_len())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))
}

/// Writes `data` at `offset`, growing the image with zeroes as a file
/// system does when writing past the end.
fn write_into(img: &mut Vec<u8>, offset: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let start = offset as usize;
    let end = start + data.len();
    if end > img.len() {
        img.resize(end, 0);
    }
    img[start..end].copy_from_slice(data);
}

fn apply(img: &mut Vec<u8>, alloc: &mut Blocks, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            write_into(img, *offset, data);
            alloc.fill(*offset, offset + data.len() as u64);
        }
        Op::SetLen(len) => {
            img.resize(*len as usize, 0);
            // Truncation frees the blocks past the new end, reservations
            // included.
            alloc.truncate(*len);
        }
        Op::Punch { offset, len } => {
            let size = img.len() as u64;
            let start = (*offset).min(size) as usize;
            let end = offset.saturating_add(*len).min(size) as usize;
            img[start..end].fill(0);
            // KEEP_SIZE: a punch gives back space up to the reserved end,
            // never changes the length.
            let extent = size.max(alloc.reserved_end);
            alloc.punch(*offset, offset.saturating_add(*len).min(extent));
        }
        Op::Allocate { offset, len } => {
            // fallocate without KEEP_SIZE (what the real backend uses)
            // extends the visible length as well as reserving space.
            let end = offset + len;
            if end > img.len() as u64 {
                img.resize(end as usize, 0);
            }
            alloc.reserved_end = alloc.reserved_end.max(end);
            alloc.fill(*offset, end);
        }
    }
}

/// Applies only some 512-byte sectors of a write, each with probability
/// 1/2. Sectors are aligned to the absolute file offset because that is
/// where the device's atomicity boundaries are, not at the start of the
/// buffer.
fn apply_torn(img: &mut Vec<u8>, offset: u64, data: &[u8], rng: &mut SplitMix64) {
    let end = offset + data.len() as u64;
    let mut pos = offset;
    while pos < end {
        let sector_end = ((pos / SECTOR + 1) * SECTOR).min(end);
        if rng.chance(0.5) {
            let from = (pos - offset) as usize;
            let to = (sector_end - offset) as usize;
            write_into(img, pos, &data[from..to]);
        }
        pos = sector_end;
    }
}

fn spans_sectors(offset: u64, len: usize) -> bool {
    len > 0 && offset / SECTOR != (offset + len as u64 - 1) / SECTOR
}

impl SimDir {
    /// An empty disk with no faults configured.
    pub fn new() -> SimDir {
        SimDir::from_disk(Disk::new(None))
    }

    fn from_disk(disk: Disk) -> SimDir {
        let id = disk.id;
        SimDir { disk: Arc::new(Mutex::new(disk)), id }
    }

    /// Cuts the power and returns the disk as it is found afterwards.
    ///
    /// The returned `SimDir` is independent of `self` and holds only the
    /// durable data plus whatever unsynced operations survived under `loss`
    /// (chosen deterministically from `seed`). It starts unlocked, with no
    /// cut, sync failure or statistics, but keeps the capacity: that is a
    /// property of the hardware.
    ///
    /// `self` becomes dead: every later operation on it, on its clones and on
    /// files opened from it fails with `EIO`, so threads still running
    /// against the old disk stop cleanly. Its contents stay frozen, so
    /// calling `crash` on it again with other seeds explores other outcomes
    /// of the same power cut.
    pub fn crash(&self, loss: LossMode, seed: u64) -> SimDir {
        let mut old = self.disk.lock();
        old.crashed = true;
        old.lock_token = None;
        let mut rng = SplitMix64(seed);

        // Prefix mode cuts the disk-wide issue order, so find the sequence
        // number of the first lost operation before looking at any file.
        let prefix_cut = if loss == LossMode::Prefix {
            let mut seqs: Vec<u64> = old.files.iter().flat_map(|f| f.pending.iter().map(|p| p.seq)).collect();
            seqs.sort_unstable();
            let cut = rng.up_to(seqs.len() as u64) as usize;
            seqs.get(cut).copied().unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };

        let mut disk = Disk::new(old.capacity);
        // Removed and replaced files have no name and do not survive.
        for file in old.files.iter().filter(|f| !f.name.is_empty()) {
            let (image, alloc) = match loss {
                LossMode::DropAll => (file.durable.clone(), file.durable_alloc.clone()),
                // Not `visible`: it may still show what a failed sync lost.
                LossMode::KeepAll => {
                    let mut img = file.durable.clone();
                    let mut alloc = file.durable_alloc.clone();
                    for p in &file.pending {
                        apply(&mut img, &mut alloc, &p.op);
                    }
                    (img, alloc)
                }
                LossMode::Random { keep_prob, tear_prob } => {
                    let mut img = file.durable.clone();
                    let mut alloc = file.durable_alloc.clone();
                    for p in &file.pending {
                        if !rng.chance(keep_prob) {
                            continue;
                        }
                        match &p.op {
                            Op::Write { offset, data }
                                if spans_sectors(*offset, data.len()) && rng.chance(tear_prob) =>
                            {
                                // Space accounting takes the whole write
                                // as landed: a torn write still allocated.
                                apply_torn(&mut img, *offset, data, &mut rng);
                                alloc.fill(*offset, offset + data.len() as u64);
                            }
                            op => apply(&mut img, &mut alloc, op),
                        }
                    }
                    (img, alloc)
                }
                LossMode::Prefix => {
                    let mut img = file.durable.clone();
                    let mut alloc = file.durable_alloc.clone();
                    for p in &file.pending {
                        if p.seq < prefix_cut {
                            apply(&mut img, &mut alloc, &p.op);
                        } else if p.seq == prefix_cut {
                            if let Op::Write { offset, data } = &p.op {
                                apply_torn(&mut img, *offset, data, &mut rng);
                                alloc.fill(*offset, offset + data.len() as u64);
                            }
                        }
                    }
                    (img, alloc)
                }
            };
            let idx = disk.files.len();
            disk.names.insert(file.name.clone(), idx);
            disk.files.push(SimFileState {
                name: file.name.clone(),
                durable: image.clone(),
                durable_alloc: alloc.clone(),
                visible: image,
                alloc,
                pending: Vec::new(),
                lock_token: None,
            });
        }
        SimDir::from_disk(disk)
    }

    /// Arranges a power cut: after `n` more counted operations succeed, the
    /// next one fails with `EIO` without taking effect, and so does every
    /// operation after it, reads included, until [`SimDir::crash`].
    ///
    /// Counted operations are `write_at`, `sync`, `set_len`, `allocate`,
    /// `punch_hole`, `sync_dir` and `open_file` creating a new file. Run a
    /// workload once and read [`SimDir::ops_count`] to learn how many cut
    /// points it has. `None` disarms a pending cut but does not revive a
    /// disk that is already cut.
    pub fn set_cut_after_ops(&self, n: Option<u64>) {
        self.disk.lock().cut_after = n;
    }

    /// How many counted operations this disk has admitted, including ones
    /// that then failed with an injected error such as `ENOSPC`, so reruns
    /// of the same workload count identically.
    pub fn ops_count(&self) -> u64 {
        self.disk.lock().stats.ops
    }

    /// Whether the configured op-count cut has happened.
    pub fn is_cut(&self) -> bool {
        self.disk.lock().cut
    }

    /// Makes the next `n` file syncs fail with `EIO` (replacing any earlier
    /// count). Like Linux after an `fsync` error, the unsynced operations of
    /// the file are lost for good (no later sync writes them, no crash keeps
    /// them) but reads still see them, as reads of a page cache whose
    /// failed pages were marked clean do, until the file's
    /// [`StorageFile::drop_cache`] runs or the power is cut.
    pub fn fail_next_sync(&self, n: u64) {
        self.disk.lock().fail_syncs = n;
    }

    /// When set, [`StorageFile::drop_cache`] still syncs but keeps the page
    /// cache: reads go on seeing data a failed sync lost. Models a store
    /// that recovers through the cache, to show what dropping it prevents.
    pub fn set_keep_cache(&self, keep: bool) {
        self.disk.lock().keep_cache = keep;
    }

    /// Releases the directory lock whoever holds it, as deleting the real
    /// backend's `LOCK` file under a running store does: the next
    /// [`StorageDir::lock`] succeeds. File locks are not touched.
    pub fn break_dir_lock(&self) {
        self.disk.lock().lock_token = None;
    }

    /// Limits the bytes the disk holds, counted per file as the larger of its
    /// length and its reserved extent. An operation that would grow the total
    /// past the limit fails with `ENOSPC` and changes nothing. `None` means
    /// unlimited. Punching a hole gives its space back; writing or
    /// allocating into a hole takes space again, and fails with `ENOSPC`
    /// when the disk is full.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.disk.lock().capacity = bytes;
    }

    /// Bytes currently counted against the capacity.
    pub fn used_bytes(&self) -> u64 {
        self.disk.lock().usage()
    }

    /// Operation counters since this disk was created (or recovered).
    pub fn stats(&self) -> SimStats {
        self.disk.lock().stats
    }

    /// The names of all files on the disk, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.disk.lock().names.keys().cloned().collect()
    }

    /// The durable image of a file, i.e. what would survive a crash that
    /// drops every unsynced operation; `None` when the file does not exist.
    /// Works on dead disks too, for post-mortem inspection.
    pub fn read_durable(&self, name: &str) -> Option<Vec<u8>> {
        let disk = self.disk.lock();
        disk.names.get(name).map(|&i| disk.files[i].durable.clone())
    }

    /// The image a read would currently see (durable plus pending); `None`
    /// when the file does not exist. Works on dead disks too.
    pub fn read_visible(&self, name: &str) -> Option<Vec<u8>> {
        let disk = self.disk.lock();
        disk.names.get(name).map(|&i| disk.files[i].visible.clone())
    }

    /// Flips bits of one byte, as bit rot on the platter would: both the
    /// durable and the visible image change, bypassing the write cache and
    /// every injected fault. Offsets past the end and unknown files are
    /// ignored. Meant for a disk no open store is using.
    pub fn corrupt(&self, name: &str, offset: u64, xor: u8) {
        let mut disk = self.disk.lock();
        let Some(&i) = disk.names.get(name) else {
            return;
        };
        let file = &mut disk.files[i];
        for img in [&mut file.durable, &mut file.visible] {
            if let Some(b) = usize::try_from(offset).ok().and_then(|o| img.get_mut(o)) {
                *b ^= xor;
            }
        }
    }

    /// Sets the length of both the durable and the visible image directly
    /// (zero-filling if it grows), modelling a lost or damaged tail that
    /// recovery must cope with. Unknown files and lengths beyond the
    /// simulation's file size limit are ignored. Meant for a disk no open
    /// store is using.
    pub fn truncate_durable(&self, name: &str, len: u64) {
        if len > max_file_len() {
            return;
        }
        let mut disk = self.disk.lock();
        let Some(&i) = disk.names.get(name) else {
            return;
        };
        let file = &mut disk.files[i];
        file.durable.resize(len as usize, 0);
        file.visible.resize(len as usize, 0);
        file.durable_alloc.truncate(len);
        file.alloc.truncate(len);
    }
}

impl StorageDir for SimDir {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut disk = self.disk.lock();
        disk.alive()?;
        let index = match disk.names.get(name) {
            Some(&i) => i,
            None if create => {
                disk.begin_counted()?;
                let i = disk.files.len();
                disk.files.push(SimFileState::new(name.to_string()));
                disk.names.insert(name.to_string(), i);
                i
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Arc::new(SimFile { disk: Arc::clone(&self.disk), index, name: name.to_string(), disk_id: self.id }))
    }

    fn sync_dir(&self) -> io::Result<()> {
        // Creation is already durable (ordered metadata), so there is nothing
        // to flush; the call still counts so cut sweeps cover it.
        self.disk.lock().begin_counted()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        // Ordered metadata: the rename is durable, atomically, when it returns.
        let mut disk = self.disk.lock();
        disk.alive()?;
        let Some(&index) = disk.names.get(from) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        disk.begin_counted()?;
        if let Some(old) = disk.names.remove(to) {
            disk.files[old].name.clear();
        }
        disk.names.remove(from);
        disk.names.insert(to.to_string(), index);
        disk.files[index].name = to.to_string();
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.alive()?;
        let Some(&index) = disk.names.get(name) else {
            return Ok(());
        };
        disk.begin_counted()?;
        disk.names.remove(name);
        disk.files[index].name.clear();
        Ok(())
    }

    fn lock(&self) -> io::Result<DirLock> {
        let mut disk = self.disk.lock();
        disk.alive()?;
        if disk.lock_token.is_some() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let token = disk.next_token;
        disk.next_token += 1;
        disk.lock_token = Some(token);
        Ok(Box::new(SimLock { disk: Arc::clone(&self.disk), token, file: None }))
    }

    fn describe(&self) -> String {
        format!("sim-disk#{}", self.id)
    }
}

/// The guard behind a [`DirLock`] from a [`SimDir`].
struct SimLock {
    disk: Arc<Mutex<Disk>>,
    /// Identifies this holder, so a guard outliving a crash (which already
    /// released the lock) cannot release a lock taken by someone else.
    token: u64,
    /// The locked file, or `None` for the directory lock.
    file: Option<usize>,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut disk = self.disk.lock();
        let holder = match self.file {
            Some(i) => &mut disk.files[i].lock_token,
            None => &mut disk.lock_token,
        };
        if *holder == Some(self.token) {
            *holder = None;
        }
    }
}

/// A file handle on a [`SimDir`] disk.
struct SimFile {
    disk: Arc<Mutex<Disk>>,
    index: usize,
    name: String,
    disk_id: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile").field("disk", &self.disk_id).field("name", &self.name).finish()
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let disk = self.disk.lock();
        disk.alive()?;
        let img = &disk.files[self.index].visible;
        let size = img.len() as u64;
        let n = if offset >= size { 0 } else { (size - offset).min(buf.len() as u64) as usize };
        if n > 0 {
            let start = offset as usize;
            buf[..n].copy_from_slice(&img[start..start + n]);
        }
        buf[n..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.begin_counted()?;
        if !buf.is_empty() {
            // Like pwrite, an empty write changes nothing, not even the length.
            checked_end(offset, buf.len() as u64)?;
            let op = Op::Write { offset, data: buf.to_vec() };
            let new_usage = disk.files[self.index].usage_after(&op);
            disk.check_space(self.index, new_usage)?;
            disk.push(self.index, op)?;
        }
        disk.stats.writes += 1;
        disk.stats.bytes_written += buf.len() as u64;
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.begin_counted()?;
        if disk.fail_syncs > 0 {
            disk.fail_syncs -= 1;
            // Write-back failed and the pages were marked clean: the data is
            // gone from the disk's future but stays in `visible`.
            disk.files[self.index].pending.clear();
            return Err(eio());
        }
        let file = &mut disk.files[self.index];
        // Replaying the pending list costs O(unsynced bytes); copying the
        // visible image instead would cost O(file size) per sync.
        for p in std::mem::take(&mut file.pending) {
            apply(&mut file.durable, &mut file.durable_alloc, &p.op);
        }
        disk.stats.syncs += 1;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let disk = self.disk.lock();
        disk.alive()?;
        Ok(disk.files[self.index].visible.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.begin_counted()?;
        checked_end(len, 0)?;
        let op = Op::SetLen(len);
        let new_usage = disk.files[self.index].usage_after(&op);
        disk.check_space(self.index, new_usage)?;
        disk.push(self.index, op)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.begin_counted()?;
        // fallocate(2) rejects an empty range; so do we, so code that passes
        // here also passes on a real file system.
        if len == 0 {
            return Err(einval());
        }
        checked_end(offset, len)?;
        let op = Op::Allocate { offset, len };
        let new_usage = disk.files[self.index].usage_after(&op);
        disk.check_space(self.index, new_usage)?;
        disk.push(self.index, op)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.begin_counted()?;
        if len == 0 || offset.checked_add(len).is_none() {
            return Err(einval());
        }
        disk.push(self.index, Op::Punch { offset, len })
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        let disk = self.disk.lock();
        disk.alive()?;
        Ok(disk.files[self.index].usage())
    }

    fn try_lock(&self) -> io::Result<DirLock> {
        let mut disk = self.disk.lock();
        disk.alive()?;
        if disk.files[self.index].lock_token.is_some() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let token = disk.next_token;
        disk.next_token += 1;
        disk.files[self.index].lock_token = Some(token);
        Ok(Box::new(SimLock { disk: Arc::clone(&self.disk), token, file: Some(self.index) }))
    }

    fn drop_cache(&self) -> io::Result<()> {
        let synced = self.sync();
        let mut disk = self.disk.lock();
        disk.alive()?;
        if !disk.keep_cache {
            // The cache now holds only what the disk holds plus what is
            // still pending (dirty pages are not dropped).
            let file = &mut disk.files[self.index];
            file.visible = file.durable.clone();
            file.alloc = file.durable_alloc.clone();
            for p in &file.pending {
                apply(&mut file.visible, &mut file.alloc, &p.op);
            }
        }
        synced
    }

    fn drop_cache_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.alive()?;
        if disk.keep_cache {
            return Ok(());
        }
        let file = &mut disk.files[self.index];
        if !file.pending.is_empty() {
            // Dirty pages stay: rebuild the whole cache as `drop_cache`
            // does (dropping more than asked is allowed).
            file.visible = file.durable.clone();
            file.alloc = file.durable_alloc.clone();
            for p in &file.pending {
                apply(&mut file.visible, &mut file.alloc, &p.op);
            }
            return Ok(());
        }
        file.alloc = file.durable_alloc.clone();
        let start = (offset as usize).min(file.visible.len());
        let end = (offset.saturating_add(len) as usize).min(file.visible.len());
        for i in start..end {
            file.visible[i] = file.durable.get(i).copied().unwrap_or(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(e: &io::Error) -> Option<i32> {
        e.raw_os_error()
    }

    fn read(f: &Arc<dyn StorageFile>, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xEE; len];
        f.read_at(&mut buf, offset).unwrap();
        buf
    }

    #[test]
    fn reads_see_pending_writes_and_zero_past_eof() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"hello", 2).unwrap();
        assert_eq!(f.len().unwrap(), 7);
        assert_eq!(read(&f, 0, 10), b"\0\0hello\0\0\0");
        assert_eq!(read(&f, 100, 3), vec![0; 3]);
        assert_eq!(read(&f, u64::MAX, 3), vec![0; 3]);
        f.punch_hole(3, 2).unwrap();
        assert_eq!(read(&f, 0, 7), b"\0\0h\0\0lo");
        assert_eq!(f.len().unwrap(), 7);
        f.set_len(4).unwrap();
        assert_eq!(read(&f, 0, 6), b"\0\0h\0\0\0");
        assert!(dir.open_file("missing", false).unwrap_err().kind() == io::ErrorKind::NotFound);
    }

    #[test]
    fn unsynced_write_lost_on_drop_all() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"volatile", 0).unwrap();
        let after = dir.crash(LossMode::DropAll, 1);
        assert_eq!(after.file_names(), vec!["a".to_string()]);
        let g = after.open_file("a", false).unwrap();
        assert_eq!(g.len().unwrap(), 0);
        assert_eq!(after.read_durable("a").unwrap(), b"");
    }

    #[test]
    fn synced_write_survives() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"durable", 0).unwrap();
        f.sync().unwrap();
        f.write_at(b"X", 0).unwrap();
        assert_eq!(dir.read_durable("a").unwrap(), b"durable");
        let after = dir.crash(LossMode::DropAll, 7);
        let g = after.open_file("a", false).unwrap();
        assert_eq!(read(&g, 0, 7), b"durable");
        assert_eq!(dir.stats().syncs, 1);
        assert_eq!(dir.stats().writes, 2);
        assert_eq!(dir.stats().bytes_written, 8);
    }

    #[test]
    fn keep_all_keeps_everything() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"abcdef", 0).unwrap();
        f.sync().unwrap();
        f.write_at(b"XY", 1).unwrap();
        f.allocate(0, 4096).unwrap();
        f.punch_hole(4, 1).unwrap();
        let expect = dir.read_visible("a").unwrap();
        let after = dir.crash(LossMode::KeepAll, 0);
        assert_eq!(after.read_durable("a").unwrap(), expect);
        assert_eq!(&expect[..6], b"aXYd\0f");
        assert_eq!(expect.len(), 4096);
        // The punched byte gave its space back, and the hole survives too.
        assert_eq!(after.used_bytes(), 4095);
    }

    #[test]
    fn old_disk_is_dead_after_crash() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        let _lock = dir.lock().unwrap();
        f.write_at(b"x", 0).unwrap();
        let after = dir.crash(LossMode::KeepAll, 0);
        assert_eq!(raw(&f.write_at(b"y", 0).unwrap_err()), Some(libc::EIO));
        assert_eq!(raw(&f.read_at(&mut [0], 0).unwrap_err()), Some(libc::EIO));
        assert_eq!(raw(&dir.open_file("a", false).unwrap_err()), Some(libc::EIO));
        // The power cut released the lock: the recovered disk can be opened.
        let lock2 = after.lock().unwrap();
        drop(lock2);
        // Crashing the dead disk again explores another outcome of the same cut.
        let again = dir.crash(LossMode::DropAll, 0);
        assert_eq!(again.read_durable("a").unwrap(), b"");
    }

    #[test]
    fn failed_sync_leaves_data_pending() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"data", 0).unwrap();
        dir.fail_next_sync(1);
        assert_eq!(raw(&f.sync().unwrap_err()), Some(libc::EIO));
        assert_eq!(dir.read_durable("a").unwrap(), b"");
        assert_eq!(read(&f, 0, 4), b"data");
        assert_eq!(dir.crash(LossMode::DropAll, 0).read_durable("a").unwrap(), b"");

        // As on Linux, a later sync succeeds without writing what the
        // failed one lost, while reads still see it until the cache goes.
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"data", 0).unwrap();
        dir.fail_next_sync(1);
        assert!(f.sync().is_err());
        f.write_at(b"!", 4).unwrap();
        f.sync().unwrap();
        assert_eq!(dir.read_durable("a").unwrap(), b"\0\0\0\0!");
        assert_eq!(read(&f, 0, 5), b"data!");
        assert_eq!(dir.crash(LossMode::KeepAll, 0).read_durable("a").unwrap(), b"\0\0\0\0!");
        assert_eq!(dir.stats().syncs, 1);
    }

    #[test]
    fn drop_cache_shows_what_the_disk_holds() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"old", 0).unwrap();
        f.sync().unwrap();
        f.write_at(b"new", 0).unwrap();
        dir.fail_next_sync(1);
        assert!(f.sync().is_err());
        f.write_at(b"pending", 3).unwrap();
        // Another handle shares the cache, as file descriptors of one inode do.
        let g = dir.open_file("a", false).unwrap();
        assert_eq!(read(&g, 0, 10), b"newpending");
        dir.set_keep_cache(true);
        g.drop_cache().unwrap();
        assert_eq!(read(&f, 0, 10), b"newpending");
        dir.set_keep_cache(false);
        g.drop_cache().unwrap();
        // The dropped cache shows the disk: the synced "old", then what the
        // drop's own sync wrote.
        assert_eq!(read(&f, 0, 10), b"oldpending");
        assert_eq!(dir.read_durable("a").unwrap(), b"oldpending");
    }

    #[test]
    fn file_lock_follows_the_file_not_the_name() {
        let dir = SimDir::new();
        let f = dir.open_file("a.new", true).unwrap();
        let guard = f.try_lock().unwrap();
        assert_eq!(f.try_lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        dir.rename("a.new", "a").unwrap();
        let same = dir.open_file("a", false).unwrap();
        assert_eq!(same.try_lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // A new file under the old name is another file.
        let other = dir.open_file("a.new", true).unwrap();
        drop(other.try_lock().unwrap());
        // The directory lock is separate, and breaking it leaves file locks.
        let dl = dir.lock().unwrap();
        dir.break_dir_lock();
        let _dl2 = dir.lock().unwrap();
        drop(dl);
        assert_eq!(same.try_lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        drop(same.try_lock().unwrap());
    }

    #[test]
    fn cut_after_ops_fails_next_op_and_everything_after() {
        // Count the ops of a small workload, then cut at every point.
        fn workload(dir: &SimDir) -> io::Result<()> {
            let f = dir.open_file("a", true)?;
            dir.sync_dir()?;
            f.write_at(b"one", 0)?;
            f.sync()?;
            f.write_at(b"two", 3)?;
            f.allocate(0, 100)?;
            f.set_len(50)?;
            f.punch_hole(0, 1)?;
            f.sync()
        }
        let dir = SimDir::new();
        workload(&dir).unwrap();
        let total = dir.ops_count();
        assert_eq!(total, 9);
        for k in 0..total {
            let dir = SimDir::new();
            dir.set_cut_after_ops(Some(k));
            let err = workload(&dir).unwrap_err();
            assert_eq!(raw(&err), Some(libc::EIO));
            assert!(dir.is_cut());
            assert_eq!(dir.ops_count(), k);
            if k >= 1 {
                let f = dir.open_file("a", false);
                assert_eq!(raw(&f.unwrap_err()), Some(libc::EIO));
            }
            let after = dir.crash(LossMode::KeepAll, 0);
            assert!(!after.is_cut());
            // Nothing of the failing op was applied: with k = 2 the first
            // write was the failing op.
            if k == 2 {
                assert_eq!(after.read_durable("a").unwrap(), b"");
            }
            if k == 3 {
                assert_eq!(after.read_durable("a").unwrap(), b"one");
            }
        }
        // Reads after the cut fail too.
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"x", 0).unwrap();
        dir.set_cut_after_ops(Some(1));
        f.write_at(b"y", 1).unwrap();
        assert_eq!(raw(&f.write_at(b"z", 2).unwrap_err()), Some(libc::EIO));
        assert_eq!(raw(&f.read_at(&mut [0], 0).unwrap_err()), Some(libc::EIO));
        assert_eq!(raw(&f.len().unwrap_err()), Some(libc::EIO));
        assert_eq!(dir.read_visible("a").unwrap(), b"xy");
    }

    #[test]
    fn punched_space_is_given_back_and_taken_again() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.allocate(0, 8192).unwrap();
        f.write_at(&[7; 100], 0).unwrap();
        f.punch_hole(1024, 4096).unwrap();
        assert_eq!(f.allocated_bytes().unwrap(), 4096);
        assert_eq!(f.len().unwrap(), 8192);
        assert_eq!(read(&f, 1024, 4), vec![0; 4]);
        // A full disk refuses to fill the hole, by writing or allocating,
        // yet overwrites outside it still succeed.
        dir.set_capacity(Some(4096 + 100));
        assert_eq!(raw(&f.write_at(&[1; 200], 1000).unwrap_err()), Some(libc::ENOSPC));
        assert_eq!(raw(&f.allocate(1024, 4096).unwrap_err()), Some(libc::ENOSPC));
        f.write_at(&[1; 24], 1000).unwrap();
        f.write_at(&[1; 100], 1024).unwrap();
        assert_eq!(f.allocated_bytes().unwrap(), 4196);
        dir.set_capacity(None);
        f.allocate(0, 8192).unwrap();
        assert_eq!(f.allocated_bytes().unwrap(), 8192);
        // Holes are data of the file: durable only once synced.
        f.sync().unwrap();
        f.punch_hole(0, 8192).unwrap();
        assert_eq!(dir.crash(LossMode::DropAll, 0).used_bytes(), 8192);
    }

    #[test]
    fn capacity_gives_enospc_and_applies_nothing() {
        let dir = SimDir::new();
        dir.set_capacity(Some(1000));
        let a = dir.open_file("a", true).unwrap();
        let b = dir.open_file("b", true).unwrap();
        a.write_at(&[1; 600], 0).unwrap();
        let e = b.write_at(&[2; 500], 0).unwrap_err();
        assert_eq!(raw(&e), Some(libc::ENOSPC));
        assert_eq!(b.len().unwrap(), 0);
        assert_eq!(raw(&b.allocate(0, 401).unwrap_err()), Some(libc::ENOSPC));
        assert_eq!(raw(&b.set_len(401).unwrap_err()), Some(libc::ENOSPC));
        assert_eq!(b.len().unwrap(), 0);
        b.allocate(0, 400).unwrap();
        assert_eq!(dir.used_bytes(), 1000);
        // Overwriting reserved or existing space needs no new space.
        b.write_at(&[3; 400], 0).unwrap();
        a.write_at(&[4; 600], 0).unwrap();
        assert_eq!(raw(&a.write_at(&[5], 600).unwrap_err()), Some(libc::ENOSPC));
        assert_eq!(read(&a, 0, 601)[600], 0);
        // Shrinking frees space.
        a.set_len(100).unwrap();
        b.write_at(&[6; 100], 400).unwrap();
        let after = dir.crash(LossMode::KeepAll, 0);
        assert_eq!(after.used_bytes(), 600);
        let c = after.open_file("c", true).unwrap();
        assert_eq!(raw(&c.write_at(&[0; 401], 0).unwrap_err()), Some(libc::ENOSPC));
    }

    #[test]
    fn random_tears_at_sector_granularity() {
        let mut mixed = false;
        for seed in 0..64 {
            let dir = SimDir::new();
            let f = dir.open_file("a", true).unwrap();
            f.write_at(&[0; 2048], 0).unwrap();
            f.sync().unwrap();
            // Unaligned on purpose: tearing follows absolute sector boundaries.
            f.write_at(&[0xAA; 1200], 100).unwrap();
            let after = dir.crash(LossMode::Random { keep_prob: 1.0, tear_prob: 1.0 }, seed);
            let img = after.read_durable("a").unwrap();
            assert_eq!(img.len(), 2048);
            assert!(img[..100].iter().all(|&b| b == 0));
            assert!(img[1300..].iter().all(|&b| b == 0));
            let pieces = [100..512, 512..1024, 1024..1300];
            let kept: Vec<bool> = pieces
                .iter()
                .map(|r| {
                    let s = &img[r.clone()];
                    assert!(s.iter().all(|&b| b == s[0]), "sector torn within");
                    s[0] == 0xAA
                })
                .collect();
            if kept.contains(&true) && kept.contains(&false) {
                mixed = true;
            }
        }
        assert!(mixed);
    }

    #[test]
    fn random_drops_ops_independently_and_deterministically() {
        let run = |seed| {
            let dir = SimDir::new();
            let f = dir.open_file("a", true).unwrap();
            for i in 0..16u8 {
                f.write_at(&[i + 1], u64::from(i)).unwrap();
            }
            let mode = LossMode::Random { keep_prob: 0.5, tear_prob: 0.0 };
            dir.crash(mode, seed).read_durable("a").unwrap()
        };
        assert_eq!(run(3), run(3));
        let img = run(3);
        let kept = img.iter().filter(|&&b| b != 0).count();
        assert!(kept > 0 && kept < 16, "{img:?}");
    }

    #[test]
    fn prefix_keeps_a_global_prefix() {
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let dir = SimDir::new();
            let a = dir.open_file("a", true).unwrap();
            let b = dir.open_file("b", true).unwrap();
            a.write_at(&[0; 8], 0).unwrap();
            b.write_at(&[0; 8], 0).unwrap();
            a.sync().unwrap();
            b.sync().unwrap();
            // Issue order alternates between files: a0 b0 a1 b1 ...
            for i in 0..4u64 {
                a.write_at(&[1], i).unwrap();
                b.write_at(&[1], i).unwrap();
            }
            let after = dir.crash(LossMode::Prefix, seed);
            let ia = after.read_durable("a").unwrap();
            let ib = after.read_durable("b").unwrap();
            let survived: Vec<bool> = (0..4).flat_map(|i| [ia[i] == 1, ib[i] == 1]).collect();
            let n = survived.iter().take_while(|&&s| s).count();
            assert!(survived[n..].iter().all(|&s| !s), "not a prefix: {survived:?}");
            lengths.insert(n);
        }
        assert!(lengths.len() >= 5, "{lengths:?}");
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let dir = SimDir::new();
        let other = dir.clone();
        let guard = dir.lock().unwrap();
        assert_eq!(other.lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        let guard = other.lock().unwrap();
        assert_eq!(dir.lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(guard);
    }

    #[test]
    fn corruption_helpers_hit_both_images() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        f.write_at(b"abcd", 0).unwrap();
        f.sync().unwrap();
        dir.corrupt("a", 1, 0x20);
        dir.corrupt("a", 99, 0xff);
        dir.corrupt("nope", 0, 0xff);
        assert_eq!(read(&f, 0, 4), b"aBcd");
        assert_eq!(dir.read_durable("a").unwrap(), b"aBcd");
        dir.truncate_durable("a", 2);
        assert_eq!(f.len().unwrap(), 2);
        assert_eq!(dir.read_durable("a").unwrap(), b"aB");
    }

    #[test]
    fn bad_ranges_are_errors_not_panics() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        assert!(f.write_at(b"x", u64::MAX).is_err());
        assert!(f.write_at(b"x", 1 << 60).is_err());
        assert!(f.set_len(u64::MAX).is_err());
        assert!(f.allocate(u64::MAX, 2).is_err());
        assert!(f.allocate(0, 0).is_err());
        assert!(f.punch_hole(0, 0).is_err());
        assert!(f.punch_hole(u64::MAX, 2).is_err());
        f.punch_hole(1 << 40, 10).unwrap();
        f.write_at(b"", u64::MAX).unwrap();
        assert_eq!(f.len().unwrap(), 0);
        assert_eq!(dir.describe(), format!("sim-disk#{}", dir.id));
    }

    #[test]
    fn threads_share_one_disk() {
        let dir = SimDir::new();
        let f = dir.open_file("a", true).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let f = Arc::clone(&f);
                s.spawn(move || {
                    for i in 0..100u64 {
                        f.write_at(&[t as u8 + 1; 8], (t * 100 + i) * 8).unwrap();
                    }
                    f.sync().unwrap();
                });
            }
        });
        let img = dir.crash(LossMode::DropAll, 0).read_durable("a").unwrap();
        assert_eq!(img.len(), 3200);
        for t in 0..4usize {
            assert!(img[t * 800..(t + 1) * 800].iter().all(|&b| b == t as u8 + 1));
        }
    }
}
