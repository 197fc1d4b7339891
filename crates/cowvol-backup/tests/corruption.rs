//! A damaged or missing chunk, index or manifest is found by verify and
//! refused by restore, with an error that names the object.

mod common;

use common::*;
use cowvol_backup::{backup, restore, verify, BackupOptions, DirTarget, Error, RestoreOptions, Target};
use std::path::Path;

fn backed_up(dir: &Path) -> (cowvol::Store, DirTarget, String) {
    let store = open_store(&dir.join("here"));
    let vol = volume_with(&store, "db", 4 * MIB, &[(0, 2 * MIB as usize, 1)]);
    let snap = snapshot(&store, vol, "s");
    let target = DirTarget::open(dir.join("backups")).unwrap();
    let id = backup(&store, snap, &target, &BackupOptions::default(), &mut |_| {}).unwrap().backup_id;
    (store, target, id)
}

fn only_key(target: &DirTarget, folder: &str) -> String {
    let keys = target.list(folder).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].clone()
}

#[test]
fn a_flipped_byte_in_a_chunk_fails_verify_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, target, id) = backed_up(tmp.path());
    let pack = only_key(&target, "packs");
    let mut bytes = target.get(&pack).unwrap();
    bytes[1000] ^= 0x40;
    target.put(&pack, &bytes).unwrap();

    // Without reading data, the references all resolve.
    assert!(verify(&target, None, false).unwrap().is_clean());
    let report = verify(&target, Some(&id), true).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("does not match its hash"), "{}", report.problems[0]);
    assert!(report.problems[0].contains(&pack), "{}", report.problems[0]);

    let other = open_store(&tmp.path().join("there"));
    let err = restore(&target, &id, &other, &RestoreOptions::named("r"), &|_, _| {}).unwrap_err();
    assert!(matches!(&err, Error::Damaged { key, .. } if *key == pack), "{err}");
    assert!(other.list_volumes().is_empty(), "a failed restore leaves no volume");
}

#[test]
fn a_missing_pack_index_is_a_missing_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, target, id) = backed_up(tmp.path());
    target.delete(&only_key(&target, "index")).unwrap();
    let report = verify(&target, None, false).unwrap();
    assert!(!report.is_clean() && report.problems.iter().all(|p| p.contains("which no pack")), "{:?}", report.problems);
    let other = open_store(&tmp.path().join("there"));
    let err = restore(&target, &id, &other, &RestoreOptions::named("r"), &|_, _| {}).unwrap_err();
    assert!(matches!(err, Error::MissingChunk { .. }), "{err}");
    assert!(other.list_volumes().is_empty(), "nothing is created when a chunk is missing");
}

#[test]
fn a_damaged_manifest_or_index_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, target, id) = backed_up(tmp.path());
    let manifest = format!("backups/{id}");
    let mut bytes = target.get(&manifest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    target.put(&manifest, &bytes).unwrap();
    let report = verify(&target, None, true).unwrap();
    assert!(report.problems.iter().any(|p| p.contains(&manifest) && p.contains("checksum")), "{:?}", report.problems);
    let other = open_store(&tmp.path().join("there"));
    let err = restore(&target, &id, &other, &RestoreOptions::named("r"), &|_, _| {}).unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");

    let index = only_key(&target, "index");
    target.put(&index, b"not an index at all, long enough to be checked").unwrap();
    let report = verify(&target, None, false).unwrap();
    assert!(report.problems.iter().any(|p| p.contains(&index)), "{:?}", report.problems);
}
