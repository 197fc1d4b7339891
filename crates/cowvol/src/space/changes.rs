//! The reference table's change log: the count changes checkpoints wrote
//! instead of rewriting the group pages they touch (see [`super::counts`]).
//!
//! Each checkpoint that has changes to keep appends one *chunk*: pages
//! (in runs, wherever the allocator found room, so that a fragmented disk
//! never stops a checkpoint) holding 12-byte entries in the order they
//! apply, the rest of the pages zero. The catalog lists the chunks (their
//! runs of pages, entries, CRC of the pages). An entry is a little-endian `u64`
//! whose top byte is its kind and whose low 56 bits name a page (or, for a
//! fold, a group), then a little-endian `u32` value:
//!
//! | kind | entry                                                         |
//! |------|---------------------------------------------------------------|
//! | 1    | the page's count goes up by one (value 0)                      |
//! | 2    | the page's count goes down by one (value 0)                    |
//! | 3    | the page's table entry becomes the value                       |
//! | 4    | the group's page holds every change before this one (value 0)  |
//!
//! A group's counts are its page with the changes for it applied in log
//! order, starting after the last fold of the group. When the log holds
//! many more entries than the changes still kept, a checkpoint rewrites
//! what is kept as one chunk and drops the others (compaction).
//!
//! Invariants enforced here:
//! - open reads none of the log: it is read whole the first time a group's
//!   counts are needed, before any of them is computed; until then a change
//!   made to a group is kept after the ones the log will add;
//! - a chunk's pages are the table's own (`0xFFFF_FFFF` entries), named by
//!   the chunk as index pages are by the catalog;
//! - a failed read leaves the log unread, so no count is ever computed
//!   without the changes it holds.

use super::counts::Op;
use super::{Run, Space};
use crate::error::{Error, Result};
use crate::format::{Crc, Dec, Enc, DATA_FILE};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Bytes per entry of the change log.
const ENTRY: usize = 12;
const KIND_SHIFT: u32 = 56;
const PAGE_MASK: u64 = (1 << KIND_SHIFT) - 1;
const KIND_INC: u64 = 1;
const KIND_DEC: u64 = 2;
const KIND_RAW: u64 = 3;
const KIND_FOLD: u64 = 4;

/// One chunk of the change log, as the catalog lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChunkRef {
    /// Its pages, in order.
    pub(crate) runs: Vec<Run>,
    pub(crate) entries: u64,
    /// One per page (version 9 on): the group of its first entry and the
    /// page's CRC. Empty for a chunk of version 8, whose entries are in log
    /// order and whose pages have one CRC together.
    pub(crate) fences: Vec<Fence>,
    /// CRC of its pages, in order (version 8 only).
    pub(crate) crc: u32,
}

/// What the catalog says of one page of a sorted chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fence {
    /// The group its first entry belongs to ([`NO_ENTRY`] for a page that
    /// holds none).
    pub(crate) first_group: u64,
    pub(crate) crc: u32,
}

/// The fence of a page with no entries.
pub(crate) const NO_ENTRY: u64 = u64::MAX;

impl ChunkRef {
    /// Bytes a chunk takes in the catalog at least (no run, no page).
    pub(crate) const MIN_ENCODED: usize = 12;
    /// Bytes of a page's fence in the catalog.
    const FENCE_BYTES: usize = 12;

    /// As the current version writes it: its runs, entries, and a fence
    /// per page.
    pub(crate) fn encode(&self, e: &mut Enc) {
        debug_assert!(self.is_sorted(), "a chunk of version 8 is compacted before a catalog is written");
        e.u32(self.runs.len() as u32);
        for r in &self.runs {
            e.u64(r.start);
            e.u64(r.len);
        }
        e.u64(self.entries);
        for f in &self.fences {
            e.u64(f.first_group);
            e.u32(f.crc);
        }
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<ChunkRef> {
        let n = d.u32()? as usize;
        if n > d.remaining() / 16 {
            return Err(d.bad(format!("{n} runs of a change log chunk do not fit")));
        }
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            runs.push(Run { start: d.u64()?, len: d.u64()? });
        }
        let entries = d.u64()?;
        if d.version < 9 {
            return Ok(ChunkRef { runs, entries, fences: Vec::new(), crc: d.u32()? });
        }
        let pages = runs.iter().try_fold(0u64, |sum, r| sum.checked_add(r.len));
        let pages = match pages {
            Some(p) if p <= (d.remaining() / Self::FENCE_BYTES) as u64 => p,
            _ => return Err(d.bad("the pages of a change log chunk outnumber their fences")),
        };
        let mut fences = Vec::with_capacity(pages as usize);
        for _ in 0..pages {
            fences.push(Fence { first_group: d.u64()?, crc: d.u32()? });
        }
        Ok(ChunkRef { runs, entries, fences, crc: 0 })
    }

