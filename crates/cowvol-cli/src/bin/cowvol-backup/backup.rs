//! `cowvol backup ...`: snapshots to a directory or an S3 bucket and back,
//! through the `cowvol-backup` crate.

use cowvol_backup::{self as backup, BackupInfo, BackupOptions, RestoreOptions, Target};
use cowvol_cli::cli::args::BackupCmd;
use cowvol_cli::cli::error::{code, out_err, CliError, CliResult};
use cowvol_cli::cli::fmt::{self, Align, Table};
use cowvol_cli::cli::{close, progress, resolve_snapshot, resolve_volume_id, Ctx};
use serde::Serialize;
use std::sync::Arc;

pub fn run(ctx: &Ctx, cmd: BackupCmd) -> CliResult {
    match cmd {
        BackupCmd::Create { volume, snapshot, target, chunk_size, pack_size, uploads, full } => {
            let opts = BackupOptions {
                chunk_bytes: u32::try_from(chunk_size).map_err(|_| CliError::usage("--chunk-size is at most 16M"))?,
                pack_bytes: pack_size,
                uploads,
                incremental: !full,
            };
            create(ctx, &volume, &snapshot, &target.target, &opts)
        }
        BackupCmd::List { target, volume } => list(ctx, &target.target, volume.as_deref()),
        BackupCmd::Restore { backup, target, as_volume, downloads } => {
            restore(ctx, &backup, &target.target, RestoreOptions { volume_name: as_volume, downloads })
        }
        BackupCmd::Delete { backups, target } => delete(ctx, &backups, &target.target),
        BackupCmd::Prune { target, keep_last, volume, no_gc } => {
            prune(ctx, &target.target, keep_last, volume.as_deref(), !no_gc)
        }
        BackupCmd::Verify { backup, target, quick } => verify(ctx, backup.as_deref(), &target.target, !quick),
        BackupCmd::Gc { target, break_locks } => gc(ctx, &target.target, break_locks),
    }
}

/// Maps the backup crate's errors to exit codes and hints, as
/// [`CliError::from_lib`] does for the engine's.
fn from_backup(what: impl std::fmt::Display, e: backup::Error) -> CliError {
    use backup::Error as E;
    let e = match e {
        E::Store(inner) => return CliError::from_lib(what, inner),
        e => e,
    };
    let (code, hint) = match &e {
        E::NotFound { .. } => (code::NOT_FOUND, Some("`cowvol backup list --target URL` shows the backups")),
        E::InvalidArgument(_) => (code::USAGE, None),
        E::Busy { .. } => (
            code::BUSY,
            Some("wait for it to finish; if its process was killed, `cowvol backup gc --break-locks` clears its lock"),
        ),
        E::Damaged { .. } | E::MissingChunk { .. } => {
            (code::CORRUPTION, Some("`cowvol backup verify` lists every damaged backup; back the snapshot up again"))
        }
        _ => (code::FAILURE, None),
    };
    let err = CliError::new(code, format!("{what}: {e}"));
    match hint {
        Some(h) => err.hint(h),
        None => err,
    }
}

trait BackupContext<T> {
    fn bctx(self, what: impl std::fmt::Display) -> CliResult<T>;
}

impl<T> BackupContext<T> for backup::Result<T> {
    fn bctx(self, what: impl std::fmt::Display) -> CliResult<T> {
        self.map_err(|e| from_backup(what, e))
    }
}

/// `1 chunk`, `2 chunks`.
fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn open(url: &str) -> CliResult<Arc<dyn Target>> {
    backup::open_target(url).bctx(format_args!("opening backup target {url}"))
}

#[derive(Serialize)]
struct CreatedOut {
    backup_id: String,
    target: String,
    snapshot: String,
    base: Option<String>,
    already_there: bool,
    chunks: u64,
    chunks_read: u64,
    chunks_uploaded: u64,
    bytes_read: u64,
    bytes_uploaded: u64,
    packs_uploaded: u64,
    seconds: f64,
}

