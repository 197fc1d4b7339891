//! `cowvol demo`: a guided tour of the engine in a temporary store, one
//! table row per step with its time and the space the store uses.

use super::error::{code, out_err, CliError, CliResult, LibContext};
use super::fmt;
use super::json::ProblemJson;
use super::{open_at, Ctx};
use cowvol::testing::SplitMix64 as Rng;
use cowvol::{
    Error, ForkOptions, RestoreOptions, SnapshotOptions, SnapshotPolicy, Store, StoreOptions, TemplateOptions, Volume,
    VolumeOptions,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VOLUME_SIZE: u64 = 1 << 30;
const SEQ_BYTES: u64 = 64 << 20;
const BIG: usize = 1 << 20;
const SMALL: usize = 4 << 10;
const RANDOM_WRITES: usize = 256;
const OVERWRITE_AT: u64 = 16 << 20;
const OVERWRITE_BYTES: u64 = 16 << 20;
const OVERWRITE_RANDOM: usize = 64;
const VERIFY_CHUNK: u64 = 8 << 20;

/// Removes the temporary store when the demo ends, however it ends.
struct TempStore(PathBuf);

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a volume should contain, in 4 KiB pieces; absent pieces are zero.
#[derive(Clone, Default)]
struct Model(BTreeMap<u64, Box<[u8]>>);

impl Model {
    fn write(&mut self, data: &[u8], offset: u64) {
        debug_assert!(offset.is_multiple_of(SMALL as u64) && data.len().is_multiple_of(SMALL));
        for (i, piece) in data.chunks(SMALL).enumerate() {
            self.0.insert(offset / SMALL as u64 + i as u64, piece.into());
        }
    }

    fn expected(&self, offset: u64, out: &mut [u8]) {
        out.fill(0);
        let first = offset / SMALL as u64;
        let end = first + (out.len() / SMALL) as u64;
        for (&k, piece) in self.0.range(first..end) {
            let at = ((k - first) as usize) * SMALL;
            out[at..at + SMALL].copy_from_slice(piece);
        }
    }
}

/// Writes to the volume and to its model.
fn write_both(vol: &Volume, model: &mut Model, data: &[u8], offset: u64, what: &str) -> CliResult {
    vol.write_at(data, offset).ctx(format_args!("demo: {what} at byte {offset}"))?;
    model.write(data, offset);
    Ok(())
}

/// Reads the whole volume back and compares it with the model.
fn verify(vol: &Volume, model: &Model, what: &str) -> CliResult<u64> {
    let size = vol.size();
    let mut got = vec![0u8; VERIFY_CHUNK as usize];
    let mut want = vec![0u8; VERIFY_CHUNK as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(VERIFY_CHUNK) as usize;
        vol.read_at(&mut got[..n], off).ctx(format_args!("demo: verifying {what}: reading at byte {off}"))?;
        model.expected(off, &mut want[..n]);
        if got[..n] != want[..n] {
            let at = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b).unwrap_or(0) as u64;
            return Err(CliError::new(
                code::FAILURE,
                format!("demo: verifying {what}: contents differ from what was written at byte {}", off + at),
            )
            .hint("this is a bug in cowvol; run `cowvol check` on the store"));
        }
        off += n as u64;
    }
    Ok(size)
}

/// One row of the tour.
#[derive(Serialize)]
struct StepJson {
    step: usize,
    action: String,
    detail: String,
    micros: u64,
    physical_bytes: u64,
    shared_blocks: u64,
    data_blocks: u64,
}

#[derive(Serialize)]
struct DemoJson {
    store: String,
    temporary: bool,
    steps: Vec<StepJson>,
    verified: bool,
    total_micros: u64,
}

const COLS: [(&str, usize, bool); 7] = [
    ("#", 2, true),
    ("STEP", 15, false),
    ("WHAT HAPPENED", 53, false),
    ("TIME", 9, true),
    ("PHYSICAL", 10, true),
    ("SHARED", 7, true),
    ("BLOCKS", 7, true),
];

fn row_line(cells: &[String]) -> String {
    let mut s = String::new();
    for (i, ((_, w, right), c)) in COLS.iter().zip(cells).enumerate() {
        if i > 0 {
            s.push_str("  ");
        }
        let mut c = c.clone();
        if c.chars().count() > *w {
            c = c.chars().take(w - 1).collect::<String>() + "…";
        }
        let pad = w.saturating_sub(c.chars().count());
        if *right {
            s.push_str(&" ".repeat(pad));
            s.push_str(&c);
        } else {
            s.push_str(&c);
            s.push_str(&" ".repeat(pad));
        }
    }
    s.trim_end().to_string()
}

struct Tour<'a> {
    ctx: &'a Ctx,
    steps: Vec<StepJson>,
    human: bool,
}

