//! `Volume::extents` describes data and holes exactly: it agrees with what
//! reads return, covers the asked range, and follows writes, discards,
//! snapshots and restores.

mod common;
use common::*;
use cowvol::*;

const BS: u64 = 4096;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    (dir, store)
}

/// The extents of a range, as (offset, len, data) triples.
fn map(v: &Volume, offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
    v.extents(offset, len).unwrap().into_iter().map(|e| (e.offset, e.len, e.data)).collect()
}

#[test]
fn an_empty_volume_is_one_hole() {
    let (_d, store) = store();
    let info = store.create_volume(VolumeOptions::new("v", 1 << 40)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    assert_eq!(map(&v, 0, 1 << 40), vec![(0, 1 << 40, false)]);
    assert_eq!(map(&v, 12345, 1), vec![(12345, 1, false)]);
    assert!(v.extents(0, 0).unwrap().is_empty());
}

#[test]
fn written_blocks_are_data_and_the_rest_holes_clipped_to_the_range() {
    let (_d, store) = store();
    let info = store.create_volume(VolumeOptions::new("v", 1 << 30)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    v.write_at(&[7u8; 2 * BS as usize], 10 * BS).unwrap();
    v.write_at(&[7u8; 1], 12 * BS + 100).unwrap(); // adjacent block: merges
    v.write_at(&[7u8; 1], (1 << 29) + 5).unwrap(); // far away, other subtree
    assert_eq!(
        map(&v, 0, 1 << 30),
        vec![
            (0, 10 * BS, false),
            (10 * BS, 3 * BS, true),
            (13 * BS, (1 << 29) - 13 * BS, false),
            (1 << 29, BS, true),
            ((1 << 29) + BS, (1 << 29) - BS, false),
        ]
    );
    // Clipped at both ends, inside a data block and inside a hole.
    assert_eq!(map(&v, 10 * BS + 5, 3 * BS), vec![(10 * BS + 5, 3 * BS - 5, true), (13 * BS, 5, false)]);
}

#[test]
fn discard_turns_data_into_holes_and_snapshots_keep_theirs() {
    let (_d, store) = store();
    let info = store.create_volume(VolumeOptions::new("v", 64 * BS)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    v.write_at(&vec![1u8; 8 * BS as usize], 0).unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    v.discard(2 * BS, 4 * BS).unwrap();
    assert_eq!(map(&v, 0, 8 * BS), vec![(0, 2 * BS, true), (2 * BS, 4 * BS, false), (6 * BS, 2 * BS, true)]);
    let s = store.open_snapshot(info.id, snap.id).unwrap();
    assert_eq!(map(&s, 0, 64 * BS), vec![(0, 8 * BS, true), (8 * BS, 56 * BS, false)]);
    store.restore_snapshot(info.id, snap.id, RestoreOptions::default()).unwrap();
    assert_eq!(map(&v, 0, 64 * BS), vec![(0, 8 * BS, true), (8 * BS, 56 * BS, false)]);
}

#[test]
fn extents_agree_with_reads_over_random_writes() {
    let (_d, store) = store();
    let size = 3000 * BS + 123;
    let info = store.create_volume(VolumeOptions::new("v", size)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    let mut rng = Rng(11);
    for _ in 0..200 {
        let off = rng.below(size);
        let len = rng.range(1, 5 * BS).min(size - off);
        if rng.chance(0.3) {
            v.discard(off, len).unwrap();
        } else {
            v.write_at(&vec![0xA5; len as usize], off).unwrap();
        }
    }
    let all = read_all(&v);
    let ext = v.extents(0, size).unwrap();
    let mut pos = 0;
    for e in &ext {
        assert_eq!(e.offset, pos, "extents are contiguous");
        if !e.data {
            let bytes = &all[e.offset as usize..(e.offset + e.len) as usize];
            assert!(bytes.iter().all(|&b| b == 0), "a hole at {} reads as something", e.offset);
        }
        pos += e.len;
    }
    assert_eq!(pos, size, "extents cover the volume");
    // Any byte that is not zero lies in a data extent.
    for (i, &b) in all.iter().enumerate() {
        if b != 0 {
            assert!(ext.iter().any(|e| e.data && (e.offset..e.offset + e.len).contains(&(i as u64))));
        }
    }
    assert!(matches!(v.extents(size, 1), Err(Error::OutOfRange { .. })));
}
