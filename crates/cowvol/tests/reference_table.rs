//! The reference table (format 5): opening a store reads the counts a
//! checkpoint wrote instead of walking the trees, and they are the counts
//! the trees imply, after a clean close and after a crash with a log tail;
//! a damaged table is refused, naming it.

use cowvol::testing::{self, SimDir};
use cowvol::*;
use std::sync::Arc;

const BS: usize = 4096;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn block(w: u8, lb: u64) -> Vec<u8> {
    (0..BS).map(|i| w ^ (lb as u8).wrapping_mul(13) ^ (i as u8) | 1).collect()
}

/// Two volumes with shared and unshared blocks: a snapshot, overwrites
/// after it, a fork of the snapshot with writes of its own.
fn build(store: &Store) -> (VolumeId, VolumeId) {
    let a = store.create_volume(VolumeOptions::new("a", 4096 * BS as u64)).unwrap().id;
    let va = store.open_volume(a).unwrap();
    for lb in (0..4096).step_by(3) {
        va.write_at(&block(1, lb), lb * BS as u64).unwrap();
    }
    va.flush().unwrap();
    let snap = store.create_snapshot(a, SnapshotOptions::named("s")).unwrap();
    for lb in (0..4096).step_by(7) {
        va.write_at(&block(2, lb), lb * BS as u64).unwrap();
    }
    va.flush().unwrap();
    let fork = ForkOptions { name: "b".into(), from_snapshot: Some(snap.id), ..Default::default() };
    let b = store.fork_volume(a, fork).unwrap().id;
    let vb = store.open_volume(b).unwrap();
    for lb in (0..4096).step_by(11) {
        vb.write_at(&block(3, lb), lb * BS as u64).unwrap();
    }
    vb.flush().unwrap();
    (a, b)
}

/// What block `lb` of volume a or b holds after [`build`].
fn expected(volume_b: bool, lb: u64) -> Vec<u8> {
    if volume_b && lb.is_multiple_of(11) {
        block(3, lb)
    } else if !volume_b && lb.is_multiple_of(7) {
        block(2, lb)
    } else if lb.is_multiple_of(3) {
        block(1, lb)
    } else {
        vec![0; BS]
    }
}

fn assert_contents(store: &Store, a: VolumeId, b: VolumeId) {
    let mut buf = vec![0u8; BS];
    for (id, is_b) in [(a, false), (b, true)] {
        let v = store.open_volume(id).unwrap();
        for lb in 0..4096 {
            v.read_at(&mut buf, lb * BS as u64).unwrap();
            assert!(buf == expected(is_b, lb), "volume {id} block {lb}");
        }
    }
}

#[test]
fn opening_a_cleanly_closed_store_reads_no_tree_node_and_its_counts_check_clean() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let (a, b) = build(&store);
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    assert_eq!(testing::nodes_read(&store), 0, "open read tree nodes");
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_contents(&store, a, b);
}

/// Volume reads that miss the node cache read the node with the state lock
/// released; those reads count as node reads all the same, so the zero
/// above says open read nothing, not that reads go uncounted.
#[test]
fn node_reads_outside_the_state_lock_are_counted_after_an_open_that_read_none() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let (a, b) = build(&store);
    store.checkpoint().unwrap();
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    assert_eq!(testing::nodes_read(&store), 0, "open read tree nodes");
    let va = store.open_volume(a).unwrap();
    let mut buf = vec![0u8; BS];
    va.read_at(&mut buf, 6 * BS as u64).unwrap();
    assert!(buf == expected(false, 6));
    let one = testing::nodes_read(&store);
    assert!(one >= 1, "a read whose nodes were not cached counted no node read");
    va.read_at(&mut buf, 6 * BS as u64).unwrap();
    assert_eq!(testing::nodes_read(&store), one, "the same block again finds its nodes cached");
    // A long read over every leaf of the other volume: each leaf it had not
    // read yet counts once.
    let vb = store.open_volume(b).unwrap();
    let mut all = vec![0u8; 4096 * BS];
    vb.read_at(&mut all, 0).unwrap();
    for (lb, got) in all.chunks(BS).enumerate() {
        assert!(got == expected(true, lb as u64), "volume b block {lb}");
    }
    assert!(testing::nodes_read(&store) > one + 1, "the long read counted no node read");
}

#[test]
fn a_crash_with_a_log_tail_replays_onto_the_table_and_checks_clean() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    store.checkpoint().unwrap();
    let (a, b) = build(&store);
    // A deleted snapshot leaves garbage, written by the checkpoint below
    // and released after the reopen.
    let gone = store.create_snapshot(b, SnapshotOptions::named("gone")).unwrap();
    store.checkpoint().unwrap();
    store.delete_snapshot(b, gone.id).unwrap();
    store.checkpoint().unwrap();
    let vb = store.open_volume(b).unwrap();
    vb.write_at(&block(3, 11), 11 * BS as u64).unwrap();
    vb.flush().unwrap();
    drop(vb);
    testing::abandon(store);
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_contents(&store, a, b);
}

#[test]
fn a_damaged_table_page_is_refused_naming_the_table_by_open_or_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts()).unwrap();
    build(&store);
    // A checkpoint writes the table (a short log is left for open).
    store.checkpoint().unwrap();
    store.close().unwrap();
    let path = dir.path().join("cowvol.dat");
    let mut image = std::fs::read(&path).unwrap();
    let pages = testing::table_pages(&image);
    let (page, _) = *pages.iter().find(|(_, kind)| *kind == "group").expect("a group page");
    let at = 8192 + page as usize * BS + 100;
    image[at] ^= 0x20;
    std::fs::write(&path, image).unwrap();
    // Open reads a group page only when it needs that group's counts, so
    // it may not meet the damage; `check` reads every group and must.
    let found = match Store::open(dir.path(), opts()) {
        Err(e) => e,
        Ok(store) => store.check().expect_err("check passed over a damaged group page"),
    };
    match found {
        Error::Corruption { what, location, .. } => {
            assert_eq!(what, "reference table");
            assert!(location.contains(&format!("page {page}")), "{location}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}
