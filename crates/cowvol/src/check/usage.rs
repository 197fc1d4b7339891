//! The figures of `Store::stats` that only the trees can tell: bytes the
//! live volumes map, distinct and shared data blocks, tree nodes.
//!
//! They are counted on a pinned view with no lock held, so that asking for
//! them (a metrics scrape, say) never holds up I/O, reading the nodes the
//! cache lacks without keeping them (the cache goes on holding what I/O
//! uses), and in memory that
//! follows the nodes and two bits per page, not the mapped blocks: a
//! store of 10^8 blocks costs about 25 MiB of bitmaps here, where a table of
//! every data page would take gigabytes.
//!
//! The walk goes level by level from the roots down. A node is referenced
//! only from the level above it (or is a root), so by the time its level is
//! reached every reference to it has been counted, and each node is read
//! once knowing all it needs: how many trees or parents hold it (more than
//! one makes it, and everything below it, shared), and through how many
//! paths the live volumes reach it (each of its mapped blocks counts that
//! many times in the volumes' mapped bytes).

use super::PageBits;
use crate::tree::{Body, Child, Node, NodeCache};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What [`count`] finds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    /// Blocks mapped by live volumes, each volume counted in full.
    pub(super) mapped_blocks: u64,
    /// Distinct data pages the trees reference.
    pub(super) data_blocks: u64,
    /// Data pages seen by more than one tree: referenced by several
    /// leaves, or by a leaf that is itself shared.
    pub(super) shared_blocks: u64,
    /// Distinct tree nodes.
    pub(super) tree_nodes: u64,
}

/// A node waiting for its level, with what its referrers told it.
struct Waiting {
    child: Child,
    /// Roots and parent slots naming it.
    refs: u32,
    /// Whether a parent naming it is shared.
    under_shared: bool,
    /// Paths from live volumes' roots to it.
    volume_paths: u64,
}

/// A node by identity: a written node by page, a dirty one by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Page(u64),
    Dirty(*const Node),
}

/// Counts the usage of `trees` (root, level, whether a live volume's),
/// reading written nodes through `nodes`. `epoch` is the view's placement
/// epoch: a dirty node a checkpoint placed by then is its page. A node that
/// cannot be read is left out with its subtree (`check` reports it).
pub(super) fn count<'a>(
    trees: impl Iterator<Item = (&'a Child, u32, bool)>,
    nodes: &NodeCache,
    epoch: u64,
    npages: u64,
) -> Usage {
    let mut levels: BTreeMap<u32, HashMap<Key, Waiting>> = BTreeMap::new();
    for (root, level, live_volume) in trees {
        refer(&mut levels, root, level, false, u64::from(live_volume), epoch);
    }
    let mut usage = Usage::default();
    let (mut seen, mut shared) = (PageBits::new(npages), PageBits::new(npages));
    // Highest level first; each level is complete once the one above it
    // has been read.
    while let Some((level, waiting)) = levels.pop_last() {
        for w in waiting.into_values() {
            // A node not in the cache is read and not kept: this walk
            // reads each node once, and must not evict what I/O uses.
            let node = match &w.child {
                Child::Disk(a) => nodes.load_passing(*a, level),
                Child::Mem(a) => Ok(a.clone()),
            };
            let Ok(node) = node else { continue };
            usage.tree_nodes += 1;
            let is_shared = w.refs > 1 || w.under_shared;
            match &node.body {
                Body::Leaf(entries) => {
                    usage.mapped_blocks += entries.len() as u64 * w.volume_paths;
                    for e in entries {
                        if seen.set(e.page) || is_shared {
                            shared.set(e.page);
                        }
                    }
                }
                Body::Interior(children) => {
                    for c in children.refs() {
                        refer(&mut levels, c, level.saturating_sub(1), is_shared, w.volume_paths, epoch);
                    }
                }
            }
        }
    }
    usage.data_blocks = seen.count();
    usage.shared_blocks = shared.count();
    usage
}

/// Notes one reference to `c` at `level`.
fn refer(
    levels: &mut BTreeMap<u32, HashMap<Key, Waiting>>,
    c: &Child,
    level: u32,
    under_shared: bool,
    volume_paths: u64,
    epoch: u64,
) {
    let (key, child) = match c {
        Child::Disk(a) => (Key::Page(a.page), Child::Disk(*a)),
        Child::Mem(a) => match a.placed_by(epoch) {
            Some(p) => (Key::Page(p.page), Child::Disk(p)),
            None => (Key::Dirty(Arc::as_ptr(a)), Child::Mem(a.clone())),
        },
    };
    let w = levels.entry(level).or_default().entry(key).or_insert(Waiting {
        child,
        refs: 0,
        under_shared: false,
        volume_paths: 0,
    });
    w.refs += 1;
    w.under_shared |= under_shared;
    w.volume_paths += volume_paths;
}
