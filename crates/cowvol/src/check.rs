//! Verification: `check` recomputes every reference count from what the
//! trees reference and compares; `scrub` reads every live block and checks
//! its CRC; `stats` reports space.

use crate::catalog::{SnapshotId, TemplateId, VolumeId};
use crate::engine::{PinnedView, State};
use crate::error::{Error, Result};
use crate::format::{Crc, NodeHeader};
use crate::space::{Run, Space};
use crate::store::Store;
use crate::tree::{self, Body, Child, Node};

mod usage;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One problem `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The stored reference count of a page differs from the references that exist.
    WrongRefcount {
        /// The page.
        page: u64,
        /// What the block store holds.
        stored: u32,
        /// What the trees reference.
        actual: u32,
    },
    /// A page is referenced by a tree but also listed as free.
    ReferencedButFree {
        /// The page.
        page: u64,
    },
    /// A page is both a data block and metadata (owned twice).
    DoubleOwned {
        /// The page.
        page: u64,
    },
    /// A page is neither referenced, free, reserved nor waiting for reuse.
    Leaked {
        /// The page.
        page: u64,
    },
    /// A tree node on disk cannot be read back or fails verification.
    UnreadableNode {
        /// The node's page.
        page: u64,
        /// Why.
        detail: String,
    },
}

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Live volumes.
    pub volumes: usize,
    /// Snapshots.
    pub snapshots: usize,
    /// Templates.
    pub templates: usize,
    /// Distinct tree nodes visited (shared nodes once).
    pub nodes: u64,
    /// Distinct data pages referenced.
    pub data_pages: u64,
    /// Every inconsistency; empty when the store is sound.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One damaged block found by [`Store::scrub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedBlock {
    /// The page that fails its checksum (or cannot be read).
    pub page: u64,
    /// Volumes that see it, with the logical block.
    pub volumes: Vec<(VolumeId, u64)>,
    /// Snapshots that see it, with the logical block.
    pub snapshots: Vec<(SnapshotId, u64)>,
    /// Templates that see it, with the logical block.
    pub templates: Vec<(TemplateId, u64)>,
}

/// What [`Store::scrub`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Data blocks read and verified.
    pub blocks_checked: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Every block that failed.
    pub damaged: Vec<DamagedBlock>,
}

impl ScrubReport {
    /// True when every block verified.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// Space and metadata figures from [`Store::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live volumes.
    pub volumes: usize,
    /// Snapshots.
    pub snapshots: usize,
    /// Templates.
    pub templates: usize,
    /// Sum of the live volumes' logical sizes.
    pub logical_bytes: u64,
    /// Bytes of data mapped by live volumes (each volume counted in full).
    pub mapped_bytes: u64,
    /// Bytes of distinct data blocks referenced by anything.
    pub physical_bytes: u64,
    /// Data blocks seen by more than one volume or snapshot.
    pub shared_blocks: u64,
    /// Distinct data blocks referenced.
    pub data_blocks: u64,
    /// Distinct tree nodes.
    pub tree_nodes: u64,
    /// Bytes the metadata takes in memory: nodes changed since the last
    /// checkpoint, the node cache, the reference counts, the free map and
    /// the reserved bitmap (a bit per page of the file).
    pub metadata_memory_bytes: u64,
    /// Bytes of written tree nodes in the node cache (with the nodes
    /// changed since the last checkpoint, the counts and the free map, at most
    /// `StoreOptions::node_cache_bytes`, plus nodes a checkpoint is
    /// writing).
    pub node_cache_bytes: u64,
    /// Tree node reads the cache answered, and those that read a page.
    pub node_cache_hits: u64,
    /// See `node_cache_hits`.
    pub node_cache_misses: u64,
    /// Bytes of the data file (blocks, metadata, WAL and free space).
    pub file_bytes: u64,
    /// Free bytes inside the data file.
    pub free_bytes: u64,
    /// Bytes of the data file in use: blocks, metadata and WAL
    /// (`file_bytes - free_bytes`).
    pub used_bytes: u64,
    /// Free bytes whose file space was given back to the file system, or
    /// may have been (after open, every wholly free 1 MiB chunk counts).
    pub punched_bytes: u64,
    /// Bytes the file system has allocated to the data file (`st_blocks`
    /// × 512): what the store costs on disk. Below `file_bytes` once free
    /// space is punched; 0 when the backend cannot tell.
    pub allocated_bytes: u64,
    /// Bytes written to the data file since open, by what they hold, and
    /// the syncs (the same figures as [`Store::written`]).
    pub written: crate::WriteStats,
}

impl Store {
    /// Verifies every reference count against the references that exist
    /// (visiting shared subtrees once), finds leaked and double-owned pages,
    /// and reads back every tree node a checkpoint wrote.
    ///
    /// Runs beside I/O and checkpoints: it pins a view of every tree at one
    /// instant with no checkpoint running, counts and reads with no lock
    /// held, and compares with the live bookkeeping a slice of pages at a
    /// time; pages that changed meanwhile are judged again against a second
    /// pinned instant. Cost: two passes over the distinct metadata when
    /// anything changed during the first (one otherwise), not over the
    /// snapshots; the state lock is held for one root clone per tree, then
    /// to copy the bookkeeping of 32,768 pages at a time. Pages overwritten
    /// while it runs are reused only after it returns. The work runs on a
    /// thread of its own at the lowest CPU priority (nice 19), so that
    /// writers beside it are scheduled first; the caller waits for it.
    ///
    /// # Errors
    /// I/O errors reading nodes are reported as problems, not errors.
    pub fn check(&self) -> Result<CheckReport> {
        crate::engine::background::at_low_priority(|| self.check_here())
    }

