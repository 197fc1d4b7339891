//! `cowvol policy ...`: interval policies (set, show, clear), calendar
//! schedules (add, list, remove), and the policy run that serves both.

use super::args::{PolicyCmd, ScheduleArgs};
use super::error::{out_err, CliError, CliResult, LibContext};
use super::fmt::{self, Align, Table};
use super::json::{PolicyJson, SnapshotJson};
use super::{close, now_secs, resolve_volume, Ctx};
use cowvol::{
    Every, RunResult, Schedule, ScheduleInfo, ScheduleRunReport, SnapshotKind, SnapshotPolicy, SnapshotQuery,
    SnapshotStatus, Store, VolumeInfo, Weekday,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// Runs a policy subcommand.
pub fn run(ctx: &Ctx, cmd: PolicyCmd) -> CliResult {
    match cmd {
        PolicyCmd::Set { volume, interval, keep_last, keep_for } => {
            let p = SnapshotPolicy { interval_secs: interval, keep_last, keep_for_secs: keep_for };
            set(ctx, &volume, Some(p))
        }
        PolicyCmd::Show { volume } => show(ctx, volume.as_deref()),
        PolicyCmd::Clear { volume } => set(ctx, &volume, None),
        PolicyCmd::Add(args) => add(ctx, args),
        PolicyCmd::List { volume } => list(ctx, volume.as_deref()),
        PolicyCmd::Remove { volume, name } => remove(ctx, &volume, &name),
        PolicyCmd::Run { now } => run_now(ctx, now),
    }
}

/// A calendar schedule and where it stands.
#[derive(Serialize)]
struct ScheduleJson {
    volume_id: String,
    volume_name: String,
    name: String,
    /// `hourly`, `daily`, `weekly` or `monthly`.
    kind: &'static str,
    /// `daily at 02:00` and the like.
    every: String,
    /// Minute of the hour (every kind).
    minute: u8,
    /// Hour of the day; null for hourly.
    hour: Option<u8>,
    /// `monday` to `sunday` for weekly, else null.
    weekday: Option<String>,
    /// 1 to 31 for monthly, else null.
    day_of_month: Option<u8>,
    time_zone: String,
    keep_last: Option<u32>,
    keep_for_secs: Option<u64>,
    labels: BTreeMap<String, String>,
    skip_unchanged: bool,
    added_at: u64,
    /// The next slot (seconds since the Unix epoch): a run at or after it takes the snapshot.
    next_due_at: Option<u64>,
    last_slot: Option<u64>,
    last_run_at: Option<u64>,
    /// `created`, `skipped_unchanged`, `failed`, or null before the first run.
    last_result: Option<&'static str>,
    /// The snapshot the last run created (`snap-N`), else null.
    last_snapshot_id: Option<String>,
    /// Empty unless the last run failed.
    last_error: String,
    consecutive_failures: u32,
    /// True once it failed cowvol::FAILING_AFTER (3) times in a row: time to alert.
    failing: bool,
}

impl ScheduleJson {
    fn new(v: &VolumeInfo, s: &ScheduleInfo) -> ScheduleJson {
        let sc = &s.schedule;
        let (hour, weekday, day_of_month) = match sc.every {
            Every::Hourly { .. } => (None, None, None),
            Every::Daily { at } => (Some(at.hour), None, None),
            Every::Weekly { on, at } => (Some(at.hour), Some(on.to_string()), None),
            Every::Monthly { day, at } => (Some(at.hour), None, Some(day)),
        };
        let minute = match sc.every {
            Every::Hourly { minute } => minute,
            Every::Daily { at } | Every::Weekly { at, .. } | Every::Monthly { at, .. } => at.minute,
        };
        let st = &s.status;
        ScheduleJson {
            volume_id: v.id.to_string(),
            volume_name: v.name.clone(),
            name: sc.name.clone(),
            kind: sc.every.kind(),
            every: sc.every.to_string(),
            minute,
            hour,
            weekday,
            day_of_month,
            time_zone: sc.time_zone.clone(),
            keep_last: sc.keep_last,
            keep_for_secs: sc.keep_for_secs,
            labels: sc.labels.clone(),
            skip_unchanged: sc.skip_unchanged,
            added_at: s.added_at,
            next_due_at: s.next_due(),
            last_slot: st.last_slot,
            last_run_at: st.last_run_at,
            last_result: st.last_result.map(result_word),
            last_snapshot_id: match st.last_result {
                Some(RunResult::Created(id)) => Some(id.to_string()),
                _ => None,
            },
            last_error: st.last_error.clone(),
            consecutive_failures: st.consecutive_failures,
            failing: s.is_failing(),
        }
    }

    fn all_of(v: &VolumeInfo) -> Vec<ScheduleJson> {
        v.schedules.iter().map(|s| ScheduleJson::new(v, s)).collect()
    }
}

fn result_word(r: RunResult) -> &'static str {
    match r {
        RunResult::Created(_) => "created",
        RunResult::SkippedUnchanged => "skipped_unchanged",
        RunResult::Failed => "failed",
    }
}

