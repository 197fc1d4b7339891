//! Moving bytes between volumes and files: import, export, write, read.

use super::error::{CliError, CliResult, IoContext, LibContext};
use super::fmt;
use super::json::VolumeJson;
use super::{close, progress, resolve_snapshot, resolve_volume, resolve_volume_id, Ctx};
use cowvol::{OpenMode, SnapshotInfo, Store, Volume, VolumeId, VolumeOptions};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

/// Bytes moved per read or write call.
const CHUNK: usize = 4 << 20;

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Splits `buf` into block-sized pieces and calls `f(start, end)` for each
/// maximal run of non-zero blocks; returns (non-zero blocks, zero blocks).
fn for_each_data_run(buf: &[u8], bs: usize, mut f: impl FnMut(usize, usize) -> CliResult) -> CliResult<(u64, u64)> {
    let (mut data, mut zero) = (0u64, 0u64);
    let mut run: Option<usize> = None;
    let mut at = 0;
    while at < buf.len() {
        let end = (at + bs).min(buf.len());
        if fmt::is_zero(&buf[at..end]) {
            zero += 1;
            if let Some(start) = run.take() {
                f(start, at)?;
            }
        } else {
            data += 1;
            run.get_or_insert(at);
        }
        at = end;
    }
    if let Some(start) = run {
        f(start, buf.len())?;
    }
    Ok((data, zero))
}

/// A read handle on a volume's live state or on one of its snapshots.
struct Source {
    handle: Volume,
    volume_id: VolumeId,
    snapshot: Option<SnapshotInfo>,
    label: String,
}

fn open_source(store: &Store, volume: &str, snapshot: Option<&str>) -> CliResult<Source> {
    match snapshot {
        Some(s) => {
            let (vid, _) = resolve_volume_id(store, volume)?;
            let snap = resolve_snapshot(store, vid, volume, s)?;
            let label = format!("snapshot {:?} ({}) of {vid}", snap.name, snap.id);
            let handle = store.open_snapshot(vid, snap.id).ctx(format_args!("opening {label}"))?;
            Ok(Source { handle, volume_id: vid, snapshot: Some(snap), label })
        }
        None => {
            let v = resolve_volume(store, volume)?;
            let label = format!("volume {:?} ({})", v.name, v.id);
            let handle = store.open_volume_with(v.id, OpenMode::ReadOnly).ctx(format_args!("opening {label}"))?;
            Ok(Source { handle, volume_id: v.id, snapshot: None, label })
        }
    }
}

fn range_error(label: &str, offset: u64, len: u64, size: u64) -> CliError {
    CliError::usage(format!("range {offset}+{len} is outside {label}, which is {size} bytes ({})", fmt::bytes(size)))
        .hint("use an --offset and length within the volume's size")
}

