//! The `cowvol` command line: parsing, dispatch, and what every command
//! shares (opening the store, resolving names, printing).

mod args;
mod bench;
mod demo;
mod error;
mod fmt;
mod image;
mod json;
mod maint;
mod policy;
mod progress;
mod serve;
mod snapshot;
mod template;
mod volume;

use args::{Cli, Command};
use clap::Parser;
use cowvol::{
    AccessMode, SnapshotId, SnapshotInfo, SnapshotQuery, Store, StoreOptions, TemplateId, TemplateInfo, VolumeId,
    VolumeInfo,
};
use error::{code, out_err, CliError, CliResult, LibContext};
use serde::Serialize;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// What every command gets: global options and where output goes.
pub struct Ctx {
    /// The store directory.
    pub store_dir: PathBuf,
    /// `--store` was given on the command line (not from the environment or the default).
    pub store_explicit: bool,
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
    /// Progress bars are drawn (stdout is a terminal and not `--quiet`).
    pub progress: bool,
    out: io::Stdout,
}

impl Ctx {
    /// Standard output, locked.
    pub fn out(&self) -> io::StdoutLock<'static> {
        self.out.lock()
    }

    /// Prints `value` as pretty JSON followed by a newline.
    pub fn print_json<T: Serialize>(&self, value: &T) -> CliResult {
        let mut out = self.out.lock();
        serde_json::to_writer_pretty(&mut out, value)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush())
            .map_err(out_err)
    }

    /// Prints a confirmation line unless `--quiet`.
    pub fn say(&self, line: impl std::fmt::Display) -> CliResult {
        if self.quiet {
            return Ok(());
        }
        let mut out = self.out.lock();
        writeln!(out, "{line}").map_err(out_err)
    }

    /// Opens the existing store; a missing or empty directory is "not found".
    pub fn open_store(&self) -> CliResult<Store> {
        let dir = &self.store_dir;
        let hint = "create one with `cowvol init`, or point --store / COWVOL_STORE at an existing store";
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_none() {
                    return Err(CliError::not_found(format!("no store in {} (the directory is empty)", dir.display()))
                        .hint(hint));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(
                    CliError::not_found(format!("no store at {} (no such directory)", dir.display())).hint(hint)
                );
            }
            Err(e) => return Err(CliError::from_io(format!("opening store {}", dir.display()), e)),
        }
        open_at(dir, StoreOptions::default())
    }
}

/// Opens (or creates) a store, with the CLI's error wording.
pub fn open_at(dir: &Path, opts: StoreOptions) -> CliResult<Store> {
    Store::open(dir, opts).ctx(format_args!("opening store {}", dir.display()))
}

/// Checkpoints and closes the store, reporting what dropping it would swallow.
pub fn close(store: Store) -> CliResult {
    store.close().ctx("closing the store")
}

/// Converts the CLI's access-mode argument.
pub fn access_mode(a: args::AccessArg) -> AccessMode {
    match a {
        args::AccessArg::Rwo => AccessMode::ReadWriteOnce,
        args::AccessArg::Rwx => AccessMode::ReadWriteMany,
        args::AccessArg::Rox => AccessMode::ReadOnlyMany,
    }
}

const VOLUME_HINT: &str = "`cowvol volume list` shows the volumes";

/// Finds a live volume by name, else by id (`vol-3` or `3`).
pub fn resolve_volume(store: &Store, s: &str) -> CliResult<VolumeInfo> {
    if let Some(v) = store.volume_by_name(s) {
        return Ok(v);
    }
    match s.parse::<VolumeId>() {
        Ok(id) => store.volume(id).map_err(|_| {
            CliError::not_found(format!("volume {s:?} was not found"))
                .hint(format!("{VOLUME_HINT}; a deleted volume's snapshots are listed by `cowvol snapshot list`"))
        }),
        Err(_) => Err(CliError::not_found(format!("volume {s:?} was not found")).hint(VOLUME_HINT)),
    }
}

/// Like [`resolve_volume`], but also names a deleted volume (whose
/// snapshots may remain), by its id or by the name its snapshots recorded.
/// Returns the id and the live record if any.
pub fn resolve_volume_id(store: &Store, s: &str) -> CliResult<(VolumeId, Option<VolumeInfo>)> {
    if let Some(v) = store.volume_by_name(s) {
        return Ok((v.id, Some(v)));
    }
    if let Ok(id) = s.parse::<VolumeId>() {
        return Ok((id, store.volume(id).ok()));
    }
    let page = store.search_snapshots(&SnapshotQuery { volume_name: Some(s.to_string()), ..Default::default() });
    let mut ids: Vec<VolumeId> = page.snapshots.iter().map(|x| x.volume_id).collect();
    ids.sort();
    ids.dedup();
    match ids[..] {
        [id] => Ok((id, None)),
        [] => Err(CliError::not_found(format!("volume {s:?} was not found"))
            .hint(format!("{VOLUME_HINT}; name a deleted volume by its id (vol-N)"))),
        _ => {
            let list = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
            Err(CliError::usage(format!("{s:?} names several deleted volumes ({list})"))
                .hint("name the volume by its id"))
        }
    }
}