/// The schedule `policy add` asks for.
fn schedule_of(args: &ScheduleArgs) -> Result<Schedule, CliError> {
    let on = args.on.as_deref().unwrap_or_default();
    let every = match (args.hourly, args.daily, args.weekly, args.monthly) {
        (Some(minute), ..) => Every::Hourly { minute },
        (_, Some(at), ..) => Every::Daily { at },
        (_, _, Some(at), _) => {
            Every::Weekly { on: on.parse::<Weekday>().map_err(|e| CliError::usage(e.to_string()))?, at }
        }
        (_, _, _, Some(at)) => {
            let day = on.parse::<u8>().ok().filter(|d| (1..=31).contains(d));
            Every::Monthly {
                day: day.ok_or_else(|| CliError::usage(format!("--on {on:?} is not a day of the month (1 to 31)")))?,
                at,
            }
        }
        _ => return Err(CliError::usage("give one of --hourly, --daily, --weekly or --monthly")),
    };
    Ok(Schedule {
        name: args.name.clone().unwrap_or_else(|| every.kind().to_string()),
        every,
        time_zone: args.tz.clone(),
        keep_last: args.keep,
        keep_for_secs: args.keep_for,
        labels: args.labels.iter().cloned().collect(),
        skip_unchanged: !args.take_unchanged,
    })
}

fn add(ctx: &Ctx, args: ScheduleArgs) -> CliResult {
    let schedule = schedule_of(&args)?;
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, &args.volume)?;
    let what = format!("adding schedule {:?} to volume {:?} ({})", schedule.name, v.name, v.id);
    let info = store.add_schedule(v.id, schedule, args.now.unwrap_or_else(now_secs)).ctx(what)?;
    let after = store.volume(v.id).ctx("reading the volume back")?;
    let j = ScheduleJson::new(&after, &info);
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            schedule: ScheduleJson,
        }
        ctx.print_json(&Out { schedule: j })?;
    } else {
        ctx.say(format_args!(
            "volume {} ({}): schedule {:?}, {} ({}), {}; first run {}",
            v.name,
            v.id,
            j.name,
            j.every,
            j.time_zone,
            retention(j.keep_last, j.keep_for_secs),
            j.next_due_at.map_or("never".into(), fmt::timestamp)
        ))?;
    }
    close(store)
}

fn remove(ctx: &Ctx, volume: &str, name: &str) -> CliResult {
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    let what = format!("removing schedule {name:?} of volume {:?} ({})", v.name, v.id);
    let d = store.remove_schedule(v.id, name).ctx(what)?;
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            existed: bool,
        }
        ctx.print_json(&Out { existed: d.existed })?;
    } else if d.existed {
        ctx.say(format_args!("removed schedule {name} of volume {} ({}); its snapshots stay", v.name, v.id))?;
    } else {
        ctx.say(format_args!("volume {} ({}) has no schedule {name}; nothing to do", v.name, v.id))?;
    }
    close(store)
}

/// `keep the last 7, keep for 30d`, or `keep all`.
fn retention(keep_last: Option<u32>, keep_for: Option<u64>) -> String {
    let mut parts = Vec::new();
    if let Some(n) = keep_last {
        parts.push(format!("keep the last {n}"));
    }
    if let Some(d) = keep_for {
        parts.push(format!("keep for {}", fmt::secs(d)));
    }
    if parts.is_empty() {
        parts.push("keep all".into());
    }
    parts.join(", ")
}