    fn check_here(&self) -> Result<CheckReport> {
        self.engine.reclaim();
        // Every free page must be in the free map to be told from a leak.
        self.engine.discover_free_space(|| false)?;
        let (view, waiting, mut report) = self.pin_for_check();
        let counted = count_references(&view, waiting.npages() as usize, &mut report);
        report.nodes = counted.nodes;
        report.data_pages = counted.data.iter().skip(1).filter(|&&c| c > 0).count() as u64;
        let suspects = self.compare_in_slices(&counted, &waiting)?;
        // The comparison read every group of the table, so each mark of a
        // table page has met the group or index page that names it.
        self.engine.state.lock().space.verify_table_pages_named()?;
        report.problems.extend(self.settle(&suspects)?);
        self.verify_written_nodes(counted.written, &mut report);
        drop(view);
        Ok(report)
    }

    /// Pins every tree with no checkpoint running, and notes the pages that
    /// wait for reuse (quarantined, or claimed by writes in flight) at that
    /// instant. With no checkpoint running, every live node and page is in
    /// the state (a checkpoint holds captured trees and the freed lists
    /// outside it while it writes), and every node that has a disk address
    /// has been written there. Cost under the locks: one `Arc` clone per
    /// tree, the quarantine and the claims.
    fn pin_for_check(&self) -> (PinnedView<'_>, PageBits, CheckReport) {
        let _no_checkpoint = self.engine.checkpoint_guard();
        let mut st = self.engine.state.lock();
        let npages = st.space.npages();
        let mut waiting: Vec<Run> = st.space.quarantine.iter().map(|&p| Run { start: p, len: 1 }).collect();
        waiting.extend(st.space.in_flight_runs());
        let report = CheckReport {
            volumes: st.volumes.len(),
            snapshots: st.snapshots.len(),
            templates: st.templates.len(),
            ..Default::default()
        };
        let view = self.engine.pin(&mut st);
        drop(st);
        (view, PageBits::from_runs(npages, &waiting), report)
    }

    /// Pages whose live bookkeeping disagrees with the counts of the pinned
    /// view. The bookkeeping is copied a slice at a time under the state
    /// lock (a memory copy of the slice's counts and reserved bits, and the
    /// free extents in it) and compared with no lock held. A page that
    /// changed since the pin may disagree without being wrong, so these
    /// are suspects for [`Store::settle`], not problems.
    fn compare_in_slices(&self, counted: &Counted, waiting: &PageBits) -> Result<Vec<u64>> {
        let npages = counted.data.len() as u64;
        let mut suspects = Vec::new();
        let mut slice = PageCopy::sized_for(COMPARE_SLICE);
        let mut found = Vec::new();
        for start in (0..npages).step_by(COMPARE_SLICE as usize) {
            let end = (start + COMPARE_SLICE).min(npages);
            {
                let mut st = self.engine.state.lock();
                slice.capture_range(&mut st.space, start..end)?;
            }
            let free = PageBits::from_runs_in(start..end, &slice.free);
            for p in start.max(1)..end {
                let i = (p - start) as usize;
                let Some(&stored) = slice.refcnt.get(i) else { break };
                let reserved = slice.is_reserved(i as u64);
                let state = PageState { stored, reserved, free: free.get(p - start), waiting: waiting.get(p) };
                found.clear();
                let refs = Refs { node: counted.node[p as usize], data: counted.data[p as usize] };
                judge(p, refs, state, &mut found);
                if !found.is_empty() {
                    suspects.push(p);
                }
            }
        }
        Ok(suspects)
    }

    /// Judges the suspects exactly: a second view pinned at an instant with
    /// no checkpoint running, with the bookkeeping of those pages taken at
    /// the same instant, and their references counted in that view with no
    /// lock held. What still disagrees is a problem.
    fn settle(&self, suspects: &[u64]) -> Result<Vec<Problem>> {
        if suspects.is_empty() {
            return Ok(Vec::new());
        }
        let (view, states) = self.pin_with_states(suspects)?;
        let mut problems = Vec::new();
        let actual = count_pages(&view, suspects, &mut problems);
        drop(view);
        for ((&page, &refs), &state) in suspects.iter().zip(&actual).zip(&states) {
            judge(page, refs, state, &mut problems);
        }
        Ok(problems)
    }

    /// Pins every tree and takes the bookkeeping of `suspects` (sorted) at
    /// the same instant, with no checkpoint running. Up to
    /// [`SETTLE_LOOKUPS`] suspects are looked up one by one; more (say, a
    /// big delete ran during the check) are read from a copy of the whole
    /// bookkeeping, which costs one memory copy of 4 bytes per page under
    /// the lock.
    fn pin_with_states(&self, suspects: &[u64]) -> Result<(PinnedView<'_>, Vec<PageState>)> {
        let mut copy =
            (suspects.len() > SETTLE_LOOKUPS).then(|| PageCopy::sized_for(self.engine.state.lock().space.npages()));
        let _no_checkpoint = self.engine.checkpoint_guard();
        let mut st = self.engine.state.lock();
        let looked_up = match &mut copy {
            Some(c) => {
                c.capture(&mut st.space)?;
                Vec::new()
            }
            None => look_up_states(&mut st.space, suspects)?,
        };
        let view = self.engine.pin(&mut st);
        drop(st);
        let states = match copy {
            Some(c) => c.states_of(suspects),
            None => looked_up,
        };
        Ok((view, states))
    }

