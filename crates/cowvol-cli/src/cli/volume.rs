//! `cowvol volume ...`: create, list, info, delete, fork.

use super::args::VolumeCmd;
use super::error::{out_err, CliResult, LibContext};
use super::fmt::{self, Align, Table};
use super::json::{access_str, SnapshotJson, VolumeJson};
use super::{
    access_mode, close, image, resolve_snapshot, resolve_snapshot_anywhere, resolve_template, resolve_volume,
    resolve_volume_id, Ctx,
};
use cowvol::{ForkOptions, Store, VolumeInfo, VolumeOptions, VolumeOrigin};
use serde::Serialize;
use std::io::Write;

/// Runs a volume subcommand.
pub fn run(ctx: &Ctx, cmd: VolumeCmd) -> CliResult {
    match cmd {
        VolumeCmd::Create { name, size, from_snapshot, volume, from_template, access_mode: am, owner } => {
            let source = match (from_snapshot, from_template) {
                (Some(snap), _) => Source::Snapshot { snap, volume },
                (None, Some(t)) => Source::Template(t),
                (None, None) => Source::Empty,
            };
            let mut opts = VolumeOptions::new(name, size.unwrap_or(0));
            opts.access_mode = access_mode(am);
            opts.owner = owner;
            create(ctx, opts, source)
        }
        VolumeCmd::List => list(ctx),
        VolumeCmd::Info { volume } => info(ctx, &volume),
        VolumeCmd::Delete { volume } => delete(ctx, &volume),
        VolumeCmd::Fork { volume, new, from_snapshot, access_mode: am, owner } => {
            let opts = ForkOptions { name: new, from_snapshot: None, access_mode: access_mode(am), owner };
            fork(ctx, &volume, opts, from_snapshot.as_deref())
        }
        VolumeCmd::Import { name, file } => image::import(ctx, name, &file),
        VolumeCmd::Export { volume, file, snapshot } => image::export(ctx, &volume, &file, snapshot.as_deref()),
        VolumeCmd::Write { volume, offset, file } => image::write(ctx, &volume, offset, &file),
        VolumeCmd::Read { volume, offset, length, snapshot, file } => {
            image::read(ctx, &volume, offset, length, snapshot.as_deref(), file.as_deref())
        }
    }
}

#[derive(Serialize)]
struct VolumeOut {
    volume: VolumeJson,
}

fn origin_str(v: &VolumeInfo) -> String {
    match v.origin {
        None => "-".into(),
        Some(VolumeOrigin::Volume(vol)) => vol.to_string(),
        Some(VolumeOrigin::Snapshot(vol, s)) => format!("{vol}@{s}"),
        Some(VolumeOrigin::Template(t)) => t.to_string(),
    }
}

/// What `volume create` starts from.
enum Source {
    /// Zeroes.
    Empty,
    /// A snapshot, named within `volume` when given.
    Snapshot { snap: String, volume: Option<String> },
    /// A template.
    Template(String),
}

fn create(ctx: &Ctx, opts: VolumeOptions, source: Source) -> CliResult {
    let name = opts.name.clone();
    let store = ctx.open_store()?;
    let (info, from) = match source {
        Source::Empty => (store.create_volume(opts).ctx(format_args!("creating volume {name:?}"))?, String::new()),
        Source::Snapshot { snap, volume } => {
            let s = resolve_snapshot_anywhere(&store, &snap, volume.as_deref())?;
            let from = format!("snapshot {} ({}) of {}", s.name, s.id, super::snapshot::volume_label(&store, &s));
            let info = store
                .create_volume_from_snapshot(s.id, opts)
                .ctx(format_args!("creating volume {name:?} from {from}"))?;
            (info, format!(" from {from}"))
        }
        Source::Template(t) => {
            let t = resolve_template(&store, &t)?;
            let from = format!("template {} ({})", t.name, t.id);
            let info = store
                .create_volume_from_template(t.id, opts)
                .ctx(format_args!("creating volume {name:?} from {from}"))?;
            (info, format!(" from {from}"))
        }
    };
    if ctx.json {
        ctx.print_json(&VolumeOut { volume: VolumeJson::new(&info, 0) })?;
    } else {
        ctx.say(format_args!(
            "created volume {} ({}){from}: {}, {}",
            info.name,
            info.id,
            fmt::bytes(info.size_bytes),
            access_str(info.access_mode)
        ))?;
    }
    close(store)
}

