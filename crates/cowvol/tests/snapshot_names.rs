//! Snapshot and volume names through the per-volume index: a name is unique
//! among one volume's snapshots and free again once its snapshot is deleted;
//! other volumes' names never collide; a volume's list, lookups by name and
//! searches by volume see exactly its snapshots, also after a volume is
//! deleted and after the store is reopened (from the catalog and from the
//! log).

use cowvol::testing::{self, LossMode, SimDir};
use cowvol::*;
use std::sync::Arc;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn names(list: &[SnapshotInfo]) -> Vec<&str> {
    list.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn snapshot_names_are_unique_per_volume_and_free_again_after_delete() {
    let store = Store::open_in(Arc::new(SimDir::new()), opts()).unwrap();
    let a = store.create_volume(VolumeOptions::new("a", 1 << 20)).unwrap().id;
    let b = store.create_volume(VolumeOptions::new("b", 1 << 20)).unwrap().id;
    let first = store.create_snapshot(a, SnapshotOptions::named("daily")).unwrap();
    // The same name on another volume is fine; twice on one volume is not.
    store.create_snapshot(b, SnapshotOptions::named("daily")).unwrap();
    let again = store.create_snapshot(a, SnapshotOptions::named("daily"));
    assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{again:?}");
    let begun = store.begin_snapshot(a, SnapshotOptions::named("two-step"));
    let begun = begun.unwrap();
    assert!(matches!(store.create_snapshot(a, SnapshotOptions::named("two-step")), Err(Error::AlreadyExists { .. })));
    store.abort_snapshot(a, begun.id).unwrap();
    assert_eq!(store.snapshot_by_name(a, "daily").unwrap().id, first.id);
    assert!(store.snapshot_by_name(a, "weekly").is_none());
    // Deleting frees the name for a new snapshot with a new id.
    store.delete_snapshot(a, first.id).unwrap();
    assert!(store.snapshot_by_name(a, "daily").is_none());
    let second = store.create_snapshot(a, SnapshotOptions::named("daily")).unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(names(&store.list_snapshots(a)), ["two-step", "daily"]);
    assert_eq!(names(&store.list_snapshots(b)), ["daily"]);
}

#[test]
fn a_volumes_list_and_search_see_exactly_its_snapshots_across_deletes_and_reopens() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let vols: Vec<VolumeId> =
        (0..5).map(|i| store.create_volume(VolumeOptions::new(format!("v{i}"), 1 << 20)).unwrap().id).collect();
    // 300 snapshots spread unevenly over the volumes, some deleted.
    let mut expected: Vec<Vec<SnapshotInfo>> = vec![Vec::new(); vols.len()];
    for i in 0..300usize {
        let k = (i * i) % vols.len();
        let s = store.create_snapshot(vols[k], SnapshotOptions::named(format!("s{i}"))).unwrap();
        expected[k].push(s);
        if i % 7 == 0 {
            let gone = expected[k].remove(0);
            store.delete_snapshot(vols[k], gone.id).unwrap();
        }
        if i == 150 {
            store.checkpoint().unwrap(); // half from the catalog, half from the log
        }
    }
    // A deleted volume keeps its snapshots, listed and found by name.
    let gone = vols[3];
    store.delete_volume(gone).unwrap();
    // Its name is free again for a new volume, which starts with none.
    let reborn = store.create_volume(VolumeOptions::new("v3", 1 << 20)).unwrap().id;
    assert!(store.list_snapshots(reborn).is_empty());
    assert_eq!(store.volume_by_name("v3").unwrap().id, reborn);
    let verify = |store: &Store, when: &str| {
        for (k, &v) in vols.iter().enumerate() {
            let ids: Vec<SnapshotId> = store.list_snapshots(v).iter().map(|s| s.id).collect();
            let want: Vec<SnapshotId> = expected[k].iter().map(|s| s.id).collect();
            assert_eq!(ids, want, "{when}: volume {v}");
            let page = store.search_snapshots(&SnapshotQuery { volume: Some(v), ..Default::default() });
            assert_eq!(page.total, want.len(), "{when}: search of volume {v}");
            for s in &expected[k] {
                assert_eq!(store.snapshot_by_name(v, &s.name).map(|x| x.id), Some(s.id), "{when}: {}", s.name);
            }
        }
        let all = store.search_snapshots(&SnapshotQuery::default()).total;
        assert_eq!(all, expected.iter().map(Vec::len).sum::<usize>(), "{when}");
    };
    verify(&store, "live");
    // A power cut: the second half comes back from the log.
    let recovered = disk.crash(LossMode::DropAll, 0);
    testing::abandon(store);
    let store = Store::open_in(Arc::new(recovered.clone()), opts()).unwrap();
    verify(&store, "after replaying the log");
    // A clean close and reopen: all of it from the catalog.
    store.close().unwrap();
    let store = Store::open_in(Arc::new(recovered), opts()).unwrap();
    verify(&store, "after reopening");
    assert_eq!(store.volume_by_name("v3").unwrap().id, reborn);
    assert!(store.volume_by_name("v9").is_none());
}
