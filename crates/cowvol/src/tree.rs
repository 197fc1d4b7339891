//! Extent trees: the map from a volume's logical blocks to data pages.
//!
//! A tree is a radix tree of fixed fan-out whose nodes are shared between
//! volumes and snapshots through `Arc` (path copying, as in dm-thin or
//! btrfs). Taking a snapshot or fork copies a root pointer; the first write
//! under a shared node copies the nodes on its path and nothing else.
//!
//! Reference counting has two halves:
//! - a node's reference count is its `Arc` strong count; every `Arc<Node>`
//!   lives in a tree, the garbage list, or a checkpoint's captured roots, and
//!   is created and dropped only under the store's state lock;
//! - a data page's reference count (in [`Space`]) is the number of distinct
//!   leaves that contain it. Copying a leaf adds one to each of its pages;
//!   a leaf freed for good subtracts one.
//!
//! Every node has a stable identity on disk once a checkpoint has written
//! it (`addr`, its page). Invariant: a node with a non-zero `addr` has a
//! subtree identical to what is on disk at that page, because any change
//! below it goes through [`make_mut`] on every node of the path, which
//! clears the address. Two trees can therefore be compared by skipping
//! equal addresses, and a checkpoint writes only nodes without one.

mod diff;

pub(crate) use diff::{diff_trees, DiffCounters};

use crate::error::{Error, Result};
use crate::format::{Crc, Dec, Enc, NodeHeader, MAX_PAGE, NODE_HEADER_LEN};
use crate::space::Space;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

#[derive(Debug)]
pub(crate) enum Body {
    /// Sorted by `idx`; only mapped blocks have an entry.
    Leaf(Vec<LeafEntry>),
    /// The children that exist, by index.
    Interior(Children),
}

/// An interior node's children: only the slots that hold a subtree, sorted
/// by index. A scattered write on a large sparse volume creates one child
/// per level, so storing the empty slots of a 256-way node would cost
/// kilobytes per write; this costs 16 bytes per child.
#[derive(Debug, Clone, Default)]
pub(crate) struct Children(Vec<(u16, Arc<Node>)>);

impl Children {
    /// The child at index `i`. In a full node (the common case for dense
    /// data) it sits at position `i`; otherwise a binary search finds it.
    pub(crate) fn get(&self, i: usize) -> Option<&Arc<Node>> {
        match self.0.get(i) {
            Some((x, c)) if *x as usize == i => Some(c),
            _ => self.position(i).ok().map(|p| &self.0[p].1),
        }
    }

    fn position(&self, i: usize) -> std::result::Result<usize, usize> {
        self.0.binary_search_by_key(&i, |(x, _)| *x as usize)
    }

    /// The child at index `i`, created by `make` when it is missing.
    fn get_or_insert_with(&mut self, i: usize, make: impl FnOnce() -> Arc<Node>) -> &mut Arc<Node> {
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
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Arc<Node>)> {
        self.0.iter().map(|(i, c)| (*i as usize, c))
    }

    /// Every child, in index order.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.0.iter().map(|(_, c)| c)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn into_nodes(self) -> impl Iterator<Item = Arc<Node>> {
        self.0.into_iter().map(|(_, c)| c)
    }

    /// Runs `f` on the slot of each child whose index is in `range`; a slot
    /// that `f` empties is removed.
    fn retain_in(&mut self, range: std::ops::Range<usize>, mut f: impl FnMut(usize, &mut Root)) {
        let from = self.0.partition_point(|(x, _)| (*x as usize) < range.start);
        let to = self.0.partition_point(|(x, _)| (*x as usize) < range.end);
        let mut kept = Vec::with_capacity(to - from);
        for (i, c) in self.0.drain(from..to).collect::<Vec<_>>() {
            let mut slot = Some(c);
            f(i as usize, &mut slot);
            kept.extend(slot.map(|c| (i, c)));
        }
        self.0.splice(from..from, kept);
    }

    /// Children from decoded `(index, node)` pairs in ascending index order.
    fn from_sorted(children: Vec<(usize, Arc<Node>)>) -> Children {
        debug_assert!(children.windows(2).all(|w| w[0].0 < w[1].0));
        Children(children.into_iter().map(|(i, c)| (i as u16, c)).collect())
    }
}

