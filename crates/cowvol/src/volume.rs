//! Volume handles: byte-addressed reads and writes over the extent tree.
//!
//! A write allocates fresh pages, writes the data with no lock held, then
//! maps the pages and logs the change under the state lock. A read takes a
//! plan (which page, or a hole, per block) under the state lock and reads
//! after releasing it; a tree node the plan needs and the node cache lacks
//! is read with the lock released too, and validated under it. Blocks are
//! never written in place, so a plan stays valid until the page is reused,
//! which the quarantine delays past the next checkpoint; a read whose CRC
//! fails re-plans once before it reports corruption, which covers a reader
//! that slept across that window.

use crate::catalog::{SnapshotId, TemplateId, VolumeId};
use crate::engine::record::{Record, MAX_MAP_BLOCKS};
use crate::engine::{Engine, Keeper, State, VolRuntime, Wrote};
use crate::error::{Error, Result};
use crate::format::Crc;
use crate::space::Run;
use crate::tree::{self, Geometry, Mapping, Root, Walked};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Node reads done outside the state lock that may be redone because their
/// page left the trees meanwhile, before a lookup reads under the lock.
/// Each needs a write that frees a node page to land during a disk read.
const STALE_NODE_READS: u32 = 3;

/// Bytes a multi-block read fetches with one `pread` before it checks
/// their CRCs: small enough that they are still in the CPU's cache when
/// checked, large enough that the extra system calls cost little.
const READ_CHUNK: usize = 128 << 10;

/// What a handle reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Volume(VolumeId),
    Snapshot(SnapshotId),
    Template(TemplateId),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Volume(v) => write!(f, "volume {v}"),
            Target::Snapshot(s) => write!(f, "snapshot {s}"),
            Target::Template(t) => write!(f, "template {t}"),
        }
    }
}

#[derive(Debug)]
struct Lease {
    rt: Arc<VolRuntime>,
    writable: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.writable {
            self.rt.writers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A handle on a volume (read-write or read-only) or a snapshot (read-only).
///
/// `Send + Sync + Clone`: clones share one lease, so a read-write-once
/// volume counts all clones of a handle as one writer. I/O from many threads
/// at once is safe; writes to the same bytes race as they would on a disk.
#[derive(Debug, Clone)]
pub struct Volume {
    // Dropped before `engine`: see `Store`.
    _store: Arc<Keeper>,
    engine: Arc<Engine>,
    target: Target,
    size: u64,
    lease: Arc<Lease>,
    /// Byte offset of page 0 in the data file (`format::data_start`), so
    /// that I/O computes page offsets without the state lock.
    data_start: u64,
    /// The volume's `write_buffer_bytes` (fixed at creation).
    write_buffer: u64,
}

/// Counts a data write as under way for group commit (see
/// `Engine::gather_writes`) until dropped.
struct InFlight<'a>(&'a Engine);

impl<'a> InFlight<'a> {
    fn new(engine: &'a Engine) -> Self {
        engine.writes_started.fetch_add(1, Ordering::AcqRel);
        InFlight(engine)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.writes_finished.fetch_add(1, Ordering::AcqRel);
    }
}

impl Volume {
    pub(crate) fn new(
        keeper: Arc<Keeper>,
        engine: Arc<Engine>,
        target: Target,
        size: u64,
        rt: Arc<VolRuntime>,
        writable: bool,
        write_buffer: u64,
    ) -> Volume {
        let data_start = crate::format::data_start(engine.block_size);
        Volume {
            _store: keeper,
            engine,
            target,
            size,
            lease: Arc::new(Lease { rt, writable }),
            data_start,
            write_buffer,
        }
    }

    /// Byte offset of `page` in the data file (as `Space::offset_of`).
    fn offset_of(&self, page: u64) -> u64 {
        self.data_start + page * self.bs()
    }

    /// Logical size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this handle may write.
    pub fn is_writable(&self) -> bool {
        self.lease.writable
    }

    /// The volume this handle reads, or the snapshot's volume.
    pub fn volume_id(&self) -> Option<VolumeId> {
        match self.target {
            Target::Volume(v) => Some(v),
            Target::Snapshot(_) | Target::Template(_) => None,
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange { what: self.target.to_string(), offset, len, size: self.size }),
        }
    }

