//! A fork is an independent writable copy: it starts with its source's data
//! (the live volume or a snapshot), and from then on writes on either side
//! never show on the other. Forks outlive the volume and snapshot they came
//! from, and fork names follow the volume-name uniqueness rule.

use cowvol::*;

mod common;
use common::*;

const BS: u64 = 4096;
const SIZE: u64 = 32 * BS + 500;

/// A volume under test with its expected contents.
struct Tracked {
    name: &'static str,
    vol: Volume,
    model: Vec<u8>,
}

impl Tracked {
    fn write(&mut self, data: &[u8], off: u64) {
        self.vol.write_at(data, off).unwrap();
        self.model[off as usize..off as usize + data.len()].copy_from_slice(data);
    }
    fn verify(&self, when: &str) {
        assert_same(&format!("{} {when}", self.name), &read_all(&self.vol), &self.model);
    }
}

fn fill(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag ^ (i as u8).wrapping_mul(31)).collect()
}

fn fork(store: &Store, src: VolumeId, name: &str, snap: Option<SnapshotId>) -> VolumeInfo {
    store.fork_volume(src, ForkOptions { name: name.into(), from_snapshot: snap, ..Default::default() }).unwrap()
}

fn setup() -> (tempfile::TempDir, Store, VolumeInfo, Tracked) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("base", SIZE)).unwrap();
    let mut base = Tracked { name: "base", vol: store.open_volume(info.id).unwrap(), model: vec![0u8; SIZE as usize] };
    // Blocks 0..10 written, partly unaligned; the rest is a hole.
    base.write(&fill(1, 10 * BS as usize), 0);
    base.write(&fill(2, 3000), 2 * BS + 2000);
    (dir, store, info, base)
}

#[test]
fn fork_of_live_volume_is_isolated_both_ways() {
    let (_dir, store, info, mut base) = setup();
    let f = fork(&store, info.id, "fork", None);
    assert_eq!(f.origin, Some(VolumeOrigin::Volume(info.id)));
    assert_eq!(f.size_bytes, SIZE);
    let mut fork = Tracked { name: "fork", vol: store.open_volume(f.id).unwrap(), model: base.model.clone() };
    fork.verify("right after the fork");

    // Source -> fork: overwrite a shared block, a partial block, and a hole.
    base.write(&fill(10, BS as usize), 3 * BS);
    base.write(&fill(11, 100), 5 * BS + 4050);
    base.write(&fill(12, 2 * BS as usize), 20 * BS);
    fork.verify("after writes to the source");
    base.verify("after its own writes");

    // Fork -> source.
    fork.write(&fill(20, BS as usize), 4 * BS);
    fork.write(&fill(21, 300), 7 * BS - 150);
    fork.write(&fill(22, BS as usize), 25 * BS);
    fork.write(&fill(23, 500), SIZE - 500);
    base.verify("after writes to the fork");
    fork.verify("after its own writes");

    // Both wrote the same block differently.
    base.write(&fill(30, 64), 8 * BS + 10);
    fork.write(&fill(31, 64), 8 * BS + 10);
    base.verify("after both wrote block 8");
    fork.verify("after both wrote block 8");

    // Discard on one side leaves the other intact.
    fork.vol.discard(0, 2 * BS).unwrap();
    fork.model[..2 * BS as usize].fill(0);
    base.verify("after a discard on the fork");
    fork.verify("after its discard");
    assert_clean(&store);
}

#[test]
fn fork_of_snapshot_is_isolated_from_volume_and_snapshot() {
    let (_dir, store, info, mut base) = setup();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    let snap_model = base.model.clone();
    // The volume moves on before the fork is made.
    base.write(&fill(40, 4 * BS as usize), BS);
    let f = fork(&store, info.id, "from-snap", Some(snap.id));
    assert_eq!(f.origin, Some(VolumeOrigin::Snapshot(info.id, snap.id)));
    let mut fork =
        Tracked { name: "fork of snapshot", vol: store.open_volume(f.id).unwrap(), model: snap_model.clone() };
    fork.verify("right after the fork: it holds the snapshot, not the live volume");

    let snap_h = store.open_snapshot(info.id, snap.id).unwrap();
    fork.write(&fill(50, 3 * BS as usize + 17), 100);
    fork.write(&fill(51, BS as usize), 30 * BS);
    assert_same("snapshot after fork writes", &read_all(&snap_h), &snap_model);
    base.verify("after fork writes");

    base.write(&fill(60, 2 * BS as usize), 6 * BS + 1);
    fork.verify("after volume writes");
    assert_same("snapshot after volume writes", &read_all(&snap_h), &snap_model);
    assert_clean(&store);
}

