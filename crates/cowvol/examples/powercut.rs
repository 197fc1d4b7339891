//! Workload and verifier for the `powercut` harness (a FUSE file system
//! that models a volatile disk cache and cuts the power at any operation).
//!
//! `powercut workload` writes numbered generations of blocks, flushing
//! every few writes and taking snapshots, and prints `BEGIN`/`ACK` lines;
//! halfway it writes and deletes a 16 MiB scratch volume and punches the
//! freed space, so later writes reuse punched (re-reserved) pages;
//! `powercut verify` reopens the recovered store and checks that every
//! acknowledged write and snapshot survived, that no block holds anything
//! but a whole generation that was begun, and that `check()` is clean.
//! Both use `$POWERCUT_DIR`; see docs/reliability.md for the command line.

use cowvol::{Error, SnapshotOptions, Store, StoreOptions, VolumeOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

const BS: usize = 4096;
const BLOCKS: u64 = 64;
const WRITES: u64 = 400;
/// The volume's size: large enough that its tree has interior nodes and
/// leaves below the root, which checkpoints write as delta records
/// (format 10) when their blocks are overwritten.
const VOLUME_BYTES: u64 = 256 << 30;

/// Where block `b` of the workload lives: the 64 blocks spread over four
/// subtrees under the root, four leaves in each.
fn offset(b: u64) -> u64 {
    ((b % 4) << 24 | (b / 4 % 4) << 16 | b) * BS as u64
}

fn content(b: u64, g: u64) -> Vec<u8> {
    let mut v = vec![0u8; BS];
    v[..8].copy_from_slice(&b.to_le_bytes());
    v[8..16].copy_from_slice(&g.to_le_bytes());
    for (i, x) in v[16..].iter_mut().enumerate() {
        *x = (b as u8) ^ (g as u8).wrapping_mul(29) ^ (i as u8);
    }
    v
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Every this many writes the workload closes the store and opens it again:
/// a session ends without a checkpoint when its log is short, and the next
/// one carries that log on, so cuts land in both.
const SESSION_WRITES: u64 = 70;

fn open_store(dir: &str) -> Result<Store, Error> {
    Store::open(format!("{dir}/store"), StoreOptions { checkpoint_wal_bytes: 64 << 10, ..Default::default() })
}

fn workload(dir: &str) -> Result<(), Error> {
    let mut store = open_store(dir)?;
    let id = match store.volume_by_name("pc") {
        Some(v) => v.id,
        None => store.create_volume(VolumeOptions::new("pc", VOLUME_BYTES))?.id,
    };
    say("ACK volume".into());
    let mut vol = store.open_volume(id)?;
    let mut unacked = Vec::new();
    for g in 1..=WRITES {
        if g % SESSION_WRITES == 0 {
            // Closing makes every write durable.
            drop(vol);
            store.close()?;
            for (b, g) in unacked.drain(..) {
                say(format!("ACK {b}:{g}"));
            }
            store = open_store(dir)?;
            vol = store.open_volume(id)?;
        }
        let b = (g * 7 + g / 3) % BLOCKS;
        say(format!("BEGIN {b}:{g}"));
        vol.write_at(&content(b, g), offset(b))?;
        unacked.push((b, g));
        if g % 4 == 0 {
            vol.flush()?;
            for (b, g) in unacked.drain(..) {
                say(format!("ACK {b}:{g}"));
            }
        }
        if g % 50 == 0 {
            store.create_snapshot(id, SnapshotOptions::named(format!("s{g}")))?;
            say(format!("ACK snap:s{g}"));
        }
        if g == WRITES / 2 {
            free_and_punch(&store)?;
        }
    }
    Ok(())
}

/// Writes a scratch volume, deletes it and punches the space it freed, so
/// a cut can land in the punching and later writes reuse punched pages.
/// The verifier ignores the scratch volume: it may or may not survive.
fn free_and_punch(store: &Store) -> Result<(), Error> {
    const SCRATCH: u64 = 16 << 20;
    if let Some(old) = store.volume_by_name("scratch") {
        store.delete_volume(old.id)?;
    }
    let id = store.create_volume(VolumeOptions::new("scratch", SCRATCH))?.id;
    let vol = store.open_volume(id)?;
    let chunk = vec![0x5a; 1 << 20];
    for off in (0..SCRATCH).step_by(chunk.len()) {
        vol.write_at(&chunk, off)?;
    }
    vol.flush()?;
    drop(vol);
    store.delete_volume(id)?;
    store.checkpoint()?;
    let punched = store.punch_free_space()?;
    say(format!("PUNCHED {punched}"));
    Ok(())
}

fn verify(dir: &str) -> Result<(), String> {
    let acks = std::fs::read_to_string(std::env::var("POWERCUT_ACKS").map_err(|e| e.to_string())?).unwrap_or_default();
    let out = std::fs::read_to_string(std::env::var("POWERCUT_STDOUT").map_err(|e| e.to_string())?).unwrap_or_default();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut snaps = BTreeSet::new();
    let mut volume_acked = false;
    for line in acks.lines() {
        if line == "volume" {
            volume_acked = true;
        } else if let Some(s) = line.strip_prefix("snap:") {
            snaps.insert(s.to_string());
        } else if let Some((b, g)) = line.split_once(':') {
            let (b, g) = (b.parse::<u64>().map_err(|e| e.to_string())?, g.parse::<u64>().map_err(|e| e.to_string())?);
            let e = acked.entry(b).or_default();
            *e = (*e).max(g);
        }
    }
    let mut begun: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for line in out.lines() {
        if let Some((b, g)) = line.strip_prefix("BEGIN ").and_then(|r| r.split_once(':')) {
            begun.entry(b.parse().unwrap_or(0)).or_default().insert(g.parse().unwrap_or(0));
        }
    }
    let store_dir = format!("{dir}/store");
    if !std::path::Path::new(&store_dir).join("cowvol.dat").exists() {
        return if volume_acked {
            Err("the store is gone although the volume was acknowledged".into())
        } else {
            Ok(())
        };
    }
    let store = Store::open(&store_dir, StoreOptions::default()).map_err(|e| format!("open: {e}"))?;
    let report = store.check().map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("check found problems: {:?}", report.problems));
    }
    let Some(info) = store.volume_by_name("pc") else {
        return if volume_acked { Err("volume lost".into()) } else { Ok(()) };
    };
    let vol = store.open_volume(info.id).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; BS];
    for b in 0..BLOCKS {
        vol.read_at(&mut buf, offset(b)).map_err(|e| format!("block {b}: {e}"))?;
        let g =
            if buf.iter().all(|&x| x == 0) { 0 } else { u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default()) };
        if g != 0 && buf != content(b, g) {
            return Err(format!("block {b} holds garbage"));
        }
        let min = acked.get(&b).copied().unwrap_or(0);
        if g < min {
            return Err(format!("block {b}: generation {g} is older than acknowledged {min}"));
        }
        if g != 0 && !begun.get(&b).is_some_and(|s| s.contains(&g)) {
            return Err(format!("block {b}: generation {g} was never written"));
        }
    }
    let names: BTreeSet<String> = store.list_snapshots(info.id).into_iter().map(|s| s.name).collect();
    if let Some(lost) = snaps.iter().find(|s| !names.contains(*s)) {
        return Err(format!("acknowledged snapshot {lost} lost"));
    }
    // The recovered store gives its free space back and stays consistent.
    store.punch_free_space().map_err(|e| format!("punch after recovery: {e}"))?;
    let report = store.check().map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("check after punching found problems: {:?}", report.problems));
    }
    Ok(())
}

fn main() {
    let dir = std::env::var("POWERCUT_DIR").unwrap_or_else(|_| ".".into());
    match std::env::args().nth(1).as_deref() {
        Some("workload") => {
            if let Err(e) = workload(&dir) {
                eprintln!("workload stopped: {e}");
            }
        }
        Some("verify") => {
            if let Err(e) = verify(&dir) {
                eprintln!("verify failed: {e}");
                std::process::exit(1);
            }
            println!("verified");
        }
        _ => {
            eprintln!("usage: powercut workload|verify (with POWERCUT_DIR set)");
            std::process::exit(2);
        }
    }
}