    fn bs(&self) -> u64 {
        self.engine.block_size as u64
    }

    /// The tree this handle reads, found in the locked state.
    fn tree_of<'s>(&self, st: &'s State) -> Result<(&'s Root, Geometry)> {
        Ok(match self.target {
            Target::Volume(v) => {
                let v = st.vol(v)?;
                (&v.root, v.geo)
            }
            Target::Snapshot(s) => {
                let s = st.snapshots.get(&s.0).ok_or_else(|| Error::not_found(format!("snapshot {s}")))?;
                (&s.root, s.geo)
            }
            Target::Template(t) => {
                let t = st.templates.get(&t.0).ok_or_else(|| Error::not_found(format!("template {t}")))?;
                (&t.root, t.geo)
            }
        })
    }

    /// Looks up the mappings of blocks `first..first+n`.
    fn plan(&self, first: u64, n: u64) -> Result<Vec<Option<Mapping>>> {
        let mut out = vec![None; n as usize];
        self.plan_each(first, n, &mut |lb, m| out[(lb - first) as usize] = m)?;
        Ok(out)
    }

    /// Looks up the mapping of block `lb`, allocating nothing.
    fn plan_one(&self, lb: u64) -> Result<Option<Mapping>> {
        let mut found = None;
        self.plan_each(lb, 1, &mut |_, m| found = m)?;
        Ok(found)
    }

    /// Gives `emit` each block of `first..first+n` with its mapping, all
    /// found under one hold of the state lock (a reader never sees part of
    /// a logged change), though maybe in several tries.
    ///
    /// The walk never reads the disk under the lock: a tree node the cache
    /// lacks is read once the lock is released, then validated under it
    /// (`NodeCache::fill`), and the walk starts again with the nodes read so
    /// far lent to it. Each try emits every block it reaches, so the last
    /// (complete) one overwrites what earlier ones emitted. A read that
    /// raced with its page leaving the trees is done again; after
    /// `STALE_NODE_READS` of those, the walk reads under the lock, which
    /// cannot race.
    fn plan_each(&self, first: u64, n: u64, emit: &mut dyn FnMut(u64, Option<Mapping>)) -> Result<()> {
        let mut held = Vec::new();
        let mut fetched = None;
        let mut stale = 0;
        loop {
            let st = self.engine.state.lock();
            // Nothing is held on the first try, the only one of nearly every read.
            if !held.is_empty() && !st.nodes.keep_valid(&mut held) {
                stale += 1;
            }
            if let Some(f) = fetched.take() {
                match st.nodes.fill(f)? {
                    Some(h) => held.push(h),
                    None => stale += 1,
                }
            }
            let (root, geo) = self.tree_of(&st)?;
            if stale >= STALE_NODE_READS {
                return tree::walk_loading(root, geo, first, n, &st.nodes, emit);
            }
            let miss = match tree::walk_cached(root, geo, first, n, &held, &st.nodes.cached(), emit)? {
                Walked::Done => return Ok(()),
                Walked::Missed { miss, .. } => miss,
            };
            let nodes = st.nodes.clone();
            drop(st);
            fetched = Some(nodes.fetch(miss));
        }
    }

    /// Describes `[offset, offset + len)` as consecutive extents, each either
    /// data or a hole (never written, or discarded: reads as zeroes), so
    /// that copy tools and block-status queries can skip the holes. The
    /// extents cover the range exactly; engine boundaries fall on block
    /// boundaries. Cost: proportional to the mapped part of the range and
    /// the tree nodes above it, not to the range's length.
    ///
    /// # Errors
    /// [`Error::OutOfRange`]; [`Error::NotFound`] when the volume was deleted.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = self.bs();
        let end = offset + len;
        let first = offset / bs;
        let mut runs = Vec::new();
        {
            let st = self.engine.state.lock();
            let (root, geo) = self.tree_of(&st)?;
            tree::mapped_runs(root, geo, first, (end - 1) / bs + 1 - first, &mut runs, &st.nodes)?;
        }
        let mut out: Vec<Extent> = Vec::with_capacity(runs.len() * 2 + 1);
        let mut push = |from: u64, to: u64, data: bool| {
            let (from, to) = (from.max(offset), to.min(end));
            if to > from {
                out.push(Extent { offset: from, len: to - from, data });
            }
        };
        let mut pos = offset;
        for (start, count) in runs {
            push(pos, start * bs, false);
            push(start * bs, (start + count) * bs, true);
            pos = (start + count) * bs;
        }
        push(pos, end, false);
        Ok(out)
    }

    /// Reads `buf.len()` bytes at `offset`. Never-written and discarded
    /// ranges read as zeroes. Every block read is checked against its CRC.
    ///
    /// # Errors
    /// [`Error::OutOfRange`]; [`Error::Corruption`] when a block fails its
    /// checksum (no wrong data is ever returned); [`Error::NotFound`] when
    /// the volume was deleted.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let _gate = self.lease.rt.gate.read();
        let bs = self.bs();
        let end = offset + buf.len() as u64;
        let first = offset / bs;
        let last = (end - 1) / bs;
        if first == last {
            // The common small read: one lookup and nothing allocated.
            return self.read_block(first, self.plan_one(first)?, buf, offset - first * bs);
        }
        let plan = self.plan(first, last - first + 1)?;
        let mut i = 0usize;
        while i < plan.len() {
            let lb = first + i as u64;
            let from = offset.max(lb * bs);
            let to = end.min((lb + 1) * bs);
            let at = (from - offset) as usize;
            if to - from < bs || plan[i].is_none() {
                self.read_block(lb, plan[i], &mut buf[at..(to - offset) as usize], from - lb * bs)?;
                i += 1;
                continue;
            }
            // Whole blocks on consecutive pages: read straight into `buf`.
            let n = self.whole_run(&plan[i..], lb, end);
            self.read_verified(lb, &plan[i..i + n], &mut buf[at..at + n * bs as usize])?;
            i += n;
        }
        Ok(())
    }

    /// How many of the blocks `plan` maps, from block `lb` on, lie wholly
    /// before byte `end` on pages that follow each other.
    fn whole_run(&self, plan: &[Option<Mapping>], lb: u64, end: u64) -> usize {
        let Some(m) = plan[0] else { return 0 };
        let fits = |k: usize| (lb + k as u64 + 1) * self.bs() <= end;
        let next_page = |k: usize| plan.get(k).copied().flatten().is_some_and(|x| x.page == m.page + k as u64);
        (1..).find(|&k| !(next_page(k) && fits(k))).expect("a run ends")
    }

    /// Copies bytes `inner..inner + out.len()` of block `lb`, which `m`
    /// maps (or leaves a hole, read as zeroes), into `out`.
    fn read_block(&self, lb: u64, m: Option<Mapping>, out: &mut [u8], inner: u64) -> Result<()> {
        let bs = self.bs() as usize;
        if m.is_none() {
            out.fill(0);
        } else if out.len() == bs {
            self.read_verified(lb, &[m], out)?;
        } else {
            let mut block = vec![0u8; bs];
            self.read_verified(lb, &[m], &mut block)?;
            out.copy_from_slice(&block[inner as usize..inner as usize + out.len()]);
        }
        Ok(())
    }

    /// Reads blocks `lb..` into `span`, which `maps` places on consecutive
    /// pages, and checks each against its CRC. The pages are read
    /// `READ_CHUNK` bytes at a time and each piece is checked at once, while
    /// the caches still hold it: one trip through memory, not two.
    fn read_verified(&self, lb: u64, maps: &[Option<Mapping>], span: &mut [u8]) -> Result<()> {
        let bs = self.bs() as usize;
        let page = maps[0].expect("mapped").page;
        let per_chunk = (READ_CHUNK / bs).max(1);
        for (c, chunk) in span.chunks_mut(per_chunk * bs).enumerate() {
            let k0 = c * per_chunk;
            self.read_pages(page + k0 as u64, chunk)?;
            for (k, block) in chunk.chunks_mut(bs).enumerate() {
                let m = maps[k0 + k].expect("mapped");
                if Crc::of(block) != m.crc {
                    self.reread_block(lb + (k0 + k) as u64, m, block, 0)?;
                }
            }
        }
        Ok(())
    }

    fn read_pages(&self, page: u64, into: &mut [u8]) -> Result<()> {
        self.engine
            .file
            .read_at(into, self.offset_of(page))
            .map_err(|e| Error::io(format!("reading {} at page {page}", self.target), e))
    }

    /// A block failed its CRC: look it up again in case it was remapped
    /// while we read; if the mapping is unchanged the block is damaged.
    fn reread_block(&self, lb: u64, old: Mapping, block: &mut [u8], attempt: u32) -> Result<()> {
        let bs = self.bs() as usize;
        match self.plan_one(lb)? {
            Some(m) if m == old || attempt >= 3 => Err(Error::corruption(
                "data block",
                format!("page {} ({} block {lb})", m.page, self.target),
                format!("checksum mismatch: expected {:#010x}", m.crc.0),
            )),
            None => {
                block[..bs].fill(0);
                Ok(())
            }
            Some(m) => {
                let mut tmp = vec![0u8; bs];
                self.read_pages(m.page, &mut tmp)?;
                if Crc::of(&tmp) == m.crc {
                    block[..bs].copy_from_slice(&tmp);
                    Ok(())
                } else {
                    self.reread_block(lb, m, block, attempt + 1)
                }
            }
        }
    }

    /// Writes `data` at `offset`. Partial blocks are read, merged and written
    /// to a new block; no block is ever changed in place. The write is
    /// durable after the next [`Volume::flush`].
    ///
    /// # Errors
    /// [`Error::OutOfRange`]; [`Error::ReadOnly`] on a read-only handle;
    /// [`Error::NoSpace`] when the disk is full (nothing changed);
    /// [`Error::NotFound`] when the volume was deleted.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let Target::Volume(vol) = self.target else {
            return Err(Error::ReadOnly { what: self.target.to_string() });
        };
        if !self.lease.writable {
            return Err(Error::ReadOnly { what: format!("{} (this handle was opened read-only)", self.target) });
        }
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.engine.ensure_writable()?;
        let _gate = self.lease.rt.gate.read();
        let bs = self.bs();
        let first = offset / bs;
        let last = (offset + data.len() as u64 - 1) / bs;
        let _stripes = self.lock_stripes(first, last - first + 1);
        let in_flight = InFlight::new(&self.engine);
        let staged = self.stage(vol, data, offset)?;
        self.log_staged(vol, staged, None)?;
        drop(in_flight);
        let pending = self.lease.rt.unflushed.fetch_add(data.len() as u64, Ordering::AcqRel) + data.len() as u64;
        if pending > self.write_buffer {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes `data` at `offset` to fresh pages and returns the records that
    /// would map them, without logging anything: the first half of a write.
    /// Partial blocks are merged with their current contents. The caller
    /// holds the gate and the stripes of every block the write touches.
    fn stage(&self, vol: VolumeId, data: &[u8], offset: u64) -> Result<Staged> {
        let bs = self.bs();
        let first = offset / bs;
        let last = (offset + data.len() as u64 - 1) / bs;
        let n = last - first + 1;
        let aligned = offset.is_multiple_of(bs) && (data.len() as u64).is_multiple_of(bs);
        let merged;
        let payload: &[u8] = if aligned {
            data
        } else {
            merged = self.merge_partial(data, offset, first, last)?;
            &merged
        };
        let crcs: Vec<u32> = payload.chunks(bs as usize).map(|b| Crc::of(b).0).collect();
        let runs = self.engine.claim_pages(first, n)?;
        if let Err(e) = self.write_runs(&runs, payload) {
            self.free_runs(&runs);
            return Err(e);
        }
        let recs = if runs.len() == 1 && n <= MAX_MAP_BLOCKS as u64 {
            // The common case: one record that takes the CRCs as they are.
            vec![Record::Map { vol: vol.0, lblock: first, page: runs[0].start, crcs }]
        } else {
            let mut recs = Vec::new();
            let mut lb = first;
            for r in &runs {
                let mut done = 0;
                while done < r.len {
                    let k = (r.len - done).min(MAX_MAP_BLOCKS as u64);
                    let at = (lb - first) as usize;
                    recs.push(Record::Map {
                        vol: vol.0,
                        lblock: lb,
                        page: r.start + done,
                        crcs: crcs[at..at + k as usize].to_vec(),
                    });
                    lb += k;
                    done += k;
                }
            }
            recs
        };
        Ok(Staged { recs, runs })
    }

    /// The second half of a write: maps what [`Volume::stage`] wrote, and
    /// `then` after it, in one logged step, so that no snapshot, restore or
    /// reader sees part of it. On failure the staged pages are handed back.
    fn log_staged(&self, vol: VolumeId, staged: Staged, then: Option<Record>) -> Result<u64> {
        let Staged { mut recs, runs } = staged;
        recs.extend(then);
        let mut logged = self.map_staged(vol, &recs, &runs);
        if matches!(logged, Err(Error::NoSpace { .. })) && !self.engine.is_failed() {
            // Nothing was applied: the log found no spare segment, which a
            // checkpoint may free (see `Engine::reserve_log_room`). Looked
            // at only on this failure, never on the path of every write.
            let incoming = recs.iter().map(Record::encoded_len).sum();
            logged = self.engine.reserve_log_room(incoming).and_then(|()| self.map_staged(vol, &recs, &runs));
        }
        if logged.is_err() {
            let mut st = self.engine.state.lock();
            // A failure after part of the write was mapped poisons the
            // store; the mapped pages must then stay owned.
            if self.engine.is_failed() {
                st.space.settle(&runs);
            } else {
                st.space.unclaim(&runs);
            }
        }
        logged
    }

    /// Applies and logs the records of a staged write under the state
    /// lock; on success its pages are settled as mapped.
    fn map_staged(&self, vol: VolumeId, recs: &[Record], runs: &[Run]) -> Result<u64> {
        let mut st = self.engine.state.lock();
        st.vol(vol)?;
        let lsn = self.engine.apply_and_log_many(&mut st, recs)?;
        st.space.settle(runs);
        Ok(lsn)
    }

    fn free_runs(&self, runs: &[Run]) {
        self.engine.state.lock().space.unclaim(runs);
    }

    fn write_runs(&self, runs: &[Run], payload: &[u8]) -> Result<()> {
        let bs = self.bs() as usize;
        let mut at = 0usize;
        for r in runs {
            let len = r.len as usize * bs;
            self.engine
                .write_as(Wrote::Data, &payload[at..at + len], self.offset_of(r.start))
                .map_err(|e| Error::io(format!("writing {} data", self.target), e))?;
            at += len;
        }
        Ok(())
    }

    /// Builds whole blocks for an unaligned write: the old contents of the
    /// first and last block around the new bytes.
    fn merge_partial(&self, data: &[u8], offset: u64, first: u64, last: u64) -> Result<Vec<u8>> {
        let bs = self.bs();
        let mut out = vec![0u8; ((last - first + 1) * bs) as usize];
        let head = (offset - first * bs) as usize;
        if head != 0 {
            self.read_existing(first, &mut out[..bs as usize])?;
        }
        let end = head + data.len();
        // When the write starts and ends inside one block, the head read
        // already fetched it.
        if !end.is_multiple_of(bs as usize) && (last != first || head == 0) {
            let start = ((last - first) * bs) as usize;
            self.read_existing(last, &mut out[start..start + bs as usize])?;
        }
        out[head..end].copy_from_slice(data);
        Ok(out)
    }

    /// Reads the current contents of one block, clamped to the volume size.
    fn read_existing(&self, lb: u64, into: &mut [u8]) -> Result<()> {
        let bs = self.bs();
        let start = lb * bs;
        let end = (start + bs).min(self.size);
        self.read_unlocked(&mut into[..(end - start) as usize], start)
    }

    /// A read for the write path, which already holds the gate.
    fn read_unlocked(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let bs = self.bs();
        let lb = offset / bs;
        debug_assert!(offset.is_multiple_of(bs) && buf.len() as u64 <= bs);
        self.read_block(lb, self.plan_one(lb)?, buf, 0)
    }

    fn lock_stripes(&self, first: u64, n: u64) -> Vec<parking_lot::MutexGuard<'_, ()>> {
        let stripes = &self.lease.rt.stripes;
        let mut idx: Vec<usize> =
            (first..first + n.min(stripes.len() as u64)).map(|lb| (lb % stripes.len() as u64) as usize).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| stripes[i].lock()).collect()
    }

    /// Makes every write that completed before the call durable; one sync,
    /// shared with concurrent flushes of any volume (group commit).
    ///
    /// # Errors
    /// An I/O error of the sync; the store then refuses further writes.
    pub fn flush(&self) -> Result<()> {
        self.lease.rt.unflushed.store(0, Ordering::Release);
        self.engine.flush()
    }

    /// Unmaps `[offset, offset + len)`: it reads as zeroes afterwards, and
    /// blocks nobody else references are freed. Whole blocks are unmapped;
    /// the partial blocks at either end are rewritten with zeroes.
    ///
    /// # Errors
    /// As [`Volume::write_at`].
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let Target::Volume(vol) = self.target else {
            return Err(Error::ReadOnly { what: self.target.to_string() });
        };
        if !self.lease.writable {
            return Err(Error::ReadOnly { what: format!("{} (this handle was opened read-only)", self.target) });
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.engine.ensure_writable()?;
        // One step under the gate and the stripes of every block touched:
        // a write racing on an edge block cannot read the old contents
        // before the unmap and map them back after it, and a snapshot or
        // restore sees the whole discard or none of it.
        let _gate = self.lease.rt.gate.read();
        let bs = self.bs();
        let end = offset + len;
        let (first, last) = (offset / bs, (end - 1) / bs);
        let _stripes = self.lock_stripes(first, last - first + 1);
        let in_flight = InFlight::new(&self.engine);
        // Whole blocks are unmapped; the bytes of partial blocks at either
        // end are zeroed by rewriting those blocks. The volume's last block
        // counts as whole when the range runs to the end of the volume.
        let whole_first = offset.div_ceil(bs);
        let whole_end = if end == self.size { end.div_ceil(bs) } else { end / bs };
        let mut edges = Staged::default();
        let mut zero_edge = |from: u64, to: u64| -> Result<()> {
            if to > from {
                edges.append(self.stage(vol, &vec![0u8; (to - from) as usize], from)?);
            }
            Ok(())
        };
        let staged = if whole_first >= whole_end {
            zero_edge(offset, end)
        } else {
            zero_edge(offset, whole_first * bs).and_then(|()| zero_edge(whole_end * bs, end))
        };
        if let Err(e) = staged {
            self.free_runs(&edges.runs);
            return Err(e);
        }
        let unmap = (whole_first < whole_end).then(|| Record::Unmap {
            vol: vol.0,
            lblock: whole_first,
            count: whole_end - whole_first,
        });
        self.log_staged(vol, edges, unmap)?;
        drop(in_flight);
        self.engine.release_garbage();
        Ok(())
    }

    /// A `std::io::{Read, Write, Seek}` view of this handle starting at byte 0.
    pub fn cursor(&self) -> VolumeCursor {
        VolumeCursor { vol: self.clone(), pos: 0 }
    }
}

