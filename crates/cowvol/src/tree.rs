//! Extent trees: the map from a volume's logical blocks to data pages.
//!
//! A tree is a radix tree of fixed fan-out whose nodes are shared between
//! volumes and snapshots (path copying, as in dm-thin or btrfs). Taking a
//! snapshot or fork copies a root reference; the first write under a shared
//! node copies the nodes on its path and nothing else.
//!
//! Leaves stand at level 0, or above it where a leaf entry's 16-bit index
//! spans the level (a *wide leaf*, [`Geometry::leaf_fits`]): a new node is
//! a leaf wherever one may be, and a wide leaf splits into an interior node
//! over leaves a level down when it would hold more than the fan-out. On a
//! sparse volume a scattered write then costs one node below the levels
//! that must be interior, and a checkpoint writes a few thousand wide
//! leaves for a 1 TiB volume instead of a leaf per write.
//!
//! A reference to a node ([`Child`]) is one of two kinds:
//! - `Disk(page)`: a *written* node, immutable, read through the
//!   [`NodeCache`] (which may drop it and read it back at any time);
//! - `Mem(Arc<Node>)`: a *dirty* node, changed since the last checkpoint,
//!   which lives only in memory until a checkpoint writes it.
//!
//! Invariants, kept by [`make_mut`] and the checkpoint:
//! - a written node's children are all `Disk`; a `Mem` reference always
//!   points at a dirty node (the checkpoint turns every reference to a node
//!   it writes into `Disk`);
//! - a written node's page has a reference count (in [`Space`]): the number
//!   of `Disk` references to it, from nodes (dirty or written), tree roots
//!   and the garbage list. Copy-on-write asks that count whether a written
//!   node is shared; a dirty node is shared when its `Arc` is;
//! - a data page's reference count is the number of distinct leaves that
//!   contain it, dirty or written. Copying a shared leaf adds one to each of
//!   its pages; a leaf freed for good subtracts one;
//! - every change to a tree happens under the store's state lock, which
//!   also guards the node cache and the space map.
//!
//! Two trees can be compared by skipping equal references (same page, or
//! same dirty node); a checkpoint writes exactly the dirty nodes.

mod cache;
pub(crate) mod delta;
mod diff;

pub(crate) use cache::{Cached, NodeCache, NodeMiss};
pub(crate) use diff::{diff_trees, DiffCounters};

use crate::error::{Error, Result};
use crate::format::{Crc, Dec, Enc, NodeHeader, MAX_PAGE, NODE_HEADER_LEN};
use crate::space::Space;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Where one logical block lives: its page and the CRC of its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) page: u64,
    pub(crate) crc: Crc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeafEntry {
    pub(crate) idx: u32,
    pub(crate) crc: u32,
    pub(crate) page: u64,
}

/// Where a written node lives: its page and, from format 10, its delta
/// record (0 for none): the node is the page's entries with the record's
/// applied (see [`delta`]). Every reference to a page names the same
/// record, so the page alone identifies the node among the live ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct NodeAddr {
    pub(crate) page: u64,
    pub(crate) delta: u64,
}

impl NodeAddr {
    /// A node written whole to `page`.
    pub(crate) fn whole(page: u64) -> NodeAddr {
        NodeAddr { page, delta: 0 }
    }
}

/// A reference to a tree node; see the module documentation.
#[derive(Debug)]
pub(crate) enum Child {
    /// A written node, by its page (and delta).
    Disk(NodeAddr),
    /// A node changed since the last checkpoint.
    Mem(Arc<Node>),
}

impl Child {
    /// The page of a written node.
    pub(crate) fn page(&self) -> Option<u64> {
        self.addr().map(|a| a.page)
    }

    /// The address of a written node.
    pub(crate) fn addr(&self) -> Option<NodeAddr> {
        match self {
            Child::Disk(a) => Some(*a),
            Child::Mem(_) => None,
        }
    }

