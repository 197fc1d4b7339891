//! Calendar snapshot schedules over simulated time: every kind across a
//! year in zones with and without daylight saving time and with a
//! 30-minute offset, a host that was down for days, several schedules on
//! one volume with retention counted per schedule, skip-unchanged, expiry
//! and idempotent creates. The host's clock is the `now` each policy pass
//! is given; the passes run every 15 minutes, as a host's timer would.

use cowvol::testing::SimDir;
use cowvol::*;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const BS: usize = 4096;
const SIZE: u64 = 16 * BS as u64;
const MIN: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
const PASS_EVERY: u64 = 15 * MIN;

fn fresh() -> Store {
    let opts = StoreOptions { background_checkpoints: false, ..Default::default() };
    Store::open_in(Arc::new(SimDir::new()), opts).unwrap()
}

fn utc(s: &str) -> u64 {
    s.parse::<Timestamp>().unwrap().as_second() as u64
}

fn volume(store: &Store, name: &str) -> (VolumeId, Volume) {
    let id = store.create_volume(VolumeOptions::new(name, SIZE)).unwrap().id;
    (id, store.open_volume(id).unwrap())
}

fn write(v: &Volume, byte: u8) {
    v.write_at(&[byte; BS], 0).unwrap();
    v.flush().unwrap();
}

fn at(hour: u8, minute: u8) -> TimeOfDay {
    TimeOfDay::new(hour, minute)
}

fn schedule(name: &str, every: Every, zone: &str, keep_last: u32) -> Schedule {
    Schedule { keep_last: Some(keep_last), ..Schedule::new(name, every, zone) }
}

/// The ready snapshots `schedule` of `volume` holds now, oldest first.
fn taken_by(store: &Store, volume: VolumeId, schedule: &str) -> Vec<SnapshotInfo> {
    let mut snaps: Vec<SnapshotInfo> =
        store.list_snapshots(volume).into_iter().filter(|s| s.schedule.as_deref() == Some(schedule)).collect();
    snaps.sort_by_key(|s| (s.created_at, s.id));
    snaps
}

fn no_errors(run: &PolicyRun) {
    assert!(run.errors.is_empty(), "{:?}", run.errors);
}

/// The slot each snapshot a pass created was taken for, by schedule.
fn record_slots(run: &PolicyRun, slots: &mut BTreeMap<String, Vec<u64>>) {
    for s in &run.created {
        let slot = s.labels[AUTO_LABEL].parse().unwrap();
        slots.entry(s.schedule.clone().unwrap()).or_default().push(slot);
    }
}

fn local(tz: &TimeZone, secs: u64) -> jiff::civil::DateTime {
    tz.to_datetime(Timestamp::from_second(secs as i64).unwrap())
}

/// Whether the wall clock of `tz` skips `wall` on `day` (a DST gap), and
/// the slot is the first instant after the gap: one second earlier the
/// clock read earlier than `wall`, and at the slot it reads later.
fn is_gap_end(tz: &TimeZone, slot: u64, day: Date, wall: Time) -> bool {
    let before = local(tz, slot - 1);
    let now = local(tz, slot);
    now.date() == day && before.time() < wall && now.time() > wall && now.time().minute() == 0
}

/// Checks one schedule's slots over the year against the rules in
/// docs/lifecycle.md; `gaps` is how many of them a DST gap moved.
fn check_daily_like(tz: &TimeZone, slots: &[u64], wall: Time, days: &[Date], gaps: usize, what: &str) {
    assert_eq!(slots.len(), days.len(), "{what}: one run per day it is due: {slots:?}");
    let mut moved = 0;
    for (&slot, &day) in slots.iter().zip(days) {
        let l = local(tz, slot);
        if l.date() == day && l.time() == wall {
            // In an overlap the wall time happens twice: the first counts.
            let earlier = tz.to_ambiguous_timestamp(day.to_datetime(wall)).earlier().unwrap();
            assert_eq!(slot as i64, earlier.as_second(), "{what}: {day} ran at the second {wall}");
        } else {
            assert!(is_gap_end(tz, slot, day, wall), "{what}: {day} ran at {l}, not at {wall}");
            moved += 1;
        }
    }
    assert_eq!(moved, gaps, "{what}: runs a DST gap moved");
}

fn days_of(year: i16, keep: impl Fn(Date) -> bool) -> Vec<Date> {
    let mut d = Date::new(year, 1, 1).unwrap();
    let mut out = Vec::new();
    while d.year() == year {
        if keep(d) {
            out.push(d);
        }
        d = d.tomorrow().unwrap();
    }
    out
}

