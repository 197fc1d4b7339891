//! A backup to a directory restores, on another store, to the same bytes;
//! the snapshot's backup state follows the backup; repeating a backup
//! finds the first one.

mod common;

use common::*;
use cowvol::{BackupState, SnapshotQuery};
use cowvol_backup::{backup, list_backups, restore, verify, BackupOptions, DirTarget, RestoreOptions};

#[test]
fn backup_to_a_directory_restores_the_same_bytes_on_another_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    // Data at the start, a hole, data across a chunk boundary, and a tail
    // in a last chunk shorter than the others.
    let size = 9 * MIB + 12288;
    let vol = volume_with(&store, "db", size, &[(0, 300_000, 1), (3 * MIB - 4096, 8192, 2), (9 * MIB, 12288, 3)]);
    let snap = snapshot(&store, vol, "nightly");
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();

    let report = backup(&store, snap, &target, &BackupOptions::default(), &mut |_| {}).unwrap();
    assert!(report.chunks_uploaded > 0 && report.base.is_none());
    let rec = store.snapshot(snap).unwrap().backup.unwrap();
    assert_eq!((rec.state, rec.backup_id.as_str()), (BackupState::BackedUp, report.backup_id.as_str()));
    let q = SnapshotQuery { backup: Some(BackupState::BackedUp), ..Default::default() };
    assert_eq!(store.search_snapshots(&q).snapshots[0].id, snap);

    let other = open_store(&tmp.path().join("there"));
    let got = restore(&target, &report.backup_id, &other, &RestoreOptions::named("db-copy"), &|_, _| {}).unwrap();
    assert_eq!(read_volume(&other, got.volume.id), read_snapshot(&store, snap));
    assert_eq!(got.snapshot.name, "nightly");
    assert_eq!(read_snapshot(&other, got.snapshot.id), read_snapshot(&store, snap));
    assert!(other.check().unwrap().is_clean());

    // Into the same store, beside the original, works too.
    let again = restore(&target, &report.backup_id, &store, &RestoreOptions::named("db-back"), &|_, _| {}).unwrap();
    assert_eq!(read_volume(&store, again.volume.id), read_snapshot(&store, snap));

    let (list, damaged) = list_backups(&target).unwrap();
    assert!(damaged.is_empty());
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].snapshot.name.as_str(), list[0].snapshot.volume_name.as_str()), ("nightly", "db"));
    assert!(verify(&target, None, true).unwrap().is_clean());
}

#[test]
fn repeating_a_backup_finds_the_first_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let vol = volume_with(&store, "db", 4 * MIB, &[(0, MIB as usize, 1)]);
    let snap = snapshot(&store, vol, "s");
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    let first = backup(&store, snap, &target, &BackupOptions::default(), &mut |_| {}).unwrap();
    let second = backup(&store, snap, &target, &BackupOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(first.backup_id, second.backup_id);
    assert!(second.already_there && second.chunks_uploaded == 0);
    assert_eq!(list_backups(&target).unwrap().0.len(), 1);
}

#[test]
fn restore_refuses_a_taken_name_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let vol = volume_with(&store, "db", 2 * MIB, &[(0, 4096, 1)]);
    let snap = snapshot(&store, vol, "s");
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    let id = backup(&store, snap, &target, &BackupOptions::default(), &mut |_| {}).unwrap().backup_id;
    let err = restore(&target, &id, &store, &RestoreOptions::named("db"), &|_, _| {}).unwrap_err();
    assert!(matches!(err, cowvol_backup::Error::Store(cowvol::Error::AlreadyExists { .. })), "{err}");
    assert_eq!(store.list_volumes().len(), 1);
    let missing = restore(&target, "0000000000000000", &store, &RestoreOptions::named("x"), &|_, _| {}).unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
}

#[test]
fn a_snapshot_outliving_its_volume_is_backed_up_and_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let vol = volume_with(&store, "scratch", 2 * MIB, &[(4096, 8192, 9)]);
    let snap = snapshot(&store, vol, "last");
    let want = read_snapshot(&store, snap);
    store.delete_volume(vol).unwrap();
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    let id = backup(&store, snap, &target, &BackupOptions::default(), &mut |_| {}).unwrap().backup_id;
    assert_eq!(store.snapshot(snap).unwrap().backup.unwrap().state, BackupState::BackedUp);
    let got = restore(&target, &id, &store, &RestoreOptions::named("scratch"), &|_, _| {}).unwrap();
    assert_eq!(read_volume(&store, got.volume.id), want);
}