fn create(ctx: &Ctx, volume: &str, snapshot: &str, url: &str, opts: &BackupOptions) -> CliResult {
    let target = open(url)?;
    let store = ctx.open_store()?;
    let (vid, _) = resolve_volume_id(&store, volume)?;
    let snap = resolve_snapshot(&store, vid, volume, snapshot)?;
    let bar = progress::bytes(ctx, 0, &format!("backing up {}", snap.name));
    let chunk = opts.chunk_bytes as u64;
    let started = std::time::Instant::now();
    let report = backup::backup(&store, snap.id, &*target, opts, &mut |p| {
        bar.set_length(p.chunks_total * chunk);
        bar.set_position(p.chunks_done * chunk);
    })
    .bctx(format_args!("backing up snapshot {:?} of volume {volume:?} to {}", snap.name, target.url()))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if ctx.json {
        ctx.print_json(&CreatedOut {
            backup_id: report.backup_id.clone(),
            target: target.url().to_string(),
            snapshot: snap.id.to_string(),
            base: report.base.clone(),
            already_there: report.already_there,
            chunks: report.chunks,
            chunks_read: report.chunks_read,
            chunks_uploaded: report.chunks_uploaded,
            bytes_read: report.bytes_read,
            bytes_uploaded: report.bytes_uploaded,
            packs_uploaded: report.packs_uploaded,
            seconds,
        })?;
    } else if report.already_there {
        ctx.say(format_args!("{} is already backed up to {} as {}", snap.name, target.url(), report.backup_id))?;
    } else {
        let how = match &report.base {
            Some(b) => format!("changes since backup {b}"),
            None => "full read".into(),
        };
        ctx.say(format_args!(
            "backed up {} ({}) to {} as {}: {}, {} read ({how}), {} uploaded ({} in {}) in {:.1} s",
            snap.name,
            snap.id,
            target.url(),
            report.backup_id,
            count(report.chunks, "chunk"),
            fmt::bytes(report.bytes_read),
            count(report.chunks_uploaded, "new chunk"),
            fmt::bytes(report.bytes_uploaded),
            count(report.packs_uploaded, "pack"),
            seconds
        ))?;
    }
    close(store)
}

#[derive(Serialize)]
struct BackupJson {
    id: String,
    store_id: String,
    snapshot_id: u64,
    snapshot: String,
    volume: String,
    description: String,
    owner: String,
    labels: std::collections::BTreeMap<String, String>,
    snapshot_created_at: u64,
    finished_at: u64,
    size_bytes: u64,
    data_bytes: u64,
    chunks: u64,
    chunk_bytes: u32,
    base: Option<String>,
}

impl BackupJson {
    fn of(b: &BackupInfo) -> BackupJson {
        BackupJson {
            id: b.id.clone(),
            store_id: format!("{:016x}", b.snapshot.store_id),
            snapshot_id: b.snapshot.snapshot_id,
            snapshot: b.snapshot.name.clone(),
            volume: b.snapshot.volume_name.clone(),
            description: b.snapshot.description.clone(),
            owner: b.snapshot.owner.clone(),
            labels: b.snapshot.labels.clone(),
            snapshot_created_at: b.snapshot.created_at,
            finished_at: b.finished_at,
            size_bytes: b.size_bytes,
            data_bytes: b.data_bytes,
            chunks: b.chunks,
            chunk_bytes: b.chunk_bytes,
            base: b.base.clone(),
        }
    }
}

#[derive(Serialize)]
struct ListOut {
    backups: Vec<BackupJson>,
    damaged: Vec<String>,
}

fn list(ctx: &Ctx, url: &str, volume: Option<&str>) -> CliResult {
    let target = open(url)?;
    let (mut backups, damaged) = backup::list_backups(&*target).bctx(format_args!("listing backups on {url}"))?;
    backups.retain(|b| volume.is_none_or(|v| b.snapshot.volume_name == v));
    let damaged: Vec<String> = damaged.iter().map(ToString::to_string).collect();
    if ctx.json {
        return ctx.print_json(&ListOut { backups: backups.iter().map(BackupJson::of).collect(), damaged });
    }
    let mut t = Table::new(&[
        ("BACKUP", Align::Left),
        ("VOLUME", Align::Left),
        ("SNAPSHOT", Align::Left),
        ("TAKEN", Align::Left),
        ("SIZE", Align::Right),
        ("DATA", Align::Right),
        ("CHUNKS", Align::Right),
        ("FINISHED", Align::Left),
    ]);
    for b in &backups {
        t.row(vec![
            b.id.clone(),
            b.snapshot.volume_name.clone(),
            b.snapshot.name.clone(),
            fmt::timestamp(b.snapshot.created_at),
            fmt::bytes(b.size_bytes),
            fmt::bytes(b.data_bytes),
            b.chunks.to_string(),
            fmt::timestamp(b.finished_at),
        ]);
    }
    t.print(&mut ctx.out(), "no backups").map_err(out_err)?;
    for d in &damaged {
        eprintln!("cowvol: warning: {d}");
    }
    Ok(())
}

