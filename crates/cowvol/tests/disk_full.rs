//! A full disk: writes fail with `Error::NoSpace` and change nothing, no
//! acknowledged data is lost, `check()` stays clean (no page owned twice, none
//! leaked), freeing space inside the store (deleting a snapshot, discarding,
//! checkpointing) makes writes work again, and a crash at a full disk
//! recovers cleanly.

use cowvol::testing::{self, LossMode, SimDir};
use cowvol::*;
use std::sync::Arc;

mod common;
use common::{block, decode};

const BS: usize = 4096;
const BLOCKS: u64 = 2048;
const MIB: u64 = 1 << 20;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, checkpoint_wal_bytes: 512 << 10, ..Default::default() }
}

fn contents(h: &Volume, what: &str) -> Vec<u64> {
    let n = h.size().div_ceil(BS as u64);
    let mut buf = vec![0u8; h.size() as usize];
    h.read_at(&mut buf, 0).unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
    (0..n)
        .map(|lb| {
            let b = &buf[lb as usize * BS..(lb as usize + 1) * BS];
            decode(b, lb).unwrap_or_else(|| panic!("{what}: block {lb} holds garbage"))
        })
        .collect()
}

fn write_run(v: &Volume, start: u64, n: u64, w: u64) -> Result<()> {
    let buf: Vec<u8> = (start..start + n).flat_map(|lb| block(w, lb)).collect();
    v.write_at(&buf, start * BS as u64)
}

fn assert_clean(store: &Store, what: &str) {
    let r = store.check().unwrap_or_else(|e| panic!("{what}: check failed: {e}"));
    assert!(r.is_clean(), "{what}: check found {:?}", r.problems);
}

/// A store filled until a write or flush failed for lack of space.
struct Filled {
    disk: SimDir,
    store: Store,
    vol: Volume,
    /// Write id per block as the store shows it now.
    cur: Vec<u64>,
    /// Write id per block as of the last successful flush.
    acked: Vec<u64>,
    snap: SnapshotId,
    snap_content: Vec<u64>,
    next_w: u64,
    failed_in: &'static str,
    acked_writes: u64,
}

fn fill(capacity: u64) -> Filled {
    let disk = SimDir::new();
    disk.set_capacity(Some(capacity));
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", BLOCKS * BS as u64)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut cur = vec![0u64; BLOCKS as usize];
    let mut next_w = 1;
    for start in (0..128).step_by(8) {
        write_run(&vol, start, 8, next_w).unwrap();
        cur[start as usize..start as usize + 8].fill(next_w);
        next_w += 1;
    }
    vol.flush().unwrap();
    // The snapshot pins the first 128 blocks' pages while they are overwritten.
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("pin")).unwrap();
    let snap_content = cur.clone();
    let mut acked = cur.clone();
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut acked_writes = 0;
    let mut failed_in = "";
    for i in 0..100_000u64 {
        let start = (i * 4) % BLOCKS;
        let w = next_w;
        next_w += 1;
        match write_run(&vol, start, 4, w) {
            Ok(()) => {
                cur[start as usize..start as usize + 4].fill(w);
                pending.push((start, w));
            }
            Err(Error::NoSpace { .. }) => {
                failed_in = "write";
                break;
            }
            Err(e) => panic!("write {i}: expected NoSpace or success, got {e:?}"),
        }
        if i % 4 == 3 {
            match vol.flush() {
                Ok(()) => {
                    acked.clone_from(&cur);
                    acked_writes += pending.len() as u64;
                    pending.clear();
                }
                Err(Error::NoSpace { .. }) => {
                    failed_in = "flush";
                    break;
                }
                Err(e) => panic!("flush after write {i}: expected NoSpace or success, got {e:?}"),
            }
        }
    }
    assert!(!failed_in.is_empty(), "the disk never filled up");
    Filled { disk, store, vol, cur, acked, snap: snap.id, snap_content, next_w, failed_in, acked_writes }
}

