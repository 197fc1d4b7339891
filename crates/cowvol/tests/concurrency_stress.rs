//! Concurrency stress on a real directory: several threads, each owning its
//! volumes, write, read, flush, snapshot, restore, fork, discard and delete
//! at random, checking every read against a model of their own; one more
//! thread forks and reads the others' snapshots and runs `check()` and
//! checkpoints. A watchdog fails the test on a deadlock. At the end every
//! volume and snapshot matches its model, `check()` is clean, and so it is
//! again after closing and reopening the store.
//!
//! Runs about 3 seconds; `COWVOL_STRESS_SECS=N` runs N seconds, and
//! `COWVOL_STRESS_SEED=N` replays a seed.

use cowvol::testing::SplitMix64 as Rng;
use cowvol::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BS: u64 = 4096;
const OWNERS: u64 = 5;

/// Snapshots any thread may fork or read, with their contents.
type Published = Mutex<BTreeMap<SnapshotId, (VolumeId, Arc<Vec<u8>>)>>;

struct Shared {
    store: Store,
    published: Published,
    stop: AtomicBool,
    ops: AtomicU64,
}

struct Owned {
    id: VolumeId,
    handle: Volume,
    model: Vec<u8>,
    /// This volume's snapshots and their contents.
    snaps: Vec<(SnapshotId, Arc<Vec<u8>>)>,
}

fn verify_range(h: &Volume, model: &[u8], off: u64, len: u64, what: &str) {
    let mut buf = vec![0u8; len as usize];
    h.read_at(&mut buf, off).unwrap_or_else(|e| panic!("{what}: read {off}+{len}: {e}"));
    if buf != model[off as usize..(off + len) as usize] {
        let i = buf.iter().zip(&model[off as usize..]).position(|(a, b)| a != b).unwrap();
        panic!("{what}: byte {} differs from the model", off + i as u64);
    }
}

fn verify_all(h: &Volume, model: &[u8], what: &str) {
    assert_eq!(h.size(), model.len() as u64, "{what}: size");
    verify_range(h, model, 0, model.len() as u64, what);
}

#[derive(Default, Debug, Clone)]
struct Counts {
    writes: u64,
    reads: u64,
    flushes: u64,
    snapshots: u64,
    restores: u64,
    restores_refused: u64,
    forks: u64,
    deletes: u64,
    discards: u64,
    busy: u64,
}

