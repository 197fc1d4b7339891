//! The in-memory state the `state` lock protects: the catalog's volumes,
//! snapshots and templates with their trees, the space map, and the trees
//! waiting to be released. [`State::apply`] is the one function that changes
//! it, for a live operation and for replay alike.

use super::record::Record;
use super::{write_buffer_or_default, VolRuntime};
use crate::backend::StorageFile;
use crate::catalog::{
    now_secs, SnapshotId, SnapshotInfo, SnapshotStatus, TemplateInfo, VolumeId, VolumeInfo, VolumeOrigin,
};
use crate::error::{Error, Result};
use crate::format;
use crate::options::{SnapshotOptions, VolumeOptions, IDEMPOTENCY_WINDOW_SECS};
use crate::space::Space;
use crate::tree::{self, Child, Garbage, Geometry, Mapping, NodeCache, Root};
use crate::wal::LogGeometry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A volume, snapshot or template in memory: its catalog record and its
/// tree. `R` is what it needs at run time besides: a volume's I/O
/// coordination, nothing for the others.
#[derive(Debug)]
pub(crate) struct Entry<I, R = ()> {
    pub(crate) info: I,
    pub(crate) root: Root,
    pub(crate) geo: Geometry,
    pub(crate) rt: R,
}

pub(crate) type VolState = Entry<VolumeInfo, Arc<VolRuntime>>;
pub(crate) type SnapState = Entry<SnapshotInfo>;
pub(crate) type TemplState = Entry<TemplateInfo>;

impl<I> Entry<I> {
    pub(crate) fn new(info: I, root: Root, geo: Geometry) -> Entry<I> {
        Entry { info, root, geo, rt: () }
    }
}

impl<I, R> Entry<I, R> {
    /// The tree's root with its level, when it has one.
    fn leveled_root(&self) -> Option<(&Child, u32)> {
        self.root.as_ref().map(|r| (r, self.geo.top()))
    }

    /// Detaches the tree, with the level of its root, for the garbage list.
    fn take_tree(&mut self) -> Option<(Child, u32)> {
        let top = self.geo.top();
        self.root.take().map(|r| (r, top))
    }
}

/// Everything the state lock protects.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) space: Space,
    pub(crate) volumes: BTreeMap<u64, VolState>,
    pub(crate) snapshots: BTreeMap<u64, SnapState>,
    pub(crate) templates: BTreeMap<u64, TemplState>,
    /// Each volume's snapshot ids by name, kept with `snapshots` by
    /// [`State::index_snapshot`] and [`State::unindex_snapshot`]: a name
    /// check or a volume's list costs what that volume holds, not what the
    /// store holds.
    /// Pairs of (name, id), so that even a catalog holding two snapshots of
    /// one name (which no operation creates) loses neither.
    pub(crate) snapshot_names: HashMap<u64, BTreeSet<(String, u64)>>,
    /// Live volume ids by name, kept with `volumes`.
    pub(crate) volume_names: HashMap<String, u64>,
    pub(crate) next_volume: u64,
    pub(crate) next_snapshot: u64,
    pub(crate) next_template: u64,
    /// Trees detached by delete, restore and discard, waiting to be
    /// released in bounded steps.
    pub(crate) garbage: Garbage,
    /// Written tree nodes by page (see `tree::NodeCache`).
    /// Shared with pinned views, which read through it without the lock.
    pub(crate) nodes: Arc<NodeCache>,
    /// Set when a tree change failed half way (a node could not be read):
    /// the trees are whole, but a change the log will record was not fully
    /// applied, so the store must stop taking changes.
    pub(crate) torn: bool,
    /// The roots each live pinned view holds (see `engine::pin`), by id.
    pub(crate) pins: BTreeMap<u64, Vec<super::pin::PinnedRoot>>,
    /// Checkpoint placements so far (see `tree::Node::placed_by`).
    pub(crate) placements: u64,
    pub(crate) next_pin: u64,
    pub(crate) bits: u32,
    pub(crate) block_size: u64,
}

