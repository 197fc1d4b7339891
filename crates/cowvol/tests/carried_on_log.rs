//! Short sessions: open, a change or two, close. Open carries the log it
//! finds on instead of checkpointing, and close leaves a short log for the
//! next open (sealed and synced) instead of writing a checkpoint. What that
//! must keep: every acknowledged change across any number of sessions and
//! any power cut inside them; an unchanged store opened and closed writes
//! nothing; a one-command snapshot costs one record and its syncs; the log
//! a session leaves stays short.

use cowvol::testing::{self, LossMode, SimDir};
use cowvol::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod common;
use common::{assert_clean, block, decode};

const BS: u64 = 4096;
const BLOCKS: u64 = 16;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn new_store(disk: &SimDir) -> VolumeId {
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", BLOCKS * BS)).unwrap().id;
    store.checkpoint().unwrap();
    store.close().unwrap();
    id
}

fn read_block(v: &Volume, lb: u64) -> Option<u64> {
    let mut buf = vec![0u8; BS as usize];
    v.read_at(&mut buf, lb * BS).unwrap();
    decode(&buf, lb)
}

/// A session that leaves a sealed log: one write, closed.
fn sealed_session(disk: &SimDir, id: VolumeId, w: u64) {
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let v = store.open_volume(id).unwrap();
    v.write_at(&block(w, w % BLOCKS), (w % BLOCKS) * BS).unwrap();
    v.flush().unwrap();
    drop(v);
    store.close().unwrap();
}

#[test]
fn an_unchanged_store_opened_and_closed_writes_nothing() {
    let disk = SimDir::new();
    let id = new_store(&disk);
    // Once after a checkpoint, and once after a session that left a log.
    for round in 0..2 {
        let before = disk.stats();
        let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        assert_eq!(store.list_volumes().len(), 1);
        store.close().unwrap();
        let after = disk.stats();
        assert_eq!(after.writes, before.writes, "round {round}: open and close wrote");
        sealed_session(&disk, id, 3);
    }
}

#[test]
fn a_snapshot_in_a_session_of_its_own_is_one_record_and_no_checkpoint() {
    let disk = SimDir::new();
    let id = new_store(&disk);
    let before = disk.stats();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    store.create_snapshot(id, SnapshotOptions::named("s")).unwrap();
    store.close().unwrap();
    let cost = disk.stats();
    // The sync open makes before it reads (the checkpoint `new_store` ended
    // with left no seal) and the record's; the seal is not synced.
    assert_eq!(cost.syncs - before.syncs, 2, "syncs");
    // The link, the new segment's header, the batch and the seal: a sector
    // each, and no checkpoint (nodes, table, catalog, superblock). A spare
    // segment set aside in space the file just grew by is filled with
    // zeroes once (this small store has little free space).
    let (writes, bytes) = (cost.writes - before.writes, cost.bytes_written - before.bytes_written);
    let fills = bytes / (1 << 20);
    assert!(fills <= 1, "{bytes} bytes written");
    assert_eq!(writes, 4 + fills, "writes");
    assert_eq!(bytes, 4 * 4096 + fills * (1 << 20), "bytes written");
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    assert_eq!(store.list_snapshots(id).len(), 1, "the snapshot is there after reopening");
}

#[test]
fn many_short_sessions_keep_every_change_and_the_log_stays_short() {
    let disk = SimDir::new();
    let id = new_store(&disk);
    let mut want = [0u64; BLOCKS as usize];
    let mut longest = 0;
    for session in 1..=40u64 {
        let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        let (segments, bytes) = testing::log_since_checkpoint(&store);
        assert!(segments <= 6 && bytes <= 512 << 10, "session {session} opened on a log of {segments} segments");
        longest = longest.max(segments);
        let v = store.open_volume(id).unwrap();
        for (i, lb) in [(session * 3) % BLOCKS, (session * 5 + 1) % BLOCKS].into_iter().enumerate() {
            let w = session * 10 + i as u64;
            v.write_at(&block(w, lb), lb * BS).unwrap();
            want[lb as usize] = w;
        }
        if session % 3 == 0 {
            store.create_snapshot(id, SnapshotOptions::named(format!("s{session}"))).unwrap();
        }
        drop(v);
        store.close().unwrap();
    }
    // Sessions carried the log on (it spans the segments of several).
    assert!(longest >= 3, "the longest log at open spanned {longest} segments");
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    assert_clean(&store);
    let v = store.open_volume(id).unwrap();
    for lb in 0..BLOCKS {
        assert_eq!(read_block(&v, lb), Some(want[lb as usize]), "block {lb}");
    }
    assert_eq!(store.list_snapshots(id).len(), 13);
}

