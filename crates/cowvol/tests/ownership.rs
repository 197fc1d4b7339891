//! Volumes and templates carry an owner, kept across reopen and crashes;
//! what is made from something inherits its owner unless told otherwise.

use cowvol::*;

fn owned(name: &str, owner: &str) -> VolumeOptions {
    VolumeOptions { owner: owner.into(), ..VolumeOptions::new(name, 1 << 20) }
}

#[test]
fn owners_are_recorded_inherited_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let a = store.create_volume(owned("a", "tenant-1")).unwrap();
    assert_eq!(a.owner, "tenant-1");
    let plain = store.create_volume(VolumeOptions::new("plain", 1 << 20)).unwrap();
    assert_eq!(plain.owner, "");

    let fork = store.fork_volume(a.id, ForkOptions { name: "fork".into(), ..Default::default() }).unwrap();
    assert_eq!(fork.owner, "tenant-1", "a fork inherits its source's owner");
    let other = ForkOptions { name: "given".into(), owner: "tenant-2".into(), ..Default::default() };
    assert_eq!(store.fork_volume(a.id, other).unwrap().owner, "tenant-2");

    let snap = store
        .create_snapshot(a.id, SnapshotOptions { owner: "snapper".into(), ..SnapshotOptions::named("s") })
        .unwrap();
    let from_snap = store.create_volume_from_snapshot(snap.id, VolumeOptions::new("from-snap", 0)).unwrap();
    assert_eq!(from_snap.owner, "tenant-1", "the source volume's owner, while it lives");
    let tmpl = store.create_template(snap.id, TemplateOptions::named("t")).unwrap();
    assert_eq!(tmpl.owner, "snapper", "a template takes its snapshot's owner");
    let from_tmpl = store.create_volume_from_template(tmpl.id, owned("from-tmpl", "tenant-3")).unwrap();
    assert_eq!(from_tmpl.owner, "tenant-3");

    store.delete_volume(a.id).unwrap();
    let orphan = ForkOptions { name: "orphan".into(), from_snapshot: Some(snap.id), ..Default::default() };
    assert_eq!(store.fork_volume(a.id, orphan).unwrap().owner, "snapper");
    let late = store.create_volume_from_snapshot(snap.id, VolumeOptions::new("late", 0)).unwrap();
    assert_eq!(late.owner, "snapper", "the snapshot's owner once its volume is gone");

    // Crash (no checkpoint after these records), then reopen: replay keeps them.
    cowvol::testing::abandon(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let owner = |n: &str| store.volume_by_name(n).unwrap().owner;
    assert_eq!(
        (
            owner("fork"),
            owner("given"),
            owner("from-snap"),
            owner("from-tmpl"),
            owner("late"),
            owner("orphan"),
            owner("plain")
        ),
        (
            "tenant-1".into(),
            "tenant-2".into(),
            "tenant-1".into(),
            "tenant-3".into(),
            "snapper".into(),
            "snapper".into(),
            String::new()
        )
    );
    assert_eq!(store.template_by_name("t").unwrap().owner, "snapper");
    // And after a checkpoint, from the catalog.
    store.close().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.volume_by_name("given").unwrap().owner, "tenant-2");
    assert_eq!(store.template_by_name("t").unwrap().owner, "snapper");
}