#[test]
fn full_disk_then_free_space_inside_the_store_and_write_again() {
    let mut f = fill(14 * MIB);
    println!(
        "filled a {} MiB disk: {} acknowledged writes, then NoSpace in {}; used {} bytes",
        14,
        f.acked_writes,
        f.failed_in,
        f.disk.used_bytes()
    );
    // The failed write changed nothing; everything else reads as written.
    assert_eq!(contents(&f.vol, "after NoSpace"), f.cur);
    let vid = f.vol.volume_id().unwrap();
    assert_eq!(contents(&f.store.open_snapshot(vid, f.snap).unwrap(), "snapshot"), f.snap_content);
    assert_clean(&f.store, "after NoSpace");
    // Free space: the snapshot's old versions and a discarded range, made
    // reusable by a checkpoint.
    assert!(f.store.delete_snapshot(vid, f.snap).unwrap().existed);
    f.vol.discard(0, 400 * BS as u64).unwrap();
    f.cur[..400].fill(0);
    f.store.checkpoint().unwrap_or_else(|e| panic!("checkpoint after freeing space: {e}"));
    assert_clean(&f.store, "after freeing");
    // Writes work again.
    for k in 0..50u64 {
        let start = 100 + k * 4;
        let w = f.next_w;
        f.next_w += 1;
        write_run(&f.vol, start, 4, w).unwrap_or_else(|e| panic!("write {k} after freeing space: {e}"));
        f.cur[start as usize..start as usize + 4].fill(w);
    }
    f.vol.flush().unwrap();
    assert_eq!(contents(&f.vol, "after writing again"), f.cur);
    assert_clean(&f.store, "after writing again");
    // And all of it survives a power cut, on the same full disk.
    let acked = f.cur.clone();
    let recovered = f.disk.crash(LossMode::DropAll, 0);
    drop(f.vol);
    testing::abandon(f.store);
    let store = Store::open_in(Arc::new(recovered), opts()).unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_clean(&store, "reopened");
    assert_eq!(contents(&store.open_volume(vid).unwrap(), "reopened"), acked);
}

#[test]
fn crash_at_a_full_disk_recovers_the_acknowledged_state() {
    let f = fill(13 * MIB);
    println!("filled a 13 MiB disk: {} acknowledged writes, NoSpace in {}", f.acked_writes, f.failed_in);
    let vid = f.vol.volume_id().unwrap();
    let modes = [
        (LossMode::DropAll, 0),
        (LossMode::KeepAll, 0),
        (LossMode::Random { keep_prob: 0.5, tear_prob: 0.5 }, 1),
        (LossMode::Random { keep_prob: 0.5, tear_prob: 0.5 }, 2),
        (LossMode::Prefix, 3),
    ];
    let mut opened_full = 0;
    for (mode, seed) in modes {
        let what = format!("crash {mode:?} seed {seed}");
        // Reopen on the disk as full as it was.
        let recovered = f.disk.crash(mode, seed);
        let store = match Store::open_in(Arc::new(recovered.clone()), opts()) {
            Ok(s) => {
                opened_full += 1;
                s
            }
            Err(e) => panic!("{what}: reopening at a full disk failed: {e}"),
        };
        assert_clean(&store, &what);
        let got = contents(&store.open_volume(vid).unwrap(), &what);
        for (lb, (&g, (&a, &c))) in got.iter().zip(f.acked.iter().zip(&f.cur)).enumerate() {
            assert!(g == a || g == c, "{what}: block {lb} shows write {g}, acknowledged {a}, last written {c}");
        }
        let snaps = store.list_snapshots(vid);
        assert_eq!(snaps.len(), 1, "{what}");
        assert_eq!(contents(&store.open_snapshot(vid, snaps[0].id).unwrap(), &what), f.snap_content, "{what}");
    }
    println!("reopened at a full disk: {opened_full} of {}", modes.len());
    drop(f.vol);
    testing::abandon(f.store);
}

