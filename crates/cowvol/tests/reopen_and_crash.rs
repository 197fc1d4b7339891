//! What survives closing and crashing, and the basic I/O contract of a
//! volume: reopening keeps volumes, snapshots, forks and data; a power cut
//! keeps everything flushed and leaves each unflushed block either old or
//! new; a store directory is opened by one `Store` at a time; I/O outside
//! the volume is refused; holes read as zeroes; discard unmaps.

use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::collections::BTreeMap;
use std::sync::Arc;

mod common;
use common::*;

const BS: u64 = 4096;

fn read(v: &Volume, off: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    v.read_at(&mut b, off).unwrap();
    b
}

fn fill(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add((i as u8).wrapping_mul(37)) | 1).collect()
}

fn write(vol: &Volume, model: &mut [u8], data: &[u8], off: u64) {
    vol.write_at(data, off).unwrap();
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

#[test]
fn reopen_after_drop_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let size = 40 * BS + 99;
    let mut models: BTreeMap<VolumeId, Vec<u8>> = BTreeMap::new();
    let mut snap_models: BTreeMap<SnapshotId, (VolumeId, Vec<u8>)> = BTreeMap::new();
    let (volumes, snapshots) = {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut opts = VolumeOptions::new("db", size);
        opts.access_mode = AccessMode::ReadWriteMany;
        opts.cache_bytes = 1 << 20;
        opts.write_buffer_bytes = 8 << 20;
        let db = store.create_volume(opts).unwrap();
        let logs = store.create_volume(VolumeOptions::new("logs", 3 * BS)).unwrap();
        let v = store.open_volume(db.id).unwrap();
        let mut m = vec![0u8; size as usize];
        write(&v, &mut m, &fill(1, 10 * BS as usize + 5), 3);
        let s1 = store
            .create_snapshot(
                db.id,
                SnapshotOptions {
                    name: "s1".into(),
                    description: "first".into(),
                    owner: "me".into(),
                    labels: [("k".to_string(), "v".to_string())].into(),
                    ..Default::default()
                },
            )
            .unwrap();
        snap_models.insert(s1.id, (db.id, m.clone()));
        write(&v, &mut m, &fill(2, 500), 5 * BS - 10);
        let f = store
            .fork_volume(
                db.id,
                ForkOptions {
                    name: "db-fork".into(),
                    from_snapshot: Some(s1.id),
                    access_mode: AccessMode::ReadOnlyMany,
                    ..Default::default()
                },
            )
            .unwrap();
        let s2 = store.create_snapshot(db.id, SnapshotOptions::named("s2")).unwrap();
        snap_models.insert(s2.id, (db.id, m.clone()));
        write(&v, &mut m, &fill(3, BS as usize), 30 * BS);
        models.insert(db.id, m);
        models.insert(f.id, snap_models[&s1.id].1.clone());
        let lv = store.open_volume(logs.id).unwrap();
        let mut lm = vec![0u8; 3 * BS as usize];
        write(&lv, &mut lm, b"log line", 2 * BS + 7);
        models.insert(logs.id, lm);
        // Dropped without flush or close: dropping the last handle closes.
        let out = (store.list_volumes(), store.all_snapshots());
        assert_clean(&store);
        out
    };

    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.list_volumes(), volumes);
    assert_eq!(store.all_snapshots(), snapshots);
    assert_eq!(volumes.len(), 3);
    assert_eq!(snapshots.len(), 2);
    for (id, m) in &models {
        let v = store.open_volume_with(*id, OpenMode::ReadOnly).unwrap();
        assert_same(&format!("volume {id} after reopen"), &read_all(&v), m);
    }
    for (sid, (vid, m)) in &snap_models {
        let s = store.open_snapshot(*vid, *sid).unwrap();
        assert_same(&format!("snapshot {sid} after reopen"), &read_all(&s), m);
    }
    let fork = store.volume_by_name("db-fork").unwrap();
    assert_eq!(fork.access_mode, AccessMode::ReadOnlyMany);
    assert!(fork.origin.is_some());
    // New ids do not collide with old ones.
    let n = store.create_volume(VolumeOptions::new("new", BS)).unwrap();
    assert!(volumes.iter().all(|v| v.id != n.id));
    let s = store.create_snapshot(n.id, SnapshotOptions::named("x")).unwrap();
    assert!(snapshots.iter().all(|x| x.id != s.id));
    assert_clean(&store);
}

