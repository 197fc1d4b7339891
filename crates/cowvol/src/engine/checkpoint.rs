//! Checkpoints: every node changed since the last one, then the catalog,
//! a sync, the superblock in the other slot, and a sync. The log before the
//! checkpoint's start and the pages only the old checkpoint needed are
//! freed after it is durable.

use super::{CheckpointState, Engine, State, Wrote};
use crate::catalog::CatalogImage;
use crate::error::{Error, Result};
use crate::format::{self, Crc, LogStart, Superblock, SUPERBLOCK_SLOTS};
use crate::space::{IndexRef, Run, TableRoot};
use crate::tree::delta::{self, DeltaPage};
use crate::tree::{self, Child, Node, NodeAddr};
use std::collections::{HashMap, HashSet};
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
            let State { garbage, space, nodes, .. } = &mut *st;
            tree::release_dirty_garbage(garbage, space, nodes);
        }
        let dirty = collect_dirty(&st);
        let forms = choose_forms(&dirty, self.block_size as usize);
        let node_runs = alloc_pages(&mut st, forms.whole.len() as u64)?;
        let delta_runs = match alloc_pages(&mut st, forms.delta_pages as u64) {
            Ok(r) => r,
            Err(e) => {
                free_runs(&mut st, &node_runs);
                return Err(e);
            }
        };
        let node_runs = [node_runs, delta_runs].concat();
        // Each node placed changes a count or two: its page's (or its
        // base's), and the page of the record it leaves.
        let moves = match st.space.plan_table_moves(2 * dirty.nodes.len() as u64 + forms.delta_pages as u64) {
            Ok(m) => m,
            Err(e) => {
                free_runs(&mut st, &node_runs);
                return Err(e);
            }
        };
        let pages: Vec<u64> = node_runs.iter().flat_map(|r| r.start..r.start + r.len).collect();
        let addrs = forms.addresses(&dirty, &pages, self.block_size as usize);
        let orphans: Vec<(NodeAddr, u32)> = dirty.orphans.iter().map(|&i| (addrs[i], dirty.nodes[i].1)).collect();
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
        let (nodes, delta_pages) = place_dirty_nodes(&mut st, dirty, &forms, &addrs, &pages);
        st.garbage.extend(orphans.iter().map(|&(addr, level)| (Child::Disk(addr), level)));
        let table = st.space.capture_table(moves);
        let catalog = catalog_image(&st, table.root, garbage).encode();
        // The catalog must fit the run set aside for it: root pages and table
        // references are fixed width, and the new chunk of the change log,
        // planned at its most pages, can only have lost some (one fence
        // each).
        assert!(catalog.len() <= catalog_len, "the catalog outgrew its plan: {} > {catalog_len}", catalog.len());
        Ok(Plan {
            nodes,
            delta_pages,
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
        self.write_nodes(&plan.nodes)?;
        self.write_pages(&plan.delta_pages, Wrote::Deltas, "writing node deltas")?;
        self.write_pages(&plan.table_pages, Wrote::Table, "writing the reference table")?;
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
        st.nodes.unpin(plan.nodes.iter().map(|n| n.addr.page));
        drop(st);
        self.reclaim();
        Ok(())
    }

    /// Writes whole pages (the table's group and index pages, delta
    /// pages), one `pwrite` per run of consecutive pages (they are handed
    /// out in runs).
    fn write_pages(&self, pages: &[(u64, Vec<u8>)], kind: Wrote, what: &str) -> Result<()> {
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
            self.write_as(kind, &buf, off).map_err(|e| Error::io(what, e))?;
        }
        Ok(())
    }

    /// Writes the nodes placed whole, one `pwrite` per run of consecutive
    /// pages.
    fn write_nodes(&self, placed: &[PlacedNode]) -> Result<()> {
        let bs = self.block_size as usize;
        let pages: Vec<(u64, Vec<u8>)> = placed
            .iter()
            .filter(|n| n.addr.delta == 0)
            .map(|n| (n.addr.page, tree::encode_node(&n.node, n.level, n.addr.page, bs)))
            .collect();
        self.write_pages(&pages, Wrote::Nodes, "writing tree nodes")
    }
}