/// A multi-block write that gets some pages from the free map and then
/// fails to grow the file: nothing of it may stay allocated or visible.
#[test]
fn no_space_in_the_middle_of_a_multi_block_write() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", BLOCKS * BS as u64)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut cur = vec![0u64; BLOCKS as usize];
    for (i, start) in (0..256).step_by(16).enumerate() {
        write_run(&vol, start, 16, i as u64 + 1).unwrap();
        cur[start as usize..start as usize + 16].fill(i as u64 + 1);
    }
    vol.flush().unwrap();
    store.checkpoint().unwrap();
    let free = store.stats().free_bytes / BS as u64;
    assert!(free > 0 && free < 2000, "{free} free pages");
    // The file may grow by two more pages, no further.
    disk.set_capacity(Some(disk.used_bytes() + 2 * BS as u64));
    let before = store.stats();
    let n = free + 20;
    let r = write_run(&vol, 10, n, 1000);
    assert!(matches!(r, Err(Error::NoSpace { .. })), "a {n}-block write with {free} pages free: {r:?}");
    assert_eq!(contents(&vol, "after the failed write"), cur, "the failed write left traces");
    assert_clean(&store, "after the failed write");
    let after = store.stats();
    assert_eq!(after.free_bytes, before.free_bytes, "pages of the failed write were not given back");
    assert_eq!(after.data_blocks, before.data_blocks);
    // A write that fits in what is free succeeds, and survives a crash.
    write_run(&vol, 10, free.min(8), 1001).unwrap();
    cur[10..10 + free.min(8) as usize].fill(1001);
    vol.flush().unwrap();
    assert_clean(&store, "after the smaller write");
    let recovered = disk.crash(LossMode::DropAll, 0);
    drop(vol);
    testing::abandon(store);
    recovered.set_capacity(None);
    let store = Store::open_in(Arc::new(recovered), opts()).unwrap();
    assert_clean(&store, "reopened");
    assert_eq!(contents(&store.open_volume(info.id).unwrap(), "reopened"), cur);
}