fn restore(ctx: &Ctx, backup_id: &str, url: &str, opts: RestoreOptions) -> CliResult {
    let target = open(url)?;
    let store = ctx.open_store()?;
    let info = backup::backup_info(&*target, backup_id).bctx(format_args!("reading backup {backup_id}"))?;
    let bar = progress::bytes(ctx, info.data_bytes, &format!("restoring {}", info.snapshot.name));
    let chunk = info.chunk_bytes as u64;
    let started = std::time::Instant::now();
    let got = backup::restore(&*target, backup_id, &store, &opts, &|done, _| bar.set_position(done * chunk))
        .bctx(format_args!("restoring backup {backup_id} as volume {:?}", opts.volume_name))?;
    bar.finish_and_clear();
    if ctx.json {
        #[derive(Serialize)]
        struct RestoredOut {
            volume: cowvol_cli::cli::json::VolumeJson,
            snapshot: cowvol_cli::cli::json::SnapshotJson,
            bytes_written: u64,
            seconds: f64,
        }
        ctx.print_json(&RestoredOut {
            volume: cowvol_cli::cli::json::VolumeJson::new(&got.volume, 1),
            snapshot: cowvol_cli::cli::json::SnapshotJson::of(&store, &got.snapshot),
            bytes_written: got.bytes_written,
            seconds: started.elapsed().as_secs_f64(),
        })?;
    } else {
        ctx.say(format_args!(
            "restored backup {backup_id} ({} of {}) as volume {} ({}), snapshot {} ({}): {} written in {:.1} s",
            info.snapshot.name,
            info.snapshot.volume_name,
            got.volume.name,
            got.volume.id,
            got.snapshot.name,
            got.snapshot.id,
            fmt::bytes(got.bytes_written),
            started.elapsed().as_secs_f64()
        ))?;
    }
    close(store)
}

fn delete(ctx: &Ctx, ids: &[String], url: &str) -> CliResult {
    let target = open(url)?;
    for id in ids {
        let was = backup::delete_backup(&*target, id).bctx(format_args!("deleting backup {id}"))?;
        ctx.say(if was { format!("deleted backup {id}") } else { format!("backup {id} was not there") })?;
    }
    ctx.say("its chunks are freed by `cowvol backup gc` once no other backup uses them")
}

fn prune(ctx: &Ctx, url: &str, keep_last: usize, volume: Option<&str>, then_gc: bool) -> CliResult {
    let target = open(url)?;
    let gone = backup::prune(&*target, keep_last, volume).bctx(format_args!("pruning backups on {url}"))?;
    for b in &gone {
        ctx.say(format_args!("deleted backup {} ({} of {})", b.id, b.snapshot.name, b.snapshot.volume_name))?;
    }
    ctx.say(format_args!(
        "{} deleted, the newest {keep_last} of each volume kept",
        count(gone.len() as u64, "backup")
    ))?;
    if then_gc {
        gc_on(ctx, &*target)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct VerifyOut {
    backups: u64,
    chunks: u64,
    bytes_read: u64,
    problems: Vec<String>,
}

fn verify(ctx: &Ctx, backup_id: Option<&str>, url: &str, read_data: bool) -> CliResult {
    let target = open(url)?;
    let bar = progress::spinner(ctx, "verifying");
    let r = backup::verify(&*target, backup_id, read_data).bctx(format_args!("verifying backups on {url}"))?;
    bar.finish_and_clear();
    if ctx.json {
        ctx.print_json(&VerifyOut {
            backups: r.backups,
            chunks: r.chunks,
            bytes_read: r.bytes_read,
            problems: r.problems.clone(),
        })?;
    } else {
        for p in &r.problems {
            eprintln!("cowvol: problem: {p}");
        }
        ctx.say(format_args!(
            "{}, {} checked, {} read: {}",
            count(r.backups, "backup"),
            count(r.chunks, "chunk reference"),
            fmt::bytes(r.bytes_read),
            if r.is_clean() { "all good".to_string() } else { format!("{} problems", r.problems.len()) }
        ))?;
    }
    if r.is_clean() {
        Ok(())
    } else {
        Err(CliError::new(code::FAILURE, format!("{} problems found on {url}", r.problems.len()))
            .hint("a damaged backup cannot be restored: delete it and back the snapshot up again"))
    }
}

fn gc(ctx: &Ctx, url: &str, break_locks: bool) -> CliResult {
    let target = open(url)?;
    if break_locks {
        let n = backup::break_locks(&*target).bctx("breaking locks")?;
        ctx.say(format_args!("{n} locks removed"))?;
    }
    gc_on(ctx, &*target)
}

#[derive(Serialize)]
struct GcOut {
    backups: u64,
    packs_deleted: u64,
    bytes_deleted: u64,
    orphan_packs_deleted: u64,
    packs_kept: u64,
    unreferenced_bytes_kept: u64,
}

fn gc_on(ctx: &Ctx, target: &dyn Target) -> CliResult {
    let r = backup::collect_garbage(target).bctx(format_args!("collecting garbage on {}", target.url()))?;
    if ctx.json {
        return ctx.print_json(&GcOut {
            backups: r.backups,
            packs_deleted: r.packs_deleted,
            bytes_deleted: r.bytes_deleted,
            orphan_packs_deleted: r.orphan_packs_deleted,
            packs_kept: r.packs_kept,
            unreferenced_bytes_kept: r.unreferenced_bytes_kept,
        });
    }
    ctx.say(format_args!(
        "{} deleted ({}), {} left by interrupted backups; {} kept for {} ({} unreferenced inside them)",
        count(r.packs_deleted, "pack"),
        fmt::bytes(r.bytes_deleted),
        r.orphan_packs_deleted,
        count(r.packs_kept, "pack"),
        count(r.backups, "backup"),
        fmt::bytes(r.unreferenced_bytes_kept)
    ))
}
