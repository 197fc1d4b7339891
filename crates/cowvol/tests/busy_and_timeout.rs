//! `Busy` and `Timeout` are promises: when an administrative operation
//! returns either, nothing was applied.
//!
//! * Timeout: a restore with a 1 ns drain timeout, while other threads keep
//!   large reads and writes in flight on the volume, must time out at least
//!   once, and every time it does the volume must still hold the marker
//!   written just before the attempt.
//! * Busy: restores, forks and snapshots of one volume race from many
//!   threads; each call either succeeds or is `Busy`, and a `Busy` call left
//!   no trace (no fork, no snapshot, no restore).
//! * Background work: `check` right after the caller's own I/O completed is
//!   clean even while the store's background checkpoints run.

use cowvol::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

mod common;
use common::*;

const BS: u64 = 4096;
const MIB: u64 = 1 << 20;

/// The marker block for attempt `k` (k = 0 is the snapshot's).
fn marker(k: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    b[..8].copy_from_slice(&k.to_le_bytes());
    for (i, x) in b[8..].iter_mut().enumerate() {
        *x = (k as u8).wrapping_mul(29).wrapping_add(i as u8) | 1;
    }
    b
}

fn read_marker(vol: &Volume) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    vol.read_at(&mut b, 0).unwrap();
    b
}

