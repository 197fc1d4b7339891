//! Checkpoints: every node changed since the last one, then the catalog,
//! a sync, the superblock in the other slot, and a sync. The log before the
//! checkpoint's start and the pages only the old checkpoint needed are
//! freed after it is durable.

use super::{CheckpointState, Engine, State, Wrote};
use crate::catalog::CatalogImage;
use crate::error::{Error, Result};
use crate::format::{self, Crc, LogStart, Superblock, SUPERBLOCK_SLOTS};
use crate::space::{IndexRef, Run, TableRoot};
use crate::tree::{self, Child, Node};
use std::collections::HashMap;
use std::sync::Arc;

/// A log at close no longer than this (bytes of batches, and segments, since
/// the last checkpoint) is left for the next open to replay.
const CLOSE_REPLAY_BYTES: u64 = 256 << 10;
const CLOSE_REPLAY_SEGMENTS: usize = 4;

impl Engine {
    /// Holds off checkpoints (for `check`).
    pub(crate) fn checkpoint_guard(&self) -> impl Drop + '_ {
        self.checkpoint.lock()
    }

    /// What closing the store writes. Nothing when nothing was logged since
    /// the last checkpoint (a store that only read, or that a checkpoint just
    /// saved). When the log since then is short, only what makes all of it
    /// durable: the next open replays it and carries it on, which costs
    /// what the log holds, less than a checkpoint's writes and its two
    /// syncs (a command-line snapshot is one record and one sync). A longer
    /// log gets one checkpoint, so that no open replays much, and a seal
    /// of the empty log after it.
    pub(crate) fn close_out(&self) -> Result<()> {
        let (unchanged, short, end) = {
            let ck = self.checkpoint.lock();
            let wal = self.wal.lock();
            let end = wal.next_lsn();
            let short = wal.bytes_since_checkpoint <= CLOSE_REPLAY_BYTES
                && wal.segments_since_checkpoint() <= CLOSE_REPLAY_SEGMENTS;
            (ck.covered_to == Some(end), short, end)
        };
        match (unchanged, short) {
            (true, _) => Ok(()),
            (false, true) => {
                self.sync_to(end)?;
                self.seal_log(false)
            }
            (false, false) => {
                self.checkpoint()?;
                self.seal_log(true)
            }
        }
    }

    pub(super) fn run_inline_checkpoint_if_due(&self) -> Result<()> {
        if self.opts.background_checkpoints {
            return Ok(());
        }
        if self.maint.take_checkpoint_request() {
            self.checkpoint()?;
        }
        self.punch_inline_if_due();
        Ok(())
    }

    /// Writes a checkpoint: every node changed since the last one, then the
    /// catalog, a sync, the superblock in the other slot, and a sync. Then
    /// the pages the previous checkpoint needed and this one does not are
    /// freed.
    ///
    /// Every page the checkpoint needs is allocated before anything is
    /// written or taken out of the state, so a full disk makes it fail with
    /// `NoSpace` having changed nothing: the store stays writable, and the
    /// freed pages wait for a later checkpoint. A failed write or sync
    /// poisons the store.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let mut ck = self.checkpoint.lock();
        self.ensure_writable()?;
        let plan = self.plan_checkpoint()?;
        let result = self.write_checkpoint(&mut ck, plan);
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Under one hold of the state lock: finds every dirty node, gives each
    /// a page and the catalog a run, marks the log position the checkpoint
    /// covers, and only then turns the trees' references to those nodes into
    /// pages (the nodes wait, pinned, in the node cache until they are
    /// written). Fails with nothing changed when space runs out.
    fn plan_checkpoint(&self) -> Result<Plan> {
        let mut st = self.state.lock();
        {
            // Dirty nodes only the garbage list holds need no page: release
            // them, so that every dirty node left is reachable from a tree.
            let State { garbage, space, .. } = &mut *st;
            tree::release_dirty_garbage(garbage, space);
        }
        let dirty = collect_dirty(&st);
        let node_runs = if dirty.nodes.is_empty() { Vec::new() } else { st.space.alloc(dirty.nodes.len() as u64)? };
        let moves = match st.space.plan_table_moves(dirty.nodes.len() as u64) {
            Ok(m) => m,
            Err(e) => {
                free_runs(&mut st, &node_runs);
                return Err(e);
            }
        };
        let pages: Vec<u64> = node_runs.iter().flat_map(|r| r.start..r.start + r.len).collect();
        let orphans: Vec<(u64, u32)> = dirty.orphans.iter().map(|&i| (pages[i], dirty.nodes[i].1)).collect();
        let mut garbage = garbage_pages(&st);
        garbage.extend(&orphans);
        // The root's shape is fixed by now: only its page numbers and
        // CRCs are still to come.
        let shape = TableRoot {
            covered_pages: 0,
            index: vec![IndexRef::default(); moves.index_pages(&st.space)],
            changes: moves.chunk_shapes(&st.space),
        };
        let catalog_len = catalog_image(&st, shape, garbage.clone()).encode().len();
        let catalog_pages = (catalog_len as u64).div_ceil(self.block_size as u64).max(1);
        let catalog_page = match st.space.alloc_contiguous(catalog_pages) {
            Ok(p) => p,
            Err(e) => {
                st.space.abandon_table_moves(moves);
                free_runs(&mut st, &node_runs);
                return Err(e);
            }
        };
        let started = self.wal.lock().checkpoint_start();
        let (log_start, retired) = match started {
            Ok(x) => x,
            Err(e) => {
                drop(st);
                self.fail();
                return Err(e);
            }
        };
        // A request made before this point (a write that found the dirty
        // nodes or the log past their limits while this checkpoint waited
        // for the lock) is answered by this checkpoint, which takes all of
        // it: left standing, it ran a second checkpoint straight after,
        // with a few hundred changes and a whole catalog to write.
        self.maint.take_checkpoint_request();
        for p in catalog_page..catalog_page + catalog_pages {
            st.space.set_reserved(p, true);
        }
        let nodes = place_dirty_nodes(&mut st, dirty, &pages);
        st.garbage.extend(orphans.iter().map(|&(page, level)| (Child::Disk(page), level)));
        let table = st.space.capture_table(moves);
        let catalog = catalog_image(&st, table.root, garbage).encode();
        // The catalog must fit the run set aside for it: root pages and table
        // references are fixed width, and the new chunk of the change log,
        // planned at its most pages, can only have lost some (one fence
        // each).
        assert!(catalog.len() <= catalog_len, "the catalog outgrew its plan: {} > {catalog_len}", catalog.len());
        Ok(Plan {
            nodes,
            node_runs,
            table_pages: table.pages,
            catalog,
            catalog_run: Run { start: catalog_page, len: catalog_pages },
            log_start,
            retired,
            quarantine: std::mem::take(&mut st.space.quarantine),
            obsolete: std::mem::take(&mut st.space.obsolete),
        })
    }

    /// Writes what [`Engine::plan_checkpoint`] placed, makes it durable, and
    /// frees what only the previous checkpoint needed.
    fn write_checkpoint(&self, ck: &mut CheckpointState, plan: Plan) -> Result<()> {
        self.write_nodes(&plan.nodes, &plan.node_runs)?;
        self.write_table(&plan.table_pages)?;
        let cat = plan.catalog_run;
        let offset = format::data_start(self.block_size) + cat.start * self.block_size as u64;
        self.write_as(Wrote::Catalog, &plan.catalog, offset).map_err(|e| Error::io("writing the catalog", e))?;
        self.sync_file().map_err(|e| Error::io("syncing a checkpoint", e))?;
        let sb = Superblock {
            version: format::FORMAT_VERSION,
            block_size: self.block_size,
            fanout_bits: format::fanout_bits_for(self.block_size),
            generation: ck.generation + 1,
            store_id: self.store_id,
            catalog_page: cat.start,
            catalog_len: plan.catalog.len() as u64,
            catalog_crc: Crc::of(&plan.catalog).0,
            log: plan.log_start,
        };
        let slot = SUPERBLOCK_SLOTS[(sb.generation % 2) as usize];
        self.write_as(Wrote::Superblock, &sb.encode(), slot).map_err(|e| Error::io("writing the superblock", e))?;
        self.sync_file().map_err(|e| Error::io("syncing the superblock", e))?;
        {
            let mut c = self.commit.lock();
            c.durable = c.durable.max(plan.log_start.lsn);
        }
        self.wal.lock().mark_durable(plan.log_start.lsn);
        let (old_page, old_n) = std::mem::replace(&mut ck.catalog_pages, (cat.start, cat.len));
        ck.generation = sb.generation;
        ck.covered_to = Some(plan.log_start.lsn);
        let seg_pages = self.log_geo.segment_pages;
        let mut meta = plan.obsolete;
        meta.extend(old_page..old_page + old_n);
        for s in plan.retired {
            meta.extend(s..s + seg_pages);
        }
        let mut st = self.state.lock();
        st.space.catalog_reserve = 2 * cat.len + 1;
        st.space.catalog_growth = 0;
        st.space.table_written();
        st.count_metadata_outside_the_cache();
        release_freed(&mut st, plan.quarantine, meta);
        st.nodes.unpin(plan.nodes.iter().map(|n| n.page));
        drop(st);
        self.reclaim();
        Ok(())
    }

    /// Writes the table's group and index pages, one `pwrite` per run of
    /// consecutive pages (the pool hands them out in runs).
    fn write_table(&self, pages: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut sorted: Vec<&(u64, Vec<u8>)> = pages.iter().collect();
        sorted.sort_unstable_by_key(|(p, _)| *p);
        let mut i = 0;
        while i < sorted.len() {
            let start = sorted[i].0;
            let mut buf = Vec::new();
            while i < sorted.len() && sorted[i].0 == start + (buf.len() / self.block_size as usize) as u64 {
                buf.extend_from_slice(&sorted[i].1);
                i += 1;
            }
            let off = format::data_start(self.block_size) + start * self.block_size as u64;
            self.write_as(Wrote::Table, &buf, off).map_err(|e| Error::io("writing the reference table", e))?;
        }
        Ok(())
    }

    /// Writes the placed nodes, one `pwrite` per run of pages.
    fn write_nodes(&self, placed: &[PlacedNode], runs: &[Run]) -> Result<()> {
        let bs = self.block_size as usize;
        let mut i = 0;
        for r in runs {
            let mut buf = Vec::with_capacity(r.len as usize * bs);
            for p in r.start..r.start + r.len {
                let n = &placed[i];
                debug_assert_eq!(n.page, p);
                buf.extend_from_slice(&tree::encode_node(&n.node, n.level, p, bs));
                i += 1;
            }
            let off = format::data_start(self.block_size) + r.start * bs as u64;
            self.write_as(Wrote::Nodes, &buf, off).map_err(|e| Error::io("writing tree nodes", e))?;
        }
        Ok(())
    }
}