    /// Whether its entries are sorted by group with a fence per page, so
    /// that one group's changes can be read without the rest (version 9).
    pub(crate) fn is_sorted(&self) -> bool {
        !self.fences.is_empty()
    }

    /// Its pages, in order.
    pub(crate) fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|r| r.start..r.start + r.len)
    }

    pub(crate) fn page_count(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }

    /// The page number of its `i`th page.
    fn page_at(&self, mut i: u64) -> Option<u64> {
        for r in &self.runs {
            if i < r.len {
                return Some(r.start + i);
            }
            i -= r.len;
        }
        None
    }

    /// Which of its pages may hold entries of group `g`: those from the
    /// last page whose first entry is of an earlier group through the last
    /// whose first entry is of `g` (fences ascend).
    fn pages_of_group(&self, g: u64) -> std::ops::Range<usize> {
        let before = self.fences.partition_point(|f| f.first_group < g);
        let through = self.fences.partition_point(|f| f.first_group <= g);
        before.saturating_sub(1)..through
    }

    /// Where it is, for errors.
    pub(crate) fn location(&self) -> String {
        format!("{DATA_FILE} change log chunk at page {}", self.runs.first().map_or(0, |r| r.start))
    }
}

/// Pages of the change log read last, decoded, so that groups read one
/// after another (discovery, a checkpoint's settling) do not read the pages
/// they share again, even while other threads' loads read pages elsewhere.
/// A page is named by its page number, which stays the log's until a
/// compaction drops the chunks (and empties the cache).
#[derive(Debug, Default)]
pub(crate) struct RecentLogPages(Mutex<RecentPages>);

#[derive(Debug, Default)]
pub(crate) struct RecentPages {
    pages: HashMap<u64, Arc<Vec<Logged>>>,
    order: VecDeque<u64>,
}

/// Groups a checkpoint settles one by one at most before it may read the
/// whole change log instead: a few thousand page reads from the page cache
/// per chunk, milliseconds.
const MANY_WAITING_GROUPS: u64 = 1024;

/// Pages [`RecentLogPages`] keeps: about 5.5 MiB decoded.
const RECENT_LOG_PAGES: usize = 1024;

impl RecentLogPages {
    fn get(&self, page: u64) -> Option<Arc<Vec<Logged>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pages.get(&page).cloned()
    }

    fn put(&self, page: u64, entries: Arc<Vec<Logged>>) {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if recent.order.len() == RECENT_LOG_PAGES {
            if let Some(oldest) = recent.order.pop_front() {
                recent.pages.remove(&oldest);
            }
        }
        if recent.pages.insert(page, entries).is_none() {
            recent.order.push_back(page);
        }
    }

    pub(super) fn clear(&self) {
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        recent.pages.clear();
        recent.order.clear();
    }
}

/// An entry of the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logged {
    Change(u64, Op),
    Fold(u64),
}

/// Entries one page of the log holds.
pub(crate) fn entries_per_page(block_size: u64) -> u64 {
    block_size / ENTRY as u64
}

/// The fewest pages that hold a chunk of `entries` entries besides those
/// of its own pages (a change each: they become the table's), at least one.
pub(crate) fn pages_for(entries: u64, block_size: u64) -> u64 {
    let per = entries_per_page(block_size);
    entries.div_ceil(per.saturating_sub(1).max(1)).max(1)
}

