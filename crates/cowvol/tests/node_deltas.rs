//! Node deltas (format 10): a leaf copied from a page no other tree holds
//! is checkpointed as a record of the entries it changed, not as a page of
//! its own, until it has changed at more places than a record holds; a
//! leaf a snapshot shares is copied whole. Whatever form a node took, the
//! volume and its snapshots read back what was written, after reopens and
//! with a node cache too small to keep the nodes.

use cowvol::testing::SimDir;
use cowvol::*;
use std::sync::Arc;

mod common;
use common::{assert_clean, block, decode};

const BS: u64 = 4096;
/// Blocks a leaf maps (the fan-out with 4 KiB blocks).
const LEAF: u64 = 256;
const LEAVES: u64 = 64;
/// Most entries a record holds with 4 KiB blocks (`tree::delta`).
const RECORD_CAP: u64 = 32;

fn opts() -> StoreOptions {
    // A cache of a few nodes: reads after a checkpoint come from the pages
    // and their records, not from memory.
    StoreOptions { background_checkpoints: false, node_cache_bytes: 64 << 10, ..Default::default() }
}

/// A volume of `LEAVES` full leaves, written in order and checkpointed.
fn filled(store: &Store) -> (Volume, Vec<u64>) {
    let id = store.create_volume(VolumeOptions::new("v", LEAVES * LEAF * BS)).unwrap().id;
    let v = store.open_volume(id).unwrap();
    let mut ids = vec![0; (LEAVES * LEAF) as usize];
    for lb in 0..LEAVES * LEAF {
        v.write_at(&block(1, lb), lb * BS).unwrap();
        ids[lb as usize] = 1;
    }
    v.flush().unwrap();
    store.checkpoint().unwrap();
    (v, ids)
}

/// Overwrites one block in every leaf (block `round` of it, so that each
/// round changes a new index), then flushes and checkpoints. Returns what
/// the checkpoint wrote as whole nodes and as delta pages.
fn overwrite_round(store: &Store, v: &Volume, ids: &mut [u64], round: u64) -> (u64, u64) {
    let w = round + 2;
    for leaf in 0..LEAVES {
        let lb = leaf * LEAF + round % LEAF;
        v.write_at(&block(w, lb), lb * BS).unwrap();
        ids[lb as usize] = w;
    }
    v.flush().unwrap();
    let before = store.written();
    store.checkpoint().unwrap();
    let after = store.written();
    (after.node_bytes - before.node_bytes, after.delta_bytes - before.delta_bytes)
}

fn assert_reads(v: &Volume, ids: &[u64], what: &str) {
    let mut buf = vec![0u8; BS as usize];
    for (lb, &w) in ids.iter().enumerate() {
        v.read_at(&mut buf, lb as u64 * BS).unwrap();
        assert_eq!(decode(&buf, lb as u64), Some(w), "{what}: block {lb}");
    }
}

/// Closes `store`, opens it again on `disk`, and checks that volume `v`
/// reads `ids` and the store checks clean.
fn reopens_reading(store: Store, v: Volume, disk: SimDir, ids: &[u64]) {
    let id = v.volume_id().unwrap();
    drop(v);
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    assert_reads(&store.open_volume(id).unwrap(), ids, "reopened");
    assert_clean(&store);
}

#[test]
fn overwritten_leaves_are_checkpointed_as_records_until_they_change_too_much() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let (v, mut ids) = filled(&store);
    for round in 0..RECORD_CAP {
        let (nodes, deltas) = overwrite_round(&store, &v, &mut ids, round);
        // Only the root (it names its children's records) is written whole;
        // each leaf's record grows by 12 bytes a round.
        assert_eq!(nodes, BS, "round {round}: the root alone is written whole");
        let records = LEAVES * (16 + 12 * (round + 1)).next_multiple_of(16);
        assert!(deltas >= BS && deltas <= records.div_ceil(BS - 32) * BS, "round {round}: {deltas} bytes of deltas");
    }
    // One change more than a record holds: every leaf is written whole.
    let (nodes, deltas) = overwrite_round(&store, &v, &mut ids, RECORD_CAP);
    assert_eq!((nodes, deltas), ((LEAVES + 1) * BS, 0), "the leaves outgrew their records");
    // And from their new pages, records again.
    let (nodes, _) = overwrite_round(&store, &v, &mut ids, RECORD_CAP + 1);
    assert_eq!(nodes, BS);
    assert_reads(&v, &ids, "before the reopen");
    assert_clean(&store);
    reopens_reading(store, v, disk, &ids);
}

/// A snapshot shares the leaves: the first overwrite of each copies it whole
/// (the snapshot keeps the page and its record), and the next ones are
/// records of the copy. Deleting the snapshot gives its pages and records
/// back, and the volume reads what it should throughout.
#[test]
fn a_snapshot_keeps_the_records_it_shares_and_its_delete_drops_them() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let (v, mut ids) = filled(&store);
    for round in 0..3 {
        overwrite_round(&store, &v, &mut ids, round);
    }
    let vid = v.volume_id().unwrap();
    let snap = store.create_snapshot(vid, SnapshotOptions::named("s")).unwrap();
    let frozen = ids.clone();
    let (nodes, _) = overwrite_round(&store, &v, &mut ids, 3);
    assert_eq!(nodes, (LEAVES + 1) * BS, "a shared leaf is copied whole");
    let (nodes, _) = overwrite_round(&store, &v, &mut ids, 4);
    assert_eq!(nodes, BS, "its copy is no longer shared");
    assert_reads(&store.open_snapshot(vid, snap.id).unwrap(), &frozen, "the snapshot");
    assert_reads(&v, &ids, "the volume");
    assert_clean(&store);
    let used = store.stats().used_bytes;
    store.delete_snapshot(vid, snap.id).unwrap();
    store.checkpoint().unwrap();
    store.checkpoint().unwrap();
    assert!(store.stats().used_bytes < used, "the snapshot's leaves and records were given back");
    assert_reads(&v, &ids, "after the delete");
    assert_clean(&store);
    reopens_reading(store, v, disk, &ids);
}

/// Discarding every block of a leaf written as a record empties it: the
/// leaf goes, and with it its page and its record.
#[test]
fn a_leaf_emptied_after_its_record_leaves_nothing_behind() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let (v, mut ids) = filled(&store);
    overwrite_round(&store, &v, &mut ids, 0);
    v.discard(0, 3 * LEAF * BS).unwrap();
    v.flush().unwrap();
    for id in &mut ids[..(3 * LEAF) as usize] {
        *id = 0;
    }
    store.checkpoint().unwrap();
    assert_reads(&v, &ids, "after the discard");
    assert_clean(&store);
    reopens_reading(store, v, disk, &ids);
}
