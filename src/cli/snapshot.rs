//! `cowvol snapshot ...`: create, list, info, restore, delete.

use super::args::SnapshotCmd;
use super::error::{out_err, CliError, CliResult, LibContext};
use super::fmt::{self, Align, Table};
use super::json::SnapshotJson;
use super::{close, find_snapshot, resolve_snapshot, resolve_volume, resolve_volume_id, Ctx};
use cowvol::{RestoreOptions, SnapshotInfo, SnapshotOptions, Store};
use serde::Serialize;
use std::time::Duration;

/// Runs a snapshot subcommand.
pub fn run(ctx: &Ctx, cmd: SnapshotCmd) -> CliResult {
    match cmd {
        SnapshotCmd::Create { volume, name, description } => create(ctx, &volume, name, description),
        SnapshotCmd::List { volume, search } => list(ctx, volume.as_deref(), search.as_deref()),
        SnapshotCmd::Info { volume, snapshot } => info(ctx, &volume, &snapshot),
        SnapshotCmd::Restore { volume, snapshot, timeout } => restore(ctx, &volume, &snapshot, timeout),
        SnapshotCmd::Delete { volume, snapshot } => delete(ctx, &volume, &snapshot),
    }
}

#[derive(Serialize)]
struct SnapshotOut {
    snapshot: SnapshotJson,
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
        row.extend([s.name.clone(), fmt::bytes(s.size_bytes), fmt::timestamp(s.created_at), s.description.clone()]);
        t.row(row);
    }
    t
}

fn volume_label(store: &Store, s: &SnapshotInfo) -> String {
    match store.volume(s.volume_id) {
        Ok(v) => format!("{} ({})", v.name, v.id),
        Err(_) => format!("{} (deleted)", s.volume_id),
    }
}

fn create(ctx: &Ctx, volume: &str, name: String, description: String) -> CliResult {
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    let opts = SnapshotOptions { name: name.clone(), description, ..Default::default() };
    let s = store.create_snapshot(v.id, opts).ctx(format_args!("creating snapshot {name:?} of volume {:?}", v.name))?;
    if ctx.json {
        ctx.print_json(&SnapshotOut { snapshot: SnapshotJson::new(&s, Some(v.name.clone())) })?;
    } else {
        ctx.say(format_args!("created snapshot {} ({}) of volume {} ({})", s.name, s.id, v.name, v.id))?;
    }
    close(store)
}

fn list(ctx: &Ctx, volume: Option<&str>, search: Option<&str>) -> CliResult {
    let store = ctx.open_store()?;
    let mut snaps = match volume {
        Some(v) => {
            let (id, live) = resolve_volume_id(&store, v)?;
            let snaps = store.list_snapshots(id);
            if live.is_none() && snaps.is_empty() {
                return Err(CliError::not_found(format!(
                    "volume {v:?} was not found (no live volume and no snapshots of it)"
                ))
                .hint("`cowvol volume list` shows the volumes"));
            }
            snaps
        }
        None => store.all_snapshots(),
    };
    if let Some(q) = search {
        let q = q.to_lowercase();
        snaps.retain(|s| s.name.to_lowercase().contains(&q));
    }
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            snapshots: Vec<SnapshotJson>,
        }
        ctx.print_json(&Out { snapshots: snaps.iter().map(|s| SnapshotJson::of(&store, s)).collect() })?;
    } else {
        let label = |s: &SnapshotInfo| volume_label(&store, s);
        table_named(&snaps, Some(&label)).print(&mut ctx.out(), "no snapshots").map_err(out_err)?;
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
        let labels = if s.labels.is_empty() {
            "-".to_string()
        } else {
            s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        };
        let dash = |x: &str| if x.is_empty() { "-".to_string() } else { x.to_string() };
        fmt::key_values(
            &mut ctx.out(),
            &[
                ("id", s.id.to_string()),
                ("name", s.name.clone()),
                ("volume", volume_label(&store, &s)),
                ("size", format!("{} ({} bytes)", fmt::bytes(s.size_bytes), s.size_bytes)),
                ("created", fmt::timestamp(s.created_at)),
                ("description", dash(&s.description)),
                ("owner", dash(&s.owner)),
                ("labels", labels),
            ],
        )
        .map_err(out_err)?;
    }
    close(store)
}

fn restore(ctx: &Ctx, volume: &str, snapshot: &str, timeout: Option<f64>) -> CliResult {
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    let s = resolve_snapshot(&store, v.id, volume, snapshot)?;
    let mut opts = RestoreOptions::default();
    if let Some(secs) = timeout {
        opts.timeout = Duration::from_secs_f64(secs);
    }
    let r = store
        .restore_snapshot(v.id, s.id, opts)
        .ctx(format_args!("restoring volume {:?} to snapshot {:?} ({})", v.name, s.name, s.id))?;
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume_id: String,
            snapshot_id: String,
        }
        ctx.print_json(&Out { volume_id: r.volume_id.to_string(), snapshot_id: r.snapshot_id.to_string() })?;
    } else {
        ctx.say(format_args!("restored volume {} ({}) to snapshot {} ({})", v.name, v.id, s.name, s.id))?;
    }
    close(store)
}

fn delete(ctx: &Ctx, volume: &str, snapshot: &str) -> CliResult {
    let store = ctx.open_store()?;
    let (vid, _) = resolve_volume_id(&store, volume)?;
    let found = find_snapshot(&store, vid, snapshot);
    let existed = match &found {
        Some(s) => {
            store
                .delete_snapshot(vid, s.id)
                .ctx(format_args!("deleting snapshot {:?} ({}) of {vid}", s.name, s.id))?
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