    /// Whether both references name one subtree: the same page and delta,
    /// or the same dirty node.
    pub(crate) fn same_as(&self, other: &Child) -> bool {
        match (self, other) {
            (Child::Disk(a), Child::Disk(b)) => a == b,
            (Child::Mem(a), Child::Mem(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// One more reference to the same subtree: a written node's page
    /// counts it, a dirty node's `Arc` does.
    pub(crate) fn share(&self, space: &mut Space) -> Child {
        match self {
            Child::Disk(a) => {
                space.inc(a.page);
                Child::Disk(*a)
            }
            Child::Mem(a) => Child::Mem(a.clone()),
        }
    }

    /// The node itself, from memory or through the cache.
    pub(crate) fn node(&self, level: u32, nodes: &NodeCache) -> Result<Arc<Node>> {
        match self {
            Child::Disk(a) => nodes.load(*a, level),
            Child::Mem(a) => Ok(a.clone()),
        }
    }
}

/// A tree root: no tree at all (nothing mapped), or its top node.
pub(crate) type Root = Option<Child>;

/// Shares a whole tree with one more owner (a snapshot, a fork, a restore).
pub(crate) fn share(root: &Root, space: &mut Space) -> Root {
    root.as_ref().map(|c| c.share(space))
}

#[derive(Debug)]
pub(crate) enum Body {
    /// Sorted by `idx`; only mapped blocks have an entry.
    Leaf(Vec<LeafEntry>),
    /// The children that exist, by index.
    Interior(Children),
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) body: Body,
    /// The written node this one is, or was copied from when that took its
    /// references over: a checkpoint may write it as a delta of that page.
    base: Option<Base>,
    /// 0, or the page a checkpoint placed this dirty node at: from then on
    /// the page owns the node's references, and an `Arc` to the node that
    /// something other than a tree still holds (a pinned view) owns none.
    placed: AtomicU64,
    /// The delta record it was placed with (0 for none).
    placed_delta: AtomicU64,
    /// The indexes that record names (none when it was placed whole): a
    /// leaf is its own written form, and a copy of it taken later starts
    /// from them.
    placed_changed: OnceLock<Vec<u32>>,
    /// Which placement (`State::placements`) that was, so that a pinned
    /// view can tell a node placed before it was taken from one placed
    /// while it is walked.
    placed_by: AtomicU64,
}

/// What a node keeps of the written node it was read as or copied from,
/// so that a checkpoint can write it as a delta of that node's page.
///
/// A written node read from the disk has one (its own address); a copy
/// that took its references over (the page had no other reference) keeps
/// it and then *holds* the page and its record: the page keeps its
/// reference count of one for the copy until a checkpoint either writes the
/// copy as a new delta of it (the page stays, the old record goes) or whole
/// to a new page (both go). A copy of a shared node has none.
#[derive(Debug, Clone)]
struct Base {
    addr: NodeAddr,
    /// Whether the base page holds a leaf: a node whose kind changed since
    /// (a wide leaf split) is written whole.
    leaf: bool,
    /// The indexes at which the node may differ from the base page alone
    /// (its record's and those changed since), sorted; `None` once more
    /// than a record holds, or when nothing says which.
    changed: Option<Vec<u32>>,
    /// Whether this node holds the base page's reference and its record.
    held: bool,
}

/// An interior node's children: only the slots that hold a subtree, sorted
/// by index. A scattered write on a large sparse volume creates one child
/// per level, so storing the empty slots of a 256-way node would cost
/// kilobytes per write; this costs 16 bytes per child.
#[derive(Debug, Default)]
pub(crate) struct Children(Vec<(u16, Child)>);

impl Children {
    /// The child at index `i`. In a full node (the common case for dense
    /// data) it sits at position `i`; otherwise a binary search finds it.
    pub(crate) fn get(&self, i: usize) -> Option<&Child> {
        match self.0.get(i) {
            Some((x, c)) if *x as usize == i => Some(c),
            _ => self.position(i).ok().map(|p| &self.0[p].1),
        }
    }

    fn position(&self, i: usize) -> std::result::Result<usize, usize> {
        self.0.binary_search_by_key(&i, |(x, _)| *x as usize)
    }

    /// The child at index `i`, created by `make` when it is missing.
    fn get_or_insert_with(&mut self, i: usize, make: impl FnOnce() -> Child) -> &mut Child {
        let p = match self.position(i) {
            Ok(p) => p,
            Err(p) => {
                self.0.insert(p, (i as u16, make()));
                p
            }
        };
        &mut self.0[p].1
    }

    /// Every child with its index, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Child)> {
        self.0.iter().map(|(i, c)| (*i as usize, c))
    }

    /// Every child, in index order.
    pub(crate) fn refs(&self) -> impl Iterator<Item = &Child> {
        self.0.iter().map(|(_, c)| c)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn into_refs(self) -> impl Iterator<Item = Child> {
        self.0.into_iter().map(|(_, c)| c)
    }

    /// Runs `f` on the slot of each child whose index is in `range`; a slot
    /// that `f` empties is removed. Stops at the first error, keeping every
    /// slot (changed or not) in place.
    fn retain_in(
        &mut self,
        range: std::ops::Range<usize>,
        mut f: impl FnMut(usize, &mut Root) -> Result<()>,
    ) -> Result<()> {
        let from = self.0.partition_point(|(x, _)| (*x as usize) < range.start);
        let to = self.0.partition_point(|(x, _)| (*x as usize) < range.end);
        let mut kept = Vec::with_capacity(to - from);
        let mut result = Ok(());
        for (i, c) in self.0.drain(from..to).collect::<Vec<_>>() {
            let mut slot = Some(c);
            if result.is_ok() {
                result = f(i as usize, &mut slot);
            }
            kept.extend(slot.map(|c| (i, c)));
        }
        self.0.splice(from..from, kept);
        result
    }

    /// The same children with each reference shared once more (a copy of
    /// a node that stays in use elsewhere).
    fn share_all(&self, space: &mut Space) -> Children {
        Children(self.0.iter().map(|(i, c)| (*i, c.share(space))).collect())
    }

    /// A copy of a written node's children, which are all `Disk`, taking
    /// over its references (the written node is going away).
    fn take_over(&self) -> Children {
        let copy = |(i, c): &(u16, Child)| match c {
            Child::Disk(a) => (*i, Child::Disk(*a)),
            Child::Mem(a) => (*i, Child::Mem(a.clone())),
        };
        Children(self.0.iter().map(copy).collect())
    }

    /// Children of a written node from `(index, address)` pairs in
    /// ascending index order.
    fn on_disk(addrs: Vec<(usize, NodeAddr)>) -> Children {
        Children(addrs.into_iter().map(|(i, a)| (i as u16, Child::Disk(a))).collect())
    }

    /// The written form of a dirty node's children: every child by
    /// address, `addr_of` giving a dirty child's (it is being written too),
    /// or `None` for one to leave out (a reference no count stands for).
    pub(crate) fn written(&self, addr_of: impl Fn(&Arc<Node>) -> Option<NodeAddr>) -> Children {
        let to_disk = |(i, c): &(u16, Child)| match c {
            Child::Disk(a) => Some((*i, Child::Disk(*a))),
            Child::Mem(n) => addr_of(n).map(|a| (*i, Child::Disk(a))),
        };
        Children(self.0.iter().filter_map(to_disk).collect())
    }
}

impl Node {
    pub(crate) fn new(body: Body) -> Node {
        Node {
            body,
            base: None,
            placed: AtomicU64::new(0),
            placed_delta: AtomicU64::new(0),
            placed_changed: OnceLock::new(),
            placed_by: AtomicU64::new(0),
        }
    }

    /// The node read from the disk at `addr`, whose record (if any) named
    /// `changed`: its own base.
    fn read_at(body: Body, addr: NodeAddr, changed: Vec<u32>) -> Node {
        let leaf = matches!(body, Body::Leaf(_));
        Node { base: Some(Base { addr, leaf, changed: Some(changed), held: false }), ..Node::new(body) }
    }

    /// The base page and record this dirty node holds (see [`Base`]).
    pub(crate) fn held_base(&self) -> Option<NodeAddr> {
        self.base.as_ref().filter(|b| b.held).map(|b| b.addr)
    }

    /// Notes that the entry at index `idx` may have changed.
    fn note_changed(&mut self, idx: u32, max: usize) {
        let Some(b) = &mut self.base else { return };
        let Some(changed) = &mut b.changed else { return };
        if let Err(at) = changed.binary_search(&idx) {
            if changed.len() >= max {
                b.changed = None;
            } else {
                changed.insert(at, idx);
            }
        }
    }

    /// Notes that the node changed in a way no record can say (its kind).
    fn note_reshaped(&mut self) {
        if let Some(b) = &mut self.base {
            b.changed = None;
        }
    }

    /// What a checkpoint writes for this dirty node as a delta of its base
    /// page: the base and the entries at the indexes changed since the base
    /// was written, `addr_of` giving a dirty child's address. `None` when
    /// it must be written whole: it holds no base, changed at more indexes
    /// than a record holds, or changed its kind.
    pub(crate) fn delta_of(
        &self,
        addr_of: impl Fn(&Arc<Node>) -> Option<NodeAddr>,
    ) -> Option<(NodeAddr, delta::DeltaEntries)> {
        let b = self.base.as_ref().filter(|b| b.held)?;
        let changed = b.changed.as_ref().filter(|c| !c.is_empty())?;
        let entries = match &self.body {
            Body::Leaf(v) if b.leaf => delta::DeltaEntries::Leaf(
                changed.iter().map(|&i| (i, find_entry(v, i).ok().map(|p| (v[p].page, v[p].crc)))).collect(),
            ),
            Body::Interior(c) if !b.leaf => {
                let at = |i: u32| match c.get(i as usize)? {
                    Child::Disk(a) => Some(*a),
                    Child::Mem(n) => addr_of(n),
                };
                delta::DeltaEntries::Interior(changed.iter().map(|&i| (i as usize, at(i))).collect())
            }
            _ => return None,
        };
        Some((b.addr, entries))
    }

    /// The written form of this dirty node placed at `addr`, whose record
    /// names `changed`: children by address, `addr_of` giving a dirty
    /// child's.
    pub(crate) fn written_form(
        &self,
        addr: NodeAddr,
        changed: Vec<u32>,
        addr_of: impl Fn(&Arc<Node>) -> Option<NodeAddr>,
    ) -> Node {
        let body = match &self.body {
            Body::Leaf(v) => Body::Leaf(v.clone()),
            Body::Interior(c) => Body::Interior(c.written(addr_of)),
        };
        Node::read_at(body, addr, changed)
    }

    /// How many entries [`Node::delta_of`] would write, without building
    /// them: `None` when the node is written whole.
    pub(crate) fn delta_len(&self) -> Option<(bool, usize)> {
        let b = self.base.as_ref().filter(|b| b.held)?;
        let changed = b.changed.as_ref().filter(|c| !c.is_empty())?;
        let leaf = matches!(self.body, Body::Leaf(_));
        (leaf == b.leaf).then_some((leaf, changed.len()))
    }

    /// A new node at `level`: a leaf wherever one may stand (see
    /// [`Geometry::leaf_fits`]), so that a scattered write creates one
    /// node below the levels that must be interior, not a path down to
    /// level 0.
    fn empty(geo: Geometry, level: u32) -> Node {
        Node::new(if geo.leaf_fits(level) { Body::Leaf(Vec::new()) } else { Body::Interior(Children::default()) })
    }

    /// Where a checkpoint placed this dirty node, if it did.
    pub(crate) fn placed(&self) -> Option<NodeAddr> {
        let page = self.placed.load(Ordering::Acquire);
        (page != 0).then(|| NodeAddr { page, delta: self.placed_delta.load(Ordering::Acquire) })
    }

    /// Where a checkpoint placed this dirty node, if placement `epoch` or
    /// an earlier one did.
    pub(crate) fn placed_by(&self, epoch: u64) -> Option<NodeAddr> {
        let addr = self.placed()?;
        (self.placed_by.load(Ordering::Acquire) <= epoch).then_some(addr)
    }

    /// Records that placement `epoch` of a checkpoint placed this dirty
    /// node at `addr`, with a record naming `changed` (none when placed
    /// whole), under the state lock, as the trees' references become that
    /// address.
    pub(crate) fn set_placed(&self, addr: NodeAddr, changed: Vec<u32>, epoch: u64) {
        // Placed once: a placed node is never made dirty again (a write
        // copies it), so this is its only placement.
        let _ = self.placed_changed.set(changed);
        self.placed_by.store(epoch, Ordering::Release);
        self.placed_delta.store(addr.delta, Ordering::Release);
        self.placed.store(addr.page, Ordering::Release);
    }

    fn is_empty(&self) -> bool {
        match &self.body {
            Body::Leaf(v) => v.is_empty(),
            Body::Interior(c) => c.is_empty(),
        }
    }

    /// Bytes this node occupies in memory (for stats and the cache budget).
    pub(crate) fn mem_bytes(&self) -> usize {
        std::mem::size_of::<Node>()
            + 16
            + match &self.body {
                Body::Leaf(v) => v.capacity() * std::mem::size_of::<LeafEntry>(),
                Body::Interior(c) => c.0.capacity() * std::mem::size_of::<(u16, Child)>(),
            }
            + self.base.as_ref().and_then(|b| b.changed.as_ref()).map_or(0, |c| c.capacity() * 4)
            + self.placed_changed.get().map_or(0, |c| c.capacity() * 4)
    }
}

/// The shape of one volume's tree: fan-out bits and number of levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) bits: u32,
    pub(crate) levels: u32,
}

impl Geometry {
    /// The smallest tree that addresses `nblocks` blocks.
    pub(crate) fn for_blocks(bits: u32, nblocks: u64) -> Geometry {
        let need = 64 - nblocks.saturating_sub(1).leading_zeros();
        Geometry { bits, levels: need.div_ceil(bits).max(1) }
    }

    /// The level of a tree's root.
    pub(crate) fn top(self) -> u32 {
        self.levels - 1
    }

    fn fanout(self) -> usize {
        1 << self.bits
    }

    fn index(self, lblock: u64, level: u32) -> usize {
        ((lblock >> (level * self.bits)) & (self.fanout() as u64 - 1)) as usize
    }

    /// Logical blocks one node at `level` covers.
    fn span(self, level: u32) -> u64 {
        1u64 << ((level + 1) * self.bits).min(63)
    }

    /// Whether a leaf may stand at `level`: at level 0 always; above it
    /// (a *wide leaf*, format 7) when the 16-bit index of a leaf entry
    /// spans every block the level covers (levels 0 and 1 with 4 KiB
    /// blocks). A wide leaf holds at most [`Geometry::fanout`] entries, as
    /// many as a leaf at level 0 can; one more splits it into an interior
    /// node over leaves a level down.
    pub(crate) fn leaf_fits(self, level: u32) -> bool {
        level == 0 || (level + 1) * self.bits <= 16
    }

    /// The index within a leaf at `level` of the entry for `lblock`.
    fn leaf_index(self, lblock: u64, level: u32) -> u32 {
        (lblock & (self.span(level) - 1)) as u32
    }
}

/// Returns the mapping of `lblock`, if it is mapped. Reads the nodes the
/// cache lacks under the caller's state lock.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn lookup(root: &Root, geo: Geometry, lblock: u64, nodes: &NodeCache) -> Result<Option<Mapping>> {
    let mut found = None;
    walk_loading(root, geo, lblock, 1, nodes, &mut |_, m| found = m)?;
    Ok(found)
}

/// [`walk_cached`] to the end, reading each node the cache lacks under
/// the caller's state lock (so no page can leave the trees meanwhile, and
/// the walk resumes where it stopped).
pub(crate) fn walk_loading(
    root: &Root,
    geo: Geometry,
    first: u64,
    n: u64,
    nodes: &NodeCache,
    emit: &mut dyn FnMut(u64, Option<Mapping>),
) -> Result<()> {
    let (mut at, end) = (first, first + n);
    let mut held = Vec::new();
    loop {
        match walk_cached(root, geo, at, end - at, &held, &nodes.cached(), emit)? {
            Walked::Done => return Ok(()),
            Walked::Missed { resolved, miss } => {
                at += resolved;
                match nodes.fill(nodes.fetch(miss))? {
                    Some(h) => held.push(h),
                    // Not while the state lock is held; loading is always right.
                    None => {
                        let node = nodes.load(miss.addr, miss.level)?;
                        held.push(Held { addr: miss.addr, level: miss.level, node, ticket: 0 });
                    }
                }
            }
        }
    }
}

/// How far a [`walk_cached`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walked {
    /// Every block asked for was emitted.
    Done,
    /// The first `resolved` blocks were emitted; the next one needs a node
    /// the cache does not hold.
    Missed { resolved: u64, miss: NodeMiss },
}

