//! Due times of calendar schedules, on the wall clock of an IANA time zone.
//!
//! Zones come from the time zone database bundled into the build (jiff's
//! `tzdb-bundle-always`), never from the host's `/usr/share/zoneinfo`: a
//! schedule computes the same slots on every host, a host without `tzdata`
//! included, and a store moved between hosts keeps its schedules. The cost
//! is that zone rules change only with a new build of cowvol.
//!
//! The rules where the wall clock is not one-to-one with time:
//! - a daily, weekly or monthly time that a DST gap skips runs once, at the
//!   first instant after the gap (the transition itself);
//! - one that a DST overlap repeats runs once, at its first occurrence;
//! - an hourly schedule runs every time the wall clock shows its minute:
//!   never in a skipped hour, twice in a repeated one. With whole-hour
//!   shifts that is exactly once every real hour.

use crate::catalog::Every;
use crate::error::{Error, Result};
use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

/// Days searched for the next slot: a monthly schedule's slots are at most
/// 31 days apart, and a zone may skip a whole day.
const SEARCH_DAYS: i64 = 70;

/// The zone named `name` in the bundled database.
pub(crate) fn zone(name: &str) -> Result<TimeZone> {
    TimeZone::get(name).map_err(|_| {
        Error::invalid(format!("{name:?} is not an IANA time zone this build knows (for example Europe/Berlin or UTC)"))
    })
}

/// The first slot of `every` in `tz` strictly after `after` (seconds since
/// the Unix epoch), or `None` beyond the range of dates jiff handles.
pub(crate) fn next_slot(every: &Every, tz: &TimeZone, after: u64) -> Option<u64> {
    let after = i64::try_from(after).ok()?;
    let first_day = tz.to_datetime(Timestamp::from_second(after).ok()?).date().yesterday().ok()?;
    let mut best: Option<(i64, Date)> = None;
    let mut day = first_day;
    for _ in 0..SEARCH_DAYS {
        // A slot's instant can shift past midnight only through a gap of a
        // few hours, so nothing a day after the best one can beat it.
        if best.is_some_and(|(_, d)| day > d.tomorrow().unwrap_or(d)) {
            break;
        }
        for dt in wall_times(every, day) {
            for t in instants(tz, dt, matches!(every, Every::Hourly { .. })) {
                if t > after && best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, day));
                }
            }
        }
        day = day.tomorrow().ok()?;
    }
    best.and_then(|(t, _)| u64::try_from(t).ok())
}

/// The latest slot in `(after, now]`, if one is due: a host that was down
/// for several slots runs the last of them, once.
pub(crate) fn latest_due_slot(every: &Every, tz: &TimeZone, after: u64, now: u64) -> Option<u64> {
    // The latest slot up to `now` lies within the longest distance between
    // two slots of the kind, so the walk starts no earlier than that.
    let lookback: u64 = match every {
        // A zone may skip a whole day (Samoa at the end of 2011).
        Every::Hourly { .. } => 26 * 3600,
        Every::Daily { .. } => 3 * 86_400,
        Every::Weekly { .. } => 9 * 86_400,
        Every::Monthly { .. } => 63 * 86_400,
    };
    let mut cursor = after.max(now.saturating_sub(lookback));
    let mut due = None;
    while let Some(slot) = next_slot(every, tz, cursor).filter(|&s| s <= now) {
        due = Some(slot);
        cursor = slot;
    }
    due
}

/// `YYYYMMDD-HHMM` on the wall clock of `tz`, for naming snapshots.
pub(crate) fn local_stamp(tz: &TimeZone, secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(|t| tz.to_datetime(t).strftime("%Y%m%d-%H%M").to_string())
        .unwrap_or_else(|| crate::lifecycle::utc_stamp(secs))
}

/// The wall-clock times on `day` at which `every` runs.
fn wall_times(every: &Every, day: Date) -> Vec<DateTime> {
    let at = |hour: u8, minute: u8| day.at(hour as i8, minute as i8, 0, 0);
    match *every {
        Every::Hourly { minute } => (0..24).map(|h| at(h, minute)).collect(),
        Every::Daily { at: t } => vec![at(t.hour, t.minute)],
        Every::Weekly { on, at: t } if day.weekday().to_monday_one_offset() as u8 == on.number() => {
            vec![at(t.hour, t.minute)]
        }
        Every::Monthly { day: d, at: t } if day.day() == (d as i8).min(day.days_in_month()) => {
            vec![at(t.hour, t.minute)]
        }
        Every::Weekly { .. } | Every::Monthly { .. } => Vec::new(),
    }
}

