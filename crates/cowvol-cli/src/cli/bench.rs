//! `cowvol bench`: the performance workloads beside the raw disk, as a table
//! or as JSON.

use super::args::BenchArgs;
use super::error::{out_err, CliResult, LibContext};
use super::fmt::{Align, Table};
use super::{progress, Ctx};
use crate::bench_run::{self as bench, BenchOptions, BenchReport};
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
    // The bench works in a directory of its own and removes it afterwards:
    // inside `--dir`, never `--dir` itself, which may hold other files.
    let scratch = format!("cowvol-bench-{}", std::process::id());
    let dir = a.dir.unwrap_or_else(std::env::temp_dir).join(scratch);
    let mut opts = BenchOptions::new(&dir, a.quick);
    if let Some(sizes) = a.sizes {
        opts.snapshot_sizes = sizes;
    }
    if let Some(sizes) = a.scale_sizes {
        opts.scale_sizes = sizes;
    }
    if let Some(only) = a.only {
        opts.only = only;
    }
    let spin = progress::spinner(ctx, "benchmarking");
    let report = bench::run(&opts, &mut |step| spin.set_message(format!("benchmarking: {step}")));
    spin.finish_and_clear();
    let _ = std::fs::remove_dir_all(&dir);
    let report = report.ctx(format!("benchmarking in {}", dir.display()))?;
    if let Some(path) = &a.svg {
        std::fs::write(path, latency_svg(&report)).map_err(|e| {
            super::error::CliError::new(super::error::code::FAILURE, format!("writing {}: {e}", path.display()))
        })?;
    }
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

/// One line of the latency chart: label, colour and the field it plots.
type Series = (&'static str, &'static str, fn(&bench::SnapshotLatency) -> f64);

/// Draws the snapshot latency table: one line per operation, latency (µs,
/// linear) against mapped blocks (log scale), and the raw fdatasync line
/// for reference.
fn latency_svg(r: &BenchReport) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 170.0, 30.0, 50.0);
    let pts = &r.snapshot_latency;
    let xs: Vec<f64> = pts.iter().map(|p| (p.mapped_blocks.max(1) as f64).log10()).collect();
    let (xmin, xmax) = (xs.iter().cloned().fold(f64::MAX, f64::min), xs.iter().cloned().fold(f64::MIN, f64::max));
    let series: [Series; 5] = [
        ("create", "#1f77b4", |p| p.create_us),
        ("fork", "#2ca02c", |p| p.fork_us),
        ("restore", "#d62728", |p| p.restore_us),
        ("delete", "#9467bd", |p| p.delete_us),
        ("raw fdatasync", "#7f7f7f", |p| p.raw_fdatasync_us),
    ];
    let ymax = pts.iter().flat_map(|p| series.iter().map(move |s| (s.2)(p))).fold(1.0, f64::max) * 1.15;
    let px = |x: f64| left + if xmax > xmin { (x - xmin) / (xmax - xmin) } else { 0.5 } * (w - left - right);
    let py = |y: f64| top + (1.0 - y / ymax) * (h - top - bottom);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">cowvol snapshot, fork, restore and delete latency (median, µs) by mapped blocks</text>\n"
    );
    let (x0, y0, x1) = (left, h - bottom, w - right);
    svg += &format!("<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"black\"/>\n");
    svg += &format!("<line x1=\"{x0}\" y1=\"{top}\" x2=\"{x0}\" y2=\"{y0}\" stroke=\"black\"/>\n");
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        let y = py(v);
        svg += &format!(
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            x0 - 6.0,
            y + 4.0
        );
    }
    for (p, &x) in pts.iter().zip(&xs) {
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            px(x),
            y0 + 18.0,
            p.mapped_blocks
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">mapped blocks (log scale)</text>\n",
        (x0 + x1) / 2.0,
        h - 10.0
    );
    for (i, (name, color, f)) in series.iter().enumerate() {
        let path: Vec<String> = pts.iter().zip(&xs).map(|(p, &x)| format!("{:.1},{:.1}", px(x), py(f(p)))).collect();
        let dash = if *name == "raw fdatasync" { " stroke-dasharray=\"5,4\"" } else { "" };
        svg += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\n",
            path.join(" ")
        );
        for (p, &x) in pts.iter().zip(&xs) {
            svg += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n", px(x), py(f(p)));
        }
        let ly = top + 20.0 + i as f64 * 20.0;
        svg += &format!(
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{name}</text>\n",
            x1 + 15.0,
            x1 + 40.0,
            x1 + 46.0,
            ly + 4.0
        );
    }
    svg += "</svg>\n";
    svg
}

/// `bench-probe DIR` (hidden): one probe of the scale figures, as JSON;
/// or the build of a keyed store, or random overwrites of one.
pub fn probe(_ctx: &Ctx, dir: &std::path::Path, build: Option<u64>, overwrite: Option<u64>, seed: u64) -> CliResult {
    if let Some(n) = build {
        return bench::build_keyed_store(dir, n).ctx(format!("building a keyed store in {}", dir.display()));
    }
    if let Some(bytes) = overwrite {
        let figures = bench::overwrite_keyed_store(dir, bytes, seed)
            .ctx(format!("overwriting the store in {}", dir.display()))?;
        let line = serde_json::to_string(&figures).map_err(|e| out_err(std::io::Error::other(e)))?;
        println!("{line}");
        return Ok(());
    }
    let p = bench::probe(dir).ctx(format!("probing the store in {}", dir.display()))?;
    let line = serde_json::to_string(&p).map_err(|e| out_err(std::io::Error::other(e)))?;
    println!("{line}");
    Ok(())
}