#[derive(Debug)]
pub(crate) struct Node {
    /// Page holding this node on disk, 0 when it has not been written.
    addr: AtomicU64,
    pub(crate) body: Body,
}

pub(crate) type Root = Option<Arc<Node>>;

impl Node {
    fn empty(level: u32) -> Node {
        let body = if level == 0 { Body::Leaf(Vec::new()) } else { Body::Interior(Children::default()) };
        Node { addr: AtomicU64::new(0), body }
    }

    pub(crate) fn addr(&self) -> u64 {
        self.addr.load(Ordering::Acquire)
    }

    pub(crate) fn set_addr(&self, page: u64) {
        self.addr.store(page, Ordering::Release);
    }

    fn is_empty(&self) -> bool {
        match &self.body {
            Body::Leaf(v) => v.is_empty(),
            Body::Interior(c) => c.is_empty(),
        }
    }

    /// Bytes this node occupies in memory (for stats).
    pub(crate) fn mem_bytes(&self) -> usize {
        std::mem::size_of::<Node>()
            + 16
            + match &self.body {
                Body::Leaf(v) => v.capacity() * std::mem::size_of::<LeafEntry>(),
                Body::Interior(c) => c.0.capacity() * std::mem::size_of::<(u16, Arc<Node>)>(),
            }
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
}

/// Returns the mapping of `lblock`, if it is mapped.
pub(crate) fn lookup(root: &Root, geo: Geometry, lblock: u64) -> Option<Mapping> {
    let mut node = root.as_deref()?;
    let mut level = geo.levels - 1;
    loop {
        match &node.body {
            Body::Interior(children) => {
                node = children.get(geo.index(lblock, level))?;
                level -= 1;
            }
            Body::Leaf(entries) => {
                let idx = geo.index(lblock, 0) as u32;
                let i = find_entry(entries, idx).ok()?;
                let e = entries[i];
                return Some(Mapping { page: e.page, crc: Crc(e.crc) });
            }
        }
    }
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

/// Appends to `out` the mapping of each block `first..first + n`, in order.
/// Descends once per leaf (or per missing subtree) rather than once per
/// block.
pub(crate) fn lookup_range(root: &Root, geo: Geometry, first: u64, n: u64, out: &mut Vec<Option<Mapping>>) {
    let end = first + n;
    let mask = geo.fanout() as u64 - 1;
    let mut lb = first;
    out.reserve(n as usize);
    while lb < end {
        let mut level = geo.levels - 1;
        let mut node = root.as_deref();
        let leaf = loop {
            match node {
                None => break None,
                Some(nd) => match &nd.body {
                    Body::Interior(children) => {
                        node = children.get(geo.index(lb, level)).map(|c| &**c);
                        level -= 1;
                    }
                    Body::Leaf(entries) => break Some(entries),
                },
            }
        };
        match leaf {
            None => {
                // No node at `level` covers `lb`: its whole span is unmapped.
                let span = geo.span(level);
                let stop = (lb - lb % span).saturating_add(span).min(end);
                out.extend((lb..stop).map(|_| None));
                lb = stop;
            }
            Some(entries) => {
                let stop = ((lb | mask) + 1).min(end);
                let mut p = entries.partition_point(|e| (e.idx as u64) < (lb & mask));
                for b in lb..stop {
                    let idx = (b & mask) as u32;
                    match entries.get(p) {
                        Some(e) if e.idx == idx => {
                            out.push(Some(Mapping { page: e.page, crc: Crc(e.crc) }));
                            p += 1;
                        }
                        _ => out.push(None),
                    }
                }
                lb = stop;
            }
        }
    }
}

/// Gives write access to the node in `slot`, copying it first when it is
/// shared. A copied leaf adds a reference to each of its pages. A node
/// changed in place loses its disk identity, and its old page becomes
/// obsolete.
///
/// Invariant kept here: `space.dirty_nodes` is at least the number of nodes
/// without a disk address, because each of them needs a page at the next
/// checkpoint and the metadata reserve must hold one for it. A copy is a
/// new such node, and so is a written node changed in place (its old page
/// stays in use until the checkpoint is durable).
fn make_mut<'a>(slot: &'a mut Arc<Node>, space: &mut Space) -> &'a mut Node {
    if Arc::get_mut(slot).is_none() {
        space.dirty_nodes += 1;
        let body = match &slot.body {
            Body::Leaf(v) => {
                for e in v {
                    space.inc(e.page);
                }
                Body::Leaf(v.clone())
            }
            Body::Interior(c) => Body::Interior(c.clone()),
        };
        *slot = Arc::new(Node { addr: AtomicU64::new(0), body });
    }
    let node = Arc::get_mut(slot).expect("unique after copy");
    let old = *node.addr.get_mut();
    if old != 0 {
        space.obsolete(old);
        space.dirty_nodes += 1;
        *node.addr.get_mut() = 0;
    }
    node
}

