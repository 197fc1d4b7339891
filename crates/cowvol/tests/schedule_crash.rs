//! Power cuts in the middle of a policy pass. The pass under test takes two
//! scheduled snapshots, prunes one snapshot of each schedule and deletes an
//! expired one: five logged steps. The power is cut after each disk
//! operation of the pass in turn; the recovered store is checked, the same
//! pass is run again, and the result must be exactly what the uncut pass
//! left: nothing taken twice, nothing pruned that should stay, every
//! schedule's status where it belongs.

use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::sync::Arc;

const BS: usize = 4096;
const SIZE: u64 = 16 * BS as u64;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

fn opts() -> StoreOptions {
    // A small WAL threshold: a checkpoint lands inside the pass.
    StoreOptions { checkpoint_wal_bytes: 8 << 10, background_checkpoints: false, ..Default::default() }
}

/// Midnight UTC a month from now: the simulated clock starts there, after
/// the wall-clock expiry of the snapshot made below.
fn t0() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    (now / DAY + 30) * DAY
}

/// What the pass leaves, as comparable text: every snapshot (name, kind,
/// schedule, slot) and every schedule's status, with the snapshot a run
/// created shown by name (ids may be handed out again after a crash).
fn fingerprint(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    let snaps = store.all_snapshots();
    for s in &snaps {
        out.push(format!("snapshot {} {} {:?} {:?}", s.name, s.kind, s.schedule, s.labels.get(AUTO_LABEL)));
    }
    for v in store.list_volumes() {
        for sc in &v.schedules {
            let st = &sc.status;
            let result = match st.last_result {
                Some(RunResult::Created(id)) => {
                    snaps.iter().find(|s| s.id == id).map_or("gone".into(), |s| s.name.clone())
                }
                other => format!("{other:?}"),
            };
            out.push(format!(
                "schedule {} {:?} {:?} {result} {} {:?}",
                sc.schedule.name, st.last_slot, st.last_run_at, st.consecutive_failures, st.last_error
            ));
        }
    }
    out.sort();
    out
}

/// Everything before the pass under test: a volume with an hourly schedule
/// keeping 2 and a daily one keeping 1, two earlier passes, and a manual
/// snapshot that will have expired.
fn setup(store: &Store, t0: u64) -> Result<()> {
    let id = store.create_volume(VolumeOptions::new("v", SIZE))?.id;
    let v = store.open_volume(id)?;
    let hourly = Schedule {
        keep_last: Some(2),
        skip_unchanged: false,
        ..Schedule::new("hourly", Every::Hourly { minute: 0 }, "UTC")
    };
    store.add_schedule(id, hourly, t0)?;
    let daily = Schedule {
        keep_last: Some(1),
        ..Schedule::new("daily", Every::Daily { at: TimeOfDay::new(0, 30) }, "Europe/Berlin")
    };
    store.add_schedule(id, daily, t0 - DAY)?;
    let expiring = SnapshotOptions { expires_at: Some(t0 + DAY), ..SnapshotOptions::named("short-lived") };
    store.create_snapshot(id, expiring)?;
    for (i, h) in [1, 2].into_iter().enumerate() {
        v.write_at(&[i as u8 + 1; BS], 0)?;
        v.flush()?;
        let run = store.run_policies(t0 + h * HOUR);
        if let Some((_, e)) = run.errors.into_iter().next() {
            return Err(e);
        }
    }
    v.write_at(&[9; BS], 0)?;
    v.flush()
}

/// The pass under test.
fn pass(store: &Store, t0: u64) -> PolicyRun {
    store.run_policies(t0 + DAY + HOUR)
}

#[test]
fn a_policy_pass_cut_anywhere_resumes_without_duplicates() {
    let t0 = t0();
    let calib = SimDir::new();
    let store = Store::open_in(Arc::new(calib.clone()), opts()).unwrap();
    setup(&store, t0).unwrap();
    let before = calib.ops_count();
    let run = pass(&store, t0);
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert_eq!((run.created.len(), run.pruned.len(), run.expired.len()), (2, 2, 1), "{run:?}");
    let want = fingerprint(&store);
    let total = calib.ops_count() - before;
    drop(store);

    let mut checked = 0;
    for k in 0..=total {
        let disk = SimDir::new();
        let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        setup(&store, t0).unwrap();
        disk.set_cut_after_ops(Some(disk.ops_count() + k));
        pass(&store, t0);
        testing::abandon(store);
        let modes = [LossMode::DropAll, LossMode::Random { keep_prob: 0.5, tear_prob: 0.3 }, LossMode::Prefix];
        for (i, mode) in modes.into_iter().enumerate() {
            let what = format!("cut after {k} of {total} ops of the pass, {mode:?}");
            let store = Store::open_in(Arc::new(disk.crash(mode, k * 7 + i as u64)), opts())
                .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
            assert!(store.check().unwrap().is_clean(), "{what}: check");
            let rerun = pass(&store, t0);
            assert!(rerun.errors.is_empty(), "{what}: {:?}", rerun.errors);
            assert_eq!(fingerprint(&store), want, "{what}: the resumed pass differs from the uncut one");
            assert!(store.check().unwrap().is_clean(), "{what}: check after the resumed pass");
            checked += 1;
        }
    }
    println!("policy pass crash points: {total} disk operations, {checked} recoveries checked");
}
