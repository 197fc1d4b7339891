//! The node cache: written tree nodes by page, bounded in bytes.
//!
//! A written node is immutable while any tree references its address (its
//! page and its delta record, see [`super::delta`]), so the cache may drop
//! it at any time and read it back later: its page and record hold exactly
//! what was dropped. A node is cached under its page with the record it was
//! read with; a lookup naming another record of the page (a view pinned
//! before a checkpoint gave the page a new one) misses. The exceptions are pinned: nodes a checkpoint
//! has placed but not yet written (their pages do not hold them yet).
//! Eviction is a clock: a hit sets a node's reference bit, and the hand
//! clears bits until it finds a node without one.
//!
//! The cache lives in the engine's state and is used under the state lock,
//! so evictions and the freeing of pages are ordered. Its own small lock
//! lets walks that hold the state read-only (pinned views) still fill it.
//!
//! A volume read that misses does not read the disk under the state lock,
//! which would stall every other volume's I/O for as long: it notes the
//! miss ([`NodeMiss`]), reads the page with no lock held, and offers the
//! node back under the lock ([`NodeCache::fill`]). The page held that node
//! when the miss was noted (a tree referenced it), and it keeps holding it
//! until its last reference goes, which always passes through
//! [`NodeCache::forget`]: so the fill is accepted only when the page has
//! not been forgotten since, which the cache knows from a short record of
//! the pages that left the trees (`Inner::departed`).

use super::delta::{self, Expected};
use super::{build_node, decode_node, DecodedNode, Geometry, Held, Node, NodeAddr};
use crate::backend::StorageFile;
use crate::error::{Error, Result};
use parking_lot::{Mutex, MutexGuard};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Pages that left the trees which [`NodeCache::fill`] can still tell
/// apart; a miss older than this many departures is read again. A few
/// kilobytes, and far more than leave during one node read.
const DEPARTURES_KEPT: usize = 1024;
/// Bytes a cached node costs beyond its own: its slot, map entry and place
/// in the clock.
const SLOT_OVERHEAD: usize = 64;

#[derive(Debug)]
struct Slot {
    node: Arc<Node>,
    /// The delta record the node was read with (0 for none).
    delta: u64,
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
    map: HashMap<u64, Slot, PageHash>,
    /// Pages in clock order; a page may appear after it left `map` (skipped).
    clock: VecDeque<u64>,
    bytes: usize,
    /// Bytes of the metadata outside the cache (dirty nodes, counts, the
    /// free map, the reserved bitmap), which count against the budget as
    /// the cached nodes do.
    outside: usize,
    stats: CacheStats,
    /// Pages forgotten or replaced, counted since the cache was made: the
    /// ticket of a [`NodeMiss`].
    departures: u64,
    /// The last [`DEPARTURES_KEPT`] of those pages, oldest first.
    departed: VecDeque<u64>,
}

/// Hashes page numbers for the cache's map. Pages are distinct integers
/// chosen by the engine, not by users, so a multiplicative mix is enough
/// and costs a fraction of the default SipHash on the read path.
#[derive(Debug, Clone, Copy, Default)]
struct PageHash;

#[derive(Debug, Default)]
struct PageHasher(u64);

impl BuildHasher for PageHash {
    type Hasher = PageHasher;
    fn build_hasher(&self) -> PageHasher {
        PageHasher(0)
    }
}

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and a tag from the
        // high ones: fold the well-mixed high half of the product down.
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A node the cache did not hold, noted under the state lock by a walk
/// that reads nothing from the disk; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeMiss {
    pub(crate) addr: NodeAddr,
    pub(crate) level: u32,
    /// `Inner::departures` when the miss was noted.
    ticket: u64,
}

/// A node read for a [`NodeMiss`] with no lock held, not yet validated.
#[derive(Debug)]
pub(crate) struct Fetched {
    miss: NodeMiss,
    node: Result<Node>,
}

