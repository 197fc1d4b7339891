//! Calendar snapshot schedules as the catalog stores them: what a schedule
//! asks for (kind, time, zone, retention, labels) and where it stands (the
//! last slot it handled, its last result, its run of failures).
//!
//! The time arithmetic lives in `crate::calendar`; this module only
//! describes, checks and encodes.

use super::{decode_labels, encode_labels, limits, SnapshotId};
use crate::error::{Error, Result};
use crate::format::{Dec, Enc};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Most schedules one volume may have. It bounds the volume's catalog
/// record, which travels whole in one WAL record.
pub const MAX_SCHEDULES: usize = 16;

/// Consecutive failed runs after which a schedule reports itself as
/// failing ([`ScheduleInfo::is_failing`]), so that a platform can alert.
pub const FAILING_AFTER: u32 = 3;

/// Label keys starting with this are the engine's: schedules may not set
/// them on what they create.
pub const RESERVED_LABEL_PREFIX: &str = "cowvol.";

/// Label that a schedule's snapshots carry, naming the schedule.
pub const SCHEDULE_LABEL: &str = "cowvol.schedule";

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[expect(missing_docs, reason = "the day names say it all")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

const WEEKDAYS: [(Weekday, &str); 7] = [
    (Weekday::Monday, "monday"),
    (Weekday::Tuesday, "tuesday"),
    (Weekday::Wednesday, "wednesday"),
    (Weekday::Thursday, "thursday"),
    (Weekday::Friday, "friday"),
    (Weekday::Saturday, "saturday"),
    (Weekday::Sunday, "sunday"),
];

impl Weekday {
    /// 1 for Monday to 7 for Sunday (ISO 8601), as stored.
    pub fn number(self) -> u8 {
        WEEKDAYS.iter().position(|(d, _)| *d == self).map_or(1, |i| i as u8 + 1)
    }

    /// The day numbered `n` (1 for Monday to 7 for Sunday).
    pub fn from_number(n: u8) -> Option<Weekday> {
        WEEKDAYS.get(usize::from(n).checked_sub(1)?).map(|(d, _)| *d)
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = WEEKDAYS.iter().find(|(d, _)| d == self).map_or("?", |(_, n)| n);
        f.write_str(name)
    }
}

impl FromStr for Weekday {
    type Err = Error;
    /// A day's English name or its first three letters, in any case.
    fn from_str(s: &str) -> Result<Weekday> {
        let lower = s.to_ascii_lowercase();
        WEEKDAYS
            .iter()
            .find(|(_, name)| *name == lower || (lower.len() == 3 && name.starts_with(&lower)))
            .map(|(d, _)| *d)
            .ok_or_else(|| Error::invalid(format!("{s:?} is not a day of the week (monday to sunday, or mon to sun)")))
    }
}

/// A wall-clock time of day, to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TimeOfDay {
    /// 0 to 23.
    pub hour: u8,
    /// 0 to 59.
    pub minute: u8,
}

impl TimeOfDay {
    /// `hour:minute`; checked when the schedule is added.
    pub fn new(hour: u8, minute: u8) -> TimeOfDay {
        TimeOfDay { hour, minute }
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl FromStr for TimeOfDay {
    type Err = Error;
    /// `HH:MM` on a 24-hour clock.
    fn from_str(s: &str) -> Result<TimeOfDay> {
        let bad = || Error::invalid(format!("{s:?} is not a time of day (HH:MM, 00:00 to 23:59)"));
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let t = TimeOfDay { hour: h.parse().map_err(|_| bad())?, minute: m.parse().map_err(|_| bad())? };
        if t.hour > 23 || t.minute > 59 || m.len() != 2 {
            return Err(bad());
        }
        Ok(t)
    }
}

/// When a schedule runs, on the wall clock of its time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Every {
    /// Every hour at this minute (0 to 59).
    Hourly {
        /// The minute of the hour.
        minute: u8,
    },
    /// Every day at this time.
    Daily {
        /// The time of day.
        at: TimeOfDay,
    },
    /// Every week on this day at this time.
    Weekly {
        /// The day of the week.
        on: Weekday,
        /// The time of day.
        at: TimeOfDay,
    },
    /// Every month on this day (1 to 31) at this time. In a month shorter
    /// than `day`, on its last day.
    Monthly {
        /// The day of the month.
        day: u8,
        /// The time of day.
        at: TimeOfDay,
    },
}

impl Every {
    /// `hourly`, `daily`, `weekly` or `monthly`.
    pub fn kind(&self) -> &'static str {
        match self {
            Every::Hourly { .. } => "hourly",
            Every::Daily { .. } => "daily",
            Every::Weekly { .. } => "weekly",
            Every::Monthly { .. } => "monthly",
        }
    }