/// (zone, DST gaps that skip 02:30 in 2027). Kolkata has a 30-minute
/// offset and no DST; Adelaide has both, in the southern hemisphere.
const ZONES: [(&str, usize); 4] =
    [("Europe/Berlin", 1), ("America/New_York", 1), ("Asia/Kolkata", 0), ("Australia/Adelaide", 1)];

#[test]
fn every_kind_runs_on_its_wall_clock_across_a_year_in_several_zones() {
    for (zone, gaps) in ZONES {
        let tz = TimeZone::get(zone).unwrap();
        let start = tz.to_ambiguous_timestamp(Date::new(2027, 1, 1).unwrap().at(0, 0, 0, 0)).compatible().unwrap();
        let start = start.as_second() as u64;
        let end = tz.to_ambiguous_timestamp(Date::new(2028, 1, 1).unwrap().at(0, 0, 0, 0)).compatible().unwrap();
        let end = end.as_second() as u64;
        let store = fresh();
        let (id, _) = volume(&store, "v");
        let wall = at(2, 30);
        let kinds = [
            schedule("hourly", Every::Hourly { minute: 15 }, zone, 2),
            schedule("daily", Every::Daily { at: wall }, zone, 2),
            schedule("weekly", Every::Weekly { on: Weekday::Sunday, at: wall }, zone, 2),
            schedule("monthly", Every::Monthly { day: 31, at: wall }, zone, 2),
        ];
        for s in kinds {
            // Every run takes a snapshot, so every slot shows.
            store.add_schedule(id, Schedule { skip_unchanged: false, ..s }, start - 1).unwrap();
        }
        let mut slots = BTreeMap::new();
        let mut now = start;
        while now < end {
            let run = store.run_policies(now);
            no_errors(&run);
            for s in &run.created {
                let slot: u64 = s.labels[AUTO_LABEL].parse().unwrap();
                assert!(slot <= now && now - slot < PASS_EVERY, "{zone}: {} ran late, at {now}", s.name);
            }
            record_slots(&run, &mut slots);
            now += PASS_EVERY;
        }
        let wall_time = Time::new(2, 30, 0, 0).unwrap();
        let hourly = &slots["hourly"];
        // Whole-hour DST shifts keep the hourly schedule exactly an hour
        // apart, through both transitions, and on minute 15 of the clock.
        assert_eq!(hourly.len() as u64, (end - start) / HOUR, "{zone}: hourly runs");
        assert!(hourly.windows(2).all(|w| w[1] - w[0] == HOUR), "{zone}: hourly runs an hour apart");
        assert!(hourly.iter().all(|&s| local(&tz, s).minute() == 15), "{zone}: hourly on minute 15");
        check_daily_like(&tz, &slots["daily"], wall_time, &days_of(2027, |_| true), gaps, &format!("{zone} daily"));
        let sundays = days_of(2027, |d| d.weekday() == jiff::civil::Weekday::Sunday);
        // The DST changes of all three zones fall on Sundays.
        check_daily_like(&tz, &slots["weekly"], wall_time, &sundays, gaps, &format!("{zone} weekly"));
        let last_days = days_of(2027, |d| d.day() == d.days_in_month());
        check_daily_like(&tz, &slots["monthly"], wall_time, &last_days, 0, &format!("{zone} monthly"));
        // Retention kept each schedule's newest two, and nothing else.
        for name in ["hourly", "daily", "weekly", "monthly"] {
            let kept: Vec<u64> =
                taken_by(&store, id, name).iter().map(|s| s.labels[AUTO_LABEL].parse().unwrap()).collect();
            assert_eq!(kept, slots[name][slots[name].len() - 2..], "{zone}: {name} keeps its newest two");
        }
        assert!(store.check().unwrap().is_clean());
    }
}

#[test]
fn the_names_of_scheduled_snapshots_use_the_zones_wall_clock() {
    let store = fresh();
    let (id, v) = volume(&store, "v");
    write(&v, 1);
    let t0 = utc("2027-06-01T00:00:00Z");
    store.add_schedule(id, Schedule::new("nightly", Every::Daily { at: at(1, 0) }, "Asia/Kolkata"), t0).unwrap();
    // 01:00 in Kolkata (+05:30) is 19:30 UTC the day before.
    let run = store.run_policies(utc("2027-06-01T19:30:00Z"));
    assert_eq!(run.created.len(), 1);
    let s = &run.created[0];
    assert_eq!(
        (s.name.as_str(), s.kind, s.schedule.as_deref()),
        ("nightly-20270602-0100", SnapshotKind::Auto, Some("nightly"))
    );
    assert_eq!(s.labels[SCHEDULE_LABEL], "nightly");
}