    /// Reads back every written node of a pinned view from its page (not
    /// from the cache), in page order and in runs of consecutive pages,
    /// with no lock held. The view was pinned with no checkpoint running,
    /// so each of its pages had been written; and no page is reused while
    /// a view lives, so each still holds its node. A page that fails is
    /// read once more on its own before it is reported.
    fn verify_written_nodes(&self, mut written: Vec<(u64, Written)>, report: &mut CheckReport) {
        written.sort_unstable();
        written.dedup();
        let bs = self.engine.block_size as usize;
        let max_run = ((1 << 20) / bs).max(1);
        let mut suspects = Vec::new();
        let mut buf = Vec::new();
        for run in written.chunk_by(|a, b| a.0 + 1 == b.0) {
            for part in run.chunks(max_run) {
                let read = self.read_pages(part[0].0, &mut buf, part.len() as u64);
                for (&(page, kind), image) in part.iter().zip(buf.chunks(bs)) {
                    if !read || verify_written_page(image, page, kind).is_err() {
                        suspects.push((page, kind));
                    }
                }
            }
        }
        for (page, kind) in suspects {
            let ds = crate::format::data_start(self.engine.block_size);
            buf.resize(bs, 0);
            let res = self
                .engine
                .file
                .read_at(&mut buf, ds + page * bs as u64)
                .map_err(|e| Error::io("reading a tree node", e))
                .and_then(|_| verify_written_page(&buf, page, kind));
            if let Err(e) = res {
                report.problems.push(Problem::UnreadableNode { page, detail: e.to_string() });
            }
        }
    }

    /// Reads every data block any volume or snapshot references and checks
    /// its CRC, naming each damaged block and who sees it. Reads in page
    /// order, in large runs, without holding the state lock while reading.
    ///
    /// Scrub runs beside writes and checkpoints: it plans from the trees as
    /// they were when it started, so a page freed and reused for other data
    /// meanwhile fails its planned checksum. Every page that fails is looked
    /// at again against the trees as they are now, with checkpoints held
    /// off only for that short second look (a page still referenced cannot
    /// be reused until a checkpoint releases it). Like `check`, it runs on
    /// a thread of its own at the lowest CPU priority.
    ///
    /// # Errors
    /// Only when the store itself cannot be accessed; damage is reported.
    pub fn scrub(&self) -> Result<ScrubReport> {
        crate::engine::background::at_low_priority(|| self.scrub_here())
    }

    fn scrub_here(&self) -> Result<ScrubReport> {
        let (expected, mut bad) = self.expected_checksums()?;
        let bs = self.engine.block_size as u64;
        let max_run = ((4u64 << 20) / bs).max(1);
        // Runs of consecutive live pages, in page order, at most 4 MiB each.
        let mut runs = Vec::new();
        let mut p = 0u64;
        while let Some(start) = expected.next_live(p) {
            let mut n = 1;
            while n < max_run && expected.is_live(start + n) {
                n += 1;
            }
            runs.push((start, n));
            p = start + n;
        }
        let mut report = ScrubReport::default();
        for &(_, n) in &runs {
            report.blocks_checked += n;
            report.bytes_read += n * bs;
        }
        let suspects = verify_runs(&runs, &expected, bs as usize, |start, buf, n| self.read_pages(start, buf, n));
        bad.extend(self.recheck(&suspects));
        bad.sort_unstable();
        bad.dedup();
        if !bad.is_empty() {
            report.damaged = self.owners_of(&bad);
        }
        Ok(report)
    }

    /// Reads `n` pages from `start` into `buf`; false when the read failed.
    fn read_pages(&self, start: u64, buf: &mut Vec<u8>, n: u64) -> bool {
        let bs = self.engine.block_size as u64;
        buf.resize((n * bs) as usize, 0);
        let ds = crate::format::data_start(self.engine.block_size);
        self.engine.file.read_at(buf, ds + start * bs).is_ok()
    }

    /// The pages among `suspects` that are still referenced and still fail
    /// their checksum (or that leaves give different checksums), judged by
    /// the trees as they are now: a freshly pinned view, walked and read
    /// with no lock held. A page the view references cannot be freed and
    /// reused while the view is held, so its contents must match.
    fn recheck(&self, suspects: &[u64]) -> Vec<u64> {
        if suspects.is_empty() {
            return Vec::new();
        }
        let (_, view) = self.pin_written();
        let mut want: HashMap<u64, Option<u32>> = suspects.iter().map(|&p| (p, None)).collect();
        let mut bad = Vec::new();
        // A tree that cannot be read leaves its pages unjudged here; check
        // reports it.
        let _ = for_each_leaf_entry(&view, |page, crc| {
            if let Some(slot) = want.get_mut(&page) {
                match slot {
                    Some(c) if *c != crc => bad.push(page),
                    _ => *slot = Some(crc),
                }
            }
        });
        let mut buf = Vec::new();
        for (page, crc) in want {
            let Some(crc) = crc else { continue }; // no longer referenced
            if !self.read_pages(page, &mut buf, 1) || Crc::of(&buf).0 != crc {
                bad.push(page);
            }
        }
        drop(view);
        bad
    }

