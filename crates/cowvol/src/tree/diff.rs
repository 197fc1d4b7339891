//! Comparing two extent trees in time proportional to what differs.
//!
//! Trees that share history share nodes: a snapshot, a fork and the volume
//! they came from hold the same `Arc<Node>` for every subtree no write has
//! touched since, and a subtree read back from a checkpoint keeps the page
//! it was written at (`addr`), which the invariant in `tree` ties to its
//! contents. The walk descends both trees together and stops at every pair
//! of nodes that is the same subtree by either test, so it visits only the
//! paths that lead to a change, whatever the size of the volume.

use super::{Body, Children, Geometry, LeafEntry, Node, Root};
use std::cmp::Ordering;

/// What one walk cost, so that tests and benchmarks can check the cost
/// without timing anything.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiffCounters {
    /// Nodes looked at, on either side.
    pub(crate) nodes_visited: u64,
    /// Pairs of subtrees skipped because they are the same subtree.
    pub(crate) shared_skipped: u64,
}

/// Calls `changed(lblock, mapped_in_b)` for every logical block whose
/// mapping differs between trees `a` and `b` (mapped in one of them only,
/// or to different pages), in ascending order. Both trees have geometry
/// `geo`. Two entries that name the same page are equal: a page is never
/// written in place, so it holds the same bytes for every tree that maps it.
pub(crate) fn diff_trees(
    a: &Root,
    b: &Root,
    geo: Geometry,
    counters: &mut DiffCounters,
    changed: &mut dyn FnMut(u64, bool),
) {
    let mut w = Walk { geo, counters, changed };
    w.pair(a.as_deref(), b.as_deref(), geo.levels - 1, 0);
}

/// Whether two nodes are known to be one subtree: the same node in memory,
/// or read from the same page of a checkpoint.
fn same_subtree(x: &Node, y: &Node) -> bool {
    if std::ptr::eq(x, y) {
        return true;
    }
    let addr = x.addr();
    addr != 0 && addr == y.addr()
}

struct Walk<'c> {
    geo: Geometry,
    counters: &'c mut DiffCounters,
    changed: &'c mut dyn FnMut(u64, bool),
}