fn list(ctx: &Ctx, volume: Option<&str>) -> CliResult {
    let store = ctx.open_store()?;
    let vols = match volume {
        Some(v) => vec![resolve_volume(&store, v)?],
        None => store.list_volumes(),
    };
    let all: Vec<ScheduleJson> = vols.iter().flat_map(ScheduleJson::all_of).collect();
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            schedules: Vec<ScheduleJson>,
        }
        ctx.print_json(&Out { schedules: all })?;
    } else {
        schedule_table(&all).print(&mut ctx.out(), "no schedule").map_err(out_err)?;
    }
    close(store)
}

/// One row per schedule: what it does, its last run and its next slot.
fn schedule_table<'a>(all: impl IntoIterator<Item = &'a ScheduleJson>) -> Table {
    let mut t = Table::new(&[
        ("VOLUME", Align::Left),
        ("SCHEDULE", Align::Left),
        ("WHEN", Align::Left),
        ("ZONE", Align::Left),
        ("RETENTION", Align::Left),
        ("LAST RUN", Align::Left),
        ("RESULT", Align::Left),
        ("FAILURES", Align::Right),
        ("NEXT DUE", Align::Left),
    ]);
    for j in all {
        let result = match (j.last_result, j.failing) {
            (None, _) => "-".to_string(),
            (Some("failed"), true) => format!("FAILING: {}", j.last_error),
            (Some("failed"), false) => format!("failed: {}", j.last_error),
            (Some("created"), _) => format!("created {}", j.last_snapshot_id.as_deref().unwrap_or("-")),
            (Some(other), _) => other.replace('_', " "),
        };
        t.row(vec![
            format!("{} ({})", j.volume_name, j.volume_id),
            j.name.clone(),
            j.every.clone(),
            j.time_zone.clone(),
            retention(j.keep_last, j.keep_for_secs),
            j.last_run_at.map_or("-".into(), fmt::timestamp),
            result,
            j.consecutive_failures.to_string(),
            j.next_due_at.map_or("-".into(), fmt::timestamp),
        ]);
    }
    t
}

/// One volume's policy and where its automatic snapshots stand.
#[derive(Serialize)]
struct VolumePolicyJson {
    volume_id: String,
    volume_name: String,
    policy: Option<PolicyJson>,
    /// Ready automatic snapshots of the volume.
    auto_snapshots: usize,
    /// When the newest of them was taken.
    newest_auto_at: Option<u64>,
    /// When the next one is due; null without a policy, or when none was taken yet (the next run takes one).
    next_due_at: Option<u64>,
    /// The volume's calendar schedules.
    schedules: Vec<ScheduleJson>,
}

impl VolumePolicyJson {
    fn of(store: &Store, v: &VolumeInfo) -> VolumePolicyJson {
        let autos = store.search_snapshots(&SnapshotQuery {
            volume: Some(v.id),
            kind: Some(SnapshotKind::Auto),
            status: Some(SnapshotStatus::Ready),
            newest_first: true,
            limit: Some(1),
            ..Default::default()
        });
        let newest = autos.snapshots.first().map(|s| s.created_at);
        VolumePolicyJson {
            volume_id: v.id.to_string(),
            volume_name: v.name.clone(),
            policy: v.policy.map(PolicyJson::new),
            auto_snapshots: autos.total,
            newest_auto_at: newest,
            next_due_at: v.policy.and_then(|p| newest.map(|t| t.saturating_add(p.interval_secs))),
            schedules: ScheduleJson::all_of(v),
        }
    }
}

/// `every 1h, keep last 24, keep 7d`, or `none`.
fn describe(p: Option<&PolicyJson>) -> String {
    let Some(p) = p else { return "none".into() };
    let mut s = format!("every {}", fmt::secs(p.interval_secs));
    if let Some(n) = p.keep_last {
        s.push_str(&format!(", keep the last {n}"));
    }
    if let Some(d) = p.keep_for_secs {
        s.push_str(&format!(", keep for {}", fmt::secs(d)));
    }
    if p.keep_last.is_none() && p.keep_for_secs.is_none() {
        s.push_str(", keep all");
    }
    s
}