/// A node read for a [`NodeMiss`] and validated, lent to the walk that
/// asked for it: the cache may already have evicted it again.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) addr: NodeAddr,
    pub(crate) level: u32,
    pub(crate) node: Arc<Node>,
    /// The cache's count of departures when it was last validated
    /// (`NodeCache::keep_valid`).
    pub(crate) ticket: u64,
}

/// Emits each block of `first..first + n` with its mapping, in order, and
/// descends once per leaf (or per missing subtree) rather than once per
/// block. Reads nothing from the disk and clones no node: written nodes
/// come from `cached` or `held`, and the first that neither has stops the
/// walk, so that the caller can read it with no lock held and resume.
pub(crate) fn walk_cached(
    root: &Root,
    geo: Geometry,
    first: u64,
    n: u64,
    held: &[Held],
    cached: &Cached<'_>,
    emit: &mut dyn FnMut(u64, Option<Mapping>),
) -> Result<Walked> {
    let end = first + n;
    let mut lb = first;
    while lb < end {
        let mut level = geo.top();
        let mut child = root.as_ref();
        let leaf = loop {
            let Some(c) = child else { break None };
            let node = match node_ref(c, level, held, cached)? {
                Ok(node) => node,
                Err(miss) => return Ok(Walked::Missed { resolved: lb - first, miss }),
            };
            match &node.body {
                Body::Interior(children) => {
                    child = children.get(geo.index(lb, level));
                    level -= 1;
                }
                Body::Leaf(entries) => break Some(entries),
            }
        };
        // The span of the leaf found at `level`, or of the missing node.
        let span = geo.span(level);
        let mask = span - 1;
        let Some(entries) = leaf else {
            // No node at `level` covers `lb`: its whole span is unmapped.
            let stop = (lb - lb % span).saturating_add(span).min(end);
            (lb..stop).for_each(|b| emit(b, None));
            lb = stop;
            continue;
        };
        let stop = ((lb | mask) + 1).min(end);
        let (Ok(mut p) | Err(mut p)) = find_entry(entries, (lb & mask) as u32);
        for b in lb..stop {
            match entries.get(p) {
                Some(e) if e.idx as u64 == b & mask => {
                    emit(b, Some(Mapping { page: e.page, crc: Crc(e.crc) }));
                    p += 1;
                }
                _ => emit(b, None),
            }
        }
        lb = stop;
    }
    Ok(Walked::Done)
}