/// Sorts a chunk's entries: by group, each group's fold before its
/// changes, then by page. The sort is stable, so each page's changes keep
/// the order they were made in, which is all their order means: changes to
/// different pages commute, and a fold covers every change to its group
/// that came before it.
pub(crate) fn sort_entries(entries: &mut [Logged], group_entries: u64) {
    entries.sort_by_key(|e| sort_key(e, group_entries));
}

fn sort_key(entry: &Logged, group_entries: u64) -> (u64, u64) {
    match *entry {
        Logged::Fold(g) => (g, 0),
        Logged::Change(page, _) => (page / group_entries, 1 + page % group_entries),
    }
}

fn entry_group(entry: &Logged, group_entries: u64) -> u64 {
    sort_key(entry, group_entries).0
}

/// The pages of a chunk holding `entries`: whole entries per page, each
/// page's tail and the last pages zero.
pub(crate) fn encode_chunk(entries: &[Logged], pages: u64, block_size: u64) -> Vec<u8> {
    let per = entries_per_page(block_size) as usize;
    let mut buf = vec![0u8; (pages * block_size) as usize];
    for (i, entry) in entries.iter().enumerate() {
        let (kind, target, value) = match *entry {
            Logged::Change(page, Op::Inc) => (KIND_INC, page, 0),
            Logged::Change(page, Op::Dec) => (KIND_DEC, page, 0),
            Logged::Change(page, Op::Raw(v)) => (KIND_RAW, page, v),
            Logged::Fold(g) => (KIND_FOLD, g, 0),
        };
        debug_assert!(target <= PAGE_MASK);
        let at = (i / per) * block_size as usize + (i % per) * ENTRY;
        buf[at..at + 8].copy_from_slice(&(kind << KIND_SHIFT | target).to_le_bytes());
        buf[at + 8..at + ENTRY].copy_from_slice(&value.to_le_bytes());
    }
    buf
}

/// The fence of each page of a chunk whose sorted `entries` are encoded in
/// `buf`.
pub(crate) fn fences_of(entries: &[Logged], buf: &[u8], block_size: u64, group_entries: u64) -> Vec<Fence> {
    let per = entries_per_page(block_size) as usize;
    buf.chunks_exact(block_size as usize)
        .enumerate()
        .map(|(i, page)| Fence {
            first_group: entries.get(i * per).map_or(NO_ENTRY, |e| entry_group(e, group_entries)),
            crc: Crc::of(page).0,
        })
        .collect()
}

/// How many of a chunk's `entries` its `i`th page holds.
fn entries_on_page(entries: u64, i: u64, block_size: u64) -> u64 {
    let per = entries_per_page(block_size);
    entries.saturating_sub(i * per).min(per)
}

/// The entries of a chunk's pages; fails on an entry of no known kind, or
/// one that names a page (or group) outside the table.
pub(crate) fn decode_chunk(
    buf: &[u8],
    entries: u64,
    block_size: u64,
    limits: (u64, u64),
    location: &str,
) -> Result<Vec<Logged>> {
    let per = entries_per_page(block_size);
    if entries > buf.len() as u64 / block_size * per {
        return Err(log_corruption(location, format!("{entries} entries do not fit its pages")));
    }
    let (covered_pages, ngroups) = limits;
    let mut out = Vec::with_capacity(entries as usize);
    for i in 0..entries {
        let at = ((i / per) * block_size + (i % per) * ENTRY as u64) as usize;
        let word = u64::from_le_bytes(buf[at..at + 8].try_into().expect("eight bytes"));
        let value = u32::from_le_bytes(buf[at + 8..at + ENTRY].try_into().expect("four bytes"));
        let target = word & PAGE_MASK;
        let bad = |what: &str| log_corruption(location, format!("entry {i}: {what}"));
        let in_table = |limit: u64| (target < limit).then_some(target).ok_or_else(|| bad("outside the table"));
        out.push(match word >> KIND_SHIFT {
            KIND_INC => Logged::Change(in_table(covered_pages)?, Op::Inc),
            KIND_DEC => Logged::Change(in_table(covered_pages)?, Op::Dec),
            KIND_RAW => Logged::Change(in_table(covered_pages)?, Op::Raw(value)),
            KIND_FOLD => Logged::Fold(in_table(ngroups)?),
            k => return Err(bad(&format!("unknown kind {k}"))),
        });
    }
    Ok(out)
}

