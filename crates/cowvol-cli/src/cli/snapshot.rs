//! `cowvol snapshot ...`: create, create-group, list, info, hold, release,
//! restore, delete (diff, send and receive live in `stream`).

use super::args::{SnapshotCmd, SnapshotFilter, SnapshotMeta};
use super::error::{code, out_err, CliError, CliResult, LibContext};
use super::fmt::{self, Align, Table};
use super::json::SnapshotJson;
use super::{close, find_snapshot, resolve_snapshot, resolve_volume, resolve_volume_id, Ctx};
use cowvol::{RestoreOptions, SnapshotInfo, SnapshotOptions, SnapshotQuery, Store, VolumeId};
use serde::Serialize;
use std::io::Write;
use std::time::Duration;

/// Runs a snapshot subcommand.
pub fn run(ctx: &Ctx, cmd: SnapshotCmd) -> CliResult {
    match cmd {
        SnapshotCmd::Create { volume, name, meta } => create(ctx, &volume, name, meta),
        SnapshotCmd::CreateGroup { name, volumes, meta } => create_group(ctx, name, &volumes, meta),
        SnapshotCmd::List(filter) => list(ctx, filter),
        SnapshotCmd::Info { volume, snapshot } => info(ctx, &volume, &snapshot),
        SnapshotCmd::Hold { volume, snapshot } => hold(ctx, &volume, &snapshot, true),
        SnapshotCmd::Release { volume, snapshot } => hold(ctx, &volume, &snapshot, false),
        SnapshotCmd::Restore { volume, snapshot, timeout, safety_snapshot } => {
            restore(ctx, &volume, &snapshot, timeout, safety_snapshot)
        }
        SnapshotCmd::Delete { volume, snapshot } => delete(ctx, &volume, &snapshot),
        SnapshotCmd::Diff { volume, from, to, to_volume } => {
            super::stream::diff(ctx, &volume, &from, &to, to_volume.as_deref())
        }
        SnapshotCmd::Send { volume, snapshot, from, output, resume_from_frame } => {
            super::stream::send(ctx, &volume, &snapshot, from.as_deref(), output.as_deref(), resume_from_frame)
        }
        SnapshotCmd::Receive { input, as_name, resume, pending, abort } => {
            super::stream::receive(ctx, input.as_deref(), as_name, resume, pending, abort.as_deref())
        }
    }
}

#[derive(Serialize)]
struct SnapshotOut {
    snapshot: SnapshotJson,
}

#[derive(Serialize)]
struct SnapshotsOut {
    snapshots: Vec<SnapshotJson>,
}

/// The snapshot table of one volume (no volume column).
pub fn table(snaps: &[SnapshotInfo]) -> Table {
    table_named(snaps, None)
}

fn table_named(snaps: &[SnapshotInfo], volume_label: Option<&dyn Fn(&SnapshotInfo) -> String>) -> Table {
    let mut cols = vec![("ID", Align::Left)];
    if volume_label.is_some() {
        cols.push(("VOLUME", Align::Left));
    }
    cols.extend([
        ("NAME", Align::Left),
        ("KIND", Align::Left),
        ("STATUS", Align::Left),
        ("BACKUP", Align::Left),
        ("HELD", Align::Left),
        ("OWNER", Align::Left),
        ("SIZE", Align::Right),
        ("CREATED", Align::Left),
        ("DESCRIPTION", Align::Left),
    ]);
    let mut t = Table::new(&cols);
    for s in snaps {
        let mut row = vec![s.id.to_string()];
        if let Some(label) = volume_label {
            row.push(label(s));
        }
        row.extend([
            s.name.clone(),
            s.kind.to_string(),
            s.status.to_string(),
            s.backup.as_ref().map_or("-".into(), |b| b.state.to_string()),
            yes_no(s.held).into(),
            fmt::dash(&s.owner),
            fmt::bytes(s.size_bytes),
            fmt::timestamp(s.created_at),
            s.description.clone(),
        ]);
        t.row(row);
    }
    t
}