    fn check(&self) -> Result<()> {
        let at = match *self {
            Every::Hourly { minute } => TimeOfDay { hour: 0, minute },
            Every::Daily { at } | Every::Weekly { at, .. } => at,
            Every::Monthly { day, at } => {
                if !(1..=31).contains(&day) {
                    return Err(Error::invalid(format!("day of the month {day} is not 1 to 31")));
                }
                at
            }
        };
        if at.hour > 23 || at.minute > 59 {
            return Err(Error::invalid(format!("{at} is not a time of day (00:00 to 23:59)")));
        }
        Ok(())
    }

    fn encode(&self, e: &mut Enc) {
        let (code, at, weekday, day) = match *self {
            Every::Hourly { minute } => (0, TimeOfDay { hour: 0, minute }, 0, 0),
            Every::Daily { at } => (1, at, 0, 0),
            Every::Weekly { on, at } => (2, at, on.number(), 0),
            Every::Monthly { day, at } => (3, at, 0, day),
        };
        e.bytes(&[code, at.hour, at.minute, weekday, day]);
    }

    fn decode(d: &mut Dec<'_>) -> Result<Every> {
        let b = d.bytes(5)?;
        let at = TimeOfDay { hour: b[1], minute: b[2] };
        let every = match b[0] {
            0 => Every::Hourly { minute: at.minute },
            1 => Every::Daily { at },
            2 => Every::Weekly { on: Weekday::from_number(b[3]).ok_or_else(|| d.bad("bad weekday"))?, at },
            3 => Every::Monthly { day: b[4], at },
            k => return Err(d.bad(format!("unknown schedule kind {k}"))),
        };
        every.check().map_err(|e| d.bad(e.to_string()))?;
        Ok(every)
    }
}

impl fmt::Display for Every {
    /// `hourly at :15`, `daily at 02:00`, `weekly on sunday at 03:30`,
    /// `monthly on day 1 at 00:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Every::Hourly { minute } => write!(f, "hourly at :{minute:02}"),
            Every::Daily { at } => write!(f, "daily at {at}"),
            Every::Weekly { on, at } => write!(f, "weekly on {on} at {at}"),
            Every::Monthly { day, at } => write!(f, "monthly on day {day} at {at}"),
        }
    }
}

/// A calendar schedule: what [`crate::Store::add_schedule`] is given.
///
/// Retention counts only the snapshots this schedule took, and prunes one
/// only when every rule that is set lets it go: it is not among the newest
/// `keep_last`, and it is older than `keep_for_secs`. With neither set,
/// the schedule keeps everything it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Unique among the volume's schedules; 1 to
    /// [`limits::MAX_SCHEDULE_NAME_BYTES`] (63) bytes, the characters of a
    /// snapshot name. Its snapshots are named `NAME-YYYYMMDD-HHMM` in
    /// the schedule's zone.
    pub name: String,
    /// When it runs.
    pub every: Every,
    /// The IANA time zone its times are in (`Europe/Berlin`, `UTC`).
    pub time_zone: String,
    /// Keep at least the newest N of its snapshots.
    pub keep_last: Option<u32>,
    /// Keep its snapshots younger than this many seconds.
    pub keep_for_secs: Option<u64>,
    /// Labels every snapshot it takes carries, besides [`SCHEDULE_LABEL`]
    /// and [`crate::AUTO_LABEL`]. Keys may not start with
    /// [`RESERVED_LABEL_PREFIX`].
    pub labels: BTreeMap<String, String>,
    /// When set (the default from [`Schedule::new`]), a run whose volume
    /// has not changed since this schedule's newest snapshot takes none.
    pub skip_unchanged: bool,
}

