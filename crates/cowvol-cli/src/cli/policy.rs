//! `cowvol policy ...`: set, show, clear and run automatic snapshot policies.

use super::args::PolicyCmd;
use super::error::{out_err, CliError, CliResult, LibContext};
use super::fmt::{self, Align, Table};
use super::json::{PolicyJson, SnapshotJson};
use super::{close, resolve_volume, Ctx};
use cowvol::{SnapshotKind, SnapshotPolicy, SnapshotQuery, SnapshotStatus, Store, VolumeInfo};
use serde::Serialize;
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
        PolicyCmd::Run { now } => run_now(ctx, now),
    }
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
        None => store.list_volumes().into_iter().filter(|v| v.policy.is_some()).collect(),
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
        t.print(&mut ctx.out(), "no volume has a snapshot policy").map_err(out_err)?;
    }
    close(store)
}

fn run_now(ctx: &Ctx, now: Option<u64>) -> CliResult {
    let store = ctx.open_store()?;
    let now = now.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    });
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
        errors: Vec<ErrorJson>,
    }
    let out = Out {
        now,
        created: run.created.iter().map(|s| SnapshotJson::of(&store, s)).collect(),
        pruned: run.pruned.iter().map(|s| SnapshotJson::of(&store, s)).collect(),
        errors: run
            .errors
            .iter()
            .map(|(v, e)| ErrorJson { volume_id: v.to_string(), volume_name: name_of(*v), message: e.to_string() })
            .collect(),
    };
    if ctx.json {
        ctx.print_json(&out)?;
    } else if !ctx.quiet {
        let mut w = ctx.out();
        let mut t = Table::new(&[
            ("ACTION", Align::Left),
            ("ID", Align::Left),
            ("VOLUME", Align::Left),
            ("NAME", Align::Left),
            ("CREATED", Align::Left),
        ]);
        let rows = out.created.iter().map(|s| ("created", s)).chain(out.pruned.iter().map(|s| ("pruned", s)));
        for (action, s) in rows {
            let vol = format!("{} ({})", s.volume_name.as_deref().unwrap_or(&s.recorded_volume_name), s.volume_id);
            t.row(vec![action.into(), s.id.clone(), vol, s.name.clone(), fmt::timestamp(s.created_at)]);
        }
        t.print(&mut w, "no snapshot was due and none expired").map_err(out_err)?;
        writeln!(
            w,
            "\npolicy run as of {}: {} created, {} pruned, {} failed",
            fmt::timestamp(now),
            out.created.len(),
            out.pruned.len(),
            out.errors.len()
        )
        .map_err(out_err)?;
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