/// A node a checkpoint writes: its written form (children by page), its
/// level and its page.
struct PlacedNode {
    node: Arc<Node>,
    level: u32,
    page: u64,
}

/// What a checkpoint writes and frees, fixed under the state lock.
struct Plan {
    /// In the order of the pages in `node_runs`.
    nodes: Vec<PlacedNode>,
    node_runs: Vec<Run>,
    /// The reference table's group and index pages that changed.
    table_pages: Vec<(u64, Vec<u8>)>,
    catalog: Vec<u8>,
    catalog_run: Run,
    log_start: LogStart,
    /// WAL segments only records before `log_start` use.
    retired: Vec<u64>,
    quarantine: Vec<u64>,
    obsolete: Vec<u64>,
}

/// Every dirty node reachable from a tree, each once, with its level and
/// the number of references to it (tree roots and dirty parents' slots),
/// which becomes its page's reference count; and the dirty nodes only
/// pinned views hold.
///
/// A dirty node keeps its children and data pages referenced, counted in
/// the space map, for as long as anything holds it, a pinned view too (see
/// `engine::pin`). One that only a view holds (the trees moved on, or the
/// garbage list dropped it while the view kept it) is in no tree and in no
/// garbage list, so a checkpoint that captured the counts and nothing else
/// would leave references on the disk that nothing durable ever drops: a
/// store reopened from it would count them for good. So the checkpoint
/// places such a node too (an *orphan*), with one reference, and lists its
/// page in the garbage list, the catalog's and the live one: the live list
/// drops the reference when `reclaim` gets to it (the pages it frees wait
/// while a view lives, as any do), and an open drops it as any garbage.
/// The view's own reference stays uncounted, and releases nothing when it
/// is dropped, since a placed node owns nothing.
struct Dirty {
    nodes: Vec<(Arc<Node>, u32, u32)>,
    index: HashMap<*const Node, usize>,
    /// Indexes in `nodes` of the orphans, each with one reference.
    orphans: Vec<usize>,
}