fn list(ctx: &Ctx) -> CliResult {
    let store = ctx.open_store()?;
    let vols = store.list_volumes();
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volumes: Vec<VolumeJson>,
        }
        ctx.print_json(&Out { volumes: vols.iter().map(|v| VolumeJson::of(&store, v)).collect() })?;
    } else {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("NAME", Align::Left),
            ("SIZE", Align::Right),
            ("ACCESS", Align::Left),
            ("SNAPSHOTS", Align::Right),
            ("ORIGIN", Align::Left),
            ("CREATED", Align::Left),
        ]);
        for v in &vols {
            t.row(vec![
                v.id.to_string(),
                v.name.clone(),
                fmt::bytes(v.size_bytes),
                access_str(v.access_mode).into(),
                store.list_snapshots(v.id).len().to_string(),
                origin_str(v),
                fmt::timestamp(v.created_at),
            ]);
        }
        t.print(&mut ctx.out(), "no volumes").map_err(out_err)?;
    }
    close(store)
}

fn info(ctx: &Ctx, volume: &str) -> CliResult {
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    let snaps = store.list_snapshots(v.id);
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume: VolumeJson,
            snapshots: Vec<SnapshotJson>,
        }
        ctx.print_json(&Out {
            volume: VolumeJson::new(&v, snaps.len()),
            snapshots: snaps.iter().map(|s| SnapshotJson::new(s, Some(v.name.clone()))).collect(),
        })?;
    } else {
        let mut out = ctx.out();
        let origin = match v.origin {
            None => "-".to_string(),
            Some(VolumeOrigin::Volume(vol)) => format!("fork of {vol} (live state)"),
            Some(VolumeOrigin::Snapshot(vol, s)) => format!("made from snapshot {s} of {vol}"),
            Some(VolumeOrigin::Template(t)) => match store.template(t) {
                Ok(x) => format!("made from template {} ({t})", x.name),
                Err(_) => format!("made from template {t} (since deleted)"),
            },
        };
        fmt::key_values(
            &mut out,
            &[
                ("id", v.id.to_string()),
                ("name", v.name.clone()),
                ("size", format!("{} ({} bytes)", fmt::bytes(v.size_bytes), v.size_bytes)),
                ("access mode", access_str(v.access_mode).to_string()),
                ("created", fmt::timestamp(v.created_at)),
                ("origin", origin),
                ("snapshot policy", super::policy::describe_policy(v.policy)),
                ("write buffer", fmt::bytes(v.write_buffer_bytes)),
                ("snapshots", snaps.len().to_string()),
            ],
        )
        .map_err(out_err)?;
        if !snaps.is_empty() {
            writeln!(out).map_err(out_err)?;
            super::snapshot::table(&snaps).print(&mut out, "").map_err(out_err)?;
        }
    }
    close(store)
}

fn delete(ctx: &Ctx, volume: &str) -> CliResult {
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    store.delete_volume(v.id).ctx(format_args!("deleting volume {:?} ({})", v.name, v.id))?;
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume_id: String,
            name: String,
            deleted: bool,
        }
        ctx.print_json(&Out { volume_id: v.id.to_string(), name: v.name.clone(), deleted: true })?;
    } else {
        let kept = store.list_snapshots(v.id).len();
        let note = if kept > 0 {
            format!("; its {kept} snapshot(s) remain, listed by `cowvol snapshot list {}`", v.id)
        } else {
            String::new()
        };
        ctx.say(format_args!("deleted volume {} ({}){note}", v.name, v.id))?;
    }
    close(store)
}

fn fork(ctx: &Ctx, volume: &str, mut opts: ForkOptions, from: Option<&str>) -> CliResult {
    let store: Store = ctx.open_store()?;
    let (src, snap) = match from {
        Some(s) => {
            let (id, _) = resolve_volume_id(&store, volume)?;
            let snap = resolve_snapshot(&store, id, volume, s)?;
            (id, Some(snap))
        }
        None => (resolve_volume(&store, volume)?.id, None),
    };
    let new = &opts.name;
    let what = match &snap {
        Some(s) => format!("forking snapshot {:?} ({}) of {src} into {new:?}", s.name, s.id),
        None => format!("forking volume {src} into {new:?}"),
    };
    opts.from_snapshot = snap.as_ref().map(|s| s.id);
    let info = store.fork_volume(src, opts).ctx(what)?;
    if ctx.json {
        ctx.print_json(&VolumeOut { volume: VolumeJson::new(&info, 0) })?;
    } else {
        let from = match &snap {
            Some(s) => format!("snapshot {} ({}) of {src}", s.name, s.id),
            None => format!("volume {src}"),
        };
        ctx.say(format_args!(
            "created volume {} ({}) as a fork of {from}: {}",
            info.name,
            info.id,
            fmt::bytes(info.size_bytes)
        ))?;
    }
    close(store)
}
