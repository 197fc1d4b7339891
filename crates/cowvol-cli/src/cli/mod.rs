//! The `cowvol` command line: parsing, dispatch, and what every command
//! shares (opening the store, resolving names, printing).

pub mod args;
mod bench;
mod demo;
pub mod error;
pub mod fmt;
mod helper;
mod image;
pub mod json;
mod maint;
mod nbd;
mod policy;
pub mod progress;
mod snapshot;
mod stream;
mod template;
mod volume;

pub use args::Command;
use args::{Cli, VolumeCmd};
use clap::Parser;
use cowvol::{
    AccessMode, RestoreOptions, Restored, SnapshotId, SnapshotInfo, SnapshotQuery, Store, StoreOptions, TemplateId,
    TemplateInfo, VolumeId, VolumeInfo,
};
use cowvol_nbd::{ControlRequest, ControlResponse};
use error::{code, out_err, CliError, CliResult, LibContext};
use serde::Serialize;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    out: Output,
    /// Set when the command was forwarded to a `cowvol nbd` process over
    /// its control socket: the command runs against that server's store.
    served: Option<cowvol_nbd::Server>,
    /// The command touches only the store, in a few steps, and closes it
    /// (see [`forwardable`]): it opens the store with no background thread.
    brief: bool,
}

/// Where a command's standard output goes: the process's stdout, or a
/// buffer returned to the `cowvol` process that forwarded the command.
enum Output {
    Stdout(io::Stdout),
    Buffer(Arc<Mutex<Vec<u8>>>),
}

/// A writer on a command's output (see [`Ctx::out`]).
pub enum OutLock {
    /// The process's stdout, locked.
    Stdout(io::StdoutLock<'static>),
    /// The buffer of a forwarded command.
    Buffer(Arc<Mutex<Vec<u8>>>),
}

impl Write for OutLock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            OutLock::Stdout(s) => s.write(buf),
            OutLock::Buffer(b) => {
                b.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            OutLock::Stdout(s) => s.flush(),
            OutLock::Buffer(_) => Ok(()),
        }
    }
}

impl Ctx {
    /// Standard output (or the forwarded command's output buffer), locked.
    pub fn out(&self) -> OutLock {
        match &self.out {
            Output::Stdout(s) => OutLock::Stdout(s.lock()),
            Output::Buffer(b) => OutLock::Buffer(b.clone()),
        }
    }

    /// Restores a volume: through the NBD server's restore path when the
    /// command was forwarded to one (so its clients are drained first),
    /// else directly on the store.
    pub fn restore(
        &self,
        store: &Store,
        volume: VolumeId,
        snapshot: SnapshotId,
        opts: RestoreOptions,
    ) -> cowvol::Result<Restored> {
        match &self.served {
            Some(server) => server.restore_snapshot_blocking(volume, snapshot, opts),
            None => store.restore_snapshot(volume, snapshot, opts),
        }
    }

    /// Prints `value` as pretty JSON followed by a newline.
    pub fn print_json<T: Serialize>(&self, value: &T) -> CliResult {
        let mut out = self.out();
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
        let mut out = self.out();
        writeln!(out, "{line}").map_err(out_err)
    }

    /// Opens the existing store; a missing or empty directory is "not found".
    pub fn open_store(&self) -> CliResult<Store> {
        if let Some(server) = &self.served {
            return Ok(server.store().clone());
        }
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
        open_at(dir, self.store_options())
    }

    /// A brief command's store gets no background thread: its close
    /// checkpoints inline if a checkpoint is due at all, and starting and
    /// joining a thread would be a tenth of what `cowvol snapshot create`
    /// costs. Commands that run long (servers, imports, streams, backups)
    /// keep it, so that checkpoints and hole punching do not wait on them.
    fn store_options(&self) -> StoreOptions {
        StoreOptions { background_checkpoints: !self.brief, ..StoreOptions::default() }
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

/// Runs one command: what [`main_with`] calls once the command line is
/// parsed. `cowvol` runs every command but `serve` and `backup` itself; a
/// helper runs its own.
pub type Runner = fn(&Ctx, Command) -> CliResult;

/// `cowvol`: parses the command line, runs the command, and returns the
/// exit code.
pub fn main() -> u8 {
    main_with(dispatch)
}

/// Parses the command line, runs the command with `run` (or forwards it to
/// a `cowvol nbd` process that holds the store), and returns the exit code.
pub fn main_with(run: Runner) -> u8 {
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
        out: Output::Stdout(io::stdout()),
        served: None,
        brief: forwardable(&cli.command),
    };
    let forwardable = ctx.brief;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&ctx, cli.command)));
    match result {
        Ok(Ok(())) => code::OK,
        Ok(Err(e)) if e.broken_pipe => code::OK,
        Ok(Err(e)) if e.locked && forwardable => forward(&ctx, &e),
        Ok(Err(e)) => {
            eprintln!("{}", e.line());
            e.code
        }
        Err(_) => code::FAILURE,
    }
}