impl State {
    /// Allocates a WAL segment and reserves its pages; one that reaches
    /// into space never written is filled with zeroes first (see
    /// [`LogGeometry::zero_segment`]). Space written before needs no fill,
    /// so a short-lived process (one command) that sets spares aside in it
    /// writes and syncs no megabytes of zeroes.
    pub(crate) fn new_log_segment(&mut self, geo: &LogGeometry, file: &dyn StorageFile) -> Result<u64> {
        let n = geo.segment_pages;
        let page = self.space.alloc_contiguous(n)?;
        for p in page..page + n {
            self.space.set_reserved(p, true);
        }
        if page + n > self.space.unwritten_from() {
            geo.zero_segment(page, file);
        }
        Ok(page)
    }

    pub(crate) fn vol(&self, id: VolumeId) -> Result<&VolState> {
        self.volumes.get(&id.0).ok_or_else(|| Error::not_found(format!("volume {id}")))
    }

    pub(crate) fn snap_of(&self, volume: VolumeId, snap: SnapshotId) -> Result<&SnapState> {
        match self.snapshots.get(&snap.0) {
            Some(s) if s.info.volume_id == volume => Ok(s),
            _ => Err(Error::not_found(format!("snapshot {snap} of volume {volume}"))),
        }
    }

    /// A snapshot of `volume` whose data can be used (status `Ready`).
    pub(crate) fn ready_snap_of(&self, volume: VolumeId, snap: SnapshotId) -> Result<&SnapState> {
        let s = self.snap_of(volume, snap)?;
        if !s.info.is_ready() {
            return Err(Error::invalid(format!(
                "snapshot {snap} ({:?}) is {}, not ready: it holds no data",
                s.info.name, s.info.status
            )));
        }
        Ok(s)
    }

    /// The snapshot of `volume` created with idempotency key `key` no more
    /// than [`IDEMPOTENCY_WINDOW_SECS`] before `now`, if any. Cost: one
    /// pass over the snapshot records, like the name check beside it.
    pub(crate) fn idempotent_snapshot(&self, volume: VolumeId, key: Option<&str>, now: u64) -> Option<&SnapshotInfo> {
        let key = key?;
        self.snapshots_of(volume).into_iter().map(|s| &s.info).find(|s| {
            s.idempotency_key.as_deref() == Some(key) && now < s.created_at.saturating_add(IDEMPOTENCY_WINDOW_SECS)
        })
    }

    /// The record of a new snapshot of `volume`, checking that the volume
    /// exists and that the name is free among its snapshots.
    pub(crate) fn new_snapshot_info(
        &mut self,
        volume: VolumeId,
        opts: SnapshotOptions,
        status: SnapshotStatus,
        created_at: u64,
    ) -> Result<SnapshotInfo> {
        let v = self.vol(volume)?;
        let (size_bytes, volume_name) = (v.info.size_bytes, v.info.name.clone());
        if self.snapshot_named(volume, &opts.name).is_some() {
            return Err(Error::AlreadyExists { what: format!("snapshot {:?} of volume {volume}", opts.name) });
        }
        let id = SnapshotId(self.next_snapshot);
        // Reserve the id now: a group takes several before any is applied.
        self.next_snapshot += 1;
        Ok(SnapshotInfo {
            id,
            volume_id: volume,
            volume_name,
            name: opts.name,
            description: opts.description,
            size_bytes,
            created_at,
            owner: opts.owner,
            labels: opts.labels,
            kind: opts.kind,
            status,
            held: false,
            expires_at: opts.expires_at,
            schedule: None,
            idempotency_key: opts.idempotency_key,
            backup: None,
        })
    }

    /// The owner a volume made from `origin` inherits: the source volume's
    /// (for a snapshot, its volume's while it lives, else the snapshot's),
    /// or the template's.
    pub(crate) fn owner_of(&self, origin: VolumeOrigin) -> String {
        let (volume, snapshot) = match origin {
            VolumeOrigin::Volume(v) => (Some(v), None),
            VolumeOrigin::Snapshot(v, s) => (Some(v), Some(s)),
            VolumeOrigin::Template(t) => {
                return self.templates.get(&t.0).map(|t| t.info.owner.clone()).unwrap_or_default()
            }
        };
        let of_volume = volume.and_then(|v| self.volumes.get(&v.0)).map(|v| v.info.owner.clone());
        let of_snapshot = || snapshot.and_then(|s| self.snapshots.get(&s.0)).map(|s| s.info.owner.clone());
        of_volume.or_else(of_snapshot).unwrap_or_default()
    }

