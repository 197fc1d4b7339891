//! Power-cut enumeration: a fixed workload (writes, flushes, snapshots,
//! forks, restores, deletes, discards, checkpoints) runs on the simulated
//! disk with the power cut after every single disk operation in turn. Each
//! cut is recovered under several loss models (all unsynced writes lost; a
//! random subset kept and torn at sector granularity; a prefix kept) and the
//! recovered store is checked against the contract of docs/reliability.md.
//!
//! The workload runs on two layouts: the volume's blocks side by side in one
//! leaf, and spread over a 256 GiB volume so that its tree has interior
//! nodes and leaves below the root, which checkpoints write as delta
//! records of their pages (format 10).
//!
//! `COWVOL_CRASH_STRIDE=1` checks every crash point (the default checks
//! every 7th, plus the last ones).

use cowvol::testing::SplitMix64 as Rng;
use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod common;
use common::{block, decode};

const BS: usize = 4096;
const BLOCKS: u64 = 48;

fn opts() -> StoreOptions {
    // A node cache of a few nodes: recovery and the work after it read
    // nodes back from their pages instead of finding them in memory.
    StoreOptions {
        checkpoint_wal_bytes: 24 << 10,
        background_checkpoints: false,
        node_cache_bytes: 16 << 10,
        ..Default::default()
    }
}

/// Where the workload's blocks live in its volumes.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Blocks `0..BLOCKS` of a volume of `BLOCKS` blocks: one leaf, the root.
    Flat,
    /// Block `lb` at [`Layout::position`] of a 256 GiB volume: four
    /// subtrees under the root, each with three leaves, all below the root
    /// and written as records when overwritten.
    Spread,
}

impl Layout {
    fn size(self) -> u64 {
        match self {
            Layout::Flat => BLOCKS * BS as u64,
            Layout::Spread => 256 << 30,
        }
    }

    /// The logical block of the workload's block `lb`.
    fn position(self, lb: u64) -> u64 {
        match self {
            Layout::Flat => lb,
            Layout::Spread => (lb % 4) << 24 | (lb / 4 % 3) << 16 | lb,
        }
    }

    fn offset(self, lb: u64) -> u64 {
        self.position(lb) * BS as u64
    }
}

/// Per block: the write ids a recovered volume may show.
type Allowed = Vec<BTreeSet<u64>>;

#[derive(Clone, Default)]
struct Expect {
    /// Volumes that must exist (acknowledged), by name.
    must: BTreeMap<String, Allowed>,
    /// Volumes that may exist (operation begun, not acknowledged).
    may: BTreeMap<String, Allowed>,
    must_snaps: BTreeMap<String, Vec<u64>>,
    may_snaps: BTreeMap<String, Vec<u64>>,
    /// Snapshot names whose delete may have happened.
    may_be_gone: BTreeSet<String>,
    may_be_gone_vols: BTreeSet<String>,
}

/// The workload's view of the truth as it runs.
struct Tracker {
    current: BTreeMap<String, Vec<u64>>,
    snaps: BTreeMap<String, (String, Vec<u64>)>,
    expect: Expect,
    next_write: u64,
    /// Bytes of delta pages the store wrote, when the workload ran to its end.
    delta_bytes: u64,
}

impl Tracker {
    fn allowed_now(cur: &[u64]) -> Allowed {
        cur.iter().map(|&w| BTreeSet::from([w])).collect()
    }
}

/// Runs the workload until the disk fails; returns what recovery must show.
fn workload(disk: &SimDir, layout: Layout) -> Expect {
    run_workload(disk, layout).expect
}

fn run_workload(disk: &SimDir, layout: Layout) -> Tracker {
    let mut t = Tracker {
        current: BTreeMap::new(),
        snaps: BTreeMap::new(),
        expect: Expect::default(),
        next_write: 1,
        delta_bytes: 0,
    };
    let _ = run_steps(disk, &mut t, layout);
    t
}