/// Per 4 KiB block, the contents a recovered volume may show.
type Allowed = Vec<Vec<Vec<u8>>>;

fn blocks_of(model: &[u8]) -> Vec<Vec<u8>> {
    model.chunks(BS as usize).map(<[u8]>::to_vec).collect()
}

/// Writes and flushes, snapshots, then writes more without a flush, cuts the
/// power and checks the recovered store.
fn power_cut_run(loss: LossMode, seed: u64) {
    let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
    const BLOCKS: u64 = 32;
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", BLOCKS * BS)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut model = vec![0u8; (BLOCKS * BS) as usize];

    // Durable part: blocks 0..16 (one unaligned edge), then a flush.
    write(&vol, &mut model, &fill(1, 12 * BS as usize), 0);
    write(&vol, &mut model, &fill(2, 4 * BS as usize - 100), 12 * BS + 100);
    vol.flush().unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("durable")).unwrap();
    let flushed = model.clone();

    // Unflushed part, each block touched by exactly one write: aligned
    // overwrites, an unaligned write across a block boundary, and a write
    // to blocks that were never written.
    write(&vol, &mut model, &fill(3, 3 * BS as usize), 2 * BS);
    write(&vol, &mut model, &fill(4, 300), 7 * BS - 150);
    write(&vol, &mut model, &fill(5, 2 * BS as usize + 10), 20 * BS);
    let unflushed = model.clone();
    let allowed: Allowed = blocks_of(&flushed)
        .into_iter()
        .zip(blocks_of(&unflushed))
        .map(|(a, b)| if a == b { vec![a] } else { vec![a, b] })
        .collect();

    let after = disk.crash(loss, seed);
    drop((vol, store));
    let store = Store::open_in(Arc::new(after), opts()).expect("reopen after a power cut");
    assert_clean(&store);
    let vol = store.open_volume(info.id).unwrap();
    let got = read_all(&vol);
    for (lb, (blk, ok)) in got.chunks(BS as usize).zip(&allowed).enumerate() {
        assert!(
            ok.iter().any(|a| a == blk),
            "{loss:?}/{seed}: block {lb} is neither its flushed nor its unflushed contents"
        );
    }
    let s = store.open_snapshot(info.id, snap.id).expect("a snapshot is durable when created");
    assert_same(&format!("{loss:?}/{seed}: snapshot"), &read_all(&s), &flushed);

    // The recovered store keeps working.
    let mut now = got;
    write(&vol, &mut now, &fill(9, 5000), 1000);
    vol.flush().unwrap();
    assert_same("after recovery", &read_all(&vol), &now);
    assert_clean(&store);
}

#[test]
fn power_cut_keeps_flushed_data_and_unflushed_blocks_are_old_or_new() {
    for seed in 1..=3 {
        power_cut_run(LossMode::DropAll, seed);
    }
}

#[test]
fn power_cut_keeping_the_write_cache_is_also_old_or_new() {
    power_cut_run(LossMode::KeepAll, 7);
    for seed in 1..=4 {
        power_cut_run(LossMode::Random { keep_prob: 0.5, tear_prob: 0.5 }, seed);
    }
}

#[test]
fn opening_a_directory_twice_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", BS)).unwrap();
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(Error::Locked { .. }) => {}
        other => panic!("second open while the first store is alive: {other:?}"),
    }
    // A volume handle keeps the store (and its lock) alive too.
    let vol = store.open_volume(info.id).unwrap();
    drop(store);
    assert!(matches!(Store::open(dir.path(), StoreOptions::default()), Err(Error::Locked { .. })));
    vol.write_at(b"still usable", 0).unwrap();
    drop(vol);
    // Once every handle is gone the directory opens again, with the data.
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    assert_eq!(read(&vol, 0, 12), b"still usable");
    assert_clean(&store);
}

