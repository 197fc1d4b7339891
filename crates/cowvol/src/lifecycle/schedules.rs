//! Calendar snapshot schedules: adding and removing them, and running them
//! in the policy pass.
//!
//! Each run of a schedule is one logged record ([`Record::ScheduleRun`])
//! that carries the schedule's new status together with the snapshot it
//! took, if any: after a crash either both are there or neither is, so a
//! pass that resumes never takes a slot's snapshot twice. Each prune is a
//! snapshot delete, one record too.

use super::{free_snapshot_name, PolicyRun, Retention, ScheduleRunReport, AUTO_LABEL};
use crate::calendar;
use crate::catalog::{
    RunResult, Schedule, ScheduleInfo, ScheduleStatus, SnapshotInfo, SnapshotKind, SnapshotStatus, VolumeId,
    MAX_SCHEDULES, SCHEDULE_LABEL,
};
use crate::engine::record::Record;
use crate::engine::{try_admin, Engine, State};
use crate::error::{Error, Result};
use crate::options::{Deleted, SnapshotOptions};
use crate::store::Store;
use jiff::tz::TimeZone;

impl Store {
    /// Adds a calendar schedule to a volume. Its first slot is the first
    /// one after `now` (seconds since the Unix epoch: the host's clock, as
    /// [`Store::run_policies`] takes it). Durable when it returns.
    ///
    /// ```
    /// use cowvol::{Every, Schedule, Store, StoreOptions, TimeOfDay, VolumeOptions};
    /// # fn main() -> cowvol::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let db = store.create_volume(VolumeOptions::new("db", 1 << 20))?.id;
    /// let daily = Schedule {
    ///     keep_last: Some(7),
    ///     ..Schedule::new("daily", Every::Daily { at: TimeOfDay::new(2, 0) }, "Europe/Berlin")
    /// };
    /// let jan_1 = 1_798_761_600; // 2027-01-01 00:00 UTC
    /// store.add_schedule(db, daily, jan_1)?;
    /// store.open_volume(db)?.write_at(b"data", 0)?;
    /// // 02:00 in Berlin is 01:00 UTC in winter.
    /// assert!(store.run_policies(jan_1 + 3599).created.is_empty());
    /// let run = store.run_policies(jan_1 + 3600);
    /// assert_eq!(run.created[0].name, "daily-20270101-0200");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::AlreadyExists`] when the volume has a
    /// schedule of that name; [`Error::InvalidArgument`] for a time zone
    /// this build does not know, a time or day out of range, a retention
    /// rule of 0, reserved or too many labels, or more than
    /// [`MAX_SCHEDULES`] schedules.
    pub fn add_schedule(&self, volume: VolumeId, schedule: Schedule, now: u64) -> Result<ScheduleInfo> {
        schedule.check()?;
        calendar::zone(&schedule.time_zone)?;
        self.engine.commit_growing(|st| {
            let v = &st.vol(volume)?.info;
            if v.schedules.iter().any(|s| s.schedule.name == schedule.name) {
                return Err(Error::AlreadyExists { what: format!("schedule {:?} of volume {volume}", schedule.name) });
            }
            if v.schedules.len() >= MAX_SCHEDULES {
                return Err(Error::invalid(format!(
                    "volume {volume} already has {MAX_SCHEDULES} schedules, the most it may have"
                )));
            }
            let info = ScheduleInfo { schedule, added_at: now, status: ScheduleStatus::default() };
            let name = info.schedule.name.clone();
            Ok((info.clone(), Some(Record::SetSchedule { vol: volume.0, name, schedule: Some(info) })))
        })
    }

    /// Removes a volume's schedule. The snapshots it took stay, and no
    /// retention touches them any more (a schedule added later under the
    /// same name counts them as its own). Idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the volume does not exist.
    pub fn remove_schedule(&self, volume: VolumeId, name: &str) -> Result<Deleted> {
        self.engine.commit(|st| {
            if !st.vol(volume)?.info.schedules.iter().any(|s| s.schedule.name == name) {
                return Ok((Deleted { existed: false }, None));
            }
            let rec = Record::SetSchedule { vol: volume.0, name: name.to_string(), schedule: None };
            Ok((Deleted { existed: true }, Some(rec)))
        })
    }
}

impl ScheduleInfo {
    /// The next slot at which the schedule runs (seconds since the Unix
    /// epoch): the first one after the last it handled, or after it was
    /// added. A pass at or after it takes the snapshot. `None` for a zone
    /// this build does not know.
    pub fn next_due(&self) -> Option<u64> {
        let tz = calendar::zone(&self.schedule.time_zone).ok()?;
        calendar::next_slot(&self.schedule.every, &tz, self.handled_up_to())
    }
}