/// `backed-up to URL as ID at TIME`, `backup-failed ...: REASON`, or `-`.
fn backup_line(b: Option<&cowvol::BackupRecord>) -> String {
    let Some(b) = b else { return "-".into() };
    let mut line = format!("{} to {}", b.state, b.target);
    if !b.backup_id.is_empty() {
        line += &format!(" as {}", b.backup_id);
    }
    line += &format!(" ({})", fmt::timestamp(b.at));
    if !b.reason.is_empty() {
        line += &format!(": {}", b.reason);
    }
    line
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `db (vol-1)`, or `db (vol-1, deleted)` once the volume is gone.
pub fn volume_label(store: &Store, s: &SnapshotInfo) -> String {
    match store.volume(s.volume_id) {
        Ok(v) => format!("{} ({})", v.name, v.id),
        Err(_) if s.volume_name.is_empty() => format!("{} (deleted)", s.volume_id),
        Err(_) => format!("{} ({}, deleted)", s.volume_name, s.volume_id),
    }
}

fn options(name: String, meta: SnapshotMeta) -> SnapshotOptions {
    SnapshotOptions {
        name,
        description: meta.description,
        owner: meta.owner,
        labels: meta.labels.into_iter().collect(),
        expires_at: meta.expires_in.map(|d| super::now_secs().saturating_add(d)),
        idempotency_key: meta.idempotency_key,
        ..Default::default()
    }
}

fn create(ctx: &Ctx, volume: &str, name: String, meta: SnapshotMeta) -> CliResult {
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    let what = format!("creating snapshot {name:?} of volume {:?}", v.name);
    let s = store.create_snapshot(v.id, options(name, meta)).ctx(what)?;
    if ctx.json {
        ctx.print_json(&SnapshotOut { snapshot: SnapshotJson::new(&s, Some(v.name.clone())) })?;
    } else {
        ctx.say(format_args!("created snapshot {} ({}) of volume {} ({})", s.name, s.id, v.name, v.id))?;
    }
    close(store)
}

fn create_group(ctx: &Ctx, name: String, volumes: &[String], meta: SnapshotMeta) -> CliResult {
    let store = ctx.open_store()?;
    let vols = volumes.iter().map(|v| resolve_volume(&store, v)).collect::<CliResult<Vec<_>>>()?;
    let ids: Vec<VolumeId> = vols.iter().map(|v| v.id).collect();
    let what = format!("creating group snapshot {name:?} of {} volume(s)", ids.len());
    let snaps = store.create_group_snapshot(&ids, options(name, meta)).ctx(what)?;
    if ctx.json {
        ctx.print_json(&SnapshotsOut { snapshots: snaps.iter().map(|s| SnapshotJson::of(&store, s)).collect() })?;
    } else {
        let each: Vec<String> = snaps.iter().map(|s| format!("{} of {}", s.id, volume_label(&store, s))).collect();
        let name = snaps.first().map(|s| s.name.as_str()).unwrap_or_default();
        ctx.say(format_args!(
            "created snapshot {name} of {} volumes at one instant: {}",
            snaps.len(),
            each.join(", ")
        ))?;
    }
    close(store)
}

fn list(ctx: &Ctx, f: SnapshotFilter) -> CliResult {
    let store = ctx.open_store()?;
    let mut q = SnapshotQuery {
        name_contains: f.search,
        kind: f.kind,
        status: f.status,
        backup: f.backup,
        owner: f.owner,
        labels: f.labels.into_iter().collect(),
        held: if f.held {
            Some(true)
        } else if f.not_held {
            Some(false)
        } else {
            None
        },
        newest_first: f.newest_first,
        offset: f.offset,
        limit: f.limit,
        ..Default::default()
    };
    if let Some(v) = &f.volume {
        let by_id = store.volume_by_name(v).map(|x| x.id).or_else(|| v.parse::<VolumeId>().ok());
        match by_id {
            Some(id) => q.volume = Some(id),
            // A deleted volume, by the name its snapshots recorded.
            None => q.volume_name = Some(v.clone()),
        }
        let any = SnapshotQuery {
            volume: q.volume,
            volume_name: q.volume_name.clone(),
            limit: Some(0),
            ..Default::default()
        };
        let live = q.volume.is_some_and(|id| store.volume(id).is_ok());
        if !live && store.search_snapshots(&any).total == 0 {
            return Err(CliError::not_found(format!(
                "volume {v:?} was not found (no live volume and no snapshots of it)"
            ))
            .hint("`cowvol volume list` shows the volumes"));
        }
    }
    let page = store.search_snapshots(&q);
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            snapshots: Vec<SnapshotJson>,
            total: usize,
            next_offset: Option<usize>,
        }
        ctx.print_json(&Out {
            snapshots: page.snapshots.iter().map(|s| SnapshotJson::of(&store, s)).collect(),
            total: page.total,
            next_offset: page.next_offset,
        })?;
    } else {
        let mut out = ctx.out();
        let label = |s: &SnapshotInfo| volume_label(&store, s);
        table_named(&page.snapshots, Some(&label)).print(&mut out, "no snapshots").map_err(out_err)?;
        let paged = q.offset > 0 || page.next_offset.is_some();
        if paged && !page.snapshots.is_empty() {
            let (from, to) = (q.offset + 1, q.offset + page.snapshots.len());
            let next = page.next_offset.map(|n| format!("; next page: --offset {n}")).unwrap_or_default();
            writeln!(out, "\n{from}-{to} of {} matching snapshots{next}", page.total).map_err(out_err)?;
        }
    }
    close(store)
}

