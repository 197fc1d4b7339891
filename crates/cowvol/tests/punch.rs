//! Free space goes back to the file system: pages freed by a durable
//! checkpoint are punched out in whole 1 MiB chunks, never a page anything
//! references or the WAL and checkpoint still need; a punched page is
//! reserved again before reuse, so reused pages read back what was written
//! to them and a full disk turns into a clean `NoSpace`; and a power cut at
//! any operation during or after punching loses no acknowledged data.
//!
//! The crash test checks every crash point; `COWVOL_CRASH_STRIDE=N` checks
//! every Nth (plus the last ones) for a faster run.

use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::collections::BTreeMap;
use std::sync::Arc;

mod common;
use common::{assert_clean, block, decode};

const BS: u64 = 4096;
const MIB: u64 = 1 << 20;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, checkpoint_wal_bytes: 1 << 20, ..Default::default() }
}

/// Writes blocks `start..start + n` of `v` as write `w`.
fn write_run(v: &Volume, start: u64, n: u64, w: u64) -> Result<()> {
    let buf: Vec<u8> = (start..start + n).flat_map(|lb| block(w, lb)).collect();
    v.write_at(&buf, start * BS)
}

/// The write id of every block of `v`, panicking on a block no write made.
fn contents(v: &Volume, what: &str) -> Vec<u64> {
    let mut buf = vec![0u8; v.size() as usize];
    v.read_at(&mut buf, 0).unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
    buf.chunks(BS as usize)
        .enumerate()
        .map(|(lb, b)| decode(b, lb as u64).unwrap_or_else(|| panic!("{what}: block {lb} holds garbage")))
        .collect()
}

fn volume(store: &Store, name: &str, blocks: u64) -> Volume {
    let info = store.create_volume(VolumeOptions::new(name, blocks * BS)).unwrap();
    store.open_volume(info.id).unwrap()
}

fn id_of(store: &Store, name: &str) -> VolumeId {
    store.volume_by_name(name).unwrap_or_else(|| panic!("volume {name} missing")).id
}

#[test]
fn punching_spares_everything_referenced_or_reserved() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let keep = volume(&store, "keep", 1024);
    write_run(&keep, 0, 1024, 1).unwrap();
    let gone = volume(&store, "gone", 4096);
    write_run(&gone, 0, 4096, 2).unwrap();
    gone.flush().unwrap();
    // The snapshot shares "keep"'s first version; overwriting half of
    // "keep" afterwards leaves pages only the snapshot references.
    let snap = store.create_snapshot(id_of(&store, "keep"), SnapshotOptions::named("s")).unwrap();
    write_run(&keep, 0, 512, 3).unwrap();
    keep.flush().unwrap();
    drop(gone);
    store.delete_volume(id_of(&store, "gone")).unwrap();
    store.checkpoint().unwrap();
    let before = store.stats();
    let punched = store.punch_free_space().unwrap();
    let after = store.stats();
    assert!(punched >= 8 * MIB, "punched only {punched} bytes of a deleted 16 MiB volume");
    assert_eq!(after.allocated_bytes + punched, before.allocated_bytes, "the file system got the space back");
    assert_eq!(after.used_bytes, before.used_bytes, "punching freed nothing in use");
    assert!(after.punched_bytes >= punched);

    let want_keep: Vec<u64> = (0..1024).map(|lb| if lb < 512 { 3 } else { 1 }).collect();
    assert_eq!(contents(&keep, "keep"), want_keep);
    let s = store.open_snapshot(id_of(&store, "keep"), snap.id).unwrap();
    assert_eq!(contents(&s, "snapshot"), vec![1; 1024]);
    assert_clean(&store);
    // A second pass finds nothing left to punch.
    assert_eq!(store.punch_free_space().unwrap(), 0);

    // The same holds after a reopen, where every wholly free chunk counts
    // as punched and is punched once more.
    drop((keep, s));
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    store.punch_free_space().unwrap();
    let keep = store.open_volume(id_of(&store, "keep")).unwrap();
    assert_eq!(contents(&keep, "keep after reopen"), want_keep);
    let s = store.open_snapshot(id_of(&store, "keep"), snap.id).unwrap();
    assert_eq!(contents(&s, "snapshot after reopen"), vec![1; 1024]);
    assert_clean(&store);
}