/// The node `c` refers to, lent from the tree, `held` or the cache; the
/// miss to read when none of them has it.
fn node_ref<'a>(
    c: &'a Child,
    level: u32,
    held: &'a [Held],
    cached: &'a Cached<'_>,
) -> Result<std::result::Result<&'a Node, NodeMiss>> {
    let addr = match c {
        Child::Mem(a) => return Ok(Ok(a)),
        Child::Disk(a) => *a,
    };
    if let Some(h) = held.iter().find(|h| h.addr == addr) {
        if h.level != level {
            let detail = format!("node of level {} reached at level {level}", h.level);
            return Err(Error::corruption("tree", format!("page {}", addr.page), detail));
        }
        return Ok(Ok(&h.node));
    }
    Ok(cached.get(addr, level)?.ok_or_else(|| cached.miss(addr, level)))
}

/// Finds the entry for leaf index `idx`. Entries are sorted by unique
/// index, so entry `i` has an index of at least `i`: in a dense leaf (the
/// common case) the entry sits at position `idx`, found with one load
/// instead of a binary search.
fn find_entry(entries: &[LeafEntry], idx: u32) -> std::result::Result<usize, usize> {
    if entries.get(idx as usize).is_some_and(|e| e.idx == idx) {
        return Ok(idx as usize);
    }
    entries.binary_search_by_key(&idx, |e| e.idx)
}

/// Gives write access to the node in `slot` (at `level`), copying it first
/// unless it is a dirty node no one else holds.
///
/// - A dirty node shared through its `Arc` is copied, and the copy shares
///   each child and data page once more.
/// - A written node is always copied (the cache and the disk keep the
///   original). When this slot was its only reference, the copy takes its
///   references over and holds the page (and its delta record) as its
///   base, which the checkpoint keeps, under a new record, or lets go (see
///   [`Base`]); otherwise the copy shares each child and data page once
///   more and the page keeps its other references.
///
/// Invariant kept here: `space.dirty_nodes` is at least the number of dirty
/// nodes, each of which needs a page at the next checkpoint; the metadata
/// reserve holds one for each.
fn make_mut<'a>(slot: &'a mut Child, level: u32, space: &mut Space, nodes: &NodeCache) -> Result<&'a mut Node> {
    let copy = match slot {
        Child::Mem(arc) if Arc::strong_count(arc) == 1 && Arc::weak_count(arc) == 0 => None,
        Child::Mem(arc) => Some(shared_copy(arc, space)),
        Child::Disk(addr) => {
            let addr = *addr;
            let written = nodes.load(addr, level)?;
            if space.refcount(addr.page)? == 1 {
                Some(taken_over_copy(&written, addr))
            } else {
                let copy = shared_copy(&written, space);
                drop_written_ref(addr, space, nodes);
                Some(copy)
            }
        }
    };
    if let Some(copy) = copy {
        space.dirty_nodes += 1;
        *slot = Child::Mem(Arc::new(copy));
    }
    match slot {
        Child::Mem(arc) => Ok(Arc::get_mut(arc).expect("unique after copy")),
        Child::Disk(_) => unreachable!("made dirty above"),
    }
}

/// A copy of a node that stays in use: every child and data page it
/// references gains a reference.
fn shared_copy(node: &Node, space: &mut Space) -> Node {
    let body = match &node.body {
        Body::Leaf(v) => {
            for e in v {
                space.inc(e.page);
            }
            Body::Leaf(v.clone())
        }
        Body::Interior(c) => Body::Interior(c.share_all(space)),
    };
    Node::new(body)
}

/// A copy of the written node at `addr`, which no other reference holds:
/// the copy takes its references over, so no count changes, and holds the
/// page as its base.
fn taken_over_copy(node: &Node, addr: NodeAddr) -> Node {
    let body = match &node.body {
        Body::Leaf(v) => Body::Leaf(v.clone()),
        Body::Interior(c) => Body::Interior(c.take_over()),
    };
    let leaf = matches!(body, Body::Leaf(_));
    // A node read from the disk knows the indexes of its record, and a
    // leaf a checkpoint placed (its own written form) those it was placed
    // with; one the cache got another way (never, but nothing else is
    // safe) is written whole.
    let changed = match node.placed() {
        Some(placed) if placed == addr => node.placed_changed.get().cloned(),
        _ => node.base.as_ref().filter(|b| b.addr == addr).and_then(|b| b.changed.clone()),
    };
    Node { base: Some(Base { addr, leaf, changed, held: true }), ..Node::new(body) }
}

/// Drops one `Disk` reference to a node whose contents the caller has
/// already dealt with; at zero its page becomes obsolete and leaves the
/// cache, and its delta record goes.
pub(crate) fn drop_written_ref(addr: NodeAddr, space: &mut Space, nodes: &NodeCache) {
    if space.dec_node(addr.page) {
        nodes.forget(addr.page);
        drop_record(addr.delta, space);
    }
}

/// The node using delta record `delta` (0: none) no longer does: its page
/// loses a reference, and becomes obsolete with its last.
pub(crate) fn drop_record(delta: u64, space: &mut Space) {
    if delta != 0 {
        let (page, _) = delta::location(delta, space.block_size() as usize);
        space.dec_node_anywhere(page);
    }
}

/// Lets go of the base a dirty node held (see [`Base`]): the page's count
/// was one, the node's, so the page and its record go.
pub(crate) fn drop_held_base(addr: NodeAddr, space: &mut Space, nodes: &NodeCache) {
    space.dec_node_anywhere(addr.page);
    nodes.forget(addr.page);
    drop_record(addr.delta, space);
}

/// The most indexes a record holds in this store.
fn delta_cap(space: &Space) -> usize {
    delta::max_entries(space.block_size() as usize)
}

/// A new, empty node: it will need a page at the next checkpoint.
fn new_node(geo: Geometry, level: u32, space: &mut Space) -> Child {
    space.dirty_nodes += 1;
    Child::Mem(Arc::new(Node::empty(geo, level)))
}

/// Maps `lblock` to `m`, dropping the reference of whatever it mapped before.
/// On an error (a node that cannot be read) the tree is whole but the
/// mapping may not have been made.
pub(crate) fn insert(
    root: &mut Root,
    geo: Geometry,
    lblock: u64,
    m: Mapping,
    space: &mut Space,
    nodes: &NodeCache,
) -> Result<()> {
    let top = root.get_or_insert_with(|| new_node(geo, geo.top(), space));
    insert_into(top, geo, geo.top(), lblock, m, space, nodes)
}

