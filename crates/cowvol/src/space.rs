//! The block store's bookkeeping: which pages of the data file are free,
//! how many tree leaves reference each data page, and which pages hold
//! metadata that the durable checkpoint or the WAL still needs.
//!
//! Invariants enforced here:
//! - page 0 is never handed out, so 0 can mean "no page" everywhere;
//! - a page whose reference count drops to zero goes to quarantine, and a
//!   tree node that stops being current goes to `obsolete`; both are reused
//!   only after the next checkpoint is durable. Recovery replays the WAL
//!   from that checkpoint, so within the replayed window every page is
//!   written at most once, and no page the durable state needs is overwritten;
//! - a reserved page (checkpoint metadata, WAL segment) never has a
//!   reference count and is never in the free map;
//! - every page in the free map has its file space allocated (`fallocate`),
//!   so a write into a page the allocator hands out cannot fail for lack of
//!   space. Free pages whose space was given back to the file system
//!   (punched) are kept apart, in `holes`, and are re-reserved before they
//!   return to the free map (see [`Space::take_punchable`]).

use crate::backend::StorageFile;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

mod changes;
mod counts;
mod discover;
mod extents;
mod group_set;
mod table;

#[cfg(any(test, feature = "testing"))]
pub(crate) use changes::{decode_chunk, decode_sorted_page, encode_chunk, ChunkRef, Fence, Logged};
use counts::Counts;
#[cfg(any(test, feature = "testing"))]
pub(crate) use counts::Op;
use extents::Extents;
pub(crate) use table::{IndexRef, TableRoot};

/// A contiguous run of pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) start: u64,
    pub(crate) len: u64,
}

/// How much the data file grows at a time: an eighth of its size, between
/// these bounds. Growth reserves space with `fallocate` so later writes into
/// it cannot hit a full disk, and growing in steps keeps that rare.
const GROW_MIN_BYTES: u64 = 1 << 20;
/// Pages always kept for metadata beyond what the dirty nodes, the catalog
/// and the WAL spares need.
const RESERVE_BASE_PAGES: u64 = 16;
const GROW_MAX_BYTES: u64 = 256 << 20;
/// How much never-written space [`Space::take_unwritten`] hands out for
/// zeroing at a time.
/// Small, because the next sync writes the zeroes out with the data it
/// was asked for: a flush pays for at most this much extra.
const ZERO_CHUNK_BYTES: u64 = 256 << 10;
/// Free space goes back to the file system in aligned chunks of this size
/// (in page numbers), and only whole chunks: smaller holes would fragment
/// the file's extents for little gain, and whole aligned chunks make every
/// chunk either entirely punched or entirely allocated, which is what lets
/// open rebuild the holes from the free map alone.
const PUNCH_CHUNK_BYTES: u64 = 1 << 20;
/// Free-map extents a punch step looks at, at most: bounds the time it
/// holds the state lock even when the free map is fragmented.
const PUNCH_SCAN_EXTENTS: usize = 1024;

#[derive(Debug)]
pub(crate) struct Space {
    file: Arc<dyn StorageFile>,
    block_size: u64,
    data_start: u64,
    /// Pages the data file holds (all of them allocated on disk).
    npages: u64,
    /// Leaf references per page (parent and root references for a node
    /// page), for the groups of pages in RAM.
    counts: Counts,
    /// One bit per page: metadata still needed by the durable checkpoint or WAL.
    reserved: Vec<u64>,
    /// Free extents: start page -> length (and by length).
    free: Extents,
    free_pages: u64,
    /// Where the next search for free space starts, so allocation sweeps
    /// forward and sequential writes get sequential pages.
    cursor: u64,
    pub(crate) quarantine: Vec<u64>,
    pub(crate) obsolete: Vec<u64>,
    /// Pages a write has claimed and is filling but has not mapped yet.
    in_flight: BTreeMap<u64, u64>,
    /// Tree nodes changed since the last checkpoint capture: the pages the
    /// next checkpoint will need for them.
    pub(crate) dirty_nodes: u64,
    /// Bytes of metadata the store may keep in RAM
    /// (`StoreOptions::node_cache_bytes`): what the background's share of
    /// the free map is measured against.
    pub(crate) metadata_budget: u64,
    /// Pages the next catalog may need.
    pub(crate) catalog_reserve: u64,
    /// Bytes of catalog records added since the last checkpoint: the next
    /// catalog is that much larger, and the reserve counts it twice.
    pub(crate) catalog_growth: u64,
    /// Pages per WAL segment, for the spares a checkpoint may need.
    pub(crate) segment_pages: u64,
    /// Pages from here to the end of the file were added by [`Space::grow`]
    /// and may never have been written (see [`Space::take_unwritten`]).
    unwritten_from: u64,
    /// Free pages whose file space may have been given back to the file
    /// system: start page -> length, whole punch chunks. Not in `free`, so
    /// nothing is handed out from here before [`Space::grow`] re-reserves it.
    holes: Extents,
    hole_pages: u64,
    /// The lowest page at which `free` may hold a whole chunk not yet
    /// punched; `None` when a punch step has looked at all of it.
    punch_from: Option<u64>,
    /// Holes at or after this page may still hold allocated blocks: at open
    /// every wholly free chunk counts as a hole (it may have been punched
    /// before), and punch steps punch each once more to give its space
    /// back for sure. `None` when there are none left.
    repunch_from: Option<u64>,
    /// Where the reference table lives on the disk, and which of its
    /// groups changed since the last checkpoint.
    table: table::Table,
    /// Which groups' free pages the free map holds (see [`discover`]).
    discovery: discover::Discovery,
}

