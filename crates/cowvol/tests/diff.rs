//! `Store::diff` against a model over random histories, and its cost.
//!
//! The model gives every block of every volume and snapshot a version: the
//! number of the write that last mapped it, or none for a hole. Writes
//! always map fresh pages, so the engine's diff must report exactly the
//! blocks whose versions differ, with `data` set where the `to` side has a
//! version, whatever the history (snapshots, forks, discards, checkpoints,
//! reopening the store, which rebuilds the trees from disk).
//!
//! The cost is checked by counting the tree nodes the walk visits, never
//! by timing.

use cowvol::testing::SimDir;
use cowvol::*;
use proptest::prelude::*;
use std::sync::Arc;

const BS: u64 = 4096;
/// 1 GiB: three tree levels at 4 KiB blocks.
const BLOCKS: u64 = 1 << 18;
/// Writes land in 64 regions spread over the volume, a few blocks each, so
/// histories touch many leaves and several interior nodes.
const REGIONS: u64 = 64;
const STRIDE: u64 = BLOCKS / REGIONS;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, checkpoint_wal_bytes: 256 << 10, ..Default::default() }
}

/// A block's contents as write `w` leaves it.
fn contents(w: u64, lb: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    b[..8].copy_from_slice(&w.to_le_bytes());
    b[8..16].copy_from_slice(&lb.to_le_bytes());
    b
}

#[derive(Debug, Clone)]
enum Step {
    Write { vol: u8, region: u8, off: u8, n: u8 },
    Discard { vol: u8, region: u8, off: u8, n: u8 },
    Snapshot { vol: u8 },
    Fork { snap: u8 },
    Checkpoint,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    let place = (any::<u8>(), any::<u8>(), 0u8..8, 1u8..5);
    prop_oneof![
        6 => place.clone().prop_map(|(vol, region, off, n)| Step::Write { vol, region, off, n }),
        2 => place.prop_map(|(vol, region, off, n)| Step::Discard { vol, region, off, n }),
        2 => any::<u8>().prop_map(|vol| Step::Snapshot { vol }),
        1 => any::<u8>().prop_map(|snap| Step::Fork { snap }),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Reopen),
    ]
}

/// Per block: the write that last mapped it (sparse: only blocks ever
/// written have an entry).
type Versions = std::collections::BTreeMap<u64, u64>;

struct World {
    disk: SimDir,
    store: Option<Store>,
    vols: Vec<(VolumeId, Versions)>,
    snaps: Vec<(SnapshotId, Versions)>,
    next_write: u64,
}

impl World {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    fn range(region: u8, off: u8, n: u8) -> (u64, u64) {
        let first = (region as u64 % REGIONS) * STRIDE + off as u64;
        (first, n as u64)
    }

    fn apply(&mut self, s: &Step) {
        match *s {
            Step::Write { vol, region, off, n } => {
                let i = vol as usize % self.vols.len();
                let (first, n) = Self::range(region, off, n);
                let w = self.next_write;
                self.next_write += 1;
                let buf: Vec<u8> = (first..first + n).flat_map(|lb| contents(w, lb)).collect();
                self.store().open_volume(self.vols[i].0).unwrap().write_at(&buf, first * BS).unwrap();
                for lb in first..first + n {
                    self.vols[i].1.insert(lb, w);
                }
            }
            Step::Discard { vol, region, off, n } => {
                let i = vol as usize % self.vols.len();
                let (first, n) = Self::range(region, off, n);
                self.store().open_volume(self.vols[i].0).unwrap().discard(first * BS, n * BS).unwrap();
                for lb in first..first + n {
                    self.vols[i].1.remove(&lb);
                }
            }
            Step::Snapshot { vol } => {
                let i = vol as usize % self.vols.len();
                let name = format!("s{}", self.snaps.len());
                let info = self.store().create_snapshot(self.vols[i].0, SnapshotOptions::named(name)).unwrap();
                self.snaps.push((info.id, self.vols[i].1.clone()));
            }
            Step::Fork { snap } => {
                if self.snaps.is_empty() {
                    return;
                }
                let (id, versions) = self.snaps[snap as usize % self.snaps.len()].clone();
                let name = format!("f{}", self.vols.len());
                let v = self.store().create_volume_from_snapshot(id, VolumeOptions::new(name, 0)).unwrap();
                self.vols.push((v.id, versions));
            }
            Step::Checkpoint => self.store().checkpoint().unwrap(),
            Step::Reopen => {
                self.store.take().unwrap().close().unwrap();
                self.store = Some(Store::open_in(Arc::new(self.disk.clone()), opts()).unwrap());
            }
        }
    }