fn insert_into(
    child: &mut Child,
    geo: Geometry,
    level: u32,
    lblock: u64,
    m: Mapping,
    space: &mut Space,
    nodes: &NodeCache,
) -> Result<()> {
    let node = make_mut(child, level, space, nodes)?;
    if level > 0 && wide_leaf_is_full_for(node, geo, level, lblock) {
        split_wide_leaf(node, geo, level, space);
        node.note_reshaped();
    }
    let idx = match node.body {
        Body::Interior(_) => geo.index(lblock, level) as u32,
        Body::Leaf(_) => geo.leaf_index(lblock, level),
    };
    node.note_changed(idx, delta_cap(space));
    match &mut node.body {
        Body::Interior(children) => {
            let c = children.get_or_insert_with(geo.index(lblock, level), || new_node(geo, level - 1, space));
            insert_into(c, geo, level - 1, lblock, m, space, nodes)
        }
        Body::Leaf(entries) => {
            let e = LeafEntry { idx: geo.leaf_index(lblock, level), crc: m.crc.0, page: m.page };
            space.inc(m.page);
            match find_entry(entries, e.idx) {
                Ok(i) => {
                    let old = std::mem::replace(&mut entries[i], e);
                    space.dec(old.page);
                }
                Err(i) => entries.insert(i, e),
            }
            Ok(())
        }
    }
}

/// Whether `node`, a leaf above level 0, holds as many entries as a leaf
/// may and none for `lblock`, so that mapping it needs a split first.
fn wide_leaf_is_full_for(node: &Node, geo: Geometry, level: u32, lblock: u64) -> bool {
    match &node.body {
        Body::Leaf(entries) => {
            entries.len() >= geo.fanout() && find_entry(entries, geo.leaf_index(lblock, level)).is_err()
        }
        Body::Interior(_) => false,
    }
}

/// Turns a full wide leaf at `level` into an interior node over new leaves
/// a level down, each holding the entries of its span. Every data page
/// stays in exactly one leaf, so no count changes; each new leaf needs a
/// page at the next checkpoint.
fn split_wide_leaf(node: &mut Node, geo: Geometry, level: u32, space: &mut Space) {
    let Body::Leaf(entries) = &mut node.body else { return };
    let child_span = geo.span(level - 1);
    let mut children = Children::default();
    for e in std::mem::take(entries) {
        let i = (u64::from(e.idx) / child_span) as usize;
        let child = children.get_or_insert_with(i, || new_node(geo, level - 1, space));
        let Child::Mem(arc) = child else { unreachable!("a new child is dirty") };
        let Some(Node { body: Body::Leaf(v), .. }) = Arc::get_mut(arc) else {
            unreachable!("a new child of a wide leaf is a leaf no one else holds")
        };
        v.push(LeafEntry { idx: (u64::from(e.idx) % child_span) as u32, ..e });
    }
    node.body = Body::Interior(children);
}

/// The trees detached by deletes, restores and discards, with the level of
/// each subtree's top node, waiting to be released in bounded steps.
pub(crate) type Garbage = Vec<(Child, u32)>;

/// Unmaps logical blocks `[start, end)`. Subtrees that fall wholly inside
/// the range are moved to `garbage` for release in bounded steps.
pub(crate) fn remove_range(
    root: &mut Root,
    geo: Geometry,
    range: std::ops::Range<u64>,
    space: &mut Space,
    garbage: &mut Garbage,
    nodes: &NodeCache,
) -> Result<()> {
    let mut w = Remover { geo, start: range.start, end: range.end, space, garbage, nodes };
    w.remove_at(root, geo.top(), 0)
}

/// One range removal: what every step of the recursion shares.
struct Remover<'a> {
    geo: Geometry,
    start: u64,
    end: u64,
    space: &'a mut Space,
    garbage: &'a mut Garbage,
    nodes: &'a NodeCache,
}

impl Remover<'_> {
    fn remove_at(&mut self, slot: &mut Root, level: u32, base: u64) -> Result<()> {
        let (start, end) = (self.start, self.end);
        let span = self.geo.span(level);
        if slot.is_none() || end <= base || start >= base.saturating_add(span) {
            return Ok(());
        }
        if start <= base && end >= base.saturating_add(span) {
            self.garbage.extend(slot.take().map(|c| (c, level)));
            return Ok(());
        }
        let node = make_mut(slot.as_mut().expect("checked"), level, self.space, self.nodes)?;
        let mut touched = Vec::new();
        let result = match &mut node.body {
            Body::Interior(children) => {
                let child_span = self.geo.span(level - 1);
                let first = ((start.max(base) - base) / child_span) as usize;
                let last = ((end - 1).min(base.saturating_add(span) - 1) - base) / child_span;
                children.retain_in(first..last as usize + 1, |i, child| {
                    touched.push(i as u32);
                    self.remove_at(child, level - 1, base + i as u64 * child_span)
                })
            }
            Body::Leaf(entries) => {
                let space = &mut *self.space;
                entries.retain(|e| {
                    let lb = base + e.idx as u64;
                    let keep = lb < start || lb >= end;
                    if !keep {
                        space.dec(e.page);
                        touched.push(e.idx);
                    }
                    keep
                });
                Ok(())
            }
        };
        let cap = delta_cap(self.space);
        touched.into_iter().for_each(|i| node.note_changed(i, cap));
        if node.is_empty() {
            // `make_mut` left it dirty and counted: it will need no page,
            // and lets go of the page it was copied from.
            let held = node.held_base();
            *slot = None;
            self.space.dirty_nodes = self.space.dirty_nodes.saturating_sub(1);
            if let Some(addr) = held {
                drop_held_base(addr, self.space, self.nodes);
            }
        }
        result
    }
}

/// Releases up to `budget` references from `garbage`. A dirty node this
/// list holds alone gives back its data pages (leaf) or hands its children
/// to the list (interior); a written node loses one reference, and when
/// that was its last, its contents are released the same way and its page
/// becomes obsolete. Returns whether the list is now empty. On an error (a
/// node that cannot be read) the reference stays on the list.
pub(crate) fn release_some(
    garbage: &mut Garbage,
    space: &mut Space,
    nodes: &NodeCache,
    mut budget: usize,
) -> Result<bool> {
    while budget > 0 {
        let Some((child, level)) = garbage.pop() else {
            return Ok(true);
        };
        budget -= 1;
        match child {
            Child::Mem(arc) => release_dirty(arc, level, space, garbage, nodes),
            Child::Disk(addr) => {
                let alone = match space.refcount(addr.page) {
                    Ok(n) => n == 1,
                    Err(e) => {
                        garbage.push((Child::Disk(addr), level));
                        return Err(e);
                    }
                };
                if alone {
                    let node = match nodes.load(addr, level) {
                        Ok(n) => n,
                        Err(e) => {
                            garbage.push((Child::Disk(addr), level));
                            return Err(e);
                        }
                    };
                    release_contents(taken_over_copy(&node, addr).body, level, space, garbage);
                }
                drop_written_ref(addr, space, nodes);
            }
        }
    }
    Ok(garbage.is_empty())
}

/// Drops one `Arc` to a dirty node; the last one releases what it
/// references, the page it holds as its base included. A node a checkpoint
/// placed owns nothing (its page does), so its last `Arc` (a pinned
/// view's) releases nothing.
fn release_dirty(arc: Arc<Node>, level: u32, space: &mut Space, garbage: &mut Garbage, nodes: &NodeCache) {
    if let Ok(node) = Arc::try_unwrap(arc) {
        if node.placed().is_none() {
            space.dirty_nodes = space.dirty_nodes.saturating_sub(1);
            if let Some(addr) = node.held_base() {
                drop_held_base(addr, space, nodes);
            }
            release_contents(node.body, level, space, garbage);
        }
    }
}