/// What [`Space::take_punchable`] found: runs taken out of the free map
/// (or holes) and held as in flight while they are punched with no lock
/// held; [`Space::punched`] makes them holes.
#[derive(Debug, Default)]
pub(crate) struct PunchBatch {
    pub(crate) runs: Vec<Run>,
}

impl Space {
    /// An empty space map over a file of `npages` pages, all free but page 0.
    pub(crate) fn new(file: Arc<dyn StorageFile>, block_size: u32, data_start: u64, npages: u64) -> Space {
        let npages = npages.max(1);
        let mut s = Space {
            file,
            block_size: block_size as u64,
            data_start,
            npages,
            counts: Counts::new(npages.div_ceil(block_size as u64 / 4)),
            reserved: vec![0; (npages as usize).div_ceil(64)],
            free: Extents::default(),
            free_pages: 0,
            cursor: 1,
            quarantine: Vec::new(),
            obsolete: Vec::new(),
            in_flight: BTreeMap::new(),
            dirty_nodes: 0,
            metadata_budget: u64::MAX,
            catalog_reserve: 1,
            catalog_growth: 0,
            segment_pages: 1,
            unwritten_from: npages,
            holes: Extents::default(),
            hole_pages: 0,
            punch_from: None,
            repunch_from: None,
            table: table::Table::default(),
            discovery: discover::Discovery::default(),
        };
        s.set_reserved(0, true);
        s
    }

    /// Adds a free run found by discovery: its whole chunks as holes (an
    /// earlier run may have punched them; see [`Space::start_free_map`]),
    /// the rest to the free map.
    fn insert_free_found(&mut self, start: u64, len: u64) {
        let end = start + len;
        let Some(chunks) = self.whole_chunks(start, end) else {
            self.insert_free(start, len);
            return;
        };
        if chunks.start > start {
            self.insert_free(start, chunks.start - start);
        }
        self.insert_hole(chunks.start, chunks.len);
        self.repunch_from = Some(self.repunch_from.map_or(chunks.start, |p| p.min(chunks.start)));
        if chunks.start + chunks.len < end {
            self.insert_free(chunks.start + chunks.len, end - chunks.start - chunks.len);
        }
    }

    /// Bytes per page.
    pub(crate) fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Pages per punch chunk.
    fn chunk_pages(&self) -> u64 {
        (PUNCH_CHUNK_BYTES / self.block_size).max(1)
    }

    /// The whole chunks inside `[start, end)`, if any.
    fn whole_chunks(&self, start: u64, end: u64) -> Option<Run> {
        let c = self.chunk_pages();
        let first = start.div_ceil(c) * c;
        let last = end / c * c;
        (last > first).then(|| Run { start: first, len: last - first })
    }

    pub(crate) fn offset_of(&self, page: u64) -> u64 {
        self.data_start + page * self.block_size
    }

    /// The first page of the space at the file's end never written since
    /// open (pages below it may have been).
    pub(crate) fn unwritten_from(&self) -> u64 {
        self.unwritten_from
    }

    pub(crate) fn npages(&self) -> u64 {
        self.npages
    }

    /// Free pages, punched or not.
    pub(crate) fn free_pages(&self) -> u64 {
        self.free_pages + self.hole_pages
    }

    /// Free pages whose file space may have been given back to the file
    /// system.
    pub(crate) fn hole_pages(&self) -> u64 {
        self.hole_pages
    }

