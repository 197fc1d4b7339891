//! Checkpoints: every node changed since the last one, then the catalog,
//! a sync, the superblock in the other slot, and a sync. The log before the
//! checkpoint's start and the pages only the old checkpoint needed are
//! freed after it is durable.

use super::state::Entry;
use super::{CheckpointState, Engine, State};
use crate::catalog::{CatalogImage, SnapshotInfo, TemplateInfo, VolumeInfo};
use crate::error::{Error, Result};
use crate::format::{self, Crc, Superblock, SUPERBLOCK_SLOTS};
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
        Ok(())
    }

    /// Writes a checkpoint: every node changed since the last one, then the
    /// catalog, a sync, the superblock in the other slot, and a sync. Then
    /// the pages the previous checkpoint needed and this one does not are
    /// freed.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let mut ck = self.checkpoint.lock();
        self.ensure_writable()?;
        let result = self.checkpoint_locked(&mut ck);
        if result.is_err() {
            self.fail();
        }
        result
    }

    fn checkpoint_locked(&self, ck: &mut CheckpointState) -> Result<()> {
        struct Captured {
            roots: Vec<(Arc<Node>, u32)>,
            volumes: Vec<(VolumeInfo, Option<Arc<Node>>)>,
            snapshots: Vec<(SnapshotInfo, Option<Arc<Node>>)>,
            templates: Vec<(TemplateInfo, Option<Arc<Node>>)>,
            next_volume: u64,
            next_snapshot: u64,
            next_template: u64,
        }
        let (cap, log_start, retired, quarantine, obsolete, placed) = {
            let mut st = self.state.lock();
            let mut wal = self.wal.lock();
            let (log_start, retired) = wal.checkpoint_start()?;
            let mut roots = Vec::new();
            let volumes = capture(&st.volumes, &mut roots);
            let snapshots = capture(&st.snapshots, &mut roots);
            let templates = capture(&st.templates, &mut roots);
            let cap = Captured {
                roots,
                volumes,
                snapshots,
                templates,
                next_volume: st.next_volume,
                next_snapshot: st.next_snapshot,
                next_template: st.next_template,
            };
            let q = std::mem::take(&mut st.space.quarantine);
            let o = std::mem::take(&mut st.space.obsolete);
            let placed = Self::assign_node_pages(&mut st, &cap.roots)?;
            (cap, log_start, retired, q, o, placed)
        };
        // Captured nodes are shared with the capture, so no writer changes
        // them in place while they are written out below.
        self.write_nodes(&placed.0, &placed.1)?;
        // Drop these references while the capture still holds every node.
        drop(placed);
        let image = CatalogImage {
            next_volume: cap.next_volume,
            next_snapshot: cap.next_snapshot,
            next_template: cap.next_template,
            volumes: with_root_pages(&cap.volumes),
            snapshots: with_root_pages(&cap.snapshots),
            templates: with_root_pages(&cap.templates),
        };
        let bytes = image.encode();
        let bs = self.block_size as u64;
        let npages = (bytes.len() as u64).div_ceil(bs).max(1);
        let (cat_page, offset) = {
            let mut st = self.state.lock();
            let p = st.space.alloc_contiguous(npages)?;
            for q in p..p + npages {
                st.space.set_reserved(q, true);
            }
            (p, st.space.offset_of(p))
        };
        self.file.write_at(&bytes, offset).map_err(|e| Error::io("writing the catalog", e))?;
        self.file.sync().map_err(|e| Error::io("syncing a checkpoint", e))?;
        let sb = Superblock {
            version: format::FORMAT_VERSION,
            block_size: self.block_size,
            fanout_bits: format::fanout_bits_for(self.block_size),
            generation: ck.generation + 1,
            store_id: self.store_id,
            catalog_page: cat_page,
            catalog_len: bytes.len() as u64,
            catalog_crc: Crc::of(&bytes).0,
            log: log_start,
        };
        let slot = SUPERBLOCK_SLOTS[(sb.generation % 2) as usize];
        self.file.write_at(&sb.encode(), slot).map_err(|e| Error::io("writing the superblock", e))?;
        self.file.sync().map_err(|e| Error::io("syncing the superblock", e))?;
        {
            let mut c = self.commit.lock();
            c.durable = c.durable.max(log_start.lsn);
        }
        self.wal.lock().mark_durable(log_start.lsn);
        let (old_page, old_n) = std::mem::replace(&mut ck.catalog_pages, (cat_page, npages));
        self.state.lock().space.catalog_reserve = 2 * npages + 1;
        ck.generation = sb.generation;
        let seg_pages = self.log_geo.segment_pages;
        let mut meta = obsolete;
        meta.extend(old_page..old_page + old_n);
        for s in retired {
            meta.extend(s..s + seg_pages);
        }
        let mut st = self.state.lock();
        st.space.release(quarantine, meta);
        st.garbage.extend(cap.roots.into_iter().map(|(r, _)| r));
        drop(cap.volumes);
        drop(cap.snapshots);
        drop(cap.templates);
        drop(st);
        self.reclaim();
        Ok(())
    }

    /// Gives every captured node without a disk address a page and writes it.
    /// Gives every captured node without a disk address a page (under the
    /// state lock, at capture, so the pages come out of the metadata
    /// reserve before any write can take them).
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
