//! Changed blocks between two points in time: [`Store::diff`].
//!
//! The answer is a list of extents computed from the extent trees alone (no
//! data is read), by a walk that skips every subtree the two trees share
//! (see `tree::diff`). Callers name the two sides by id, never by tree, so
//! the API stays the same when nodes come from a cache instead of memory.

use crate::catalog::{SnapshotId, TemplateId, VolumeId};
use crate::engine::State;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::tree::{self, DiffCounters, Geometry, Root};

/// One side of a [`Store::diff`]: a volume's live state, a ready snapshot,
/// or a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiffPoint {
    /// The volume as it is now: every write that has completed.
    Volume(VolumeId),
    /// A snapshot, which must be ready.
    Snapshot(SnapshotId),
    /// A template.
    Template(TemplateId),
}

impl From<VolumeId> for DiffPoint {
    fn from(v: VolumeId) -> Self {
        DiffPoint::Volume(v)
    }
}

impl From<SnapshotId> for DiffPoint {
    fn from(s: SnapshotId) -> Self {
        DiffPoint::Snapshot(s)
    }
}

impl From<TemplateId> for DiffPoint {
    fn from(t: TemplateId) -> Self {
        DiffPoint::Template(t)
    }
}

impl std::fmt::Display for DiffPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiffPoint::Volume(v) => write!(f, "volume {v}"),
            DiffPoint::Snapshot(s) => write!(f, "snapshot {s}"),
            DiffPoint::Template(t) => write!(f, "template {t}"),
        }
    }
}

/// One range where the two sides of a diff differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffExtent {
    /// First byte (a multiple of the block size).
    pub offset: u64,
    /// Length in bytes: whole blocks, except where the range ends at the
    /// end of a volume whose size is not a multiple of the block size.
    pub len: u64,
    /// What the `to` side holds here: data (`true`), or a hole that reads as
    /// zeroes (`false`, the range was discarded since `from`).
    pub data: bool,
}

/// What [`Store::diff`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// The logical size both sides share, in bytes.
    pub size_bytes: u64,
    /// The block size the extents are aligned to.
    pub block_size: u32,
    /// The ranges that differ, in ascending order, neither overlapping nor
    /// touching one of the same kind. Ranges outside them are identical on
    /// both sides.
    pub extents: Vec<DiffExtent>,
    /// What the walk cost.
    pub cost: DiffCost,
}

impl Diff {
    /// Bytes in data extents: what a copy of the changes must carry.
    pub fn data_bytes(&self) -> u64 {
        self.extents.iter().filter(|e| e.data).map(|e| e.len).sum()
    }

    /// Bytes in hole extents: ranges discarded since `from`.
    pub fn hole_bytes(&self) -> u64 {
        self.extents.iter().filter(|e| !e.data).map(|e| e.len).sum()
    }
}

/// How much work a diff did; it grows with the number of changed blocks,
/// not with the size of the volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffCost {
    /// Extent-tree nodes read, on both sides.
    pub nodes_visited: u64,
    /// Subtrees skipped because both sides share them.
    pub shared_subtrees_skipped: u64,
}

impl Store {
    /// The extents that differ between `from` and `to`: two snapshots, a
    /// snapshot and a live volume, two volumes that share an ancestor (a
    /// fork and its source), or any such pair. Each extent says whether
    /// `to` holds data or a hole there. Both sides must have the same size.
    ///
    /// Cost: proportional to the changed blocks and the tree nodes above
    /// them, not to the volume's size: subtrees both sides share (same node,
    /// or same checkpointed page) are skipped whole. Two sides with no
    /// common history share nothing, and the walk then visits both trees.
    /// No data is read; the state lock is held for the walk.
    ///
    /// ```
    /// use cowvol::{DiffExtent, SnapshotOptions, Store, StoreOptions, VolumeOptions};
    /// # fn main() -> cowvol::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let db = store.create_volume(VolumeOptions::new("db", 1 << 30))?.id;
    /// let vol = store.open_volume(db)?;
    /// vol.write_at(&[1u8; 8192], 0)?;
    /// let monday = store.create_snapshot(db, SnapshotOptions::named("monday"))?;
    /// vol.write_at(&[2u8; 4096], 1 << 20)?;
    /// vol.discard(0, 4096)?;
    /// let diff = store.diff(monday.id, db)?;
    /// assert_eq!(diff.extents, [
    ///     DiffExtent { offset: 0, len: 4096, data: false },
    ///     DiffExtent { offset: 1 << 20, len: 4096, data: true },
    /// ]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`] for a missing side; [`Error::InvalidArgument`]
    /// for a snapshot that is not ready or for sides of different sizes.
    pub fn diff(&self, from: impl Into<DiffPoint>, to: impl Into<DiffPoint>) -> Result<Diff> {
        let st = self.engine.state.lock();
        diff_locked(&st, self.engine.block_size, Some(from.into()), to.into())
    }
}