    /// Bytes the file system has allocated to the data file, 0 when the
    /// backend cannot tell.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.file.allocated_bytes().unwrap_or(0)
    }

    /// Bytes the free map and the reserved bitmap take in RAM, about: they
    /// grow with the file (a bit per page) and with how scattered its free
    /// space is, and count against the metadata budget with the counts.
    pub(crate) fn bookkeeping_bytes(&self) -> u64 {
        self.reserved.len() as u64 * 8 + self.free_extents() * discover::FREE_EXTENT_BYTES
    }

    pub(crate) fn is_reserved(&self, page: u64) -> bool {
        self.reserved.get((page / 64) as usize).is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    pub(crate) fn set_reserved(&mut self, page: u64, on: bool) {
        // A referenced page's entry says whether it is a node or data. A
        // page whose group is not in RAM has no references when its bit
        // changes: nodes are placed, and dropped, with their group loaded.
        if self.loaded_count(page).unwrap_or(0) > 0 {
            self.mark_changed(page);
        }
        let w = &mut self.reserved[(page / 64) as usize];
        if on {
            *w |= 1 << (page % 64);
        } else {
            *w &= !(1 << (page % 64));
        }
    }

    #[cfg(test)]
    pub(crate) fn is_free(&self, page: u64) -> bool {
        extent_holding(&self.free, page).is_some()
    }

    /// Copies the reference counts of pages `pages` and the words of the
    /// reserved bitmap that cover them into the caller's buffers (for
    /// `check`, which compares them with a pinned view of the trees). Plain
    /// array copies; the buffers keep their capacity, so one sized in
    /// advance costs no allocation here. `pages.start` is a multiple of 64,
    /// so the first word copied starts at it.
    pub(crate) fn copy_counts(
        &mut self,
        pages: std::ops::Range<u64>,
        refcnt: &mut Vec<u32>,
        reserved: &mut Vec<u64>,
    ) -> Result<()> {
        debug_assert_eq!(pages.start % 64, 0);
        let end = pages.end.min(self.npages);
        let start = pages.start.min(end);
        self.copy_group_counts(start..end, refcnt)?;
        reserved.clear();
        reserved.extend_from_slice(&self.reserved[(start / 64) as usize..end.div_ceil(64) as usize]);
        Ok(())
    }

    /// The free extents that overlap pages `start..end` (for `check`, which
    /// looks at a slice of pages at a time), in page order.
    /// Punched extents count as free.
    pub(crate) fn free_runs_in(&self, start: u64, end: u64) -> impl Iterator<Item = Run> + '_ {
        let overlapping = |map: &BTreeMap<u64, u64>| {
            let first = map.range(..=start).next_back().map_or(start, |(&s, _)| s);
            map.range(first..end.max(first)).map(|(&start, &len)| Run { start, len }).collect::<Vec<_>>()
        };
        let mut runs = overlapping(&self.free);
        runs.extend(overlapping(&self.holes));
        runs.sort_unstable_by_key(|r| r.start);
        runs.into_iter()
    }

    /// Iterates the free extents, punched ones included (for `check`).
    pub(crate) fn free_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.free.iter().chain(self.holes.iter()).map(|(&start, &len)| Run { start, len })
    }

    /// The on-disk copy of a tree node is no longer current.
    pub(crate) fn obsolete(&mut self, page: u64) {
        self.obsolete.push(page);
    }

    /// Ensures the page arrays cover `npages` pages (recovery reads a file
    /// whose length fixes the count).
    pub(crate) fn ensure_pages(&mut self, npages: u64) {
        if npages > self.npages {
            self.npages = npages;
            self.counts.cover(npages.div_ceil(self.group_entries()));
            self.reserved.resize((npages as usize).div_ceil(64), 0);
        }
    }

    /// Allocates one contiguous run of between 1 and `max` pages, growing
    /// the file when nothing is free.
    pub(crate) fn alloc_run(&mut self, max: u64) -> Result<Run> {
        debug_assert!(max > 0);
        self.discover_while(|s| s.free.is_empty() && s.holes.is_empty())?;
        if self.free.is_empty() {
            self.grow(max)?;
        }
        let (&start, &len) = self
            .free
            .range(self.cursor..)
            .next()
            .or_else(|| self.free.iter().next())
            .expect("free map is not empty after growing");
        let take = len.min(max);
        self.take_free(start, len, take);
        Ok(Run { start, len: take })
    }

    /// Allocates exactly `n` contiguous pages.
    pub(crate) fn alloc_contiguous(&mut self, n: u64) -> Result<u64> {
        // The shortest free extent long enough: no pass over a free map
        // that copy-on-write fragmented into millions of single pages.
        let find = |s: &Space| s.free.best_fit(n);
        self.discover_run_of(n)?;
        let mut found = find(self);
        if found.is_none() {
            self.grow(n)?;
            found = find(self);
        }
        if found.is_none() {
            // Re-reserved holes need not be contiguous; new space at the
            // end of the file is.
            self.extend_file(n)?;
            found = find(self);
        }
        let Some((start, len)) = found else {
            return Err(Error::NoSpace { during: format!("finding {n} contiguous pages") });
        };
        self.take_free(start, len, n);
        Ok(start)
    }

    /// Allocates exactly pages `start..start + n` and reserves them, if
    /// they are all free; otherwise changes nothing and returns false. The
    /// range may span several free extents, punched ones among them (their
    /// file space is reserved again first).
    pub(crate) fn claim_exact(&mut self, start: u64, n: u64) -> Result<bool> {
        let end = start.saturating_add(n);
        if start == 0 || n == 0 {
            return Ok(false);
        }
        self.discover_range(start, end)?;
        let mut pieces = Vec::new();
        let mut at = start;
        while at < end {
            let end_of = |map: &BTreeMap<u64, u64>| extent_holding(map, at).map(|(s, l)| s + l);
            let (piece_end, punched) = match (end_of(&self.free), end_of(&self.holes)) {
                (Some(e), _) => (e.min(end), false),
                (None, Some(e)) => (e.min(end), true),
                (None, None) => return Ok(false),
            };
            pieces.push((at, piece_end - at, punched));
            at = piece_end;
        }
        for &(s, l, punched) in &pieces {
            if punched && self.file.allocate(self.offset_of(s), l * self.block_size).is_err() {
                return Ok(false);
            }
        }
        for (s, l, punched) in pieces {
            if punched {
                self.holes.carve(s, l);
                self.hole_pages -= l;
            } else {
                self.free.carve(s, l);
                self.free_pages -= l;
            }
        }
        for p in start..end {
            self.set_reserved(p, true);
        }
        Ok(true)
    }

    /// Allocates `n` pages as runs.
    pub(crate) fn alloc(&mut self, n: u64) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        let mut left = n;
        while left > 0 {
            match self.alloc_run(left) {
                Ok(r) => {
                    left -= r.len;
                    runs.push(r);
                }
                Err(e) => {
                    for r in runs {
                        self.free_run(r);
                    }
                    return Err(e);
                }
            }
        }
        Ok(runs)
    }

    /// Pages of new tree nodes that mapping blocks `first..first + n` may
    /// add, at most: a leaf per fan-out of blocks, and a path for each end;
    /// and where wide leaves stand (format 7, `tree::Geometry::leaf_fits`),
    /// a split of a full one into an interior node over up to fan-out
    /// leaves for each level-1 span the write touches. The reserve covers
    /// the nodes already dirty; this covers the ones the write is about to
    /// make, so that the checkpoint after it always finds its pages.
    fn nodes_a_write_may_add(&self, first: u64, n: u64) -> u64 {
        let bits = self.fanout_bits();
        let fanout = 1u64 << bits;
        // Logical block numbers fit in 48 bits (page numbers do too).
        let paths = 2 * u64::from(48u32.div_ceil(bits));
        let splits = if (crate::tree::Geometry { bits, levels: 2 }).leaf_fits(1) {
            let span = fanout * fanout;
            (first + n.max(1) - 1) / span - first / span + 1
        } else {
            0
        };
        n.div_ceil(fanout) + paths + splits * (fanout + 1)
    }

    /// Pages data writes must leave free so that a checkpoint can always
    /// run, even on a full disk: it is the checkpoint that turns freed
    /// (quarantined) pages back into free space.
    fn metadata_reserve(&self) -> u64 {
        let growth = (2 * self.catalog_growth).div_ceil(self.block_size);
        RESERVE_BASE_PAGES
            + self.dirty_nodes
            + self.table_reserve()
            + self.catalog_reserve
            + growth
            + 2 * self.segment_pages
    }

    /// Makes sure `n` more pages can be taken with the metadata reserve
    /// left free, growing the file when it must. Data writes and changes
    /// that add to the catalog ask this; changes that free space do not,
    /// so they find room for their record and for the checkpoint that frees.
    pub(crate) fn make_room(&mut self, n: u64) -> Result<()> {
        self.ensure_free(n + self.metadata_reserve() + self.release_margin())
    }

    /// Whether releasing `nodes` more garbage nodes leaves a checkpoint the
    /// pages it needs for the counts they change, among the free pages
    /// known now: nothing is read or grown to answer. Data writes and
    /// catalog growth leave [`Space::release_margin`] beyond the metadata
    /// reserve, so at least one node can always be released; the
    /// checkpoint after it frees what it held.
    pub(crate) fn room_to_release(&self, nodes: u64) -> bool {
        self.free_pages >= self.metadata_reserve() + nodes * self.release_margin()
    }

    /// Like [`Space::room_to_release`] for one node, discovering free space
    /// and growing the file when the known free pages fall short: the
    /// checkpoint after the release would need those pages anyway.
    pub(crate) fn make_room_to_release_one(&mut self) -> bool {
        self.ensure_free(self.metadata_reserve() + self.release_margin()).is_ok()
    }

    /// Pages a checkpoint may need for the count changes of releasing one
    /// node: a leaf (wide or not) drops a reference to up to fan-out data
    /// pages, each perhaps in a group of its own, and each group moved may
    /// move another (see `table_reserve`).
    fn release_margin(&self) -> u64 {
        2 * ((1u64 << self.fanout_bits()) + 1)
    }

    /// The trees' fan-out bits for this store's block size.
    fn fanout_bits(&self) -> u32 {
        crate::format::fanout_bits_for(self.block_size as u32)
    }

    /// Makes sure `need` pages are free, discovering free space and growing
    /// the file when it must.
    fn ensure_free(&mut self, need: u64) -> Result<()> {
        self.discover_while(|s| s.free_pages + s.hole_pages < need)?;
        if self.free_pages < need {
            self.grow(need - self.free_pages)?;
        }
        Ok(())
    }

    /// Allocates `n` pages for a data write of blocks `first..first + n`,
    /// leaving the metadata reserve untouched, and room besides for the
    /// tree nodes mapping them may add; they stay accounted as in flight
    /// until [`Space::settle`] (mapped) or [`Space::unclaim`] (failed).
    pub(crate) fn claim(&mut self, first: u64, n: u64) -> Result<Vec<Run>> {
        self.make_room(n + self.nodes_a_write_may_add(first, n))?;
        let runs = self.alloc(n)?;
        for r in &runs {
            self.in_flight.insert(r.start, r.len);
        }
        Ok(runs)
    }

    /// Free never-written pages just ahead of the allocation cursor, taken
    /// out of the free map and counted as in flight, for the caller to fill
    /// with zeroes (with no lock held) and hand back through
    /// [`Space::unclaim`]. Space added by `grow` is fallocated, so the file
    /// system holds it as unwritten extents: a sync after the first write
    /// into such a page must also convert the extent, an extra metadata
    /// write, and the write itself has no cached page to overwrite. Zeroing
    /// a little ahead of the allocator keeps both off the write path. Only
    /// done while free space is plentiful, so it never makes a claim fail,
    /// and after small claims (`claimed` pages): a large write is cheaper
    /// into unwritten space than zeroes followed by the data.
    pub(crate) fn take_unwritten(&mut self, claimed: u64) -> Vec<Run> {
        let chunk = (ZERO_CHUNK_BYTES / self.block_size).max(1);
        let want = 4 * chunk + self.metadata_reserve();
        // Zero the next chunk once less than half a chunk is left ahead.
        if claimed * 4 > chunk || self.unwritten_from.saturating_sub(self.cursor) >= chunk.div_ceil(2) {
            return Vec::new();
        }
        let from = self.unwritten_from.max(self.cursor);
        if from >= self.npages || self.free_pages < want {
            return Vec::new();
        }
        let to = (from + chunk).min(self.npages);
        self.unwritten_from = to;
        let found: Vec<Run> = self
            .free
            .range(..to)
            .rev()
            .take_while(|(&s, &l)| s + l > from)
            .map(|(&s, &l)| Run { start: s.max(from), len: (s + l).min(to) - s.max(from) })
            .collect();
        for r in &found {
            let (&s, &l) = self.free.range(..=r.start).next_back().expect("free extent");
            self.free.remove(&s);
            for (a, b) in [(s, r.start), (r.start + r.len, s + l)] {
                if b > a {
                    self.free.insert(a, b - a);
                }
            }
            self.free_pages -= r.len;
            self.in_flight.insert(r.start, r.len);
        }
        found
    }

    /// The claimed pages are now referenced by a tree.
    pub(crate) fn settle(&mut self, runs: &[Run]) {
        for r in runs {
            self.in_flight.remove(&r.start);
        }
    }

    /// The write that claimed these pages failed; they are free again. No
    /// record references them, so they need no quarantine.
    pub(crate) fn unclaim(&mut self, runs: &[Run]) {
        self.settle(runs);
        for r in runs {
            self.free_run(*r);
        }
    }

    /// Pages claimed by writes in progress (for `check`).
    pub(crate) fn in_flight_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.in_flight.iter().map(|(&start, &len)| Run { start, len })
    }

    fn take_free(&mut self, start: u64, len: u64, take: u64) {
        self.free.remove(&start);
        if take < len {
            self.free.insert(start + take, len - take);
        }
        self.free_pages -= take;
        self.cursor = start + take;
    }

    /// Returns a run that was allocated but never referenced (a failed write).
    pub(crate) fn free_run(&mut self, r: Run) {
        self.insert_free(r.start, r.len);
    }

    fn insert_free(&mut self, mut start: u64, mut len: u64) {
        debug_assert!(len > 0 && start > 0);
        debug_assert!(
            self.frees_into_map(start + len - 1),
            "page {} freed before its group was discovered",
            start + len - 1
        );
        self.free_pages += len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            debug_assert!(ps + pl <= start, "double free of page {start}");
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += nl;
        }
        self.free.insert(start, len);
        if self.whole_chunks(start, start + len).is_some() {
            self.punch_from = Some(self.punch_from.map_or(start, |p| p.min(start)));
        }
    }

    /// Records `[start, start + len)` as free pages whose space may be
    /// given back, merging with neighbouring holes.
    fn insert_hole(&mut self, mut start: u64, mut len: u64) {
        debug_assert!(len > 0 && start > 0);
        self.hole_pages += len;
        if let Some((&ps, &pl)) = self.holes.range(..start).next_back() {
            debug_assert!(ps + pl <= start, "page {start} punched twice");
            if ps + pl == start {
                self.holes.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(&nl) = self.holes.get(&(start + len)) {
            self.holes.remove(&(start + len));
            len += nl;
        }
        self.holes.insert(start, len);
    }

    /// Free pages kept allocated however much is free: what the next
    /// growth step would add (so growing and punching do not undo each
    /// other), the metadata reserve (so a checkpoint never has to
    /// re-reserve space), and one chunk of slack.
    fn punch_keep(&self) -> u64 {
        self.grow_step_pages() + self.metadata_reserve() + self.chunk_pages()
    }

    /// Whether a punch step would find anything to do.
    pub(crate) fn has_punch_work(&self) -> bool {
        self.repunch_from.is_some()
            || (self.punch_from.is_some() && self.free_pages >= self.punch_keep() + self.chunk_pages())
    }

    /// Takes up to `budget` pages of free space to give back to the file
    /// system: first holes left from before open that may still hold
    /// blocks, then whole chunks of the free map, lowest first, keeping
    /// [`Space::punch_keep`] pages allocated and skipping the chunks just
    /// ahead of the allocation cursor, where the next writes go. The runs
    /// are held in flight (neither free nor holes, so neither the allocator
    /// nor a re-reservation can touch them) until [`Space::punched`].
    ///
    /// Only pages in the free map or in holes are taken. Pages get there
    /// after the checkpoint that freed them is durable (see
    /// [`Space::release`]) or when nothing ever referenced them, so a page
    /// the durable state or the WAL still needs is never punched.
    pub(crate) fn take_punchable(&mut self, budget: u64) -> PunchBatch {
        let mut batch = PunchBatch::default();
        let mut left = budget;
        self.take_repunch(&mut left, &mut batch);
        self.take_free_chunks(&mut left, &mut batch);
        for r in &batch.runs {
            self.in_flight.insert(r.start, r.len);
        }
        batch
    }

    fn take_repunch(&mut self, left: &mut u64, batch: &mut PunchBatch) {
        let Some(from) = self.repunch_from else {
            return;
        };
        let c = self.chunk_pages();
        let holes = extents_from(&self.holes, from);
        let scanned_to_end = holes.len() < PUNCH_SCAN_EXTENTS;
        let mut resume = holes.last().map(|r| r.start + r.len);
        let mut stopped = false;
        for h in holes {
            let take = h.len.min(left.div_ceil(c).saturating_mul(c));
            if take == 0 {
                resume = Some(h.start);
                stopped = true;
                break;
            }
            self.holes.carve(h.start, take);
            self.hole_pages -= take;
            *left = left.saturating_sub(take);
            batch.runs.push(Run { start: h.start, len: take });
            if take < h.len {
                resume = Some(h.start + take);
                stopped = true;
                break;
            }
        }
        self.repunch_from = if scanned_to_end && !stopped { None } else { resume.or(Some(from)) };
    }

    fn take_free_chunks(&mut self, left: &mut u64, batch: &mut PunchBatch) {
        let Some(from) = self.punch_from else {
            return;
        };
        let c = self.chunk_pages();
        let extents = extents_from(&self.free, from);
        let scanned_to_end = extents.len() < PUNCH_SCAN_EXTENTS;
        let mut resume = extents.last().map(|r| r.start + r.len);
        let mut stopped = false;
        'extents: for e in extents {
            for piece in self.punchable_pieces(e.start, e.start + e.len) {
                let room = self.free_pages.saturating_sub(self.punch_keep()) / c * c;
                let take = piece.len.min(left.div_ceil(c).saturating_mul(c)).min(room);
                if take == 0 {
                    // Out of budget or of free space above the keep:
                    // resume here when either comes back.
                    resume = Some(piece.start);
                    stopped = true;
                    break 'extents;
                }
                self.free.carve(piece.start, take);
                self.free_pages -= take;
                *left = left.saturating_sub(take);
                batch.runs.push(Run { start: piece.start, len: take });
                if take < piece.len {
                    resume = Some(piece.start + take);
                    stopped = true;
                    break 'extents;
                }
            }
        }
        self.punch_from = if scanned_to_end && !stopped { None } else { resume.or(Some(from)) };
    }

    /// The whole chunks of the free extent `[start, end)` that may be
    /// punched: all but those in the window the allocator is about to
    /// fill (the growth step's worth of pages from the cursor).
    fn punchable_pieces(&self, start: u64, end: u64) -> Vec<Run> {
        let window = (self.cursor, self.cursor + self.grow_step_pages());
        let mut pieces = Vec::new();
        for (a, b) in [(start, end.min(window.0)), (start.max(window.1), end)] {
            if let Some(r) = self.whole_chunks(a, b) {
                pieces.push(r);
            }
        }
        pieces
    }

    /// The runs of `batch` were punched (or the punch failed part way: the
    /// space may be given back, so they count as holes all the same).
    pub(crate) fn punched(&mut self, batch: PunchBatch) {
        for r in batch.runs {
            self.in_flight.remove(&r.start);
            self.insert_hole(r.start, r.len);
        }
    }

    /// Releases pages a durable checkpoint no longer needs: quarantined data
    /// pages and obsolete metadata pages.
    pub(crate) fn release(&mut self, data: Vec<u64>, meta: Vec<u64>) {
        for p in data {
            // Quarantined when its count reached zero; nothing references
            // a page that is neither free nor mapped, so it is zero still.
            let count = self.loaded_count(p).unwrap_or(0);
            debug_assert_eq!(count, 0);
            if count == 0 && !self.is_reserved(p) && self.frees_into_map(p) {
                self.insert_free(p, 1);
            }
        }
        for p in meta {
            debug_assert!(self.is_reserved(p));
            if self.is_reserved(p) {
                self.set_reserved(p, false);
                if self.frees_into_map(p) {
                    self.insert_free(p, 1);
                }
            }
        }
    }

    /// Pages one growth step of the file adds: an eighth of its size,
    /// between the bounds.
    fn grow_step_pages(&self) -> u64 {
        let bytes = (self.npages * self.block_size / 8).clamp(GROW_MIN_BYTES, GROW_MAX_BYTES);
        (bytes / self.block_size).max(1)
    }

    /// Adds at least `min_pages` to the free map: punched holes first,
    /// re-reserved, then new space at the end of the file.
    fn grow(&mut self, min_pages: u64) -> Result<()> {
        let before = self.free_pages;
        let mut got = self.refill_holes(min_pages)?;
        if got < min_pages && !self.fully_discovered() {
            // The file grows only once all of it is known (see `discover`).
            self.discover_all()?;
            got = self.free_pages - before;
            if got < min_pages {
                got += self.refill_holes(min_pages - got)?;
            }
        }
        if got < min_pages {
            self.extend_file(min_pages - got)?;
        }
        Ok(())
    }

    /// Re-reserves holes, lowest first, whole chunks at a time: a growth
    /// step's worth when the file system has room for it, at least
    /// `min_pages` or as many as there are. Returns how many pages came
    /// back to the free map.
    ///
    /// A punched range has no blocks behind it, and a write there could
    /// fail for lack of space, so it is reserved (`fallocate`, mode 0)
    /// before the allocator may hand it out. On a full file system that
    /// fails with `NoSpace` here, for the operation that wanted the room,
    /// having changed nothing but the chunks re-reserved before (which are
    /// then ordinary free space).
    fn refill_holes(&mut self, min_pages: u64) -> Result<u64> {
        let c = self.chunk_pages();
        let want = min_pages.max(self.grow_step_pages());
        let mut got = 0;
        while got < want {
            let Some((&start, &len)) = self.holes.iter().next() else {
                break;
            };
            let take = len.min((want - got).div_ceil(c).saturating_mul(c));
            if let Err(e) = self.file.allocate(self.offset_of(start), take * self.block_size) {
                if got >= min_pages {
                    break;
                }
                return Err(Error::io("re-reserving punched space in the data file", e));
            }
            self.holes.carve(start, take);
            self.hole_pages -= take;
            self.insert_free(start, take);
            got += take;
        }
        Ok(got)
    }

    /// Extends the file by at least `min_pages` (by a growth step when the
    /// file system has room for it), reserving the space with `fallocate`.
    fn extend_file(&mut self, min_pages: u64) -> Result<()> {
        self.discover_all()?;
        let old = self.npages;
        let attempt = |s: &Space, pages: u64| s.file.allocate(s.offset_of(old), pages * s.block_size);
        let want = min_pages.max(self.grow_step_pages());
        let grown = match attempt(self, want) {
            Ok(()) => want,
            Err(_) if want > min_pages => {
                attempt(self, min_pages).map_err(|e| Error::io("growing the data file", e))?;
                min_pages
            }
            Err(e) => return Err(Error::io("growing the data file", e)),
        };
        self.ensure_pages(old + grown);
        self.discovered_growth(old);
        self.insert_free(old, grown);
        Ok(())
    }
}