/// The cache locked for one walk under the state lock: nodes are lent,
/// not cloned, and nothing is read from the disk. Holds the cache's lock
/// until dropped, so the walk must not call back into the cache.
pub(crate) struct Cached<'a> {
    inner: MutexGuard<'a, Inner>,
    /// Hits and misses, added to the stats on drop (nodes lent out borrow
    /// the guard, so the counters cannot be updated in place).
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl Cached<'_> {
    /// The node at `addr` if the cache holds it. `level` is where the
    /// caller's tree expects it; a node of another level is corruption.
    pub(crate) fn get(&self, addr: NodeAddr, level: u32) -> Result<Option<&Node>> {
        let Some(s) = self.inner.map.get(&addr.page).filter(|s| s.delta == addr.delta) else { return Ok(None) };
        check_level(s, addr.page, level)?;
        s.referenced.store(true, Ordering::Relaxed);
        self.hits.set(self.hits.get() + 1);
        Ok(Some(&s.node))
    }

    /// Counts a miss on `addr` and notes what [`NodeCache::fill`] needs to
    /// validate a read of it done after the state lock is released.
    pub(crate) fn miss(&self, addr: NodeAddr, level: u32) -> NodeMiss {
        self.misses.set(self.misses.get() + 1);
        NodeMiss { addr, level, ticket: self.inner.departures }
    }
}

impl Drop for Cached<'_> {
    fn drop(&mut self) {
        self.inner.stats.hits += self.hits.get();
        self.inner.stats.misses += self.misses.get();
    }
}

