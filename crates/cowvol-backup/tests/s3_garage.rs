//! Backups to a real S3 server: a single-node Garage on loopback ports
//! (`cowvol_backup::testing::Garage`), never a mock of the API. Skipped
//! with a loud message when Garage is not installed, except in CI (or with
//! `COWVOL_REQUIRE_S3`), where that is a failure.

mod common;

use common::*;
use cowvol_backup::testing::{Counting, Garage};
use cowvol_backup::{
    backup, collect_garbage, delete_backup, list_backups, restore, verify, BackupOptions, Error, RestoreOptions, Target,
};

#[test]
fn backups_to_garage_restore_byte_for_byte_and_upload_only_new_chunks() {
    let Some(garage) = Garage::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let opts = BackupOptions { pack_bytes: 4 << 20, ..Default::default() };
    let chunk = opts.chunk_bytes as u64;
    let vol = volume_with(&store, "db", 64 * MIB, &[(0, 16 * MIB as usize, 1), (40 * MIB, 100_000, 2)]);
    let monday = snapshot(&store, vol, "monday");
    let target = Counting::new(garage.target("team-a"));
    let first = backup(&store, monday, &target, &opts, &mut |_| {}).unwrap();
    assert_eq!(first.chunks_uploaded, 64 + 1);
    assert!(target.url().starts_with("s3://cowvol-tests/team-a"));

    target.reset();
    write(&store, vol, &[(5 * chunk + 7, 4096, 3), (50 * MIB, 8192, 4)]);
    let tuesday = snapshot(&store, vol, "tuesday");
    let second = backup(&store, tuesday, &target, &opts, &mut |_| {}).unwrap();
    assert_eq!(second.base.as_deref(), Some(first.backup_id.as_str()));
    assert_eq!((second.chunks_read, second.chunks_uploaded), (2, 2));
    assert_eq!(target.puts_in("packs"), 1);

    // Restored on another store, from a fresh client, byte for byte.
    let other = open_store(&tmp.path().join("there"));
    let fresh = garage.target("team-a");
    for (snap, r) in [(monday, &first), (tuesday, &second)] {
        let got =
            restore(&fresh, &r.backup_id, &other, &RestoreOptions::named(format!("r-{}", r.backup_id)), &|_, _| {})
                .unwrap();
        assert_eq!(read_volume(&other, got.volume.id), read_snapshot(&store, snap));
    }
    assert!(verify(&fresh, None, true).unwrap().is_clean());
    assert_eq!(list_backups(&fresh).unwrap().0.len(), 2);

    // A prefix is a separate target.
    assert!(list_backups(&garage.target("team-b")).unwrap().0.is_empty());

    // A damaged chunk is found and refused.
    let pack = fresh.list("packs").unwrap().into_iter().next().unwrap();
    let mut bytes = fresh.get(&pack).unwrap();
    bytes[4096] ^= 1;
    fresh.put(&pack, &bytes).unwrap();
    assert!(!verify(&fresh, None, true).unwrap().is_clean());
    let err = restore(&fresh, &first.backup_id, &other, &RestoreOptions::named("bad"), &|_, _| {}).unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");

    // Delete both and collect: the bucket prefix is empty again.
    for r in [&first, &second] {
        delete_backup(&fresh, &r.backup_id).unwrap();
    }
    let gc = collect_garbage(&fresh).unwrap();
    assert_eq!(gc.packs_deleted as usize + gc.orphan_packs_deleted as usize, first.packs_uploaded as usize + 1);
    for folder in ["packs", "index", "backups", "locks"] {
        assert!(fresh.list(folder).unwrap().is_empty(), "{folder}");
    }
}

#[test]
fn wrong_credentials_fail_cleanly_and_never_show_the_secret() {
    let Some(garage) = Garage::start() else { return };
    let bad = cowvol_backup::S3Credentials {
        access_key_id: garage.credentials.access_key_id.clone(),
        secret_access_key: "not-the-secret-0123456789".into(),
    };
    let location = format!("{}/x?endpoint={}&region=garage", garage.bucket, garage.endpoint);
    let target = cowvol_backup::S3Target::open(&location, bad).unwrap();
    let err = target.list("backups").unwrap_err();
    assert!(matches!(err, Error::Target { .. }), "{err}");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");
    assert!(!format!("{target:?}").contains("not-the-secret"));
}