/// Only the thread calling this writes block 0 or restores the volume, so
/// what it reads back after a restore attempt is decided by that attempt
/// alone: the other threads touch other blocks and never restore.
fn restore_attempt(store: &Store, vol: &Volume, id: VolumeId, snap: SnapshotId, k: u64, timeout: Duration) -> Outcome {
    let mine = marker(k);
    vol.write_at(&mine, 0).unwrap();
    let r = store.restore_snapshot(id, snap, RestoreOptions { timeout, ..Default::default() });
    let now = read_marker(vol);
    match r {
        Ok(done) => {
            assert_eq!(done, Restored { volume_id: id, snapshot_id: snap, safety_snapshot: None });
            assert!(now == marker(0), "attempt {k}: restore succeeded but block 0 is not the snapshot's");
            Outcome::Restored
        }
        Err(Error::Timeout { .. }) => {
            assert!(now == mine, "attempt {k}: restore timed out but block 0 changed (it was applied)");
            Outcome::Timeout
        }
        Err(Error::Busy { .. }) => {
            assert!(now == mine, "attempt {k}: restore was busy but block 0 changed (it was applied)");
            Outcome::Busy
        }
        Err(e) => panic!("attempt {k}: unexpected restore error {e:?}"),
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Restored,
    Timeout,
    Busy,
}

#[test]
fn restore_times_out_while_io_is_in_flight_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints run inline (in the writers' flushes) rather than on the
    // background thread: the 8 MiB overwrites trigger checkpoints, and a
    // background one still running when `check` is called at the end makes
    // `check` report false problems (see
    // `check_right_after_io_is_clean_while_background_checkpoints_run`).
    let opts = StoreOptions { background_checkpoints: false, ..Default::default() };
    let store = Store::open(dir.path(), opts).unwrap();
    let info = store.create_volume(VolumeOptions::new("busy", 40 * MIB)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    vol.write_at(&marker(0), 0).unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("base")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let io_done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    // Two writers and a reader keep 8 MiB I/Os in flight on blocks >= 8 MiB.
    for t in 0..3u64 {
        let (vol, stop, io_done) = (vol.clone(), stop.clone(), io_done.clone());
        workers.push(thread::spawn(move || {
            let mut buf = vec![t as u8 + 1; (8 * MIB) as usize];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = 8 * MIB + ((i + t) % 4) * 8 * MIB;
                if t == 2 {
                    vol.read_at(&mut buf, off).unwrap();
                } else {
                    buf[0] = i as u8;
                    vol.write_at(&buf, off).unwrap();
                }
                io_done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // Let the I/O get going (bounded; the attempts below don't depend on it).
    for _ in 0..10_000 {
        if io_done.load(Ordering::Relaxed) >= 2 {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }

    let mut counts = [0u64; 3];
    for k in 1..=2000u64 {
        let o = restore_attempt(&store, &vol, info.id, snap.id, k, Duration::from_nanos(1));
        counts[o as usize] += 1;
        if counts[Outcome::Timeout as usize] >= 25 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("I/O thread failed");
    }
    println!("restored {}, timed out {}, busy {}", counts[0], counts[1], counts[2]);
    assert!(counts[Outcome::Timeout as usize] > 0, "no Timeout observed with a 1 ns timeout and constant I/O");
    assert_eq!(counts[Outcome::Busy as usize], 0, "nothing else held the volume, so Busy is wrong");

    // Once the I/O has stopped, a restore goes through.
    assert_eq!(restore_attempt(&store, &vol, info.id, snap.id, 9999, Duration::from_secs(30)), Outcome::Restored);
    assert_clean(&store);
}

/// Retries `op` while it is `Busy` (bounded), checking after every `Busy`
/// that it left no trace. Returns whether it finally succeeded and how many
/// times it was `Busy`.
fn until_done<T: std::fmt::Debug>(
    what: &str,
    mut op: impl FnMut() -> Result<T>,
    mut applied: impl FnMut() -> bool,
) -> (bool, u64) {
    let mut busy = 0;
    for attempt in 0..20_000u32 {
        match op() {
            Ok(_) => {
                assert!(applied(), "{what} succeeded but is not visible");
                return (true, busy);
            }
            Err(Error::Busy { .. }) => {
                assert!(!applied(), "{what} returned Busy but was applied");
                busy += 1;
                if attempt % 64 == 63 {
                    thread::sleep(Duration::from_micros(100));
                } else {
                    thread::yield_now();
                }
            }
            Err(e) => panic!("{what}: unexpected error {e:?}"),
        }
    }
    (false, busy)
}

#[test]
fn concurrent_admin_operations_succeed_or_are_busy_and_busy_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("src", 64 * BS)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    vol.write_at(&marker(0), 0).unwrap();
    vol.write_at(&[7u8; 3 * BS as usize], 10 * BS).unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("base")).unwrap();

    const ROUNDS: u64 = 40;
    const FORKERS: u64 = 4;
    const SNAPPERS: u64 = 3;
    let barrier = Arc::new(Barrier::new((1 + FORKERS + SNAPPERS) as usize));
    let mut threads = Vec::new();

    // The restorer is the only thread that writes block 0 or restores; a
    // Busy restore must leave the marker it wrote just before in place.
    {
        let (store, vol, barrier) = (store.clone(), vol.clone(), barrier.clone());
        let (id, sid) = (info.id, snap.id);
        threads.push(thread::spawn(move || {
            barrier.wait();
            let (mut busy, mut done) = (0, 0);
            let mut k = 0;
            // Each round retries until its restore goes through (bounded).
            for _ in 0..ROUNDS {
                for attempt in 0..20_000u32 {
                    k += 1;
                    match restore_attempt(&store, &vol, id, sid, k, Duration::from_secs(30)) {
                        Outcome::Busy => busy += 1,
                        Outcome::Restored => {
                            done += 1;
                            break;
                        }
                        Outcome::Timeout => panic!("restore {k} timed out with no I/O in flight"),
                    }
                    if attempt % 64 == 63 {
                        thread::sleep(Duration::from_micros(100));
                    }
                }
            }
            (Vec::<String>::new(), Vec::<String>::new(), busy, done)
        }));
    }
    // Forkers (of the live volume and of the snapshot): each name is used by
    // one thread only, so "no volume of that name" after a Busy is sound.
    for t in 0..FORKERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        let (id, sid) = (info.id, snap.id);
        threads.push(thread::spawn(move || {
            barrier.wait();
            let (mut made, mut gave_up, mut busy) = (Vec::new(), Vec::new(), 0);
            for i in 0..ROUNDS {
                let name = format!("fork-{t}-{i}");
                let from = (t % 2 == 1).then_some(sid);
                let (ok, b) = until_done(
                    &name,
                    || {
                        store.fork_volume(
                            id,
                            ForkOptions { name: name.clone(), from_snapshot: from, ..Default::default() },
                        )
                    },
                    || store.volume_by_name(&name).is_some(),
                );
                busy += b;
                if ok {
                    made.push(name)
                } else {
                    gave_up.push(name)
                }
            }
            let n = made.len() as u64;
            (made, gave_up, busy, n)
        }));
    }
    // Snapshotters.
    for t in 0..SNAPPERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        let id = info.id;
        threads.push(thread::spawn(move || {
            barrier.wait();
            let (mut made, mut gave_up, mut busy) = (Vec::new(), Vec::new(), 0);
            for i in 0..ROUNDS {
                let name = format!("snap-{t}-{i}");
                let (ok, b) = until_done(
                    &name,
                    || store.create_snapshot(id, SnapshotOptions::named(name.clone())),
                    || store.list_snapshots(id).iter().any(|s| s.name == name),
                );
                busy += b;
                if ok {
                    made.push(name)
                } else {
                    gave_up.push(name)
                }
            }
            let n = made.len() as u64;
            (made, gave_up, busy, n)
        }));
    }

    let (mut made, mut gave_up, mut busy, mut applied) = (Vec::new(), Vec::new(), 0, 0);
    for t in threads {
        let (m, g, b, d) = t.join().expect("worker failed");
        made.extend(m);
        gave_up.extend(g);
        busy += b;
        applied += d;
    }
    println!("{applied} operations applied, {busy} Busy answers, {} given up", gave_up.len());

    // Final state: exactly the successful forks and snapshots exist.
    let volumes: Vec<String> = store.list_volumes().into_iter().map(|v| v.name).collect();
    let snapshots: Vec<String> = store.list_snapshots(info.id).into_iter().map(|s| s.name).collect();
    for name in &made {
        assert!(volumes.contains(name) || snapshots.contains(name), "{name} succeeded but does not exist");
    }
    for name in &gave_up {
        assert!(!volumes.contains(name) && !snapshots.contains(name), "{name} was only ever Busy but exists");
    }
    let forks_made = made.iter().filter(|n| n.starts_with("fork-")).count();
    let snaps_made = made.iter().filter(|n| n.starts_with("snap-")).count();
    assert_eq!(volumes.len(), 1 + forks_made);
    assert_eq!(snapshots.len(), 1 + snaps_made);
    assert_clean(&store);
}

/// `check` on a store whose user-visible I/O has all completed must be
/// clean. Background checkpoints (here made frequent by a small WAL
/// threshold) are the store's own business and must not make `check`
/// report problems.
#[test]
fn check_right_after_io_is_clean_while_background_checkpoints_run() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions { checkpoint_wal_bytes: 16 << 10, ..Default::default() };
    let store = Store::open(dir.path(), opts).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", MIB)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    for i in 0..300u64 {
        // Overwrite 64 blocks and make it durable; nothing of ours is in flight.
        vol.write_at(&vec![i as u8 | 1; 64 * BS as usize], (i % 4) * 64 * BS).unwrap();
        vol.flush().unwrap();
        let r = store.check().unwrap();
        assert!(
            r.is_clean(),
            "round {i}: check found {} problems: {:?}",
            r.problems.len(),
            &r.problems[..r.problems.len().min(8)]
        );
    }
}