/// `volume import NAME FILE`.
pub fn import(ctx: &Ctx, name: String, path: &Path) -> CliResult {
    let what = format!("importing {}", path.display());
    let mut file = File::open(path).io_ctx(&what)?;
    let size = file.seek(SeekFrom::End(0)).io_ctx(&what)?;
    file.seek(SeekFrom::Start(0)).io_ctx(&what)?;
    if size == 0 {
        return Err(CliError::usage(format!("{what}: the image is empty; a volume needs at least 1 byte")));
    }
    let store = ctx.open_store()?;
    let bs = store.block_size() as usize;
    let info = store
        .create_volume(VolumeOptions::new(name.clone(), size))
        .ctx(format_args!("{what}: creating volume {name:?}"))?;
    let started = Instant::now();
    let bar = progress::bytes(ctx, size, "import");
    let filled = (|| -> CliResult<(u64, u64)> {
        let vol = store.open_volume(info.id).ctx(format_args!("{what}: opening volume {name:?}"))?;
        let mut buf = vec![0u8; CHUNK];
        let (mut data, mut zero, mut off) = (0u64, 0u64, 0u64);
        while off < size {
            let want = (size - off).min(CHUNK as u64) as usize;
            let n = read_full(&mut file, &mut buf[..want]).io_ctx(&what)?;
            if n < want {
                return Err(CliError::new(
                    super::error::code::FAILURE,
                    format!("{what}: the file shrank while it was read (ended at byte {})", off + n as u64),
                ));
            }
            let chunk = &buf[..n];
            let (d, z) = for_each_data_run(chunk, bs, |a, b| {
                vol.write_at(&chunk[a..b], off + a as u64)
                    .ctx(format_args!("{what}: writing volume {name:?} at byte {}", off + a as u64))
            })?;
            data += d;
            zero += z;
            off += n as u64;
            bar.set_position(off);
        }
        vol.flush().ctx(format_args!("{what}: flushing volume {name:?}"))?;
        Ok((data, zero))
    })();
    bar.finish_and_clear();
    let (data, zero) = match filled {
        Ok(x) => x,
        Err(e) => {
            // Leave no half-imported volume behind.
            let _ = store.delete_volume(info.id);
            return Err(e);
        }
    };
    let elapsed = started.elapsed();
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume: VolumeJson,
            file: String,
            bytes: u64,
            blocks_written: u64,
            zero_blocks_skipped: u64,
        }
        ctx.print_json(&Out {
            volume: VolumeJson::new(&info, 0),
            file: path.display().to_string(),
            bytes: size,
            blocks_written: data,
            zero_blocks_skipped: zero,
        })?;
    } else {
        ctx.say(format_args!(
            "imported {} into volume {} ({}): {} data blocks written, {} zero blocks left unmapped, {} in {} ({})",
            path.display(),
            info.name,
            info.id,
            data,
            zero,
            fmt::bytes(size),
            fmt::duration(elapsed),
            fmt::rate(size, elapsed)
        ))?;
    }
    close(store)
}

/// `volume export VOL FILE [--snapshot SNAP]`.
pub fn export(ctx: &Ctx, volume: &str, path: &Path, snapshot: Option<&str>) -> CliResult {
    let store = ctx.open_store()?;
    let src = open_source(&store, volume, snapshot)?;
    let what = format!("exporting {} to {}", src.label, path.display());
    let size = src.handle.size();
    let bs = store.block_size() as usize;
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path).io_ctx(&what)?;
    let sparse = file.metadata().io_ctx(&what)?.is_file();
    let started = Instant::now();
    let bar = progress::bytes(ctx, size, "export");
    let copied = (|| -> CliResult<(u64, u64)> {
        if sparse {
            file.set_len(size).io_ctx(&what)?;
        }
        let mut buf = vec![0u8; CHUNK];
        let (mut data, mut zero, mut off) = (0u64, 0u64, 0u64);
        while off < size {
            let n = (size - off).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            src.handle.read_at(chunk, off).ctx(format_args!("{what}: reading at byte {off}"))?;
            if sparse {
                let (d, z) =
                    for_each_data_run(chunk, bs, |a, b| file.write_all_at(&chunk[a..b], off + a as u64).io_ctx(&what))?;
                data += d;
                zero += z;
            } else {
                file.write_all(chunk).io_ctx(&what)?;
                data += n.div_ceil(bs) as u64;
            }
            off += n as u64;
            bar.set_position(off);
        }
        if sparse {
            file.sync_all().io_ctx(&what)?;
        } else {
            file.flush().io_ctx(&what)?;
        }
        Ok((data, zero))
    })();
    bar.finish_and_clear();
    let (data, zero) = match copied {
        Ok(x) => x,
        Err(e) => {
            if sparse {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    let elapsed = started.elapsed();
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume_id: String,
            snapshot_id: Option<String>,
            file: String,
            bytes: u64,
            blocks_written: u64,
            zero_blocks_skipped: u64,
        }
        ctx.print_json(&Out {
            volume_id: src.volume_id.to_string(),
            snapshot_id: src.snapshot.as_ref().map(|s| s.id.to_string()),
            file: path.display().to_string(),
            bytes: size,
            blocks_written: data,
            zero_blocks_skipped: zero,
        })?;
    } else {
        ctx.say(format_args!(
            "exported {} to {}: {}, {} data blocks written, {} zero blocks left as holes, in {} ({})",
            src.label,
            path.display(),
            fmt::bytes(size),
            data,
            zero,
            fmt::duration(elapsed),
            fmt::rate(size, elapsed)
        ))?;
    }
    drop(src);
    close(store)
}