fn collect_dirty(st: &State) -> Dirty {
    let mut d = Dirty { nodes: Vec::new(), index: HashMap::new(), orphans: Vec::new() };
    for (root, level) in st.all_roots() {
        if let Child::Mem(a) = root {
            reference(&mut d, a, level);
        }
    }
    let pinned = st.pins.values().flatten();
    for (c, level) in pinned {
        if let Child::Mem(a) = c {
            if a.placed().is_none() && !d.index.contains_key(&Arc::as_ptr(a)) {
                d.orphans.push(d.nodes.len());
                reference(&mut d, a, *level);
            }
        }
    }
    d
}

/// Counts one reference to the dirty node `a` at `level`, collecting it and
/// everything dirty below it the first time.
fn reference(d: &mut Dirty, a: &Arc<Node>, level: u32) {
    let mut stack: Vec<(Arc<Node>, u32)> = Vec::new();
    let count = |d: &mut Dirty, a: &Arc<Node>, level: u32, stack: &mut Vec<(Arc<Node>, u32)>| {
        if a.placed().is_some() {
            // Every dirty node a tree or a view reaches is placed at once,
            // so no unplaced node holds a placed one; were one to, its
            // reference would be one no count stands for (a view's), and
            // its written form leaves it out.
            debug_assert!(false, "an unplaced dirty node holds a placed one");
            return;
        }
        match d.index.get(&Arc::as_ptr(a)) {
            Some(&i) => d.nodes[i].2 += 1,
            None => {
                d.index.insert(Arc::as_ptr(a), d.nodes.len());
                d.nodes.push((a.clone(), level, 1));
                stack.push((a.clone(), level));
            }
        }
    };
    count(d, a, level, &mut stack);
    while let Some((n, level)) = stack.pop() {
        if let tree::Body::Interior(children) = &n.body {
            for c in children.refs() {
                if let Child::Mem(a) = c {
                    count(d, a, level - 1, &mut stack);
                }
            }
        }
    }
}