    /// Pins every tree with no checkpoint running (and the page count then),
    /// for scrub. Between a checkpoint's plan and its writes, the trees
    /// name pages not yet written, whose nodes only the node cache holds;
    /// a copy-on-write that moves such a node drops it from the cache, and
    /// a view pinned then would read the page from the disk before the
    /// checkpoint writes it. With none running, every node that has a disk
    /// address has been written there. Checkpoints wait only while the
    /// roots are copied.
    fn pin_written(&self) -> (u64, PinnedView<'_>) {
        let _no_checkpoint = self.engine.checkpoint_guard();
        let mut st = self.engine.state.lock();
        (st.space.npages(), self.engine.pin(&mut st))
    }

    /// The checksum every live data page must have, from the leaves of all
    /// trees (shared subtrees visited once), indexed by page so that scrub
    /// reads the file in order without sorting. Pages that two leaves give
    /// different checksums are returned as damaged at once.
    ///
    /// The walk runs on a pinned view with no lock held; the view is let go
    /// before any data is read.
    fn expected_checksums(&self) -> Result<(Expected, Vec<u64>)> {
        let (npages, view) = self.pin_written();
        let mut exp = Expected { crc: vec![0; npages as usize], live: vec![0; npages.div_ceil(64) as usize] };
        let mut conflicting = Vec::new();
        for_each_leaf_entry(&view, |page, crc| {
            let Some(slot) = exp.crc.get_mut(page as usize) else {
                conflicting.push(page);
                return;
            };
            let word = &mut exp.live[page as usize / 64];
            let bit = 1u64 << (page % 64);
            if *word & bit != 0 && *slot != crc {
                conflicting.push(page);
            }
            *word |= bit;
            *slot = crc;
        })?;
        Ok((exp, conflicting))
    }

    fn owners_of(&self, pages: &[u64]) -> Vec<DamagedBlock> {
        let mut out: BTreeMap<u64, DamagedBlock> = pages
            .iter()
            .map(|&p| (p, DamagedBlock { page: p, volumes: vec![], snapshots: vec![], templates: vec![] }))
            .collect();
        let mut st = self.engine.state.lock();
        let State { volumes, snapshots, templates, nodes, .. } = &mut *st;
        // A tree that cannot be read names fewer owners; check reports why.
        for v in volumes.values() {
            let _ = tree::for_each_mapping(&v.root, v.geo, nodes, |lb, m| {
                if let Some(d) = out.get_mut(&m.page) {
                    d.volumes.push((v.info.id, lb));
                }
            });
        }
        for s in snapshots.values() {
            let _ = tree::for_each_mapping(&s.root, s.geo, nodes, |lb, m| {
                if let Some(d) = out.get_mut(&m.page) {
                    d.snapshots.push((s.info.id, lb));
                }
            });
        }
        for t in templates.values() {
            let _ = tree::for_each_mapping(&t.root, t.geo, nodes, |lb, m| {
                if let Some(d) = out.get_mut(&m.page) {
                    d.templates.push((t.info.id, lb));
                }
            });
        }
        out.into_values().collect()
    }

    /// Space used and shared, metadata size, bytes written.
    ///
    /// The space figures that only the trees can tell (mapped, physical
    /// and shared bytes, tree nodes) are counted on a view of every tree
    /// pinned at one instant, with no lock held, on a thread at the lowest
    /// CPU priority, like `check`: asking for them never holds up I/O on
    /// any volume. Cost: one read of each distinct tree node (the cache's
    /// copy when it has one; the others are read and not kept, so the
    /// cache goes on holding what I/O uses), and memory for the nodes of
    /// one level at a time plus
    /// two bits per page of the file. The rest is read under the state
    /// lock in time that does not follow the trees. Pages freed while the
    /// view lives are reused only after it returns.
    pub fn stats(&self) -> StoreStats {
        // Free space counts only once every group is in the free map. A
        // damaged table page stops that short (and `check` reports it).
        let _ = self.engine.discover_free_space(|| false);
        let (s, view, npages) = {
            let _no_checkpoint = self.engine.checkpoint_guard();
            let mut st = self.engine.state.lock();
            let s = stats_of(&mut st);
            let npages = st.space.npages();
            (s, self.engine.pin(&mut st), npages)
        };
        let u = crate::engine::background::at_low_priority(|| {
            usage::count(view.tree_roots(), view.nodes(), view.epoch(), npages)
        });
        drop(view);
        let bs = u64::from(self.block_size());
        StoreStats {
            mapped_bytes: u.mapped_blocks * bs,
            physical_bytes: u.data_blocks * bs,
            data_blocks: u.data_blocks,
            shared_blocks: u.shared_blocks,
            tree_nodes: u.tree_nodes,
            written: self.written(),
            ..s
        }
    }