#[test]
fn reused_punched_pages_read_back_what_was_written() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let gone = volume(&store, "gone", 4096);
    write_run(&gone, 0, 4096, 1).unwrap();
    gone.flush().unwrap();
    drop(gone);
    store.delete_volume(id_of(&store, "gone")).unwrap();
    store.checkpoint().unwrap();
    assert!(store.punch_free_space().unwrap() > 0);
    let file_before = store.stats().file_bytes;

    // The new volume fits in the freed space: the file does not grow, so
    // its pages are punched ones, reserved again before use.
    let new = volume(&store, "new", 3072);
    write_run(&new, 0, 3072, 2).unwrap();
    new.flush().unwrap();
    let st = store.stats();
    assert_eq!(st.file_bytes, file_before, "writes reused the freed space instead of growing the file");
    assert!(st.allocated_bytes >= st.used_bytes, "every page in use has its space allocated");
    assert_eq!(contents(&new, "new"), vec![2; 3072]);
    assert_clean(&store);

    // And after a power cut that keeps only what was synced.
    drop(new);
    cowvol::testing::abandon(store);
    let store = Store::open_in(Arc::new(disk.crash(LossMode::DropAll, 0)), opts()).unwrap();
    let new = store.open_volume(id_of(&store, "new")).unwrap();
    assert_eq!(contents(&new, "new after crash"), vec![2; 3072]);
    assert_clean(&store);
}

/// Open does not look at free space until something needs it (see
/// `space/discover.rs`); asking to give free space back must still find
/// all of it, not only the part a write happened to look at.
#[test]
fn punching_after_a_reopen_gives_back_free_space_open_never_read() {
    let disk = SimDir::new();
    let no_auto = StoreOptions { punch_free_space: false, ..opts() };
    let store = Store::open_in(Arc::new(disk.clone()), no_auto.clone()).unwrap();
    let keep = volume(&store, "keep", 256);
    write_run(&keep, 0, 256, 1).unwrap();
    let gone = volume(&store, "gone", 4096);
    write_run(&gone, 0, 4096, 2).unwrap();
    gone.flush().unwrap();
    drop((keep, gone));
    store.delete_volume(id_of(&store, "gone")).unwrap();
    store.checkpoint().unwrap();
    store.close().unwrap();

    let store = Store::open_in(Arc::new(disk), no_auto).unwrap();
    let punched = store.punch_free_space().unwrap();
    assert!(punched >= 8 * MIB, "only {punched} bytes of the 16 MiB the deleted volume left were given back");
    let st = store.stats();
    assert!(st.allocated_bytes + 8 * MIB <= st.file_bytes, "the file kept its space");
    assert_eq!(contents(&store.open_volume(id_of(&store, "keep")).unwrap(), "keep"), vec![1; 256]);
    assert_clean(&store);
}

#[test]
fn full_disk_refuses_a_punched_range_cleanly() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let keep = volume(&store, "keep", 256);
    write_run(&keep, 0, 256, 1).unwrap();
    let gone = volume(&store, "gone", 4096);
    write_run(&gone, 0, 4096, 2).unwrap();
    gone.flush().unwrap();
    drop(gone);
    store.delete_volume(id_of(&store, "gone")).unwrap();
    store.checkpoint().unwrap();
    assert!(store.punch_free_space().unwrap() > 0);

    // Little more fits on the disk: filling the punched ranges needs space
    // the file system no longer has.
    disk.set_capacity(Some(disk.used_bytes() + 8 * MIB));
    let new = volume(&store, "new", 4096);
    let mut acked = 0;
    let err = loop {
        match write_run(&new, acked * 64, 64, 3).and_then(|()| new.flush()) {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 64, "writes into punched space kept succeeding on a full disk");
    };
    assert!(matches!(err, Error::NoSpace { .. }), "expected NoSpace, got {err}");
    // Nothing was poisoned: a write small enough for the free space still
    // allocated succeeds, and every acknowledged block reads back.
    write_run(&keep, 0, 1, 4).unwrap();
    keep.flush().unwrap();
    let want_keep: Vec<u64> = (0..256).map(|lb| if lb == 0 { 4 } else { 1 }).collect();
    assert_eq!(contents(&keep, "keep"), want_keep);
    let got = contents(&new, "new");
    assert!(got[..(acked * 64) as usize].iter().all(|&w| w == 3));
    assert_clean(&store);

    // Once the file system has room again, the same write succeeds.
    disk.set_capacity(None);
    write_run(&new, 0, 4096, 5).unwrap();
    new.flush().unwrap();
    assert_eq!(contents(&new, "new"), vec![5; 4096]);
    assert_clean(&store);
    drop((keep, new));
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk.crash(LossMode::DropAll, 0)), opts()).unwrap();
    let new = store.open_volume(id_of(&store, "new")).unwrap();
    assert_eq!(contents(&new, "new after reopen"), vec![5; 4096]);
    assert_clean(&store);
}

