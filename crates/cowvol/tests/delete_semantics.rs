//! Deleting snapshots and volumes: a snapshot delete is idempotent and never
//! touches the live volume, other snapshots or forks; a volume delete keeps
//! its snapshots usable; deleting everything frees every data block; handles
//! on a deleted volume fail with NotFound.

use cowvol::*;

mod common;
use common::*;

const BS: u64 = 4096;
const SIZE: u64 = 24 * BS + 321;

fn fill(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag ^ (i as u8).wrapping_mul(13)).collect()
}

fn write(vol: &Volume, model: &mut [u8], data: &[u8], off: u64) {
    vol.write_at(data, off).unwrap();
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

fn setup() -> (tempfile::TempDir, Store, VolumeInfo, Volume, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("vol", SIZE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    write(&vol, &mut model, &fill(1, 12 * BS as usize), 0);
    write(&vol, &mut model, &fill(2, 777), 15 * BS + 3000);
    (dir, store, info, vol, model)
}

fn fork_opts(name: &str, snap: Option<SnapshotId>) -> ForkOptions {
    ForkOptions { name: name.into(), from_snapshot: snap, ..Default::default() }
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(Error::NotFound { .. }))
}

#[test]
fn deleting_a_snapshot_shared_with_forks_keeps_fork_data() {
    let (_dir, store, info, vol, mut model) = setup();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("gold")).unwrap();
    let snap_model = model.clone();
    let f1 = store.fork_volume(info.id, fork_opts("f1", Some(snap.id))).unwrap();
    let f2 = store.fork_volume(info.id, fork_opts("f2", Some(snap.id))).unwrap();
    let f1v = store.open_volume(f1.id).unwrap();
    let mut f1_model = snap_model.clone();
    // One fork diverges, the other still shares everything with the snapshot.
    write(&f1v, &mut f1_model, &fill(9, 2 * BS as usize), 4 * BS + 7);
    write(&vol, &mut model, &fill(8, BS as usize), 0);

    assert!(store.delete_snapshot(info.id, snap.id).unwrap().existed);
    assert_same("f1 after snapshot delete", &read_all(&f1v), &f1_model);
    let f2v = store.open_volume(f2.id).unwrap();
    assert_same("f2 after snapshot delete", &read_all(&f2v), &snap_model);
    assert_same("volume after snapshot delete", &read_all(&vol), &model);
    assert_eq!(store.stats().snapshots, 0);
    assert_clean(&store);

    // The forks still work as independent volumes.
    let mut f2_model = snap_model.clone();
    write(&f2v, &mut f2_model, &fill(10, 100), 100);
    assert_same("f1", &read_all(&f1v), &f1_model);
    assert_same("f2", &read_all(&f2v), &f2_model);
    assert_clean(&store);
}

#[test]
fn deleting_a_snapshot_twice_succeeds_both_times() {
    let (_dir, store, info, _vol, _model) = setup();
    let other = store.create_volume(VolumeOptions::new("other", BS)).unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    let keep = store.create_snapshot(info.id, SnapshotOptions::named("keep")).unwrap();

    // Naming the wrong volume deletes nothing.
    assert!(!store.delete_snapshot(other.id, snap.id).unwrap().existed);
    assert!(store.get_snapshot(info.id, snap.id).is_ok());

    assert_eq!(store.delete_snapshot(info.id, snap.id).unwrap(), Deleted { existed: true });
    assert_eq!(store.delete_snapshot(info.id, snap.id).unwrap(), Deleted { existed: false });
    assert!(is_not_found(store.get_snapshot(info.id, snap.id)));
    assert!(is_not_found(store.open_snapshot(info.id, snap.id)));
    assert_eq!(store.list_snapshots(info.id), vec![keep.clone()]);
    assert_clean(&store);
}

#[test]
fn deleting_a_snapshot_never_changes_the_volume_or_other_snapshots() {
    let (_dir, store, info, vol, mut model) = setup();
    let mut snaps: Vec<(SnapshotId, Vec<u8>)> = Vec::new();
    for i in 0..4u8 {
        write(&vol, &mut model, &fill(20 + i, BS as usize + 99), (i as u64 * 5) * BS + 1);
        let s = store.create_snapshot(info.id, SnapshotOptions::named(format!("s{i}"))).unwrap();
        snaps.push((s.id, model.clone()));
    }
    write(&vol, &mut model, &fill(30, 3 * BS as usize), 2 * BS);

    for victim in [1usize, 3, 0] {
        let (id, _) = snaps[victim].clone();
        assert!(store.delete_snapshot(info.id, id).unwrap().existed);
        snaps[victim].1.clear();
        assert_same(&format!("volume after deleting s{victim}"), &read_all(&vol), &model);
        for (i, (sid, m)) in snaps.iter().enumerate() {
            if m.is_empty() {
                continue;
            }
            let h = store.open_snapshot(info.id, *sid).unwrap();
            assert_same(&format!("s{i} after deleting s{victim}"), &read_all(&h), m);
        }
        assert_clean(&store);
    }
    // The volume keeps working normally.
    write(&vol, &mut model, &fill(40, 10), 5);
    assert_same("volume", &read_all(&vol), &model);
    assert_clean(&store);
}