/// `volume write VOL --offset N FILE`.
pub fn write(ctx: &Ctx, volume: &str, offset: u64, path: &Path) -> CliResult {
    let stdin = path.as_os_str() == "-";
    let what = if stdin { "writing stdin".to_string() } else { format!("writing {}", path.display()) };
    let (mut input, len): (Box<dyn Read>, Option<u64>) = if stdin {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(path).io_ctx(format_args!("opening {}", path.display()))?;
        let len = f.metadata().io_ctx(&what)?.len();
        (Box::new(f), Some(len))
    };
    let store = ctx.open_store()?;
    let v = resolve_volume(&store, volume)?;
    let label = format!("volume {:?} ({})", v.name, v.id);
    let what = format!("{what} to {label}");
    if let Some(len) = len {
        if offset.checked_add(len).is_none_or(|end| end > v.size_bytes) {
            return Err(range_error(&label, offset, len, v.size_bytes).context(&what));
        }
    }
    let vol = store.open_volume(v.id).ctx(&what)?;
    let bar = match len {
        Some(l) => progress::bytes(ctx, l, "write"),
        None => indicatif::ProgressBar::hidden(),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf).io_ctx(&what)?;
        if n == 0 {
            break;
        }
        vol.write_at(&buf[..n], offset + done).ctx(format_args!("{what} at byte {}", offset + done))?;
        done += n as u64;
        bar.set_position(done);
    }
    vol.flush().ctx(format_args!("{what}: flushing"))?;
    bar.finish_and_clear();
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume_id: String,
            offset: u64,
            bytes: u64,
        }
        ctx.print_json(&Out { volume_id: v.id.to_string(), offset, bytes: done })?;
    } else {
        ctx.say(format_args!("wrote {done} bytes to {label} at offset {offset}"))?;
    }
    drop(vol);
    close(store)
}

/// `volume read VOL --offset N --length N [--snapshot SNAP] [FILE]`.
pub fn read(
    ctx: &Ctx,
    volume: &str,
    offset: u64,
    length: u64,
    snapshot: Option<&str>,
    path: Option<&Path>,
) -> CliResult {
    if ctx.json && path.is_none() {
        return Err(CliError::usage("--json needs an output FILE for `volume read` (the data itself goes to stdout)"));
    }
    let store = ctx.open_store()?;
    let src = open_source(&store, volume, snapshot)?;
    let size = src.handle.size();
    let what = format!("reading {}", src.label);
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(range_error(&src.label, offset, length, size).context(&what));
    }
    let (mut out, target): (Box<dyn Write>, String) = match path {
        Some(p) => (
            Box::new(io::BufWriter::new(File::create(p).io_ctx(format_args!("{what}: creating {}", p.display()))?)),
            p.display().to_string(),
        ),
        None => (Box::new(ctx.out()), "stdout".into()),
    };
    let what_out = format!("{what}: writing to {target}");
    let mut buf = vec![0u8; CHUNK.min(length as usize)];
    let mut done = 0u64;
    while done < length {
        let n = (length - done).min(buf.len() as u64) as usize;
        src.handle.read_at(&mut buf[..n], offset + done).ctx(format_args!("{what} at byte {}", offset + done))?;
        out.write_all(&buf[..n]).io_ctx(&what_out)?;
        done += n as u64;
    }
    out.flush().io_ctx(&what_out)?;
    drop(out);
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            volume_id: String,
            snapshot_id: Option<String>,
            offset: u64,
            bytes: u64,
            file: String,
        }
        ctx.print_json(&Out {
            volume_id: src.volume_id.to_string(),
            snapshot_id: src.snapshot.as_ref().map(|s| s.id.to_string()),
            offset,
            bytes: done,
            file: target,
        })?;
    } else if path.is_some() {
        ctx.say(format_args!("read {done} bytes of {} at offset {offset} into {target}", src.label))?;
    }
    drop(src);
    close(store)
}