    /// The figures of [`Store::stats`] that need neither a walk of the
    /// trees nor a read: the counts of volumes, snapshots and templates,
    /// logical bytes, the file's size and its free, used, punched and
    /// allocated bytes, memory and node cache figures, and the bytes
    /// written. `mapped_bytes`, `physical_bytes`, `data_blocks`,
    /// `shared_blocks` and `tree_nodes` are left 0. It holds the state lock
    /// once, for as long as it takes to visit the nodes changed since the
    /// last checkpoint, so it suits frequent polling where `stats` reads
    /// every tree node (the server's `/metrics` takes these on every scrape
    /// and the tree figures from a `stats` at most every few minutes).
    /// `free_bytes` counts the free space found so far: open finds it group
    /// by group when it is first needed (the background thread finishes
    /// within a tick or two of open), and `stats` finishes it first.
    pub fn quick_stats(&self) -> StoreStats {
        StoreStats { written: self.written(), ..stats_of(&mut self.engine.state.lock()) }
    }

    /// Bytes this store wrote to its data file since it was opened, by what
    /// they hold (data, zero fill, log, tree nodes, reference table,
    /// catalogs, superblocks), and its `fdatasync` calls: the figures
    /// behind metadata write amplification. Every write the store makes is
    /// counted under exactly one kind. Costs a few atomic loads: no lock,
    /// no walk, so it suits frequent polling (the server's `/metrics`).
    pub fn written(&self) -> crate::WriteStats {
        self.engine.written.figures()
    }
}

/// Expected checksum per page, and which pages are live.
struct Expected {
    crc: Vec<u32>,
    live: Vec<u64>,
}

impl Expected {
    fn is_live(&self, page: u64) -> bool {
        self.live.get(page as usize / 64).is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// The first live page at or after `from`.
    fn next_live(&self, from: u64) -> Option<u64> {
        let mut i = from as usize / 64;
        let mut word = *self.live.get(i)? & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return Some(i as u64 * 64 + word.trailing_zeros() as u64);
            }
            i += 1;
            word = *self.live.get(i)?;
        }
    }
}

/// `Space`'s page bookkeeping copied at one instant, for `check` to settle
/// many suspects against the trees pinned at the same instant.
struct PageCopy {
    refcnt: Vec<u32>,
    reserved: Vec<u64>,
    free: Vec<Run>,
    /// Quarantined pages and pages claimed by writes in flight: not free,
    /// not referenced, and rightly so.
    waiting: Vec<Run>,
}

impl PageCopy {
    /// Buffers for a file of about `npages` pages, with every memory page
    /// already touched (filled, then emptied with the capacity kept), so
    /// that the copy under the lock is a plain memory copy rather than a
    /// page fault every 4 KiB. The slack covers growth before the copy.
    fn sized_for(npages: u64) -> PageCopy {
        let n = npages as usize + npages as usize / 16 + 64;
        let mut refcnt = vec![u32::MAX; n];
        refcnt.clear();
        let mut reserved = vec![u64::MAX; n.div_ceil(64)];
        reserved.clear();
        PageCopy { refcnt, reserved, free: Vec::new(), waiting: Vec::new() }
    }

    /// Copies the bookkeeping; the caller holds the state lock. Cost: the
    /// two arrays (4 bytes and 1 bit per page), the free extents, the
    /// quarantine and the claims in flight.
    fn capture(&mut self, space: &mut Space) -> Result<()> {
        space.copy_counts(0..space.npages(), &mut self.refcnt, &mut self.reserved)?;
        self.free.extend(space.free_runs());
        self.waiting.extend(space.quarantine.iter().map(|&p| Run { start: p, len: 1 }));
        self.waiting.extend(space.in_flight_runs());
        Ok(())
    }

    /// Copies the counts, reserved bits and free extents of pages `pages`
    /// only (`pages.start` a multiple of 64); the caller holds the state
    /// lock. Indexes in the copy are relative to `pages.start`.
    fn capture_range(&mut self, space: &mut Space, pages: std::ops::Range<u64>) -> Result<()> {
        space.copy_counts(pages.clone(), &mut self.refcnt, &mut self.reserved)?;
        self.free.clear();
        self.free.extend(space.free_runs_in(pages.start, pages.end));
        Ok(())
    }