/// A node a checkpoint placed: its written form (children by address), its
/// level and its address: a page it is written to whole, or its base page
/// and its record in a delta page.
struct PlacedNode {
    node: Arc<Node>,
    level: u32,
    addr: NodeAddr,
}

/// What a checkpoint writes and frees, fixed under the state lock.
struct Plan {
    nodes: Vec<PlacedNode>,
    /// Delta pages, sealed.
    delta_pages: Vec<(u64, Vec<u8>)>,
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
    /// Indexes in `nodes` of the tree roots: the catalog names a root by
    /// its page alone, so a root is written whole.
    roots: HashSet<usize>,
}

fn collect_dirty(st: &State) -> Dirty {
    let mut d = Dirty { nodes: Vec::new(), index: HashMap::new(), orphans: Vec::new(), roots: HashSet::new() };
    for (root, level) in st.all_roots() {
        if let Child::Mem(a) = root {
            reference(&mut d, a, level);
            d.roots.insert(d.index[&Arc::as_ptr(a)]);
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

/// How a checkpoint writes each dirty node: whole to a page of its own, or
/// as a delta record of the page it holds as its base (`tree::delta`).
struct Forms {
    /// Indexes in `Dirty::nodes` written whole, in the order of their pages.
    whole: Vec<usize>,
    /// Indexes written as records, each with its delta page (among
    /// `delta_pages`) and byte offset.
    deltas: Vec<(usize, usize, usize)>,
    delta_pages: usize,
}

/// Chooses each dirty node's form: a record when it holds a base page, has
/// changed at no more indexes than a record holds, and is neither a tree
/// root (the catalog names a root by page) nor an orphan (its garbage entry
/// too); whole otherwise.
fn choose_forms(dirty: &Dirty, block_size: usize) -> Forms {
    let mut whole = Vec::new();
    let mut records = Vec::new();
    let mut sizes = Vec::new();
    for (i, (n, _, _)) in dirty.nodes.iter().enumerate() {
        let fixed = dirty.roots.contains(&i) || dirty.orphans.contains(&i);
        match n.delta_len().filter(|_| !fixed) {
            Some((leaf, count)) => {
                records.push(i);
                sizes.push(delta::record_len(leaf, count));
            }
            None => whole.push(i),
        }
    }
    let (at, delta_pages) = delta::pack(&sizes, block_size);
    let deltas = records.into_iter().zip(at).map(|(i, (page, offset))| (i, page, offset)).collect();
    Forms { whole, deltas, delta_pages }
}

impl Forms {
    /// Each dirty node's address, given the pages allocated: first one per
    /// node written whole, then the delta pages.
    fn addresses(&self, dirty: &Dirty, pages: &[u64], block_size: usize) -> Vec<NodeAddr> {
        let mut addrs = vec![NodeAddr::default(); dirty.nodes.len()];
        for (&i, &page) in self.whole.iter().zip(pages) {
            addrs[i] = NodeAddr::whole(page);
        }
        let delta_pages = &pages[self.whole.len()..];
        for &(i, k, offset) in &self.deltas {
            let base = dirty.nodes[i].0.held_base().expect("a node written as a record holds its base");
            addrs[i] = NodeAddr { page: base.page, delta: delta::address(delta_pages[k], offset, block_size) };
        }
        addrs
    }
}

/// `n` pages for a checkpoint, none when `n` is 0.
fn alloc_pages(st: &mut State, n: u64) -> Result<Vec<Run>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    st.space.alloc(n)
}

/// Gives each dirty node its address: builds its written form and, for a
/// record, encodes it into its delta page; sets the reference counts (the
/// page of a node written whole, the base page of one written as a record,
/// each delta page's records); lets go of what each node held and no
/// longer needs (a base page not used again, an older record); pins the
/// written forms in the node cache; and turns every tree root that pointed
/// at a dirty node into its page. Afterwards no dirty node is left in any
/// tree. Returns the nodes placed and the delta pages sealed.
fn place_dirty_nodes(
    st: &mut State,
    dirty: Dirty,
    forms: &Forms,
    addrs: &[NodeAddr],
    pages: &[u64],
) -> (Vec<PlacedNode>, Vec<(u64, Vec<u8>)>) {
    let addr_of = |a: &Arc<Node>| dirty.index.get(&Arc::as_ptr(a)).map(|&i| addrs[i]);
    let bs = st.space.block_size() as usize;
    st.placements += 1;
    let epoch = st.placements;
    // The dirty nodes move into the cache, pinned: they stop counting
    // against its budget from outside it.
    st.space.dirty_nodes = 0;
    st.count_metadata_outside_the_cache();
    let mut delta_pages: Vec<DeltaPage> = pages[forms.whole.len()..].iter().map(|&p| DeltaPage::new(p, bs)).collect();
    let mut placed = Vec::with_capacity(dirty.nodes.len());
    for &i in &forms.whole {
        let (n, level, refs) = &dirty.nodes[i];
        let addr = addrs[i];
        if let Some(base) = n.held_base() {
            tree::drop_held_base(base, &mut st.space, &st.nodes);
        }
        st.space.set_node_refcount(addr.page, *refs);
        placed.push(place(st, n, *level, addr, Vec::new(), epoch, &addr_of));
    }
    for &(i, k, offset) in &forms.deltas {
        let (n, level, refs) = &dirty.nodes[i];
        let addr = addrs[i];
        let (base, entries) = n.delta_of(addr_of).expect("chosen as a record");
        delta_pages[k].put(offset, base.page, *level, &entries);
        // The base page keeps the count the node held for it; the record it
        // was read with is replaced.
        if *refs != 1 {
            st.space.set_node_refcount(base.page, *refs);
        }
        tree::drop_record(base.delta, &mut st.space);
        placed.push(place(st, n, *level, addr, entries.indexes(), epoch, &addr_of));
    }
    let mut sealed = Vec::with_capacity(delta_pages.len());
    for p in delta_pages {
        st.space.set_node_refcount(p.page(), p.records());
        sealed.push((p.page(), p.seal()));
    }
    let State { volumes, snapshots, templates, .. } = st;
    let roots = volumes
        .values_mut()
        .map(|e| &mut e.root)
        .chain(snapshots.values_mut().map(|e| &mut e.root))
        .chain(templates.values_mut().map(|e| &mut e.root));
    for root in roots {
        if let Some(Child::Mem(a)) = root {
            let addr = addr_of(a).expect("every tree root's dirty node is collected");
            debug_assert_eq!(addr.delta, 0, "a root is written whole");
            *root = Some(Child::Disk(addr));
        }
    }
    (placed, sealed)
}

/// Places one dirty node at `addr`: marks it placed, and pins its written
/// form in the node cache until the checkpoint has written it.
fn place(
    st: &mut State,
    n: &Arc<Node>,
    level: u32,
    addr: NodeAddr,
    changed: Vec<u32>,
    epoch: u64,
    addr_of: &impl Fn(&Arc<Node>) -> Option<NodeAddr>,
) -> PlacedNode {
    // A leaf has no children to turn into addresses: it is its own written
    // form, and no tree will change it in place again (every tree now
    // reaches it by address), so it is not copied; interior nodes, a small
    // fraction, are.
    let written = match &n.body {
        tree::Body::Leaf(_) => n.clone(),
        tree::Body::Interior(_) => Arc::new(n.written_form(addr, changed.clone(), addr_of)),
    };
    n.set_placed(addr, changed, epoch);
    st.nodes.insert_pinned(addr, level, written.clone());
    PlacedNode { node: written, level, addr }
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

/// The garbage list as addresses: after `release_dirty_garbage` it holds
/// only written nodes.
fn garbage_pages(st: &State) -> Vec<(NodeAddr, u32)> {
    debug_assert!(st.garbage.iter().all(|(c, _)| c.addr().is_some()), "dirty garbage left at a checkpoint");
    st.garbage.iter().filter_map(|(c, level)| c.addr().map(|a| (a, *level))).collect()
}

/// The catalog as the trees stand: each entry with its root page (0 for
/// none, and for a dirty root, which the checkpoint places before it
/// encodes the catalog it writes), the reference table's root and the
/// garbage list.
fn catalog_image(st: &State, table: TableRoot, garbage: Vec<(NodeAddr, u32)>) -> CatalogImage {
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