#[test]
fn a_host_down_for_three_days_runs_each_missed_schedule_once() {
    let store = fresh();
    let (id, v) = volume(&store, "v");
    let t0 = utc("2027-03-01T00:00:00Z"); // a Monday
    let kinds = [
        schedule("hourly", Every::Hourly { minute: 0 }, "UTC", 100),
        schedule("daily", Every::Daily { at: at(2, 0) }, "UTC", 100),
        schedule("weekly", Every::Weekly { on: Weekday::Wednesday, at: at(3, 0) }, "UTC", 100),
        schedule("monthly", Every::Monthly { day: 2, at: at(4, 0) }, "UTC", 100),
    ];
    for s in kinds {
        store.add_schedule(id, s, t0).unwrap();
    }
    write(&v, 1);
    no_errors(&store.run_policies(t0 + HOUR));
    assert_eq!(store.list_snapshots(id).len(), 1, "the first hour");
    // Down from 01:00 on Monday to 12:07 on Thursday: every schedule had
    // slots in between; each runs once, for its latest slot.
    write(&v, 2);
    let back = t0 + 3 * DAY + 12 * HOUR + 7 * MIN;
    let run = store.run_policies(back);
    no_errors(&run);
    let mut got: Vec<(String, u64)> =
        run.created.iter().map(|s| (s.schedule.clone().unwrap(), s.labels[AUTO_LABEL].parse().unwrap())).collect();
    got.sort();
    let want = [
        ("daily", t0 + 3 * DAY + 2 * HOUR),
        ("hourly", t0 + 3 * DAY + 12 * HOUR),
        ("monthly", t0 + DAY + 4 * HOUR),
        ("weekly", t0 + 2 * DAY + 3 * HOUR),
    ];
    assert_eq!(got, want.map(|(n, t)| (n.to_string(), t)));
    // Nothing is left over for a second pass.
    assert!(store.run_policies(back + 5 * MIN).schedules.is_empty());
    let hourly = &store.volume(id).unwrap().schedules[0];
    assert_eq!(hourly.next_due(), Some(t0 + 3 * DAY + 13 * HOUR));
}

#[test]
fn retention_counts_each_schedule_alone_and_spares_manual_held_and_other_snapshots() {
    let store = fresh();
    let (id, v) = volume(&store, "v");
    let t0 = utc("2027-05-03T00:00:00Z");
    store.add_schedule(id, schedule("hourly", Every::Hourly { minute: 0 }, "UTC", 3), t0).unwrap();
    store.add_schedule(id, schedule("daily", Every::Daily { at: at(0, 30) }, "UTC", 2), t0).unwrap();
    let interval = SnapshotPolicy { interval_secs: 6 * HOUR, keep_last: Some(1), keep_for_secs: None };
    store.set_policy(id, Some(interval)).unwrap();
    let manual = store.create_snapshot(id, SnapshotOptions::named("manual")).unwrap();
    let mut held = None;
    let mut byte = 0u8;
    let mut now = t0;
    while now < t0 + 4 * DAY {
        byte = byte.wrapping_add(1);
        write(&v, byte);
        let run = store.run_policies(now);
        no_errors(&run);
        for s in &run.pruned {
            assert_ne!(s.id, manual.id);
            assert_eq!(s.kind, SnapshotKind::Auto);
        }
        if held.is_none() && now >= t0 + 2 * HOUR {
            let first = taken_by(&store, id, "hourly")[0].id;
            store.hold_snapshot(id, first).unwrap();
            held = Some(first);
        }
        now += PASS_EVERY;
    }
    let hourly = taken_by(&store, id, "hourly");
    assert_eq!(hourly.len(), 4, "three kept, plus the held one");
    assert!(hourly.iter().any(|s| Some(s.id) == held && s.held));
    assert_eq!(taken_by(&store, id, "daily").len(), 2);
    let interval_snaps: Vec<_> =
        store.list_snapshots(id).into_iter().filter(|s| s.kind == SnapshotKind::Auto && s.schedule.is_none()).collect();
    assert_eq!(interval_snaps.len(), 1, "the interval policy counts its own only");
    assert!(store.snapshot(manual.id).is_ok(), "manual snapshots are never pruned");
    // A removed schedule's snapshots stay, and no retention touches them.
    assert!(store.remove_schedule(id, "daily").unwrap().existed);
    assert!(!store.remove_schedule(id, "daily").unwrap().existed);
    while now < t0 + 8 * DAY {
        byte = byte.wrapping_add(1);
        write(&v, byte);
        no_errors(&store.run_policies(now));
        now += PASS_EVERY;
    }
    assert_eq!(taken_by(&store, id, "daily").len(), 2);
    assert_eq!(taken_by(&store, id, "hourly").len(), 4);
}

