//! Volumes made from one template share its chunks on the target: the
//! template's data is uploaded once, whichever volume is backed up first.

mod common;

use common::*;
use cowvol::{TemplateOptions, VolumeOptions};
use cowvol_backup::testing::Counting;
use cowvol_backup::{backup, collect_garbage, restore, verify, BackupOptions, DirTarget, RestoreOptions};

#[test]
fn volumes_from_one_template_store_its_chunks_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("here"));
    let opts = BackupOptions::default();
    let chunk = opts.chunk_bytes as u64;
    let golden = volume_with(&store, "golden", 16 * MIB, &[(0, 8 * MIB as usize, 1)]);
    let base = snapshot(&store, golden, "installed");
    let tmpl = store.create_template(base, TemplateOptions::named("debian")).unwrap().id;
    let target = Counting::new(DirTarget::open(tmp.path().join("backups")).unwrap());
    let template_chunks = 8 * MIB / chunk;

    // The template's own snapshot first: all its chunks go up.
    let golden_backup = backup(&store, base, &target, &opts, &mut |_| {}).unwrap();
    assert_eq!(golden_backup.chunks_uploaded, template_chunks);

    let mut reports = Vec::new();
    for i in 0..3u64 {
        let vol = store.create_volume_from_template(tmpl, VolumeOptions::new(format!("web-{i}"), 0)).unwrap().id;
        // Each volume changes one chunk of its own.
        write(&store, vol, &[(i * chunk, 4096, 100 + i)]);
        let snap = snapshot(&store, vol, "nightly");
        let r = backup(&store, snap, &target, &opts, &mut |_| {}).unwrap();
        assert_eq!(r.chunks, template_chunks);
        assert_eq!(r.chunks_uploaded, 1, "volume {i} uploads only the chunk it changed");
        reports.push((snap, r));
    }
    let uploaded: u64 = reports.iter().map(|(_, r)| r.chunks_uploaded).sum();
    assert_eq!(uploaded, 3);
    assert!(verify(&target, None, true).unwrap().is_clean());
    // Garbage collection keeps every shared chunk.
    assert_eq!(collect_garbage(&target).unwrap().packs_deleted, 0);
    let other = open_store(&tmp.path().join("there"));
    for (i, (snap, r)) in reports.iter().enumerate() {
        let got = restore(&target, &r.backup_id, &other, &RestoreOptions::named(format!("w{i}")), &|_, _| {}).unwrap();
        assert_eq!(read_volume(&other, got.volume.id), read_snapshot(&store, *snap));
    }
}