    /// The record of a new volume with the next id, checking that its name
    /// is free. A volume made from `origin` with no owner given takes the
    /// owner of what it is made from.
    pub(crate) fn new_volume_info(&self, opts: VolumeOptions, origin: Option<VolumeOrigin>) -> Result<VolumeInfo> {
        self.check_volume_name_free(&opts.name)?;
        let owner = match origin {
            Some(o) if opts.owner.is_empty() => self.owner_of(o),
            _ => opts.owner,
        };
        Ok(VolumeInfo {
            id: VolumeId(self.next_volume),
            name: opts.name,
            size_bytes: opts.size_bytes,
            access_mode: opts.access_mode,
            cache_bytes: opts.cache_bytes,
            write_buffer_bytes: write_buffer_or_default(opts.write_buffer_bytes),
            created_at: now_secs(),
            origin,
            policy: None,
            owner,
            schedules: Vec::new(),
        })
    }

    fn check_volume_name_free(&self, name: &str) -> Result<()> {
        if self.volume_names.contains_key(name) {
            return Err(Error::AlreadyExists { what: format!("volume {name:?}") });
        }
        Ok(())
    }

    pub(super) fn geometry(&self, size_bytes: u64) -> Geometry {
        Geometry::for_blocks(self.bits, size_bytes.div_ceil(self.block_size))
    }