    fn is_reserved(&self, page: u64) -> bool {
        self.reserved.get((page / 64) as usize).is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// The bookkeeping of each of `pages` as copied.
    fn states_of(&self, pages: &[u64]) -> Vec<PageState> {
        let npages = self.refcnt.len() as u64;
        let (free, waiting) = (PageBits::from_runs(npages, &self.free), PageBits::from_runs(npages, &self.waiting));
        let state = |p: u64| PageState {
            stored: self.refcnt.get(p as usize).copied().unwrap_or(0),
            reserved: self.is_reserved(p),
            free: free.get(p),
            waiting: waiting.get(p),
        };
        pages.iter().map(|&p| state(p)).collect()
    }
}

/// Pages whose bookkeeping `check` copies per hold of the state lock while
/// it compares: 32,768 pages, 128 KiB of counts, some microseconds.
/// A multiple of 64, so that slices start on a word of the reserved bitmap.
const COMPARE_SLICE: u64 = 1 << 15;

/// Suspects `check` settles by looking each one up under the state lock;
/// above this it copies the whole bookkeeping instead.
const SETTLE_LOOKUPS: usize = 1 << 13;

/// What the bookkeeping says of one page.
#[derive(Debug, Clone, Copy, Default)]
struct PageState {
    /// Its reference count.
    stored: u32,
    reserved: bool,
    free: bool,
    /// Quarantined, or claimed by a write in flight: neither free nor
    /// referenced, and rightly so.
    waiting: bool,
}

/// The references to one page that exist: as a tree node (roots, interior
/// slots, garbage) and as data (distinct leaves).
#[derive(Debug, Clone, Copy, Default)]
struct Refs {
    node: u32,
    data: u32,
}

/// Appends to `out` what is wrong with `page`, given the references to it
/// that exist and what the bookkeeping says of it.
fn judge(page: u64, refs: Refs, s: PageState, out: &mut Vec<Problem>) {
    let actual = refs.node + refs.data;
    if s.stored != actual {
        out.push(Problem::WrongRefcount { page, stored: s.stored, actual });
    }
    if actual > 0 && s.free {
        out.push(Problem::ReferencedButFree { page });
    }
    // A data page is never metadata; a node page is (and never data).
    if refs.data > 0 && (s.reserved || refs.node > 0) {
        out.push(Problem::DoubleOwned { page });
    }
    if s.free && s.reserved {
        out.push(Problem::DoubleOwned { page });
    }
    if actual == 0 && s.stored == 0 && !s.free && !s.reserved && !s.waiting {
        out.push(Problem::Leaked { page });
    }
}

/// The bookkeeping of each of `suspects` (sorted), looked up one by one;
/// the caller holds the state lock. Cost: a free-map lookup per suspect,
/// and one pass over the quarantine and the claims in flight.
fn look_up_states(space: &mut Space, suspects: &[u64]) -> Result<Vec<PageState>> {
    space.settle_counts()?;
    let is_free = |space: &Space, p: u64| space.free_runs_in(p, p + 1).any(|r| r.start <= p && p < r.start + r.len);
    let mut states = Vec::with_capacity(suspects.len());
    for &p in suspects {
        let stored = space.refcount(p)?;
        states.push(PageState { stored, reserved: space.is_reserved(p), free: is_free(space, p), waiting: false });
    }
    for &q in &space.quarantine {
        if let Ok(i) = suspects.binary_search(&q) {
            states[i].waiting = true;
        }
    }
    for r in space.in_flight_runs() {
        let from = suspects.partition_point(|&p| p < r.start);
        for (i, &p) in suspects.iter().enumerate().skip(from) {
            if p >= r.start + r.len {
                break;
            }
            states[i].waiting = true;
        }
    }
    Ok(states)
}

/// The references in the view to each of `pages` (sorted). A node that
/// cannot be read is reported to `problems`.
fn count_pages(view: &PinnedView<'_>, pages: &[u64], problems: &mut Vec<Problem>) -> Vec<Refs> {
    let npages = pages.last().map_or(0, |&p| p + 1);
    let mut wanted = PageBits::new(npages);
    for &p in pages {
        wanted.set(p);
    }
    let mut counts = vec![Refs::default(); pages.len()];
    let slot = |page: u64| if wanted.get(page) { pages.binary_search(&page).ok() } else { None };
    walk_view(
        view,
        |seen| match seen {
            Seen::Reference(page) => {
                if let Some(i) = slot(page) {
                    counts[i].node += 1;
                }
            }
            Seen::Node(Body::Leaf(entries)) => {
                for e in entries {
                    if let Some(i) = slot(e.page) {
                        counts[i].data += 1;
                    }
                }
            }
            Seen::Node(Body::Interior(_)) => {}
        },
        problems,
    );
    counts
}

/// One bit per page of the data file.
struct PageBits {
    words: Vec<u64>,
    npages: u64,
}

impl PageBits {
    fn new(npages: u64) -> PageBits {
        PageBits { words: vec![0; npages.div_ceil(64) as usize], npages }
    }

    /// The pages of `runs` set, clipped to `npages`.
    fn from_runs(npages: u64, runs: &[Run]) -> PageBits {
        PageBits::from_runs_in(0..npages, runs)
    }

    /// The pages of `runs` that fall in `pages`, indexed from `pages.start`.
    fn from_runs_in(pages: std::ops::Range<u64>, runs: &[Run]) -> PageBits {
        let mut bits = PageBits::new(pages.end - pages.start);
        for r in runs {
            let (from, to) = (r.start.max(pages.start), (r.start + r.len).min(pages.end));
            for p in from..to.max(from) {
                bits.set(p - pages.start);
            }
        }
        bits
    }

    fn npages(&self) -> u64 {
        self.npages
    }