fn run_steps(disk: &SimDir, t: &mut Tracker, layout: Layout) -> Result<()> {
    let store = Store::open_in(Arc::new(disk.clone()), opts())?;
    let mut rng = Rng(7);
    let name = "a".to_string();
    t.expect.may.insert(name.clone(), Tracker::allowed_now(&vec![0; BLOCKS as usize]));
    let info = store.create_volume(VolumeOptions {
        access_mode: AccessMode::ReadWriteMany,
        ..VolumeOptions::new(&name, layout.size())
    })?;
    t.current.insert(name.clone(), vec![0; BLOCKS as usize]);
    t.expect.may.remove(&name);
    t.expect.must.insert(name.clone(), Tracker::allowed_now(&t.current[&name]));
    let mut vols: Vec<(String, VolumeId)> = vec![(name, info.id)];
    for step in 0..90u32 {
        let (vname, vid) = vols[rng.next() as usize % vols.len()].clone();
        match step % 15 {
            5 => {
                let sname = format!("s{step}");
                let content = t.current[&vname].clone();
                t.expect.may_snaps.insert(sname.clone(), content.clone());
                store.create_snapshot(vid, SnapshotOptions::named(&sname))?;
                t.expect.may_snaps.remove(&sname);
                t.expect.must_snaps.insert(sname.clone(), content.clone());
                t.snaps.insert(sname, (vname.clone(), content));
                ack_flush(t);
            }
            9 => {
                let fname = format!("f{step}");
                let from = t.snaps.iter().find(|(_, (v, _))| *v == vname).map(|(s, (_, c))| (s.clone(), c.clone()));
                let (snap_id, content) = match &from {
                    Some((s, c)) => {
                        let id = store.list_snapshots(vid).into_iter().find(|x| &x.name == s).map(|x| x.id);
                        (id, c.clone())
                    }
                    None => (None, t.current[&vname].clone()),
                };
                let content = if snap_id.is_some() { content } else { t.current[&vname].clone() };
                t.expect.may.insert(fname.clone(), Tracker::allowed_now(&content));
                let f = store.fork_volume(
                    vid,
                    ForkOptions {
                        name: fname.clone(),
                        from_snapshot: snap_id,
                        access_mode: AccessMode::ReadWriteMany,
                        ..Default::default()
                    },
                )?;
                t.expect.may.remove(&fname);
                t.current.insert(fname.clone(), content);
                ack_flush(t);
                vols.push((fname, f.id));
            }
            12 => {
                let target = t.snaps.iter().find(|(_, (v, _))| *v == vname).map(|(s, (_, c))| (s.clone(), c.clone()));
                if let Some((s, content)) = target {
                    let sid = store.list_snapshots(vid).into_iter().find(|x| x.name == s).unwrap().id;
                    let allowed = t.expect.must.get_mut(&vname).unwrap();
                    for (a, &w) in allowed.iter_mut().zip(&content) {
                        a.insert(w);
                    }
                    store.restore_snapshot(vid, sid, RestoreOptions::default())?;
                    t.current.insert(vname.clone(), content);
                    ack_flush(t);
                }
            }
            13 => {
                if let Some(s) = t.snaps.keys().next().cloned() {
                    let (owner, _) = t.snaps[&s].clone();
                    let owner_id = vols.iter().find(|(n, _)| *n == owner).map(|(_, id)| *id).unwrap_or(info.id);
                    let sid = store.list_snapshots(owner_id).into_iter().find(|x| x.name == s).unwrap().id;
                    t.expect.may_be_gone.insert(s.clone());
                    store.delete_snapshot(owner_id, sid)?;
                    t.snaps.remove(&s);
                    t.expect.must_snaps.remove(&s);
                    t.expect.may_be_gone.remove(&s);
                    ack_flush(t);
                }
            }
            14 => {
                let vol = store.open_volume(vid)?;
                let start = rng.next() % BLOCKS;
                let n = (rng.next() % 4 + 1).min(BLOCKS - start);
                let allowed = t.expect.must.get_mut(&vname).unwrap();
                for lb in start..start + n {
                    allowed[lb as usize].insert(0);
                }
                match layout {
                    Layout::Flat => vol.discard(start * BS as u64, n * BS as u64)?,
                    Layout::Spread => {
                        for lb in start..start + n {
                            vol.discard(layout.offset(lb), BS as u64)?;
                        }
                    }
                }
                for lb in start..start + n {
                    t.current.get_mut(&vname).unwrap()[lb as usize] = 0;
                }
            }
            _ => {
                let vol = store.open_volume(vid)?;
                for _ in 0..4 {
                    let start = rng.next() % BLOCKS;
                    let n = (rng.next() % 3 + 1).min(BLOCKS - start);
                    let mut buf = Vec::new();
                    let w = t.next_write;
                    t.next_write += 1;
                    for lb in start..start + n {
                        buf.extend(block(w, lb));
                        t.expect.must.get_mut(&vname).unwrap()[lb as usize].insert(w);
                    }
                    match layout {
                        Layout::Flat => vol.write_at(&buf, start * BS as u64)?,
                        Layout::Spread => {
                            for (lb, b) in (start..start + n).zip(buf.chunks(BS)) {
                                vol.write_at(b, layout.offset(lb))?;
                            }
                        }
                    }
                    for lb in start..start + n {
                        t.current.get_mut(&vname).unwrap()[lb as usize] = w;
                    }
                }
                if step % 3 == 0 {
                    vol.flush()?;
                    ack_flush(t);
                }
            }
        }
        if step == 60 {
            store.checkpoint()?;
            ack_flush(t);
        }
    }
    t.delta_bytes = store.written().delta_bytes;
    Ok(())
}

