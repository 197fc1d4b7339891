//! `Store::stats`: the space figures only the trees can tell (mapped,
//! physical and shared bytes, tree nodes) are exact for the trees as they
//! stand, whether their nodes are dirty, written or read back after a
//! reopen; and counting them holds up no I/O: a `stats` parked in the
//! middle of its node reads leaves writes, snapshots, deletes and
//! checkpoints on every volume free to go on.

mod common;

use common::block;
use common::stall::{Stall, StallingDir};
use cowvol::testing::SimDir;
use cowvol::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const BS: u64 = 4096;

fn opts() -> StoreOptions {
    // A small node cache, so that a reopened store reads its nodes.
    StoreOptions { background_checkpoints: false, node_cache_bytes: 64 << 10, ..Default::default() }
}

fn write_range(v: &Volume, w: u64, blocks: std::ops::Range<u64>) {
    let data: Vec<u8> = blocks.clone().flat_map(|lb| block(w, lb)).collect();
    v.write_at(&data, blocks.start * BS).unwrap();
    v.flush().unwrap();
}

/// Volume `a`: blocks 0..100 written, snapshot `s1`, blocks 0..10
/// overwritten; volume `b` forked from `a` then, with blocks 200..205
/// written; blocks 95..100 of `a` discarded. Returns `a` and `s1`.
fn shared_trees(store: &Store) -> (VolumeId, SnapshotId) {
    let a = store.create_volume(VolumeOptions::new("a", 1024 * BS)).unwrap().id;
    let va = store.open_volume(a).unwrap();
    write_range(&va, 1, 0..100);
    let s1 = store.create_snapshot(a, SnapshotOptions::named("s1")).unwrap().id;
    write_range(&va, 2, 0..10);
    let b = store.fork_volume(a, ForkOptions { name: "b".into(), ..Default::default() }).unwrap().id;
    write_range(&store.open_volume(b).unwrap(), 3, 200..205);
    va.discard(95 * BS, 5 * BS).unwrap();
    va.flush().unwrap();
    (a, s1)
}

/// The figures `shared_trees` implies, in blocks: mapped by live volumes
/// (each in full), distinct, shared by more than one tree.
fn assert_figures(store: &Store, mapped: u64, distinct: u64, shared: u64, when: &str) -> u64 {
    let s = store.stats();
    assert_eq!(s.mapped_bytes, mapped * BS, "mapped bytes {when}");
    assert_eq!(s.data_blocks, distinct, "distinct data blocks {when}");
    assert_eq!(s.physical_bytes, distinct * BS, "physical bytes {when}");
    assert_eq!(s.shared_blocks, shared, "shared blocks {when}");
    assert!(s.tree_nodes > 0);
    s.tree_nodes
}

#[test]
fn stats_counts_mapped_distinct_and_shared_blocks_of_the_trees_as_they_stand() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let (a, s1) = shared_trees(&store);
    // a maps 95, b 105; pages: 100 first, 10 overwrites, 5 of b's own.
    // Shared: first-write blocks 10..95 (a, s1, b) and 95..100 (s1, b),
    // and the ten overwrites (a, b).
    let dirty = assert_figures(&store, 200, 115, 100, "with every node dirty");
    store.checkpoint().unwrap();
    assert_eq!(assert_figures(&store, 200, 115, 100, "after a checkpoint"), dirty);
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    assert_eq!(assert_figures(&store, 200, 115, 100, "after a reopen"), dirty);
    // Without s1, blocks 0..10 of the first write belong to no tree, and
    // 95..100 to b alone.
    store.delete_snapshot(a, s1).unwrap();
    assert_figures(&store, 200, 105, 95, "after the snapshot's delete");
    store.delete_volume(a).unwrap();
    // b alone: 105 mapped, nothing shared.
    assert_figures(&store, 105, 105, 0, "after a's delete");
}

#[test]
fn stats_parked_in_a_node_read_holds_up_no_io() {
    let disk = SimDir::new();
    {
        let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        shared_trees(&store);
        // Nothing left to replay: the reopened trees are on the disk.
        store.checkpoint().unwrap();
        store.close().unwrap();
    }
    let stall = Arc::new(Stall::for_thread("stats-reader"));
    let dir = StallingDir { inner: disk, stall: stall.clone() };
    let store = Store::open_in(Arc::new(dir), opts()).unwrap();
    let a = store.volume_by_name("a").unwrap().id;
    let b = store.volume_by_name("b").unwrap().id;
    let (va, vb) = (store.open_volume(a).unwrap(), store.open_volume(b).unwrap());
    // Discover the free space first (punching discovers it, and reads no
    // node): discovery reads table pages under the state lock, which is
    // not what this test parks. The nodes are still on the disk only.
    store.punch_free_space().unwrap();
    stall.arm();
    let before = std::thread::scope(|s| {
        let reader = std::thread::Builder::new().name("stats-reader".into()).spawn_scoped(s, || store.stats()).unwrap();
        if !stall.wait_until_stalled_for(Duration::from_secs(60)) {
            stall.release();
            panic!("stats read no node from the disk: {:?}", reader.join().unwrap());
        }
        let done = stall.watchdog(s);
        write_range(&va, 4, 300..310);
        write_range(&vb, 4, 0..10);
        store.create_snapshot(b, SnapshotOptions::named("s2")).unwrap();
        store.checkpoint().unwrap();
        let waited = stall.is_released();
        done.store(true, Ordering::Relaxed);
        stall.release();
        assert!(!waited, "the work above waited for the parked stats");
        reader.join().unwrap()
    });
    // The parked call counted the trees as they were when it began.
    assert_eq!(before.mapped_bytes, 200 * BS);
    assert_eq!(before.data_blocks, 115);
    // Now: a gained 10 blocks, b overwrote its 10 shared ones (still held
    // by a and, for b's old ones, by nothing but a), and s2 shares b.
    let after = store.stats();
    assert_eq!(after.mapped_bytes, 210 * BS);
    assert_eq!(after.data_blocks, 135);
    common::assert_clean(&store);
}

/// `quick_stats` gives every figure `stats` gives but the five a walk of
/// the trees counts, which it leaves 0, and reads no node to do it.
#[test]
fn quick_stats_has_every_figure_but_the_walks_and_reads_no_node() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    shared_trees(&store);
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    // The first `stats` releases what open left to release (which may
    // re-reserve punched space): compare with the second.
    store.stats();
    let full = store.stats();
    let quick = store.quick_stats();
    assert_eq!(quick.node_cache_misses, full.node_cache_misses, "quick_stats read a node");
    let walked = StoreStats {
        mapped_bytes: 0,
        physical_bytes: 0,
        data_blocks: 0,
        shared_blocks: 0,
        tree_nodes: 0,
        node_cache_hits: quick.node_cache_hits,
        node_cache_misses: quick.node_cache_misses,
        node_cache_bytes: quick.node_cache_bytes,
        metadata_memory_bytes: quick.metadata_memory_bytes,
        written: quick.written,
        ..full.clone()
    };
    assert_eq!(quick, walked);
    assert!(full.mapped_bytes > 0 && full.tree_nodes > 0);
}