/// Maps `lblock` to `m`, dropping the reference of whatever it mapped before.
pub(crate) fn insert(root: &mut Root, geo: Geometry, lblock: u64, m: Mapping, space: &mut Space) {
    insert_at(root, geo, geo.levels - 1, lblock, m, space);
}

fn insert_at(slot: &mut Root, geo: Geometry, level: u32, lblock: u64, m: Mapping, space: &mut Space) {
    let arc = slot.get_or_insert_with(|| new_node(level, space));
    insert_into(arc, geo, level, lblock, m, space);
}

/// A new, empty node: it will need a page at the next checkpoint.
fn new_node(level: u32, space: &mut Space) -> Arc<Node> {
    space.dirty_nodes += 1;
    Arc::new(Node::empty(level))
}

fn insert_into(arc: &mut Arc<Node>, geo: Geometry, level: u32, lblock: u64, m: Mapping, space: &mut Space) {
    let node = make_mut(arc, space);
    let idx = geo.index(lblock, level);
    match &mut node.body {
        Body::Interior(children) => {
            let child = children.get_or_insert_with(idx, || new_node(level - 1, space));
            insert_into(child, geo, level - 1, lblock, m, space)
        }
        Body::Leaf(entries) => {
            let e = LeafEntry { idx: idx as u32, crc: m.crc.0, page: m.page };
            space.inc(m.page);
            match find_entry(entries, e.idx) {
                Ok(i) => {
                    let old = std::mem::replace(&mut entries[i], e);
                    space.dec(old.page);
                }
                Err(i) => entries.insert(i, e),
            }
        }
    }
}

/// Unmaps logical blocks `[start, end)`. Subtrees that fall wholly inside
/// the range are moved to `garbage` for release in bounded steps.
pub(crate) fn remove_range(
    root: &mut Root,
    geo: Geometry,
    start: u64,
    end: u64,
    space: &mut Space,
    garbage: &mut Vec<Arc<Node>>,
) {
    remove_at(root, geo, geo.levels - 1, 0, start, end, space, garbage);
}