/// The extents of `map` (start -> length) from page `from` on, at most
/// [`PUNCH_SCAN_EXTENTS`] of them, the one holding `from` cut to begin there.
fn extents_from(map: &BTreeMap<u64, u64>, from: u64) -> Vec<Run> {
    let holding = map.range(..from).next_back().filter(|(&s, &l)| s + l > from);
    let head = holding.map(|(&s, &l)| Run { start: from, len: s + l - from });
    let rest = map.range(from..).map(|(&start, &len)| Run { start, len });
    head.into_iter().chain(rest).take(PUNCH_SCAN_EXTENTS).collect()
}

/// The extent of `map` (start -> length) that holds `page`, if any.
fn extent_holding(map: &BTreeMap<u64, u64>, page: u64) -> Option<(u64, u64)> {
    map.range(..=page).next_back().map(|(&s, &l)| (s, l)).filter(|&(s, l)| page < s + l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StorageDir;
    use crate::testing::SimDir;

    fn space() -> Space {
        let dir = SimDir::new();
        let f = dir.open_file("f", true).unwrap();
        Space::new(f, 4096, 8192, 1)
    }

    #[test]
    fn allocation_is_sequential_and_skips_page_zero() {
        let mut s = space();
        let a = s.alloc_run(4).unwrap();
        let b = s.alloc_run(4).unwrap();
        assert_eq!(a, Run { start: 1, len: 4 });
        assert_eq!(b, Run { start: 5, len: 4 });
    }

    #[test]
    fn a_range_inside_one_punch_chunk_has_no_whole_chunk() {
        let s = space();
        let c = s.chunk_pages();
        assert_eq!(s.whole_chunks(c + 1, c + 5), None);
        assert_eq!(s.whole_chunks(c + 1, 2 * c - 1), None);
        assert_eq!(s.whole_chunks(c - 1, 3 * c + 1), Some(Run { start: c, len: 2 * c }));
    }

    #[test]
    fn quarantined_pages_return_only_on_release() {
        let mut s = space();
        let r = s.alloc_run(1).unwrap();
        s.inc(r.start);
        let before = s.free_pages();
        s.dec(r.start);
        assert_eq!(s.free_pages(), before);
        assert!(!s.is_free(r.start));
        let q = std::mem::take(&mut s.quarantine);
        s.release(q, vec![]);
        assert!(s.is_free(r.start));
        assert_eq!(s.free_pages(), before + 1);
    }

    #[test]
    fn freed_runs_coalesce() {
        let mut s = space();
        let a = s.alloc_run(2).unwrap();
        let b = s.alloc_run(2).unwrap();
        let total = s.free_pages();
        s.free_run(a);
        s.free_run(b);
        assert_eq!(s.free_pages(), total + 4);
        assert!(s.free_runs().any(|r| r.start == 1 && r.len >= 4));
    }

    #[test]
    fn full_disk_is_no_space_and_leaves_map_intact() {
        let dir = SimDir::new();
        dir.set_capacity(Some(8192 + 4096 * 8));
        let f = dir.open_file("f", true).unwrap();
        let mut s = Space::new(f, 4096, 8192, 1);
        let got = s.alloc(7).unwrap();
        assert_eq!(got.iter().map(|r| r.len).sum::<u64>(), 7);
        assert!(matches!(s.alloc(100), Err(Error::NoSpace { .. })));
        assert_eq!(s.free_pages(), 0);
    }

    /// A space map over a file of 16 MiB of 4 KiB pages, all free.
    fn big_space(dir: &SimDir) -> Space {
        let f = dir.open_file("f", true).unwrap();
        let mut s = Space::new(f, 4096, 8192, 1);
        let runs = s.alloc(4096).unwrap();
        for r in runs {
            s.free_run(r);
        }
        s
    }

    #[test]
    fn punching_takes_whole_free_chunks_and_keeps_a_reserve() {
        let dir = SimDir::new();
        let mut s = big_space(&dir);
        let c = s.chunk_pages();
        let in_use = s.alloc(300).unwrap();
        let free_before = s.free_pages();
        assert!(s.has_punch_work());
        let batch = s.take_punchable(u64::MAX);
        let taken: u64 = batch.runs.iter().map(|r| r.len).sum();
        assert!(taken > 0);
        for r in &batch.runs {
            assert_eq!((r.start % c, r.len % c), (0, 0), "{r:?} is not whole chunks");
            for u in &in_use {
                assert!(r.start + r.len <= u.start || u.start + u.len <= r.start, "{r:?} overlaps {u:?}");
            }
        }
        assert!(s.free_pages >= s.punch_keep(), "the keep stays allocated");
        let allocated = s.allocated_bytes();
        s.punched(PunchBatch { runs: batch.runs.clone() });
        assert_eq!(s.hole_pages(), taken);
        assert_eq!(s.free_pages(), free_before, "holes still count as free");
        assert!(!s.has_punch_work());
        // The disk saw nothing yet: the engine punches, not the space map.
        assert_eq!(s.allocated_bytes(), allocated);
        for r in &batch.runs {
            s.file.punch_hole(s.offset_of(r.start), r.len * 4096).unwrap();
        }
        assert_eq!(s.allocated_bytes(), allocated - taken * 4096);

        // Taking more than the allocated free pages re-reserves holes
        // before growing the file.
        let npages = s.npages();
        let want = s.free_pages + c;
        let got = s.alloc(want).unwrap();
        assert_eq!(s.npages(), npages, "holes were reused, the file did not grow");
        assert!(s.hole_pages() < taken);
        assert_eq!(s.allocated_bytes(), allocated - s.hole_pages() * 4096);
        for r in got {
            s.free_run(r);
        }
    }

    #[test]
    fn after_open_wholly_free_chunks_are_holes_punched_once_more() {
        let dir = SimDir::new();
        let mut s = big_space(&dir);
        let c = s.chunk_pages();
        // One page in use in the second chunk, a reserved one in the fifth.
        s.set_node_refcount(c + 3, 1);
        s.set_reserved(4 * c + 1, true);
        s.start_free_map(0);
        s.discover_all().unwrap();
        let holes: Vec<Run> = s.holes.iter().map(|(&start, &len)| Run { start, len }).collect();
        assert!(!holes.is_empty());
        for h in &holes {
            assert_eq!((h.start % c, h.len % c), (0, 0));
            for p in [c + 3, 4 * c + 1, 0] {
                assert!(p < h.start || p >= h.start + h.len, "page {p} in hole {h:?}");
            }
        }
        assert!(s.is_free(c + 4), "the rest of a chunk in use stays allocated free space");
        let batch = s.take_punchable(u64::MAX);
        assert_eq!(batch.runs.iter().map(|r| r.len).sum::<u64>(), holes.iter().map(|h| h.len).sum::<u64>());
        s.punched(batch);
        assert!(s.repunch_from.is_none());
    }
}
