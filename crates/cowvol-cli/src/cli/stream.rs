//! `cowvol snapshot diff | send | receive`: changed extents between two
//! points, and snapshots moved between stores as streams
//! (`cowvol::stream`).

use super::error::{CliError, CliResult, IoContext, LibContext};
use super::fmt::{self, Align, Table};
use super::json::SnapshotJson;
use super::{close, progress, resolve_snapshot, resolve_volume, resolve_volume_id, Ctx};
use cowvol::stream::{self, Progress, ReceiveOptions, SendOptions};
use cowvol::{DiffPoint, SnapshotInfo, Store};
use serde::Serialize;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Write};
use std::path::Path;

/// Progress bars for send and receive go to stderr, and are drawn when
/// stderr is a terminal: their stdout or stdin is usually the stream.
fn show_progress(ctx: &Ctx) -> bool {
    !ctx.quiet && !ctx.json && io::stderr().is_terminal()
}

#[derive(Serialize)]
struct ExtentJson {
    offset: u64,
    length: u64,
    data: bool,
}

#[derive(Serialize)]
struct DiffOut {
    from: String,
    to: String,
    size_bytes: u64,
    block_size: u32,
    data_bytes: u64,
    hole_bytes: u64,
    nodes_visited: u64,
    extents: Vec<ExtentJson>,
}

/// The `to` side of a diff: `-` is the live volume, else a snapshot.
fn diff_target(store: &Store, volume: &str, to: &str) -> CliResult<(DiffPoint, String)> {
    if to == "-" {
        let v = resolve_volume(store, volume)?;
        return Ok((DiffPoint::Volume(v.id), format!("{} (live)", v.name)));
    }
    let (vid, _) = resolve_volume_id(store, volume)?;
    let s = resolve_snapshot(store, vid, volume, to)?;
    Ok((DiffPoint::Snapshot(s.id), format!("{} ({})", s.name, s.id)))
}

pub fn diff(ctx: &Ctx, volume: &str, from: &str, to: &str, to_volume: Option<&str>) -> CliResult {
    let store = ctx.open_store()?;
    let (vid, _) = resolve_volume_id(&store, volume)?;
    let a = resolve_snapshot(&store, vid, volume, from)?;
    let (b, to_label) = diff_target(&store, to_volume.unwrap_or(volume), to)?;
    let from_label = format!("{} ({})", a.name, a.id);
    let d = store.diff(a.id, b).ctx(format!("comparing {from_label} with {to_label}"))?;
    if ctx.json {
        ctx.print_json(&DiffOut {
            from: a.id.to_string(),
            to: match b {
                DiffPoint::Volume(v) => v.to_string(),
                DiffPoint::Snapshot(s) => s.to_string(),
                DiffPoint::Template(t) => t.to_string(),
            },
            size_bytes: d.size_bytes,
            block_size: d.block_size,
            data_bytes: d.data_bytes(),
            hole_bytes: d.hole_bytes(),
            nodes_visited: d.cost.nodes_visited,
            extents: d.extents.iter().map(|e| ExtentJson { offset: e.offset, length: e.len, data: e.data }).collect(),
        })?;
        return close(store);
    }
    if !ctx.quiet {
        let mut t = Table::new(&[("OFFSET", Align::Right), ("LENGTH", Align::Right), ("TO HOLDS", Align::Left)]);
        for e in &d.extents {
            t.row(vec![e.offset.to_string(), fmt::bytes(e.len), if e.data { "data" } else { "hole" }.into()]);
        }
        let mut out = ctx.out();
        t.print(&mut out, "no differences").map_err(super::error::out_err)?;
    }
    let n = d.extents.len();
    ctx.say(format_args!(
        "{from_label} -> {to_label}: {n} {}, {} of data changed, {} discarded ({} tree nodes read)",
        if n == 1 { "extent" } else { "extents" },
        fmt::bytes(d.data_bytes()),
        fmt::bytes(d.hole_bytes()),
        d.cost.nodes_visited
    ))?;
    close(store)
}

#[derive(Serialize)]
struct SentOut {
    snapshot: String,
    from: Option<String>,
    stream_bytes: u64,
    frames: u64,
    data_bytes: u64,
    hole_bytes: u64,
}

