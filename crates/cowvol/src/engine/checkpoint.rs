//! Checkpoints: every node changed since the last one, then the catalog,
//! a sync, the superblock in the other slot, and a sync. The log before the
//! checkpoint's start and the pages only the old checkpoint needed are
//! freed after it is durable.

use super::state::Entry;
use super::{CheckpointState, Engine, State};
use crate::catalog::CatalogImage;
use crate::error::{Error, Result};
use crate::format::{self, Crc, LogStart, Superblock, SUPERBLOCK_SLOTS};
use crate::space::Run;
use crate::tree::{self, Node};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A tree node with its level (0 = leaf).
type LeveledNode = (Arc<Node>, u32);

impl Engine {
    /// Holds off checkpoints (for `check`).
    pub(crate) fn checkpoint_guard(&self) -> impl Drop + '_ {
        self.checkpoint.lock()
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

    /// Under one hold of the state lock: captures every tree root and the
    /// catalog, gives every unwritten node a page and the catalog a run, and
    /// only then marks the log position the checkpoint covers and takes the
    /// pages it will free. Fails with nothing changed when space runs out.
    fn plan_checkpoint(&self) -> Result<Plan> {
        let mut st = self.state.lock();
        let mut roots = Vec::new();
        let volumes = capture(&st.volumes, &mut roots);
        let snapshots = capture(&st.snapshots, &mut roots);
        let templates = capture(&st.templates, &mut roots);
        let dirty_before = st.space.dirty_nodes;
        let (nodes, node_runs) = Self::assign_node_pages(&mut st, &roots)?;
        let catalog = CatalogImage {
            next_volume: st.next_volume,
            next_snapshot: st.next_snapshot,
            next_template: st.next_template,
            volumes: with_root_pages(&volumes),
            snapshots: with_root_pages(&snapshots),
            templates: with_root_pages(&templates),
        }
        .encode();
        let catalog_pages = (catalog.len() as u64).div_ceil(self.block_size as u64).max(1);
        let catalog_page = match st.space.alloc_contiguous(catalog_pages) {
            Ok(p) => p,
            Err(e) => {
                unassign_node_pages(&mut st, &nodes, &node_runs, dirty_before);
                return Err(e);
            }
        };
        for p in catalog_page..catalog_page + catalog_pages {
            st.space.set_reserved(p, true);
        }
        let started = self.wal.lock().checkpoint_start();
        let (log_start, retired) = match started {
            Ok(x) => x,
            Err(e) => {
                drop(st);
                self.fail();
                return Err(e);
            }
        };
        Ok(Plan {
            roots,
            nodes,
            node_runs,
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
        // Planned nodes are shared with the captured roots, so no writer
        // changes them in place while they are written out below.
        self.write_nodes(&plan.nodes, &plan.node_runs)?;
        let cat = plan.catalog_run;
        let offset = format::data_start(self.block_size) + cat.start * self.block_size as u64;
        self.file.write_at(&plan.catalog, offset).map_err(|e| Error::io("writing the catalog", e))?;
        self.file.sync().map_err(|e| Error::io("syncing a checkpoint", e))?;
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
        self.file.write_at(&sb.encode(), slot).map_err(|e| Error::io("writing the superblock", e))?;
        self.file.sync().map_err(|e| Error::io("syncing the superblock", e))?;
        {
            let mut c = self.commit.lock();
            c.durable = c.durable.max(plan.log_start.lsn);
        }
        self.wal.lock().mark_durable(plan.log_start.lsn);
        let (old_page, old_n) = std::mem::replace(&mut ck.catalog_pages, (cat.start, cat.len));
        ck.generation = sb.generation;
        let seg_pages = self.log_geo.segment_pages;
        let mut meta = plan.obsolete;
        meta.extend(old_page..old_page + old_n);
        for s in plan.retired {
            meta.extend(s..s + seg_pages);
        }
        // Drop the planned nodes' references while the roots still hold
        // every node, so that the roots alone decide what is released.
        drop(plan.nodes);
        let mut st = self.state.lock();
        st.space.catalog_reserve = 2 * cat.len + 1;
        st.space.catalog_growth = 0;
        st.space.release(plan.quarantine, meta);
        st.garbage.extend(plan.roots.into_iter().map(|(r, _)| r));
        drop(st);
        self.reclaim();
        Ok(())
    }

    /// Gives every captured node without a disk address a page (under the
    /// state lock, at capture, so the pages come out of the metadata
    /// reserve before any write can take them). All or nothing: on a full
    /// disk no node gets a page.
    fn assign_node_pages(st: &mut State, roots: &[LeveledNode]) -> Result<(Vec<LeveledNode>, Vec<Run>)> {
        let mut dirty: Vec<(Arc<Node>, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<(&Arc<Node>, u32)> = roots.iter().map(|(r, l)| (r, *l)).collect();
        while let Some((n, level)) = stack.pop() {
            if n.addr() != 0 || !seen.insert(Arc::as_ptr(n)) {
                continue;
            }
            dirty.push((n.clone(), level));
            if let tree::Body::Interior(children) = &n.body {
                stack.extend(children.iter().flatten().map(|c| (c, level - 1)));
            }
        }
        let runs = if dirty.is_empty() { Vec::new() } else { st.space.alloc(dirty.len() as u64)? };
        for r in &runs {
            for p in r.start..r.start + r.len {
                st.space.set_reserved(p, true);
            }
        }
        for ((n, _), p) in dirty.iter().zip(runs.iter().flat_map(|r| r.start..r.start + r.len)) {
            n.set_addr(p);
        }
        st.space.dirty_nodes = 0;
        Ok((dirty, runs))
    }

    /// Writes the nodes `assign_node_pages` placed, one `pwrite` per run.
    fn write_nodes(&self, dirty: &[LeveledNode], runs: &[Run]) -> Result<()> {
        let bs = self.block_size as usize;
        let mut i = 0;
        for r in runs {
            let mut buf = Vec::with_capacity(r.len as usize * bs);
            for p in r.start..r.start + r.len {
                let (n, level) = &dirty[i];
                buf.extend_from_slice(&tree::encode_node(n, *level, p, bs));
                i += 1;
            }
            let off = format::data_start(self.block_size) + r.start * bs as u64;
            self.file.write_at(&buf, off).map_err(|e| Error::io("writing tree nodes", e))?;
        }
        Ok(())
    }
}

/// What a checkpoint writes and frees, fixed under the state lock.
struct Plan {
    /// Every captured tree root: they keep the captured nodes alive while
    /// they are written.
    roots: Vec<LeveledNode>,
    /// Nodes without a disk address, in the order of the pages in `node_runs`.
    nodes: Vec<LeveledNode>,
    node_runs: Vec<Run>,
    catalog: Vec<u8>,
    catalog_run: Run,
    log_start: LogStart,
    /// WAL segments only records before `log_start` use.
    retired: Vec<u64>,
    quarantine: Vec<u64>,
    obsolete: Vec<u64>,
}

/// Undoes [`Engine::assign_node_pages`] when the rest of a checkpoint's
/// pages cannot be found: nothing was written to those pages yet.
fn unassign_node_pages(st: &mut State, nodes: &[LeveledNode], runs: &[Run], dirty_before: u64) {
    for (n, _) in nodes {
        n.set_addr(0);
    }
    for r in runs {
        for p in r.start..r.start + r.len {
            st.space.set_reserved(p, false);
        }
        st.space.free_run(*r);
    }
    st.space.dirty_nodes = dirty_before;
}

/// The records of `entries` with their tree roots, adding each root (with
/// its level) to `roots`, for a checkpoint to write.
fn capture<I: Clone, R>(
    entries: &BTreeMap<u64, Entry<I, R>>,
    roots: &mut Vec<LeveledNode>,
) -> Vec<(I, Option<Arc<Node>>)> {
    let capture_one = |e: &Entry<I, R>| {
        roots.extend(e.root.clone().map(|r| (r, e.geo.levels - 1)));
        (e.info.clone(), e.root.clone())
    };
    entries.values().map(capture_one).collect()
}

/// Catalog entries with the page of their tree's root (0 for none).
fn with_root_pages<T: Clone>(items: &[(T, Option<Arc<Node>>)]) -> Vec<(T, u64)> {
    items.iter().map(|(i, r)| (i.clone(), r.as_ref().map_or(0, |r| r.addr()))).collect()
}