/// A flush (or an acknowledged admin operation, which syncs) returned: every
/// completed write is durable.
fn ack_flush(t: &mut Tracker) {
    for (name, cur) in &t.current {
        t.expect.must.insert(name.clone(), Tracker::allowed_now(cur));
    }
}

fn verify(disk: SimDir, exp: &Expect, what: &str, layout: Layout) {
    let store = Store::open_in(Arc::new(disk), opts()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{what}: check: {:?}", report.problems);
    let vols = store.list_volumes();
    for (name, allowed) in exp.must.iter().chain(exp.may.iter()) {
        let Some(info) = vols.iter().find(|v| &v.name == name) else {
            assert!(!exp.must.contains_key(name) || exp.may_be_gone_vols.contains(name), "{what}: volume {name} lost");
            continue;
        };
        let v = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();
        let mut buf = vec![0u8; BS];
        for lb in 0..BLOCKS {
            v.read_at(&mut buf, layout.offset(lb)).unwrap_or_else(|e| panic!("{what}: {name} block {lb}: {e}"));
            let w = decode(&buf, lb).unwrap_or_else(|| panic!("{what}: {name} block {lb} holds garbage"));
            assert!(
                allowed[lb as usize].contains(&w),
                "{what}: {name} block {lb} shows write {w}, allowed {:?}",
                allowed[lb as usize]
            );
        }
    }
    let snaps = store.all_snapshots();
    for (sname, content) in exp.must_snaps.iter().chain(exp.may_snaps.iter()) {
        let Some(s) = snaps.iter().find(|s| &s.name == sname) else {
            assert!(
                !exp.must_snaps.contains_key(sname) || exp.may_be_gone.contains(sname),
                "{what}: snapshot {sname} lost"
            );
            continue;
        };
        let h = store.open_snapshot(s.volume_id, s.id).unwrap();
        let mut buf = vec![0u8; BS];
        for lb in 0..BLOCKS {
            h.read_at(&mut buf, layout.offset(lb)).unwrap();
            assert_eq!(decode(&buf, lb), Some(content[lb as usize]), "{what}: snapshot {sname} block {lb}");
        }
    }
    // The recovered store keeps working.
    if let Some(info) = vols.first() {
        let v = store.open_volume(info.id).unwrap();
        v.write_at(&block(999_999, 0), 0).unwrap();
        v.flush().unwrap();
    }
    assert!(store.check().unwrap().is_clean());
}

#[test]
fn every_crash_point_recovers_to_an_allowed_state() {
    every_crash_point_recovers(Layout::Flat);
}

#[test]
fn every_crash_point_of_a_tree_with_node_deltas_recovers_to_an_allowed_state() {
    every_crash_point_recovers(Layout::Spread);
}

fn every_crash_point_recovers(layout: Layout) {
    let calib = SimDir::new();
    let calibration = run_workload(&calib, layout);
    if let Layout::Spread = layout {
        assert!(calibration.delta_bytes > 0, "the workload wrote no node as a delta");
    }
    let full = calibration.expect;
    let total = calib.ops_count();
    assert!(!full.must_snaps.is_empty() || !full.must.is_empty());
    let stride: u64 = std::env::var("COWVOL_CRASH_STRIDE").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut checked = 0u64;
    let mut k = 0;
    while k <= total {
        let disk = SimDir::new();
        disk.set_cut_after_ops(Some(k));
        let exp = workload(&disk, layout);
        let modes = [
            LossMode::DropAll,
            LossMode::KeepAll,
            LossMode::Random { keep_prob: 0.5, tear_prob: 0.3 },
            LossMode::Prefix,
        ];
        for (i, mode) in modes.into_iter().enumerate() {
            let recovered = disk.crash(mode, k * 31 + i as u64);
            verify(recovered, &exp, &format!("{layout:?}: cut after {k} of {total} ops, {mode:?}"), layout);
            checked += 1;
        }
        k += if k + 30 > total { 1 } else { stride };
    }
    println!("crash points ({layout:?}): {total} disk operations, {checked} recoveries checked");
}
