//! Pinned views: every tree of the store as it was at one instant, held
//! without the state lock, so that `check` and `scrub` can walk them and
//! read their pages beside I/O.
//!
//! A view holds a copy of every tree root (and of the garbage list's
//! references): a written node by its page, a dirty node by its `Arc`.
//! Neither kind changes while the view holds it: written nodes never
//! change, and `tree::make_mut` copies a dirty node another owner holds.
//! A view's page references are not counted in the space map; instead,
//! while any view lives, no page is reused: a checkpoint that would free
//! quarantined or obsolete pages keeps them for a later one (see
//! `Engine::release_freed`). So every page a view reaches keeps its
//! contents until the view is dropped, and its nodes can be read, through
//! the node cache, with no lock held. Dirty nodes a view holds keep their
//! children and data pages referenced, as any owner of a dirty node does.
//!
//! Every view is registered in `State::pins` while it lives, with the
//! dirty nodes it holds: those still count in the space map's reference
//! counts (their leaves reference data pages), so a later view (a second
//! check running at the same time) must walk them too. Its written pages
//! are not registered: a written node no tree references any more has
//! already given its references back.

use super::{Engine, State};
use crate::tree::{Child, NodeCache};
use std::sync::Arc;

/// A tree root with its level.
pub(crate) type PinnedRoot = (Child, u32);

/// The trees as they were when [`Engine::pin`] ran. Dropping it hands its
/// dirty nodes to the garbage list (under the state lock) and releases
/// what only it kept alive.
pub(crate) struct PinnedView<'a> {
    engine: &'a Engine,
    id: u64,
    /// Copies of the trees' roots and the garbage list's references: each
    /// stands for a reference the space map counts. The trees' roots come
    /// first: the live volumes' (`volumes` of them), then the snapshots'
    /// and the templates' (`trees` in all).
    counted: Vec<PinnedRoot>,
    volumes: usize,
    trees: usize,
    /// Other views' dirty nodes: they own references (their leaves' data
    /// pages, their children), but no count stands for them.
    extra: Vec<PinnedRoot>,
    nodes: Arc<NodeCache>,
    /// The last checkpoint placement before the view was taken.
    epoch: u64,
}

impl PinnedView<'_> {
    /// Every pinned root with its level, to hand to a tree walk.
    pub(crate) fn roots(&self) -> impl Iterator<Item = (&Child, u32)> {
        self.counted.iter().chain(&self.extra).map(|(c, level)| (c, *level))
    }

    /// Every pinned root with its level and whether a counted reference
    /// stands for it (see the fields).
    pub(crate) fn roots_counted(&self) -> impl Iterator<Item = (&Child, u32, bool)> {
        let counted = self.counted.iter().map(|(c, level)| (c, *level, true));
        counted.chain(self.extra.iter().map(|(c, level)| (c, *level, false)))
    }

    /// The roots of the volumes, snapshots and templates (not the garbage
    /// list's, nor other views'), each with its level and whether it is a
    /// live volume's.
    pub(crate) fn tree_roots(&self) -> impl Iterator<Item = (&Child, u32, bool)> {
        self.counted[..self.trees].iter().enumerate().map(|(i, (c, level))| (c, *level, i < self.volumes))
    }

    /// The last checkpoint placement before the view was taken: a dirty node
    /// placed by it or earlier is its page to this view; one placed later is
    /// still the dirty node it was when the view was taken.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The node cache to read the view's written nodes through.
    pub(crate) fn nodes(&self) -> &NodeCache {
        &self.nodes
    }
}

/// A view's own reference: a page as it is (uncounted), a dirty node's
/// `Arc` cloned.
fn view_ref(c: &Child) -> Child {
    match c {
        Child::Disk(p) => Child::Disk(*p),
        Child::Mem(a) => Child::Mem(a.clone()),
    }
}

impl Engine {
    /// Pins every tree reachable from `st`: volumes, snapshots, templates,
    /// garbage not yet released, and other views' dirty nodes. Cost: one
    /// root copy per tree, under the lock the caller holds.
    pub(crate) fn pin<'a>(&'a self, st: &mut State) -> PinnedView<'a> {
        let mut counted: Vec<PinnedRoot> = st.all_roots().into_iter().map(|(c, level)| (view_ref(c), level)).collect();
        let volumes = st.volumes.values().filter(|v| v.root.is_some()).count();
        let trees = counted.len();
        counted.extend(st.garbage.iter().map(|(c, level)| (view_ref(c), *level)));
        // A dirty node a checkpoint has placed owns nothing any more.
        let unplaced = |c: &Child| matches!(c, Child::Mem(a) if a.placed().is_none());
        let extra: Vec<PinnedRoot> =
            st.pins.values().flatten().filter(|(c, _)| unplaced(c)).map(|(c, level)| (view_ref(c), *level)).collect();
        let dirty: Vec<PinnedRoot> =
            counted.iter().chain(&extra).filter(|(c, _)| unplaced(c)).map(|(c, l)| (view_ref(c), *l)).collect();
        let id = st.next_pin;
        st.next_pin += 1;
        st.pins.insert(id, dirty);
        PinnedView { engine: self, id, counted, volumes, trees, extra, nodes: st.nodes.clone(), epoch: st.placements }
    }
}

impl Drop for PinnedView<'_> {
    fn drop(&mut self) {
        {
            let mut st = self.engine.state.lock();
            let registered = st.pins.remove(&self.id).unwrap_or_default();
            let own = self.counted.drain(..).chain(self.extra.drain(..));
            let dirty = registered.into_iter().chain(own).filter(|(c, _)| matches!(c, Child::Mem(_)));
            st.garbage.extend(dirty.collect::<Vec<_>>());
        }
        self.engine.reclaim();
    }
}