/// Releases what a node being freed for good references: its data pages,
/// or its children (to the garbage list).
fn release_contents(body: Body, level: u32, space: &mut Space, garbage: &mut Garbage) {
    match body {
        Body::Leaf(entries) => entries.iter().for_each(|e| space.dec(e.page)),
        Body::Interior(children) => garbage.extend(children.into_refs().map(|c| (c, level.saturating_sub(1)))),
    }
}

/// Releases every dirty node the garbage list holds, without reading
/// anything: afterwards the list holds only references to written nodes.
/// A checkpoint does this first, so that no dirty node outside the trees
/// it writes is left pointing at nodes it turns into pages.
pub(crate) fn release_dirty_garbage(garbage: &mut Garbage, space: &mut Space, nodes: &NodeCache) {
    let mut written = Vec::new();
    while let Some((child, level)) = garbage.pop() {
        match child {
            Child::Mem(arc) => release_dirty(arc, level, space, garbage, nodes),
            disk => written.push((disk, level)),
        }
    }
    *garbage = written;
}

/// Visits every node reachable from `roots` once, however many trees share
/// it, calling `f(node, level, page)` (`page` is `None` for a dirty node);
/// shared subtrees are skipped after the first visit. Reads through the
/// cache.
pub(crate) fn visit_unique<'r>(
    roots: impl IntoIterator<Item = (&'r Child, u32)>,
    nodes: &NodeCache,
    mut f: impl FnMut(&Node, u32, Option<u64>),
) -> Result<()> {
    let mut seen_pages = std::collections::HashSet::new();
    let mut seen_dirty = std::collections::HashSet::new();
    let mut stack: Vec<(Arc<Node>, u32, Option<u64>)> = Vec::new();
    let mut push = |c: &Child, level: u32, nodes: &NodeCache, stack: &mut Vec<_>| -> Result<()> {
        let first = match c {
            Child::Disk(a) => seen_pages.insert(a.page),
            Child::Mem(a) => seen_dirty.insert(Arc::as_ptr(a)),
        };
        if first {
            stack.push((c.node(level, nodes)?, level, c.page()));
        }
        Ok(())
    };
    for (c, level) in roots {
        push(c, level, nodes, &mut stack)?;
    }
    while let Some((node, level, page)) = stack.pop() {
        f(&node, level, page);
        if let Body::Interior(children) = &node.body {
            for c in children.refs() {
                push(c, level.saturating_sub(1), nodes, &mut stack)?;
            }
        }
    }
    Ok(())
}

/// Calls `f(lblock, mapping)` for every mapped block of one tree, in order.
pub(crate) fn for_each_mapping(
    root: &Root,
    geo: Geometry,
    nodes: &NodeCache,
    mut f: impl FnMut(u64, Mapping),
) -> Result<()> {
    fn walk(
        node: &Node,
        geo: Geometry,
        level: u32,
        base: u64,
        nodes: &NodeCache,
        f: &mut dyn FnMut(u64, Mapping),
    ) -> Result<()> {
        match &node.body {
            Body::Leaf(entries) => {
                for e in entries {
                    f(base + e.idx as u64, Mapping { page: e.page, crc: Crc(e.crc) });
                }
            }
            Body::Interior(children) => {
                let span = geo.span(level - 1);
                for (i, c) in children.iter() {
                    let child = c.node(level - 1, nodes)?;
                    walk(&child, geo, level - 1, base + i as u64 * span, nodes, f)?;
                }
            }
        }
        Ok(())
    }
    match root {
        Some(r) => {
            let top = r.node(geo.top(), nodes)?;
            walk(&top, geo, geo.top(), 0, nodes, &mut f)
        }
        None => Ok(()),
    }
}

/// Appends to `out` the runs `(first_block, count)` of mapped blocks within
/// `first..first + n`, in order, merging neighbours. Missing subtrees are
/// skipped whole, so the cost follows the mapped part, not the range.
pub(crate) fn mapped_runs(
    root: &Root,
    geo: Geometry,
    first: u64,
    n: u64,
    out: &mut Vec<(u64, u64)>,
    nodes: &NodeCache,
) -> Result<()> {
    fn push(out: &mut Vec<(u64, u64)>, lb: u64) {
        match out.last_mut() {
            Some((start, len)) if *start + *len == lb => *len += 1,
            _ => out.push((lb, 1)),
        }
    }
    struct Runs<'a> {
        geo: Geometry,
        range: (u64, u64),
        out: &'a mut Vec<(u64, u64)>,
        nodes: &'a NodeCache,
    }
    impl Runs<'_> {
        fn walk(&mut self, node: &Node, level: u32, base: u64) -> Result<()> {
            match &node.body {
                Body::Leaf(entries) => {
                    let from = entries.partition_point(|e| base + (e.idx as u64) < self.range.0);
                    for e in &entries[from..] {
                        let lb = base + e.idx as u64;
                        if lb >= self.range.1 {
                            break;
                        }
                        push(self.out, lb);
                    }
                }
                Body::Interior(children) => {
                    let span = self.geo.span(level - 1);
                    for (i, c) in children.iter() {
                        let cbase = base + i as u64 * span;
                        if cbase >= self.range.1 {
                            break;
                        }
                        if cbase.saturating_add(span) > self.range.0 {
                            let child = c.node(level - 1, self.nodes)?;
                            self.walk(&child, level - 1, cbase)?;
                        }
                    }
                }
            }
            Ok(())
        }
    }
    let Some(r) = root else { return Ok(()) };
    let top = r.node(geo.top(), nodes)?;
    let mut w = Runs { geo, range: (first, first.saturating_add(n)), out, nodes };
    w.walk(&top, geo.top(), 0)
}

/// Data pages that only the tree at `root` holds: pages of leaves reachable
/// from it through nodes no other tree shares, and that no other leaf
/// references. Walks only the unshared part of the tree.
/// Reads the counts it needs through `space`, loading their groups.
pub(crate) fn exclusive_pages(root: &Root, geo: Geometry, space: &mut Space, nodes: &NodeCache) -> Result<u64> {
    // One reference: this tree's own parent slot (or root).
    let alone = |c: &Child, space: &mut Space| -> Result<bool> {
        Ok(match c {
            Child::Mem(a) => Arc::strong_count(a) == 1,
            Child::Disk(a) => space.refcount(a.page)? == 1,
        })
    };
    let mut pages = 0;
    let mut stack = Vec::new();
    if let Some(r) = root.as_ref() {
        if alone(r, space)? {
            stack.push((r.node(geo.top(), nodes)?, geo.top()));
        }
    }
    while let Some((node, level)) = stack.pop() {
        match &node.body {
            Body::Leaf(entries) => {
                for e in entries {
                    pages += u64::from(space.refcount(e.page)? == 1);
                }
            }
            Body::Interior(children) => {
                for c in children.refs() {
                    if alone(c, space)? {
                        stack.push((c.node(level - 1, nodes)?, level - 1));
                    }
                }
            }
        }
    }
    Ok(pages)
}

/// Encodes a written node into one page. Its children must all be
/// `Disk`: a dirty node is encoded from its written form (see
/// [`Children::written`]).
pub(crate) fn encode_node(node: &Node, level: u32, page: u64, block_size: usize) -> Vec<u8> {
    let mut e = Enc::with_capacity(block_size);
    let count = match &node.body {
        Body::Leaf(entries) => entries.len(),
        Body::Interior(children) => children.len(),
    };
    let leaf = matches!(node.body, Body::Leaf(_));
    NodeHeader { page, level, leaf, deltas: !leaf, count }.encode(&mut e);
    match &node.body {
        Body::Leaf(entries) => {
            for x in entries {
                e.u16(x.idx as u16);
                e.u48(x.page);
                e.u32(x.crc);
            }
        }
        Body::Interior(children) => {
            for (i, c) in children.iter() {
                let a = c.addr();
                debug_assert!(a.is_some(), "a written node's children are written");
                let NodeAddr { page, delta } = a.unwrap_or_default();
                e.u16(i as u16);
                e.u48(page);
                e.u48(delta);
            }
        }
    }
    NodeHeader::seal(&mut e.buf);
    e.buf.resize(block_size, 0);
    e.buf
}

