//! Verification: `check` recomputes every reference count from what the
//! trees reference and compares; `scrub` reads every live block and checks
//! its CRC; `stats` reports space.

use crate::catalog::{SnapshotId, TemplateId, VolumeId};
use crate::engine::State;
use crate::error::{Error, Result};
use crate::format::{Crc, NodeHeader};
use crate::store::Store;
use crate::tree::{self, Body, Child, Node};
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
    /// checkpoint, the node cache, and the reference counts.
    pub metadata_memory_bytes: u64,
    /// Bytes of written tree nodes in the node cache (at most
    /// `StoreOptions::node_cache_bytes`, plus nodes a checkpoint is writing).
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
}

impl Store {
    /// Verifies every reference count against the references that exist
    /// (visiting shared subtrees once), finds leaked and double-owned pages,
    /// and reads back every tree node the last checkpoint wrote.
    /// Cost: proportional to the distinct metadata, not to the number of
    /// snapshots; holds the state lock while counting.
    ///
    /// # Errors
    /// I/O errors reading nodes are reported as problems, not errors.
    pub fn check(&self) -> Result<CheckReport> {
        // No checkpoint may run meanwhile: it holds pages and trees outside
        // the state while it writes.
        let _no_checkpoint = self.engine.checkpoint_guard();
        self.engine.reclaim();
        let mut st = self.engine.state.lock();
        let mut report = CheckReport {
            volumes: st.volumes.len(),
            snapshots: st.snapshots.len(),
            templates: st.templates.len(),
            ..Default::default()
        };
        let npages = st.space.npages();
        let refs = count_actual_references(&mut st, &mut report);
        let mut waiting = vec![false; npages as usize];
        for &p in st.space.quarantine.iter() {
            waiting[p as usize] = true;
        }
        for r in st.space.in_flight_runs() {
            for p in r.start..r.start + r.len {
                waiting[p as usize] = true;
            }
        }
        let mut free = vec![false; npages as usize];
        for r in st.space.free_runs() {
            for p in r.start..r.start + r.len {
                free[p as usize] = true;
            }
        }
        for p in 1..npages {
            let (node, data) = (refs.node[p as usize], refs.data[p as usize]);
            let (stored, act) = (st.space.refcount(p), node + data);
            if data > 0 {
                report.data_pages += 1;
            }
            if stored != act {
                report.problems.push(Problem::WrongRefcount { page: p, stored, actual: act });
            }
            if act > 0 && free[p as usize] {
                report.problems.push(Problem::ReferencedButFree { page: p });
            }
            if data > 0 && (st.space.is_reserved(p) || node > 0) {
                report.problems.push(Problem::DoubleOwned { page: p });
            }
            if free[p as usize] && st.space.is_reserved(p) {
                report.problems.push(Problem::DoubleOwned { page: p });
            }
            if act == 0 && stored == 0 && !free[p as usize] && !st.space.is_reserved(p) && !waiting[p as usize] {
                report.problems.push(Problem::Leaked { page: p });
            }
        }
        // Read every written node back from its page, not from the cache:
        // the disk copy is what the next open will read.
        let bs = self.engine.block_size as usize;
        let mut buf = vec![0u8; bs];
        for page in refs.written {
            let res = self
                .engine
                .file
                .read_at(&mut buf, st.space.offset_of(page))
                .map_err(|e| Error::io("reading a tree node", e))
                .and_then(|_| verify_node_page(&buf, page));
            if let Err(e) = res {
                report.problems.push(Problem::UnreadableNode { page, detail: e.to_string() });
            }
        }
        Ok(report)
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
    /// be reused until a checkpoint releases it).
    ///
    /// # Errors
    /// Only when the store itself cannot be accessed; damage is reported.
    pub fn scrub(&self) -> Result<ScrubReport> {
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
    /// the trees as they are now.
    fn recheck(&self, suspects: &[u64]) -> Vec<u64> {
        if suspects.is_empty() {
            return Vec::new();
        }
        let _no_checkpoint = self.engine.checkpoint_guard();
        let mut want: HashMap<u64, Option<u32>> = suspects.iter().map(|&p| (p, None)).collect();
        let mut bad = Vec::new();
        {
            let mut st = self.engine.state.lock();
            // A tree that cannot be read leaves its pages unjudged here;
            // `check` reports it.
            let _ = for_each_leaf_entry(&mut st, |page, crc| {
                if let Some(slot) = want.get_mut(&page) {
                    match slot {
                        Some(c) if *c != crc => bad.push(page),
                        _ => *slot = Some(crc),
                    }
                }
            });
        }
        let mut buf = Vec::new();
        for (page, crc) in want {
            let Some(crc) = crc else { continue }; // no longer referenced
            if !self.read_pages(page, &mut buf, 1) || Crc::of(&buf).0 != crc {
                bad.push(page);
            }
        }
        bad
    }

    /// The checksum every live data page must have, from the leaves of all
    /// trees (shared subtrees visited once), indexed by page so that scrub
    /// reads the file in order without sorting. Pages that two leaves give
    /// different checksums are returned as damaged at once.
    fn expected_checksums(&self) -> Result<(Expected, Vec<u64>)> {
        let mut st = self.engine.state.lock();
        let mut exp = Expected {
            crc: vec![0; st.space.npages() as usize],
            live: vec![0; st.space.npages().div_ceil(64) as usize],
        };
        let mut conflicting = Vec::new();
        for_each_leaf_entry(&mut st, |page, crc| {
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

    /// Space used and shared, metadata size. Cost: one pass over the
    /// distinct tree nodes.
    pub fn stats(&self) -> StoreStats {
        let mut st = self.engine.state.lock();
        stats_of(&mut st)
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

/// Calls `f(page, crc)` for every leaf entry of every tree, visiting
/// shared subtrees once. A node that cannot be read ends the walk with its
/// error.
fn for_each_leaf_entry(st: &mut State, mut f: impl FnMut(u64, u32)) -> Result<()> {
    let (roots, nodes, _) = st.roots_with_cache();
    tree::visit_unique(roots, nodes, |n, _, _| {
        if let Body::Leaf(entries) = &n.body {
            entries.iter().for_each(|e| f(e.page, e.crc));
        }
    })
}

/// The references that exist, counted from the trees and the garbage list:
/// per node page, the `Disk` references to it; per data page, the distinct
/// leaves holding it; and every written node page reached.
struct ActualRefs {
    node: Vec<u32>,
    data: Vec<u32>,
    written: Vec<u64>,
}

/// Walks every tree and the garbage list once (shared subtrees once),
/// reading written nodes through the cache. A node that cannot be read is
/// reported and its subtree skipped.
fn count_actual_references(st: &mut State, report: &mut CheckReport) -> ActualRefs {
    let npages = st.space.npages() as usize;
    let mut refs = ActualRefs { node: vec![0; npages], data: vec![0; npages], written: Vec::new() };
    let State { volumes, snapshots, templates, garbage, nodes, .. } = st;
    let mut seen_dirty = std::collections::HashSet::new();
    let mut stack: Vec<(Arc<Node>, u32)> = Vec::new();
    let mut pending: Vec<(u64, u32)> = Vec::new();
    // A written node is read when first referenced (`pending`); a dirty
    // node is walked once however many trees share it.
    let mut reference = |c: &Child, level: u32, refs: &mut ActualRefs, stack: &mut Vec<_>, pending: &mut Vec<_>| match c
    {
        Child::Disk(p) => {
            if let Some(n) = refs.node.get_mut(*p as usize) {
                *n += 1;
                if *n == 1 {
                    pending.push((*p, level));
                }
            }
        }
        Child::Mem(a) => {
            if seen_dirty.insert(Arc::as_ptr(a)) {
                stack.push((a.clone(), level));
            }
        }
    };
    let roots = volumes
        .values()
        .filter_map(|e| e.root.as_ref().map(|r| (r, e.geo.top())))
        .chain(snapshots.values().filter_map(|e| e.root.as_ref().map(|r| (r, e.geo.top()))))
        .chain(templates.values().filter_map(|e| e.root.as_ref().map(|r| (r, e.geo.top()))))
        .chain(garbage.iter().map(|(c, l)| (c, *l)));
    for (c, level) in roots {
        reference(c, level, &mut refs, &mut stack, &mut pending);
    }
    loop {
        for (page, level) in std::mem::take(&mut pending) {
            match nodes.load(page, level) {
                Ok(n) => {
                    refs.written.push(page);
                    stack.push((n, level));
                }
                Err(e) => report.problems.push(Problem::UnreadableNode { page, detail: e.to_string() }),
            }
        }
        let Some((n, level)) = stack.pop() else { break };
        report.nodes += 1;
        match &n.body {
            Body::Leaf(entries) => {
                for e in entries {
                    if let Some(c) = refs.data.get_mut(e.page as usize) {
                        *c += 1;
                    }
                }
            }
            Body::Interior(children) => {
                for c in children.refs() {
                    reference(c, level.saturating_sub(1), &mut refs, &mut stack, &mut pending);
                }
            }
        }
    }
    refs
}

fn verify_node_page(buf: &[u8], page: u64) -> Result<()> {
    // Level and geometry are checked at load; here the page must still be
    // the node it claims to be and pass its checksum.
    NodeHeader::decode(buf, page).map(drop)
}

fn stats_of(st: &mut State) -> StoreStats {
    let mut s = StoreStats {
        volumes: st.volumes.len(),
        snapshots: st.snapshots.len(),
        templates: st.templates.len(),
        file_bytes: st.space.offset_of(st.space.npages()),
        free_bytes: st.space.free_pages() * st.block_size,
        punched_bytes: st.space.hole_pages() * st.block_size,
        allocated_bytes: st.space.allocated_bytes(),
        ..Default::default()
    };
    s.used_bytes = s.file_bytes.saturating_sub(s.free_bytes);
    let block_size = st.block_size;
    let State { volumes, snapshots, templates, nodes, space, .. } = st;
    for v in volumes.values() {
        s.logical_bytes += v.info.size_bytes;
        let _ = tree::for_each_mapping(&v.root, v.geo, nodes, |_, _| s.mapped_bytes += block_size);
    }
    // A node is shared when more than one tree or parent holds it (its
    // page's reference count, or its Arc count while it is dirty), and
    // everything below a shared node is shared too. A page is shared when
    // its leaf is, or when several leaves reference it.
    let shared_ref = |c: &Child| match c {
        Child::Mem(a) => Arc::strong_count(a) > 1,
        Child::Disk(p) => space.refcount(*p) > 1,
    };
    let mut seen_pages: HashMap<u64, bool> = HashMap::new();
    let mut seen_nodes = std::collections::HashSet::new();
    let mut stack: Vec<(Arc<Node>, u32, bool)> = Vec::new();
    let roots = volumes
        .values()
        .filter_map(|e| e.root.as_ref().map(|r| (r, e.geo.top())))
        .chain(snapshots.values().filter_map(|e| e.root.as_ref().map(|r| (r, e.geo.top()))))
        .chain(templates.values().filter_map(|e| e.root.as_ref().map(|r| (r, e.geo.top()))));
    let mut visit = |c: &Child, level: u32, shared: bool, nodes: &tree::NodeCache, stack: &mut Vec<_>| {
        let key = match c {
            Child::Disk(p) => (*p, std::ptr::null()),
            Child::Mem(a) => (0, Arc::as_ptr(a)),
        };
        if seen_nodes.insert(key) {
            if let Ok(n) = c.node(level, nodes) {
                stack.push((n, level, shared || shared_ref(c)));
            }
        }
    };
    for (r, level) in roots {
        visit(r, level, false, nodes, &mut stack);
    }
    while let Some((n, level, shared)) = stack.pop() {
        s.tree_nodes += 1;
        match &n.body {
            Body::Leaf(entries) => {
                for e in entries {
                    let multi = shared || space.refcount(e.page) > 1;
                    let slot = seen_pages.entry(e.page).or_insert(false);
                    *slot |= multi;
                }
            }
            Body::Interior(children) => {
                for c in children.refs() {
                    visit(c, level.saturating_sub(1), shared, nodes, &mut stack);
                }
            }
        }
    }
    s.data_blocks = seen_pages.len() as u64;
    s.physical_bytes = s.data_blocks * block_size;
    s.shared_blocks = seen_pages.values().filter(|&&v| v).count() as u64;
    s.metadata_memory_bytes = dirty_bytes(volumes, snapshots, templates) + nodes.bytes() as u64 + space.npages() * 4;
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
