//! Store-wide commands: init, check, scrub, stats.

use super::args::InitArgs;
use super::error::{code, out_err, CliError, CliResult, LibContext};
use super::fmt::{self, Align, Table};
use super::json::{CheckJson, DamagedJson, ScrubJson, StatsJson};
use super::{close, open_at, progress, Ctx};
use cowvol::StoreOptions;
use serde::Serialize;
use std::io::Write;

/// `init [--block-size SIZE]`.
pub fn init(ctx: &Ctx, a: InitArgs) -> CliResult {
    let dir = &ctx.store_dir;
    let existed = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    let mut opts = StoreOptions::default();
    if let Some(bs) = a.block_size {
        let bad = || CliError::usage(format!("block size {bs} must be a power of two from 4096 to 1048576"));
        opts.block_size = u32::try_from(bs).map_err(|_| bad())?;
        if !bs.is_power_of_two() || !(4096..=1 << 20).contains(&bs) {
            return Err(bad());
        }
    }
    let store = open_at(dir, opts)?;
    let bs = store.block_size();
    if existed && a.block_size.is_some_and(|want| want != u64::from(bs)) {
        return Err(CliError::new(
            code::FAILURE,
            format!(
                "initializing {}: the store already exists with block size {}; the block size is fixed when a store is created",
                dir.display(),
                fmt::bytes(bs.into())
            ),
        )
        .hint("use another --store directory for a different block size"));
    }
    if ctx.json {
        #[derive(Serialize)]
        struct Out {
            store: String,
            block_size: u32,
            created: bool,
        }
        ctx.print_json(&Out { store: dir.display().to_string(), block_size: bs, created: !existed })?;
    } else if existed {
        ctx.say(format_args!(
            "store {} already exists (block size {}); nothing to do",
            dir.display(),
            fmt::bytes(bs.into())
        ))?;
    } else {
        ctx.say(format_args!("initialized store {} (block size {})", dir.display(), fmt::bytes(bs.into())))?;
    }
    close(store)
}

/// `check`: exits 1 when any problem is found.
pub fn check(ctx: &Ctx) -> CliResult {
    let store = ctx.open_store()?;
    let spin = progress::spinner(ctx, "checking reference counts and tree nodes");
    let report = store.check();
    spin.finish_and_clear();
    let report = report.ctx("checking the store")?;
    let j = CheckJson::new(&report);
    if ctx.json {
        ctx.print_json(&j)?;
    } else if !ctx.quiet {
        let mut out = ctx.out();
        fmt::key_values(
            &mut out,
            &[
                ("volumes", report.volumes.to_string()),
                ("snapshots", report.snapshots.to_string()),
                ("templates", report.templates.to_string()),
                ("tree nodes", report.nodes.to_string()),
                ("data pages", report.data_pages.to_string()),
                ("problems", report.problems.len().to_string()),
            ],
        )
        .map_err(out_err)?;
        if !j.problems.is_empty() {
            writeln!(out).map_err(out_err)?;
            let mut t = Table::new(&[("PROBLEM", Align::Left), ("PAGE", Align::Right), ("DETAIL", Align::Left)]);
            for p in &j.problems {
                t.row(vec![p.kind.to_string(), p.page.map_or("-".into(), |x| x.to_string()), p.message.clone()]);
            }
            t.print(&mut out, "").map_err(out_err)?;
        } else {
            writeln!(out, "\nstore is consistent").map_err(out_err)?;
        }
    }
    close(store)?;
    match j.problems.first() {
        None => Ok(()),
        Some(first) => Err(CliError::new(
            code::FAILURE,
            format!(
                "check found {} problem(s) in store {}; first: {}",
                j.problems.len(),
                ctx.store_dir.display(),
                first.message
            ),
        )
        .hint("run `cowvol scrub` to see whether data is damaged; keep a copy of the store before repairing it")),
    }
}

fn seen_by(d: &DamagedJson) -> String {
    let all: Vec<String> = d
        .volumes
        .iter()
        .chain(&d.snapshots)
        .chain(&d.templates)
        .map(|s| format!("{} block {}", s.id, s.block))
        .collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(", ")
    }
}

/// `scrub`: exits 1 when any block is damaged.
pub fn scrub(ctx: &Ctx) -> CliResult {
    let store = ctx.open_store()?;
    let spin = progress::spinner(ctx, "reading and verifying every data block");
    let report = store.scrub();
    spin.finish_and_clear();
    let report = report.ctx("scrubbing the store")?;
    let j = ScrubJson::new(&report);
    if ctx.json {
        ctx.print_json(&j)?;
    } else if !ctx.quiet {
        let mut out = ctx.out();
        fmt::key_values(
            &mut out,
            &[
                ("blocks checked", report.blocks_checked.to_string()),
                ("bytes read", fmt::bytes(report.bytes_read)),
                ("damaged blocks", report.damaged.len().to_string()),
            ],
        )
        .map_err(out_err)?;
        if !j.damaged.is_empty() {
            writeln!(out).map_err(out_err)?;
            let mut t = Table::new(&[("PAGE", Align::Right), ("SEEN BY", Align::Left)]);
            for d in &j.damaged {
                t.row(vec![d.page.to_string(), seen_by(d)]);
            }
            t.print(&mut out, "").map_err(out_err)?;
        } else {
            writeln!(out, "\nevery block verified").map_err(out_err)?;
        }
    }
    close(store)?;
    match j.damaged.first() {
        None => Ok(()),
        Some(first) => Err(CliError::new(
            code::FAILURE,
            format!(
                "scrub found {} damaged block(s) in store {}; first: page {} seen by {}",
                j.damaged.len(),
                ctx.store_dir.display(),
                first.page,
                seen_by(first)
            ),
        )
        .hint("restore the affected volumes from an undamaged snapshot or backup")),
    }
}

/// `stats`.
pub fn stats(ctx: &Ctx) -> CliResult {
    let store = ctx.open_store()?;
    let s = store.stats();
    let j = StatsJson::new(&s, store.block_size());
    if ctx.json {
        ctx.print_json(&j)?;
    } else {
        let b = |n: u64| format!("{} ({n} bytes)", fmt::bytes(n));
        let blocks = |n: u64| format!("{n} ({})", fmt::bytes(n * u64::from(j.block_size)));
        fmt::key_values(
            &mut ctx.out(),
            &[
                ("block size", fmt::bytes(j.block_size.into())),
                ("volumes", j.volumes.to_string()),
                ("snapshots", j.snapshots.to_string()),
                ("templates", j.templates.to_string()),
                ("logical", b(j.logical_bytes)),
                ("mapped", b(j.mapped_bytes)),
                ("physical", b(j.physical_bytes)),
                ("data blocks", blocks(j.data_blocks)),
                ("shared blocks", blocks(j.shared_blocks)),
                ("tree nodes", j.tree_nodes.to_string()),
                ("metadata memory", b(j.metadata_memory_bytes)),
                ("node cache", b(j.node_cache_bytes)),
                ("file", b(j.file_bytes)),
                ("free in file", b(j.free_bytes)),
                ("in use", b(j.used_bytes)),
                ("punched", b(j.punched_bytes)),
                ("allocated on disk", b(j.allocated_bytes)),
            ],
        )
        .map_err(out_err)?;
    }
    close(store)
}