/// The one-line description of a volume's policy, for `volume info`.
pub fn describe_policy(p: Option<SnapshotPolicy>) -> String {
    describe(p.map(PolicyJson::new).as_ref())
}

fn set(ctx: &Ctx, volume: &str, policy: Option<SnapshotPolicy>) -> CliResult {
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    let what = match policy {
        Some(_) => format!("setting the snapshot policy of volume {:?} ({})", v.name, v.id),
        None => format!("clearing the snapshot policy of volume {:?} ({})", v.name, v.id),
    };
    let after = store.set_policy(v.id, policy).ctx(what)?;
    let j = VolumePolicyJson::of(&store, &after);
    if ctx.json {
        ctx.print_json(&j)?;
    } else if policy.is_some() {
        ctx.say(format_args!("volume {} ({}): {}", v.name, v.id, describe(j.policy.as_ref())))?;
    } else if v.policy.is_some() {
        ctx.say(format_args!(
            "cleared the snapshot policy of volume {} ({}); its automatic snapshots stay",
            v.name, v.id
        ))?;
    } else {
        ctx.say(format_args!("volume {} ({}) has no snapshot policy; nothing to do", v.name, v.id))?;
    }
    close(store)
}

fn show(ctx: &Ctx, volume: Option<&str>) -> CliResult {
    let store = ctx.open_store()?;
    let vols = match volume {
        Some(v) => vec![resolve_volume(&store, v)?],
        None => store.list_volumes().into_iter().filter(|v| v.policy.is_some() || !v.schedules.is_empty()).collect(),
    };
    let all: Vec<VolumePolicyJson> = vols.iter().map(|v| VolumePolicyJson::of(&store, v)).collect();
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            policies: Vec<VolumePolicyJson>,
        }
        ctx.print_json(&Out { policies: all })?;
    } else {
        let mut t = Table::new(&[
            ("VOLUME", Align::Left),
            ("INTERVAL", Align::Right),
            ("KEEP LAST", Align::Right),
            ("KEEP FOR", Align::Right),
            ("AUTO", Align::Right),
            ("NEWEST AUTO", Align::Left),
            ("NEXT DUE", Align::Left),
        ]);
        let opt = |x: Option<String>| x.unwrap_or_else(|| "-".into());
        for j in &all {
            let p = j.policy.as_ref();
            let next = match (p, j.next_due_at) {
                (None, _) => "-".into(),
                (Some(_), None) => "next run".into(),
                (Some(_), Some(t)) => fmt::timestamp(t),
            };
            t.row(vec![
                format!("{} ({})", j.volume_name, j.volume_id),
                opt(p.map(|p| fmt::secs(p.interval_secs))),
                opt(p.and_then(|p| p.keep_last).map(|n| n.to_string())),
                opt(p.and_then(|p| p.keep_for_secs).map(fmt::secs)),
                j.auto_snapshots.to_string(),
                opt(j.newest_auto_at.map(fmt::timestamp)),
                next,
            ]);
        }
        let mut w = ctx.out();
        t.print(&mut w, "no volume has a snapshot policy").map_err(out_err)?;
        let schedules: Vec<&ScheduleJson> = all.iter().flat_map(|j| &j.schedules).collect();
        if !schedules.is_empty() {
            writeln!(w, "\nschedules:").map_err(out_err)?;
            schedule_table(schedules).print(&mut w, "").map_err(out_err)?;
        }
    }
    close(store)
}

/// What one due schedule did in a run.
#[derive(Serialize)]
struct ScheduleRunJson {
    volume_id: String,
    volume_name: String,
    schedule: String,
    /// The slot that was due (seconds since the Unix epoch).
    slot: Option<u64>,
    /// `created`, `skipped_unchanged` or `failed`.
    result: Option<&'static str>,
    snapshot_id: Option<String>,
    error: String,
    consecutive_failures: u32,
    failing: bool,
}

impl ScheduleRunJson {
    fn new(store: &Store, r: &ScheduleRunReport) -> ScheduleRunJson {
        ScheduleRunJson {
            volume_id: r.volume.to_string(),
            volume_name: store.volume(r.volume).map(|v| v.name).unwrap_or_default(),
            schedule: r.schedule.clone(),
            slot: r.slot,
            result: r.status.last_result.map(result_word),
            snapshot_id: match r.status.last_result {
                Some(RunResult::Created(id)) => Some(id.to_string()),
                _ => None,
            },
            error: r.status.last_error.clone(),
            consecutive_failures: r.status.consecutive_failures,
            failing: r.failing,
        }
    }
}