/// What the sessions have been told, as they run.
#[derive(Default, Clone)]
struct Model {
    /// Per block: the write acknowledged last.
    acked: Vec<u64>,
    /// Writes made since the last acknowledgement, per block.
    pending: BTreeMap<u64, BTreeSet<u64>>,
    snaps: BTreeSet<String>,
    maybe_snap: Option<String>,
}

impl Model {
    fn write(&mut self, lb: u64, w: u64) {
        self.pending.entry(lb).or_default().insert(w);
    }

    /// Everything before now is durable.
    fn ack(&mut self) {
        for (lb, ws) in std::mem::take(&mut self.pending) {
            self.acked[lb as usize] = *ws.iter().max().unwrap();
        }
        self.snaps.extend(self.maybe_snap.take());
    }
}

/// Three sessions, each: a write and a flush, a write and a snapshot, a
/// write left to close. Stops at the first error (the power went).
fn sessions(disk: &SimDir, id: VolumeId, m: &mut Model) -> Result<()> {
    for s in 1..=3u64 {
        let store = Store::open_in(Arc::new(disk.clone()), opts())?;
        let v = store.open_volume(id)?;
        let lb = |k: u64| (s * 3 + k) % BLOCKS;
        m.write(lb(0), s * 10);
        v.write_at(&block(s * 10, lb(0)), lb(0) * BS)?;
        v.flush()?;
        m.ack();
        m.write(lb(1), s * 10 + 1);
        v.write_at(&block(s * 10 + 1, lb(1)), lb(1) * BS)?;
        m.maybe_snap = Some(format!("s{s}"));
        store.create_snapshot(id, SnapshotOptions::named(format!("s{s}")))?;
        m.ack();
        m.write(lb(2), s * 10 + 2);
        v.write_at(&block(s * 10 + 2, lb(2)), lb(2) * BS)?;
        drop(v);
        store.close()?;
        m.ack();
    }
    Ok(())
}

fn verify(disk: SimDir, id: VolumeId, m: &Model, what: &str) {
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let r = store.check().unwrap();
    assert!(r.is_clean(), "{what}: {:?}", r.problems);
    let v = store.open_volume(id).unwrap();
    for lb in 0..BLOCKS {
        let got = read_block(&v, lb);
        let mut allowed: BTreeSet<u64> = m.pending.get(&lb).cloned().unwrap_or_default();
        allowed.insert(m.acked[lb as usize]);
        assert!(got.is_some_and(|w| allowed.contains(&w)), "{what}: block {lb} reads {got:?}, allowed {allowed:?}");
    }
    let names: BTreeSet<String> = store.list_snapshots(id).into_iter().map(|s| s.name).collect();
    assert!(m.snaps.is_subset(&names), "{what}: acknowledged snapshots {:?}, found {names:?}", m.snaps);
    assert!(names.len() <= m.snaps.len() + m.maybe_snap.iter().len(), "{what}: snapshots {names:?}");
    // A session after the cut carries on whatever log recovery found.
    v.write_at(&block(999, 0), 0).unwrap();
    v.flush().unwrap();
    drop(v);
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    assert_clean(&store);
    assert_eq!(read_block(&store.open_volume(id).unwrap(), 0), Some(999), "{what}: the write after recovery");
    let again: BTreeSet<String> = store.list_snapshots(id).into_iter().map(|s| s.name).collect();
    assert_eq!(again, names, "{what}: snapshots changed across the last session");
}