#[expect(
    clippy::too_many_arguments,
    reason = "one recursive step carries the range, its position and the two lists it updates"
)]
fn remove_at(
    slot: &mut Root,
    geo: Geometry,
    level: u32,
    base: u64,
    start: u64,
    end: u64,
    space: &mut Space,
    garbage: &mut Vec<Arc<Node>>,
) {
    let span = geo.span(level);
    if slot.is_none() || end <= base || start >= base.saturating_add(span) {
        return;
    }
    if start <= base && end >= base.saturating_add(span) {
        garbage.extend(slot.take());
        return;
    }
    let node = make_mut(slot.as_mut().expect("checked"), space);
    match &mut node.body {
        Body::Interior(children) => {
            let child_span = geo.span(level - 1);
            let first = ((start.max(base) - base) / child_span) as usize;
            let last = ((end - 1).min(base.saturating_add(span) - 1) - base) / child_span;
            children.retain_in(first..last as usize + 1, |i, child| {
                let cbase = base + i as u64 * child_span;
                remove_at(child, geo, level - 1, cbase, start, end, space, garbage);
            });
        }
        Body::Leaf(entries) => entries.retain(|e| {
            let lb = base + e.idx as u64;
            let keep = lb < start || lb >= end;
            if !keep {
                space.dec(e.page);
            }
            keep
        }),
    }
    if node.is_empty() {
        // `make_mut` left it unwritten and counted: it will need no page.
        *slot = None;
        space.dirty_nodes = space.dirty_nodes.saturating_sub(1);
    }
}

/// Releases up to `budget` nodes from `garbage`: a node this list owns alone
/// gives back its pages (leaf) or hands its children to the list (interior);
/// a node still shared elsewhere is only un-referenced. Returns whether the
/// list is now empty.
pub(crate) fn release_some(garbage: &mut Vec<Arc<Node>>, space: &mut Space, mut budget: usize) -> bool {
    while budget > 0 {
        let Some(arc) = garbage.pop() else {
            return true;
        };
        budget -= 1;
        if let Ok(node) = Arc::try_unwrap(arc) {
            let addr = node.addr();
            if addr != 0 {
                space.obsolete(addr);
            } else {
                space.dirty_nodes = space.dirty_nodes.saturating_sub(1);
            }
            match node.body {
                Body::Leaf(entries) => entries.iter().for_each(|e| space.dec(e.page)),
                Body::Interior(children) => garbage.extend(children.into_nodes()),
            }
        }
    }
    garbage.is_empty()
}

