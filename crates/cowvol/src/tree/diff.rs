//! Comparing two extent trees in time proportional to what differs.
//!
//! Trees that share history share nodes: a snapshot, a fork and the volume
//! they came from hold the same reference (the same written page, or the
//! same dirty node) for every subtree no write has touched since. The walk
//! descends both trees together and stops at every pair of references that
//! name the same subtree, so it visits only the paths that lead to a change,
//! whatever the size of the volume. Nodes it does visit are read through the
//! node cache.

use super::{Body, Child, Children, Geometry, LeafEntry, Node, NodeCache, Root};
use crate::error::Result;
use std::cmp::Ordering;
use std::sync::Arc;

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
    nodes: &NodeCache,
    counters: &mut DiffCounters,
    changed: &mut dyn FnMut(u64, bool),
) -> Result<()> {
    let mut w = Walk { geo, nodes, counters, changed };
    w.pair(a.as_ref(), b.as_ref(), geo.top(), 0)
}

struct Walk<'c> {
    geo: Geometry,
    nodes: &'c NodeCache,
    counters: &'c mut DiffCounters,
    changed: &'c mut dyn FnMut(u64, bool),
}

impl Walk<'_> {
    /// Compares the subtrees covering blocks `base..` at `level`.
    fn pair(&mut self, a: Option<&Child>, b: Option<&Child>, level: u32, base: u64) -> Result<()> {
        match (a, b) {
            (None, None) => {}
            (Some(x), Some(y)) if x.same_as(y) => self.counters.shared_skipped += 1,
            (Some(x), None) => {
                let x = x.node(level, self.nodes)?;
                self.whole(&x, level, base, false)?;
            }
            (None, Some(y)) => {
                let y = y.node(level, self.nodes)?;
                self.whole(&y, level, base, true)?;
            }
            (Some(x), Some(y)) => {
                let (x, y) = (x.node(level, self.nodes)?, y.node(level, self.nodes)?);
                self.both(&x, &y, level, base)?;
            }
        }
        Ok(())
    }

    fn both(&mut self, x: &Arc<Node>, y: &Arc<Node>, level: u32, base: u64) -> Result<()> {
        self.counters.nodes_visited += 2;
        match (&x.body, &y.body) {
            (Body::Interior(ca), Body::Interior(cb)) if level > 0 => {
                let span = self.geo.span(level - 1);
                for (i, ca, cb) in zip_children(ca, cb) {
                    self.pair(ca, cb, level - 1, base + i as u64 * span)?;
                }
            }
            (Body::Leaf(ea), Body::Leaf(eb)) => self.leaves(ea, eb, base),
            // A wide leaf on one side and the interior node its split left
            // on the other (a snapshot taken before the split): compare
            // every mapping of the span, at most 65,536 blocks.
            _ => {
                let (mut ma, mut mb) = (Vec::new(), Vec::new());
                flatten(x, self.geo, level, base, self.nodes, &mut ma)?;
                flatten(y, self.geo, level, base, self.nodes, &mut mb)?;
                self.merge(&ma, &mb);
            }
        }
        Ok(())
    }

    /// A subtree only one side has: every block it maps differs.
    fn whole(&mut self, node: &Node, level: u32, base: u64, in_b: bool) -> Result<()> {
        self.counters.nodes_visited += 1;
        match &node.body {
            Body::Leaf(entries) => entries.iter().for_each(|e| (self.changed)(base + e.idx as u64, in_b)),
            Body::Interior(children) if level > 0 => {
                let span = self.geo.span(level - 1);
                for (i, c) in children.iter() {
                    let child = c.node(level - 1, self.nodes)?;
                    self.whole(&child, level - 1, base + i as u64 * span, in_b)?;
                }
            }
            Body::Interior(_) => {}
        }
        Ok(())
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
fn zip_children<'a>(a: &'a Children, b: &'a Children) -> Vec<(usize, Option<&'a Child>, Option<&'a Child>)> {
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
        let ca = if take_a { ia.next().map(|(_, c)| c) } else { None };
        let cb = if take_b { ib.next().map(|(_, c)| c) } else { None };
        out.push((i, ca, cb));
    }
}

/// Appends `(lblock, page)` for every block the subtree maps, in order.
fn flatten(
    node: &Node,
    geo: Geometry,
    level: u32,
    base: u64,
    nodes: &NodeCache,
    out: &mut Vec<(u64, u64)>,
) -> Result<()> {
    match &node.body {
        Body::Leaf(entries) => out.extend(entries.iter().map(|e| (base + e.idx as u64, e.page))),
        Body::Interior(children) if level > 0 => {
            let span = geo.span(level - 1);
            for (i, c) in children.iter() {
                let child = c.node(level - 1, nodes)?;
                flatten(&child, geo, level - 1, base + i as u64 * span, nodes, out)?;
            }
        }
        Body::Interior(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::super::{insert, remove_range, share, Mapping};
    use super::*;
    use crate::format::Crc;

    const GEO: Geometry = Geometry { bits: 2, levels: 3 };

    fn diff(a: &Root, b: &Root, n: &NodeCache) -> (Vec<(u64, bool)>, DiffCounters) {
        let mut out = Vec::new();
        let mut c = DiffCounters::default();
        diff_trees(a, b, GEO, n, &mut c, &mut |lb, data| out.push((lb, data))).unwrap();
        (out, c)
    }

    #[test]
    fn a_tree_and_its_copy_differ_only_where_written() {
        let (mut s, n) = env();
        let mut a = None;
        for lb in 0..64 {
            insert(&mut a, GEO, lb, Mapping { page: 100 + lb, crc: Crc(0) }, &mut s, &n).unwrap();
        }
        let snap = share(&a, &mut s);
        let (same, c) = diff(&snap, &a, &n);
        assert!(same.is_empty());
        assert_eq!((c.nodes_visited, c.shared_skipped), (0, 1));
        insert(&mut a, GEO, 9, Mapping { page: 999, crc: Crc(1) }, &mut s, &n).unwrap();
        let mut g = Vec::new();
        remove_range(&mut a, GEO, 40..42, &mut s, &mut g, &n).unwrap();
        let (d, c) = diff(&snap, &a, &n);
        assert_eq!(d, vec![(9, true), (40, false), (41, false)]);
        // Two paths of three levels each, both sides; the rest is skipped.
        assert_eq!(c.nodes_visited, 2 * (3 + 2));
        let (back, _) = diff(&a, &snap, &n);
        assert_eq!(back, vec![(9, true), (40, true), (41, true)]);
    }

    #[test]
    fn a_subtree_on_one_side_only_reports_each_of_its_blocks() {
        let (mut s, n) = env();
        let mut a = None;
        insert(&mut a, GEO, 3, Mapping { page: 7, crc: Crc(0) }, &mut s, &n).unwrap();
        let mut b = share(&a, &mut s);
        insert(&mut b, GEO, 60, Mapping { page: 8, crc: Crc(0) }, &mut s, &n).unwrap();
        insert(&mut b, GEO, 62, Mapping { page: 9, crc: Crc(0) }, &mut s, &n).unwrap();
        assert_eq!(diff(&a, &b, &n).0, vec![(60, true), (62, true)]);
        assert_eq!(diff(&b, &None, &n).0, vec![(3, false), (60, false), (62, false)]);
    }
}
