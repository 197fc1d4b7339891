//! `Store::check` runs beside I/O: it works on a pinned view of the trees
//! and a copy of the page bookkeeping taken at one instant, so writes,
//! snapshots, deletes, discards and checkpoints on any volume go on while
//! it counts and reads; it never reports damage that concurrent work made
//! up, and it still finds real damage.

mod common;

use common::stall::{Stall, StallingDir};
use common::{block, decode, Rng};
use cowvol::testing::SimDir;
use cowvol::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u64 = 4096;
const BLOCKS: u64 = 2048;
const BULK_BLOCKS: u64 = 12_000;

fn manual_checkpoints() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

/// The whole volume as write `w` leaves it.
fn generation(w: u64) -> Vec<u8> {
    (0..BLOCKS).flat_map(|lb| block(w, lb)).collect()
}

/// What [`churn`] did, with the write number every block holds now.
struct Churn {
    writes: u64,
    snapshots: u64,
    discards: u64,
    model: Vec<u64>,
}

/// Random 4 KiB writes, flushes, snapshots (the oldest deleted once there
/// are three) and discards on one volume, every block of which holds write
/// `start` (0: zeroes) to begin with, until `stop`.
fn churn(store: &Store, vid: VolumeId, start: u64, seed: u64, stop: &AtomicBool) -> Churn {
    let v = store.open_volume(vid).unwrap();
    let mut rng = Rng(seed);
    let mut c = Churn { writes: 0, snapshots: 0, discards: 0, model: vec![start; BLOCKS as usize] };
    let mut snaps = std::collections::VecDeque::new();
    let mut w = seed << 32;
    while !stop.load(Ordering::Relaxed) {
        w += 1;
        let lb = rng.below(BLOCKS);
        v.write_at(&block(w, lb), lb * BS).unwrap();
        c.model[lb as usize] = w;
        c.writes += 1;
        if c.writes.is_multiple_of(8) {
            v.flush().unwrap();
        }
        if c.writes.is_multiple_of(40) {
            let s = store.create_snapshot(vid, SnapshotOptions::named(format!("s{w}"))).unwrap();
            snaps.push_back(s.id);
            c.snapshots += 1;
            if snaps.len() > 3 {
                store.delete_snapshot(vid, snaps.pop_front().unwrap()).unwrap();
            }
        }
        if c.writes.is_multiple_of(25) {
            let (first, n) = (rng.below(BLOCKS - 16), 1 + rng.below(16));
            v.discard(first * BS, n * BS).unwrap();
            c.model[first as usize..(first + n) as usize].fill(0);
            c.discards += 1;
        }
    }
    v.flush().unwrap();
    c
}

/// Rewrites volume `vid` of [`BULK_BLOCKS`] whole, with a new write number
/// each time (from 101, stored in `last`), until `stop`.
fn rewrite_whole(store: &Store, vid: VolumeId, stop: &AtomicBool, last: &AtomicU64) {
    let v = store.open_volume(vid).unwrap();
    let mut w = 100;
    while !stop.load(Ordering::Relaxed) {
        w += 1;
        let data: Vec<u8> = (0..BULK_BLOCKS).flat_map(|lb| block(w, lb)).collect();
        v.write_at(&data, 0).unwrap();
        v.flush().unwrap();
        last.store(w, Ordering::Relaxed);
    }
}

/// Volumes `a` and `b` of `BLOCKS` blocks, `a` holding generation 1 in
/// every block, flushed, and `c` of `BULK_BLOCKS` blocks for
/// [`rewrite_whole`].
fn two_volumes_and_a_bulk_one(store: &Store) -> (VolumeId, VolumeId, VolumeId) {
    let a = store.create_volume(VolumeOptions::new("a", BLOCKS * BS)).unwrap().id;
    let b = store.create_volume(VolumeOptions::new("b", BLOCKS * BS)).unwrap().id;
    let c = store.create_volume(VolumeOptions::new("c", BULK_BLOCKS * BS)).unwrap().id;
    let va = store.open_volume(a).unwrap();
    va.write_at(&generation(1), 0).unwrap();
    va.flush().unwrap();
    (a, b, c)
}

fn assert_contents(store: &Store, vid: VolumeId, model: &[u64]) {
    let v = store.open_volume(vid).unwrap();
    let mut buf = vec![0u8; BS as usize];
    for (lb, &w) in model.iter().enumerate() {
        v.read_at(&mut buf, lb as u64 * BS).unwrap();
        assert_eq!(decode(&buf, lb as u64), Some(w), "block {lb} of volume {vid}");
    }
}