impl Tour<'_> {
    fn print(&self, line: impl std::fmt::Display) -> CliResult {
        if self.human {
            let mut out = self.ctx.out();
            writeln!(out, "{line}").and_then(|()| out.flush()).map_err(out_err)?;
        }
        Ok(())
    }

    fn header(&self) -> CliResult {
        let names: Vec<String> = COLS.iter().map(|c| c.0.to_string()).collect();
        self.print(row_line(&names))?;
        let rules: Vec<String> = COLS.iter().map(|c| "─".repeat(c.1)).collect();
        self.print(row_line(&rules))
    }

    fn step(&mut self, store: &Store, action: &str, detail: String, took: Duration) -> CliResult {
        let s = store.stats();
        let row = StepJson {
            step: self.steps.len() + 1,
            action: action.into(),
            detail,
            micros: took.as_micros() as u64,
            physical_bytes: s.physical_bytes,
            shared_blocks: s.shared_blocks,
            data_blocks: s.data_blocks,
        };
        self.print(row_line(&[
            row.step.to_string(),
            row.action.clone(),
            row.detail.clone(),
            fmt::duration(took),
            fmt::bytes(row.physical_bytes),
            row.shared_blocks.to_string(),
            row.data_blocks.to_string(),
        ]))?;
        self.steps.push(row);
        Ok(())
    }
}

/// Times `f`.
fn timed<T>(f: impl FnOnce() -> CliResult<T>) -> CliResult<(T, Duration)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed()))
}

fn free_names(store: &Store) -> (String, String) {
    for n in 1.. {
        let suffix = if n == 1 { String::new() } else { format!("-{n}") };
        let (a, b) = (format!("demo{suffix}"), format!("demo{suffix}-fork"));
        if store.volume_by_name(&a).is_none() && store.volume_by_name(&b).is_none() {
            return (a, b);
        }
    }
    unreachable!("names run out")
}

/// The snapshot lifecycle: a hold that refuses a delete, a template and a
/// volume made from it, a group snapshot, and a policy run over a
/// simulated day.
fn lifecycle_tour(
    tour: &mut Tour<'_>,
    store: &Store,
    (name, id): (&str, cowvol::VolumeId),
    snap: &cowvol::SnapshotInfo,
    golden: &Model,
) -> CliResult {
    let ((), took) = timed(|| {
        store.hold_snapshot(id, snap.id).ctx("demo: holding the snapshot")?;
        match store.delete_snapshot(id, snap.id) {
            Err(Error::Held { .. }) => {}
            other => {
                return Err(CliError::new(code::FAILURE, format!("demo: deleting a held snapshot gave {other:?}")))
            }
        }
        store.release_snapshot(id, snap.id).ctx("demo: releasing the snapshot").map(drop)
    })?;
    tour.step(store, "hold", format!("{} held: delete refused with Held; released", snap.name), took)?;

    let tmpl_name = format!("{name}-template");
    let ((tmpl, from_tmpl), took) = timed(|| {
        let t = store
            .create_template(snap.id, TemplateOptions::named(tmpl_name.clone()))
            .ctx(format_args!("demo: creating template {tmpl_name:?}"))?;
        let v = store
            .create_volume_from_template(t.id, VolumeOptions::new(format!("{name}-from-template"), 0))
            .ctx("demo: creating a volume from the template")?;
        Ok((t, v))
    })?;
    tour.step(store, "template", format!("{} + a volume made from it: O(1) each", tmpl.name), took)?;
    let tvol = store.open_volume(from_tmpl.id).ctx("demo: opening the volume made from the template")?;
    let (n, took) = timed(|| verify(&tvol, golden, "the volume made from the template"))?;
    tour.step(store, "verify template", format!("verified: all {} equal snapshot {}", fmt::bytes(n), snap.name), took)?;
    drop(tvol);

    let (group, took) = timed(|| {
        store
            .create_group_snapshot(&[id, from_tmpl.id], SnapshotOptions::named("group"))
            .ctx("demo: taking a group snapshot")
    })?;
    tour.step(store, "group snapshot", format!("{} volumes at one instant, one atomic step", group.len()), took)?;

    let policy = SnapshotPolicy { interval_secs: 3600, keep_last: Some(3), keep_for_secs: None };
    let start = 1_800_000_000;
    let (counts, took) = timed(|| {
        store.set_policy(from_tmpl.id, Some(policy)).ctx("demo: setting a snapshot policy")?;
        let (mut created, mut pruned) = (0, 0);
        for hour in 0..24 {
            let run = store.run_policies(start + hour * 3600);
            if let Some((v, e)) = run.errors.into_iter().next() {
                return Err(CliError::new(code::FAILURE, format!("demo: policy run on {v}: {e}")));
            }
            created += run.created.len();
            pruned += run.pruned.len();
        }
        store.set_policy(from_tmpl.id, None).ctx("demo: clearing the policy")?;
        Ok((created, pruned))
    })?;
    tour.step(
        store,
        "policy",
        format!("hourly, keep 3, simulated day: {} taken, {} pruned", counts.0, counts.1),
        took,
    )?;
    Ok(())
}

