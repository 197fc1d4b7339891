//! Access modes decide who may open a volume for writing:
//! read-write-once allows one read-write handle (clones included) plus any
//! number of read-only ones; read-write-many allows many writers;
//! read-only-many refuses every writer.

use cowvol::*;

mod common;
use common::*;

const BS: u64 = 4096;

fn create(store: &Store, name: &str, mode: AccessMode) -> VolumeInfo {
    let mut opts = VolumeOptions::new(name, 16 * BS);
    opts.access_mode = mode;
    let info = store.create_volume(opts).unwrap();
    assert_eq!(info.access_mode, mode);
    info
}

fn read(v: &Volume, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    v.read_at(&mut b, off).unwrap();
    b
}

#[test]
fn read_write_once_allows_one_writer_and_many_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = create(&store, "rwo", AccessMode::ReadWriteOnce);

    let w = store.open_volume(info.id).unwrap();
    assert!(w.is_writable());
    match store.open_volume(info.id) {
        Err(Error::Busy { .. }) => {}
        other => panic!("second read-write open of a read-write-once volume: {other:?}"),
    }
    match store.open_volume_with(info.id, OpenMode::ReadWrite) {
        Err(Error::Busy { .. }) => {}
        other => panic!("second explicit read-write open: {other:?}"),
    }

    // Read-only handles open fine and see the writer's data.
    let r1 = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();
    let r2 = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();
    assert!(!r1.is_writable());
    w.write_at(b"written by the one writer", 100).unwrap();
    assert_eq!(read(&r1, 100, 25), b"written by the one writer");
    assert_eq!(read(&r2, 100, 25), b"written by the one writer");

    // Their writes are refused and change nothing.
    for h in [&r1, &r2] {
        match h.write_at(b"nope", 100) {
            Err(Error::ReadOnly { .. }) => {}
            other => panic!("write through a read-only handle: {other:?}"),
        }
        match h.discard(0, BS) {
            Err(Error::ReadOnly { .. }) => {}
            other => panic!("discard through a read-only handle: {other:?}"),
        }
    }
    assert_eq!(read(&w, 100, 25), b"written by the one writer");

    // Read-only handles never count as writers: still exactly one writer.
    drop(r1);
    assert!(matches!(store.open_volume(info.id), Err(Error::Busy { .. })));

    // A clone is the same writer: dropping the original while a clone
    // lives keeps the volume taken.
    let clone = w.clone();
    drop(w);
    assert!(matches!(store.open_volume(info.id), Err(Error::Busy { .. })));
    clone.write_at(b"clone", 0).unwrap();
    drop(clone);

    // Now a new writer may open.
    let w2 = store.open_volume(info.id).unwrap();
    w2.write_at(b"second writer", 200).unwrap();
    assert_eq!(read(&r2, 0, 5), b"clone");
    assert_eq!(read(&r2, 200, 13), b"second writer");
    assert!(matches!(store.open_volume(info.id), Err(Error::Busy { .. })));
    drop(w2);
    drop(store.open_volume(info.id).unwrap());
    assert_clean(&store);
}

#[test]
fn read_write_once_is_per_volume() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let a = create(&store, "a", AccessMode::ReadWriteOnce);
    let b = create(&store, "b", AccessMode::ReadWriteOnce);
    let _wa = store.open_volume(a.id).unwrap();
    // Another volume (and a fork of the held one) can still be opened for writing.
    let _wb = store.open_volume(b.id).unwrap();
    let f = store.fork_volume(a.id, ForkOptions { name: "fork-of-a".into(), ..Default::default() }).unwrap();
    let wf = store.open_volume(f.id).unwrap();
    wf.write_at(b"x", 0).unwrap();
    assert!(matches!(store.open_volume(f.id), Err(Error::Busy { .. })));
    assert_clean(&store);
}

#[test]
fn read_write_many_allows_several_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = create(&store, "rwx", AccessMode::ReadWriteMany);
    let w1 = store.open_volume(info.id).unwrap();
    let w2 = store.open_volume(info.id).unwrap();
    let w3 = store.open_volume_with(info.id, OpenMode::ReadWrite).unwrap();
    assert!(w1.is_writable() && w2.is_writable() && w3.is_writable());

    w1.write_at(b"one", 0).unwrap();
    w2.write_at(b"two", BS).unwrap();
    w3.write_at(b"three", 2 * BS - 2).unwrap();
    for h in [&w1, &w2, &w3] {
        assert_eq!(read(h, 0, 3), b"one");
        assert_eq!(read(h, BS, 3), b"two");
        assert_eq!(read(h, 2 * BS - 2, 5), b"three");
    }
    // Read-only handles on it still refuse writes.
    let r = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();
    assert!(matches!(r.write_at(b"x", 0), Err(Error::ReadOnly { .. })));
    assert_eq!(read(&r, 0, 3), b"one");
    assert_clean(&store);
}

#[test]
fn read_only_many_refuses_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = create(&store, "rox", AccessMode::ReadOnlyMany);
    match store.open_volume(info.id) {
        Err(Error::ReadOnly { .. }) => {}
        other => panic!("read-write open of a read-only-many volume: {other:?}"),
    }
    match store.open_volume_with(info.id, OpenMode::ReadWrite) {
        Err(Error::ReadOnly { .. }) => {}
        other => panic!("explicit read-write open of a read-only-many volume: {other:?}"),
    }
    // Many readers are fine; they read zeroes and cannot write.
    let r1 = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();
    let r2 = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();
    assert_eq!(read(&r1, 0, 100), vec![0u8; 100]);
    assert!(matches!(r2.write_at(b"x", 0), Err(Error::ReadOnly { .. })));
    assert_eq!(read(&r2, 0, 100), vec![0u8; 100]);
    // Still refused after the readers are gone.
    drop((r1, r2));
    assert!(matches!(store.open_volume(info.id), Err(Error::ReadOnly { .. })));
    assert_clean(&store);
}

#[test]
fn access_mode_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        [
            create(&store, "once", AccessMode::ReadWriteOnce).id,
            create(&store, "many", AccessMode::ReadWriteMany).id,
            create(&store, "ro", AccessMode::ReadOnlyMany).id,
        ]
    };
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let _once = store.open_volume(ids[0]).unwrap();
    assert!(matches!(store.open_volume(ids[0]), Err(Error::Busy { .. })));
    let _m1 = store.open_volume(ids[1]).unwrap();
    let _m2 = store.open_volume(ids[1]).unwrap();
    assert!(matches!(store.open_volume(ids[2]), Err(Error::ReadOnly { .. })));
    assert_clean(&store);
}
