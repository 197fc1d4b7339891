//! A crash at every step of a backup and of a garbage collection leaves the
//! target readable, and nothing a backup references is deleted.
//!
//! `FailAfter` lets the first N target operations through and fails the
//! rest, as if the process had died there; N runs from 0 until the
//! operation completes. In the second mode the write that crosses the
//! budget lands but is reported failed (the process died after the target
//! stored the object, before it heard back).

mod common;

use common::*;
use cowvol::{BackupState, SnapshotId, Store};
use cowvol_backup::testing::FailAfter;
use cowvol_backup::{
    backup, break_locks, collect_garbage, delete_backup, list_backups, restore, verify, BackupOptions, DirTarget,
    RestoreOptions, Target,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;

fn opts() -> BackupOptions {
    // Small packs and two upload threads: many operations, interleaved.
    BackupOptions { chunk_bytes: 64 << 10, pack_bytes: 256 << 10, uploads: 2, incremental: true }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Runs `step` against a copy of `pristine` at `live` behind a target that
/// crashes after 0, 1, 2, ... operations, in both crash modes, until a run
/// completes without crashing. Returns the number of cut points.
fn every_cut_point(pristine: &Path, live: &Path, mut step: impl FnMut(&FailAfter<DirTarget>, &str)) -> usize {
    let mut cut_points = 0;
    for apply_failing_write in [false, true] {
        for budget in 0.. {
            copy_dir(pristine, live);
            let at = format!("budget {budget}, failing write lands: {apply_failing_write}");
            let faulty = FailAfter::new(DirTarget::open(live).unwrap(), budget, apply_failing_write);
            step(&faulty, &at);
            if !faulty.tripped.load(Ordering::SeqCst) {
                break;
            }
            cut_points += 1;
        }
    }
    cut_points
}

fn keys(t: &DirTarget) -> BTreeSet<String> {
    ["packs", "index", "backups"].iter().flat_map(|f| t.list(f).unwrap()).collect()
}

/// Every backup on the target reads back whole, and those named restore
/// to their snapshots' bytes.
fn assert_readable(target: &DirTarget, store: &Store, expect: &[(SnapshotId, &str)], at: &str) {
    let report = verify(target, None, true).unwrap();
    assert!(report.is_clean(), "{at}: {:?}", report.problems);
    let scratch = tempfile::tempdir().unwrap();
    let other = open_store(scratch.path());
    for (i, (snap, id)) in expect.iter().enumerate() {
        let got = restore(target, id, &other, &RestoreOptions::named(format!("r{i}")), &|_, _| {})
            .unwrap_or_else(|e| panic!("{at}: restoring {id}: {e}"));
        assert_eq!(read_volume(&other, got.volume.id), read_snapshot(store, *snap), "{at}: backup {id}");
    }
}

#[test]
fn a_crash_at_every_step_of_a_backup_leaves_the_target_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("store"));
    let vol = volume_with(&store, "db", 4 * MIB, &[(0, 2 * MIB as usize, 1)]);
    let monday = snapshot(&store, vol, "monday");
    let (pristine, live) = (tmp.path().join("pristine"), tmp.path().join("target"));
    let first = backup(&store, monday, &DirTarget::open(&live).unwrap(), &opts(), &mut |_| {}).unwrap();
    copy_dir(&live, &pristine);
    write(&store, vol, &[(256 << 10, 600 << 10, 2), (3 * MIB, 300 << 10, 3)]);
    let tuesday = snapshot(&store, vol, "tuesday");
    let both = |r: &str| [(monday, first.backup_id.clone()), (tuesday, r.to_string())];

    let cut_points = every_cut_point(&pristine, &live, |faulty, at| {
        let result = backup(&store, tuesday, faulty, &opts(), &mut |_| {});
        let target = DirTarget::open(&live).unwrap();
        let rec = store.snapshot(tuesday).unwrap().backup.unwrap();
        let only_monday = [(monday, first.backup_id.as_str())];
        let id = match &result {
            Ok(r) => {
                assert_eq!(rec.state, BackupState::BackedUp, "{at}");
                r.backup_id.clone()
            }
            Err(e) => {
                assert!(faulty.tripped.load(Ordering::SeqCst), "{at}: {e}");
                assert_eq!(rec.state, BackupState::Failed, "{at}");
                assert!(rec.reason.contains("injected crash"), "{at}: {}", rec.reason);
                assert_readable(&target, &store, &only_monday, at);
                // Clean up after the "dead" process, then finish.
                break_locks(&target).unwrap();
                collect_garbage(&target).unwrap();
                assert_readable(&target, &store, &only_monday, at);
                backup(&store, tuesday, &target, &opts(), &mut |_| {}).unwrap().backup_id
            }
        };
        let expect = both(&id);
        let expect: Vec<(SnapshotId, &str)> = expect.iter().map(|(s, i)| (*s, i.as_str())).collect();
        assert_readable(&target, &store, &expect, at);
    });
    assert!(cut_points > 20, "only {cut_points} cut points");
    eprintln!("backup: {cut_points} cut points checked");
}

#[test]
fn a_crash_at_every_step_of_a_collection_deletes_nothing_referenced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("store"));
    let (pristine, live) = (tmp.path().join("pristine"), tmp.path().join("target"));
    let target = DirTarget::open(&live).unwrap();
    let vol = volume_with(&store, "db", 4 * MIB, &[(0, MIB as usize, 1)]);
    let mut backups = Vec::new();
    for (day, seed) in [("a", 2), ("b", 3), ("c", 4)] {
        write(&store, vol, &[(0, 512 << 10, seed), (2 * MIB, 128 << 10, seed + 10)]);
        let s = snapshot(&store, vol, day);
        backups.push((s, backup(&store, s, &target, &opts(), &mut |_| {}).unwrap().backup_id));
    }
    // a's own chunks become garbage, and an interrupted backup left a pack
    // without an index.
    delete_backup(&target, &backups[0].1).unwrap();
    target.put(&format!("packs/{}", "cd".repeat(32)), b"CVPK\x01\0\0\0orphan").unwrap();
    copy_dir(&live, &pristine);
    let kept: Vec<(SnapshotId, &str)> = backups[1..].iter().map(|(s, id)| (*s, id.as_str())).collect();
    collect_garbage(&target).unwrap();
    let clean_end = keys(&target);
    assert!(clean_end.len() < keys(&DirTarget::open(&pristine).unwrap()).len());

    let cut_points = every_cut_point(&pristine, &live, |faulty, at| {
        let result = collect_garbage(faulty);
        let target = DirTarget::open(&live).unwrap();
        assert_readable(&target, &store, &kept, at);
        assert_eq!(list_backups(&target).unwrap().0.len(), 2, "{at}");
        if result.is_err() {
            assert!(faulty.tripped.load(Ordering::SeqCst), "{at}");
            break_locks(&target).unwrap();
            collect_garbage(&target).unwrap();
        }
        assert_eq!(keys(&target), clean_end, "{at}: a later run ends where an uninterrupted one does");
    });
    assert!(cut_points > 10, "only {cut_points} cut points");
    eprintln!("gc: {cut_points} cut points checked");
}