/// A store with a 16 MiB volume written, then deleted and checkpointed:
/// its space is free and ready to punch.
fn store_with_freed_space(disk: &SimDir, opts: StoreOptions) -> (Store, Volume) {
    let store = Store::open_in(Arc::new(disk.clone()), opts).unwrap();
    let keep = volume(&store, "keep", 16);
    write_run(&keep, 0, 16, 1).unwrap();
    let gone = volume(&store, "gone", 4096);
    write_run(&gone, 0, 4096, 2).unwrap();
    gone.flush().unwrap();
    drop(gone);
    store.delete_volume(id_of(&store, "gone")).unwrap();
    store.checkpoint().unwrap();
    (store, keep)
}

#[test]
fn the_background_thread_punches_after_a_checkpoint() {
    let disk = SimDir::new();
    let (store, _keep) = store_with_freed_space(&disk, StoreOptions::default());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stats().punched_bytes == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing punched within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_clean(&store);
}

#[test]
fn without_a_background_thread_syncs_punch_in_steps_and_the_option_turns_it_off() {
    let disk = SimDir::new();
    let (store, keep) = store_with_freed_space(&disk, opts());
    // With no background thread, each completed sync runs one step while
    // free space waits to be punched.
    write_run(&keep, 0, 1, 3).unwrap();
    keep.flush().unwrap();
    assert!(store.stats().punched_bytes > 0, "a sync ran no punch step");
    assert_clean(&store);

    let disk = SimDir::new();
    let (store, keep) = store_with_freed_space(&disk, StoreOptions { punch_free_space: false, ..opts() });
    write_run(&keep, 0, 1, 3).unwrap();
    keep.flush().unwrap();
    assert_eq!(store.stats().punched_bytes, 0, "punching was turned off");
    assert!(store.punch_free_space().unwrap() > 0, "asking still punches");
}

/// What a recovered store must show, per volume name: `None` when the
/// volume may or may not exist, else per block the write ids allowed.
type Expect = BTreeMap<&'static str, (bool, Vec<Vec<u64>>)>;

const KEEP_BLOCKS: u64 = 256;
const BIG_BLOCKS: u64 = 2048;

/// A store with "keep" (1 MiB, write 1), "gone" (8 MiB, write 2) and a
/// snapshot "s" of "keep", all durable; the crash workload starts here.
fn base_disk() -> SimDir {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let keep = volume(&store, "keep", KEEP_BLOCKS);
    write_run(&keep, 0, KEEP_BLOCKS, 1).unwrap();
    let gone = volume(&store, "gone", BIG_BLOCKS);
    write_run(&gone, 0, BIG_BLOCKS, 2).unwrap();
    gone.flush().unwrap();
    store.create_snapshot(id_of(&store, "keep"), SnapshotOptions::named("s")).unwrap();
    drop((keep, gone));
    store.close().unwrap();
    disk
}

fn exact(n: u64, w: u64) -> Vec<Vec<u64>> {
    vec![vec![w]; n as usize]
}