/// Visits every node reachable from `roots` once, however many trees share
/// it, calling `f(node, level)`; shared subtrees are skipped after the first
/// visit.
pub(crate) fn visit_unique<'a>(roots: impl IntoIterator<Item = (&'a Node, u32)>, mut f: impl FnMut(&'a Node, u32)) {
    let mut seen: HashSet<*const Node> = HashSet::new();
    let mut stack: Vec<(&'a Node, u32)> = roots.into_iter().collect();
    while let Some((node, level)) = stack.pop() {
        if !seen.insert(node as *const Node) {
            continue;
        }
        f(node, level);
        if let Body::Interior(children) = &node.body {
            stack.extend(children.nodes().map(|c| (&**c, level.saturating_sub(1))));
        }
    }
}

/// Calls `f(lblock, mapping)` for every mapped block of one tree, in order.
pub(crate) fn for_each_mapping(root: &Root, geo: Geometry, mut f: impl FnMut(u64, Mapping)) {
    fn walk(node: &Node, geo: Geometry, level: u32, base: u64, f: &mut dyn FnMut(u64, Mapping)) {
        match &node.body {
            Body::Leaf(entries) => {
                for e in entries {
                    f(base + e.idx as u64, Mapping { page: e.page, crc: Crc(e.crc) });
                }
            }
            Body::Interior(children) => {
                let span = geo.span(level - 1);
                for (i, c) in children.iter() {
                    walk(c, geo, level - 1, base + i as u64 * span, f);
                }
            }
        }
    }
    if let Some(r) = root {
        walk(r, geo, geo.levels - 1, 0, &mut f);
    }
}

/// Appends to `out` the runs `(first_block, count)` of mapped blocks within
/// `first..first + n`, in order, merging neighbours. Missing subtrees are
/// skipped whole, so the cost follows the mapped part, not the range.
pub(crate) fn mapped_runs(root: &Root, geo: Geometry, first: u64, n: u64, out: &mut Vec<(u64, u64)>) {
    fn push(out: &mut Vec<(u64, u64)>, lb: u64) {
        match out.last_mut() {
            Some((start, len)) if *start + *len == lb => *len += 1,
            _ => out.push((lb, 1)),
        }
    }
    fn walk(node: &Node, geo: Geometry, level: u32, base: u64, range: (u64, u64), out: &mut Vec<(u64, u64)>) {
        match &node.body {
            Body::Leaf(entries) => {
                let from = entries.partition_point(|e| base + (e.idx as u64) < range.0);
                for e in &entries[from..] {
                    let lb = base + e.idx as u64;
                    if lb >= range.1 {
                        break;
                    }
                    push(out, lb);
                }
            }
            Body::Interior(children) => {
                let span = geo.span(level - 1);
                for (i, c) in children.iter() {
                    let cbase = base + i as u64 * span;
                    if cbase >= range.1 {
                        break;
                    }
                    if cbase.saturating_add(span) > range.0 {
                        walk(c, geo, level - 1, cbase, range, out);
                    }
                }
            }
        }
    }
    if let Some(r) = root {
        walk(r, geo, geo.levels - 1, 0, (first, first.saturating_add(n)), out);
    }
}

/// Bytes of data pages that only the tree at `root` holds: pages of leaves
/// reachable from it through nodes no other tree shares, and that no other
/// leaf references. Walks only the unshared part of the tree.
pub(crate) fn exclusive_pages(root: &Root, space: &Space) -> u64 {
    let mut pages = 0;
    let mut stack: Vec<&Arc<Node>> = root.iter().collect();
    while let Some(node) = stack.pop() {
        // One strong reference: this tree's own parent (or root) slot.
        if Arc::strong_count(node) != 1 {
            continue;
        }
        match &node.body {
            Body::Leaf(entries) => pages += entries.iter().filter(|e| space.refcount(e.page) == 1).count() as u64,
            Body::Interior(children) => stack.extend(children.nodes()),
        }
    }
    pages
}

// ------------------------------------------------------------ disk encoding

/// Encodes a node into one page. Children must already have addresses.
pub(crate) fn encode_node(node: &Node, level: u32, page: u64, block_size: usize) -> Vec<u8> {
    let mut e = Enc::with_capacity(block_size);
    let count = match &node.body {
        Body::Leaf(entries) => entries.len(),
        Body::Interior(children) => children.len(),
    };
    NodeHeader { page, level, count }.encode(&mut e);
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
                debug_assert!(c.addr() != 0, "child written before parent");
                e.u16(i as u16);
                e.u48(c.addr());
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
    Interior(Vec<(usize, u64)>),
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
    let fanout = 1usize << geo.bits;
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
    if level == 0 {
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
            let p = d.u48()?;
            check_page(p)?;
            v.push((idx, p));
        }
        Ok(DecodedNode::Interior(v))
    }
}