/// A snapshot named by id anywhere in the store, or by name within `volume`
/// (or, without `volume`, by a name only one snapshot in the store has).
pub fn resolve_snapshot_anywhere(store: &Store, s: &str, volume: Option<&str>) -> CliResult<SnapshotInfo> {
    if let Some(v) = volume {
        let (vid, _) = resolve_volume_id(store, v)?;
        return resolve_snapshot(store, vid, v, s);
    }
    let named: Vec<SnapshotInfo> = store.all_snapshots().into_iter().filter(|x| x.name == s).collect();
    match &named[..] {
        [one] => return Ok(one.clone()),
        [] => {}
        several => {
            let list = several.iter().map(|x| format!("{} of {}", x.id, x.volume_id)).collect::<Vec<_>>().join(", ");
            return Err(CliError::usage(format!("several snapshots are named {s:?} ({list})"))
                .hint("add --volume VOL, or name the snapshot by its id"));
        }
    }
    s.parse::<SnapshotId>().ok().and_then(|id| store.snapshot(id).ok()).ok_or_else(|| {
        CliError::not_found(format!("snapshot {s:?} was not found")).hint("`cowvol snapshot list` shows the snapshots")
    })
}

/// Finds a template by name, else by id (`tmpl-2` or `2`).
pub fn find_template(store: &Store, s: &str) -> Option<TemplateInfo> {
    store.template_by_name(s).or_else(|| store.template(s.parse::<TemplateId>().ok()?).ok())
}

/// [`find_template`], or "not found" with a hint.
pub fn resolve_template(store: &Store, s: &str) -> CliResult<TemplateInfo> {
    find_template(store, s).ok_or_else(|| {
        CliError::not_found(format!("template {s:?} was not found")).hint("`cowvol template list` shows the templates")
    })
}

/// Finds a snapshot of `volume` by name, else by id (`snap-7` or `7`).
pub fn find_snapshot(store: &Store, volume: VolumeId, s: &str) -> Option<SnapshotInfo> {
    let snaps = store.list_snapshots(volume);
    if let Some(found) = snaps.iter().find(|x| x.name == s) {
        return Some(found.clone());
    }
    let id = s.parse::<SnapshotId>().ok()?;
    snaps.into_iter().find(|x| x.id == id)
}

/// [`find_snapshot`], or "not found" with a hint.
pub fn resolve_snapshot(store: &Store, volume: VolumeId, vol_label: &str, s: &str) -> CliResult<SnapshotInfo> {
    find_snapshot(store, volume, s).ok_or_else(|| {
        CliError::not_found(format!("snapshot {s:?} of volume {vol_label:?} was not found"))
            .hint(format!("`cowvol snapshot list {vol_label}` shows its snapshots"))
    })
}

/// Parses the command line, runs the command, and returns the exit code.
pub fn main() -> u8 {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("cowvol: error: internal error: {msg}{at}; hint: this is a bug in cowvol, please report it");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { code::USAGE } else { code::OK };
        }
    };
    let store_explicit = cli.store.is_some();
    let ctx = Ctx {
        store_dir: cli.store_dir(),
        store_explicit,
        json: cli.json,
        quiet: cli.quiet,
        progress: io::stdout().is_terminal() && !cli.quiet,
        out: io::stdout(),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(&ctx, cli.command)));
    match result {
        Ok(Ok(())) => code::OK,
        Ok(Err(e)) if e.broken_pipe => code::OK,
        Ok(Err(e)) => {
            eprintln!("{}", e.line());
            e.code
        }
        Err(_) => code::FAILURE,
    }
}

fn dispatch(ctx: &Ctx, cmd: Command) -> CliResult {
    match cmd {
        Command::Demo => demo::run(ctx),
        Command::Init(a) => maint::init(ctx, a),
        Command::Volume(v) => volume::run(ctx, v),
        Command::Snapshot(s) => snapshot::run(ctx, s),
        Command::Template(t) => template::run(ctx, t),
        Command::Policy(p) => policy::run(ctx, p),
        Command::Check => maint::check(ctx),
        Command::Scrub => maint::scrub(ctx),
        Command::Stats => maint::stats(ctx),
        Command::Bench(a) => bench::run(ctx, a),
        Command::Serve(a) => serve::run(ctx, a),
    }
}
