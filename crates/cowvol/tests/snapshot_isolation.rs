//! A snapshot is a point-in-time copy of a volume: whatever is written to the
//! volume afterwards (unaligned, across block boundaries, many times over)
//! never shows in it. Also covers the snapshot record (name, description,
//! size, volume, creation time), listing order, lookups across volumes,
//! duplicate names and the read-only snapshot handle.

use cowvol::*;
use std::time::{SystemTime, UNIX_EPOCH};

mod common;
use common::*;

const BS: u64 = 4096;
/// Deliberately not a multiple of the block size.
const SIZE: u64 = (1 << 20) + 777;

/// One random overwrite: small, block-crossing or multi-block, at unaligned
/// offsets; applied to both the volume and the model.
fn random_write(rng: &mut Rng, vol: &Volume, model: &mut [u8]) {
    let size = model.len() as u64;
    let (off, len) = match rng.next() % 3 {
        // Small write anywhere.
        0 => {
            let len = rng.range(1, 200);
            (rng.range(0, size - len + 1), len)
        }
        // Straddles a block boundary.
        1 => {
            let boundary = rng.range(1, size / BS) * BS;
            let before = rng.range(1, 300);
            let after = rng.range(1, 300);
            (boundary - before, before + after)
        }
        // Several blocks, unaligned at both ends.
        _ => {
            let len = rng.range(BS + 1, 5 * BS);
            (rng.range(0, size - len + 1), len)
        }
    };
    let data = rng.bytes(len as usize);
    vol.write_at(&data, off).unwrap();
    model[off as usize..(off + len) as usize].copy_from_slice(&data);
}

fn setup() -> (tempfile::TempDir, Store, VolumeInfo, Volume) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("disk", SIZE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    (dir, store, info, vol)
}

#[test]
fn snapshot_keeps_contents_after_200_unaligned_overwrites() {
    let (dir, store, info, vol) = setup();
    let mut rng = Rng(0x5eed_0001);
    let mut model = vec![0u8; SIZE as usize];
    // Fill part of the volume, unaligned, leaving some holes.
    for _ in 0..40 {
        random_write(&mut rng, &vol, &mut model);
    }
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("before")).unwrap();
    let frozen = model.clone();

    for _ in 0..200 {
        random_write(&mut rng, &vol, &mut model);
    }
    assert_ne!(model, frozen, "the workload must actually change the volume");

    let s = store.open_snapshot(info.id, snap.id).unwrap();
    assert_eq!(s.size(), SIZE);
    assert_same("snapshot after overwrites", &read_all(&s), &frozen);
    assert_same("live volume", &read_all(&vol), &model);
    assert_clean(&store);

    // And still after a reopen.
    vol.flush().unwrap();
    drop((s, vol, store));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let s = store.open_snapshot(info.id, snap.id).unwrap();
    assert_same("snapshot after reopen", &read_all(&s), &frozen);
    let vol = store.open_volume(info.id).unwrap();
    assert_same("live volume after reopen", &read_all(&vol), &model);
    assert_clean(&store);
}

#[test]
fn several_snapshots_each_keep_their_own_point_in_time() {
    let (_dir, store, info, vol) = setup();
    let mut rng = Rng(0x5eed_0002);
    let mut model = vec![0u8; SIZE as usize];
    let mut snaps: Vec<(SnapshotId, Vec<u8>)> = Vec::new();

    for round in 0..5 {
        for _ in 0..40 {
            random_write(&mut rng, &vol, &mut model);
        }
        let s = store.create_snapshot(info.id, SnapshotOptions::named(format!("t{round}"))).unwrap();
        // Right after creation the snapshot equals the volume.
        let h = store.open_snapshot(info.id, s.id).unwrap();
        assert_same(&format!("snapshot t{round} when taken"), &read_all(&h), &model);
        snaps.push((s.id, model.clone()));
    }
    for _ in 0..40 {
        random_write(&mut rng, &vol, &mut model);
    }

    for (i, (id, want)) in snaps.iter().enumerate() {
        let h = store.open_snapshot(info.id, *id).unwrap();
        assert_same(&format!("snapshot t{i} at the end"), &read_all(&h), want);
    }
    // Consecutive snapshots really differ, so each one is checked against
    // its own point in time and not a neighbour's.
    for w in snaps.windows(2) {
        assert_ne!(w[0].1, w[1].1);
    }
    assert_same("live volume", &read_all(&vol), &model);
    assert_clean(&store);
}

