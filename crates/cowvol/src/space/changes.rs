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
use std::collections::HashMap;

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
    /// CRC of its pages, in order.
    pub(crate) crc: u32,
}

impl ChunkRef {
    /// Bytes a chunk takes in the catalog at least (no run).
    pub(crate) const MIN_ENCODED: usize = 16;

    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u32(self.runs.len() as u32);
        for r in &self.runs {
            e.u64(r.start);
            e.u64(r.len);
        }
        e.u64(self.entries);
        e.u32(self.crc);
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
        Ok(ChunkRef { runs, entries: d.u64()?, crc: d.u32()? })
    }

    /// Its pages, in order.
    pub(crate) fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|r| r.start..r.start + r.len)
    }

    pub(crate) fn page_count(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }

    /// Where it is, for errors.
    pub(crate) fn location(&self) -> String {
        format!("{DATA_FILE} change log chunk at page {}", self.runs.first().map_or(0, |r| r.start))
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

fn log_corruption(location: &str, detail: impl Into<String>) -> Error {
    Error::corruption("reference table", location, detail)
}

impl Space {
    /// Whether the change log on the disk is in RAM (read, or empty).
    pub(super) fn change_log_read(&self) -> bool {
        self.table.unread.is_empty()
    }

    /// Reads the change log, unless it is in RAM: every chunk open found,
    /// checked, and its changes kept before those made since.
    pub(super) fn read_change_log(&mut self) -> Result<()> {
        if self.table.unread.is_empty() {
            return Ok(());
        }
        let per_group = self.changes_by_group(&self.table.unread)?;
        self.table.unread.clear();
        for (g, ops) in per_group {
            self.prepend_logged_changes(g, ops);
        }
        Ok(())
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
        let location = chunk.location();
        let bs = self.block_size as usize;
        let mut buf = vec![0u8; chunk.page_count() as usize * bs];
        let mut at = 0;
        for r in &chunk.runs {
            let bytes = &mut buf[at..at + r.len as usize * bs];
            self.file
                .read_at(bytes, self.offset_of(r.start))
                .map_err(|e| Error::io("reading the reference table's change log", e))?;
            at += bytes.len();
        }
        Crc(chunk.crc).verify(&buf, "reference table", || location.clone())?;
        let limits = (self.table.ngroups * self.group_entries(), self.table.ngroups);
        decode_chunk(&buf, chunk.entries, self.block_size, limits, &location)
    }

    /// Changes kept in RAM, chunks of the log and the entries they hold.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn change_log_figures(&self) -> (u64, usize, u64) {
        (self.live_changes(), self.table.chunks.len(), self.table.logged_entries)
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
