//! `cowvol bench`: the performance workloads beside the raw disk, as a table
//! or as JSON.

use super::args::BenchArgs;
use super::error::{out_err, CliResult, LibContext};
use super::fmt::{Align, Table};
use super::{progress, Ctx};
use cowvol::bench::{self, BenchOptions, BenchReport};
use serde::Serialize;
use std::io::Write;

#[derive(Serialize)]
struct WorkloadJson<'a> {
    name: &'a str,
    unit: &'a str,
    cowvol: f64,
    raw: Option<f64>,
    ratio: Option<f64>,
}

#[derive(Serialize)]
struct LatencyJson {
    mapped_blocks: u64,
    create_us: f64,
    fork_us: f64,
    restore_us: f64,
    delete_us: f64,
    raw_fdatasync_us: f64,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    workloads: Vec<WorkloadJson<'a>>,
    snapshot_latency: Vec<LatencyJson>,
}

/// `bench [--quick] [--dir DIR] [--sizes N,N,...]`.
pub fn run(ctx: &Ctx, a: BenchArgs) -> CliResult {
    let dir = a.dir.unwrap_or_else(|| std::env::temp_dir().join(format!("cowvol-bench-{}", std::process::id())));
    let mut opts = BenchOptions::new(&dir, a.quick);
    if let Some(sizes) = a.sizes {
        opts.snapshot_sizes = sizes;
    }
    let spin = progress::spinner(ctx, "benchmarking");
    let report = bench::run(&opts, &mut |step| spin.set_message(format!("benchmarking: {step}")));
    spin.finish_and_clear();
    let _ = std::fs::remove_dir_all(&dir);
    let report = report.ctx(format!("benchmarking in {}", dir.display()))?;
    if ctx.json {
        return ctx.print_json(&to_json(&report));
    }
    let mut t = Table::new(&[
        ("workload", Align::Left),
        ("unit", Align::Left),
        ("cowvol", Align::Right),
        ("raw", Align::Right),
        ("ratio", Align::Right),
    ]);
    for w in &report.workloads {
        t.row(vec![
            w.name.clone(),
            w.unit.clone(),
            num(w.cowvol),
            w.raw.map(num).unwrap_or_else(|| "-".into()),
            w.ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = ctx.out();
    t.print(&mut out, "").map_err(out_err)?;
    writeln!(out).map_err(out_err)?;
    let mut l = Table::new(&[
        ("mapped blocks", Align::Right),
        ("create us", Align::Right),
        ("fork us", Align::Right),
        ("restore us", Align::Right),
        ("delete us", Align::Right),
        ("raw fdatasync us", Align::Right),
    ]);
    for s in &report.snapshot_latency {
        l.row(vec![
            s.mapped_blocks.to_string(),
            num(s.create_us),
            num(s.fork_us),
            num(s.restore_us),
            num(s.delete_us),
            num(s.raw_fdatasync_us),
        ]);
    }
    l.print(&mut out, "").map_err(out_err)
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn to_json(r: &BenchReport) -> ReportJson<'_> {
    ReportJson {
        workloads: r
            .workloads
            .iter()
            .map(|w| WorkloadJson { name: &w.name, unit: &w.unit, cowvol: w.cowvol, raw: w.raw, ratio: w.ratio })
            .collect(),
        snapshot_latency: r
            .snapshot_latency
            .iter()
            .map(|s| LatencyJson {
                mapped_blocks: s.mapped_blocks,
                create_us: s.create_us,
                fork_us: s.fork_us,
                restore_us: s.restore_us,
                delete_us: s.delete_us,
                raw_fdatasync_us: s.raw_fdatasync_us,
            })
            .collect(),
    }
}
