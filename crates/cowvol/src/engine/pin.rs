//! Pinned views: every tree of the store as it was at one instant, held
//! without the state lock, so that `check` and `scrub` can walk them and
//! read their pages beside I/O.
//!
//! A node that more than one owner holds never changes: `tree::make_mut`
//! copies a shared node before a change. So cloning every root under the
//! state lock pins a consistent view of all trees in O(number of trees),
//! and the view can then be walked with no lock held. While a view is held:
//! - no node in it changes, and the page of a written node in it is not
//!   made obsolete (that happens only when the node itself is taken apart
//!   or changed in place, which needs the last reference);
//! - every data page a leaf in it references keeps a reference count above
//!   zero, so it is neither quarantined nor reused.
//!
//! The cost falls on writers and on space: the first write under a pinned
//! node copies its path (as after a snapshot), and pages overwritten while
//! the view is held are freed only after it is released. Views are held
//! for one check or one planning walk, so that is bounded by their length.
//!
//! Every view is registered in `State::pins` while it lives: the nodes
//! only a view keeps alive still count in `Space`'s reference counts, so a
//! later view (a second check running at the same time) must see them too.

use super::{Engine, State};
use crate::tree::Node;
use std::sync::Arc;

/// A tree root with its level; garbage roots, whose level is not kept,
/// carry `u32::MAX` (walks use the level only below interior nodes).
pub(crate) type PinnedRoot = (Arc<Node>, u32);

/// The trees as they were when [`Engine::pin`] ran. Dropping it hands its
/// references to the garbage list (under the state lock, where every
/// `Arc<Node>` is dropped) and releases what only it kept alive.
pub(crate) struct PinnedView<'a> {
    engine: &'a Engine,
    id: u64,
    roots: Vec<PinnedRoot>,
}

impl PinnedView<'_> {
    /// Every pinned root with its level, to hand to a tree walk.
    pub(crate) fn roots(&self) -> impl Iterator<Item = (&Node, u32)> {
        self.roots.iter().map(|(n, level)| (&**n, *level))
    }
}

impl Engine {
    /// Pins every tree reachable from `st`: volumes, snapshots, templates,
    /// garbage not yet released, and other views. Cost: one `Arc` clone per
    /// root, under the lock the caller holds.
    pub(crate) fn pin<'a>(&'a self, st: &mut State) -> PinnedView<'a> {
        let mut roots: Vec<PinnedRoot> = Vec::new();
        let trees = st.volumes.values().map(|e| (&e.root, e.geo)).chain(
            st.snapshots.values().map(|e| (&e.root, e.geo)).chain(st.templates.values().map(|e| (&e.root, e.geo))),
        );
        for (root, geo) in trees {
            roots.extend(root.clone().map(|r| (r, geo.levels - 1)));
        }
        roots.extend(st.garbage.iter().map(|n| (n.clone(), u32::MAX)));
        for other in st.pins.values() {
            roots.extend(other.iter().cloned());
        }
        let id = st.next_pin;
        st.next_pin += 1;
        st.pins.insert(id, roots.clone());
        PinnedView { engine: self, id, roots }
    }
}

impl Drop for PinnedView<'_> {
    fn drop(&mut self) {
        {
            let mut st = self.engine.state.lock();
            let registered = st.pins.remove(&self.id).unwrap_or_default();
            st.garbage.extend(registered.into_iter().map(|(n, _)| n));
            st.garbage.extend(self.roots.drain(..).map(|(n, _)| n));
        }
        self.engine.reclaim();
    }
}