/// Builds a node from its decoded parts (recovery).
/// `children` come in ascending index order, as `decode_node` checked.
pub(crate) fn build_node(decoded: DecodedNode, children: Vec<(usize, Arc<Node>)>, page: u64) -> Node {
    let body = match decoded {
        DecodedNode::Leaf(v) => Body::Leaf(v),
        DecodedNode::Interior(_) => Body::Interior(Children::from_sorted(children)),
    };
    Node { addr: AtomicU64::new(page), body }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StorageDir;
    use crate::testing::SimDir;

    fn space() -> Space {
        let f = SimDir::new().open_file("f", true).unwrap();
        let mut s = Space::new(f, 4096, 8192, 1);
        s.ensure_pages(10_000);
        s
    }

    const GEO: Geometry = Geometry { bits: 2, levels: 3 };

    #[test]
    fn geometry_covers_the_volume() {
        assert_eq!(Geometry::for_blocks(8, 1).levels, 1);
        assert_eq!(Geometry::for_blocks(8, 256).levels, 1);
        assert_eq!(Geometry::for_blocks(8, 257).levels, 2);
        assert_eq!(Geometry::for_blocks(8, 1 << 28).levels, 4);
    }

    #[test]
    fn insert_lookup_and_overwrite_keep_refcounts() {
        let mut s = space();
        let mut root = None;
        insert(&mut root, GEO, 5, Mapping { page: 100, crc: Crc(1) }, &mut s);
        insert(&mut root, GEO, 63, Mapping { page: 101, crc: Crc(2) }, &mut s);
        assert_eq!(lookup(&root, GEO, 5), Some(Mapping { page: 100, crc: Crc(1) }));
        assert_eq!(lookup(&root, GEO, 6), None);
        insert(&mut root, GEO, 5, Mapping { page: 102, crc: Crc(3) }, &mut s);
        assert_eq!(s.refcount(100), 0);
        assert_eq!(s.quarantine, vec![100]);
        assert_eq!(s.refcount(102), 1);
    }

    #[test]
    fn shared_tree_is_copied_on_write_only_along_the_path() {
        let mut s = space();
        let mut a = None;
        for lb in 0..64 {
            insert(&mut a, GEO, lb, Mapping { page: 200 + lb, crc: Crc(0) }, &mut s);
        }
        let snap = a.clone();
        insert(&mut a, GEO, 0, Mapping { page: 999, crc: Crc(9) }, &mut s);
        assert_eq!(lookup(&snap, GEO, 0).unwrap().page, 200);
        assert_eq!(lookup(&a, GEO, 0).unwrap().page, 999);
        // The copied leaf (4 entries) referenced its pages again, minus the overwritten one.
        assert_eq!(s.refcount(201), 2);
        assert_eq!(s.refcount(200), 1);
        assert_eq!(s.refcount(210), 1);
        let (ra, rs) = (a.as_ref().unwrap(), snap.as_ref().unwrap());
        if let (Body::Interior(ca), Body::Interior(cs)) = (&ra.body, &rs.body) {
            assert!(Arc::ptr_eq(ca.get(3).unwrap(), cs.get(3).unwrap()));
            assert!(!Arc::ptr_eq(ca.get(0).unwrap(), cs.get(0).unwrap()));
        } else {
            panic!("root is interior");
        }
    }

    #[test]
    fn releasing_a_snapshot_frees_only_what_it_owned() {
        let mut s = space();
        let mut a = None;
        for lb in 0..64 {
            insert(&mut a, GEO, lb, Mapping { page: 200 + lb, crc: Crc(0) }, &mut s);
        }
        let snap = a.clone();
        insert(&mut a, GEO, 0, Mapping { page: 999, crc: Crc(9) }, &mut s);
        s.quarantine.clear();
        let mut garbage: Vec<_> = snap.into_iter().collect();
        while !release_some(&mut garbage, &mut s, 3) {}
        assert_eq!(s.quarantine, vec![200]);
        assert_eq!(s.refcount(201), 1);
    }

    #[test]
    fn remove_range_unmaps_and_drops_empty_nodes() {
        let mut s = space();
        let mut a = None;
        for lb in 0..64 {
            insert(&mut a, GEO, lb, Mapping { page: 200 + lb, crc: Crc(0) }, &mut s);
        }
        let mut g = Vec::new();
        remove_range(&mut a, GEO, 3, 40, &mut s, &mut g);
        while !release_some(&mut g, &mut s, 100) {}
        let mut seen = Vec::new();
        for_each_mapping(&a, GEO, |lb, _| seen.push(lb));
        let expect: Vec<u64> = (0..3).chain(40..64).collect();
        assert_eq!(seen, expect);
        assert_eq!(s.refcount(210), 0);
        remove_range(&mut a, GEO, 0, 64, &mut s, &mut g);
        assert!(a.is_none());
    }

    #[test]
    fn node_encoding_round_trips_and_rejects_damage() {
        let mut s = space();
        let mut root = None;
        let geo = Geometry { bits: 8, levels: 1 };
        for lb in [0u64, 7, 255] {
            insert(&mut root, geo, lb, Mapping { page: 300 + lb, crc: Crc(lb as u32) }, &mut s);
        }
        let node = root.unwrap();
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
}
