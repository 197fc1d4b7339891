//! The snapshot lifecycle: kinds and statuses, two-step snapshots, holds,
//! search, templates, volumes from snapshots and templates, policies with
//! retention over simulated time, group snapshots, the restore safety net,
//! and crashes in the middle of each (through the simulated disk).

use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::sync::Arc;

const BS: usize = 4096;
const SIZE: u64 = 64 * BS as u64;

fn sim_opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn fresh() -> (SimDir, Store) {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), sim_opts()).unwrap();
    (disk, store)
}

fn volume(store: &Store, name: &str) -> (VolumeId, Volume) {
    let id = store.create_volume(VolumeOptions::new(name, SIZE)).unwrap().id;
    (id, store.open_volume(id).unwrap())
}

fn fill(v: &Volume, byte: u8) {
    v.write_at(&vec![byte; SIZE as usize], 0).unwrap();
    v.flush().unwrap();
}

fn contents(v: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    v.read_at(&mut buf, 0).unwrap();
    buf
}

fn assert_clean(store: &Store) {
    let r = store.check().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

fn reopen_after_crash(disk: &SimDir, store: Store) -> (SimDir, Store) {
    testing::abandon(store);
    let disk = disk.crash(LossMode::DropAll, 1);
    let store = Store::open_in(Arc::new(disk.clone()), sim_opts()).unwrap();
    (disk, store)
}

#[test]
fn one_step_snapshots_are_manual_and_ready() {
    let (_d, store) = fresh();
    let (id, v) = volume(&store, "db");
    fill(&v, 1);
    let s = store.create_snapshot(id, SnapshotOptions::named("s")).unwrap();
    assert_eq!((s.kind, s.status, s.held), (SnapshotKind::Manual, SnapshotStatus::Ready, false));
    assert_eq!(s.volume_name, "db");
    assert_eq!(store.snapshot(s.id).unwrap(), s);
}

#[test]
fn two_step_snapshot_captures_the_volume_at_commit() {
    let (_d, store) = fresh();
    let (id, v) = volume(&store, "db");
    fill(&v, 1);
    let s = store.begin_snapshot(id, SnapshotOptions::named("quiesced")).unwrap();
    assert_eq!(s.status, SnapshotStatus::Creating);
    // A creating snapshot holds no data yet: it cannot be used.
    assert!(matches!(store.open_snapshot(id, s.id), Err(Error::InvalidArgument { .. })));
    assert!(matches!(store.restore_snapshot(id, s.id, RestoreOptions::default()), Err(Error::InvalidArgument { .. })));
    let fork = ForkOptions { name: "f".into(), from_snapshot: Some(s.id), ..Default::default() };
    assert!(matches!(store.fork_volume(id, fork), Err(Error::InvalidArgument { .. })));
    fill(&v, 2);
    let done = store.commit_snapshot(id, s.id).unwrap();
    assert_eq!(done.status, SnapshotStatus::Ready);
    fill(&v, 3);
    assert_eq!(contents(&store.open_snapshot(id, s.id).unwrap()), vec![2u8; SIZE as usize]);
    // Committing twice is refused: the moment is already taken.
    assert!(matches!(store.commit_snapshot(id, s.id), Err(Error::InvalidArgument { .. })));
    assert_clean(&store);
}

#[test]
fn aborted_snapshot_is_failed_and_deletable() {
    let (_d, store) = fresh();
    let (id, _v) = volume(&store, "db");
    let s = store.begin_snapshot(id, SnapshotOptions::named("x")).unwrap();
    let failed = store.abort_snapshot(id, s.id).unwrap();
    assert_eq!(failed.status, SnapshotStatus::Failed);
    assert!(matches!(store.commit_snapshot(id, s.id), Err(Error::InvalidArgument { .. })));
    assert!(store.delete_snapshot(id, s.id).unwrap().existed);
    assert_clean(&store);
}

#[test]
fn a_crash_during_a_two_step_snapshot_leaves_it_failed_not_half_there() {
    let (disk, store) = fresh();
    let (id, v) = volume(&store, "db");
    fill(&v, 7);
    let s = store.begin_snapshot(id, SnapshotOptions::named("interrupted")).unwrap();
    drop(v);
    let (disk, store) = reopen_after_crash(&disk, store);
    let got = store.snapshot(s.id).unwrap();
    assert_eq!(got.status, SnapshotStatus::Failed);
    assert!(store.open_snapshot(id, s.id).is_err());
    // The resolution is durable: a second crash finds it failed too.
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert_eq!(store.snapshot(s.id).unwrap().status, SnapshotStatus::Failed);
    assert_clean(&store);
    assert!(store.delete_snapshot(id, s.id).unwrap().existed);
    assert_clean(&store);
}

#[test]
fn deleting_a_volume_fails_its_creating_snapshots_and_keeps_the_rest() {
    let (disk, store) = fresh();
    let (id, v) = volume(&store, "db");
    fill(&v, 1);
    let ready = store.create_snapshot(id, SnapshotOptions::named("ready")).unwrap();
    let pending = store.begin_snapshot(id, SnapshotOptions::named("pending")).unwrap();
    drop(v);
    store.delete_volume(id).unwrap();
    assert_eq!(store.snapshot(pending.id).unwrap().status, SnapshotStatus::Failed);
    assert!(store.commit_snapshot(id, pending.id).is_err());
    assert_eq!(store.list_snapshots(id).len(), 2);
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert_eq!(store.snapshot(pending.id).unwrap().status, SnapshotStatus::Failed);
    assert_eq!(contents(&store.open_snapshot(id, ready.id).unwrap()), vec![1u8; SIZE as usize]);
    assert_clean(&store);
}

#[test]
fn held_snapshots_refuse_delete_until_released() {
    let (disk, store) = fresh();
    let (id, v) = volume(&store, "db");
    fill(&v, 1);
    let s = store.create_snapshot(id, SnapshotOptions::named("keep")).unwrap();
    assert!(store.hold_snapshot(id, s.id).unwrap().held);
    assert!(matches!(store.delete_snapshot(id, s.id), Err(Error::Held { .. })));
    drop(v);
    // The hold is durable.
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert!(store.snapshot(s.id).unwrap().held);
    assert!(matches!(store.delete_snapshot(id, s.id), Err(Error::Held { .. })));
    assert!(!store.release_snapshot(id, s.id).unwrap().held);
    assert!(store.delete_snapshot(id, s.id).unwrap().existed);
    assert!(!store.delete_snapshot(id, s.id).unwrap().existed);
    assert_clean(&store);
}

#[test]
fn search_filters_sorts_and_pages() {
    let (_d, store) = fresh();
    let (a, _va) = volume(&store, "web");
    let (b, _vb) = volume(&store, "db");
    let labelled = |name: &str, owner: &str, env: &str| SnapshotOptions {
        name: name.into(),
        owner: owner.into(),
        labels: [("env".to_string(), env.to_string())].into(),
        ..Default::default()
    };
    store.create_snapshot(a, labelled("Nightly-1", "alice", "prod")).unwrap();
    store.create_snapshot(a, labelled("adhoc", "bob", "dev")).unwrap();
    store.create_snapshot(b, labelled("nightly-2", "alice", "prod")).unwrap();
    let auto = SnapshotOptions { kind: SnapshotKind::Auto, ..labelled("auto-x", "", "prod") };
    store.create_snapshot(b, auto).unwrap();
    let held = store.create_snapshot(b, labelled("nightly-3", "carol", "dev")).unwrap();
    store.hold_snapshot(b, held.id).unwrap();
    let names = |q: SnapshotQuery| store.search_snapshots(&q).snapshots.into_iter().map(|s| s.name).collect::<Vec<_>>();

    assert_eq!(
        names(SnapshotQuery { name_contains: Some("NIGHTLY".into()), ..Default::default() }),
        ["Nightly-1", "nightly-2", "nightly-3"]
    );
    assert_eq!(names(SnapshotQuery { volume: Some(a), ..Default::default() }), ["Nightly-1", "adhoc"]);
    assert_eq!(names(SnapshotQuery { volume_name: Some("db".into()), ..Default::default() }).len(), 3);
    assert_eq!(names(SnapshotQuery { kind: Some(SnapshotKind::Auto), ..Default::default() }), ["auto-x"]);
    assert_eq!(names(SnapshotQuery { owner: Some("alice".into()), ..Default::default() }), ["Nightly-1", "nightly-2"]);
    let dev = SnapshotQuery { labels: [("env".to_string(), "dev".to_string())].into(), ..Default::default() };
    assert_eq!(names(dev), ["adhoc", "nightly-3"]);
    assert_eq!(names(SnapshotQuery { held: Some(true), ..Default::default() }), ["nightly-3"]);
    assert_eq!(names(SnapshotQuery { status: Some(SnapshotStatus::Failed), ..Default::default() }).len(), 0);
    assert_eq!(
        names(SnapshotQuery { newest_first: true, limit: Some(2), ..Default::default() }),
        ["nightly-3", "auto-x"]
    );
    let page = store.search_snapshots(&SnapshotQuery { offset: 2, limit: Some(2), ..Default::default() });
    assert_eq!((page.total, page.next_offset, page.snapshots.len()), (5, Some(4), 2));
    let last = store.search_snapshots(&SnapshotQuery { offset: 4, limit: Some(2), ..Default::default() });
    assert_eq!((last.next_offset, last.snapshots.len()), (None, 1));
    let past = store.search_snapshots(&SnapshotQuery { offset: 9, ..Default::default() });
    assert_eq!((past.total, past.snapshots.len()), (5, 0));
}

#[test]
fn snapshots_of_a_deleted_volume_stay_searchable_by_its_name() {
    let (_d, store) = fresh();
    let (id, v) = volume(&store, "gone");
    fill(&v, 4);
    let s = store.create_snapshot(id, SnapshotOptions::named("last")).unwrap();
    drop(v);
    store.delete_volume(id).unwrap();
    let page = store.search_snapshots(&SnapshotQuery { volume_name: Some("gone".into()), ..Default::default() });
    assert_eq!(page.snapshots, vec![s.clone()]);
    // ... and usable: a new volume made from it has its data.
    let nv = store.create_volume_from_snapshot(s.id, VolumeOptions::new("revived", 0)).unwrap();
    assert_eq!(nv.origin, Some(VolumeOrigin::Snapshot(id, s.id)));
    assert_eq!(contents(&store.open_volume(nv.id).unwrap()), vec![4u8; SIZE as usize]);
    assert_clean(&store);
}

#[test]
fn a_volume_from_a_snapshot_outlives_the_snapshot_and_its_volume() {
    let (disk, store) = fresh();
    let (id, v) = volume(&store, "src");
    fill(&v, 5);
    let s = store.create_snapshot(id, SnapshotOptions::named("s")).unwrap();
    let wrong_size = VolumeOptions::new("bad", SIZE * 2);
    assert!(matches!(store.create_volume_from_snapshot(s.id, wrong_size), Err(Error::InvalidArgument { .. })));
    let nv = store.create_volume_from_snapshot(s.id, VolumeOptions::new("copy", SIZE)).unwrap();
    fill(&v, 6);
    drop(v);
    store.delete_snapshot(id, s.id).unwrap();
    store.delete_volume(id).unwrap();
    assert_eq!(contents(&store.open_volume(nv.id).unwrap()), vec![5u8; SIZE as usize]);
    assert_clean(&store);
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert_eq!(contents(&store.open_volume(nv.id).unwrap()), vec![5u8; SIZE as usize]);
    assert_clean(&store);
}

#[test]
fn templates_outlive_their_source_and_their_delete_frees_nothing_volumes_need() {
    let (disk, store) = fresh();
    let (id, v) = volume(&store, "golden");
    fill(&v, 8);
    let s = store.create_snapshot(id, SnapshotOptions::named("v1")).unwrap();
    let t = store.create_template(s.id, TemplateOptions::named("debian")).unwrap();
    assert_eq!((t.size_bytes, t.source), (SIZE, (id, s.id)));
    assert!(matches!(store.create_template(s.id, TemplateOptions::named("debian")), Err(Error::AlreadyExists { .. })));
    // The source goes away; the template keeps the image.
    fill(&v, 9);
    drop(v);
    store.delete_snapshot(id, s.id).unwrap();
    store.delete_volume(id).unwrap();
    assert_eq!(contents(&store.open_template(t.id).unwrap()), vec![8u8; SIZE as usize]);
    assert!(store.open_template(t.id).unwrap().write_at(b"x", 0).is_err());
    // Many volumes from it, each isolated.
    let vols: Vec<VolumeId> = (0..3)
        .map(|i| store.create_volume_from_template(t.id, VolumeOptions::new(format!("vm{i}"), 0)).unwrap().id)
        .collect();
    let vm0 = store.open_volume(vols[0]).unwrap();
    vm0.write_at(&[1u8; BS], 0).unwrap();
    vm0.flush().unwrap();
    assert_eq!(contents(&store.open_volume(vols[1]).unwrap()), vec![8u8; SIZE as usize]);
    assert_eq!(store.template_by_name("debian").unwrap().id, t.id);
    assert!(store.delete_template(t.id).unwrap().existed);
    assert!(!store.delete_template(t.id).unwrap().existed);
    assert!(store.list_templates().is_empty());
    assert_clean(&store);
    let mut expect = vec![8u8; SIZE as usize];
    expect[..BS].fill(1);
    assert_eq!(contents(&vm0), expect);
    drop(vm0);
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert_eq!(contents(&store.open_volume(vols[0]).unwrap()), expect);
    assert_eq!(contents(&store.open_volume(vols[2]).unwrap()), vec![8u8; SIZE as usize]);
    assert_clean(&store);
}

#[test]
fn templates_survive_checkpoints_and_reopen() {
    let (disk, store) = fresh();
    let (id, v) = volume(&store, "golden");
    fill(&v, 3);
    let s = store.create_snapshot(id, SnapshotOptions::named("v1")).unwrap();
    let t = store.create_template(s.id, TemplateOptions::named("base")).unwrap();
    store.checkpoint().unwrap();
    drop(v);
    store.delete_volume(id).unwrap();
    store.delete_snapshot(id, s.id).unwrap();
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert_eq!(store.template(t.id).unwrap(), t);
    assert_eq!(contents(&store.open_template(t.id).unwrap()), vec![3u8; SIZE as usize]);
    assert_eq!(store.check().unwrap().templates, 1);
    assert_clean(&store);
}

#[test]
fn group_snapshot_captures_every_volume_in_one_step() {
    let (disk, store) = fresh();
    let (a, va) = volume(&store, "data");
    let (b, vb) = volume(&store, "log");
    fill(&va, 1);
    fill(&vb, 2);
    let group = store.create_group_snapshot(&[a, b], SnapshotOptions::named("consistent")).unwrap();
    assert_eq!(group.len(), 2);
    assert_eq!((group[0].volume_id, group[1].volume_id), (a, b));
    fill(&va, 3);
    fill(&vb, 4);
    assert_eq!(contents(&store.open_snapshot(a, group[0].id).unwrap()), vec![1u8; SIZE as usize]);
    assert_eq!(contents(&store.open_snapshot(b, group[1].id).unwrap()), vec![2u8; SIZE as usize]);
    // All or nothing: a name taken on one volume fails the whole group.
    store.create_snapshot(b, SnapshotOptions::named("taken")).unwrap();
    let before = store.all_snapshots().len();
    assert!(matches!(
        store.create_group_snapshot(&[a, b], SnapshotOptions::named("taken")),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(store.all_snapshots().len(), before);
    assert!(matches!(
        store.create_group_snapshot(&[a, a], SnapshotOptions::named("g")),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        store.create_group_snapshot(&[], SnapshotOptions::named("g")),
        Err(Error::InvalidArgument { .. })
    ));
    drop((va, vb));
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert_eq!(contents(&store.open_snapshot(b, group[1].id).unwrap()), vec![2u8; SIZE as usize]);
    assert_clean(&store);
}

#[test]
fn restore_can_keep_the_state_it_discards() {
    let (disk, store) = fresh();
    let (id, v) = volume(&store, "db");
    fill(&v, 1);
    let good = store.create_snapshot(id, SnapshotOptions::named("good")).unwrap();
    fill(&v, 2);
    let opts = RestoreOptions { safety_snapshot: Some(SnapshotOptions::named("pre-restore")), ..Default::default() };
    let r = store.restore_snapshot(id, good.id, opts).unwrap();
    let safety = r.safety_snapshot.expect("a safety snapshot");
    assert_eq!(contents(&v), vec![1u8; SIZE as usize]);
    assert_eq!(contents(&store.open_snapshot(id, safety.id).unwrap()), vec![2u8; SIZE as usize]);
    // A taken name fails the restore as a whole: nothing rolls back.
    fill(&v, 3);
    let clash = RestoreOptions { safety_snapshot: Some(SnapshotOptions::named("good")), ..Default::default() };
    assert!(matches!(store.restore_snapshot(id, good.id, clash), Err(Error::AlreadyExists { .. })));
    assert_eq!(contents(&v), vec![3u8; SIZE as usize]);
    drop(v);
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert_eq!(contents(&store.open_snapshot(id, safety.id).unwrap()), vec![2u8; SIZE as usize]);
    assert_clean(&store);
}

const HOUR: u64 = 3600;
const T0: u64 = 1_800_000_000;

fn autos(store: &Store, id: VolumeId) -> Vec<SnapshotInfo> {
    let q = SnapshotQuery { volume: Some(id), kind: Some(SnapshotKind::Auto), ..Default::default() };
    store.search_snapshots(&q).snapshots
}

#[test]
fn policy_takes_due_snapshots_and_keeps_the_last_n() {
    let (_d, store) = fresh();
    let (id, v) = volume(&store, "db");
    let manual = store.create_snapshot(id, SnapshotOptions::named("manual")).unwrap();
    let policy = SnapshotPolicy { interval_secs: HOUR, keep_last: Some(3), keep_for_secs: None };
    assert_eq!(store.set_policy(id, Some(policy)).unwrap().policy, Some(policy));
    let first = store.run_policies(T0);
    assert_eq!(first.created.len(), 1);
    assert_eq!(first.created[0].name, "auto-20270115-080000");
    assert_eq!(first.created[0].created_at, T0);
    assert_eq!(first.created[0].labels.get(AUTO_LABEL).map(String::as_str), Some("1800000000"));
    // Not due again within the interval.
    assert!(store.run_policies(T0 + HOUR - 1).created.is_empty());
    for h in 1..=5 {
        fill(&v, h as u8);
        let run = store.run_policies(T0 + h * HOUR);
        assert_eq!(run.created.len(), 1, "hour {h}");
        assert!(run.errors.is_empty());
    }
    let kept: Vec<u64> = autos(&store, id).iter().map(|s| s.created_at).collect();
    assert_eq!(kept, [T0 + 3 * HOUR, T0 + 4 * HOUR, T0 + 5 * HOUR]);
    // The newest automatic snapshot has the data of its hour.
    let newest = autos(&store, id).pop().unwrap();
    assert_eq!(contents(&store.open_snapshot(id, newest.id).unwrap()), vec![5u8; SIZE as usize]);
    // Retention never touched the manual snapshot.
    assert!(store.snapshot(manual.id).is_ok());
    assert_clean(&store);
}

#[test]
fn retention_by_age_and_by_count_prunes_only_what_both_let_go() {
    let (_d, store) = fresh();
    let (id, _v) = volume(&store, "db");
    let policy = SnapshotPolicy { interval_secs: HOUR, keep_last: Some(2), keep_for_secs: Some(4 * HOUR) };
    store.set_policy(id, Some(policy)).unwrap();
    for h in 0..10 {
        store.run_policies(T0 + h * HOUR);
    }
    // At T0+9h: kept by age are those younger than 4h (6h..9h, 4 of them);
    // the newest 2 are among them; nothing older survives.
    let kept: Vec<u64> = autos(&store, id).iter().map(|s| (s.created_at - T0) / HOUR).collect();
    assert_eq!(kept, [6, 7, 8, 9]);
    // Much later with no new snapshot taken (clock jumps): the count rule
    // keeps the newest 2 even though every one is old.
    store.set_policy(id, Some(SnapshotPolicy { interval_secs: 1000 * HOUR, ..policy })).unwrap();
    store.run_policies(T0 + 100 * HOUR);
    let kept: Vec<u64> = autos(&store, id).iter().map(|s| (s.created_at - T0) / HOUR).collect();
    assert_eq!(kept, [8, 9]);
}

#[test]
fn retention_spares_held_snapshots_and_a_policy_without_rules_keeps_all() {
    let (_d, store) = fresh();
    let (id, _v) = volume(&store, "db");
    store.set_policy(id, Some(SnapshotPolicy { interval_secs: HOUR, keep_last: None, keep_for_secs: None })).unwrap();
    for h in 0..4 {
        store.run_policies(T0 + h * HOUR);
    }
    assert_eq!(autos(&store, id).len(), 4);
    let oldest = autos(&store, id)[0].clone();
    store.hold_snapshot(id, oldest.id).unwrap();
    store
        .set_policy(id, Some(SnapshotPolicy { interval_secs: HOUR, keep_last: Some(1), keep_for_secs: None }))
        .unwrap();
    let run = store.run_policies(T0 + 4 * HOUR);
    assert_eq!((run.created.len(), run.pruned.len()), (1, 3));
    let left: Vec<SnapshotId> = autos(&store, id).iter().map(|s| s.id).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&oldest.id));
    // Clearing the policy stops it.
    assert_eq!(store.set_policy(id, None).unwrap().policy, None);
    assert!(store.run_policies(T0 + 100 * HOUR).created.is_empty());
    assert!(matches!(
        store.set_policy(id, Some(SnapshotPolicy { interval_secs: 0, keep_last: None, keep_for_secs: None })),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn policies_survive_a_crash_and_names_never_collide() {
    let (disk, store) = fresh();
    let (id, v) = volume(&store, "db");
    store.set_policy(id, Some(SnapshotPolicy { interval_secs: 1, keep_last: Some(10), keep_for_secs: None })).unwrap();
    drop(v);
    let (_disk, store) = reopen_after_crash(&disk, store);
    assert_eq!(store.volume(id).unwrap().policy.map(|p| p.interval_secs), Some(1));
    // A manual snapshot already holds the name the policy would pick.
    store.create_snapshot(id, SnapshotOptions::named("auto-20270115-080000")).unwrap();
    let run = store.run_policies(T0);
    assert_eq!(run.created[0].name, "auto-20270115-080000-2");
}

#[test]
fn policy_runs_alongside_io() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let (id, v) = volume(&store, "db");
    store.set_policy(id, Some(SnapshotPolicy { interval_secs: 1, keep_last: Some(4), keep_for_secs: None })).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v.write_at(&[i as u8; BS], (i % 64) * BS as u64).unwrap();
                if i.is_multiple_of(16) {
                    v.flush().unwrap();
                }
                i += 1;
            }
        });
        for t in 0..40 {
            let run = store.run_policies(T0 + t);
            assert!(run.errors.is_empty(), "{:?}", run.errors);
            assert_eq!(run.created.len(), 1);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(autos(&store, id).len(), 4);
    assert_clean(&store);
}

#[test]
fn background_thread_runs_policies_with_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions { policy_interval: Some(std::time::Duration::from_millis(20)), ..Default::default() };
    let store = Store::open(dir.path(), opts).unwrap();
    let (id, _v) = volume(&store, "db");
    store
        .set_policy(id, Some(SnapshotPolicy { interval_secs: 3600, keep_last: Some(2), keep_for_secs: None }))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while autos(&store, id).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the background thread took no snapshot");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Hourly: one snapshot, not one per pass.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(autos(&store, id).len(), 1);
}