/// What a decoded node page holds before its children are resolved.
pub(crate) enum DecodedNode {
    Leaf(Vec<LeafEntry>),
    Interior(Vec<(usize, NodeAddr)>),
}

/// Decodes and verifies the node page at `page`, which must be at `level`.
pub(crate) fn decode_node(buf: &[u8], page: u64, level: u32, geo: Geometry, npages: u64) -> Result<DecodedNode> {
    let loc = || format!("tree node at page {page}");
    let hdr = NodeHeader::decode(buf, page)?;
    let (lvl, count) = (hdr.level, hdr.count);
    let mut d = Dec::new(&buf[NODE_HEADER_LEN..], "tree node");
    if lvl != level {
        return Err(Error::corruption("tree node", loc(), format!("level {lvl}, expected {level}")));
    }
    if hdr.leaf && !geo.leaf_fits(level) {
        return Err(Error::corruption("tree node", loc(), format!("a leaf at level {level}, where none can stand")));
    }
    // Indexes of a leaf's entries span its level's blocks; an interior
    // node's, its fan-out.
    let fanout = if hdr.leaf { geo.span(level) as usize } else { 1usize << geo.bits };
    let mut last: Option<usize> = None;
    let mut check_idx = |i: usize, d: &Dec<'_>| -> Result<()> {
        if i >= fanout || last.is_some_and(|l| l >= i) {
            return Err(Error::corruption(
                "tree node",
                loc(),
                format!("entry index {i} out of order at byte {}", NODE_HEADER_LEN + d.pos()),
            ));
        }
        last = Some(i);
        Ok(())
    };
    let check_page = |p: u64| -> Result<()> {
        if p == 0 || p >= npages || p > MAX_PAGE {
            return Err(Error::corruption("tree node", loc(), format!("points to page {p} outside the file")));
        }
        Ok(())
    };
    if hdr.leaf {
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let idx = d.u16()? as usize;
            check_idx(idx, &d)?;
            let p = d.u48()?;
            check_page(p)?;
            v.push(LeafEntry { idx: idx as u32, page: p, crc: d.u32()? });
        }
        Ok(DecodedNode::Leaf(v))
    } else {
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let idx = d.u16()? as usize;
            check_idx(idx, &d)?;
            let page = d.u48()?;
            check_page(page)?;
            let delta = if hdr.deltas { d.u48()? } else { 0 };
            if delta != 0 {
                let (record_page, offset) = delta::location(delta, buf.len());
                check_page(record_page)?;
                if offset < delta::PAGE_HEADER_LEN {
                    return Err(Error::corruption("tree node", loc(), format!("names delta {delta}, inside a header")));
                }
            }
            v.push((idx, NodeAddr { page, delta }));
        }
        Ok(DecodedNode::Interior(v))
    }
}

