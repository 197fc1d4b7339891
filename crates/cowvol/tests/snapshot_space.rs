//! `Store::snapshot_exclusive_bytes` is what deleting the snapshot frees:
//! blocks shared with the volume, other snapshots, forks or templates do
//! not count.

use cowvol::*;

const BS: u64 = 4096;

#[test]
fn a_snapshot_holds_alone_only_what_was_overwritten_since() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", 4096 * BS)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    v.write_at(&vec![1u8; 1000 * BS as usize], 0).unwrap();
    let s1 = store.create_snapshot(info.id, SnapshotOptions::named("s1")).unwrap();
    assert_eq!(store.snapshot_exclusive_bytes(s1.id).unwrap(), 0, "everything is shared with the volume");

    v.write_at(&vec![2u8; 300 * BS as usize], 0).unwrap();
    assert_eq!(store.snapshot_exclusive_bytes(s1.id).unwrap(), 300 * BS);

    // A second snapshot shares the volume's new blocks, not s1's old ones.
    let s2 = store.create_snapshot(info.id, SnapshotOptions::named("s2")).unwrap();
    v.write_at(&vec![3u8; 50 * BS as usize], 900 * BS).unwrap();
    assert_eq!(store.snapshot_exclusive_bytes(s1.id).unwrap(), 300 * BS);
    assert_eq!(store.snapshot_exclusive_bytes(s2.id).unwrap(), 0, "s1 holds the overwritten blocks too");

    // A fork of s1 shares its blocks: s1 no longer holds them alone.
    store
        .fork_volume(info.id, ForkOptions { name: "f".into(), from_snapshot: Some(s1.id), ..Default::default() })
        .unwrap();
    assert_eq!(store.snapshot_exclusive_bytes(s1.id).unwrap(), 0);
    store.checkpoint().unwrap();
    assert_eq!(store.snapshot_exclusive_bytes(s2.id).unwrap(), 0);
    assert!(matches!(store.snapshot_exclusive_bytes("snap-999".parse().unwrap()), Err(Error::NotFound { .. })));
}

#[test]
fn the_figure_matches_what_delete_frees() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", 2048 * BS)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    v.write_at(&vec![1u8; 2048 * BS as usize], 0).unwrap();
    let s = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    for i in (0..2048).step_by(3) {
        v.write_at(&[9u8; BS as usize], i * BS).unwrap();
    }
    v.flush().unwrap();
    let alone = store.snapshot_exclusive_bytes(s.id).unwrap();
    assert_eq!(alone, 683 * BS);
    let before = store.stats().physical_bytes;
    store.delete_snapshot(info.id, s.id).unwrap();
    assert_eq!(before - store.stats().physical_bytes, alone);
}