/// The entries of one page of a sorted chunk (`count` of them), checked
/// against its fence: in order, and the first of the group the fence
/// names. A page whose CRC matched can still disagree with its fence only
/// if the catalog or the writer was wrong; either way no count may be
/// built from it.
pub(crate) fn decode_sorted_page(
    page: &[u8],
    count: u64,
    fence: Fence,
    limits: (u64, u64),
    group_entries: u64,
    location: &str,
) -> Result<Vec<Logged>> {
    let entries = decode_chunk(page, count, page.len() as u64, limits, location)?;
    let first = entries.first().map_or(NO_ENTRY, |e| entry_group(e, group_entries));
    if first != fence.first_group {
        return Err(log_corruption(
            location,
            format!("a page starts at group {first}, its fence says {}", fence.first_group),
        ));
    }
    if entries.windows(2).any(|w| sort_key(&w[0], group_entries) > sort_key(&w[1], group_entries)) {
        return Err(log_corruption(location, "a page's entries are out of order"));
    }
    Ok(entries)
}

fn log_corruption(location: &str, detail: impl Into<String>) -> Error {
    Error::corruption("reference table", location, detail)
}

impl Space {
    /// Whether the change log on the disk is in RAM (read, or empty).
    pub(crate) fn change_log_read(&self) -> bool {
        self.table.unread.is_empty()
    }

    /// Whether group `g`'s changes in the change log on the disk are in
    /// RAM: the whole log is, or the group's were read on their own.
    pub(super) fn group_log_read(&self, g: u64) -> bool {
        self.change_log_read() || self.table.groups_read.contains(g)
    }

    /// Reads the change log, unless it is in RAM: every chunk open found,
    /// checked, and its changes kept before those made since (except for
    /// the groups whose changes were read on their own).
    pub(super) fn read_change_log(&mut self) -> Result<()> {
        if self.table.unread.is_empty() {
            return Ok(());
        }
        let per_group = self.changes_by_group(&self.table.unread)?;
        self.table.unread.clear();
        // Only chunks found at open are read from the disk: none is left.
        self.table.recent_log_pages.clear();
        let read_before = std::mem::take(&mut self.table.groups_read);
        for (g, ops) in per_group {
            if !read_before.contains(g) {
                self.prepend_logged_changes(g, ops);
            }
        }
        // Read whole, the log's changes stay in RAM until their groups fold.
        self.keep_logged_changes();
        Ok(())
    }

    /// Reads the whole change log when a checkpoint is about to settle
    /// many groups (at least [`MANY_WAITING_GROUPS`]) and reading them one
    /// by one (a page or two per chunk each) would read more of it than it
    /// holds: after a burst of writes over a large volume most groups have
    /// changes waiting, and one pass over the log costs less than a search
    /// per group. A process that made a few changes (a snapshot, a short
    /// session) keeps reading groups alone.
    pub(super) fn read_log_whole_if_cheaper(&mut self) -> Result<()> {
        if self.change_log_read() || self.waiting_groups() < MANY_WAITING_GROUPS {
            return Ok(());
        }
        let pages: u64 = self.table.unread.iter().map(ChunkRef::page_count).sum();
        let per_group = 2 * self.table.unread.len() as u64;
        if self.waiting_groups().saturating_mul(per_group) >= pages {
            self.read_change_log()?;
        }
        Ok(())
    }

    /// Reads group `g`'s changes from the change log into RAM, unless they
    /// are there (a load: they leave with the group's counts, see
    /// [`Space::unread_changes_of`]).
    pub(super) fn read_group_log(&mut self, g: u64) -> Result<()> {
        let ops = self.unread_changes_of(g)?;
        if self.group_log_read(g) {
            return Ok(());
        }
        self.table.groups_read.insert(g);
        if !ops.is_empty() {
            self.prepend_logged_changes(g, ops);
        }
        Ok(())
    }

