//! Restoring a volume to a snapshot: the volume then reads exactly as the
//! snapshot, writes after a restore behave like any other writes (and never
//! leak into the snapshot), restores can be repeated to the same or another
//! snapshot, open handles see the restored data, the blocks only the
//! discarded state used are freed, and the restore is durable.

use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::sync::Arc;

mod common;
use common::*;

const BS: u64 = 4096;
const SIZE: u64 = 64 * BS + 1000;

/// `n` random writes (unaligned, sometimes crossing blocks) to volume and model.
fn scribble(rng: &mut Rng, vol: &Volume, model: &mut [u8], n: usize) {
    for _ in 0..n {
        let len = if rng.next().is_multiple_of(2) { rng.range(1, 300) } else { rng.range(BS, 4 * BS) };
        let off = rng.range(0, model.len() as u64 - len + 1);
        let data = rng.bytes(len as usize);
        vol.write_at(&data, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
}

fn block(tag: u8) -> Vec<u8> {
    (0..BS as usize).map(|i| tag.wrapping_add(i as u8 / 7)).collect()
}

#[test]
fn restore_write_restore_again_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("vm", SIZE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut rng = Rng(0xabcd);
    let mut live = vec![0u8; SIZE as usize];

    scribble(&mut rng, &vol, &mut live, 30);
    let a = store.create_snapshot(info.id, SnapshotOptions::named("a")).unwrap();
    let model_a = live.clone();
    scribble(&mut rng, &vol, &mut live, 30);
    let b = store.create_snapshot(info.id, SnapshotOptions::named("b")).unwrap();
    let model_b = live.clone();
    scribble(&mut rng, &vol, &mut live, 30);
    assert_ne!(model_a, model_b);
    assert_ne!(live, model_b);

    let check_snaps = |when: &str| {
        assert_same(&format!("snapshot a {when}"), &read_all(&store.open_snapshot(info.id, a.id).unwrap()), &model_a);
        assert_same(&format!("snapshot b {when}"), &read_all(&store.open_snapshot(info.id, b.id).unwrap()), &model_b);
    };

    // Restore to a, write, restore to a again.
    let r = store.restore_snapshot(info.id, a.id, RestoreOptions::default()).unwrap();
    assert_eq!(r, Restored { volume_id: info.id, snapshot_id: a.id, safety_snapshot: None });
    live = model_a.clone();
    assert_same("volume after restore to a", &read_all(&vol), &live);
    scribble(&mut rng, &vol, &mut live, 25);
    assert_same("volume after writes on restored a", &read_all(&vol), &live);
    check_snaps("after writing to the restored volume");

    store.restore_snapshot(info.id, a.id, RestoreOptions::default()).unwrap();
    live = model_a.clone();
    assert_same("volume after second restore to a", &read_all(&vol), &live);
    scribble(&mut rng, &vol, &mut live, 25);
    assert_same("volume after writes", &read_all(&vol), &live);

    // Now to the other snapshot, and back.
    store.restore_snapshot(info.id, b.id, RestoreOptions::default()).unwrap();
    live = model_b.clone();
    assert_same("volume after restore to b", &read_all(&vol), &live);
    scribble(&mut rng, &vol, &mut live, 25);
    assert_same("volume after writes on restored b", &read_all(&vol), &live);
    check_snaps("after writing to the volume restored to b");

    store.restore_snapshot(info.id, a.id, RestoreOptions::default()).unwrap();
    assert_same("volume after restore b -> a", &read_all(&vol), &model_a);
    store.restore_snapshot(info.id, b.id, RestoreOptions::default()).unwrap();
    assert_same("volume after restore a -> b", &read_all(&vol), &model_b);
    check_snaps("at the end");
    assert_eq!(store.list_snapshots(info.id).len(), 2, "restore must not consume snapshots");
    assert_clean(&store);
}

#[test]
fn restore_to_a_snapshot_of_another_volume_is_not_found_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let a = store.create_volume(VolumeOptions::new("a", SIZE)).unwrap();
    let b = store.create_volume(VolumeOptions::new("b", SIZE)).unwrap();
    let va = store.open_volume(a.id).unwrap();
    let vb = store.open_volume(b.id).unwrap();
    vb.write_at(b"b's snapshot", 0).unwrap();
    let sb = store.create_snapshot(b.id, SnapshotOptions::named("s")).unwrap();
    va.write_at(b"a's live data", 0).unwrap();
    let before = read_all(&va);
    match store.restore_snapshot(a.id, sb.id, RestoreOptions::default()) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("restore to another volume's snapshot: {other:?}"),
    }
    assert_same("volume a", &read_all(&va), &before);
    assert_clean(&store);
}