/// Builds the written node at `addr` from its decoded page with its record
/// applied, `changed` the indexes the record names: its children stay on
/// disk until something reads them.
pub(crate) fn build_node(decoded: DecodedNode, addr: NodeAddr, changed: Vec<u32>) -> Node {
    let body = match decoded {
        DecodedNode::Leaf(v) => Body::Leaf(v),
        DecodedNode::Interior(v) => Body::Interior(Children::on_disk(v)),
    };
    Node::read_at(body, addr, changed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::StorageDir;
    use crate::testing::SimDir;

    /// A space map and an (empty) node cache over a simulated file: trees
    /// built here are all dirty.
    pub(crate) fn env() -> (Space, NodeCache) {
        let f = SimDir::new().open_file("f", true).unwrap();
        let mut s = Space::new(f.clone(), 4096, 8192, 1);
        s.ensure_pages(10_000);
        (s, NodeCache::new(f, 8192, 4096, 2, 1 << 20))
    }

    const GEO: Geometry = Geometry { bits: 2, levels: 3 };

    fn map(page: u64, crc: u32) -> Mapping {
        Mapping { page, crc: Crc(crc) }
    }

    #[test]
    fn geometry_covers_the_volume() {
        assert_eq!(Geometry::for_blocks(8, 1).levels, 1);
        assert_eq!(Geometry::for_blocks(8, 256).levels, 1);
        assert_eq!(Geometry::for_blocks(8, 257).levels, 2);
        assert_eq!(Geometry::for_blocks(8, 1 << 28).levels, 4);
    }

    #[test]
    fn insert_lookup_and_overwrite_keep_refcounts() {
        let (mut s, n) = env();
        let mut root = None;
        insert(&mut root, GEO, 5, map(100, 1), &mut s, &n).unwrap();
        insert(&mut root, GEO, 63, map(101, 2), &mut s, &n).unwrap();
        assert_eq!(lookup(&root, GEO, 5, &n).unwrap(), Some(map(100, 1)));
        assert_eq!(lookup(&root, GEO, 6, &n).unwrap(), None);
        insert(&mut root, GEO, 5, map(102, 3), &mut s, &n).unwrap();
        assert_eq!(s.refcount(100).unwrap(), 0);
        assert_eq!(s.quarantine, vec![100]);
        assert_eq!(s.refcount(102).unwrap(), 1);
    }

    #[test]
    fn shared_tree_is_copied_on_write_only_along_the_path() {
        let (mut s, n) = env();
        let mut a = None;
        for lb in 0..64 {
            insert(&mut a, GEO, lb, map(200 + lb, 0), &mut s, &n).unwrap();
        }
        let snap = share(&a, &mut s);
        insert(&mut a, GEO, 0, map(999, 9), &mut s, &n).unwrap();
        assert_eq!(lookup(&snap, GEO, 0, &n).unwrap().unwrap().page, 200);
        assert_eq!(lookup(&a, GEO, 0, &n).unwrap().unwrap().page, 999);
        // The copied leaf (4 entries) referenced its pages again, minus the overwritten one.
        assert_eq!(s.refcount(201).unwrap(), 2);
        assert_eq!(s.refcount(200).unwrap(), 1);
        assert_eq!(s.refcount(210).unwrap(), 1);
        let (ra, rs) = (a.as_ref().unwrap().node(2, &n).unwrap(), snap.as_ref().unwrap().node(2, &n).unwrap());
        if let (Body::Interior(ca), Body::Interior(cs)) = (&ra.body, &rs.body) {
            assert!(ca.get(3).unwrap().same_as(cs.get(3).unwrap()));
            assert!(!ca.get(0).unwrap().same_as(cs.get(0).unwrap()));
        } else {
            panic!("root is interior");
        }
    }

    #[test]
    fn releasing_a_snapshot_frees_only_what_it_owned() {
        let (mut s, n) = env();
        let mut a = None;
        for lb in 0..64 {
            insert(&mut a, GEO, lb, map(200 + lb, 0), &mut s, &n).unwrap();
        }
        let snap = share(&a, &mut s);
        insert(&mut a, GEO, 0, map(999, 9), &mut s, &n).unwrap();
        s.quarantine.clear();
        let mut garbage: Garbage = snap.into_iter().map(|c| (c, GEO.top())).collect();
        while !release_some(&mut garbage, &mut s, &n, 3).unwrap() {}
        assert_eq!(s.quarantine, vec![200]);
        assert_eq!(s.refcount(201).unwrap(), 1);
    }

    #[test]
    fn remove_range_unmaps_and_drops_empty_nodes() {
        let (mut s, n) = env();
        let mut a = None;
        for lb in 0..64 {
            insert(&mut a, GEO, lb, map(200 + lb, 0), &mut s, &n).unwrap();
        }
        let mut g = Vec::new();
        remove_range(&mut a, GEO, 3..40, &mut s, &mut g, &n).unwrap();
        while !release_some(&mut g, &mut s, &n, 100).unwrap() {}
        let mut seen = Vec::new();
        for_each_mapping(&a, GEO, &n, |lb, _| seen.push(lb)).unwrap();
        let expect: Vec<u64> = (0..3).chain(40..64).collect();
        assert_eq!(seen, expect);
        assert_eq!(s.refcount(210).unwrap(), 0);
        remove_range(&mut a, GEO, 0..64, &mut s, &mut g, &n).unwrap();
        assert!(a.is_none());
    }

    #[test]
    fn a_scattered_write_costs_one_small_node_per_level() {
        let (mut s, n) = env();
        let geo = Geometry { bits: 8, levels: 4 };
        let mut a = None;
        insert(&mut a, geo, 1 << 30, map(300, 1), &mut s, &n).unwrap();
        let mut bytes = 0;
        visit_unique(a.iter().map(|r| (r, geo.top())), &n, |node, _, _| bytes += node.mem_bytes()).unwrap();
        // A 256-slot array per interior level alone would be 6 KiB.
        assert!(bytes < 1024, "{bytes} bytes for one mapping across 4 levels");
    }

    #[test]
    fn node_encoding_round_trips_and_rejects_damage() {
        let (mut s, n) = env();
        let mut root = None;
        let geo = Geometry { bits: 8, levels: 1 };
        for lb in [0u64, 7, 255] {
            insert(&mut root, geo, lb, map(300 + lb, lb as u32), &mut s, &n).unwrap();
        }
        let node = root.unwrap().node(0, &n).unwrap();
        let buf = encode_node(&node, 0, 42, 4096);
        let DecodedNode::Leaf(v) = decode_node(&buf, 42, 0, geo, 10_000).unwrap() else {
            panic!("leaf expected");
        };
        assert_eq!(v.len(), 3);
        assert_eq!(v[2], LeafEntry { idx: 255, page: 555, crc: 255 });
        assert!(decode_node(&buf, 43, 0, geo, 10_000).is_err(), "misdirected node accepted");
        for i in [0usize, 5, 12, 16, 30, 40] {
            let mut b = buf.clone();
            b[i] ^= 1;
            assert!(decode_node(&b, 42, 0, geo, 10_000).is_err(), "flip at {i} accepted");
        }
    }

    /// `count` blocks of one level-1 span (65,536 blocks from `base`),
    /// spread so that no two share a level-0 leaf's span.
    fn spread(base: u64, count: u64) -> Vec<u64> {
        (0..count).map(|k| base + k * 257).collect()
    }

    #[test]
    fn a_scattered_write_stops_at_a_wide_leaf_and_a_full_one_splits() {
        let (mut s, n) = env();
        let geo = Geometry { bits: 8, levels: 4 };
        let base = 1u64 << 30;
        let mut a = None;
        insert(&mut a, geo, base, map(300, 1), &mut s, &n).unwrap();
        assert_eq!(s.dirty_nodes, 3, "levels 3 and 2 interior, level 1 a leaf");
        let blocks = spread(base, 256);
        for (k, &lb) in blocks.iter().enumerate() {
            insert(&mut a, geo, lb, map(1000 + k as u64, k as u32), &mut s, &n).unwrap();
        }
        assert_eq!(s.dirty_nodes, 3, "256 blocks of one span share its wide leaf");
        // One more entry than a leaf may hold: the wide leaf becomes an
        // interior node over a leaf per level-0 span that has entries.
        insert(&mut a, geo, base + 1, map(2000, 7), &mut s, &n).unwrap();
        assert_eq!(s.dirty_nodes, 3 + 256);
        for (k, &lb) in blocks.iter().enumerate() {
            assert_eq!(lookup(&a, geo, lb, &n).unwrap(), Some(map(1000 + k as u64, k as u32)), "block {lb}");
            assert_eq!(s.refcount(1000 + k as u64).unwrap(), 1, "a split moves entries, it does not copy them");
        }
        assert_eq!(lookup(&a, geo, base + 1, &n).unwrap(), Some(map(2000, 7)));
        assert_eq!(lookup(&a, geo, base + 2, &n).unwrap(), None);
        assert_eq!(s.refcount(300).unwrap(), 0, "the first write was overwritten");
    }

    #[test]
    fn a_snapshot_keeps_its_wide_leaf_when_the_volume_splits_it_and_diff_sees_the_change() {
        let (mut s, n) = env();
        let geo = Geometry { bits: 8, levels: 3 };
        let mut a = None;
        let blocks = spread(0, 256);
        for (k, &lb) in blocks.iter().enumerate() {
            insert(&mut a, geo, lb, map(1000 + k as u64, 0), &mut s, &n).unwrap();
        }
        let snap = share(&a, &mut s);
        insert(&mut a, geo, 5, map(3000, 5), &mut s, &n).unwrap();
        insert(&mut a, geo, blocks[9], map(3001, 5), &mut s, &n).unwrap();
        assert_eq!(lookup(&snap, geo, 5, &n).unwrap(), None);
        assert_eq!(lookup(&snap, geo, blocks[9], &n).unwrap(), Some(map(1009, 0)));
        assert_eq!(lookup(&a, geo, blocks[9], &n).unwrap(), Some(map(3001, 5)));
        let mut changed = Vec::new();
        let mut counters = DiffCounters::default();
        diff_trees(&snap, &a, geo, &n, &mut counters, &mut |lb, in_b| changed.push((lb, in_b))).unwrap();
        assert_eq!(changed, vec![(5, true), (blocks[9], true)]);
    }

    #[test]
    fn wide_leaves_encode_at_their_level_and_decode_only_where_one_can_stand() {
        let (mut s, n) = env();
        let geo = Geometry { bits: 8, levels: 2 };
        let mut root = None;
        for lb in [0u64, 300, 65_535] {
            insert(&mut root, geo, lb, map(400 + lb, lb as u32), &mut s, &n).unwrap();
        }
        let node = root.unwrap().node(1, &n).unwrap();
        let buf = encode_node(&node, 1, 42, 4096);
        let DecodedNode::Leaf(v) = decode_node(&buf, 42, 1, geo, 100_000).unwrap() else {
            panic!("a wide leaf decodes as a leaf");
        };
        assert_eq!(v.iter().map(|e| e.idx).collect::<Vec<_>>(), vec![0, 300, 65_535]);
        // Where a 16-bit index cannot span the level, no leaf can stand.
        assert!(decode_node(&buf, 42, 1, Geometry { bits: 9, levels: 2 }, 100_000).is_err());
        // Unknown flags, or the wide-leaf flag at level 0, are refused even
        // under a valid CRC.
        let end = NODE_HEADER_LEN + 3 * crate::format::LEAF_ENTRY_LEN;
        for (at, value) in [(17usize, 3u8), (16, 0)] {
            let mut b = buf.clone();
            b[at] = value;
            NodeHeader::seal(&mut b[..end]);
            assert!(decode_node(&b, 42, b[16] as u32, geo, 100_000).is_err(), "byte {at} = {value} accepted");
        }
    }
}