/// The instants (seconds since the epoch) at which a schedule whose wall
/// time is `dt` runs, by the rules in the module comment.
fn instants(tz: &TimeZone, dt: DateTime, hourly: bool) -> Vec<i64> {
    let with = |o: jiff::tz::Offset| o.to_timestamp(dt).ok().map(|t| t.as_second());
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => with(offset).into_iter().collect(),
        AmbiguousOffset::Fold { before, after } => {
            let both: Vec<i64> = [with(before), with(after)].into_iter().flatten().collect();
            if hourly {
                both
            } else {
                both.into_iter().min().into_iter().collect()
            }
        }
        AmbiguousOffset::Gap { .. } if hourly => Vec::new(),
        AmbiguousOffset::Gap { before, after } => {
            // Both readings of the skipped time straddle the transition;
            // the first instant after the gap is the transition itself.
            let earlier = [with(before), with(after)].into_iter().flatten().min();
            let transition = earlier
                .and_then(|e| Timestamp::from_second(e).ok())
                .and_then(|e| tz.following(e).next())
                .map(|t| t.timestamp().as_second());
            transition.into_iter().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{TimeOfDay, Weekday};

    fn utc(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_second() as u64
    }

    #[test]
    fn unknown_zones_are_invalid_arguments() {
        assert!(zone("Europe/Berlin").is_ok());
        assert!(zone("Asia/Kolkata").is_ok());
        assert!(matches!(zone("Mars/Olympus_Mons"), Err(Error::InvalidArgument { .. })));
    }

    #[test]
    fn a_daily_time_skipped_by_a_gap_runs_at_the_transition() {
        let berlin = zone("Europe/Berlin").unwrap();
        let daily = Every::Daily { at: TimeOfDay::new(2, 30) };
        // 2027-03-28 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let slot = next_slot(&daily, &berlin, utc("2027-03-27T12:00:00Z")).unwrap();
        assert_eq!(slot, utc("2027-03-28T01:00:00Z"));
        assert_eq!(next_slot(&daily, &berlin, slot), Some(utc("2027-03-29T00:30:00Z")));
    }

    #[test]
    fn a_daily_time_repeated_by_an_overlap_runs_once() {
        let berlin = zone("Europe/Berlin").unwrap();
        let daily = Every::Daily { at: TimeOfDay::new(2, 30) };
        // 2027-10-31 03:00 CEST falls back to 02:00 CET: 02:30 happens twice.
        let slot = next_slot(&daily, &berlin, utc("2027-10-30T12:00:00Z")).unwrap();
        assert_eq!(slot, utc("2027-10-31T00:30:00Z"));
        assert_eq!(next_slot(&daily, &berlin, slot), Some(utc("2027-11-01T01:30:00Z")));
    }

    #[test]
    fn hourly_slots_are_an_hour_apart_across_both_transitions() {
        let berlin = zone("Europe/Berlin").unwrap();
        let hourly = Every::Hourly { minute: 15 };
        for start in ["2027-03-27T20:00:00Z", "2027-10-30T20:00:00Z"] {
            let mut t = next_slot(&hourly, &berlin, utc(start)).unwrap();
            for _ in 0..12 {
                let n = next_slot(&hourly, &berlin, t).unwrap();
                assert_eq!(n - t, 3600, "after {t}");
                t = n;
            }
        }
    }

    #[test]
    fn weekly_and_monthly_land_on_their_day() {
        let tz = zone("UTC").unwrap();
        let weekly = Every::Weekly { on: Weekday::Sunday, at: TimeOfDay::new(3, 30) };
        assert_eq!(next_slot(&weekly, &tz, utc("2027-01-01T00:00:00Z")), Some(utc("2027-01-03T03:30:00Z")));
        let monthly = Every::Monthly { day: 31, at: TimeOfDay::new(0, 0) };
        // February has no 31st: its last day stands in.
        assert_eq!(next_slot(&monthly, &tz, utc("2027-01-31T00:00:00Z")), Some(utc("2027-02-28T00:00:00Z")));
    }

    #[test]
    fn a_host_down_for_days_runs_only_the_latest_slot() {
        let tz = zone("UTC").unwrap();
        let daily = Every::Daily { at: TimeOfDay::new(2, 0) };
        let due = latest_due_slot(&daily, &tz, utc("2027-01-01T02:00:00Z"), utc("2027-01-04T12:00:00Z"));
        assert_eq!(due, Some(utc("2027-01-04T02:00:00Z")));
        assert_eq!(latest_due_slot(&daily, &tz, utc("2027-01-04T02:00:00Z"), utc("2027-01-04T12:00:00Z")), None);
    }
}