/// Commands a `cowvol nbd` process can run for another `cowvol` process:
/// those that touch only the store (no local files, no standard input).
fn forwardable(cmd: &Command) -> bool {
    match cmd {
        Command::Volume(v) => {
            matches!(
                v,
                VolumeCmd::Create { .. }
                    | VolumeCmd::List
                    | VolumeCmd::Info { .. }
                    | VolumeCmd::Delete { .. }
                    | VolumeCmd::Fork { .. }
            )
        }
        // Send and receive move a stream through this process's stdin,
        // stdout or files, which a forwarded command cannot reach.
        Command::Snapshot(s) => !matches!(s, args::SnapshotCmd::Send { .. } | args::SnapshotCmd::Receive { .. }),
        Command::Template(_) | Command::Policy(_) => true,
        // A backup runs in this process: its credentials come from this
        // process's environment, and its progress goes to this terminal.
        Command::Backup(_) => false,
        Command::Check | Command::Scrub | Command::Stats => true,
        Command::Demo
        | Command::Init(_)
        | Command::Bench(_)
        | Command::BenchProbe { .. }
        | Command::Nbd(_)
        | Command::Serve(_) => false,
    }
}

/// The store is locked: when a `cowvol nbd` process holds it and listens on
/// the store's control socket, run the command there and relay its output.
fn forward(ctx: &Ctx, locked: &CliError) -> u8 {
    let socket = cowvol_nbd::control::socket_path(&ctx.store_dir);
    if !socket.exists() {
        eprintln!("{}", locked.line());
        return locked.code;
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match cowvol_nbd::control::forward(&socket, argv) {
        Ok(r) => {
            let _ = io::stdout().write_all(r.stdout.as_bytes()).and_then(|()| io::stdout().flush());
            eprint!("{}", r.stderr);
            r.code
        }
        Err(e) => {
            eprintln!(
                "{}",
                CliError::from_io(format!("forwarding the command to the server on {}", socket.display()), e)
                    .hint("the process holding the store did not answer on its control socket")
                    .line()
            );
            locked.code
        }
    }
}

/// Runs a command forwarded over the control socket against the server's
/// store, capturing what it prints.
pub fn run_forwarded(server: &cowvol_nbd::Server, req: ControlRequest) -> ControlResponse {
    let cli = match Cli::try_parse_from(std::iter::once("cowvol".to_string()).chain(req.argv)) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { code::USAGE } else { code::OK };
            return ControlResponse::failure(code, e.render().to_string());
        }
    };
    if !forwardable(&cli.command) {
        return ControlResponse::failure(
            code::USAGE,
            "cowvol: error: this command cannot run through the control socket; hint: stop `cowvol nbd` first\n",
        );
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let ctx = Ctx {
        store_dir: cli.store_dir(),
        store_explicit: cli.store.is_some(),
        json: cli.json,
        quiet: cli.quiet,
        progress: false,
        out: Output::Buffer(buffer.clone()),
        served: Some(server.clone()),
        brief: true,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(&ctx, cli.command)));
    let (code, stderr) = match result {
        Ok(Ok(())) => (code::OK, String::new()),
        Ok(Err(e)) if e.broken_pipe => (code::OK, String::new()),
        Ok(Err(e)) => (e.code, format!("{}\n", e.line())),
        Err(_) => (code::FAILURE, "cowvol: error: internal error in the forwarded command\n".to_string()),
    };
    let stdout = String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    ControlResponse { code, stdout, stderr }
}

fn dispatch(ctx: &Ctx, cmd: Command) -> CliResult {
    match cmd {
        Command::Demo => demo::run(ctx),
        Command::Init(a) => maint::init(ctx, a),
        Command::Volume(v) => volume::run(ctx, v),
        Command::Snapshot(s) => snapshot::run(ctx, s),
        Command::Template(t) => template::run(ctx, t),
        Command::Policy(p) => policy::run(ctx, p),
        Command::Backup(_) => helper::run_instead("cowvol-backup"),
        Command::Check => maint::check(ctx),
        Command::Scrub => maint::scrub(ctx),
        Command::Stats => maint::stats(ctx),
        Command::Bench(a) => bench::run(ctx, a),
        Command::BenchProbe { dir, build, overwrite, seed } => bench::probe(ctx, &dir, build, overwrite, seed),
        Command::Nbd(a) => nbd::run(ctx, a),
        Command::Serve(_) => helper::run_instead("cowvol-serve"),
    }
}

/// The wall clock in seconds since the Unix epoch: the default `now` of
/// the commands that take one.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
