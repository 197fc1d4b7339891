//! What the backup tests share: stores in temporary directories, volumes
//! filled with reproducible bytes, and whole-volume reads.

#![allow(dead_code, reason = "each test file uses its own part of the helpers")]

use cowvol::{SnapshotId, SnapshotOptions, Store, StoreOptions, VolumeId, VolumeOptions};
pub use cowvol_backup::testing::noise;
use std::path::Path;

pub const MIB: u64 = 1 << 20;

pub fn open_store(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

/// A volume of `size` bytes with `extents` written as `(offset, len, seed)`.
pub fn volume_with(store: &Store, name: &str, size: u64, extents: &[(u64, usize, u64)]) -> VolumeId {
    let id = store.create_volume(VolumeOptions::new(name, size)).unwrap().id;
    write(store, id, extents);
    id
}

pub fn write(store: &Store, vol: VolumeId, extents: &[(u64, usize, u64)]) {
    let v = store.open_volume(vol).unwrap();
    for &(offset, len, seed) in extents {
        v.write_at(&noise(seed, len), offset).unwrap();
    }
    v.flush().unwrap();
}

pub fn snapshot(store: &Store, vol: VolumeId, name: &str) -> SnapshotId {
    store.create_snapshot(vol, SnapshotOptions::named(name)).unwrap().id
}

pub fn read_volume(store: &Store, vol: VolumeId) -> Vec<u8> {
    let v = store.open_volume(vol).unwrap();
    let mut buf = vec![0u8; v.size() as usize];
    v.read_at(&mut buf, 0).unwrap();
    buf
}

pub fn read_snapshot(store: &Store, snap: SnapshotId) -> Vec<u8> {
    let info = store.snapshot(snap).unwrap();
    let v = store.open_snapshot(info.volume_id, snap).unwrap();
    let mut buf = vec![0u8; v.size() as usize];
    v.read_at(&mut buf, 0).unwrap();
    buf
}