    /// Sets the bit of `page`; returns whether it was set already. A page
    /// past the end (which a damaged node can name) grows the words, not
    /// `npages`.
    fn set(&mut self, page: u64) -> bool {
        let word = (page / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1 << (page % 64);
        let was = self.words[word] & bit != 0;
        self.words[word] |= bit;
        was
    }

    /// Pages set.
    fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// False for pages past the end.
    fn get(&self, page: u64) -> bool {
        self.words.get((page / 64) as usize).is_some_and(|w| w & (1 << (page % 64)) != 0)
    }
}

/// What `check` counts in a pinned view.
struct Counted {
    /// References to each page as a tree node (pages past the copied ones
    /// are not counted).
    node: Vec<u32>,
    /// Distinct leaves that reference each page as data.
    data: Vec<u32>,
    /// Distinct nodes.
    nodes: u64,
    /// The pages of the written nodes and of their records.
    written: Vec<(u64, Written)>,
}

/// Visits every distinct node of the view once, with no lock held.
fn count_references(view: &PinnedView<'_>, npages: usize, report: &mut CheckReport) -> Counted {
    let mut node = vec![0u32; npages];
    let mut data = vec![0u32; npages];
    let mut nodes = 0;
    let written = walk_view(
        view,
        |seen| match seen {
            Seen::Reference(page) => {
                if let Some(n) = node.get_mut(page as usize) {
                    *n += 1;
                }
            }
            Seen::Node(body) => {
                nodes += 1;
                if let Body::Leaf(entries) = body {
                    for e in entries {
                        if let Some(count) = data.get_mut(e.page as usize) {
                            *count += 1;
                        }
                    }
                }
            }
        },
        &mut report.problems,
    );
    Counted { node, data, nodes, written }
}

/// What a walk of a pinned view reports.
enum Seen<'n> {
    /// A reference to the written node at this page, from a root or an
    /// interior slot (one per reference).
    Reference(u64),
    /// A distinct node (once each).
    Node(&'n Body),
}

/// Walks every distinct node of a pinned view once, with no lock held,
/// reading written nodes through the cache, and tells `on` what it sees. A
/// node that cannot be read is reported and its subtree skipped. Returns
/// the pages of the written nodes read.
fn walk_view(view: &PinnedView<'_>, mut on: impl FnMut(Seen<'_>), problems: &mut Vec<Problem>) -> Vec<(u64, Written)> {
    let mut w = ViewWalk {
        view,
        seen_pages: std::collections::HashSet::new(),
        seen_dirty: std::collections::HashSet::new(),
        stack: Vec::new(),
        written: Vec::new(),
    };
    for (c, level, counted) in view.roots_counted() {
        w.follow(c, level, counted, &mut on, problems);
    }
    while let Some((n, level)) = w.stack.pop() {
        if let Body::Interior(children) = &n.body {
            for c in children.refs() {
                w.follow(c, level.saturating_sub(1), false, &mut on, problems);
            }
        }
        on(Seen::Node(&n.body));
    }
    w.written
}

/// The state of one [`walk_view`].
struct ViewWalk<'v, 'e> {
    view: &'v PinnedView<'e>,
    seen_pages: std::collections::HashSet<u64>,
    seen_dirty: std::collections::HashSet<*const Node>,
    stack: Vec<(Arc<Node>, u32)>,
    written: Vec<(u64, Written)>,
}

impl ViewWalk<'_, '_> {
    /// Follows one reference: reports it, and queues its node the first
    /// time it is reached. A dirty node a checkpoint placed before the pin
    /// owns nothing: when a counted root copy (`root_counted`) names it,
    /// the reference is to its page; anywhere else it is skipped. One
    /// placed after the pin is walked as the dirty node it was then, as
    /// the bookkeeping of that instant counts it.
    fn follow(
        &mut self,
        c: &Child,
        level: u32,
        root_counted: bool,
        on: &mut impl FnMut(Seen<'_>),
        problems: &mut Vec<Problem>,
    ) {
        let placed = match c {
            Child::Mem(a) => a.placed_by(self.view.epoch()),
            Child::Disk(_) => None,
        };
        match (c, placed) {
            (Child::Mem(_), Some(a)) if root_counted => self.follow(&Child::Disk(a), level, true, on, problems),
            (Child::Mem(_), Some(_)) => {}
            (Child::Disk(a), _) => {
                on(Seen::Reference(a.page));
                if self.seen_pages.insert(a.page) {
                    // A record counts once, for the node, however many
                    // references the node has.
                    self.refer_to_record(a.delta, on);
                    match self.view.nodes().load(*a, level) {
                        Ok(n) => {
                            self.written.push((a.page, Written::Node));
                            if a.delta != 0 {
                                let bs = self.view.nodes().block_size();
                                self.written.push((crate::tree::delta::location(a.delta, bs).0, Written::Records));
                            }
                            self.stack.push((n, level));
                        }
                        Err(e) => problems.push(Problem::UnreadableNode { page: a.page, detail: e.to_string() }),
                    }
                }
            }
            (Child::Mem(a), None) => {
                if self.seen_dirty.insert(Arc::as_ptr(a)) {
                    // A dirty node holds the page it was copied from, and
                    // that page's record, until a checkpoint places it.
                    if let Some(base) = a.held_base() {
                        on(Seen::Reference(base.page));
                        self.refer_to_record(base.delta, on);
                    }
                    self.stack.push((a.clone(), level));
                }
            }
        }
    }
}

impl ViewWalk<'_, '_> {
    /// Reports the reference a node makes to the page of its delta record
    /// (`delta`, 0 for none).
    fn refer_to_record(&self, delta: u64, on: &mut impl FnMut(Seen<'_>)) {
        if delta != 0 {
            let bs = self.view.nodes().block_size();
            on(Seen::Reference(crate::tree::delta::location(delta, bs).0));
        }
    }
}

/// Reads each run with `read` and checks every block of it against its
/// expected checksum; returns the pages that fail (or could not be read).
/// Reading and checking overlap: a second thread checks one run while the
/// next is read, so scrub runs at the speed of the slower of the two rather
/// than of their sum. Without a second thread it does both in turn.
fn verify_runs(
    runs: &[(u64, u64)],
    exp: &Expected,
    bs: usize,
    read: impl Fn(u64, &mut Vec<u8>, u64) -> bool,
) -> Vec<u64> {
    let check = |start: u64, buf: &[u8], ok: bool, bad: &mut Vec<u64>| {
        for (k, block) in buf.chunks(bs).enumerate() {
            let page = start + k as u64;
            if !ok || Crc::of(block).0 != exp.crc[page as usize] {
                bad.push(page);
            }
        }
    };
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>, bool)>(1);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let checker = std::thread::Builder::new().name("cowvol-scrub".into()).spawn_scoped(scope, move || {
            let mut bad = Vec::new();
            for (start, buf, ok) in full_rx {
                check(start, &buf, ok, &mut bad);
                // The reader may have finished; a buffer nobody takes is dropped.
                let _ = empty_tx.send(buf);
            }
            bad
        });
        let mut bad = Vec::new();
        let Ok(checker) = checker else {
            let mut buf = Vec::new();
            for &(start, n) in runs {
                let ok = read(start, &mut buf, n);
                check(start, &buf, ok, &mut bad);
            }
            return bad;
        };
        for &(start, n) in runs {
            let mut buf = empty_rx.try_recv().unwrap_or_default();
            let ok = read(start, &mut buf, n);
            if full_tx.send((start, buf, ok)).is_err() {
                break; // the checker is gone: its panic surfaces at join
            }
        }
        drop(full_tx);
        match checker.join() {
            Ok(found) => bad.extend(found),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        bad
    })
}

/// Calls `f(page, crc)` for every leaf entry of every tree of a pinned
/// view, visiting shared subtrees once, with no lock held. A node that
/// cannot be read ends the walk with its error.
fn for_each_leaf_entry(view: &PinnedView<'_>, mut f: impl FnMut(u64, u32)) -> Result<()> {
    tree::visit_unique(view.roots(), view.nodes(), |n, _, _| {
        if let Body::Leaf(entries) = &n.body {
            entries.iter().for_each(|e| f(e.page, e.crc));
        }
    })
}

/// What a page a tree names holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Written {
    Node,
    /// Delta records of nodes.
    Records,
}