#[test]
fn deleting_a_volume_keeps_its_snapshots() {
    let (dir, store, info, vol, model) = setup();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    vol.write_at(&fill(50, 100), 0).unwrap();
    drop(vol);
    store.delete_volume(info.id).unwrap();

    assert!(is_not_found(store.volume(info.id)));
    assert!(store.volume_by_name("vol").is_none());
    assert!(store.list_volumes().iter().all(|v| v.id != info.id));
    assert!(is_not_found(store.open_volume(info.id)));
    assert!(is_not_found(store.delete_volume(info.id)));

    assert_eq!(store.list_snapshots(info.id), vec![snap.clone()]);
    assert_eq!(store.get_snapshot(info.id, snap.id).unwrap(), snap);
    let h = store.open_snapshot(info.id, snap.id).unwrap();
    assert_same("snapshot of deleted volume", &read_all(&h), &model);
    // It can still be forked into a new volume.
    let f = store.fork_volume(info.id, fork_opts("revived", Some(snap.id))).unwrap();
    assert_same("fork of orphan snapshot", &read_all(&store.open_volume(f.id).unwrap()), &model);
    // And the name of the deleted volume is free again.
    store.create_volume(VolumeOptions::new("vol", BS)).unwrap();
    assert_clean(&store);

    // All of this survives a reopen.
    drop((h, store));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.list_snapshots(info.id), vec![snap.clone()]);
    let h = store.open_snapshot(info.id, snap.id).unwrap();
    assert_same("snapshot of deleted volume after reopen", &read_all(&h), &model);
    assert_clean(&store);
}

#[test]
fn deleting_everything_frees_every_data_block() {
    let (dir, store, info, vol, mut model) = setup();
    let s1 = store.create_snapshot(info.id, SnapshotOptions::named("s1")).unwrap();
    write(&vol, &mut model, &fill(60, 4 * BS as usize), 3 * BS + 1);
    let s2 = store.create_snapshot(info.id, SnapshotOptions::named("s2")).unwrap();
    let f = store.fork_volume(info.id, fork_opts("f", Some(s1.id))).unwrap();
    let fv = store.open_volume(f.id).unwrap();
    fv.write_at(&fill(61, 3 * BS as usize), 10 * BS).unwrap();
    let fs = store.create_snapshot(f.id, SnapshotOptions::named("fs")).unwrap();
    let g = store.fork_volume(f.id, fork_opts("g", None)).unwrap();
    store.open_volume(g.id).unwrap().write_at(&fill(62, 500), 0).unwrap();
    write(&vol, &mut model, &fill(63, BS as usize), 20 * BS);
    assert!(store.stats().data_blocks > 0);
    drop((vol, fv));

    assert!(store.delete_snapshot(info.id, s2.id).unwrap().existed);
    store.delete_volume(info.id).unwrap();
    store.delete_volume(g.id).unwrap();
    assert!(store.delete_snapshot(f.id, fs.id).unwrap().existed);
    assert_clean(&store);
    store.delete_volume(f.id).unwrap();
    assert!(store.delete_snapshot(info.id, s1.id).unwrap().existed);

    let st = store.stats();
    assert_eq!(st.volumes, 0);
    assert_eq!(st.snapshots, 0);
    assert_eq!(st.data_blocks, 0, "{st:?}");
    assert_eq!(st.physical_bytes, 0, "{st:?}");
    let r = store.check().unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(r.data_pages, 0);

    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.stats().data_blocks, 0);
    assert_clean(&store);
}

#[test]
fn io_on_a_deleted_volume_handle_is_not_found() {
    let (_dir, store, info, vol, _model) = setup();
    let ro = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();
    let blocks_before = store.stats().data_blocks;
    assert!(blocks_before > 0);
    store.delete_volume(info.id).unwrap();

    let mut buf = vec![0u8; 100];
    assert!(is_not_found(vol.read_at(&mut buf, 0)), "read");
    assert!(is_not_found(ro.read_at(&mut buf, 0)), "read through read-only handle");
    assert!(is_not_found(vol.write_at(&[1u8; 100], 10)), "unaligned write");
    assert!(is_not_found(vol.discard(0, 2 * BS)), "aligned discard");
    assert!(is_not_found(vol.discard(10, 100)), "unaligned discard");
    assert_eq!(store.stats().data_blocks, 0);
    assert_clean(&store);
}

/// Split from the test above so the unaligned cases are checked on their
/// own: an aligned write allocates and writes its blocks before it finds
/// the volume gone, and must give them back.
#[test]
fn aligned_write_to_a_deleted_volume_is_not_found_and_leaks_nothing() {
    let (_dir, store, info, vol, _model) = setup();
    store.delete_volume(info.id).unwrap();
    assert!(is_not_found(vol.write_at(&[1u8; BS as usize], 0)), "aligned write");
    assert!(is_not_found(vol.write_at(&vec![2u8; 4 * BS as usize], 4 * BS)), "aligned multi-block write");
    assert_eq!(store.stats().data_blocks, 0);
    assert_clean(&store);
}