pub fn send(
    ctx: &Ctx,
    volume: &str,
    snapshot: &str,
    from: Option<&str>,
    output: Option<&Path>,
    resume_from_frame: u64,
) -> CliResult {
    if output.is_none() && io::stdout().is_terminal() {
        return Err(CliError::usage("refusing to write a binary stream to a terminal")
            .hint("give -o FILE, or pipe stdout into `cowvol snapshot receive`"));
    }
    let store = ctx.open_store()?;
    let (vid, _) = resolve_volume_id(&store, volume)?;
    let snap = resolve_snapshot(&store, vid, volume, snapshot)?;
    let base = from.map(|f| resolve_snapshot(&store, vid, volume, f)).transpose()?;
    let mut sink: Box<dyn Write> = match output {
        Some(p) => Box::new(BufWriter::new(File::create(p).io_ctx(format!("creating {}", p.display()))?)),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let bar = progress::bytes_when(show_progress(ctx), 0, &format!("sending {}", snap.name));
    let mut report = |p: Progress| {
        bar.set_length(p.data_bytes_total);
        bar.set_position(p.data_bytes);
    };
    let opts = SendOptions { from: base.as_ref().map(|b| b.id), resume_from_frame };
    let sent = stream::send(&store, snap.id, &opts, &mut sink, &mut report)
        .ctx(format!("sending snapshot {:?} of volume {volume:?}", snap.name))?;
    drop(sink);
    bar.finish_and_clear();
    let Some(path) = output else {
        // Stdout carries the stream: the summary goes to stderr.
        if !ctx.quiet && !ctx.json {
            eprintln!("sent {}: {} in {} frames", snap.name, fmt::bytes(sent.stream_bytes), sent.frames);
        }
        return close(store);
    };
    if ctx.json {
        ctx.print_json(&SentOut {
            snapshot: snap.id.to_string(),
            from: base.map(|b| b.id.to_string()),
            stream_bytes: sent.stream_bytes,
            frames: sent.frames,
            data_bytes: sent.data_bytes,
            hole_bytes: sent.hole_bytes,
        })?;
    } else {
        let kind = if base.is_some() { "incremental stream" } else { "full stream" };
        ctx.say(format_args!(
            "wrote a {kind} of {} ({}) to {}: {} ({} of data, {} of holes)",
            snap.name,
            snap.id,
            path.display(),
            fmt::bytes(sent.stream_bytes),
            fmt::bytes(sent.data_bytes),
            fmt::bytes(sent.hole_bytes)
        ))?;
    }
    close(store)
}

#[derive(Serialize)]
struct ReceivedOut {
    snapshot: SnapshotJson,
    stream_bytes: u64,
    data_bytes: u64,
    hole_bytes: u64,
    frames_applied: u64,
    frames_skipped: u64,
}

#[derive(Serialize)]
struct PendingOut {
    key: String,
    staging_volume: String,
    next_frame: u64,
    acknowledged_bytes: u64,
}

pub fn receive(
    ctx: &Ctx,
    input: Option<&Path>,
    as_name: Option<String>,
    resume: bool,
    pending: bool,
    abort: Option<&str>,
) -> CliResult {
    let store = ctx.open_store()?;
    if pending {
        return list_pending(ctx, store);
    }
    if let Some(key) = abort {
        let existed = stream::abort_receive(&store, key).ctx(format!("aborting receive {key}"))?;
        if !existed {
            return Err(CliError::not_found(format!("no interrupted receive has key {key:?}"))
                .hint("`cowvol snapshot receive --pending` lists them"));
        }
        ctx.say(format_args!("discarded the interrupted receive {key}"))?;
        return close(store);
    }
    let bar = progress::bytes_when(show_progress(ctx), 0, "receiving");
    let mut report = |p: Progress| {
        bar.set_length(p.data_bytes_total);
        bar.set_position(p.data_bytes);
    };
    let opts = ReceiveOptions { volume_name: as_name, resume, ..Default::default() };
    // A file is seekable: a resumed receive jumps over what it acknowledged.
    let got = match input {
        Some(p) => {
            let mut file = BufReader::new(File::open(p).io_ctx(format!("opening {}", p.display()))?);
            stream::receive_seekable(&store, &mut file, &opts, &mut report)
        }
        None => stream::receive(&store, &mut BufReader::new(io::stdin().lock()), &opts, &mut report),
    }
    .ctx("receiving a snapshot stream")?;
    bar.finish_and_clear();
    let s: &SnapshotInfo = &got.snapshot;
    if ctx.json {
        ctx.print_json(&ReceivedOut {
            snapshot: SnapshotJson::of(&store, s),
            stream_bytes: got.stream_bytes,
            data_bytes: got.data_bytes,
            hole_bytes: got.hole_bytes,
            frames_applied: got.frames_applied,
            frames_skipped: got.frames_skipped,
        })?;
    } else {
        let skipped = if got.frames_skipped > 0 {
            format!(", resumed past {} acknowledged frames", got.frames_skipped)
        } else {
            String::new()
        };
        ctx.say(format_args!(
            "received snapshot {} ({}) of volume {}: {} of data, {} of holes{skipped}",
            s.name,
            s.id,
            s.volume_name,
            fmt::bytes(got.data_bytes),
            fmt::bytes(got.hole_bytes)
        ))?;
    }
    close(store)
}

fn list_pending(ctx: &Ctx, store: Store) -> CliResult {
    let pending = stream::pending_receives(&store);
    if ctx.json {
        let list: Vec<PendingOut> = pending
            .iter()
            .map(|p| PendingOut {
                key: p.key.clone(),
                staging_volume: p.staging_volume.to_string(),
                next_frame: p.next_frame,
                acknowledged_bytes: p.acknowledged_bytes,
            })
            .collect();
        ctx.print_json(&list)?;
        return close(store);
    }
    let mut t = Table::new(&[("KEY", Align::Left), ("NEXT FRAME", Align::Right), ("ACKNOWLEDGED", Align::Right)]);
    for p in &pending {
        t.row(vec![p.key.clone(), p.next_frame.to_string(), fmt::bytes(p.acknowledged_bytes)]);
    }
    let mut out = ctx.out();
    t.print(&mut out, "no interrupted receives").map_err(super::error::out_err)?;
    drop(out);
    close(store)
}