#[test]
fn snapshot_record_fields_are_set() {
    let (_dir, store, info, _vol) = setup();
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let before = now();
    let opts = SnapshotOptions {
        name: "nightly-42".into(),
        description: "before the schema migration".into(),
        owner: "ops".into(),
        labels: [("env".to_string(), "prod".to_string())].into(),
        ..Default::default()
    };
    let snap = store.create_snapshot(info.id, opts).unwrap();
    let after = now();

    assert_eq!(snap.name, "nightly-42");
    assert_eq!(snap.description, "before the schema migration");
    assert_eq!(snap.owner, "ops");
    assert_eq!(snap.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(snap.volume_id, info.id);
    assert_eq!(snap.size_bytes, SIZE);
    assert!((before..=after).contains(&snap.created_at), "created_at {} outside [{before}, {after}]", snap.created_at);
    // The stored record is the one returned.
    assert_eq!(store.get_snapshot(info.id, snap.id).unwrap(), snap);
    assert_eq!(store.list_snapshots(info.id), vec![snap.clone()]);

    // A snapshot with default options still gets its volume, size and time.
    let plain = store.create_snapshot(info.id, SnapshotOptions::named("plain")).unwrap();
    assert_eq!(plain.description, "");
    assert_eq!(plain.volume_id, info.id);
    assert_eq!(plain.size_bytes, SIZE);
    assert!(plain.created_at >= snap.created_at);
    assert_ne!(plain.id, snap.id);
    assert_clean(&store);
}

#[test]
fn list_snapshots_is_oldest_first() {
    let (_dir, store, info, vol) = setup();
    let other = store.create_volume(VolumeOptions::new("other", BS * 4)).unwrap();
    // Names out of alphabetical order, so a sort by name would show.
    let names = ["zeta", "alpha", "mike", "bravo", "yankee"];
    let mut created = Vec::new();
    for (i, n) in names.iter().enumerate() {
        vol.write_at(&[i as u8 + 1; 10], 0).unwrap();
        created.push(store.create_snapshot(info.id, SnapshotOptions::named(*n)).unwrap());
        // Interleave snapshots of another volume.
        store.create_snapshot(other.id, SnapshotOptions::named(format!("o{i}"))).unwrap();
    }
    let listed = store.list_snapshots(info.id);
    let listed_names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(listed_names, names);
    assert_eq!(listed, created);
    assert!(listed.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    assert!(listed.iter().all(|s| s.volume_id == info.id));

    let all = store.all_snapshots();
    assert_eq!(all.len(), 2 * names.len());
    assert!(all.windows(2).all(|w| w[0].id < w[1].id && w[0].created_at <= w[1].created_at));
    assert_clean(&store);
}

#[test]
fn snapshot_of_another_volume_is_not_found() {
    let (_dir, store, a, _vol) = setup();
    let b = store.create_volume(VolumeOptions::new("b", BS * 8)).unwrap();
    let sa = store.create_snapshot(a.id, SnapshotOptions::named("s")).unwrap();
    let sb = store.create_snapshot(b.id, SnapshotOptions::named("s")).unwrap();

    match store.get_snapshot(b.id, sa.id) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("get_snapshot of another volume's snapshot: {other:?}"),
    }
    match store.get_snapshot(a.id, sb.id) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("get_snapshot of another volume's snapshot: {other:?}"),
    }
    match store.open_snapshot(b.id, sa.id) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("open_snapshot of another volume's snapshot: {other:?}"),
    }
    // The right pairs work.
    assert_eq!(store.get_snapshot(a.id, sa.id).unwrap().volume_id, a.id);
    assert_eq!(store.get_snapshot(b.id, sb.id).unwrap().volume_id, b.id);
    assert_clean(&store);
}

#[test]
fn duplicate_snapshot_name_on_same_volume_is_already_exists() {
    let (_dir, store, a, vol) = setup();
    let b = store.create_volume(VolumeOptions::new("b", BS * 8)).unwrap();
    vol.write_at(b"first", 0).unwrap();
    let first = store.create_snapshot(a.id, SnapshotOptions::named("daily")).unwrap();
    vol.write_at(b"second", 0).unwrap();

    match store.create_snapshot(a.id, SnapshotOptions::named("daily")) {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("duplicate snapshot name: {other:?}"),
    }
    // Nothing was created and the first snapshot is untouched.
    assert_eq!(store.list_snapshots(a.id), vec![first.clone()]);
    let mut buf = [0u8; 5];
    store.open_snapshot(a.id, first.id).unwrap().read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"first");

    // The same name on another volume is fine.
    store.create_snapshot(b.id, SnapshotOptions::named("daily")).unwrap();
    // And the name is free again once the snapshot is deleted.
    assert!(store.delete_snapshot(a.id, first.id).unwrap().existed);
    let again = store.create_snapshot(a.id, SnapshotOptions::named("daily")).unwrap();
    let mut buf = [0u8; 6];
    store.open_snapshot(a.id, again.id).unwrap().read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"second");
    assert_clean(&store);
}

#[test]
fn writing_through_a_snapshot_handle_is_read_only() {
    let (_dir, store, info, vol) = setup();
    vol.write_at(&[7u8; 9000], 100).unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    let h = store.open_snapshot(info.id, snap.id).unwrap();
    let want = read_all(&h);
    assert!(!h.is_writable());

    for (data, off) in [(vec![1u8; 10], 0u64), (vec![1u8; BS as usize], BS), (vec![], 0)] {
        match h.write_at(&data, off) {
            Err(Error::ReadOnly { .. }) => {}
            other => panic!("write of {} bytes through a snapshot handle: {other:?}", data.len()),
        }
    }
    match h.discard(0, BS) {
        Err(Error::ReadOnly { .. }) => {}
        other => panic!("discard through a snapshot handle: {other:?}"),
    }
    assert_same("snapshot after refused writes", &read_all(&h), &want);
    assert_clean(&store);
}