/// Runs the tour.
pub fn run(ctx: &Ctx) -> CliResult {
    let started = Instant::now();
    let temporary = !ctx.store_explicit;
    let dir = if temporary {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        std::env::temp_dir().join(format!("cowvol-demo-{}-{nanos:09}", std::process::id()))
    } else {
        ctx.store_dir.clone()
    };
    // Declared before the store so that it is dropped after it.
    let cleanup = temporary.then(|| TempStore(dir.clone()));
    let mut tour = Tour { ctx, steps: Vec::new(), human: !ctx.json && !ctx.quiet };
    let mib = |n: u64| fmt::bytes(n);
    let where_ = if temporary { "temporary, removed at the end" } else { "kept" };
    tour.print(format_args!("cowvol demo: store {} ({where_})\n", dir.display()))?;
    tour.header()?;

    let (store, took) = timed(|| open_at(&dir, StoreOptions::default()))?;
    let bs = store.block_size();
    tour.step(
        &store,
        "open store",
        format!("{} store, {} blocks", if temporary { "new" } else { "opened" }, mib(bs.into())),
        took,
    )?;

    let (name, fork_name) = free_names(&store);
    let (info, took) = timed(|| {
        store
            .create_volume(VolumeOptions::new(name.clone(), VOLUME_SIZE))
            .ctx(format_args!("demo: creating volume {name:?}"))
    })?;
    let vol = store.open_volume(info.id).ctx("demo: opening the volume")?;
    tour.step(
        &store,
        "create volume",
        format!("{} ({}): {}, nothing allocated yet", info.name, info.id, mib(VOLUME_SIZE)),
        took,
    )?;

    let mut rng = Rng(0x00c0_ffee);
    let mut live = Model::default();
    let mut buf = vec![0u8; BIG];
    let ((), took) = timed(|| {
        for i in 0..SEQ_BYTES / BIG as u64 {
            rng.fill(&mut buf);
            write_both(&vol, &mut live, &buf, i * BIG as u64, "sequential write")?;
        }
        Ok(())
    })?;
    tour.step(
        &store,
        "write",
        format!("{} as {} × 1 MiB writes, {}", mib(SEQ_BYTES), SEQ_BYTES / BIG as u64, fmt::rate(SEQ_BYTES, took)),
        took,
    )?;

    let mut small = vec![0u8; SMALL];
    let mut random_writes = |rng: &mut Rng, live: &mut Model, n: usize| -> CliResult {
        for _ in 0..n {
            rng.fill(&mut small);
            let off = rng.below(VOLUME_SIZE / SMALL as u64) * SMALL as u64;
            write_both(&vol, live, &small, off, "random write")?;
        }
        Ok(())
    };
    let ((), took) = timed(|| random_writes(&mut rng, &mut live, RANDOM_WRITES))?;
    tour.step(
        &store,
        "random writes",
        format!("{RANDOM_WRITES} × 4 KiB at random offsets across {}", mib(VOLUME_SIZE)),
        took,
    )?;

    let ((), took) = timed(|| vol.flush().ctx("demo: flushing"))?;
    tour.step(&store, "flush", "one sync: every write above is durable".into(), took)?;

    let (snap, took) = timed(|| {
        store.create_snapshot(info.id, SnapshotOptions::named("base")).ctx("demo: creating snapshot \"base\"")
    })?;
    let golden = live.clone();
    tour.step(&store, "snapshot", format!("{} ({}): O(1), shares every block", snap.name, snap.id), took)?;

    let ((), took) = timed(|| {
        let mut off = OVERWRITE_AT;
        while off < OVERWRITE_AT + OVERWRITE_BYTES {
            rng.fill(&mut buf);
            write_both(&vol, &mut live, &buf, off, "overwrite")?;
            off += BIG as u64;
        }
        random_writes(&mut rng, &mut live, OVERWRITE_RANDOM)?;
        vol.flush().ctx("demo: flushing")
    })?;
    tour.step(
        &store,
        "overwrite",
        format!(
            "{} at offset {} + {OVERWRITE_RANDOM} × 4 KiB random, flushed",
            mib(OVERWRITE_BYTES),
            mib(OVERWRITE_AT)
        ),
        took,
    )?;

    let (fork, took) = timed(|| {
        store
            .fork_volume(
                info.id,
                ForkOptions { name: fork_name.clone(), from_snapshot: Some(snap.id), ..Default::default() },
            )
            .ctx(format_args!("demo: forking snapshot {} into {fork_name:?}", snap.id))
    })?;
    let fork_vol = store.open_volume(fork.id).ctx("demo: opening the fork")?;
    tour.step(&store, "fork", format!("{} ({}) from snapshot {}: O(1)", fork.name, fork.id, snap.name), took)?;

    let (n, took) = timed(|| verify(&fork_vol, &golden, "the fork"))?;
    tour.step(&store, "verify fork", format!("verified: all {} read back equal snapshot {}", mib(n), snap.name), took)?;

    let mut fork_model = golden.clone();
    let ((), took) = timed(|| {
        rng.fill(&mut buf);
        write_both(&fork_vol, &mut fork_model, &buf, 0, "writing the fork")?;
        fork_vol.flush().ctx("demo: flushing the fork")
    })?;
    tour.step(&store, "write fork", "1 MiB at offset 0 of the fork, flushed".into(), took)?;

    let safety_opts = SnapshotOptions::named("before-restore");
    let (restored, took) = timed(|| {
        store
            .restore_snapshot(
                info.id,
                snap.id,
                RestoreOptions { safety_snapshot: Some(safety_opts), ..Default::default() },
            )
            .ctx(format_args!("demo: restoring {} to {}", info.id, snap.id))
    })?;
    let pre_restore = std::mem::replace(&mut live, golden.clone());
    let safety = restored.safety_snapshot.ok_or_else(|| CliError::new(code::FAILURE, "demo: no safety snapshot"))?;
    tour.step(&store, "restore", format!("{} back to {}: O(1); undone state kept", info.name, snap.name), took)?;

    let (n, took) = timed(|| verify(&vol, &live, "the restored volume"))?;
    tour.step(
        &store,
        "verify volume",
        format!("verified: all {} equal {}; fork's write not seen", mib(n), snap.name),
        took,
    )?;

    let safety_vol = store.open_snapshot(info.id, safety.id).ctx("demo: opening the safety snapshot")?;
    let (n, took) = timed(|| verify(&safety_vol, &pre_restore, "the safety snapshot"))?;
    tour.step(&store, "verify safety", format!("verified: {} holds the undone {}", safety.name, mib(n)), took)?;
    drop(safety_vol);

    lifecycle_tour(&mut tour, &store, (&info.name, info.id), &snap, &golden)?;

    let (deleted, took) =
        timed(|| store.delete_snapshot(info.id, snap.id).ctx(format_args!("demo: deleting snapshot {}", snap.id)))?;
    tour.step(
        &store,
        "delete snapshot",
        format!(
            "{} {}; volume and fork keep their blocks",
            snap.name,
            if deleted.existed { "deleted" } else { "was already gone" }
        ),
        took,
    )?;

    let (n, took) = timed(|| verify(&fork_vol, &fork_model, "the fork after the snapshot's deletion"))?;
    tour.step(&store, "verify fork", format!("verified: all {} = snapshot data + its own write", mib(n)), took)?;

    let (report, took) = timed(|| store.check().ctx("demo: checking the store"))?;
    if !report.is_clean() {
        return Err(CliError::new(
            code::FAILURE,
            format!(
                "demo: check found {} problem(s); first: {}",
                report.problems.len(),
                report.problems.first().map(|p| ProblemJson::new(p).message).unwrap_or_default()
            ),
        ));
    }
    tour.step(
        &store,
        "check",
        format!("clean: {} volumes, {} snapshots, {} tree nodes", report.volumes, report.snapshots, report.nodes),
        took,
    )?;

    let (scrub, took) = timed(|| store.scrub().ctx("demo: scrubbing the store"))?;
    if !scrub.is_clean() {
        return Err(CliError::new(
            code::FAILURE,
            format!("demo: scrub found {} damaged block(s)", scrub.damaged.len()),
        ));
    }
    tour.step(&store, "scrub", format!("{} blocks read, every checksum matches", scrub.blocks_checked), took)?;

    drop(vol);
    drop(fork_vol);
    store.close().ctx("demo: closing the store")?;
    let total = started.elapsed();
    tour.print(
        "\nPHYSICAL: distinct data stored; SHARED: blocks seen by more than one volume or snapshot;\n\
         BLOCKS: distinct data blocks referenced.",
    )?;
    tour.print(format_args!(
        "verified: the restored volume and the fork read back exactly what was written ({} steps, {} total)",
        tour.steps.len(),
        fmt::duration(total)
    ))?;
    if temporary {
        drop(cleanup);
        tour.print("removed the temporary store")?;
    } else {
        tour.print(format_args!("kept the store: try `cowvol --store {} volume list`", dir.display()))?;
    }
    if ctx.json {
        ctx.print_json(&DemoJson {
            store: dir.display().to_string(),
            temporary,
            steps: std::mem::take(&mut tour.steps),
            verified: true,
            total_micros: total.as_micros() as u64,
        })?;
    }
    Ok(())
}