    /// Group `g`'s changes in the change log on the disk, as slots in the
    /// group and changes in log order, when they are not in RAM (none when
    /// they are): from each chunk only the pages that may hold them (found
    /// by the fences), so that a group costs a page or two per chunk and
    /// never the whole log. A log of version 8, not sorted, is read whole
    /// into RAM instead.
    pub(super) fn unread_changes_of(&mut self, g: u64) -> Result<Vec<(u32, Op)>> {
        if self.group_log_read(g) {
            return Ok(Vec::new());
        }
        if self.table.unread.iter().any(|c| !c.is_sorted()) {
            self.read_change_log()?;
            return Ok(Vec::new());
        }
        let n = self.group_entries();
        let mut ops = Vec::new();
        for i in 0..self.table.unread.len() {
            for entry in self.group_in_chunk(&self.table.unread[i], g)? {
                match entry {
                    Logged::Change(page, op) => ops.push(((page % n) as u32, op)),
                    Logged::Fold(_) => ops.clear(),
                }
            }
        }
        Ok(ops)
    }

    /// The entries of group `g` in a sorted `chunk`, in order.
    fn group_in_chunk(&self, chunk: &ChunkRef, g: u64) -> Result<Vec<Logged>> {
        let n = self.group_entries();
        let mut out = Vec::new();
        for i in chunk.pages_of_group(g) {
            // The page is sorted (checked when it was read): the group's
            // entries are one stretch of it.
            let entries = self.read_sorted_page(chunk, i)?;
            let from = entries.partition_point(|e| entry_group(e, n) < g);
            let to = entries.partition_point(|e| entry_group(e, n) <= g);
            out.extend_from_slice(&entries[from..to]);
        }
        Ok(out)
    }

    /// The entries of page `i` of a sorted `chunk`, read and checked, or
    /// taken from the pages read last: groups are mostly read in order
    /// (discovery, a checkpoint's settling), and neighbours share pages.
    fn read_sorted_page(&self, chunk: &ChunkRef, i: usize) -> Result<Arc<Vec<Logged>>> {
        let (Some(page), Some(&fence)) = (chunk.page_at(i as u64), chunk.fences.get(i)) else {
            return Err(log_corruption(&chunk.location(), format!("no page {i}")));
        };
        if let Some(entries) = self.table.recent_log_pages.get(page) {
            return Ok(entries);
        }
        let entries = Arc::new(self.read_sorted_page_from_disk(chunk, i, page, fence)?);
        self.table.recent_log_pages.put(page, entries.clone());
        Ok(entries)
    }

    fn read_sorted_page_from_disk(&self, chunk: &ChunkRef, i: usize, page: u64, fence: Fence) -> Result<Vec<Logged>> {
        let location = chunk.location();
        let mut buf = vec![0u8; self.block_size as usize];
        self.table.log_page_reads.fetch_add(1, Ordering::Relaxed);
        self.file
            .read_at(&mut buf, self.offset_of(page))
            .map_err(|e| Error::io("reading the reference table's change log", e))?;
        Crc(fence.crc).verify(&buf, "reference table", || format!("{location}, page {page}"))?;
        let count = entries_on_page(chunk.entries, i as u64, self.block_size);
        decode_sorted_page(&buf, count, fence, self.log_limits(), self.group_entries(), &location)
    }

    /// The pages and groups an entry of the log may name.
    fn log_limits(&self) -> (u64, u64) {
        (self.table.ngroups * self.group_entries(), self.table.ngroups)
    }

    /// The changes `chunks` hold, by group, each group's in log order and
    /// only those after its last fold.
    fn changes_by_group(&self, chunks: &[ChunkRef]) -> Result<HashMap<u64, Vec<(u32, Op)>>> {
        let n = self.group_entries();
        let mut per_group: HashMap<u64, Vec<(u32, Op)>> = HashMap::new();
        for chunk in chunks {
            for entry in self.read_chunk(chunk)? {
                match entry {
                    Logged::Change(page, op) => per_group.entry(page / n).or_default().push(((page % n) as u32, op)),
                    Logged::Fold(g) => {
                        per_group.remove(&g);
                    }
                }
            }
        }
        Ok(per_group)
    }