fn run_now(ctx: &Ctx, now: Option<u64>) -> CliResult {
    let store = ctx.open_store()?;
    let now = now.unwrap_or_else(now_secs);
    let run = store.run_policies(now);
    let name_of = |id| store.volume(id).map(|v| v.name).unwrap_or_default();
    #[derive(Serialize)]
    struct ErrorJson {
        volume_id: String,
        volume_name: String,
        message: String,
    }
    #[derive(Serialize)]
    struct Out {
        now: u64,
        created: Vec<SnapshotJson>,
        pruned: Vec<SnapshotJson>,
        expired: Vec<SnapshotJson>,
        schedules: Vec<ScheduleRunJson>,
        errors: Vec<ErrorJson>,
    }
    let snaps = |list: &[cowvol::SnapshotInfo]| list.iter().map(|s| SnapshotJson::of(&store, s)).collect();
    let out = Out {
        now,
        created: snaps(&run.created),
        pruned: snaps(&run.pruned),
        expired: snaps(&run.expired),
        schedules: run.schedules.iter().map(|r| ScheduleRunJson::new(&store, r)).collect(),
        errors: run
            .errors
            .iter()
            .map(|(v, e)| ErrorJson { volume_id: v.to_string(), volume_name: name_of(*v), message: e.to_string() })
            .collect(),
    };
    if ctx.json {
        ctx.print_json(&out)?;
    } else if !ctx.quiet {
        print_run(&mut ctx.out(), &out.created, &out.pruned, &out.expired, &out.schedules, now, out.errors.len())?;
    }
    close(store)?;
    let failed = out.errors.len();
    match run.errors.into_iter().next() {
        None => Ok(()),
        Some((vol, e)) => {
            let first = CliError::from_lib(format_args!("{vol}"), e);
            Err(CliError {
                message: format!("policy run: {failed} volume(s) failed; first: {}", first.message),
                ..first
            })
        }
    }
}

/// The human report of a run: one row per snapshot created, pruned or
/// expired, the schedules that skipped or failed, and a summary line.
fn print_run(
    w: &mut dyn Write,
    created: &[SnapshotJson],
    pruned: &[SnapshotJson],
    expired: &[SnapshotJson],
    schedules: &[ScheduleRunJson],
    now: u64,
    failed: usize,
) -> CliResult {
    let mut t = Table::new(&[
        ("ACTION", Align::Left),
        ("ID", Align::Left),
        ("VOLUME", Align::Left),
        ("NAME", Align::Left),
        ("CREATED", Align::Left),
    ]);
    let rows = created
        .iter()
        .map(|s| ("created", s))
        .chain(pruned.iter().map(|s| ("pruned", s)))
        .chain(expired.iter().map(|s| ("expired", s)));
    for (action, s) in rows {
        let vol = format!("{} ({})", s.volume_name.as_deref().unwrap_or(&s.recorded_volume_name), s.volume_id);
        t.row(vec![action.into(), s.id.clone(), vol, s.name.clone(), fmt::timestamp(s.created_at)]);
    }
    t.print(w, "no snapshot was due and none expired").map_err(out_err)?;
    for r in schedules.iter().filter(|r| r.result != Some("created")) {
        let what = match r.result {
            Some("skipped_unchanged") => "skipped: the volume has not changed since its last snapshot".to_string(),
            _ if r.failing => format!("FAILING ({} times in a row): {}", r.consecutive_failures, r.error),
            _ => format!("failed ({} in a row): {}", r.consecutive_failures, r.error),
        };
        writeln!(w, "schedule {} of {} ({}): {what}", r.schedule, r.volume_name, r.volume_id).map_err(out_err)?;
    }
    writeln!(
        w,
        "\npolicy run as of {}: {} created, {} pruned, {} failed, {} expired",
        fmt::timestamp(now),
        created.len(),
        pruned.len(),
        failed,
        expired.len()
    )
    .map_err(out_err)?;
    Ok(())
}