/// A power cut after every disk operation of three short sessions, each
/// recovered under several loss models, then a fourth session.
#[test]
fn a_power_cut_anywhere_in_short_sessions_loses_nothing_acknowledged() {
    let fresh = || Model { acked: vec![0; BLOCKS as usize], ..Default::default() };
    let calib = SimDir::new();
    let id = new_store(&calib);
    let start = calib.ops_count();
    sessions(&calib, id, &mut fresh()).unwrap();
    let total = calib.ops_count();
    assert!(total - start > 20, "{} operations", total - start);
    let losses = [LossMode::DropAll, LossMode::KeepAll, LossMode::Random { keep_prob: 0.5, tear_prob: 0.5 }];
    for cut in start..=total {
        let disk = SimDir::new();
        assert_eq!(new_store(&disk), id);
        disk.set_cut_after_ops(Some(cut));
        let mut m = fresh();
        let _ = sessions(&disk, id, &mut m);
        for (i, loss) in losses.into_iter().enumerate() {
            let after = disk.crash(loss, cut * 7 + i as u64);
            verify(after, id, &m, &format!("cut after {cut} of {total} operations, {loss:?}"));
        }
    }
}

/// Close does not sync its seal: a power cut right after it loses the
/// seal and nothing else, and the next open takes the path it takes after
/// any crash (a sync before it reads).
#[test]
fn a_seal_lost_to_a_power_cut_costs_only_the_sync_before_open_reads() {
    let disk = SimDir::new();
    let id = new_store(&disk);
    sealed_session(&disk, id, 1);
    let cut = disk.crash(LossMode::DropAll, 1);
    let before = cut.stats();
    let store = Store::open_in(Arc::new(cut.clone()), opts()).unwrap();
    assert_eq!(cut.stats().syncs - before.syncs, 1, "open found a seal the power cut should have dropped");
    assert_eq!(read_block(&store.open_volume(id).unwrap(), 1), Some(1));
    assert_clean(&store);
}

#[test]
fn opening_a_sealed_store_syncs_nothing_before_it_reads() {
    let disk = SimDir::new();
    let id = new_store(&disk);
    sealed_session(&disk, id, 1);
    let before = disk.stats();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    assert_eq!(disk.stats().syncs, before.syncs, "open synced though the log it found was sealed");
    store.create_snapshot(id, SnapshotOptions::named("s")).unwrap();
    store.close().unwrap();
    // The record's sync, and no other: the one-command snapshot.
    assert_eq!(disk.stats().syncs - before.syncs, 1);
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    assert_eq!(store.list_snapshots(id).len(), 1);
    assert_eq!(read_block(&store.open_volume(id).unwrap(), 1), Some(1));
    assert_clean(&store);
}

#[test]
fn a_writer_that_died_leaves_no_seal_and_open_syncs_before_it_reads() {
    let disk = SimDir::new();
    let id = new_store(&disk);
    sealed_session(&disk, id, 1);
    // A writer killed after its write reached the file but before any
    // sync: the batch is in the "page cache" (the disk's volatile state)
    // and the seal it cleared is gone from there too.
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let v = store.open_volume(id).unwrap();
    v.write_at(&block(2, 2), 2 * BS).unwrap();
    v.flush().unwrap();
    v.write_at(&block(3, 3), 3 * BS).unwrap();
    drop(v);
    testing::abandon(store);
    let before = disk.stats();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    assert!(disk.stats().syncs > before.syncs, "open read an unsealed log without syncing first");
    let v = store.open_volume(id).unwrap();
    assert_eq!(read_block(&v, 1), Some(1));
    assert_eq!(read_block(&v, 2), Some(2), "the flushed write");
    drop(v);
    assert_clean(&store);
    store.close().unwrap();
    // Whatever a power cut right after that open keeps, the acknowledged
    // writes are there.
    for seed in 0..8 {
        let cut = disk.crash(LossMode::Random { keep_prob: 0.5, tear_prob: 0.5 }, seed);
        let store = Store::open_in(Arc::new(cut), opts()).unwrap();
        let v = store.open_volume(id).unwrap();
        assert_eq!((read_block(&v, 1), read_block(&v, 2)), (Some(1), Some(2)), "seed {seed}");
    }
}
