//! Deleting backups, retention and garbage collection: only packs no
//! remaining backup references go, and running again changes nothing.

mod common;

use common::*;
use cowvol_backup::{
    backup, collect_garbage, delete_backup, list_backups, prune, restore, verify, BackupOptions, DirTarget, Error,
    RestoreOptions, Target,
};

#[test]
fn gc_deletes_only_unreferenced_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let opts = BackupOptions { pack_bytes: MIB, ..Default::default() };
    let vol = volume_with(&store, "db", 16 * MIB, &[(0, 4 * MIB as usize, 1)]);
    let a = snapshot(&store, vol, "a");
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    let ra = backup(&store, a, &target, &opts, &mut |_| {}).unwrap();
    // b rewrites everything a had: none of a's chunks stay in use by b.
    write(&store, vol, &[(0, 4 * MIB as usize, 2), (8 * MIB, MIB as usize, 3)]);
    let b = snapshot(&store, vol, "b");
    let rb = backup(&store, b, &target, &opts, &mut |_| {}).unwrap();
    let packs_before = target.list("packs").unwrap().len() as u64;
    assert_eq!(packs_before, ra.packs_uploaded + rb.packs_uploaded);

    // Nothing is unreferenced yet.
    let r = collect_garbage(&target).unwrap();
    assert_eq!((r.packs_deleted, r.orphan_packs_deleted, r.packs_kept), (0, 0, packs_before));

    assert!(delete_backup(&target, &ra.backup_id).unwrap());
    assert!(!delete_backup(&target, &ra.backup_id).unwrap(), "deleting twice is fine");
    let r = collect_garbage(&target).unwrap();
    assert_eq!(r.packs_deleted, ra.packs_uploaded);
    assert_eq!(r.bytes_deleted, 4 * MIB);
    assert_eq!(target.list("packs").unwrap().len() as u64, rb.packs_uploaded);
    assert_eq!(target.list("index").unwrap().len() as u64, rb.packs_uploaded);
    // Idempotent: a second run finds nothing.
    let again = collect_garbage(&target).unwrap();
    assert_eq!((again.packs_deleted, again.orphan_packs_deleted), (0, 0));

    assert!(verify(&target, None, true).unwrap().is_clean());
    let other = open_store(&tmp.path().join("there"));
    let got = restore(&target, &rb.backup_id, &other, &RestoreOptions::named("b"), &|_, _| {}).unwrap();
    assert_eq!(read_volume(&other, got.volume.id), read_snapshot(&store, b));
}

#[test]
fn gc_removes_packs_an_interrupted_backup_left_without_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    let orphan = format!("packs/{}", "ab".repeat(32));
    target.put(&orphan, b"CVPK\x01\0\0\0leftover").unwrap();
    let r = collect_garbage(&target).unwrap();
    assert_eq!(r.orphan_packs_deleted, 1);
    assert!(target.list("packs").unwrap().is_empty());
}

#[test]
fn gc_refuses_to_delete_when_a_manifest_is_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let vol = volume_with(&store, "db", 4 * MIB, &[(0, MIB as usize, 1)]);
    let s = snapshot(&store, vol, "s");
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    let id = backup(&store, s, &target, &BackupOptions::default(), &mut |_| {}).unwrap().backup_id;
    target.put(&format!("backups/{id}"), b"garbage that is not a manifest, of some length").unwrap();
    let err = collect_garbage(&target).unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert_eq!(target.list("packs").unwrap().len(), 1, "nothing deleted");
    assert!(target.list("locks").unwrap().is_empty(), "the lock is released on error");
}

#[test]
fn retention_keeps_the_newest_per_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    let opts = BackupOptions::default();
    let db = volume_with(&store, "db", 4 * MIB, &[]);
    let web = volume_with(&store, "web", 4 * MIB, &[]);
    for day in 0..5u64 {
        for vol in [db, web] {
            write(&store, vol, &[(day * MIB / 2, 4096, day * 10 + vol.get())]);
            let s = snapshot(&store, vol, &format!("day-{day}"));
            backup(&store, s, &target, &opts, &mut |_| {}).unwrap();
        }
    }
    let gone = prune(&target, 2, Some("db")).unwrap();
    assert_eq!(gone.iter().map(|b| b.snapshot.name.as_str()).collect::<Vec<_>>(), ["day-0", "day-1", "day-2"]);
    let gone = prune(&target, 3, None).unwrap();
    assert_eq!(
        gone.iter().map(|b| (b.snapshot.volume_name.as_str(), b.snapshot.name.as_str())).collect::<Vec<_>>(),
        [("web", "day-0"), ("web", "day-1")]
    );
    let left: Vec<_> =
        list_backups(&target).unwrap().0.into_iter().map(|b| (b.snapshot.volume_name, b.snapshot.name)).collect();
    assert_eq!(left.len(), 5);
    collect_garbage(&target).unwrap();
    assert!(verify(&target, None, true).unwrap().is_clean());
}

#[test]
fn a_backup_waits_for_a_collection_and_the_other_way_round() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let vol = volume_with(&store, "db", 4 * MIB, &[(0, 4096, 1)]);
    let s = snapshot(&store, vol, "s");
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    // A lock a running (or killed) collection holds.
    target.put("locks/gc-0000000000000000", b"x").unwrap();
    let err = backup(&store, s, &target, &BackupOptions::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    let rec = store.snapshot(s).unwrap().backup.unwrap();
    assert_eq!(rec.state, cowvol::BackupState::Failed);
    assert!(rec.reason.contains("in use"), "{}", rec.reason);
    assert_eq!(cowvol_backup::break_locks(&target).unwrap(), 1);
    target.put("locks/backup-0000000000000000", b"x").unwrap();
    assert!(matches!(collect_garbage(&target), Err(Error::Busy { .. })));
    // Backups do not exclude each other.
    backup(&store, s, &target, &BackupOptions::default(), &mut |_| {}).unwrap();
}