#[test]
fn open_handles_see_restored_data_on_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("vm", SIZE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let clone = vol.clone();
    let ro = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();

    vol.write_at(&block(1), 0).unwrap();
    vol.write_at(&block(2), 5 * BS + 100).unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    let want = read_all(&vol);
    vol.write_at(&block(3), 0).unwrap();
    vol.write_at(&block(4), 20 * BS).unwrap();
    // Every handle sees the new data first.
    for h in [&vol, &clone, &ro] {
        let mut b = vec![0u8; BS as usize];
        h.read_at(&mut b, 0).unwrap();
        assert_eq!(b, block(3));
    }

    store.restore_snapshot(info.id, snap.id, RestoreOptions::default()).unwrap();
    for (name, h) in [("writer", &vol), ("clone", &clone), ("read-only", &ro)] {
        assert_same(&format!("{name} handle after restore"), &read_all(h), &want);
    }
    // The handle keeps working for writes after the restore.
    clone.write_at(b"after", 7).unwrap();
    let mut b = [0u8; 5];
    ro.read_at(&mut b, 7).unwrap();
    assert_eq!(&b, b"after");
    assert_clean(&store);
}

#[test]
fn restore_frees_only_blocks_the_discarded_state_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("vm", SIZE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();

    // 20 blocks, captured by snapshot a.
    for lb in 0..20u64 {
        vol.write_at(&block(lb as u8), lb * BS).unwrap();
    }
    let a = store.create_snapshot(info.id, SnapshotOptions::named("a")).unwrap();
    let model_a = read_all(&vol);
    assert_eq!(store.stats().data_blocks, 20);

    // Overwrite 10 of them and add 5 new ones: 15 blocks only the live state uses.
    for lb in (5..15u64).chain(30..35) {
        vol.write_at(&block(100 + lb as u8), lb * BS).unwrap();
    }
    let before = store.stats().data_blocks;
    assert_eq!(before, 35);
    store.restore_snapshot(info.id, a.id, RestoreOptions::default()).unwrap();
    let after = store.stats().data_blocks;
    assert_eq!(after, 20, "restore must free exactly the 15 blocks only the discarded state used");
    assert_same("restored volume", &read_all(&vol), &model_a);
    assert_clean(&store);

    // When another snapshot still holds the discarded state, nothing is freed.
    for lb in 0..8u64 {
        vol.write_at(&block(200 + lb as u8), lb * BS).unwrap();
    }
    let b = store.create_snapshot(info.id, SnapshotOptions::named("b")).unwrap();
    let model_b = read_all(&vol);
    assert_eq!(store.stats().data_blocks, 28);
    store.restore_snapshot(info.id, a.id, RestoreOptions::default()).unwrap();
    assert_eq!(store.stats().data_blocks, 28, "snapshot b still references its blocks");
    assert_same("snapshot b", &read_all(&store.open_snapshot(info.id, b.id).unwrap()), &model_b);
    assert_same("restored volume", &read_all(&vol), &model_a);
    assert_clean(&store);

    // Restoring to the same state again frees nothing and costs nothing.
    store.restore_snapshot(info.id, a.id, RestoreOptions::default()).unwrap();
    assert_eq!(store.stats().data_blocks, 28);
    assert_clean(&store);
}

#[test]
fn restore_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(77);
    let mut live = vec![0u8; SIZE as usize];
    let (id, model_a, snap) = {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let info = store.create_volume(VolumeOptions::new("vm", SIZE)).unwrap();
        let vol = store.open_volume(info.id).unwrap();
        scribble(&mut rng, &vol, &mut live, 30);
        let a = store.create_snapshot(info.id, SnapshotOptions::named("a")).unwrap();
        let model_a = live.clone();
        scribble(&mut rng, &vol, &mut live, 30);
        vol.flush().unwrap();
        store.restore_snapshot(info.id, a.id, RestoreOptions::default()).unwrap();
        assert_same("before reopen", &read_all(&vol), &model_a);
        assert_clean(&store);
        (info.id, model_a, a.id)
    };
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let vol = store.open_volume(id).unwrap();
    assert_same("restored volume after reopen", &read_all(&vol), &model_a);
    assert_same("snapshot after reopen", &read_all(&store.open_snapshot(id, snap).unwrap()), &model_a);
    assert_clean(&store);
}

#[test]
fn restore_is_durable_when_it_returns_even_across_a_power_cut() {
    let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let info = store.create_volume(VolumeOptions::new("vm", SIZE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut rng = Rng(99);
    let mut live = vec![0u8; SIZE as usize];
    scribble(&mut rng, &vol, &mut live, 20);
    let a = store.create_snapshot(info.id, SnapshotOptions::named("a")).unwrap();
    let model_a = live.clone();
    scribble(&mut rng, &vol, &mut live, 20);
    vol.flush().unwrap();
    store.restore_snapshot(info.id, a.id, RestoreOptions::default()).unwrap();

    let after = disk.crash(LossMode::DropAll, 1);
    drop((vol, store));
    let store = Store::open_in(Arc::new(after), opts()).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    assert_same("restored volume after power cut", &read_all(&vol), &model_a);
    assert_clean(&store);
}