/// Pages written for a change and the records that map them, not yet logged.
#[derive(Debug, Default)]
struct Staged {
    recs: Vec<Record>,
    runs: Vec<Run>,
}

impl Staged {
    fn append(&mut self, mut other: Staged) {
        self.recs.append(&mut other.recs);
        self.runs.append(&mut other.runs);
    }
}

/// One piece of a volume's address space, from [`Volume::extents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// True for stored data; false for a hole, which reads as zeroes and
    /// takes no space.
    pub data: bool,
}

/// Adapts a [`Volume`] to `std::io::{Read, Write, Seek}`. Reads stop at the
/// end of the volume; writes past it fail. `flush` is a durable flush.
#[derive(Debug, Clone)]
pub struct VolumeCursor {
    vol: Volume,
    pos: u64,
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::NotFound { .. } => io::ErrorKind::NotFound,
            Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            Error::ReadOnly { .. } => io::ErrorKind::PermissionDenied,
            Error::OutOfRange { .. } | Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::NoSpace { .. } => io::ErrorKind::StorageFull,
            Error::Corruption { .. } | Error::Stream { .. } => io::ErrorKind::InvalidData,
            Error::Busy { .. } | Error::Locked { .. } => io::ErrorKind::ResourceBusy,
            Error::Poisoned { .. } => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

impl io::Read for VolumeCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.vol.size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.vol.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Write for VolumeCursor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.vol.size().saturating_sub(self.pos);
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the volume"));
        }
        let n = room.min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.vol.write_at(&buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(self.vol.flush()?)
    }
}

impl io::Seek for VolumeCursor {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let target = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.vol.size().checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let p = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before byte 0"))?;
        self.pos = p;
        Ok(p)
    }
}