#[test]
fn an_unchanged_volume_is_not_snapshotted_again_and_the_run_says_so() {
    let store = fresh();
    let (id, v) = volume(&store, "v");
    let t0 = utc("2027-05-03T00:00:00Z");
    store.add_schedule(id, schedule("hourly", Every::Hourly { minute: 0 }, "UTC", 10), t0).unwrap();
    write(&v, 1);
    let run = store.run_policies(t0 + HOUR);
    assert_eq!(run.created.len(), 1);
    assert_eq!(run.schedules[0].status.last_result, Some(RunResult::Created(run.created[0].id)));
    // No write since: skipped, and the slot counts as handled.
    let run = store.run_policies(t0 + 2 * HOUR);
    assert!(run.created.is_empty());
    assert_eq!(run.schedules.len(), 1);
    assert_eq!(run.schedules[0].status.last_result, Some(RunResult::SkippedUnchanged));
    assert_eq!(run.schedules[0].status.last_slot, Some(t0 + 2 * HOUR));
    // Still unchanged after a checkpoint and reopen: the loaded trees share.
    drop(v);
    let disk = SimDir::new();
    let store = {
        let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
        let s = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        let id = s.create_volume(VolumeOptions::new("w", SIZE)).unwrap().id;
        s.add_schedule(id, schedule("hourly", Every::Hourly { minute: 0 }, "UTC", 10), t0).unwrap();
        write(&s.open_volume(id).unwrap(), 1);
        assert_eq!(s.run_policies(t0 + HOUR).created.len(), 1);
        s.close().unwrap();
        Store::open_in(Arc::new(disk.clone()), opts()).unwrap()
    };
    let w = store.volume_by_name("w").unwrap().id;
    let run = store.run_policies(t0 + 2 * HOUR);
    assert_eq!(run.schedules[0].status.last_result, Some(RunResult::SkippedUnchanged), "{run:?}");
    // A write, even of the same bytes, is a change.
    write(&store.open_volume(w).unwrap(), 1);
    assert_eq!(store.run_policies(t0 + 3 * HOUR).created.len(), 1);
    // Once the schedule's snapshots are gone, there is nothing to compare.
    for s in taken_by(&store, w, "hourly") {
        store.delete_snapshot(w, s.id).unwrap();
    }
    assert_eq!(store.run_policies(t0 + 4 * HOUR).created.len(), 1);
    // A schedule told to always snapshot does.
    let always = Schedule { skip_unchanged: false, ..schedule("always", Every::Hourly { minute: 0 }, "UTC", 10) };
    store.add_schedule(w, always, t0 + 4 * HOUR).unwrap();
    let run = store.run_policies(t0 + 5 * HOUR);
    let names: BTreeSet<_> = run.created.iter().map(|s| s.schedule.clone().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["always".to_string()]));
}

#[test]
fn expired_snapshots_are_deleted_by_the_policy_pass_unless_held() {
    let store = fresh();
    let (id, v) = volume(&store, "v");
    write(&v, 1);
    let now = Timestamp::now().as_second() as u64;
    let expiring = |name: &str, at: u64| SnapshotOptions { expires_at: Some(at), ..SnapshotOptions::named(name) };
    let soon = store.create_snapshot(id, expiring("soon", now + HOUR)).unwrap();
    let held = store.create_snapshot(id, expiring("held", now + HOUR)).unwrap();
    store.hold_snapshot(id, held.id).unwrap();
    let later = store.create_snapshot(id, expiring("later", now + DAY)).unwrap();
    assert_eq!(soon.expires_at, Some(now + HOUR));
    let past = store.create_snapshot(id, expiring("past", now.saturating_sub(1)));
    assert!(matches!(past, Err(Error::InvalidArgument { .. })), "{past:?}");
    let group = store.create_group_snapshot(&[id], expiring("past-group", now.saturating_sub(1)));
    assert!(matches!(group, Err(Error::InvalidArgument { .. })), "{group:?}");

    assert!(store.run_policies(now + HOUR - 1).expired.is_empty());
    let run = store.run_policies(now + HOUR);
    assert_eq!(run.expired.iter().map(|s| s.id).collect::<Vec<_>>(), [soon.id]);
    assert!(store.snapshot(held.id).is_ok(), "a hold outlasts the expiry");
    store.release_snapshot(id, held.id).unwrap();
    let run = store.run_policies(now + HOUR + 1);
    assert_eq!(run.expired.iter().map(|s| s.id).collect::<Vec<_>>(), [held.id]);
    assert!(store.snapshot(later.id).is_ok());
    assert_eq!(store.snapshot(later.id).unwrap().expires_at, Some(now + DAY));
}