impl Schedule {
    /// A schedule named `name` running `every` in `time_zone`, keeping
    /// everything, skipping unchanged volumes.
    pub fn new(name: impl Into<String>, every: Every, time_zone: impl Into<String>) -> Schedule {
        Schedule {
            name: name.into(),
            every,
            time_zone: time_zone.into(),
            keep_last: None,
            keep_for_secs: None,
            labels: BTreeMap::new(),
            skip_unchanged: true,
        }
    }

    /// Checks every field but the time zone (which `crate::calendar` checks).
    pub(crate) fn check(&self) -> Result<()> {
        limits::schedule_name(&self.name)?;
        self.every.check()?;
        if self.keep_last == Some(0) || self.keep_for_secs == Some(0) {
            return Err(Error::invalid("a retention rule must keep at least 1 snapshot or 1 second"));
        }
        // Two labels are the engine's; the rest must fit a snapshot.
        if self.labels.len() > limits::MAX_LABELS - 2 {
            return Err(Error::invalid(format!(
                "schedule labels: {} given; at most {} are allowed",
                self.labels.len(),
                limits::MAX_LABELS - 2
            )));
        }
        if let Some(k) = self.labels.keys().find(|k| k.starts_with(RESERVED_LABEL_PREFIX)) {
            return Err(Error::invalid(format!(
                "schedule label {k:?}: keys starting with {RESERVED_LABEL_PREFIX:?} are reserved"
            )));
        }
        limits::described("schedule", &self.name, "", "", &self.labels)
    }
}

/// What a schedule's last run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunResult {
    /// It took this snapshot.
    Created(SnapshotId),
    /// The volume had not changed since the schedule's newest snapshot:
    /// none was taken.
    SkippedUnchanged,
    /// It could not take its snapshot; [`ScheduleStatus::last_error`] says why.
    Failed,
}

impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunResult::Created(id) => write!(f, "created {id}"),
            RunResult::SkippedUnchanged => f.write_str("skipped (unchanged)"),
            RunResult::Failed => f.write_str("failed"),
        }
    }
}

/// Where a schedule stands, updated durably by every run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScheduleStatus {
    /// The slot (a due time, seconds since the Unix epoch) last handled,
    /// by a snapshot or a skip. Slots up to it are never run again.
    pub last_slot: Option<u64>,
    /// When it last ran (the `now` of that policy pass).
    pub last_run_at: Option<u64>,
    /// What that run did.
    pub last_result: Option<RunResult>,
    /// The error of the last failed run; empty once a run succeeds.
    pub last_error: String,
    /// Failed runs since the last one that succeeded.
    pub consecutive_failures: u32,
}

/// A schedule of a volume and where it stands, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleInfo {
    /// What it asks for.
    pub schedule: Schedule,
    /// When it was added: its first slot is the first one after this.
    pub added_at: u64,
    /// Where it stands.
    pub status: ScheduleStatus,
}

impl ScheduleInfo {
    /// Whether it failed [`FAILING_AFTER`] times or more in a row: the
    /// signal for a platform to alert.
    pub fn is_failing(&self) -> bool {
        self.status.consecutive_failures >= FAILING_AFTER
    }

