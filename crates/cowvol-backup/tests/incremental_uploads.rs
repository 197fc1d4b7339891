//! A second backup of a mostly unchanged volume reads only what
//! `Store::diff` says changed and uploads only the chunks the target lacks.

mod common;

use common::*;
use cowvol_backup::testing::Counting;
use cowvol_backup::{backup, restore, BackupOptions, DirTarget, RestoreOptions};

#[test]
fn second_backup_uploads_only_new_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let opts = BackupOptions { chunk_bytes: 256 << 10, pack_bytes: 4 << 20, ..Default::default() };
    let chunk = opts.chunk_bytes as u64;
    // 32 MiB of data in a 64 MiB volume: 128 chunks.
    let vol = volume_with(&store, "db", 64 * MIB, &[(0, 32 * MIB as usize, 1)]);
    let monday = snapshot(&store, vol, "monday");
    let target = Counting::new(DirTarget::open(tmp.path().join("backups")).unwrap());
    let first = backup(&store, monday, &target, &opts, &mut |_| {}).unwrap();
    assert_eq!((first.chunks, first.chunks_read, first.chunks_uploaded), (128, 128, 128));
    let packs_first = target.puts_in("packs");
    assert_eq!(packs_first as u64, first.packs_uploaded);
    assert!(packs_first >= 8, "128 chunks of 256 KiB in 4 MiB packs: {packs_first}");

    // Tuesday: one 4 KiB write in chunk 3, one that straddles chunks 10
    // and 11, and 1 MiB (4 chunks) of new data past the old end.
    target.reset();
    write(&store, vol, &[(3 * chunk + 100, 4096, 2), (11 * chunk - 2048, 4096, 3), (40 * MIB, MIB as usize, 4)]);
    let tuesday = snapshot(&store, vol, "tuesday");
    let second = backup(&store, tuesday, &target, &opts, &mut |_| {}).unwrap();
    assert_eq!(second.base.as_deref(), Some(first.backup_id.as_str()));
    assert_eq!(second.chunks, 132);
    assert_eq!(second.chunks_read, 7, "only the changed chunks are read");
    assert_eq!(second.chunks_uploaded, 7, "only the changed chunks are uploaded");
    assert_eq!(second.chunk_bytes_uploaded, 7 * chunk);
    assert_eq!(target.puts_in("packs"), 1);
    assert_eq!(target.puts_in("backups"), 1);

    // Writing back the same bytes changes blocks but not chunks: read
    // again, uploaded never.
    target.reset();
    write(&store, vol, &[(0, MIB as usize, 1)]);
    let wednesday = snapshot(&store, vol, "wednesday");
    let third = backup(&store, wednesday, &target, &opts, &mut |_| {}).unwrap();
    assert_eq!((third.chunks_read, third.chunks_uploaded), (4, 0));
    assert_eq!(target.puts_in("packs"), 0);

    // A full read (no incremental) finds the same chunks and uploads none.
    target.reset();
    let thursday = snapshot(&store, vol, "thursday");
    let full =
        backup(&store, thursday, &target, &BackupOptions { incremental: false, ..opts.clone() }, &mut |_| {}).unwrap();
    assert_eq!((full.chunks_read, full.chunks_uploaded, full.base), (132, 0, None));

    // Every one restores to its snapshot's bytes.
    let other = open_store(&tmp.path().join("there"));
    for (snap, report) in [(monday, &first), (tuesday, &second), (wednesday, &third)] {
        let name = format!("r-{}", report.backup_id);
        let got = restore(&target, &report.backup_id, &other, &RestoreOptions::named(name), &|_, _| {}).unwrap();
        assert_eq!(read_volume(&other, got.volume.id), read_snapshot(&store, snap));
    }
}

#[test]
fn discarded_ranges_become_holes_in_the_next_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let opts = BackupOptions::default();
    let vol = volume_with(&store, "db", 8 * MIB, &[(0, 8 * MIB as usize, 1)]);
    let a = snapshot(&store, vol, "a");
    let target = DirTarget::open(tmp.path().join("backups")).unwrap();
    backup(&store, a, &target, &opts, &mut |_| {}).unwrap();
    store.open_volume(vol).unwrap().discard(MIB, 2 * MIB).unwrap();
    let b = snapshot(&store, vol, "b");
    let second = backup(&store, b, &target, &opts, &mut |_| {}).unwrap();
    assert_eq!(second.chunks, 32 - 8);
    assert_eq!(second.chunks_uploaded, 0);
    let other = open_store(&tmp.path().join("there"));
    let got = restore(&target, &second.backup_id, &other, &RestoreOptions::named("b"), &|_, _| {}).unwrap();
    assert_eq!(read_volume(&other, got.volume.id), read_snapshot(&store, b));
}