/// Thread A discards ranges and rewrites them (its freed pages go back to
/// the allocator at each checkpoint) while thread B writes its own ranges,
/// reusing those pages. Contents must match each thread's model.
#[test]
fn discard_racing_with_page_reuse() {
    const HALF: u64 = 256;
    for round in 0..3u64 {
        let disk = SimDir::new();
        let o = StoreOptions { background_checkpoints: true, checkpoint_wal_bytes: 64 << 10, ..Default::default() };
        let store = Store::open_in(Arc::new(disk.clone()), o.clone()).unwrap();
        let info = store
            .create_volume(VolumeOptions {
                access_mode: AccessMode::ReadWriteMany,
                ..VolumeOptions::new("v", 2 * HALF * BS as u64)
            })
            .unwrap();
        let data_written = std::sync::atomic::AtomicU64::new(0);
        let models: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2u64)
                .map(|t| {
                    let vol = store.open_volume(info.id).unwrap();
                    let store = store.clone();
                    let data_written = &data_written;
                    s.spawn(move || {
                        let base = t * HALF;
                        let mut model = vec![0u64; HALF as usize];
                        let mut rng = 0x1234_5678 ^ (t << 40) ^ round;
                        let mut next = |m: u64| {
                            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            (rng >> 33) % m
                        };
                        for i in 0..1200u64 {
                            let w = (t + 1) << 32 | (i + 1);
                            let start = next(HALF - 9);
                            let n = next(8) + 1;
                            if t == 0 && i % 3 == 0 {
                                // Whole blocks, or a byte range with partial blocks at its ends.
                                let (off, len) = if i % 2 == 0 {
                                    (start * BS as u64, n * BS as u64)
                                } else {
                                    (start * BS as u64 + 100, n * BS as u64 - 50)
                                };
                                vol.discard(base * BS as u64 + off, len).unwrap();
                                let first = off.div_ceil(BS as u64);
                                let end = (off + len) / BS as u64;
                                for lb in first..end {
                                    model[lb as usize] = 0;
                                }
                                // Partial edges are zeroed in place: mark them as
                                // their own "write" the model can check.
                                for lb in [off / BS as u64, (off + len) / BS as u64] {
                                    if lb < first || lb >= end {
                                        let mut b = vec![0u8; BS];
                                        vol.read_at(&mut b, (base + lb) * BS as u64).unwrap();
                                        let lo = off.max(lb * BS as u64) - lb * BS as u64;
                                        let hi = (off + len).min((lb + 1) * BS as u64) - lb * BS as u64;
                                        assert!(
                                            b[lo as usize..hi as usize].iter().all(|&x| x == 0),
                                            "discarded bytes read back non-zero"
                                        );
                                        // Rewrite the block whole so the model stays per block.
                                        write_run(&vol, base + lb, 1, w).unwrap();
                                        model[lb as usize] = w;
                                    }
                                }
                            } else {
                                write_run(&vol, base + start, n, w).unwrap();
                                data_written.fetch_add(n * BS as u64, std::sync::atomic::Ordering::Relaxed);
                                for lb in start..start + n {
                                    model[lb as usize] = w;
                                }
                            }
                            if i % 10 == 9 {
                                vol.flush().unwrap();
                            }
                            if t == 0 && i % 50 == 49 {
                                store.checkpoint().unwrap();
                            }
                            if i % 25 == 0 {
                                // Only this thread's half: the other one may be mid-update.
                                let mut buf = vec![0u8; HALF as usize * BS];
                                vol.read_at(&mut buf, base * BS as u64).unwrap();
                                for (k, b) in buf.chunks(BS).enumerate() {
                                    let got = decode(b, base + k as u64);
                                    assert_eq!(
                                        got,
                                        Some(model[k]),
                                        "thread {t} step {i}: block {} differs",
                                        base + k as u64
                                    );
                                }
                            }
                        }
                        vol.flush().unwrap();
                        model
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let want: Vec<u64> = models.concat();
        // Freed pages were reused: the file is smaller than the data written.
        let written = data_written.into_inner();
        let file = store.stats().file_bytes;
        assert!(file < written, "round {round}: no page reuse? file of {file} bytes, {written} bytes of data written");
        println!("discard race round {round}: {written} bytes of data written, file of {file} bytes");
        let vol = store.open_volume(info.id).unwrap();
        assert_eq!(contents(&vol, "after the race"), want);
        assert_clean(&store, "after the race");
        drop(vol);
        let recovered = disk.crash(LossMode::DropAll, round);
        testing::abandon(store);
        let store = Store::open_in(Arc::new(recovered), o).unwrap();
        assert_clean(&store, "reopened");
        assert_eq!(contents(&store.open_volume(info.id).unwrap(), "reopened"), want);
    }
}

// Findings 1 and 2 of the hardening review: a full disk on a volume of
// thousands of leaves, pinned and unpinned, with free space whole or in
// fragments. Each leaf maps 256 blocks (1 MiB), so a volume with one block
// written per leaf has as many tree nodes as data blocks.

const LEAF_BLOCKS: u64 = 256;
const LEAVES: u64 = 2048;
const PAGE: u64 = BS as u64;

/// A 2 GiB volume with one block written in each of its 2,048 leaves,
/// flushed and checkpointed, on a disk that holds `spare_pages` more pages
/// than the store uses now.
fn one_block_per_leaf(options: StoreOptions, spare_pages: u64) -> (SimDir, Store, Volume) {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), options).unwrap();
    let info = store.create_volume(VolumeOptions::new("wide", LEAVES * LEAF_BLOCKS * PAGE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    for leaf in 0..LEAVES {
        write_run(&vol, leaf * LEAF_BLOCKS, 1, 1).unwrap();
    }
    vol.flush().unwrap();
    store.checkpoint().unwrap();
    disk.set_capacity(Some(disk.used_bytes() + spare_pages * PAGE));
    (disk, store, vol)
}

/// Reads the first block of every leaf and returns the write ids.
fn leaf_heads(vol: &Volume, what: &str) -> Vec<u64> {
    let mut b = vec![0u8; BS];
    (0..LEAVES)
        .map(|leaf| {
            let lb = leaf * LEAF_BLOCKS;
            vol.read_at(&mut b, lb * PAGE).unwrap_or_else(|e| panic!("{what}: read of block {lb}: {e}"));
            decode(&b, lb).unwrap_or_else(|| panic!("{what}: block {lb} holds garbage"))
        })
        .collect()
}

/// Overwrites the first block of leaves round-robin from `from` for `n`
/// writes, flushing every 8; returns the writes acknowledged before the
/// first `NoSpace` (all `n` when none came).
fn overwrite_leaf_heads(vol: &Volume, ids: &mut [u64], from: u64, n: u64, next_w: &mut u64) -> u64 {
    for i in 0..n {
        let leaf = (from + i) % LEAVES;
        let w = *next_w;
        match write_run(vol, leaf * LEAF_BLOCKS, 1, w) {
            Ok(()) => {
                *next_w += 1;
                ids[leaf as usize] = w;
            }
            Err(Error::NoSpace { .. }) => return i,
            Err(e) => panic!("write {i}: expected success or NoSpace, got {e}"),
        }
        if i % 8 == 7 {
            match vol.flush() {
                Ok(()) => {}
                Err(Error::NoSpace { .. }) => return i + 1,
                Err(e) => panic!("flush after write {i}: expected success or NoSpace, got {e}"),
            }
        }
    }
    n
}

/// Finding 1, unpinned: overwriting data in place costs no space in the
/// long run, so at a full disk such writes must go on for ever. Before the
/// fix, about 750 writes in, every change failed with "refuses writes until
/// reopened": nodes copied or changed in place were not counted in the
/// metadata reserve and the checkpoint that would free space had no room.
#[test]
fn overwrites_at_a_full_disk_never_wedge_a_volume_of_thousands_of_leaves() {
    let (_disk, store, vol) = one_block_per_leaf(opts(), 700);
    let mut ids = vec![1u64; LEAVES as usize];
    let mut next_w = 2;
    let n = 3 * LEAVES;
    let done = overwrite_leaf_heads(&vol, &mut ids, 0, n, &mut next_w);
    assert_eq!(done, n, "an overwrite failed with NoSpace after {done} writes");
    vol.flush().unwrap();
    assert_eq!(leaf_heads(&vol, "after the overwrites"), ids);
    assert_clean(&store, "after the overwrites");
}

/// Finding 1, pinned: with a snapshot holding every old block, writes fill
/// the disk and then fail with `NoSpace`, only once the free space inside
/// the file is nearly gone; the store stays writable, and deleting the
/// snapshot makes writes work again with no reopen and no explicit call.
#[test]
fn a_full_disk_pinned_by_a_snapshot_recovers_when_the_snapshot_is_deleted() {
    let spare = 1500;
    let (_disk, store, vol) = one_block_per_leaf(opts(), spare);
    let vid = vol.volume_id().unwrap();
    let free_at_cap = store.stats().free_bytes / PAGE + spare;
    let snap = store.create_snapshot(vid, SnapshotOptions::named("pin")).unwrap();
    let mut ids = vec![1u64; LEAVES as usize];
    let mut next_w = 2;
    let acked = overwrite_leaf_heads(&vol, &mut ids, 0, 3 * LEAVES, &mut next_w);
    let free_at_failure = store.stats().free_bytes / PAGE;
    println!("{free_at_cap} pages free at the cap; {acked} writes, then NoSpace with {free_at_failure} pages free");
    assert!(acked < 3 * LEAVES, "the disk never filled up");
    // Each write of a pinned block costs its data page and a copy of its
    // leaf; what stays free is the reserve that lets a checkpoint and the
    // log go on (two WAL segments of 256 pages and a little more).
    assert!(acked >= (free_at_cap - 600) / 2, "only {acked} writes fit in {free_at_cap} free pages");
    // Free pages at the failure include one for each leaf copied since the
    // last checkpoint (about one per write), which that checkpoint needs.
    let spare_at_failure = free_at_failure.saturating_sub(acked);
    assert!(spare_at_failure < 600, "NoSpace with {free_at_failure} pages free after {acked} writes");
    assert_clean(&store, "at NoSpace");
    // Still writable: the failure poisoned nothing.
    assert!(store.delete_snapshot(vid, snap.id).unwrap().existed);
    let from = acked % LEAVES;
    let more = overwrite_leaf_heads(&vol, &mut ids, from, 2 * LEAVES, &mut next_w);
    assert_eq!(more, 2 * LEAVES, "after deleting the snapshot, an overwrite failed after {more} writes");
    vol.flush().unwrap();
    assert_eq!(leaf_heads(&vol, "after deleting the snapshot"), ids);
    assert_clean(&store, "after deleting the snapshot");
}

/// Finding 1 with discard: new data fills the disk; discarding part of
/// it makes room for new writes by itself.
#[test]
fn discard_at_a_full_disk_makes_room_by_itself() {
    let (_disk, store, vol) = one_block_per_leaf(opts(), 1500);
    let mut w = 2;
    let mut written = Vec::new();
    // Fill with new blocks: the second block of each leaf, then the third...
    'fill: for k in 1..LEAF_BLOCKS {
        for leaf in 0..LEAVES {
            let lb = leaf * LEAF_BLOCKS + k;
            match write_run(&vol, lb, 1, w) {
                Ok(()) => written.push((lb, w)),
                Err(Error::NoSpace { .. }) => break 'fill,
                Err(e) => panic!("write of block {lb}: {e}"),
            }
            w += 1;
        }
    }
    assert!(written.len() < (LEAVES * (LEAF_BLOCKS - 1)) as usize, "the disk never filled up");
    vol.flush().unwrap_or_else(|e| panic!("flush at a full disk: {e}"));
    let half = written.len() / 2;
    for &(lb, _) in &written[..half] {
        vol.discard(lb * PAGE, PAGE).unwrap_or_else(|e| panic!("discard of block {lb} at a full disk: {e}"));
    }
    vol.flush().unwrap();
    // Nine tenths of the blocks discarded: the rest of the room they freed
    // is held, until the next checkpoint, by the reserve for what the
    // discards and the writes changed (table groups, copied leaves).
    println!("{} blocks written at a full disk, {half} discarded", written.len());
    for (i, &(lb, _)) in written[..half - half / 10].iter().enumerate() {
        write_run(&vol, lb, 1, w).unwrap_or_else(|e| panic!("write {i} into discarded space: {e}"));
        w += 1;
    }
    vol.flush().unwrap();
    assert_clean(&store, "after writing into discarded space");
}

/// Finding 2: free space in single pages. A 64 MiB volume written, pinned,
/// every other block rewritten, the snapshot deleted: half the old pages
/// come back as 8,192 free single pages, and the disk is capped there. A
/// new WAL segment needs 256 contiguous pages; before the fix every write,
/// snapshot create and delete failed with `NoSpace` after about 930
/// write+flush pairs, with 31 MiB free inside the file, until someone
/// called `checkpoint()`. With background checkpoints on and off.
#[test]
fn fragmented_free_space_never_blocks_writes() {
    for background in [false, true] {
        let options = StoreOptions { background_checkpoints: background, ..Default::default() };
        fragmented_free_space_case(options, &format!("background checkpoints {background}"));
    }
}

fn fragmented_free_space_case(options: StoreOptions, what: &str) {
    const N: u64 = 16_384;
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), options.clone()).unwrap();
    let info = store.create_volume(VolumeOptions::new("frag", N * PAGE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut ids = vec![1u64; N as usize];
    for start in (0..N).step_by(64) {
        write_run(&vol, start, 64, 1).unwrap();
    }
    vol.flush().unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("pin")).unwrap();
    for lb in (0..N).step_by(2) {
        write_run(&vol, lb, 1, 2).unwrap();
        ids[lb as usize] = 2;
    }
    vol.flush().unwrap();
    store.delete_snapshot(info.id, snap.id).unwrap();
    store.checkpoint().unwrap();
    disk.set_capacity(Some(disk.used_bytes()));
    let free = store.stats().free_bytes / PAGE;
    assert!(free > 8000, "{what}: only {free} pages free after the rewrite");
    let mut rng = common::Rng(7);
    for i in 0..4000u64 {
        let w = i + 3;
        let lb = rng.below(N);
        write_run(&vol, lb, 1, w).unwrap_or_else(|e| panic!("{what}: write {i} with {free} pages free: {e}"));
        ids[lb as usize] = w;
        vol.flush().unwrap_or_else(|e| panic!("{what}: flush {i}: {e}"));
        if i % 500 == 499 {
            let s = store
                .create_snapshot(info.id, SnapshotOptions::named(format!("s{i}")))
                .unwrap_or_else(|e| panic!("{what}: snapshot create after {i} pairs: {e}"));
            store.delete_snapshot(info.id, s.id).unwrap_or_else(|e| panic!("{what}: snapshot delete: {e}"));
        }
    }
    let verify = |vol: &Volume, when: &str| {
        let mut buf = vec![0u8; (N * PAGE) as usize];
        vol.read_at(&mut buf, 0).unwrap();
        for (lb, b) in buf.chunks(BS).enumerate() {
            assert_eq!(decode(b, lb as u64), Some(ids[lb]), "{what}, {when}: block {lb}");
        }
    };
    verify(&vol, "after the writes");
    assert_clean(&store, what);
    // Everything was flushed: a power cut loses none of it, and the store
    // reopens on the same full disk.
    drop(vol);
    let recovered = disk.crash(LossMode::DropAll, 0);
    testing::abandon(store);
    let store = Store::open_in(Arc::new(recovered), options).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    verify(&store.open_volume(info.id).unwrap(), "after a power cut");
    assert_clean(&store, what);
}

/// Snapshots taken at a full disk use only what changes that add to the
/// catalog may use: before this rule they took the last WAL segments and
/// catalog room (746 snapshots in), and then deletes failed with `NoSpace`
/// too, so nothing could free space. Now creates are refused while the
/// reserve for freeing changes is intact, deletes always go through, and
/// creates work again after them.
#[test]
fn snapshots_at_a_full_disk_never_keep_deletes_out() {
    let (_disk, store, vol) = one_block_per_leaf(opts(), 1500);
    let vid = vol.volume_id().unwrap();
    let mut ids = vec![1u64; LEAVES as usize];
    let mut next_w = 2;
    // Pinned overwrites until the data fills the disk, a snapshot every 64.
    let mut snaps = Vec::new();
    for round in 0.. {
        let done = overwrite_leaf_heads(&vol, &mut ids, round * 64, 64, &mut next_w);
        if done < 64 {
            break;
        }
        snaps.push(store.create_snapshot(vid, SnapshotOptions::named(format!("pin{round}"))).unwrap().id);
    }
    let pinned = snaps.len();
    // Then snapshots alone, until one is refused.
    let refused = (0..100_000)
        .find(|i| match store.create_snapshot(vid, SnapshotOptions::named(format!("meta{i}"))) {
            Ok(s) => {
                snaps.push(s.id);
                false
            }
            Err(Error::NoSpace { .. }) => true,
            Err(e) => panic!("snapshot {i} at a full disk: {e}"),
        })
        .expect("100,000 snapshots and the disk never filled up");
    println!("{pinned} pinning snapshots, then {refused} more before NoSpace");
    assert_clean(&store, "after the refused snapshot");
    for (i, id) in snaps.iter().enumerate() {
        store.delete_snapshot(vid, *id).unwrap_or_else(|e| panic!("delete {i} of {} at a full disk: {e}", snaps.len()));
    }
    let after = store.create_snapshot(vid, SnapshotOptions::named("after")).unwrap();
    store.delete_snapshot(vid, after.id).unwrap(); // it would pin the blocks overwritten next
    let more = overwrite_leaf_heads(&vol, &mut ids, 0, LEAVES, &mut next_w);
    assert_eq!(more, LEAVES, "writes after the deletes failed after {more}");
    vol.flush().unwrap();
    assert_eq!(leaf_heads(&vol, "after the deletes"), ids);
    assert_clean(&store, "after the deletes");
}