impl Walk<'_> {
    /// Compares the subtrees covering blocks `base..` at `level`.
    fn pair(&mut self, a: Option<&Node>, b: Option<&Node>, level: u32, base: u64) {
        match (a, b) {
            (None, None) => {}
            (Some(x), Some(y)) if same_subtree(x, y) => self.counters.shared_skipped += 1,
            (Some(x), None) => self.whole(x, level, base, false),
            (None, Some(y)) => self.whole(y, level, base, true),
            (Some(x), Some(y)) => {
                self.counters.nodes_visited += 2;
                match (&x.body, &y.body) {
                    (Body::Interior(ca), Body::Interior(cb)) if level > 0 => {
                        let span = self.geo.span(level - 1);
                        for (i, ca, cb) in zip_children(ca, cb) {
                            self.pair(ca, cb, level - 1, base + i as u64 * span);
                        }
                    }
                    (Body::Leaf(ea), Body::Leaf(eb)) => self.leaves(ea, eb, base),
                    // Trees built by this module never mix shapes at one
                    // level; if they did, comparing every mapping of both
                    // still gives the right answer.
                    _ => {
                        let (mut ma, mut mb) = (Vec::new(), Vec::new());
                        flatten(x, self.geo, level, base, &mut ma);
                        flatten(y, self.geo, level, base, &mut mb);
                        self.merge(&ma, &mb);
                    }
                }
            }
        }
    }

    /// A subtree only one side has: every block it maps differs.
    fn whole(&mut self, node: &Node, level: u32, base: u64, in_b: bool) {
        self.counters.nodes_visited += 1;
        match &node.body {
            Body::Leaf(entries) => entries.iter().for_each(|e| (self.changed)(base + e.idx as u64, in_b)),
            Body::Interior(children) if level > 0 => {
                let span = self.geo.span(level - 1);
                for (i, c) in children.iter() {
                    self.whole(c, level - 1, base + i as u64 * span, in_b);
                }
            }
            Body::Interior(_) => {}
        }
    }

    fn leaves(&mut self, a: &[LeafEntry], b: &[LeafEntry], base: u64) {
        let key = |e: &LeafEntry| (base + e.idx as u64, e.page);
        let ma: Vec<(u64, u64)> = a.iter().map(key).collect();
        let mb: Vec<(u64, u64)> = b.iter().map(key).collect();
        self.merge(&ma, &mb);
    }

    /// Compares two lists of `(lblock, page)` sorted by block.
    fn merge(&mut self, a: &[(u64, u64)], b: &[(u64, u64)]) {
        let (mut i, mut j) = (0, 0);
        loop {
            let step = match (a.get(i), b.get(j)) {
                (None, None) => return,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => x.0.cmp(&y.0),
            };
            match step {
                Ordering::Less => {
                    (self.changed)(a[i].0, false);
                    i += 1;
                }
                Ordering::Greater => {
                    (self.changed)(b[j].0, true);
                    j += 1;
                }
                Ordering::Equal => {
                    if a[i].1 != b[j].1 {
                        (self.changed)(b[j].0, true);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
    }
}

/// Pairs the children of two interior nodes by index, in index order, with
/// `None` where one side has no child at that index.
fn zip_children<'a>(a: &'a Children, b: &'a Children) -> Vec<(usize, Option<&'a Node>, Option<&'a Node>)> {
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    loop {
        let next = match (ia.peek(), ib.peek()) {
            (None, None) => return out,
            (Some(&(i, _)), None) => (i, true, false),
            (None, Some(&(j, _))) => (j, false, true),
            (Some(&(i, _)), Some(&(j, _))) => (i.min(j), i <= j, j <= i),
        };
        let (i, take_a, take_b) = next;
        let ca = if take_a { ia.next().map(|(_, c)| &**c) } else { None };
        let cb = if take_b { ib.next().map(|(_, c)| &**c) } else { None };
        out.push((i, ca, cb));
    }
}

/// Appends `(lblock, page)` for every block the subtree maps, in order.
fn flatten(node: &Node, geo: Geometry, level: u32, base: u64, out: &mut Vec<(u64, u64)>) {
    match &node.body {
        Body::Leaf(entries) => out.extend(entries.iter().map(|e| (base + e.idx as u64, e.page))),
        Body::Interior(children) if level > 0 => {
            let span = geo.span(level - 1);
            for (i, c) in children.iter() {
                flatten(c, geo, level - 1, base + i as u64 * span, out);
            }
        }
        Body::Interior(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::{insert, remove_range, Mapping};
    use super::*;
    use crate::backend::StorageDir;
    use crate::format::Crc;
    use crate::space::Space;
    use crate::testing::SimDir;

    const GEO: Geometry = Geometry { bits: 2, levels: 3 };

    fn space() -> Space {
        let f = SimDir::new().open_file("f", true).unwrap();
        let mut s = Space::new(f, 4096, 8192, 1);
        s.ensure_pages(10_000);
        s
    }

    fn diff(a: &Root, b: &Root) -> (Vec<(u64, bool)>, DiffCounters) {
        let mut out = Vec::new();
        let mut c = DiffCounters::default();
        diff_trees(a, b, GEO, &mut c, &mut |lb, data| out.push((lb, data)));
        (out, c)
    }

    #[test]
    fn a_tree_and_its_copy_differ_only_where_written() {
        let mut s = space();
        let mut a = None;
        for lb in 0..64 {
            insert(&mut a, GEO, lb, Mapping { page: 100 + lb, crc: Crc(0) }, &mut s);
        }
        let snap = a.clone();
        let (same, c) = diff(&snap, &a);
        assert!(same.is_empty());
        assert_eq!((c.nodes_visited, c.shared_skipped), (0, 1));
        insert(&mut a, GEO, 9, Mapping { page: 999, crc: Crc(1) }, &mut s);
        let mut g = Vec::new();
        remove_range(&mut a, GEO, 40, 42, &mut s, &mut g);
        let (d, c) = diff(&snap, &a);
        assert_eq!(d, vec![(9, true), (40, false), (41, false)]);
        // Two paths of three levels each, both sides; the rest is skipped.
        assert_eq!(c.nodes_visited, 2 * (3 + 2));
        let (back, _) = diff(&a, &snap);
        assert_eq!(back, vec![(9, true), (40, true), (41, true)]);
    }

    #[test]
    fn a_subtree_on_one_side_only_reports_each_of_its_blocks() {
        let mut s = space();
        let mut a = None;
        insert(&mut a, GEO, 3, Mapping { page: 7, crc: Crc(0) }, &mut s);
        let mut b = a.clone();
        insert(&mut b, GEO, 60, Mapping { page: 8, crc: Crc(0) }, &mut s);
        insert(&mut b, GEO, 62, Mapping { page: 9, crc: Crc(0) }, &mut s);
        assert_eq!(diff(&a, &b).0, vec![(60, true), (62, true)]);
        assert_eq!(diff(&b, &None).0, vec![(3, false), (60, false), (62, false)]);
    }
}