/// Deletes "gone", checkpoints and punches; creates "new" in the freed
/// (punched) space; overwrites half of "keep"; deletes the snapshot and
/// punches again. `exp` always holds what recovery must show. Returns the
/// bytes punched out of the file after the first punch.
fn crash_workload(disk: &SimDir, exp: &mut Expect) -> Result<u64> {
    exp.insert("keep", (true, exact(KEEP_BLOCKS, 1)));
    exp.insert("gone", (true, exact(BIG_BLOCKS, 2)));
    let store = Store::open_in(Arc::new(disk.clone()), opts())?;
    let gone = store.volume_by_name("gone").map(|v| v.id);
    exp.get_mut("gone").unwrap().0 = false;
    store.delete_volume(gone.ok_or(Error::NotFound { what: "gone".into() })?)?;
    exp.remove("gone");
    store.checkpoint()?;
    store.punch_free_space()?;
    // What is punched in all: open already punches the chunks that were
    // wholly free, so this call's share depends on the layout.
    let punched = store.stats().punched_bytes;

    exp.insert("new", (false, exact(BIG_BLOCKS, 0)));
    let info = store.create_volume(VolumeOptions::new("new", BIG_BLOCKS * BS))?;
    exp.get_mut("new").unwrap().0 = true;
    let new = store.open_volume(info.id)?;
    exp.get_mut("new").unwrap().1 = vec![vec![0, 3]; BIG_BLOCKS as usize];
    // In 1 MiB writes, so that cuts land between writes into re-reserved
    // punched space.
    for start in (0..BIG_BLOCKS).step_by(256) {
        write_run(&new, start, 256, 3)?;
    }
    new.flush()?;
    exp.get_mut("new").unwrap().1 = exact(BIG_BLOCKS, 3);

    let keep = store.open_volume(id_of(&store, "keep"))?;
    let half = KEEP_BLOCKS / 2;
    exp.get_mut("keep").unwrap().1 = (0..KEEP_BLOCKS).map(|lb| if lb < half { vec![1, 4] } else { vec![1] }).collect();
    write_run(&keep, 0, half, 4)?;
    keep.flush()?;
    exp.get_mut("keep").unwrap().1 = (0..KEEP_BLOCKS).map(|lb| vec![if lb < half { 4 } else { 1 }]).collect();

    let snap = store.snapshot_by_name(id_of(&store, "keep"), "s").map(|s| s.id);
    store.delete_snapshot(id_of(&store, "keep"), snap.ok_or(Error::NotFound { what: "s".into() })?)?;
    store.checkpoint()?;
    store.punch_free_space()?;
    drop((new, keep));
    store.close()?;
    Ok(punched)
}

fn verify_recovered(disk: SimDir, exp: &Expect, what: &str) {
    let store = Store::open_in(Arc::new(disk), opts()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{what}: check: {:?}", report.problems);
    for (name, (must, allowed)) in exp {
        let Some(info) = store.volume_by_name(name) else {
            assert!(!must, "{what}: volume {name} lost");
            continue;
        };
        let v = store.open_volume_with(info.id, OpenMode::ReadOnly).unwrap();
        for (lb, w) in contents(&v, what).into_iter().enumerate() {
            assert!(allowed[lb].contains(&w), "{what}: {name} block {lb} shows write {w}, allowed {:?}", allowed[lb]);
        }
    }
    // The recovered store punches and reuses space again, and stays clean.
    store.punch_free_space().unwrap_or_else(|e| panic!("{what}: punch after recovery: {e}"));
    let v = volume(&store, "after", 512);
    write_run(&v, 0, 512, 9).unwrap();
    v.flush().unwrap();
    assert_eq!(contents(&v, what), vec![9; 512]);
    assert_clean(&store);
}

#[test]
fn a_power_cut_during_or_after_punching_loses_nothing_acknowledged() {
    let base = base_disk();
    let calib = base.crash(LossMode::DropAll, 0);
    let mut full = Expect::new();
    let punched = crash_workload(&calib, &mut full).unwrap();
    assert!(punched >= 4 * MIB, "the workload punched only {punched} bytes");
    let total = calib.ops_count();
    let stride: u64 = std::env::var("COWVOL_CRASH_STRIDE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let modes = [LossMode::DropAll, LossMode::KeepAll, LossMode::Random { keep_prob: 0.5, tear_prob: 0.3 }];
    let (mut k, mut recoveries) = (0, 0);
    while k <= total {
        let disk = base.crash(LossMode::DropAll, 0);
        disk.set_cut_after_ops(Some(k));
        let mut exp = Expect::new();
        let _ = crash_workload(&disk, &mut exp);
        for (i, mode) in modes.into_iter().enumerate() {
            verify_recovered(disk.crash(mode, k * 7 + i as u64), &exp, &format!("cut after {k} ops, {mode:?}"));
            recoveries += 1;
        }
        k += if k + 8 >= total { 1 } else { stride };
    }
    println!("{total} disk operations, {punched} bytes punched by the first punch, {recoveries} recoveries checked");
}