fn check_level(s: &Slot, page: u64, level: u32) -> Result<()> {
    if s.level == level {
        return Ok(());
    }
    Err(Error::corruption(
        "tree",
        format!("page {page}"),
        format!("node of level {} reached at level {level}", s.level),
    ))
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
        let inner = Inner {
            budget,
            outside: 0,
            map: HashMap::with_hasher(PageHash),
            clock: VecDeque::new(),
            bytes: 0,
            stats: CacheStats::default(),
            departures: 0,
            departed: VecDeque::with_capacity(DEPARTURES_KEPT),
        };
        NodeCache { file, data_start, block_size: block_size as usize, bits, inner: Mutex::new(inner) }
    }

    /// The node at `addr`, read from the disk on a miss. `level` is where
    /// the caller's tree expects it; a node of another level is corruption.
    pub(crate) fn load(&self, addr: NodeAddr, level: u32) -> Result<Arc<Node>> {
        if let Some(node) = self.lookup(addr, level, true)? {
            return Ok(node);
        }
        let node = Arc::new(self.read(addr, level)?);
        self.inner.lock().insert(addr, level, node.clone(), false);
        Ok(node)
    }

    /// The node at `page`: the cached one, or one read from the disk that
    /// is not kept. For a walk over every node (`Store::stats`), which
    /// must not push the nodes I/O is using out of the cache for nodes it
    /// reads once, nor mark the cached ones as used.
    pub(crate) fn load_passing(&self, addr: NodeAddr, level: u32) -> Result<Arc<Node>> {
        match self.lookup(addr, level, false)? {
            Some(node) => Ok(node),
            None => Ok(Arc::new(self.read(addr, level)?)),
        }
    }

    /// The cached node at `addr`, counted as a hit (and marked used when
    /// `mark` is set), or `None`, counted as a miss.
    fn lookup(&self, addr: NodeAddr, level: u32, mark: bool) -> Result<Option<Arc<Node>>> {
        let mut c = self.inner.lock();
        let Some(s) = c.map.get(&addr.page).filter(|s| s.delta == addr.delta) else {
            c.stats.misses += 1;
            return Ok(None);
        };
        check_level(s, addr.page, level)?;
        if mark {
            s.referenced.store(true, Ordering::Relaxed);
        }
        let node = s.node.clone();
        c.stats.hits += 1;
        Ok(Some(node))
    }

    /// Locks the cache for one walk that reads nothing from the disk.
    pub(crate) fn cached(&self) -> Cached<'_> {
        Cached { inner: self.inner.lock(), hits: Cell::new(0), misses: Cell::new(0) }
    }

    /// Reads the node of `miss` from the disk. Needs no lock: what it
    /// returns is checked by [`NodeCache::fill`] before anyone uses it.
    pub(crate) fn fetch(&self, miss: NodeMiss) -> Fetched {
        Fetched { miss, node: self.read(miss.addr, miss.level) }
    }

    /// Under the state lock: the node `fetched` holds if its page still held
    /// it when read (it has not left the trees since the miss was noted),
    /// now cached; `Ok(None)` when it may have been reused, and the read
    /// must be done again. An error of a read that was valid is returned.
    pub(crate) fn fill(&self, fetched: Fetched) -> Result<Option<Held>> {
        let Fetched { miss, node } = fetched;
        let mut c = self.inner.lock();
        if c.departed_since(miss.ticket, miss.addr.page) {
            return Ok(None);
        }
        let node = match c.map.get(&miss.addr.page) {
            Some(s) if s.delta == miss.addr.delta => {
                // Another reader filled it first; share the one in place.
                check_level(s, miss.addr.page, miss.level)?;
                s.node.clone()
            }
            // The page's node under another record (a pinned view reads an
            // older one, or the trees a newer one): lent, not cached.
            Some(_) => Arc::new(node?),
            None => {
                let node = Arc::new(node?);
                c.insert(miss.addr, miss.level, node.clone(), false);
                node
            }
        };
        Ok(Some(Held { addr: miss.addr, level: miss.level, node, ticket: c.departures }))
    }

    /// Under the state lock: drops the nodes of `held` whose pages left
    /// the trees since they were validated. Returns whether all stayed.
    pub(crate) fn keep_valid(&self, held: &mut Vec<Held>) -> bool {
        let c = self.inner.lock();
        let before = held.len();
        held.retain(|h| !c.departed_since(h.ticket, h.addr.page));
        held.len() == before
    }

    /// Reads the node at `addr`: its page, and its record applied.
    fn read(&self, addr: NodeAddr, level: u32) -> Result<Node> {
        let buf = self.read_page(addr.page, "tree node")?;
        let geo = Geometry { bits: self.bits, levels: level + 1 };
        let npages = crate::format::MAX_PAGE + 1;
        let decoded = decode_node(&buf, addr.page, level, geo, npages)?;
        if addr.delta == 0 {
            return Ok(build_node(decoded, addr, Vec::new()));
        }
        let leaf = matches!(decoded, DecodedNode::Leaf(_));
        let span = if leaf { geo.span(level) } else { 1 << self.bits };
        let (record_page, _) = delta::location(addr.delta, self.block_size);
        let record_buf = self.read_page(record_page, "node delta")?;
        let want = Expected { base: addr.page, level, leaf, span, npages };
        let record = delta::decode_record(&record_buf, addr.delta, want)?;
        let changed = record.indexes();
        Ok(build_node(delta::apply(decoded, &record)?, addr, changed))
    }

    fn read_page(&self, page: u64, what: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.block_size];
        let offset = self.data_start + page * self.block_size as u64;
        self.file.read_at(&mut buf, offset).map_err(|e| Error::io(format!("reading {what} at page {page}"), e))?;
        Ok(buf)
    }

    /// Places a node a checkpoint is about to write at `addr`: pinned
    /// until [`NodeCache::unpin`], replacing whatever the cache held for
    /// the page.
    pub(crate) fn insert_pinned(&self, addr: NodeAddr, level: u32, node: Arc<Node>) {
        let mut c = self.inner.lock();
        // The page's contents change when the checkpoint writes it (or the
        // node it holds takes a new record).
        c.depart(addr.page);
        c.insert(addr, level, node, true);
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

    /// Counts what the metadata holds in RAM outside the cache against its
    /// budget, evicting written nodes to make room: `dirty` nodes the trees
    /// hold (changed since the last checkpoint) and `other` bytes (the
    /// reference counts, the free map and the reserved bitmap). The budget
    /// then bounds the metadata as a whole:
    /// random writes over a large volume, which dirty a leaf each, do not
    /// add up to half the budget again beside a full cache, and a reader,
    /// whose counts stay on the disk, gets all of it for nodes.
    pub(crate) fn make_room_for(&self, dirty: u64, other: u64) {
        let dirty_bytes = (dirty as usize).saturating_mul(self.block_size + SLOT_OVERHEAD);
        let bytes = dirty_bytes.saturating_add(usize::try_from(other).unwrap_or(usize::MAX));
        let mut c = self.inner.lock();
        let grew = bytes > c.outside;
        c.outside = bytes;
        if grew {
            c.evict_to_budget();
        }
    }

    /// The page no longer holds a node any tree references.
    pub(crate) fn forget(&self, page: u64) {
        let mut c = self.inner.lock();
        c.depart(page);
        c.forget(page);
    }

    /// Bytes per page.
    pub(crate) fn block_size(&self) -> usize {
        self.block_size
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
    /// Records that `page` may stop holding the node it held.
    fn depart(&mut self, page: u64) {
        if self.departed.len() == DEPARTURES_KEPT {
            self.departed.pop_front();
        }
        self.departed.push_back(page);
        self.departures += 1;
    }

    /// Whether `page` may have departed since the count was `ticket`: it
    /// is among the departures since, or they are too many to tell.
    fn departed_since(&self, ticket: u64, page: u64) -> bool {
        let since = self.departures - ticket;
        since > self.departed.len() as u64 || self.departed.iter().rev().take(since as usize).any(|&p| p == page)
    }

    fn forget(&mut self, page: u64) {
        if let Some(s) = self.map.remove(&page) {
            self.bytes -= s.bytes;
        }
    }

    fn insert(&mut self, addr: NodeAddr, level: u32, node: Arc<Node>, pinned: bool) {
        self.forget(addr.page);
        let bytes = node.mem_bytes() + SLOT_OVERHEAD;
        self.bytes += bytes;
        let slot = Slot { node, delta: addr.delta, level, bytes, referenced: AtomicBool::new(false), pinned };
        self.map.insert(addr.page, slot);
        self.clock.push_back(addr.page);
        self.evict_to_budget();
    }

    /// Runs the clock hand until the cache fits its budget or only pinned
    /// nodes (and nodes hit since the hand last passed) are left.
    fn evict_to_budget(&mut self) {
        let mut turns = 2 * self.clock.len();
        while self.bytes + self.outside > self.budget && turns > 0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StorageDir;
    use crate::testing::SimDir;
    use crate::tree::Body;

    fn at(page: u64) -> NodeAddr {
        NodeAddr::whole(page)
    }

    fn cache() -> NodeCache {
        let f = SimDir::new().open_file("f", true).unwrap();
        NodeCache::new(f, 8192, 4096, 2, 1 << 20)
    }

    /// A read done for `miss`, as `NodeCache::fetch` would return it.
    fn fetched(miss: NodeMiss) -> Fetched {
        Fetched { miss, node: Ok(Node::new(Body::Leaf(Vec::new()))) }
    }

    #[test]
    fn a_read_is_kept_when_its_page_stayed_in_the_trees() {
        let c = cache();
        let miss = c.cached().miss(at(7), 0);
        c.forget(8);
        let held = c.fill(fetched(miss)).unwrap().expect("page 7 never left");
        assert_eq!((held.addr.page, held.level), (7, 0));
        assert_eq!(c.stats().misses, 1);
        assert!(c.cached().get(at(7), 0).unwrap().is_some(), "and cached");
    }

    #[test]
    fn a_read_of_a_page_that_left_the_trees_meanwhile_is_dropped() {
        let c = cache();
        let miss = c.cached().miss(at(7), 0);
        c.forget(7);
        assert!(c.fill(fetched(miss)).unwrap().is_none());
        assert!(c.cached().get(at(7), 0).unwrap().is_none(), "nothing cached for the page");
        // A checkpoint placing a new node there counts as leaving too.
        let miss = c.cached().miss(at(9), 0);
        c.insert_pinned(at(9), 0, Arc::new(Node::new(Body::Leaf(Vec::new()))));
        assert!(c.fill(fetched(miss)).unwrap().is_none());
    }

    #[test]
    fn a_read_older_than_the_departures_kept_is_dropped() {
        let c = cache();
        let miss = c.cached().miss(at(7), 0);
        for p in 100..100 + DEPARTURES_KEPT as u64 + 1 {
            c.forget(p);
        }
        assert!(c.fill(fetched(miss)).unwrap().is_none(), "page 7 may have left among those not kept");
    }

    #[test]
    fn held_nodes_are_dropped_once_their_pages_leave() {
        let c = cache();
        let mut held = Vec::new();
        for p in [1, 2] {
            let miss = c.cached().miss(at(p), 0);
            held.extend(c.fill(fetched(miss)).unwrap());
        }
        assert!(c.keep_valid(&mut held));
        c.forget(2);
        assert!(!c.keep_valid(&mut held));
        assert_eq!(held.iter().map(|h| h.addr.page).collect::<Vec<_>>(), vec![1]);
    }
}