#[test]
fn io_outside_the_volume_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let size = 10 * BS + 7;
    let info = store.create_volume(VolumeOptions::new("v", size)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    vol.write_at(&[5u8; 7], size - 7).unwrap();

    let mut two = [0u8; 2];
    for (what, r) in [
        ("read across the end", vol.read_at(&mut two, size - 1)),
        ("read past the end", vol.read_at(&mut two, size + 10)),
        ("read at u64::MAX", vol.read_at(&mut two, u64::MAX)),
        ("write across the end", vol.write_at(&[1u8; 2], size - 1)),
        ("write at the end", vol.write_at(&[1u8; 1], size)),
        ("write at u64::MAX", vol.write_at(&[1u8; 2], u64::MAX)),
        ("discard across the end", vol.discard(size - BS, 2 * BS)),
        ("discard overflowing u64", vol.discard(BS, u64::MAX)),
    ] {
        match r {
            Err(Error::OutOfRange { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    // Nothing was written by the refused calls.
    assert_eq!(read(&vol, size - 7, 7), vec![5u8; 7]);
    assert_eq!(store.stats().data_blocks, 1);
    // The last byte is addressable.
    vol.write_at(&[9], size - 1).unwrap();
    assert_eq!(read(&vol, size - 1, 1), vec![9]);
    assert_clean(&store);
}

#[test]
fn zero_length_io_is_fine_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let size = 4 * BS + 1;
    let info = store.create_volume(VolumeOptions::new("v", size)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    for off in [0, 1, BS, size - 1, size] {
        vol.read_at(&mut [], off).unwrap();
        vol.write_at(&[], off).unwrap();
        vol.discard(off, 0).unwrap();
    }
    assert_eq!(store.stats().data_blocks, 0);
    assert_eq!(read_all(&vol), vec![0u8; size as usize]);
    assert_clean(&store);
}

#[test]
fn never_written_ranges_read_as_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let size = (64 << 20) + 123;
    let info = store.create_volume(VolumeOptions::new("v", size)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    // Fresh volume: zeroes everywhere, including a huge read and the tail.
    assert!(read(&vol, 0, 8 << 20).iter().all(|&b| b == 0));
    assert!(read(&vol, size - 5000, 5000).iter().all(|&b| b == 0));
    // Around written data, unwritten bytes (also inside written blocks) are zero.
    vol.write_at(&[0xAA; 10], 3 * BS + 100).unwrap();
    let got = read(&vol, 2 * BS, 3 * BS);
    let mut want = vec![0u8; 3 * BS as usize];
    want[BS as usize + 100..BS as usize + 110].fill(0xAA);
    assert_eq!(got, want);
    assert!(read(&vol, 40 << 20, BS).iter().all(|&b| b == 0));
    assert_eq!(store.stats().data_blocks, 1);
    assert_clean(&store);
}

#[test]
fn discard_reads_zeroes_and_frees_unmapped_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    // Not a multiple of the block size: the last block is partial.
    let size = 30 * BS + 1234;
    let blocks = size.div_ceil(BS);
    let info = store.create_volume(VolumeOptions::new("v", size)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut model = vec![0u8; size as usize];
    write(&vol, &mut model, &fill(7, size as usize), 0);
    assert_eq!(store.stats().data_blocks, blocks);

    let discard = |model: &mut Vec<u8>, off: u64, len: u64| {
        vol.discard(off, len).unwrap();
        model[off as usize..(off + len) as usize].fill(0);
        assert_same(&format!("after discard({off}, {len})"), &read_all(&vol), model);
    };

    // Aligned: blocks 2..6 are unmapped.
    discard(&mut model, 2 * BS, 4 * BS);
    assert_eq!(store.stats().data_blocks, blocks - 4);
    // Unaligned on both ends: the whole blocks 11..14 inside are unmapped,
    // the partial blocks 10 and 14 keep their other bytes.
    discard(&mut model, 10 * BS + 100, 5 * BS - 200);
    assert_eq!(store.stats().data_blocks, blocks - 4 - 3);
    // Inside a single block: nothing is unmapped.
    discard(&mut model, 20 * BS + 10, 20);
    assert_eq!(store.stats().data_blocks, blocks - 7);
    // Through the end of the volume, including the partial last block.
    discard(&mut model, 28 * BS + 1, size - (28 * BS + 1));
    assert_eq!(store.stats().data_blocks, blocks - 7 - 2);
    assert_clean(&store);

    // Writing into a discarded range works normally again.
    write(&vol, &mut model, &fill(8, 100), 3 * BS + 50);
    assert_same("after rewriting", &read_all(&vol), &model);
    assert_eq!(store.stats().data_blocks, blocks - 9 + 1);

    // Discard keeps a snapshot's blocks (they are still referenced).
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("s")).unwrap();
    let snap_model = model.clone();
    let before = store.stats().data_blocks;
    discard(&mut model, 0, size);
    assert_eq!(store.stats().data_blocks, before, "the snapshot still holds every block");
    assert_same("snapshot after discard", &read_all(&store.open_snapshot(info.id, snap.id).unwrap()), &snap_model);
    store.delete_snapshot(info.id, snap.id).unwrap();
    assert_eq!(store.stats().data_blocks, 0);
    assert_clean(&store);

    // Discards are durable.
    vol.flush().unwrap();
    drop((vol, store));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    assert_eq!(read_all(&vol), vec![0u8; size as usize]);
    assert_clean(&store);
}

/// Found by the hardening review (issue 11, finding 5): the lock was only a
/// `flock` on the `LOCK` file, never checked again, so deleting or replacing
/// `LOCK` let a second `Store` open the same data file and the two together
/// left a store that no longer opened. The data file itself is locked now.
#[test]
fn deleting_or_replacing_the_lock_file_does_not_let_a_second_store_in() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", BS)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    vol.write_at(&fill(1, BS as usize), 0).unwrap();
    vol.flush().unwrap();
    let lock = dir.path().join("LOCK");
    std::fs::remove_file(&lock).unwrap();
    assert!(matches!(Store::open(dir.path(), StoreOptions::default()), Err(Error::Locked { .. })));
    // Replaced by another file (the second opener above created a new LOCK).
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(dir.path().join("other"), b"").unwrap();
    std::fs::rename(dir.path().join("other"), &lock).unwrap();
    assert!(matches!(Store::open(dir.path(), StoreOptions::default()), Err(Error::Locked { .. })));
    // The first store never noticed and keeps working.
    vol.write_at(&fill(2, BS as usize), 0).unwrap();
    vol.flush().unwrap();
    drop(vol);
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(read(&store.open_volume(info.id).unwrap(), 0, BS), fill(2, BS as usize));
    assert!(store.check().unwrap().is_clean());
}

/// The same on the simulated disk: breaking its directory lock (what
/// deleting `LOCK` does) leaves the data file's lock in force.
#[test]
fn a_broken_directory_lock_still_keeps_a_second_store_out() {
    let sim = SimDir::new();
    let store = Store::open_in(Arc::new(sim.clone()), StoreOptions::default()).unwrap();
    sim.break_dir_lock();
    assert!(matches!(Store::open_in(Arc::new(sim.clone()), StoreOptions::default()), Err(Error::Locked { .. })));
    drop(store);
    Store::open_in(Arc::new(sim), StoreOptions::default()).unwrap();
}

const LOCK_CHILD: &str = "COWVOL_LOCK_CHILD";

/// Finding 5 across processes: a child holds the store while the parent
/// deletes `LOCK` and tries to open it, then the parent holds it while a
/// child tries. Each second opener gets `Error::Locked`.
#[test]
fn a_second_process_is_locked_out_even_when_the_lock_file_is_deleted() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    const NAME: &str = "a_second_process_is_locked_out_even_when_the_lock_file_is_deleted";
    if let Ok(path) = std::env::var(LOCK_CHILD) {
        // The child: open, report, and hold the store until stdin closes.
        let outcome = match Store::open(&path, StoreOptions::default()) {
            Ok(store) => Ok(store),
            Err(Error::Locked { .. }) => Err("LOCKED".to_string()),
            Err(e) => Err(format!("ERROR {e}")),
        };
        // On a line of its own: the harness has printed "test ... " already.
        println!("\nRESULT {}", outcome.as_ref().map(|_| "OPENED").unwrap_or_else(|e| e));
        std::io::stdout().flush().unwrap();
        let _ = std::io::stdin().read_line(&mut String::new());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let spawn = || {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(LOCK_CHILD, &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = out.find_map(|l| l.unwrap().strip_prefix("RESULT ").map(str::to_string)).expect("the child reports");
        ((child, out), line)
    };
    let finish = |(mut child, out): (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>)| {
        drop(child.stdin.take());
        // Read the harness's last words, or the child dies of a broken pipe.
        out.for_each(drop);
        assert!(child.wait().unwrap().success());
    };
    // The child creates the store and holds it.
    let (holder, line) = spawn();
    assert_eq!(line, "OPENED");
    std::fs::remove_file(path.join("LOCK")).unwrap();
    assert!(matches!(Store::open(&path, StoreOptions::default()), Err(Error::Locked { .. })));
    finish(holder);
    // The parent holds it; the child finds LOCK gone and still cannot open.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    std::fs::remove_file(path.join("LOCK")).unwrap();
    let (child, line) = spawn();
    assert_eq!(line, "LOCKED");
    finish(child);
    drop(store);
    let (child, line) = spawn();
    assert_eq!(line, "OPENED");
    finish(child);
}

/// Closing costs nothing when nothing changed: a store opened only to read
/// (as `cowvol volume list` does) writes and syncs nothing when it closes,
/// and a store that changed makes its short log durable at close with one
/// sync and seals it (the seal is not synced), not once per handle.
#[test]
fn closing_writes_one_checkpoint_and_none_when_nothing_changed() {
    let sim = SimDir::new();
    let store = Store::open_in(Arc::new(sim.clone()), StoreOptions::default()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", 1 << 20)).unwrap().id;
    store.open_volume(id).unwrap().write_at(&[7u8; 4096], 0).unwrap();
    let clone = store.clone();
    let before = sim.stats();
    clone.close().unwrap();
    store.close().unwrap();
    let changed = sim.stats();
    assert_eq!(changed.syncs - before.syncs, 1, "one sync: the write's record");

    let store = Store::open_in(Arc::new(sim.clone()), StoreOptions::default()).unwrap();
    let mut buf = [0u8; 4096];
    store.open_volume(id).unwrap().read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [7u8; 4096]);
    let opened = sim.stats();
    store.close().unwrap();
    let closed = sim.stats();
    assert_eq!((closed.writes, closed.syncs), (opened.writes, opened.syncs), "a read-only session wrote at close");
}

/// A dirty node that only a pinned view (a `check` running) holds still
/// references its children and data pages, counted, until the view is
/// dropped. A checkpoint taken meanwhile used to record those counts and
/// nothing that would drop them, so a store closed without a later
/// checkpoint (a short log, sealed) and reopened counted them for good:
/// `check()` found every page under such a node one reference too high.
/// The checkpoint now places the node and lists it as garbage, so that the
/// reopened store drops what the view held.
#[test]
fn references_only_a_pinned_view_held_at_a_checkpoint_are_dropped_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
    let store = Store::open(dir.path(), opts()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", 4 << 20)).unwrap().id;
    let v = store.open_volume(id).unwrap();
    v.write_at(&vec![1u8; 1 << 20], 0).unwrap();
    v.flush().unwrap();
    store.checkpoint().unwrap();
    // Dirty nodes over written ones, then a view of them, then overwrites
    // that move the volume's tree past them: the view alone holds them.
    v.write_at(&vec![2u8; 64 << 10], 0).unwrap();
    let view = cowvol::testing::hold_view(&store);
    v.write_at(&vec![3u8; 64 << 10], 0).unwrap();
    v.flush().unwrap();
    store.checkpoint().unwrap();
    drop(view);
    // A short log since the checkpoint: the close seals it instead of
    // checkpointing again.
    v.write_at(&vec![4u8; 4096], 1 << 20).unwrap();
    v.flush().unwrap();
    drop(v);
    store.close().unwrap();

    let store = Store::open(dir.path(), opts()).unwrap();
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let mut buf = vec![0u8; 1 << 20];
    store.open_volume(id).unwrap().read_at(&mut buf, 0).unwrap();
    assert!(buf[..64 << 10].iter().all(|&b| b == 3) && buf[64 << 10..].iter().all(|&b| b == 1));
}
