//! The snapshot's backup state: `Failed` with the reason when a backup
//! fails, and never left in progress across a reopen of the store.

mod common;

use common::*;
use cowvol::{BackupRecord, BackupState, SnapshotQuery};
use cowvol_backup::testing::FailAfter;
use cowvol_backup::{backup, BackupOptions, DirTarget};

#[test]
fn a_failed_backup_is_failed_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("store"));
    let vol = volume_with(&store, "db", 4 * MIB, &[(0, MIB as usize, 1)]);
    let s = snapshot(&store, vol, "s");
    let target = FailAfter::new(DirTarget::open(tmp.path().join("t")).unwrap(), 3, false);
    let err = backup(&store, s, &target, &BackupOptions::default(), &mut |_| {}).unwrap_err();
    let rec = store.snapshot(s).unwrap().backup.unwrap();
    assert_eq!(rec.state, BackupState::Failed);
    assert_eq!(rec.reason, err.to_string());
    assert!(rec.target.starts_with("file://"));
    // The snapshot itself is untouched: still ready, still readable.
    assert!(store.snapshot(s).unwrap().is_ready());
    let q = SnapshotQuery { backup: Some(BackupState::Failed), ..Default::default() };
    assert_eq!(store.search_snapshots(&q).total, 1);
    let q = SnapshotQuery { backup: Some(BackupState::BackedUp), ..Default::default() };
    assert_eq!(store.search_snapshots(&q).total, 0);
}

#[test]
fn a_backup_in_progress_when_the_store_closes_is_failed_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let s = {
        let store = open_store(&dir);
        let vol = volume_with(&store, "db", MIB, &[]);
        let s = snapshot(&store, vol, "s");
        let rec = BackupRecord {
            state: BackupState::InProgress,
            target: "s3://bucket".into(),
            backup_id: "0123456789abcdef".into(),
            reason: String::new(),
            at: 1,
        };
        store.set_snapshot_backup(s, Some(rec)).unwrap();
        // Dropped without close: as if the process died mid-backup.
        s
    };
    let store = open_store(&dir);
    let rec = store.snapshot(s).unwrap().backup.unwrap();
    assert_eq!(rec.state, BackupState::Failed);
    assert!(rec.reason.contains("interrupted"), "{}", rec.reason);
    assert_eq!((rec.target.as_str(), rec.backup_id.as_str()), ("s3://bucket", "0123456789abcdef"));
    drop(store);
    // And it stays so (the recovery was made durable).
    assert_eq!(open_store(&dir).snapshot(s).unwrap().backup.unwrap().state, BackupState::Failed);
}

#[test]
fn only_ready_snapshots_get_a_backup_record() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("store"));
    let vol = volume_with(&store, "db", MIB, &[]);
    let pending = store.begin_snapshot(vol, cowvol::SnapshotOptions::named("p")).unwrap().id;
    let rec = BackupRecord {
        state: BackupState::InProgress,
        target: "file:///x".into(),
        backup_id: String::new(),
        reason: String::new(),
        at: 1,
    };
    assert!(store.set_snapshot_backup(pending, Some(rec)).is_err());
    let target = DirTarget::open(tmp.path().join("t")).unwrap();
    assert!(backup(&store, pending, &target, &BackupOptions::default(), &mut |_| {}).is_err());
}