/// Gives each dirty node its page: builds its written form, sets the
/// page's reference count, pins it in the node cache, and turns every
/// tree root that pointed at a dirty node into its page. Afterwards no
/// dirty node is left in any tree.
fn place_dirty_nodes(st: &mut State, dirty: Dirty, pages: &[u64]) -> Vec<PlacedNode> {
    let page_of = |a: &Arc<Node>| dirty.index.get(&Arc::as_ptr(a)).map(|&i| pages[i]);
    st.placements += 1;
    let epoch = st.placements;
    // The dirty nodes move into the cache, pinned: they stop counting
    // against its budget from outside it.
    st.space.dirty_nodes = 0;
    st.count_metadata_outside_the_cache();
    let mut placed = Vec::with_capacity(dirty.nodes.len());
    for ((n, level, refs), &page) in dirty.nodes.iter().zip(pages) {
        // A leaf has no children to turn into pages: it is its own written
        // form, and no tree will change it in place again (every tree now
        // reaches it by page). Only interior nodes, a small fraction, are
        // copied.
        let written = match &n.body {
            tree::Body::Leaf(_) => n.clone(),
            tree::Body::Interior(c) => Arc::new(Node::new(tree::Body::Interior(c.written(page_of)))),
        };
        n.set_placed(page, epoch);
        st.space.set_node_refcount(page, *refs);
        st.nodes.insert_pinned(page, *level, written.clone());
        placed.push(PlacedNode { node: written, level: *level, page });
    }
    let State { volumes, snapshots, templates, .. } = st;
    let roots = volumes
        .values_mut()
        .map(|e| &mut e.root)
        .chain(snapshots.values_mut().map(|e| &mut e.root))
        .chain(templates.values_mut().map(|e| &mut e.root));
    for root in roots {
        if let Some(Child::Mem(a)) = root {
            let page = page_of(a).expect("every tree root's dirty node is collected");
            *root = Some(Child::Disk(page));
        }
    }
    placed
}

/// Frees the pages a durable checkpoint no longer needs, unless a pinned
/// view lives: its uncounted page references must keep their contents, so
/// the pages wait in the quarantine and obsolete lists for the next
/// checkpoint after the last view is dropped.
fn release_freed(st: &mut State, quarantine: Vec<u64>, meta: Vec<u64>) {
    if st.pins.is_empty() {
        st.space.release(quarantine, meta);
    } else {
        st.space.quarantine.extend(quarantine);
        st.space.obsolete.extend(meta);
    }
}

/// Gives back node pages a failed plan allocated (nothing was written).
fn free_runs(st: &mut State, runs: &[Run]) {
    for r in runs {
        st.space.free_run(*r);
    }
}

/// The garbage list as pages: after `release_dirty_garbage` it holds only
/// written nodes.
fn garbage_pages(st: &State) -> Vec<(u64, u32)> {
    debug_assert!(st.garbage.iter().all(|(c, _)| c.page().is_some()), "dirty garbage left at a checkpoint");
    st.garbage.iter().filter_map(|(c, level)| c.page().map(|p| (p, *level))).collect()
}

/// The catalog as the trees stand: each entry with its root page (0 for
/// none, and for a dirty root, which the checkpoint places before it
/// encodes the catalog it writes), the reference table's root and the
/// garbage list.
fn catalog_image(st: &State, table: TableRoot, garbage: Vec<(u64, u32)>) -> CatalogImage {
    let page = |r: &Option<Child>| r.as_ref().and_then(Child::page).unwrap_or(0);
    CatalogImage {
        next_volume: st.next_volume,
        next_snapshot: st.next_snapshot,
        next_template: st.next_template,
        volumes: st.volumes.values().map(|e| (e.info.clone(), page(&e.root))).collect(),
        snapshots: st.snapshots.values().map(|e| (e.info.clone(), page(&e.root))).collect(),
        templates: st.templates.values().map(|e| (e.info.clone(), page(&e.root))).collect(),
        table: Some(table),
        garbage,
    }
}