    /// The entries of `chunk`, read from its pages and checked.
    fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<Logged>> {
        if chunk.is_sorted() {
            let mut out = Vec::with_capacity(chunk.entries as usize);
            for i in 0..chunk.fences.len() {
                out.extend(self.read_sorted_page(chunk, i)?.iter());
            }
            return Ok(out);
        }
        let location = chunk.location();
        let bs = self.block_size as usize;
        let mut buf = vec![0u8; chunk.page_count() as usize * bs];
        self.table.log_page_reads.fetch_add(chunk.page_count(), Ordering::Relaxed);
        let mut at = 0;
        for r in &chunk.runs {
            let bytes = &mut buf[at..at + r.len as usize * bs];
            self.file
                .read_at(bytes, self.offset_of(r.start))
                .map_err(|e| Error::io("reading the reference table's change log", e))?;
            at += bytes.len();
        }
        Crc(chunk.crc).verify(&buf, "reference table", || location.clone())?;
        decode_chunk(&buf, chunk.entries, self.block_size, self.log_limits(), &location)
    }

    /// Changes kept in RAM, chunks of the log and the entries they hold.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn change_log_figures(&self) -> (u64, usize, u64) {
        (self.live_changes(), self.table.chunks.len(), self.table.logged_entries)
    }

    /// Each chunk's entries, pages and runs.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn change_log_chunks(&self) -> Vec<(u64, u64, usize)> {
        self.table.chunks.iter().map(|c| (c.entries, c.page_count(), c.runs.len())).collect()
    }

    /// Pages of the change log read since open.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn change_log_page_reads(&self) -> u64 {
        self.table.log_page_reads.load(Ordering::Relaxed)
    }

    /// Pages the next chunk of the change log may need for `changes`
    /// entries.
    pub(super) fn chunk_pages_bound(&self, changes: u64) -> u64 {
        pages_for(changes, self.block_size)
    }
}