/// One owner thread: returns its volumes and snapshots with their models.
fn owner(sh: &Shared, t: u64, seed: u64) -> (Vec<Owned>, Counts) {
    let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let store = &sh.store;
    let mut c = Counts::default();
    let mut names = 0u64;
    let new_volume = |store: &Store, rng: &mut Rng, names: &mut u64| {
        // Sizes that are not a multiple of the block size, to cover the tail.
        let size = (32 + rng.below(96)) * BS - rng.below(BS);
        *names += 1;
        let info = store.create_volume(VolumeOptions::new(format!("t{t}-v{names}"), size)).unwrap();
        Owned { id: info.id, handle: store.open_volume(info.id).unwrap(), model: vec![0; size as usize], snaps: vec![] }
    };
    let mut vols = vec![new_volume(store, &mut rng, &mut names)];
    while !sh.stop.load(Ordering::Relaxed) {
        sh.ops.fetch_add(1, Ordering::Relaxed);
        let nvols = vols.len();
        let vi = rng.below(nvols as u64) as usize;
        let roll = rng.below(100);
        let v = &mut vols[vi];
        let size = v.model.len() as u64;
        let what = format!("thread {t} volume {}", v.id);
        match roll {
            0..=39 => {
                let off = rng.below(size);
                let len = (1 + rng.below(3 * BS + 100)).min(size - off);
                let data = rng.bytes(len as usize);
                v.handle.write_at(&data, off).unwrap_or_else(|e| panic!("{what}: write: {e}"));
                v.model[off as usize..(off + len) as usize].copy_from_slice(&data);
                c.writes += 1;
            }
            40..=54 => {
                let off = rng.below(size);
                let len = (1 + rng.below(4 * BS)).min(size - off);
                verify_range(&v.handle, &v.model, off, len, &what);
                c.reads += 1;
            }
            55..=62 => {
                v.handle.flush().unwrap_or_else(|e| panic!("{what}: flush: {e}"));
                c.flushes += 1;
            }
            63..=70 if v.snaps.len() < 8 => {
                names += 1;
                match store.create_snapshot(v.id, SnapshotOptions::named(format!("t{t}-s{names}"))) {
                    Ok(s) => {
                        let content = Arc::new(v.model.clone());
                        v.snaps.push((s.id, content.clone()));
                        sh.published.lock().unwrap().insert(s.id, (v.id, content));
                        c.snapshots += 1;
                    }
                    Err(Error::Busy { .. }) => c.busy += 1,
                    Err(e) => panic!("{what}: snapshot: {e}"),
                }
            }
            71..=76 if !v.snaps.is_empty() => {
                let (sid, content) = v.snaps[rng.below(v.snaps.len() as u64) as usize].clone();
                let timeout = Duration::from_millis(rng.below(300));
                match store.restore_snapshot(v.id, sid, RestoreOptions { timeout, ..Default::default() }) {
                    Ok(r) => {
                        assert_eq!((r.volume_id, r.snapshot_id), (v.id, sid));
                        v.model = (*content).clone();
                        verify_all(&v.handle, &v.model, &format!("{what} after restoring {sid}"));
                        c.restores += 1;
                    }
                    Err(Error::Busy { .. } | Error::Timeout { .. }) => {
                        // Nothing was applied.
                        verify_all(&v.handle, &v.model, &format!("{what} after a refused restore"));
                        c.restores_refused += 1;
                    }
                    Err(e) => panic!("{what}: restore: {e}"),
                }
            }
            77..=80 if nvols < 3 => {
                names += 1;
                let from = if rng.below(2) == 0 || v.snaps.is_empty() {
                    None
                } else {
                    Some(v.snaps[rng.below(v.snaps.len() as u64) as usize].clone())
                };
                let fo = ForkOptions {
                    name: format!("t{t}-f{names}"),
                    from_snapshot: from.as_ref().map(|s| s.0),
                    ..Default::default()
                };
                match store.fork_volume(v.id, fo) {
                    Ok(info) => {
                        let model = from.map_or_else(|| v.model.clone(), |(_, content)| (*content).clone());
                        let handle = store.open_volume(info.id).unwrap();
                        verify_all(&handle, &model, &format!("thread {t} fresh fork {}", info.id));
                        vols.push(Owned { id: info.id, handle, model, snaps: vec![] });
                        c.forks += 1;
                    }
                    Err(Error::Busy { .. }) => c.busy += 1,
                    Err(e) => panic!("{what}: fork: {e}"),
                }
            }
            81..=85 if !v.snaps.is_empty() => {
                let i = rng.below(v.snaps.len() as u64) as usize;
                let (sid, _) = v.snaps.remove(i);
                sh.published.lock().unwrap().remove(&sid);
                let d = store.delete_snapshot(v.id, sid).unwrap_or_else(|e| panic!("{what}: delete {sid}: {e}"));
                assert!(d.existed, "{what}: snapshot {sid} vanished before its delete");
                c.deletes += 1;
            }
            86..=87 if vi > 0 => {
                // Delete all its snapshots but one, which outlives the volume.
                while v.snaps.len() > 1 {
                    let (sid, _) = v.snaps.pop().unwrap();
                    sh.published.lock().unwrap().remove(&sid);
                    assert!(store.delete_snapshot(v.id, sid).unwrap().existed);
                    c.deletes += 1;
                }
                let gone = vols.remove(vi);
                // Its snapshots outlive it; they stay published for the others.
                match store.delete_volume(gone.id) {
                    Ok(()) => c.deletes += 1,
                    Err(Error::Busy { .. }) => {
                        c.busy += 1;
                        vols.push(gone);
                    }
                    Err(e) => panic!("thread {t}: delete volume {}: {e}", gone.id),
                }
            }
            88..=93 => {
                let off = rng.below(size);
                let len = rng.below(6 * BS).min(size - off);
                v.handle.discard(off, len).unwrap_or_else(|e| panic!("{what}: discard: {e}"));
                v.model[off as usize..(off + len) as usize].fill(0);
                c.discards += 1;
            }
            94 => {
                verify_all(&v.handle, &v.model, &what);
                for (sid, content) in &v.snaps {
                    let h = store.open_snapshot(v.id, *sid).unwrap();
                    verify_all(&h, content, &format!("{what} snapshot {sid}"));
                }
                c.reads += 1;
            }
            _ if nvols < 2 => {
                vols.push(new_volume(store, &mut rng, &mut names));
            }
            _ => {
                let off = rng.below(size);
                let len = (1 + rng.below(BS)).min(size - off);
                verify_range(&v.handle, &v.model, off, len, &what);
                c.reads += 1;
            }
        }
    }
    for v in &vols {
        v.handle.flush().unwrap();
    }
    (vols, c)
}