#[test]
fn fork_of_fork_of_snapshot_is_isolated_from_all_ancestors() {
    let (_dir, store, info, mut base) = setup();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    let snap_model = base.model.clone();
    let f1 = fork(&store, info.id, "f1", Some(snap.id));
    let mut f1 = Tracked { name: "f1", vol: store.open_volume(f1.id).unwrap(), model: snap_model.clone() };
    f1.write(&fill(70, BS as usize + 1), 9 * BS - 1);
    let f2_info = fork(&store, f1.vol.volume_id().unwrap(), "f2", None);
    assert_eq!(f2_info.origin, Some(VolumeOrigin::Volume(f1.vol.volume_id().unwrap())));
    let mut f2 = Tracked { name: "f2", vol: store.open_volume(f2_info.id).unwrap(), model: f1.model.clone() };
    f2.verify("right after the fork");
    let snap_h = store.open_snapshot(info.id, snap.id).unwrap();

    let all_ok = |when: &str, base: &Tracked, f1: &Tracked, f2: &Tracked| {
        base.verify(when);
        f1.verify(when);
        f2.verify(when);
        assert_same(&format!("snapshot {when}"), &read_all(&snap_h), &snap_model);
    };

    f2.write(&fill(80, 2 * BS as usize), 0);
    f2.write(&fill(81, 10), 9 * BS + 3);
    all_ok("after writes to f2", &base, &f1, &f2);
    f1.write(&fill(90, 2 * BS as usize), BS);
    all_ok("after writes to f1", &base, &f1, &f2);
    base.write(&fill(95, 5 * BS as usize), 0);
    all_ok("after writes to the base volume", &base, &f1, &f2);
    assert_clean(&store);
}

#[test]
fn forks_survive_deleting_source_volume_and_snapshot() {
    let (dir, store, info, mut base) = setup();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    let snap_model = base.model.clone();
    base.write(&fill(100, 2 * BS as usize), 3 * BS + 5);
    let live_info = fork(&store, info.id, "from-live", None);
    let snap_info = fork(&store, info.id, "from-snap", Some(snap.id));
    let mut live_fork =
        Tracked { name: "fork of live", vol: store.open_volume(live_info.id).unwrap(), model: base.model.clone() };
    let mut snap_fork =
        Tracked { name: "fork of snapshot", vol: store.open_volume(snap_info.id).unwrap(), model: snap_model };
    let ff_info = fork(&store, snap_info.id, "fork-of-fork", None);
    let ff =
        Tracked { name: "fork of fork", vol: store.open_volume(ff_info.id).unwrap(), model: snap_fork.model.clone() };
    live_fork.write(&fill(110, 500), 11 * BS - 250);
    snap_fork.write(&fill(120, BS as usize), 12 * BS);

    assert!(store.delete_snapshot(info.id, snap.id).unwrap().existed);
    assert_clean(&store);
    for t in [&live_fork, &snap_fork, &ff] {
        t.verify("after deleting the snapshot");
    }
    drop(base);
    store.delete_volume(info.id).unwrap();
    assert_clean(&store);
    for t in [&live_fork, &snap_fork, &ff] {
        t.verify("after deleting the source volume");
    }
    // Still writable and isolated.
    snap_fork.write(&fill(130, 700), 0);
    ff.verify("after a write to its parent");
    snap_fork.verify("after its write");
    assert_clean(&store);

    // And after reopening the store.
    for t in [&live_fork, &snap_fork, &ff] {
        t.vol.flush().unwrap();
    }
    let models: Vec<(VolumeId, Vec<u8>)> =
        [&live_fork, &snap_fork, &ff].iter().map(|t| (t.vol.volume_id().unwrap(), t.model.clone())).collect();
    drop((live_fork, snap_fork, ff, store));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    for (id, model) in &models {
        let v = store.open_volume(*id).unwrap();
        assert_same(&format!("{id} after reopen"), &read_all(&v), model);
    }
    assert!(matches!(store.volume(info.id), Err(Error::NotFound { .. })));
    assert_clean(&store);
}

#[test]
fn fork_name_collisions_are_already_exists() {
    let (_dir, store, info, base) = setup();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    let other = store.create_volume(VolumeOptions::new("other", BS)).unwrap();
    let f = fork(&store, info.id, "clone", None);
    let volumes_before = store.list_volumes();

    for (name, from) in
        [("base", None), ("base", Some(snap.id)), ("clone", None), ("clone", Some(snap.id)), ("other", None)]
    {
        let r =
            store.fork_volume(info.id, ForkOptions { name: name.into(), from_snapshot: from, ..Default::default() });
        match r {
            Err(Error::AlreadyExists { .. }) => {}
            other => panic!("fork named {name:?} (from {from:?}): {other:?}"),
        }
        assert_eq!(store.list_volumes(), volumes_before, "a refused fork must create nothing");
    }
    // The colliding volumes are untouched.
    assert_eq!(store.volume_by_name("clone").unwrap().id, f.id);
    assert_eq!(store.volume_by_name("other").unwrap().id, other.id);
    let base_model = base.model.clone();
    base.verify("after refused forks");

    // Once the holder of the name is deleted, the name can be used again.
    store.delete_volume(f.id).unwrap();
    let again = fork(&store, info.id, "clone", Some(snap.id));
    assert_ne!(again.id, f.id);
    assert_same("new fork", &read_all(&store.open_volume(again.id).unwrap()), &base_model);
    assert_clean(&store);
}