/// [`Store::diff`] under the state lock; `from: None` compares against an
/// empty volume of `to`'s size, so every mapped block of `to` is data.
pub(crate) fn diff_locked(st: &State, block_size: u32, from: Option<DiffPoint>, to: DiffPoint) -> Result<Diff> {
    let b = Side::find(st, to)?;
    let a = match from {
        Some(from) => Side::find(st, from)?,
        None => Side { root: &None, ..b },
    };
    if a.size != b.size || a.geo != b.geo {
        let from = from.map_or("nothing".to_string(), |f| f.to_string());
        return Err(Error::invalid(format!(
            "{from} has {} bytes and {to} has {}: only sides of the same size can be compared",
            a.size, b.size
        )));
    }
    let mut runs = Runs::default();
    let mut counters = DiffCounters::default();
    tree::diff_trees(a.root, b.root, a.geo, &st.nodes, &mut counters, &mut |lb, data| runs.push(lb, data))?;
    Ok(Diff {
        size_bytes: a.size,
        block_size,
        extents: runs.into_extents(block_size as u64, a.size),
        cost: DiffCost { nodes_visited: counters.nodes_visited, shared_subtrees_skipped: counters.shared_skipped },
    })
}

/// One side's tree, found under the state lock.
#[derive(Clone, Copy)]
struct Side<'s> {
    root: &'s Root,
    geo: Geometry,
    size: u64,
}

impl<'s> Side<'s> {
    fn find(st: &'s State, point: DiffPoint) -> Result<Side<'s>> {
        match point {
            DiffPoint::Volume(v) => {
                let v = st.vol(v)?;
                Ok(Side { root: &v.root, geo: v.geo, size: v.info.size_bytes })
            }
            DiffPoint::Snapshot(s) => {
                let snap = st.snapshots.get(&s.0).ok_or_else(|| Error::not_found(format!("snapshot {s}")))?;
                let snap = st.ready_snap_of(snap.info.volume_id, s)?;
                Ok(Side { root: &snap.root, geo: snap.geo, size: snap.info.size_bytes })
            }
            DiffPoint::Template(t) => {
                let t = st.templates.get(&t.0).ok_or_else(|| Error::not_found(format!("template {t}")))?;
                Ok(Side { root: &t.root, geo: t.geo, size: t.info.size_bytes })
            }
        }
    }
}

/// Changed blocks gathered into runs of one kind, as the walk reports them
/// (ascending).
#[derive(Default)]
struct Runs {
    /// `(first block, count, data)`.
    runs: Vec<(u64, u64, bool)>,
}

impl Runs {
    fn push(&mut self, lb: u64, data: bool) {
        match self.runs.last_mut() {
            Some((first, n, d)) if *d == data && *first + *n == lb => *n += 1,
            _ => self.runs.push((lb, 1, data)),
        }
    }

    fn into_extents(self, bs: u64, size: u64) -> Vec<DiffExtent> {
        self.runs
            .into_iter()
            .map(|(first, n, data)| {
                let offset = first * bs;
                DiffExtent { offset, len: ((first + n) * bs).min(size) - offset, data }
            })
            .collect()
    }
}
