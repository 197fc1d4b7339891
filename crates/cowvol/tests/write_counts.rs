//! `Store::written`: every byte the store writes to its data file is
//! counted once, under what it holds, and every `fdatasync` is counted, so
//! that the metadata a workload costs can be read off a running store.

use cowvol::testing::SimDir;
use cowvol::*;
use std::sync::Arc;

const BS: u64 = 4096;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn block(w: u64, lb: u64) -> Vec<u8> {
    let seed = (w << 32 | lb).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..BS).map(|i| (seed >> (i % 7 * 8)) as u8 ^ i as u8).collect()
}

fn total(w: &WriteStats) -> u64 {
    w.data_bytes + w.zeroed_bytes + w.metadata_bytes()
}

/// A store on a simulated disk, created and closed, then opened again: the
/// counters start with that open.
fn reopened() -> (SimDir, Store) {
    let dir = SimDir::new();
    Store::open_in(Arc::new(dir.clone()), opts()).unwrap().close().unwrap();
    let store = Store::open_in(Arc::new(dir.clone()), opts()).unwrap();
    (dir, store)
}

#[test]
fn every_byte_and_sync_the_disk_receives_is_counted_once() {
    let (dir, store) = reopened();
    let before_disk = dir.stats();
    let before = store.written();
    let id = store.create_volume(VolumeOptions::new("v", 64 << 20)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    for i in 0..300u64 {
        let lb = (i * 7919) % 16_384;
        vol.write_at(&block(i, lb), lb * BS).unwrap();
        if i % 50 == 49 {
            vol.flush().unwrap();
        }
    }
    // An unaligned write rewrites both blocks it touches.
    vol.write_at(&[7u8; 100], BS - 50).unwrap();
    vol.flush().unwrap();
    store.create_snapshot(id, SnapshotOptions::named("s")).unwrap();
    vol.discard(0, 1 << 20).unwrap();
    vol.flush().unwrap();
    store.checkpoint().unwrap();
    let after_disk = dir.stats();
    let w = store.written();

    assert_eq!(
        total(&w) - total(&before),
        after_disk.bytes_written - before_disk.bytes_written,
        "bytes the disk received that no kind counted (or counted twice): {w:?}"
    );
    assert_eq!(w.syncs - before.syncs, after_disk.syncs - before_disk.syncs, "syncs: {w:?}");
    assert_eq!(w.data_bytes - before.data_bytes, 302 * BS, "300 blocks, then two for the unaligned write");
    assert!(w.log_bytes > before.log_bytes, "the writes were logged");
    assert!(w.node_bytes > before.node_bytes, "the checkpoint wrote tree nodes");
    assert!(w.table_bytes > before.table_bytes, "the checkpoint wrote reference counts");
    assert!(w.catalog_bytes > before.catalog_bytes, "the checkpoint wrote a catalog");
    assert_eq!(w.superblock_bytes - before.superblock_bytes, 112, "one checkpoint, one superblock");
    assert_eq!(store.stats().written, store.written(), "stats carries the same figures");
}

#[test]
fn close_after_a_checkpoint_with_nothing_changed_writes_nothing() {
    let (dir, store) = reopened();
    let id = store.create_volume(VolumeOptions::new("v", 16 << 20)).unwrap().id;
    store.open_volume(id).unwrap().write_at(&block(1, 3), 3 * BS).unwrap();
    store.checkpoint().unwrap();
    let (disk, w) = (dir.stats(), store.written());
    assert_eq!(w.superblock_bytes, 112);
    store.close().unwrap();
    let after = dir.stats();
    assert_eq!(after.bytes_written, disk.bytes_written, "close wrote after a checkpoint that covered everything");
    assert_eq!(after.syncs, disk.syncs, "close synced after a checkpoint that covered everything");
}

#[test]
fn counters_start_at_zero_with_each_open() {
    let (_dir, store) = reopened();
    let w = store.written();
    assert_eq!(w.data_bytes, 0);
    assert_eq!(w.node_bytes + w.table_bytes + w.catalog_bytes + w.superblock_bytes, 0, "open wrote no checkpoint");
    assert_eq!(w.metadata_per_data_byte(), 0.0);
}

/// A write that finds the dirty nodes past their limit asks for a
/// checkpoint; one that runs after the request answers it. Left standing,
/// the request ran a second checkpoint at the next sync, writing a catalog
/// and a superblock for the few changes made in between (on a 1 TiB volume
/// under random overwrites, nearly every checkpoint had such a twin).
#[test]
fn a_checkpoint_answers_the_requests_made_before_it() {
    let dir = SimDir::new();
    // The smallest cache: a checkpoint is asked for past 4,096 dirty nodes.
    let small_cache = StoreOptions { node_cache_bytes: 0, ..opts() };
    let store = Store::open_in(Arc::new(dir.clone()), small_cache).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", 1 << 42)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    // A block in each of 5,000 spans of 65,536 blocks: a leaf each.
    let dirty_many_leaves = |round: u64| {
        for span in 0..5_000u64 {
            let lb = span << 16 | round;
            vol.write_at(&block(round, lb), lb * BS).unwrap();
        }
    };
    dirty_many_leaves(1);
    store.checkpoint().unwrap();
    let after_checkpoint = store.written().superblock_bytes;
    vol.write_at(&block(2, 7), 7 * BS).unwrap();
    vol.flush().unwrap();
    assert_eq!(
        store.written().superblock_bytes,
        after_checkpoint,
        "a sync after the checkpoint ran another for a request the first had answered"
    );
    dirty_many_leaves(3);
    vol.flush().unwrap();
    assert_eq!(
        store.written().superblock_bytes,
        after_checkpoint + 112,
        "dirty nodes past their limit since the checkpoint get one of their own at the next sync"
    );
}

/// The first write to each leaf a snapshot shares copies the leaf and
/// raises the counts of its 256 blocks, in groups mostly not in RAM. Those
/// increments wait for their groups' loads but free nothing, so they ask
/// for no checkpoint until they pass the budget of changes kept; counted
/// with the pages held back for reuse, they asked for one every 256
/// writes, and a 1 TiB volume overwritten after a snapshot wrote a catalog
/// and the interior nodes above a few hundred leaves each time.
#[test]
fn after_a_snapshot_copied_leaves_ask_for_no_checkpoint_every_few_hundred_writes() {
    const LEAVES: u64 = 320;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", LEAVES * 256 * BS)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    for leaf in 0..LEAVES {
        let run: Vec<u8> = (leaf * 256..(leaf + 1) * 256).flat_map(|lb| block(1, lb)).collect();
        vol.write_at(&run, leaf * 256 * BS).unwrap();
    }
    vol.flush().unwrap();
    store.create_snapshot(id, SnapshotOptions::named("before")).unwrap();
    drop(vol);
    store.close().unwrap();
    // Reopened, no group of counts is in RAM.
    let store = Store::open(dir.path(), opts()).unwrap();
    let vol = store.open_volume(id).unwrap();
    let checkpoints_before = store.written().superblock_bytes;
    // One block in each leaf, a flush every 16: 81,920 counts raised.
    for leaf in 0..LEAVES {
        let lb = leaf * 256 + leaf % 256;
        vol.write_at(&block(2, lb), lb * BS).unwrap();
        if leaf % 16 == 15 {
            vol.flush().unwrap();
        }
    }
    assert_eq!(
        store.written().superblock_bytes,
        checkpoints_before,
        "raised counts waiting for their groups asked for checkpoints"
    );
    store.checkpoint().unwrap();
    let mut buf = vec![0u8; BS as usize];
    for leaf in 0..LEAVES {
        let lb = leaf * 256 + leaf % 256;
        vol.read_at(&mut buf, lb * BS).unwrap();
        assert!(buf == block(2, lb), "block {lb}");
    }
    drop(vol);
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}