    /// The instant after which its next slot is looked for.
    pub(crate) fn handled_up_to(&self) -> u64 {
        self.status.last_slot.unwrap_or(self.added_at)
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        let s = &self.schedule;
        e.str(&s.name);
        s.every.encode(e);
        e.str(&s.time_zone);
        e.u8(u8::from(s.keep_last.is_some())
            | u8::from(s.keep_for_secs.is_some()) << 1
            | u8::from(s.skip_unchanged) << 2);
        e.u32(s.keep_last.unwrap_or(0));
        e.u64(s.keep_for_secs.unwrap_or(0));
        encode_labels(&s.labels, e);
        e.u64(self.added_at);
        self.status.encode(e);
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<ScheduleInfo> {
        let name = d.str()?;
        let every = Every::decode(d)?;
        let time_zone = d.str()?;
        let flags = d.u8()?;
        if flags & !7 != 0 {
            return Err(d.bad(format!("bad schedule flags {flags:#x}")));
        }
        let keep_last = d.u32()?;
        let keep_for = d.u64()?;
        let labels = decode_labels(d)?;
        let schedule = Schedule {
            name,
            every,
            time_zone,
            keep_last: (flags & 1 != 0).then_some(keep_last),
            keep_for_secs: (flags & 2 != 0).then_some(keep_for),
            labels,
            skip_unchanged: flags & 4 != 0,
        };
        Ok(ScheduleInfo { schedule, added_at: d.u64()?, status: ScheduleStatus::decode(d)? })
    }
}

impl ScheduleStatus {
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u8(u8::from(self.last_slot.is_some()) | u8::from(self.last_run_at.is_some()) << 1);
        e.u64(self.last_slot.unwrap_or(0));
        e.u64(self.last_run_at.unwrap_or(0));
        let (code, snap) = match self.last_result {
            None => (0, 0),
            Some(RunResult::Created(id)) => (1, id.0),
            Some(RunResult::SkippedUnchanged) => (2, 0),
            Some(RunResult::Failed) => (3, 0),
        };
        e.u8(code);
        e.u64(snap);
        e.str(&self.last_error);
        e.u32(self.consecutive_failures);
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<ScheduleStatus> {
        let flags = d.u8()?;
        if flags & !3 != 0 {
            return Err(d.bad(format!("bad schedule status flags {flags:#x}")));
        }
        let (slot, run_at) = (d.u64()?, d.u64()?);
        let last_result = match (d.u8()?, d.u64()?) {
            (0, _) => None,
            (1, id) => Some(RunResult::Created(SnapshotId(id))),
            (2, _) => Some(RunResult::SkippedUnchanged),
            (3, _) => Some(RunResult::Failed),
            (c, _) => return Err(d.bad(format!("unknown schedule result {c}"))),
        };
        Ok(ScheduleStatus {
            last_slot: (flags & 1 != 0).then_some(slot),
            last_run_at: (flags & 2 != 0).then_some(run_at),
            last_result,
            last_error: d.str()?,
            consecutive_failures: d.u32()?,
        })
    }
}

/// A volume's schedules, which version 4 added after the owner.
pub(crate) fn encode_schedules(schedules: &[ScheduleInfo], e: &mut Enc) {
    e.u32(schedules.len() as u32);
    for s in schedules {
        s.encode(e);
    }
}

pub(crate) fn decode_schedules(d: &mut Dec<'_>) -> Result<Vec<ScheduleInfo>> {
    if d.version < 4 {
        return Ok(Vec::new());
    }
    let n = d.u32()? as usize;
    if n > MAX_SCHEDULES {
        return Err(d.bad(format!("{n} schedules on one volume")));
    }
    (0..n).map(|_| ScheduleInfo::decode(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_days_parse_and_refuse_nonsense() {
        assert_eq!("02:00".parse::<TimeOfDay>().unwrap(), TimeOfDay::new(2, 0));
        assert_eq!("23:59".parse::<TimeOfDay>().unwrap().to_string(), "23:59");
        for bad in ["24:00", "12:60", "7", "12:5", "a:00", ""] {
            assert!(bad.parse::<TimeOfDay>().is_err(), "{bad}");
        }
        assert_eq!("Sun".parse::<Weekday>().unwrap(), Weekday::Sunday);
        assert_eq!("monday".parse::<Weekday>().unwrap().number(), 1);
        assert!("mo".parse::<Weekday>().is_err());
        assert_eq!(Weekday::from_number(7), Some(Weekday::Sunday));
        assert_eq!(Weekday::from_number(0), None);
    }

    #[test]
    fn schedules_check_their_fields() {
        let ok = Schedule::new("daily", Every::Daily { at: TimeOfDay::new(2, 0) }, "UTC");
        assert!(ok.check().is_ok());
        let bad = [
            Schedule { name: String::new(), ..ok.clone() },
            Schedule { every: Every::Monthly { day: 0, at: TimeOfDay::new(0, 0) }, ..ok.clone() },
            Schedule { every: Every::Hourly { minute: 60 }, ..ok.clone() },
            Schedule { keep_last: Some(0), ..ok.clone() },
            Schedule { labels: [("cowvol.policy".into(), "x".into())].into(), ..ok.clone() },
        ];
        for s in bad {
            assert!(s.check().is_err(), "{s:?}");
        }
    }
}
