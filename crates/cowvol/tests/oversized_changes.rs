//! Changes too large for one WAL record are refused before anything is
//! applied, and the store keeps working.
//! Regression: a snapshot with a description of about 1 MB after some
//! writes was applied in memory, then refused by the log because the open
//! batch counted against it, which left the store refusing every change.

use cowvol::*;

#[test]
fn an_oversized_snapshot_description_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", 1 << 20)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    for i in 0..200u64 {
        vol.write_at(&[i as u8; 4096], (i % 256) * 4096).unwrap();
    }
    // Fits in a record by itself, though not beside the writes' records.
    let opts = SnapshotOptions { description: "x".repeat(1_040_000), ..SnapshotOptions::named("large") };
    store.create_snapshot(id, opts).unwrap();
    // Fits in no record: refused, nothing applied.
    let opts = SnapshotOptions { description: "x".repeat(2_000_000), ..SnapshotOptions::named("huge") };
    assert!(matches!(store.create_snapshot(id, opts), Err(Error::InvalidArgument(_))));
    assert_eq!(store.list_snapshots(id).len(), 1);
    // The store still takes changes, and reopens with the same contents.
    store.create_snapshot(id, SnapshotOptions::named("small")).unwrap();
    vol.write_at(b"after", 0).unwrap();
    vol.flush().unwrap();
    assert!(store.check().unwrap().is_clean());
    drop(vol);
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.list_snapshots(id).len(), 2);
    let mut buf = [0u8; 5];
    store.open_volume(id).unwrap().read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"after");
}
