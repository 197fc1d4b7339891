//! Trees larger than the node cache: written nodes are dropped and read
//! back from their pages, and nothing a user sees changes.

mod common;
use common::*;
use cowvol::testing::SimDir;
use cowvol::*;
use std::sync::Arc;

const CACHE: u64 = 64 << 10;

fn opts() -> StoreOptions {
    StoreOptions { node_cache_bytes: CACHE, background_checkpoints: false, ..Default::default() }
}

/// The blocks of [`write_spread`]: two in each leaf, so that no level-1
/// span (256 leaves) fits in one wide leaf and every leaf is a node of
/// its own.
fn spread_blocks(leaves: u64) -> impl Iterator<Item = u64> {
    (0..leaves).flat_map(|leaf| [leaf * 256 + (leaf * 7) % 256, leaf * 256 + 255 - (leaf * 7) % 256])
}

/// Generation `w` of two blocks in each leaf (the same blocks every
/// generation): 1,024 leaves need about 3 MiB of nodes, fifty times the
/// cache.
fn write_spread(v: &Volume, w: u64, leaves: u64) {
    for lb in spread_blocks(leaves) {
        v.write_at(&block(w, lb), lb * 4096).unwrap();
    }
}

fn read_spread(v: &Volume, w: u64, leaves: u64) {
    for lb in spread_blocks(leaves) {
        let mut buf = vec![0u8; 4096];
        v.read_at(&mut buf, lb * 4096).unwrap();
        assert_eq!(decode(&buf, lb), Some(w), "block {lb}");
    }
}

#[test]
fn a_tree_fifty_times_the_cache_reads_writes_snapshots_and_reopens_unchanged() {
    let disk = SimDir::new();
    let leaves = 1024;
    let size = leaves * 256 * 4096;
    let (id, snap) = {
        let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        let id = store.create_volume(VolumeOptions::new("big", size)).unwrap().id;
        let v = store.open_volume(id).unwrap();
        write_spread(&v, 1, leaves);
        v.flush().unwrap();
        store.checkpoint().unwrap();
        let snap = store.create_snapshot(id, SnapshotOptions::named("one")).unwrap().id;
        // Overwrites copy written leaves the snapshot shares, reading each back.
        write_spread(&v, 2, leaves);
        v.flush().unwrap();
        store.checkpoint().unwrap();
        read_spread(&v, 2, leaves);
        let stats = store.stats();
        assert!(stats.node_cache_bytes <= CACHE, "cache holds {} bytes", stats.node_cache_bytes);
        assert!(stats.node_cache_misses > 1000, "the cache never missed: {stats:?}");
        assert_clean(&store);
        (id, snap)
    };
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    read_spread(&store.open_volume(id).unwrap(), 2, leaves);
    let fork_opts = ForkOptions { name: "back".into(), from_snapshot: Some(snap), ..Default::default() };
    let fork = store.fork_volume(id, fork_opts).unwrap().id;
    read_spread(&store.open_volume(fork).unwrap(), 1, leaves);
    // Deleting the snapshot releases the leaves only it held, read back to
    // find their data pages: the fork keeps them alive.
    store.delete_snapshot(id, snap).unwrap();
    store.checkpoint().unwrap();
    assert_clean(&store);
    read_spread(&store.open_volume(fork).unwrap(), 1, leaves);
    store.delete_volume(fork).unwrap();
    store.checkpoint().unwrap();
    assert_clean(&store);
    let stats = store.stats();
    assert_eq!(stats.data_blocks, 2 * leaves, "only the volume's own blocks are left");
}

/// Nodes changed since the last checkpoint count against the budget: the
/// cache drops written nodes to make room for them, so that random writes
/// over a large volume (a dirty leaf each, up to half the budget before a
/// checkpoint is asked for) do not hold that much again beside a full
/// cache.
#[test]
fn written_nodes_make_room_for_dirty_ones() {
    const BUDGET: u64 = 256 << 10;
    const LEAVES: u64 = 128;
    let disk = SimDir::new();
    let opts = StoreOptions { node_cache_bytes: BUDGET, background_checkpoints: false, ..Default::default() };
    let store = Store::open_in(Arc::new(disk.clone()), opts).unwrap();
    let id = store.create_volume(VolumeOptions::new("big", LEAVES * 256 * 4096)).unwrap().id;
    let v = store.open_volume(id).unwrap();
    // Full leaves, 4 KiB each in RAM: 64 of them are the whole budget,
    // 128 twice that.
    let leaf = |w: u64, n: u64| -> Vec<u8> { (n * 256..(n + 1) * 256).flat_map(|lb| block(w, lb)).collect() };
    for n in 0..LEAVES {
        v.write_at(&leaf(1, n), n * 256 * 4096).unwrap();
    }
    v.flush().unwrap();
    store.checkpoint().unwrap();
    // The first half read: the cache is full of leaves no write changes.
    let mut buf = vec![0u8; 256 * 4096];
    for n in 0..LEAVES / 2 {
        v.read_at(&mut buf, n * 256 * 4096).unwrap();
    }
    let full = store.stats().node_cache_bytes;
    // What the counts do not hold is the nodes': reads leave the counts on
    // the disk, so the nodes have most of the budget.
    assert!(full > BUDGET * 3 / 4, "the reads filled only {full} bytes of cache");
    // A block in each of 40 leaves of the other half: 160 KiB of dirty
    // leaves, far fewer nodes than a checkpoint is asked for.
    let changed = LEAVES / 2..LEAVES / 2 + 40;
    for n in changed.clone() {
        v.write_at(&block(2, n * 256 + 9), (n * 256 + 9) * 4096).unwrap();
    }
    let s = store.stats();
    assert!(
        s.metadata_memory_bytes <= BUDGET + BUDGET / 4,
        "{} bytes of metadata in RAM for a budget of {BUDGET} ({} of them written nodes in the cache)",
        s.metadata_memory_bytes,
        s.node_cache_bytes
    );
    assert!(s.node_cache_bytes < full, "no written node left the cache for the dirty ones");
    v.flush().unwrap();
    store.checkpoint().unwrap();
    for n in 0..LEAVES {
        v.read_at(&mut buf, n * 256 * 4096).unwrap();
        let mut want = leaf(1, n);
        if changed.contains(&n) {
            want[9 * 4096..10 * 4096].copy_from_slice(&block(2, n * 256 + 9));
        }
        assert!(buf == want, "leaf {n} reads back wrong");
    }
    assert_clean(&store);
}