fn verify_written_page(buf: &[u8], page: u64, kind: Written) -> Result<()> {
    // Level and geometry are checked at load; here the page must still be
    // what it claims to be and pass its checksum.
    match kind {
        Written::Node => NodeHeader::decode(buf, page).map(drop),
        Written::Records => crate::tree::delta::verify_page(buf, page, &|| format!("delta page {page}")).map(drop),
    }
}

/// The figures of [`Store::stats`] that need no walk of the trees, taken
/// under the state lock.
fn stats_of(st: &mut State) -> StoreStats {
    let mut s = StoreStats {
        volumes: st.volumes.len(),
        snapshots: st.snapshots.len(),
        templates: st.templates.len(),
        logical_bytes: st.volumes.values().map(|v| v.info.size_bytes).sum(),
        file_bytes: st.space.offset_of(st.space.npages()),
        free_bytes: st.space.free_pages() * st.block_size,
        punched_bytes: st.space.hole_pages() * st.block_size,
        allocated_bytes: st.space.allocated_bytes(),
        ..Default::default()
    };
    s.used_bytes = s.file_bytes.saturating_sub(s.free_bytes);
    let State { volumes, snapshots, templates, nodes, space, .. } = st;
    s.metadata_memory_bytes = dirty_bytes(volumes, snapshots, templates)
        + nodes.bytes() as u64
        + space.count_bytes()
        + space.bookkeeping_bytes();
    let cache = nodes.stats();
    s.node_cache_bytes = nodes.bytes() as u64;
    (s.node_cache_hits, s.node_cache_misses) = (cache.hits, cache.misses);
    s
}

/// Bytes the dirty nodes (changed since the last checkpoint) take, each
/// counted once.
fn dirty_bytes<I, J, K, R>(
    volumes: &BTreeMap<u64, crate::engine::Entry<I, R>>,
    snapshots: &BTreeMap<u64, crate::engine::Entry<J>>,
    templates: &BTreeMap<u64, crate::engine::Entry<K>>,
) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<&Arc<Node>> = Vec::new();
    let roots = volumes
        .values()
        .filter_map(|e| e.root.as_ref())
        .chain(snapshots.values().filter_map(|e| e.root.as_ref()))
        .chain(templates.values().filter_map(|e| e.root.as_ref()));
    for r in roots {
        if let Child::Mem(a) = r {
            stack.push(a);
        }
    }
    let mut bytes = 0;
    while let Some(n) = stack.pop() {
        if !seen.insert(Arc::as_ptr(n)) {
            continue;
        }
        bytes += n.mem_bytes() as u64;
        if let Body::Interior(children) = &n.body {
            stack.extend(children.refs().filter_map(|c| match c {
                Child::Mem(a) => Some(a),
                Child::Disk(_) => None,
            }));
        }
    }
    bytes
}
