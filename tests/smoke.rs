use cowvol::*;

#[test]
fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("a", 10 << 20)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    vol.write_at(&data, 1234).unwrap();
    let mut back = vec![0u8; data.len()];
    vol.read_at(&mut back, 1234).unwrap();
    assert_eq!(back, data);
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    vol.write_at(&[9u8; 5000], 0).unwrap();
    vol.flush().unwrap();
    let r = store.check().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    drop(vol);
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut back = vec![0u8; 5000];
    vol.read_at(&mut back, 0).unwrap();
    assert_eq!(back, vec![9u8; 5000]);
    let s = store.open_snapshot(info.id, snap.id).unwrap();
    let mut back = vec![0u8; data.len()];
    s.read_at(&mut back, 1234).unwrap();
    assert_eq!(back, data);
    let r = store.check().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    store.restore_snapshot(info.id, snap.id, RestoreOptions::default()).unwrap();
    vol.read_at(&mut back, 1234).unwrap();
    assert_eq!(back, data);
    store.delete_snapshot(info.id, snap.id).unwrap();
    let r = store.check().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    println!("{:?}", store.stats());
}