impl Engine {
    /// Runs every due schedule, then each schedule's retention.
    pub(super) fn run_schedules(&self, now: u64, run: &mut PolicyRun) {
        let all: Vec<(VolumeId, ScheduleInfo)> = {
            let st = self.state.lock();
            st.volumes.values().flat_map(|v| v.info.schedules.iter().map(|s| (v.info.id, s.clone()))).collect()
        };
        for (volume, info) in all {
            let due = calendar::zone(&info.schedule.time_zone).map(|tz| {
                let slot = calendar::latest_due_slot(&info.schedule.every, &tz, info.handled_up_to(), now);
                slot.map(|slot| (tz, slot))
            });
            match due {
                Ok(None) => {}
                Ok(Some((tz, slot))) => match self.take_scheduled(volume, &info.schedule.name, &tz, slot, now) {
                    Ok((status, snapshot)) => {
                        run.created.extend(snapshot);
                        run.schedules.push(report(volume, &info, Some(slot), status));
                    }
                    Err(e) => self.record_failure(volume, &info, Some(slot), now, e, run),
                },
                Err(e) => self.record_failure(volume, &info, None, now, e, run),
            }
            let s = &info.schedule;
            let rules = Retention { schedule: Some(&s.name), keep_last: s.keep_last, keep_for_secs: s.keep_for_secs };
            self.prune(volume, rules, now, run);
        }
    }

    /// Runs schedule `name` of `volume` for `slot`: takes its snapshot, or
    /// skips an unchanged volume, and records the run, in one logged step.
    fn take_scheduled(
        &self,
        volume: VolumeId,
        name: &str,
        tz: &TimeZone,
        slot: u64,
        now: u64,
    ) -> Result<(ScheduleStatus, Option<SnapshotInfo>)> {
        self.ensure_writable()?;
        let rt = self.state.lock().vol(volume)?.rt.clone();
        let _admin = try_admin(&rt, volume, "a scheduled snapshot")?;
        self.commit_growing(|st| {
            let current = schedule_of(st, volume, name)?.clone();
            // Removed and added again since the pass looked: the new
            // schedule's own slots start after it was added.
            if current.handled_up_to() >= slot {
                return Ok(((current.status, None), None));
            }
            let snapshot = if current.schedule.skip_unchanged && unchanged_since_last(st, volume, name) {
                None
            } else {
                let opts = scheduled_options(st, volume, &current.schedule, tz, slot);
                opts.check_limits()?;
                let info = st.new_snapshot_info(volume, opts, SnapshotStatus::Ready, now)?;
                Some(SnapshotInfo { schedule: Some(name.to_string()), ..info })
            };
            let status = ScheduleStatus {
                last_slot: Some(slot),
                last_run_at: Some(now),
                last_result: Some(snapshot.as_ref().map_or(RunResult::SkippedUnchanged, |s| RunResult::Created(s.id))),
                last_error: String::new(),
                consecutive_failures: 0,
            };
            let rec = Record::ScheduleRun {
                vol: volume.0,
                name: name.to_string(),
                status: status.clone(),
                snapshot: snapshot.clone(),
            };
            Ok(((status, snapshot), Some(rec)))
        })
    }

    /// Records that a schedule's run failed, leaving its slot due so the
    /// next pass tries again. When even that cannot be logged (the store
    /// is poisoned, the volume is gone), the report still says so.
    fn record_failure(
        &self,
        volume: VolumeId,
        info: &ScheduleInfo,
        slot: Option<u64>,
        now: u64,
        error: Error,
        run: &mut PolicyRun,
    ) {
        let status = ScheduleStatus {
            last_slot: info.status.last_slot,
            last_run_at: Some(now),
            last_result: Some(RunResult::Failed),
            last_error: error.to_string(),
            consecutive_failures: info.status.consecutive_failures.saturating_add(1),
        };
        let name = &info.schedule.name;
        // Not logging the failure loses only the count: the error itself
        // is reported below either way.
        let _ = self.commit(|st| {
            schedule_of(st, volume, name)?;
            let rec = Record::ScheduleRun { vol: volume.0, name: name.clone(), status: status.clone(), snapshot: None };
            Ok(((), Some(rec)))
        });
        run.schedules.push(report(volume, info, slot, status));
        run.errors.push((volume, error));
    }
}