    fn points(&self) -> Vec<(DiffPoint, Versions)> {
        let vols = self.vols.iter().map(|(id, v)| (DiffPoint::Volume(*id), v.clone()));
        vols.chain(self.snaps.iter().map(|(id, v)| (DiffPoint::Snapshot(*id), v.clone()))).collect()
    }
}

/// The changed blocks the model predicts: `(block, data in to)`.
fn expected(from: &Versions, to: &Versions) -> Vec<(u64, bool)> {
    let mut blocks: Vec<u64> = from.keys().chain(to.keys()).copied().collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks.into_iter().filter(|lb| from.get(lb) != to.get(lb)).map(|lb| (lb, to.contains_key(&lb))).collect()
}

fn blocks_of(diff: &Diff) -> Vec<(u64, bool)> {
    diff.extents.iter().flat_map(|e| (e.offset / BS..(e.offset + e.len) / BS).map(move |lb| (lb, e.data))).collect()
}

fn check_all_pairs(w: &World) {
    let points = w.points();
    for (a, va) in &points {
        for (b, vb) in &points {
            let diff = w.store().diff(*a, *b).unwrap();
            assert_eq!(blocks_of(&diff), expected(va, vb), "diff {a} -> {b}");
            assert!(diff.extents.windows(2).all(|p| p[0].offset + p[0].len <= p[1].offset), "unordered extents");
            // Data extents read back as the model's writes.
            let mut buf = vec![0u8; BS as usize];
            let handle = match b {
                DiffPoint::Volume(v) => w.store().open_volume_with(*v, OpenMode::ReadOnly).unwrap(),
                DiffPoint::Snapshot(s) => {
                    w.store().open_snapshot(w.store().snapshot(*s).unwrap().volume_id, *s).unwrap()
                }
                DiffPoint::Template(_) => unreachable!("no templates here"),
            };
            for (lb, data) in blocks_of(&diff).into_iter().filter(|x| x.1).take(8) {
                handle.read_at(&mut buf, lb * BS).unwrap();
                assert!(data);
                assert_eq!(buf, contents(vb[&lb], lb), "{b} block {lb}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("COWVOL_DIFF_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn diff_matches_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        let disk = SimDir::new();
        let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        let v = store.create_volume(VolumeOptions::new("v", BLOCKS * BS)).unwrap();
        let mut w = World { disk, store: Some(store), vols: vec![(v.id, Versions::new())], snaps: Vec::new(), next_write: 1 };
        for s in &steps {
            w.apply(s);
        }
        check_all_pairs(&w);
    }
}

/// A store with one volume of `blocks` blocks, 1024 blocks written evenly
/// over it and one in each of its first 256 leaves, and a snapshot of that;
/// returns the store, volume and snapshot.
fn populated(blocks: u64) -> (Store, VolumeId, SnapshotId) {
    let store = Store::open_in(Arc::new(SimDir::new()), opts()).unwrap();
    let v = store.create_volume(VolumeOptions::new("v", blocks * BS)).unwrap().id;
    let vol = store.open_volume(v).unwrap();
    for i in 0..1024 {
        let lb = i * (blocks / 1024) + 3;
        vol.write_at(&contents(1, lb), lb * BS).unwrap();
    }
    // The first 256 leaves exist at every size, so changes there meet the
    // same tree shape: more entries than one wide leaf may hold make the
    // first level-1 node interior whatever the volume's size.
    for i in 0..256 {
        vol.write_at(&contents(1, i * 256 + 5), (i * 256 + 5) * BS).unwrap();
    }
    let s = store.create_snapshot(v, SnapshotOptions::named("base")).unwrap().id;
    (store, v, s)
}

/// Writes one block in each of the first `k` leaves (256 blocks apiece).
fn change_first_leaves(store: &Store, v: VolumeId, k: u64) {
    let vol = store.open_volume(v).unwrap();
    for i in 0..k {
        vol.write_at(&contents(2, i * 256), i * 256 * BS).unwrap();
    }
}

#[test]
fn diff_cost_is_the_same_for_a_volume_64_times_larger() {
    // 1 GiB and 64 GiB both have three levels; with the same changes, the
    // walk must visit exactly the same nodes, although the larger tree has
    // far more of them.
    let mut costs = Vec::new();
    for blocks in [1u64 << 18, 1 << 24] {
        let (store, v, s) = populated(blocks);
        change_first_leaves(&store, v, 16);
        let d = store.diff(s, v).unwrap();
        assert_eq!(d.extents.len(), 16, "{d:?}");
        costs.push(d.cost);
        // Same answer after the trees are rebuilt from a checkpoint.
        store.checkpoint().unwrap();
        assert_eq!(store.diff(s, v).unwrap().extents, d.extents);
    }
    assert_eq!(costs[0].nodes_visited, costs[1].nodes_visited, "{costs:?}");
    // Root, one interior node, 16 leaves, on each side.
    assert_eq!(costs[0].nodes_visited, 2 * (1 + 1 + 16));
}

#[test]
fn diff_cost_follows_the_changes_not_the_size() {
    for blocks in [1u64 << 16, 1 << 20, 1 << 24] {
        let (store, v, _) = populated(blocks);
        let levels = (64 - (blocks - 1).leading_zeros()).div_ceil(8) as u64;
        for k in [1u64, 10, 100] {
            let s = store.create_snapshot(v, SnapshotOptions::named(format!("before-{k}"))).unwrap().id;
            let vol = store.open_volume(v).unwrap();
            // k changes spread evenly: each its own path from the root.
            for i in 0..k {
                let lb = i * (blocks / k) + 7;
                vol.write_at(&contents(3 + k, lb), lb * BS).unwrap();
            }
            let d = store.diff(s, v).unwrap();
            assert!(
                d.cost.nodes_visited <= 2 * (1 + k * (levels - 1)),
                "{blocks} blocks, {k} changes: {} nodes visited",
                d.cost.nodes_visited
            );
        }
    }
}

#[test]
fn sides_of_different_sizes_or_not_ready_are_refused() {
    let store = Store::open_in(Arc::new(SimDir::new()), opts()).unwrap();
    let a = store.create_volume(VolumeOptions::new("a", 1 << 20)).unwrap().id;
    let b = store.create_volume(VolumeOptions::new("b", 2 << 20)).unwrap().id;
    assert!(matches!(store.diff(a, b), Err(Error::InvalidArgument(_))));
    let pending = store.begin_snapshot(a, SnapshotOptions::named("p")).unwrap();
    assert!(matches!(store.diff(pending.id, a), Err(Error::InvalidArgument(_))));
    assert!(matches!(store.diff(a, "vol-99".parse::<VolumeId>().unwrap()), Err(Error::NotFound { .. })));
}

/// Two unrelated volumes share nothing: the diff is still right (every
/// mapped block of either), only not cheap.
#[test]
fn unrelated_volumes_compare_block_by_block() {
    let store = Store::open_in(Arc::new(SimDir::new()), opts()).unwrap();
    let a = store.create_volume(VolumeOptions::new("a", 64 * BS)).unwrap().id;
    let b = store.create_volume(VolumeOptions::new("b", 64 * BS)).unwrap().id;
    store.open_volume(a).unwrap().write_at(&contents(1, 5), 5 * BS).unwrap();
    store.open_volume(b).unwrap().write_at(&contents(1, 5), 5 * BS).unwrap();
    store.open_volume(b).unwrap().write_at(&[0u8; 2 * BS as usize], 9 * BS).unwrap();
    let d = store.diff(a, b).unwrap();
    // Same bytes at block 5, but different pages: reported (a diff is about
    // what changed, and a rewrite is a change).
    let want =
        [DiffExtent { offset: 5 * BS, len: BS, data: true }, DiffExtent { offset: 9 * BS, len: 2 * BS, data: true }];
    assert_eq!(d.extents, want);
}