/// The thread that works across volumes: forks and reads the others'
/// snapshots, checks and checkpoints.
fn cross(sh: &Shared, seed: u64) -> (u64, u64, u64, u64) {
    let mut rng = Rng(seed ^ 0xc0ff_ee00);
    let store = &sh.store;
    let (mut forks, mut checks, mut lost_races, mut templates) = (0u64, 0u64, 0u64, 0u64);
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        sh.ops.fetch_add(1, Ordering::Relaxed);
        let pick = {
            let p = sh.published.lock().unwrap();
            if p.is_empty() {
                None
            } else {
                let i = rng.below(p.len() as u64) as usize;
                p.iter().nth(i).map(|(s, (v, c))| (*s, *v, c.clone()))
            }
        };
        match rng.below(11) {
            10 => {
                // A template of someone's snapshot, a volume from it, then the
                // template deleted while the volume lives on.
                let Some((sid, _, content)) = pick else { continue };
                n += 1;
                let t = match store.create_template(sid, TemplateOptions::named(format!("t-{n}"))) {
                    Ok(t) => t,
                    Err(Error::NotFound { .. }) => {
                        lost_races += 1;
                        continue;
                    }
                    Err(e) => panic!("cross: template of {sid}: {e}"),
                };
                let v = store.create_volume_from_template(t.id, VolumeOptions::new(format!("x-{n}"), 0)).unwrap();
                assert!(store.delete_template(t.id).unwrap().existed);
                let h = store.open_volume(v.id).unwrap();
                verify_all(&h, &content, &format!("cross: volume {} from template of {sid}", v.id));
                drop(h);
                store.delete_volume(v.id).unwrap();
                templates += 1;
            }
            0..=3 => {
                let Some((sid, vid, content)) = pick else { continue };
                n += 1;
                let fo = ForkOptions { name: format!("x-{n}"), from_snapshot: Some(sid), ..Default::default() };
                match store.fork_volume(vid, fo) {
                    Ok(info) => {
                        let h = store.open_volume(info.id).unwrap();
                        verify_all(&h, &content, &format!("cross fork {} of {sid}", info.id));
                        // Writes to the fork stay in the fork.
                        h.write_at(b"cross", 0).unwrap();
                        drop(h);
                        store.delete_volume(info.id).unwrap();
                        forks += 1;
                    }
                    Err(Error::NotFound { .. } | Error::Busy { .. }) => lost_races += 1,
                    Err(e) => panic!("cross: fork of {sid}: {e}"),
                }
            }
            4..=6 => {
                let Some((sid, vid, content)) = pick else { continue };
                let h = match store.open_snapshot(vid, sid) {
                    Ok(h) => h,
                    Err(Error::NotFound { .. }) => {
                        lost_races += 1;
                        continue;
                    }
                    Err(e) => panic!("cross: open snapshot {sid}: {e}"),
                };
                let mut buf = vec![0u8; content.len()];
                match h.read_at(&mut buf, 0) {
                    Ok(()) => assert!(buf == *content, "cross: snapshot {sid} differs from its contents"),
                    // Deleted while being read.
                    Err(Error::NotFound { .. }) => lost_races += 1,
                    Err(e) => panic!("cross: read snapshot {sid}: {e}"),
                }
            }
            7..=8 => {
                let r = store.check().unwrap();
                assert!(r.is_clean(), "cross: check under load: {:?}", r.problems);
                checks += 1;
            }
            _ if rng.below(2) == 0 => {
                store.checkpoint().unwrap();
                let _ = store.stats();
            }
            _ => {
                // Delete a snapshot that outlived its volume (nobody else owns it).
                let Some((sid, vid, _)) = pick else { continue };
                if store.volume(vid).is_ok() {
                    continue;
                }
                if sh.published.lock().unwrap().remove(&sid).is_some() {
                    assert!(store.delete_snapshot(vid, sid).unwrap().existed, "cross: orphan {sid} vanished");
                }
            }
        }
    }
    (forks, checks, lost_races, templates)
}