    /// Applies one logged change to the in-memory state. The same code runs
    /// for a live operation (before its record is appended) and for replay,
    /// so recovery rebuilds exactly what the live path built.
    pub(crate) fn apply(&mut self, rec: &Record) -> Result<()> {
        let missing = |what: String| Error::corruption("WAL", "replay", format!("{what} does not exist"));
        match rec {
            Record::Map { vol, lblock, page, crcs } => {
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                for (i, &crc) in crcs.iter().enumerate() {
                    let m = Mapping { page: page + i as u64, crc: format::Crc(crc) };
                    let done = tree::insert(&mut v.root, v.geo, lblock + i as u64, m, &mut self.space, &self.nodes);
                    done.inspect_err(|_| self.torn = true)?;
                }
            }
            Record::Unmap { vol, lblock, count } => {
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                let range = *lblock..lblock + count;
                let done =
                    tree::remove_range(&mut v.root, v.geo, range, &mut self.space, &mut self.garbage, &self.nodes);
                done.inspect_err(|_| self.torn = true)?;
            }
            Record::CreateVolume(info) => self.insert_volume(info.clone(), None),
            Record::Fork(info) => {
                let root = match info.origin.ok_or_else(|| missing("fork origin".into()))? {
                    VolumeOrigin::Volume(v) => self.volumes.get(&v.0).map(|v| tree::share(&v.root, &mut self.space)),
                    VolumeOrigin::Snapshot(_, s) => {
                        self.snapshots.get(&s.0).map(|s| tree::share(&s.root, &mut self.space))
                    }
                    VolumeOrigin::Template(t) => {
                        self.templates.get(&t.0).map(|t| tree::share(&t.root, &mut self.space))
                    }
                };
                let root = root.ok_or_else(|| missing(format!("the origin of volume {}", info.id)))?;
                self.insert_volume(info.clone(), root);
            }
            Record::DeleteVolume { vol } => {
                let mut v = self.volumes.remove(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                if self.volume_names.get(&v.info.name) == Some(vol) {
                    self.volume_names.remove(&v.info.name);
                }
                self.garbage.extend(v.take_tree());
                // A two-step snapshot of it can never be committed now.
                for s in self.snapshots.values_mut().filter(|s| s.info.volume_id.0 == *vol) {
                    if s.info.status == SnapshotStatus::Creating {
                        s.info.status = SnapshotStatus::Failed;
                    }
                }
            }
            Record::CreateSnapshot(info) => self.insert_snapshot(info)?,
            Record::CreateSnapshots(list) => {
                for info in list {
                    self.insert_snapshot(info)?;
                }
            }
            Record::CommitSnapshot { snap } => {
                let s = self.snapshots.get(snap).ok_or_else(|| missing(format!("snapshot {snap}")))?;
                let v = self.volumes.get(&s.info.volume_id.0).ok_or_else(|| missing(format!("volume of {snap}")))?;
                let (root, geo) = (tree::share(&v.root, &mut self.space), v.geo);
                let s = self.snapshots.get_mut(snap).ok_or_else(|| missing(format!("snapshot {snap}")))?;
                s.info.status = SnapshotStatus::Ready;
                // Creating snapshots hold no tree, so nothing is replaced.
                self.garbage.extend(s.take_tree());
                s.root = root;
                s.geo = geo;
            }
            Record::UpdateSnapshot(info) => {
                let s = self.snapshots.get_mut(&info.id.0).ok_or_else(|| missing(format!("snapshot {}", info.id)))?;
                let old = std::mem::replace(&mut s.info, info.clone());
                self.unindex_snapshot(&old);
                self.index_snapshot(info);
            }
            Record::CreateTemplate(info) => {
                let (root, geo) = {
                    let s = self.snapshots.get(&info.source.1 .0);
                    let s = s.ok_or_else(|| missing(format!("snapshot {}", info.source.1)))?;
                    (tree::share(&s.root, &mut self.space), s.geo)
                };
                self.next_template = self.next_template.max(info.id.0 + 1);
                self.templates.insert(info.id.0, Entry::new(info.clone(), root, geo));
            }
            Record::DeleteTemplate { tmpl } => {
                let mut t = self.templates.remove(tmpl).ok_or_else(|| missing(format!("template {tmpl}")))?;
                self.garbage.extend(t.take_tree());
            }
            Record::SetPolicy { vol, policy } => {
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                v.info.policy = *policy;
            }
            Record::SetSchedule { vol, name, schedule } => {
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                let list = &mut v.info.schedules;
                match (list.iter().position(|s| &s.schedule.name == name), schedule) {
                    (Some(i), Some(new)) => list[i] = new.clone(),
                    (Some(i), None) => drop(list.remove(i)),
                    (None, Some(new)) => list.push(new.clone()),
                    (None, None) => {}
                }
            }
            Record::ScheduleRun { vol, name, status, snapshot } => {
                if let Some(info) = snapshot {
                    self.insert_snapshot(info)?;
                }
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                let s = v.info.schedules.iter_mut().find(|s| &s.schedule.name == name);
                s.ok_or_else(|| missing(format!("schedule {name:?} of volume {vol}")))?.status = status.clone();
            }
            Record::DeleteSnapshot { snap } => {
                let mut s = self.snapshots.remove(snap).ok_or_else(|| missing(format!("snapshot {snap}")))?;
                self.unindex_snapshot(&s.info);
                self.garbage.extend(s.take_tree());
            }
            Record::Restore { vol, snap, safety } => {
                if let Some(info) = safety {
                    self.insert_snapshot(info)?;
                }
                let s = self.snapshots.get(snap).ok_or_else(|| missing(format!("snapshot {snap}")))?;
                let root = tree::share(&s.root, &mut self.space);
                let v = self.volumes.get_mut(vol).ok_or_else(|| missing(format!("volume {vol}")))?;
                let old = v.take_tree();
                v.root = root;
                self.garbage.extend(old);
            }
        }
        self.count_metadata_outside_the_cache();
        Ok(())
    }

    /// Tells the node cache what the dirty nodes, the counts, the free map
    /// and the reserved bitmap hold, so that the written nodes it keeps
    /// leave the rest of the budget to them (see `NodeCache::make_room_for`).
    /// Called wherever they change much: a change applied, a checkpoint's
    /// end, a step of discovery.
    pub(crate) fn count_metadata_outside_the_cache(&self) {
        let other = self.space.count_bytes() + self.space.bookkeeping_bytes();
        self.nodes.make_room_for(self.space.dirty_nodes, other);
    }

    /// Adds a snapshot: a `Ready` one shares its volume's tree as it is
    /// now; any other holds no tree.
    fn insert_snapshot(&mut self, info: &SnapshotInfo) -> Result<()> {
        let v = self.volumes.get(&info.volume_id.0).ok_or_else(|| {
            Error::corruption("WAL", "replay", format!("volume {} of a new snapshot does not exist", info.volume_id))
        })?;
        let root = if info.is_ready() { tree::share(&v.root, &mut self.space) } else { None };
        let geo = v.geo;
        self.load_snapshot(info.clone(), root, geo);
        Ok(())
    }

    /// Adds a snapshot with its tree (at replay, or from the catalog).
    pub(super) fn load_snapshot(&mut self, info: SnapshotInfo, root: Root, geo: Geometry) {
        self.next_snapshot = self.next_snapshot.max(info.id.0 + 1);
        self.index_snapshot(&info);
        self.snapshots.insert(info.id.0, Entry::new(info, root, geo));
    }

    fn index_snapshot(&mut self, info: &SnapshotInfo) {
        self.snapshot_names.entry(info.volume_id.0).or_default().insert((info.name.clone(), info.id.0));
    }

    fn unindex_snapshot(&mut self, info: &SnapshotInfo) {
        let volume = info.volume_id.0;
        let Some(names) = self.snapshot_names.get_mut(&volume) else { return };
        names.remove(&(info.name.clone(), info.id.0));
        if names.is_empty() {
            self.snapshot_names.remove(&volume);
        }
    }

    /// The id of `volume`'s snapshot named `name`, if it has one.
    pub(crate) fn snapshot_named(&self, volume: VolumeId, name: &str) -> Option<SnapshotId> {
        let names = self.snapshot_names.get(&volume.0)?;
        let first = names.range((name.to_owned(), 0)..).next()?;
        (first.0 == name).then_some(SnapshotId(first.1))
    }

    /// Every snapshot of `volume` (live or deleted), in id order, found
    /// through the index.
    pub(crate) fn snapshots_of(&self, volume: VolumeId) -> Vec<&SnapState> {
        let mut ids: Vec<u64> =
            self.snapshot_names.get(&volume.0).map(|n| n.iter().map(|(_, id)| *id).collect()).unwrap_or_default();
        ids.sort_unstable();
        ids.iter().filter_map(|id| self.snapshots.get(id)).collect()
    }

    pub(super) fn insert_volume(&mut self, info: VolumeInfo, root: Root) {
        let geo = self.geometry(info.size_bytes);
        self.next_volume = self.next_volume.max(info.id.0 + 1);
        self.volume_names.insert(info.name.clone(), info.id.0);
        self.volumes.insert(info.id.0, Entry { info, root, geo, rt: Arc::new(VolRuntime::default()) });
    }

    /// Every tree root with its level: volumes, then snapshots, then
    /// templates (not the garbage list). Pinned views rely on that order.
    pub(crate) fn all_roots(&self) -> Vec<(&Child, u32)> {
        let volumes = self.volumes.values().filter_map(Entry::leveled_root);
        let snapshots = self.snapshots.values().filter_map(Entry::leveled_root);
        volumes.chain(snapshots).chain(self.templates.values().filter_map(Entry::leveled_root)).collect()
    }
}

pub(super) fn empty_state(file: Arc<dyn StorageFile>, block_size: u32, npages: u64, cache_bytes: usize) -> State {
    let bits = format::fanout_bits_for(block_size);
    // One budget for the metadata in RAM: groups of reference counts up to
    // an eighth of it, and about twice as much of count changes kept (see
    // `Space::set_count_budget`); tree nodes, dirty ones included, have
    // what the counts leave (see `NodeCache::make_room_for`).
    let count_bytes = cache_bytes / 8;
    let nodes = Arc::new(NodeCache::new(file.clone(), format::data_start(block_size), block_size, bits, cache_bytes));
    let mut space = Space::new(file, block_size, format::data_start(block_size), npages);
    space.segment_pages = LogGeometry::new(format::data_start(block_size), block_size).segment_pages;
    space.set_count_budget(count_bytes as u64);
    space.metadata_budget = cache_bytes as u64;
    State {
        space,
        volumes: BTreeMap::new(),
        snapshots: BTreeMap::new(),
        templates: BTreeMap::new(),
        snapshot_names: HashMap::new(),
        volume_names: HashMap::new(),
        next_volume: 1,
        next_snapshot: 1,
        next_template: 1,
        garbage: Vec::new(),
        nodes,
        torn: false,
        pins: BTreeMap::new(),
        next_pin: 0,
        placements: 0,
        bits,
        block_size: block_size as u64,
    }
}