fn info(ctx: &Ctx, volume: &str, snapshot: &str) -> CliResult {
    let store = ctx.open_store()?;
    let (vid, _) = resolve_volume_id(&store, volume)?;
    let s = resolve_snapshot(&store, vid, volume, snapshot)?;
    if ctx.json {
        ctx.print_json(&SnapshotOut { snapshot: SnapshotJson::of(&store, &s) })?;
    } else {
        fmt::key_values(
            &mut ctx.out(),
            &[
                ("id", s.id.to_string()),
                ("name", s.name.clone()),
                ("volume", volume_label(&store, &s)),
                ("kind", s.kind.to_string()),
                ("status", s.status.to_string()),
                ("held", yes_no(s.held).into()),
                ("backup", backup_line(s.backup.as_ref())),
                ("size", format!("{} ({} bytes)", fmt::bytes(s.size_bytes), s.size_bytes)),
                ("created", fmt::timestamp(s.created_at)),
                ("expires", s.expires_at.map_or("never".into(), fmt::timestamp)),
                ("schedule", fmt::dash(s.schedule.as_deref().unwrap_or_default())),
                ("idempotency key", fmt::dash(s.idempotency_key.as_deref().unwrap_or_default())),
                ("description", fmt::dash(&s.description)),
                ("owner", fmt::dash(&s.owner)),
                ("labels", fmt::labels(&s.labels)),
            ],
        )
        .map_err(out_err)?;
    }
    close(store)
}

fn hold(ctx: &Ctx, volume: &str, snapshot: &str, held: bool) -> CliResult {
    let store = ctx.open_store()?;
    let (vid, _) = resolve_volume_id(&store, volume)?;
    let s = resolve_snapshot(&store, vid, volume, snapshot)?;
    let label = format!("snapshot {} ({}) of {}", s.name, s.id, volume_label(&store, &s));
    let after = if held {
        store.hold_snapshot(vid, s.id).ctx(format_args!("holding {label}"))?
    } else {
        store.release_snapshot(vid, s.id).ctx(format_args!("releasing {label}"))?
    };
    if ctx.json {
        ctx.print_json(&SnapshotOut { snapshot: SnapshotJson::of(&store, &after) })?;
    } else if held {
        let was = if s.held { " (it already was)" } else { "" };
        ctx.say(format_args!("held {label}{was}; it cannot be deleted until released"))?;
    } else {
        let was = if s.held { "" } else { " (it was not held)" };
        ctx.say(format_args!("released {label}{was}"))?;
    }
    close(store)
}

fn restore(ctx: &Ctx, volume: &str, snapshot: &str, timeout: Option<f64>, safety: Option<String>) -> CliResult {
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    let s = resolve_snapshot(&store, v.id, volume, snapshot)?;
    let mut opts = RestoreOptions::default();
    if let Some(secs) = timeout {
        opts.timeout = Duration::from_secs_f64(secs);
    }
    opts.safety_snapshot = safety.map(|name| SnapshotOptions {
        description: format!("state of volume {} before it was restored to snapshot {}", v.name, s.name),
        ..SnapshotOptions::named(name)
    });
    let r = ctx
        .restore(&store, v.id, s.id, opts)
        .ctx(format_args!("restoring volume {:?} to snapshot {:?} ({})", v.name, s.name, s.id))?;
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume_id: String,
            snapshot_id: String,
            safety_snapshot: Option<SnapshotJson>,
        }
        ctx.print_json(&Out {
            volume_id: r.volume_id.to_string(),
            snapshot_id: r.snapshot_id.to_string(),
            safety_snapshot: r.safety_snapshot.as_ref().map(|x| SnapshotJson::new(x, Some(v.name.clone()))),
        })?;
    } else {
        let kept = match &r.safety_snapshot {
            Some(x) => format!("; the previous state is kept as snapshot {} ({})", x.name, x.id),
            None => String::new(),
        };
        ctx.say(format_args!("restored volume {} ({}) to snapshot {} ({}){kept}", v.name, v.id, s.name, s.id))?;
    }
    close(store)
}

fn delete(ctx: &Ctx, volume: &str, snapshot: &str) -> CliResult {
    let store = ctx.open_store()?;
    let (vid, _) = resolve_volume_id(&store, volume)?;
    let found = find_snapshot(&store, vid, snapshot);
    let existed = match &found {
        Some(s) => {
            let release = format!("`cowvol snapshot release {volume} {snapshot}` lifts the hold");
            store
                .delete_snapshot(vid, s.id)
                .ctx(format_args!("deleting snapshot {:?} ({}) of {vid}", s.name, s.id))
                .map_err(|e| if e.code == code::HELD { e.hint(release) } else { e })?
                .existed
        }
        None => false,
    };
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume_id: String,
            snapshot_id: Option<String>,
            existed: bool,
        }
        ctx.print_json(&Out {
            volume_id: vid.to_string(),
            snapshot_id: found.as_ref().map(|s| s.id.to_string()),
            existed,
        })?;
    } else {
        match (&found, existed) {
            (Some(s), true) => ctx.say(format_args!("deleted snapshot {} ({}) of {vid}", s.name, s.id))?,
            _ => ctx.say(format_args!("snapshot {snapshot:?} of {vid} is already gone; nothing to do"))?,
        }
    }
    close(store)
}