/// Checks in a loop, scrubs and explicit checkpoints beside two threads
/// that write, snapshot, delete snapshots and discard (one of them on the
/// volume that also holds a big unchanging tree), with background
/// checkpoints on and due often: every check and scrub is clean.
#[test]
fn check_in_a_loop_beside_writes_snapshots_deletes_and_checkpoints_is_always_clean() {
    let secs = std::env::var("COWVOL_CHECK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let opts = StoreOptions { checkpoint_wal_bytes: 1 << 20, ..Default::default() };
    let store = Store::open_in(Arc::new(SimDir::new()), opts).unwrap();
    let (a, b, c) = two_volumes_and_a_bulk_one(&store);
    store.checkpoint().unwrap();

    let stop = AtomicBool::new(false);
    let bulk_writes = AtomicU64::new(0);
    let (checks, scrubs, checkpoints) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let (ca, cb) = std::thread::scope(|s| {
        let ta = s.spawn(|| churn(&store, a, 1, 2, &stop));
        let tb = s.spawn(|| churn(&store, b, 0, 3, &stop));
        // Rewriting a volume of 12,000 blocks whole changes more pages
        // during one check than it looks up one by one, so checks also
        // settle their suspects from a full copy of the bookkeeping.
        s.spawn(|| rewrite_whole(&store, c, &stop, &bulk_writes));
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let r = store.check().unwrap();
                assert!(r.is_clean(), "check beside I/O found problems: {:#?}", r.problems);
                checks.fetch_add(1, Ordering::Relaxed);
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let r = store.scrub().unwrap();
                assert!(r.is_clean(), "scrub beside I/O found damage: {:?}", r.damaged);
                scrubs.fetch_add(1, Ordering::Relaxed);
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                store.checkpoint().unwrap();
                checkpoints.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // Check and scrub run at the lowest CPU priority, so on a machine
        // whose cores the writers (and other tests) keep busy they may
        // finish few passes in `secs`: the writers go on until three checks
        // and a scrub have run beside them, within a minute.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs)
            || (checks.load(Ordering::Relaxed) < 3 || scrubs.load(Ordering::Relaxed) < 1)
                && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let (checks, scrubs) = (checks.into_inner(), scrubs.into_inner());
    eprintln!(
        "{checks} checks, {scrubs} scrubs, {} checkpoints beside {} writes, {} snapshots, {} discards",
        checkpoints.into_inner(),
        ca.writes + cb.writes,
        ca.snapshots + cb.snapshots,
        ca.discards + cb.discards
    );
    assert!(checks >= 3 && scrubs >= 1, "{checks} checks and {scrubs} scrubs ran");
    assert!(ca.snapshots > 0 && cb.discards > 0);
    let w = bulk_writes.into_inner();
    assert!(w > 100, "the bulk writer never finished a pass");
    common::assert_clean(&store);
    assert!(store.scrub().unwrap().is_clean());
    assert_contents(&store, a, &ca.model);
    assert_contents(&store, b, &cb.model);
    assert_contents(&store, c, &vec![w; BULK_BLOCKS as usize]);
}

/// A check is parked in its first node read (after it has pinned its view
/// and copied the counts) while the same volume is overwritten twice with
/// checkpoints between, another volume is written and discarded, a
/// snapshot is taken and another deleted, and a second check runs: all of
/// it completes while the first check is still parked, both checks are
/// clean, and the pages the parked check held are reused once it returns.
#[test]
fn writes_checkpoints_and_a_second_check_go_on_while_a_check_is_parked_in_a_read() {
    let disk = SimDir::new();
    let stall = Arc::new(Stall::for_thread("checker"));
    let dir = StallingDir { inner: disk.clone(), stall: stall.clone() };
    let store = Store::open_in(Arc::new(dir), manual_checkpoints()).unwrap();
    let a = store.create_volume(VolumeOptions::new("a", BLOCKS * BS)).unwrap().id;
    let b = store.create_volume(VolumeOptions::new("b", BLOCKS * BS)).unwrap().id;
    let (va, vb) = (store.open_volume(a).unwrap(), store.open_volume(b).unwrap());
    va.write_at(&generation(1), 0).unwrap();
    vb.write_at(&generation(1), 0).unwrap();
    va.flush().unwrap();
    let old_snapshot = store.create_snapshot(b, SnapshotOptions::named("old")).unwrap();
    store.checkpoint().unwrap();

    stall.arm();
    let first = std::thread::scope(|s| {
        let checker = std::thread::Builder::new().name("checker".into()).spawn_scoped(s, || store.check()).unwrap();
        stall.wait_until_stalled();
        // Should anything below wait for the parked check, the watchdog
        // lets the check go after a minute, and the assertion after the
        // work fails instead of the test hanging.
        let done = stall.watchdog(s);
        for w in [2, 3] {
            va.write_at(&generation(w), 0).unwrap();
            va.flush().unwrap();
            store.checkpoint().unwrap();
        }
        vb.write_at(&generation(4)[..(BLOCKS / 2 * BS) as usize], 0).unwrap();
        vb.discard(BLOCKS / 2 * BS, 16 * BS).unwrap();
        store.create_snapshot(b, SnapshotOptions::named("new")).unwrap();
        store.delete_snapshot(b, old_snapshot.id).unwrap();
        vb.flush().unwrap();
        store.checkpoint().unwrap();
        let second = store.check();
        let waited = stall.is_released();
        done.store(true, Ordering::Relaxed);
        stall.release();
        let first = checker.join().unwrap().unwrap();
        assert!(!waited, "the work above waited for the parked check");
        let second = second.unwrap();
        assert!(second.is_clean(), "second check: {:#?}", second.problems);
        first
    });
    assert!(first.is_clean(), "parked check: {:#?}", first.problems);
    assert!(first.nodes > 0);

    // The parked check held generation 1 of `a`; now that it is done, a
    // checkpoint frees it and a fourth generation fits in what was freed.
    store.checkpoint().unwrap();
    let used = disk.used_bytes();
    va.write_at(&generation(5), 0).unwrap();
    va.flush().unwrap();
    store.checkpoint().unwrap();
    // Punching may even give space back meanwhile.
    let grown = disk.used_bytes().saturating_sub(used);
    assert!(grown < BLOCKS * BS / 4, "the data file grew by {grown} bytes: freed pages were not reused");
    common::assert_clean(&store);
    assert!(store.scrub().unwrap().is_clean());
    drop((va, vb));
    assert_contents(&store, a, &vec![5; BLOCKS as usize]);
}

/// Damage in a tree node page and in a data block, both of a volume that
/// nothing writes to, is reported by `check` (the node) and `scrub` (the
/// block) while other threads write, snapshot and checkpoint on another
/// volume, and nothing else is reported.
#[test]
fn damage_to_a_node_page_and_a_data_block_is_found_while_writers_run() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), manual_checkpoints()).unwrap();
    let a = store.create_volume(VolumeOptions::new("a", BLOCKS * BS)).unwrap().id;
    let b = store.create_volume(VolumeOptions::new("b", BLOCKS * BS)).unwrap().id;
    let va = store.open_volume(a).unwrap();
    va.write_at(&generation(1), 0).unwrap();
    va.flush().unwrap();
    store.checkpoint().unwrap();
    // Every node on disk now is one of `a`'s: `b` has none yet.
    let image = disk.read_visible("cowvol.dat").unwrap();
    // A node page starts with its magic; its own page number follows at
    // byte 8 and its level at byte 16 (format.md, tree nodes).
    let leaf_at = (0..image.len())
        .step_by(BS as usize)
        .find(|&off| &image[off..off + 4] == b"CVND" && image[off + 16] == 0)
        .expect("a leaf of volume a on disk");
    let leaf_page = u64::from_le_bytes(image[leaf_at + 8..leaf_at + 16].try_into().unwrap());
    disk.corrupt("cowvol.dat", leaf_at as u64 + 40, 0x10);
    let damaged_lb = 77;
    let block_at = image.chunks(BS as usize).position(|c| c == block(1, damaged_lb).as_slice()).unwrap() as u64 * BS;
    disk.corrupt("cowvol.dat", block_at + 100, 0x01);

    let stop = AtomicBool::new(false);
    let (check_reports, scrub_reports) = std::thread::scope(|s| {
        let writer = s.spawn(|| churn(&store, b, 0, 9, &stop));
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                store.checkpoint().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let mut checks = Vec::new();
        let mut scrubs = Vec::new();
        for _ in 0..5 {
            checks.push(store.check().unwrap());
            scrubs.push(store.scrub().unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        let done = writer.join().unwrap();
        assert!(done.writes > 0);
        (checks, scrubs)
    });
    for r in check_reports {
        assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
        assert!(
            matches!(r.problems[0], Problem::UnreadableNode { page, .. } if page == leaf_page),
            "{:#?}",
            r.problems
        );
    }
    for r in scrub_reports {
        assert_eq!(r.damaged.len(), 1, "{:?}", r.damaged);
        assert_eq!(r.damaged[0].volumes, vec![(a, damaged_lb)]);
    }
}

/// A reference count one too high on a page of a volume nothing writes is
/// reported, exactly, by every check taken while other threads write,
/// snapshot, rewrite a big volume whole and checkpoint: the page is judged
/// against the second pinned instant whether the changed pages are few or
/// many.
#[test]
fn a_wrong_reference_count_is_found_while_writers_run() {
    let store = Store::open_in(Arc::new(SimDir::new()), manual_checkpoints()).unwrap();
    let (a, b, c) = two_volumes_and_a_bulk_one(&store);
    let page = cowvol::testing::damage_refcount(&store, a, 5).expect("block 5 is mapped");

    let stop = AtomicBool::new(false);
    let bulk_writes = AtomicU64::new(0);
    let reports = std::thread::scope(|s| {
        s.spawn(|| churn(&store, b, 0, 11, &stop));
        s.spawn(|| rewrite_whole(&store, c, &stop, &bulk_writes));
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                store.checkpoint().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let reports: Vec<CheckReport> = (0..8).map(|_| store.check().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        reports
    });
    for r in reports {
        assert_eq!(r.problems, vec![Problem::WrongRefcount { page, stored: 2, actual: 1 }]);
    }
}