fn report(volume: VolumeId, info: &ScheduleInfo, slot: Option<u64>, status: ScheduleStatus) -> ScheduleRunReport {
    let after = ScheduleInfo { status, ..info.clone() };
    ScheduleRunReport {
        volume,
        schedule: info.schedule.name.clone(),
        slot,
        failing: after.is_failing(),
        status: after.status,
    }
}

fn schedule_of<'a>(st: &'a State, volume: VolumeId, name: &str) -> Result<&'a ScheduleInfo> {
    let v = &st.vol(volume)?.info;
    v.schedules
        .iter()
        .find(|s| s.schedule.name == name)
        .ok_or_else(|| Error::not_found(format!("schedule {name:?} of volume {volume}")))
}

/// Whether `volume` still holds exactly the tree of the newest ready
/// snapshot schedule `name` took. O(1) per comparison: trees are shared
/// by path copying, so an unchanged volume's root is the snapshot's root
/// itself, and any write since gave the volume a new root.
fn unchanged_since_last(st: &State, volume: VolumeId, name: &str) -> bool {
    let newest = st
        .snapshots_of(volume)
        .into_iter()
        .filter(|s| s.info.is_ready() && s.info.schedule.as_deref() == Some(name))
        .max_by_key(|s| (s.info.created_at, s.info.id));
    let (Some(snap), Ok(vol)) = (newest, st.vol(volume)) else { return false };
    match (&snap.root, &vol.root) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_as(b),
        _ => false,
    }
}

/// The options of the snapshot `schedule` takes for `slot`: named for the
/// slot on the zone's wall clock, automatic, with the schedule's labels.
fn scheduled_options(st: &State, volume: VolumeId, schedule: &Schedule, tz: &TimeZone, slot: u64) -> SnapshotOptions {
    let base = format!("{}-{}", schedule.name, calendar::local_stamp(tz, slot));
    let mut labels = schedule.labels.clone();
    labels.insert(AUTO_LABEL.to_string(), slot.to_string());
    labels.insert(SCHEDULE_LABEL.to_string(), schedule.name.clone());
    SnapshotOptions {
        name: free_snapshot_name(st, volume, base),
        description: format!("taken by schedule {:?} ({} {})", schedule.name, schedule.every, schedule.time_zone),
        labels,
        kind: SnapshotKind::Auto,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Every, FAILING_AFTER};
    use crate::options::VolumeOptions;
    use crate::testing::{LossMode, SimDir};
    use std::sync::Arc;

    fn opts() -> crate::StoreOptions {
        crate::StoreOptions { background_checkpoints: false, ..Default::default() }
    }

    #[test]
    fn failures_are_counted_reported_flagged_and_cleared() {
        let disk = SimDir::new();
        let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        let id = store.create_volume(VolumeOptions::new("v", 4096)).unwrap().id;
        let t0 = 1_800_000_000 / 3600 * 3600;
        store.add_schedule(id, Schedule::new("hourly", Every::Hourly { minute: 0 }, "UTC"), t0).unwrap();
        let rt = store.engine.state.lock().vol(id).unwrap().rt.clone();
        // Another administrative operation holds the volume for three
        // passes: each fails, and the slot stays due.
        let busy = rt.admin.lock();
        for n in 1..=FAILING_AFTER {
            let run = store.run_policies(t0 + 3600 + u64::from(n));
            assert!(matches!(run.errors[..], [(v, Error::Busy { .. })] if v == id), "{:?}", run.errors);
            let r = &run.schedules[0];
            assert_eq!(
                (r.slot, r.status.last_result, r.status.consecutive_failures),
                (Some(t0 + 3600), Some(RunResult::Failed), n)
            );
            assert!(
                r.status.last_error.contains("busy") || r.status.last_error.contains("administrative"),
                "{}",
                r.status.last_error
            );
            assert_eq!(r.failing, n >= FAILING_AFTER);
            assert_eq!(r.status.last_slot, None, "a failed slot is not handled");
        }
        drop(busy);
        // The count is durable.
        crate::testing::abandon(store);
        let store = Store::open_in(Arc::new(disk.crash(LossMode::DropAll, 1)), opts()).unwrap();
        let info = &store.volume(id).unwrap().schedules[0];
        assert!(info.is_failing());
        assert_eq!(info.status.consecutive_failures, FAILING_AFTER);
        // The next pass succeeds, for the slot that was missed, and clears it.
        let run = store.run_policies(t0 + 3600 + 60);
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        let r = &run.schedules[0];
        assert_eq!((r.slot, r.status.consecutive_failures, r.failing), (Some(t0 + 3600), 0, false));
        assert!(r.status.last_error.is_empty());
        assert!(matches!(r.status.last_result, Some(RunResult::Created(_))));
    }
}