#[cfg(any(test, feature = "testing"))]
impl Space {
    /// The pages whose counts, as the table on the disk gives them (each
    /// group's page with every chunk's changes applied), differ from the
    /// counts RAM holds now, as `(page, on the disk, in RAM)`. Meaningful
    /// right after a checkpoint with nothing changed since (tests).
    pub(crate) fn counts_differing_on_disk(&mut self) -> Result<Vec<(u64, u32, u32)>> {
        self.read_change_log()?;
        let n = self.group_entries();
        let per_group = self.changes_by_group(&self.table.chunks.clone())?;
        let mut out = Vec::new();
        for g in 0..self.table.ngroups {
            let mut entries = self.read_group(g)?;
            for &(k, op) in per_group.get(&g).map(Vec::as_slice).unwrap_or_default() {
                entries[k as usize] = op.apply(entries[k as usize]).unwrap_or(u32::MAX - 1);
            }
            let ram = match self.loaded_counts(g) {
                Some(c) => c,
                None => self.current_counts(g, false)?,
            };
            let strip = |e: u32| if e == super::table::META { 0 } else { e & !super::table::NODE };
            out.extend(
                (0..n as usize)
                    .filter(|&k| strip(entries[k]) != ram[k])
                    .map(|k| (g * n + k as u64, strip(entries[k]), ram[k])),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_reads_back_as_written_and_refuses_what_lies_outside_the_table() {
        let entries = vec![
            Logged::Fold(3),
            Logged::Change(4100, Op::Inc),
            Logged::Change(5, Op::Dec),
            Logged::Change(9, Op::Raw(u32::MAX)),
        ];
        let bs = 4096;
        let buf = encode_chunk(&entries, 1, bs);
        assert_eq!(decode_chunk(&buf, 4, bs, (8192, 8), "t").unwrap(), entries);
        assert!(decode_chunk(&buf, 4, bs, (4096, 8), "t").is_err(), "page 4100 outside a 4096-page table");
        assert!(decode_chunk(&buf, 4, bs, (8192, 3), "t").is_err(), "group 3 outside a 3-group table");
        assert!(decode_chunk(&buf, 342, bs, (8192, 8), "t").is_err(), "more entries than a page holds");
        let mut bad = buf.clone();
        bad[7] = 9;
        assert!(decode_chunk(&bad, 1, bs, (8192, 8), "t").is_err(), "unknown kind");
    }

    #[test]
    fn sorting_puts_a_groups_fold_first_and_keeps_each_pages_changes_in_order() {
        let n = 1024;
        let mut entries = vec![
            Logged::Change(2049, Op::Inc),
            Logged::Change(5, Op::Raw(7)),
            Logged::Fold(2),
            Logged::Change(5, Op::Dec),
            Logged::Change(2048, Op::Dec),
            Logged::Change(5, Op::Inc),
            Logged::Fold(0),
        ];
        sort_entries(&mut entries, n);
        assert_eq!(
            entries,
            vec![
                Logged::Fold(0),
                Logged::Change(5, Op::Raw(7)),
                Logged::Change(5, Op::Dec),
                Logged::Change(5, Op::Inc),
                Logged::Fold(2),
                Logged::Change(2048, Op::Dec),
                Logged::Change(2049, Op::Inc),
            ]
        );
    }

    /// A sorted chunk of `entries` over 3 pages of 4 KiB, as a checkpoint
    /// writes it, with its fences.
    fn sorted_chunk(mut entries: Vec<Logged>) -> (Vec<u8>, ChunkRef) {
        sort_entries(&mut entries, 1024);
        let buf = encode_chunk(&entries, 3, 4096);
        let fences = fences_of(&entries, &buf, 4096, 1024);
        let runs = vec![Run { start: 10, len: 3 }];
        (buf, ChunkRef { runs, entries: entries.len() as u64, fences, crc: 0 })
    }

    #[test]
    fn fences_find_the_pages_of_a_group_and_each_page_reads_back_checked() {
        // 400 changes of group 1 spill over the first page into the second,
        // which group 2 also starts on; the third page holds none.
        let mut entries: Vec<Logged> = (0..400).map(|i| Logged::Change(1024 + i % 1000, Op::Inc)).collect();
        entries.push(Logged::Change(2048 + 3, Op::Dec));
        entries.push(Logged::Fold(0));
        let (buf, chunk) = sorted_chunk(entries);
        let firsts: Vec<u64> = chunk.fences.iter().map(|f| f.first_group).collect();
        assert_eq!(firsts, vec![0, 1, NO_ENTRY]);
        assert_eq!(chunk.pages_of_group(0), 0..1);
        assert_eq!(chunk.pages_of_group(1), 0..2, "group 1 starts on the first page and ends on the second");
        assert_eq!(chunk.pages_of_group(2), 1..2);
        assert_eq!(chunk.pages_of_group(3), 1..2, "a group past the last holds nothing past its page");
        let limits = (1 << 20, 1 << 10);
        let mut all = Vec::new();
        for i in 0..3u64 {
            let page = &buf[(i * 4096) as usize..((i + 1) * 4096) as usize];
            let count = entries_on_page(chunk.entries, i, 4096);
            all.extend(decode_sorted_page(page, count, chunk.fences[i as usize], limits, 1024, "t").unwrap());
        }
        assert_eq!(all.len(), 402);
        assert_eq!(all[0], Logged::Fold(0));
        // A page that disagrees with its fence, or whose entries are out of
        // order, is refused.
        let first_page = &buf[..4096];
        let wrong_fence = Fence { first_group: 1, ..chunk.fences[0] };
        assert!(decode_sorted_page(first_page, 341, wrong_fence, limits, 1024, "t").is_err());
        let swapped = encode_chunk(&[Logged::Change(2048, Op::Inc), Logged::Change(1024, Op::Inc)], 1, 4096);
        let fence = Fence { first_group: 2, crc: 0 };
        assert!(decode_sorted_page(&swapped, 2, fence, limits, 1024, "t").is_err());
    }

    #[test]
    fn a_chunk_has_room_for_the_entries_of_its_own_pages() {
        let per = entries_per_page(4096);
        assert_eq!(per, 341);
        for entries in [0, 1, per - 2, per - 1, per, 5 * per - 3, 100_000] {
            let pages = pages_for(entries, 4096);
            assert!(entries + pages <= pages * per, "{entries} entries in {pages} pages");
            assert!(pages == 1 || entries + pages - 1 > (pages - 1) * per, "{pages} pages for {entries} entries");
        }
    }
}
