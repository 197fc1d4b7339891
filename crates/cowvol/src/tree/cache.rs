//! The node cache: written tree nodes by page, bounded in bytes.
//!
//! A written node is immutable while any tree references its page, so the
//! cache may drop it at any time and read it back later: its page holds
//! exactly what was dropped. The exceptions are pinned: nodes a checkpoint
//! has placed but not yet written (their pages do not hold them yet).
//! Eviction is a clock: a hit sets a node's reference bit, and the hand
//! clears bits until it finds a node without one.
//!
//! The cache lives in the engine's state and is used under the state lock,
//! so loads, evictions and the freeing of pages are ordered: a page cannot
//! be freed and reused while a lookup reads it. Its own small lock only
//! lets walks that hold the state read-only still fill it.

use super::{build_node, decode_node, Geometry, Node};
use crate::backend::StorageFile;
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Slot {
    node: Arc<Node>,
    level: u32,
    bytes: usize,
    /// Set by a hit, cleared by the clock hand.
    referenced: AtomicBool,
    /// Placed by a checkpoint that has not written it yet.
    pinned: bool,
}

/// Written tree nodes by page; see the module documentation.
#[derive(Debug)]
pub(crate) struct NodeCache {
    file: Arc<dyn StorageFile>,
    data_start: u64,
    block_size: usize,
    bits: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    budget: usize,
    map: HashMap<u64, Slot>,
    /// Pages in clock order; a page may appear after it left `map` (skipped).
    clock: VecDeque<u64>,
    bytes: usize,
    stats: CacheStats,
}

/// Counters for `Store::stats` and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
}

impl NodeCache {
    pub(crate) fn new(file: Arc<dyn StorageFile>, data_start: u64, block_size: u32, bits: u32, budget: usize) -> Self {
        let inner =
            Inner { budget, map: HashMap::new(), clock: VecDeque::new(), bytes: 0, stats: CacheStats::default() };
        NodeCache { file, data_start, block_size: block_size as usize, bits, inner: Mutex::new(inner) }
    }

    /// The node at `page`, read from the disk on a miss. `level` is where
    /// the caller's tree expects it; a node of another level is corruption.
    pub(crate) fn load(&self, page: u64, level: u32) -> Result<Arc<Node>> {
        {
            let mut c = self.inner.lock();
            if let Some(s) = c.map.get(&page) {
                if s.level != level {
                    return Err(Error::corruption(
                        "tree",
                        format!("page {page}"),
                        format!("node of level {} reached at level {level}", s.level),
                    ));
                }
                s.referenced.store(true, Ordering::Relaxed);
                let node = s.node.clone();
                c.stats.hits += 1;
                return Ok(node);
            }
            c.stats.misses += 1;
        }
        let node = Arc::new(self.read(page, level)?);
        self.inner.lock().insert(page, level, node.clone(), false);
        Ok(node)
    }

    fn read(&self, page: u64, level: u32) -> Result<Node> {
        let mut buf = vec![0u8; self.block_size];
        let offset = self.data_start + page * self.block_size as u64;
        self.file.read_at(&mut buf, offset).map_err(|e| Error::io(format!("reading tree node at page {page}"), e))?;
        let geo = Geometry { bits: self.bits, levels: level + 1 };
        let decoded = decode_node(&buf, page, level, geo, crate::format::MAX_PAGE + 1)?;
        Ok(build_node(decoded))
    }

    /// Places a node a checkpoint is about to write at `page`: pinned until
    /// [`NodeCache::unpin`], replacing whatever the cache held for the page.
    pub(crate) fn insert_pinned(&self, page: u64, level: u32, node: Arc<Node>) {
        self.inner.lock().insert(page, level, node, true);
    }

    /// The checkpoint wrote these pages: their nodes may be evicted.
    pub(crate) fn unpin(&self, pages: impl IntoIterator<Item = u64>) {
        let mut c = self.inner.lock();
        for p in pages {
            if let Some(s) = c.map.get_mut(&p) {
                s.pinned = false;
            }
        }
        c.evict_to_budget();
    }

    /// The page no longer holds a node any tree references.
    pub(crate) fn forget(&self, page: u64) {
        self.inner.lock().forget(page);
    }

    /// Bytes the cached nodes take.
    pub(crate) fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.inner.lock().stats
    }
}

impl Inner {
    fn forget(&mut self, page: u64) {
        if let Some(s) = self.map.remove(&page) {
            self.bytes -= s.bytes;
        }
    }

    fn insert(&mut self, page: u64, level: u32, node: Arc<Node>, pinned: bool) {
        self.forget(page);
        let bytes = node.mem_bytes() + 64;
        self.bytes += bytes;
        let slot = Slot { node, level, bytes, referenced: AtomicBool::new(false), pinned };
        self.map.insert(page, slot);
        self.clock.push_back(page);
        self.evict_to_budget();
    }

    /// Runs the clock hand until the cache fits its budget or only pinned
    /// nodes (and nodes hit since the hand last passed) are left.
    fn evict_to_budget(&mut self) {
        let mut turns = 2 * self.clock.len();
        while self.bytes > self.budget && turns > 0 {
            turns -= 1;
            let Some(page) = self.clock.pop_front() else { break };
            let Some(s) = self.map.get(&page) else { continue };
            if s.pinned || s.referenced.swap(false, Ordering::Relaxed) {
                self.clock.push_back(page);
                continue;
            }
            self.forget(page);
            self.stats.evictions += 1;
        }
        // Pages that left the map leave stale clock entries behind; compact
        // the queue when they outnumber the live ones.
        if self.clock.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.clock.retain(|p| map.contains_key(p));
        }
    }
}