#[test]
fn a_retried_create_with_the_same_key_returns_the_first_snapshot() {
    let disk = SimDir::new();
    let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let (a, va) = volume(&store, "a");
    let (b, _) = volume(&store, "b");
    write(&va, 1);
    let keyed =
        |name: &str, key: &str| SnapshotOptions { idempotency_key: Some(key.into()), ..SnapshotOptions::named(name) };
    let first = store.create_snapshot(a, keyed("s1", "req-1")).unwrap();
    write(&va, 2);
    // The client timed out and retries, even with a different name.
    assert_eq!(store.create_snapshot(a, keyed("s1", "req-1")).unwrap(), first);
    assert_eq!(store.create_snapshot(a, keyed("s1-retry", "req-1")).unwrap(), first);
    assert_eq!(store.list_snapshots(a).len(), 1);
    // Keys are per volume, and other keys are other requests.
    assert_ne!(store.create_snapshot(b, keyed("s1", "req-1")).unwrap().id, first.id);
    assert_ne!(store.create_snapshot(a, keyed("s2", "req-2")).unwrap().id, first.id);
    // The key survives a crash.
    drop(va);
    testing::abandon(store);
    let store = Store::open_in(Arc::new(disk.crash(testing::LossMode::DropAll, 1)), opts()).unwrap();
    assert_eq!(store.create_snapshot(a, keyed("s1", "req-1")).unwrap().id, first.id);
    // Deleting the snapshot forgets the key.
    store.delete_snapshot(a, first.id).unwrap();
    let again = store.create_snapshot(a, keyed("s1", "req-1")).unwrap();
    assert_ne!(again.id, first.id);
    // Where a key cannot be honoured it is refused, not ignored.
    let group = store.create_group_snapshot(&[a, b], keyed("g", "req-3"));
    assert!(matches!(group, Err(Error::InvalidArgument { .. })), "{group:?}");
    assert!(matches!(store.create_snapshot(a, keyed("bad", "")), Err(Error::InvalidArgument { .. })));
}

#[test]
fn schedules_are_checked_when_added_and_survive_a_crash() {
    let disk = SimDir::new();
    let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let (id, _) = volume(&store, "v");
    let t0 = utc("2027-01-01T00:00:00Z");
    let daily = schedule("daily", Every::Daily { at: at(2, 0) }, "Europe/Berlin", 7);
    let info = store.add_schedule(id, daily.clone(), t0).unwrap();
    assert_eq!((info.added_at, info.status.clone()), (t0, ScheduleStatus::default()));
    let bad = [
        Schedule { time_zone: "Europe/Atlantis".into(), ..daily.clone() },
        Schedule { every: Every::Daily { at: at(24, 0) }, name: "x".into(), ..daily.clone() },
        Schedule { keep_last: Some(0), name: "y".into(), ..daily.clone() },
        Schedule { name: "n".repeat(64), ..daily.clone() },
    ];
    for s in bad {
        assert!(matches!(store.add_schedule(id, s.clone(), t0), Err(Error::InvalidArgument { .. })), "{s:?}");
    }
    assert!(matches!(store.add_schedule(id, daily.clone(), t0), Err(Error::AlreadyExists { .. })));
    assert!(matches!(store.add_schedule("vol-999".parse().unwrap(), daily, t0), Err(Error::NotFound { .. })));
    testing::abandon(store);
    let store = Store::open_in(Arc::new(disk.crash(testing::LossMode::DropAll, 1)), opts()).unwrap();
    assert_eq!(store.volume(id).unwrap().schedules, vec![info]);
}