fn run(dir: std::path::PathBuf, secs: f64, seed: u64) -> String {
    let opts = StoreOptions { checkpoint_wal_bytes: 1 << 20, ..Default::default() };
    let store = Store::open(&dir, opts.clone()).unwrap();
    let sh =
        Shared { store, published: Mutex::new(BTreeMap::new()), stop: AtomicBool::new(false), ops: AtomicU64::new(0) };
    let (owned, counts, (xforks, checks, races, templates)) = std::thread::scope(|s| {
        let owners: Vec<_> = (0..OWNERS)
            .map(|t| {
                let sh = &sh;
                s.spawn(move || owner(sh, t, seed))
            })
            .collect();
        let x = s.spawn(|| cross(&sh, seed));
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            std::thread::sleep(Duration::from_millis(20));
            if owners.iter().any(|h| h.is_finished()) || x.is_finished() {
                break; // a thread panicked: stop the others so the panic surfaces
            }
        }
        sh.stop.store(true, Ordering::Relaxed);
        let mut owned = Vec::new();
        let mut total = Counts::default();
        for h in owners {
            let (v, c) = h.join().unwrap();
            owned.extend(v);
            total.writes += c.writes;
            total.reads += c.reads;
            total.flushes += c.flushes;
            total.snapshots += c.snapshots;
            total.restores += c.restores;
            total.restores_refused += c.restores_refused;
            total.forks += c.forks;
            total.deletes += c.deletes;
            total.discards += c.discards;
            total.busy += c.busy;
        }
        (owned, total, x.join().unwrap())
    });
    let Shared { store, published, ops, .. } = sh;
    let published = published.into_inner().unwrap();
    // Final state: every volume and snapshot matches its model.
    let verify_store = |store: &Store, fresh_handles: bool, what: &str| {
        let r = store.check().unwrap();
        assert!(r.is_clean(), "{what}: check: {:?}", r.problems);
        let live: Vec<VolumeId> = store.list_volumes().iter().map(|v| v.id).collect();
        let mut want: Vec<VolumeId> = owned.iter().map(|o| o.id).collect();
        want.sort();
        assert_eq!(live, want, "{what}: the live volumes");
        for o in &owned {
            if fresh_handles {
                let h = store.open_volume_with(o.id, OpenMode::ReadOnly).unwrap();
                verify_all(&h, &o.model, &format!("{what}: volume {}", o.id));
            } else {
                verify_all(&o.handle, &o.model, &format!("{what}: volume {}", o.id));
            }
        }
        assert_eq!(store.all_snapshots().len(), published.len(), "{what}: snapshot count");
        assert!(store.list_templates().is_empty(), "{what}: templates left behind");
        for (sid, (vid, content)) in &published {
            let h = store.open_snapshot(*vid, *sid).unwrap();
            verify_all(&h, content, &format!("{what}: snapshot {sid}"));
        }
    };
    verify_store(&store, false, "after the run");
    let summary = format!(
        "{} ops in {secs} s (seed {seed}): {counts:?}; cross thread: {xforks} forks of others' snapshots, \
         {templates} templates with a volume each, {checks} checks, {races} lost races; {} volumes and {} snapshots \
         at the end",
        ops.load(Ordering::Relaxed),
        owned.len(),
        published.len()
    );
    let models: Vec<(VolumeId, Vec<u8>)> = owned.iter().map(|o| (o.id, o.model.clone())).collect();
    drop(owned);
    store.close().unwrap();
    let store = Store::open(&dir, opts).unwrap();
    let r = store.check().unwrap();
    assert!(r.is_clean(), "reopened: check: {:?}", r.problems);
    assert_eq!(store.list_volumes().len(), models.len());
    for (id, model) in &models {
        let h = store.open_volume_with(*id, OpenMode::ReadOnly).unwrap();
        verify_all(&h, model, &format!("reopened: volume {id}"));
    }
    assert_eq!(store.all_snapshots().len(), published.len(), "reopened: snapshot count");
    for (sid, (vid, content)) in &published {
        let h = store.open_snapshot(*vid, *sid).unwrap();
        verify_all(&h, content, &format!("reopened: snapshot {sid}"));
    }
    summary
}

#[test]
fn threads_on_their_own_volumes_and_one_across_them() {
    let secs: f64 = std::env::var("COWVOL_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let seed: u64 = std::env::var("COWVOL_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("stress seed {seed} (COWVOL_STRESS_SEED={seed} replays the choices)");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let summary = run(path, secs, seed);
        let _ = tx.send(summary);
    });
    // Watchdog: a deadlock fails the test instead of hanging it.
    let limit = Duration::from_secs_f64(60.0 + 2.0 * secs);
    match rx.recv_timeout(limit) {
        Ok(summary) => {
            worker.join().unwrap();
            println!("{summary}");
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked; surface its panic.
            if let Err(p) = worker.join() {
                std::panic::resume_unwind(p);
            }
            unreachable!("the worker ended without a result");
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("no progress for {limit:?}: deadlock suspected (seed {seed})")
        }
    }
}
