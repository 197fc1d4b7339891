//! The reference table's change log (formats 8 and 9): a checkpoint writes
//! the count changes made since the last one instead of a page per group
//! they touch; a group's page is rewritten only once the changes kept pass
//! their budget, and the log is compacted when it holds mostly changes
//! already folded. Each chunk is sorted by group with a fence per page, so
//! a reopened store reads one group's changes without the rest of the log.
//! Counts stay what the trees imply across checkpoints, folds, compaction,
//! reopening and crashes, and a damaged chunk is refused, naming the table.

mod common;
use common::{assert_clean, block};
use cowvol::testing::{self, SimDir};
use cowvol::*;
use std::sync::Arc;

const BS: u64 = 4096;
/// Pages per group of counts (one `u32` per page in a 4 KiB page).
const GROUP: u64 = BS / 4;
const BLOCKS: u64 = 32 * GROUP;

fn opts(node_cache_bytes: u64) -> StoreOptions {
    StoreOptions { background_checkpoints: false, node_cache_bytes, ..Default::default() }
}

/// A volume of [`BLOCKS`] blocks in `store`, every block written (write
/// 0) and checkpointed, and the generation of each block.
fn filled_volume(store: &Store) -> (VolumeId, Volume, Vec<u64>) {
    let id = store.create_volume(VolumeOptions::new("v", BLOCKS * BS)).unwrap().id;
    let v = store.open_volume(id).unwrap();
    let mut gens = vec![0; BLOCKS as usize];
    overwrite(&v, &mut gens, 0..BLOCKS, 0);
    store.checkpoint().unwrap();
    (id, v, gens)
}

/// Writes generation `w` of blocks `lbs` and flushes, noting it in `gens`.
fn overwrite(v: &Volume, gens: &mut [u64], lbs: impl Iterator<Item = u64>, w: u64) {
    for lb in lbs {
        v.write_at(&block(w, lb), lb * BS).unwrap();
        gens[lb as usize] = w;
    }
    v.flush().unwrap();
}

/// Reopened (default cache), the store checks clean and volume `id` reads
/// back generations `gens`.
fn reopens_clean_with(dir: &std::path::Path, id: VolumeId, gens: &[u64]) {
    let store = Store::open(dir, opts(256 << 20)).unwrap();
    assert_clean(&store);
    assert_blocks(&store.open_volume(id).unwrap(), gens);
}

/// The generation of a block discarded: it reads as zeroes.
const DISCARDED: u64 = u64::MAX;

fn assert_blocks(v: &Volume, gens: &[u64]) {
    let mut buf = vec![0u8; BS as usize];
    for lb in 0..BLOCKS {
        v.read_at(&mut buf, lb * BS).unwrap();
        let want = match gens[lb as usize] {
            DISCARDED => vec![0; BS as usize],
            w => block(w, lb),
        };
        assert!(buf == want, "block {lb} holds the wrong data");
    }
}

/// Every `step`-th block from `first`: scattered over every group.
fn scattered(first: u64, step: u64) -> impl Iterator<Item = u64> {
    (first..BLOCKS).step_by(step as usize)
}

#[test]
fn a_checkpoint_after_scattered_overwrites_writes_their_changes_not_a_page_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    let (id, v, mut gens) = filled_volume(&store);
    // One overwrite in every 97 blocks: the old blocks' counts lie in
    // every group of data pages.
    let lbs: Vec<u64> = scattered(5, 97).collect();
    overwrite(&v, &mut gens, lbs.iter().copied(), 1);
    let before = store.written();
    store.checkpoint().unwrap();
    let table = store.written().table_bytes - before.table_bytes;
    // Rewriting each group the overwrites touched would cost a page per
    // group: 32 and more here. The changes take a dozen bytes each, a few
    // per overwrite (about four pages), and the group the new blocks filled
    // is folded, with its index page.
    assert!(table <= 8 * BS, "{table} bytes of table for {} scattered overwrites", lbs.len());
    let (live, chunks, _) = testing::change_log(&store);
    assert!(live > 0 && chunks > 0, "the changes are kept and logged: {live} kept, {chunks} chunks");
    // What the disk says (pages with the log applied) is what RAM holds.
    assert_eq!(testing::counts_differing_on_disk(&store), []);
    assert_clean(&store);
    drop(v);
    store.close().unwrap();

    // Reopened, the counts are the pages with the logged changes applied.
    reopens_clean_with(dir.path(), id, &gens);
}

#[test]
fn with_a_small_budget_groups_are_folded_and_the_log_is_compacted() {
    let disk = SimDir::new();
    // A 1 MiB node cache keeps 128 KiB of counts, and 16,384 changes.
    let small = || opts(1 << 20);
    let store = Store::open_in(Arc::new(disk.clone()), small()).unwrap();
    let (id, v, mut gens) = filled_volume(&store);
    let mut most_kept = 0;
    let mut most_chunks = 0;
    for round in 1..=24u64 {
        overwrite(&v, &mut gens, scattered(round % 13, 13), round);
        store.checkpoint().unwrap();
        assert_eq!(testing::counts_differing_on_disk(&store), [], "round {round}");
        let (live, chunks, _) = testing::change_log(&store);
        most_kept = most_kept.max(live);
        most_chunks = most_chunks.max(chunks);
    }
    // Each round keeps about 2,500 changes (an overwrite drops a data
    // page and a leaf and adds their successors): without folds they
    // would reach 60,000, and the log would hold one chunk per round.
    assert!(most_kept <= 16384 + 4000, "{most_kept} changes kept");
    assert!(most_chunks < 24, "{most_chunks} chunks: the log was never compacted");
    assert_clean(&store);
    assert_blocks(&v, &gens);
    drop(v);
    store.close().unwrap();
    let store = Store::open_in(Arc::new(disk.clone()), small()).unwrap();
    assert_clean(&store);
    assert_blocks(&store.open_volume(id).unwrap(), &gens);
}

#[test]
fn a_crash_after_logged_checkpoints_replays_onto_pages_and_log_and_checks_clean() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts(1 << 20)).unwrap();
    let (id, v, mut gens) = filled_volume(&store);
    for round in 1..=6u64 {
        overwrite(&v, &mut gens, scattered(round, 11), round);
        store.checkpoint().unwrap();
    }
    let snap = store.create_snapshot(id, SnapshotOptions::named("s")).unwrap().id;
    let at_snapshot = gens.clone();
    overwrite(&v, &mut gens, scattered(3, 7), 7);
    drop(v);
    testing::abandon(store);
    let after = disk.crash(testing::LossMode::KeepAll, 0);

    let store = Store::open_in(Arc::new(after), opts(1 << 20)).unwrap();
    assert_clean(&store);
    assert_blocks(&store.open_volume(id).unwrap(), &gens);
    let from_snapshot = store.create_volume_from_snapshot(snap, VolumeOptions::new("f", BLOCKS * BS)).unwrap().id;
    assert_blocks(&store.open_volume(from_snapshot).unwrap(), &at_snapshot);
    store.delete_snapshot(id, snap).unwrap();
    store.checkpoint().unwrap();
    assert_clean(&store);
}

#[test]
fn a_damaged_change_log_chunk_is_refused_naming_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    let (_, v, mut gens) = filled_volume(&store);
    overwrite(&v, &mut gens, scattered(1, 50), 1);
    drop(v);
    store.checkpoint().unwrap();
    store.close().unwrap();
    let path = dir.path().join("cowvol.dat");
    let mut image = std::fs::read(&path).unwrap();
    let pages = testing::table_pages(&image);
    let (page, _) = *pages.iter().rev().find(|(_, kind)| *kind == "changes").expect("a change log page");
    image[8192 + page as usize * BS as usize + 30] ^= 0x10;
    std::fs::write(&path, image).unwrap();
    // Open reads no part of the log; the first need of a group's counts
    // reads all of it, and `check` needs every group's.
    let found = match Store::open(dir.path(), opts(256 << 20)) {
        Err(e) => e,
        Ok(store) => store.check().expect_err("check passed over a damaged change log"),
    };
    match found {
        Error::Corruption { what, location, .. } => {
            assert_eq!(what, "reference table");
            assert!(location.contains("change log"), "{location}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// A store in `dir` with a filled volume and three rounds of one overwrite
/// in 64 blocks, each checkpointed: a few dozen changes per group each,
/// too few for a group to be folded, so each round's chunk spans several
/// pages and names every group. Closed; returns the volume, the
/// generations of its blocks and the chunks of the log.
fn store_with_an_unfolded_log(dir: &std::path::Path) -> (VolumeId, Vec<u64>, usize) {
    let store = Store::open(dir, opts(256 << 20)).unwrap();
    let (id, v, mut gens) = filled_volume(&store);
    for round in 1..=3u64 {
        overwrite(&v, &mut gens, scattered(round, 64), round);
        store.checkpoint().unwrap();
    }
    let (_, chunks, entries) = testing::change_log(&store);
    assert!(chunks >= 3 && entries > 2_000, "{chunks} chunks, {entries} entries");
    drop(v);
    store.close().unwrap();
    (id, gens, chunks)
}

#[test]
fn a_reopened_store_reads_a_groups_changes_without_the_rest_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (id, mut gens, chunks) = store_with_an_unfolded_log(dir.path());
    let image = std::fs::read(dir.path().join("cowvol.dat")).unwrap();
    let log_pages = testing::table_pages(&image).iter().filter(|(_, kind)| *kind == "changes").count() as u64;
    // A page or two per chunk for each group whose counts were needed.
    let at_most = |store: &Store| 2 * chunks as u64 * testing::count_groups(store).0.max(1);

    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    let at_open = testing::change_log_page_reads(&store);
    assert!(!testing::change_log_read_whole(&store), "open read the whole log");
    assert!(at_open <= at_most(&store), "open read {at_open} of {log_pages} log pages");
    // A snapshot and a few overwrites need a handful of groups (the
    // leaves', the root's), not the log. (A checkpoint may then read this
    // small log whole: settling the groups the overwrites lowered one by
    // one would read as many of its pages.)
    let snap = store.create_snapshot(id, SnapshotOptions::named("s")).unwrap().id;
    let v = store.open_volume(id).unwrap();
    let at_snapshot = gens.clone();
    overwrite(&v, &mut gens, [7, 9, 3000].into_iter(), 9);
    assert!(!testing::change_log_read_whole(&store), "a snapshot and three overwrites read the whole log");
    let read = testing::change_log_page_reads(&store);
    assert!(read <= at_most(&store), "read {read} log pages for {:?} groups", testing::count_groups(&store));
    store.checkpoint().unwrap();
    assert_blocks(&v, &gens);
    // Reading the rest now must not apply twice what was read group by
    // group: the disk and RAM agree, and the trees' counts check clean.
    assert_eq!(testing::counts_differing_on_disk(&store), []);
    assert!(testing::change_log_read_whole(&store));
    assert_clean(&store);
    assert_blocks(&store.open_snapshot(id, snap).unwrap(), &at_snapshot);
    drop(v);
    store.close().unwrap();
    reopens_clean_with(dir.path(), id, &gens);
}

#[test]
fn groups_leaving_ram_let_their_logged_changes_go_and_read_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let (id, mut gens, _) = store_with_an_unfolded_log(dir.path());
    // A 1 MiB node cache keeps 32 groups of counts in RAM, fewer than the
    // volume's: loads evict groups, each taking its logged changes with
    // it. Its budget of changes (8,192) is more than the log holds, so the
    // log is never read whole to fold groups.
    let tiny = || opts(1 << 20);
    let store = Store::open(dir.path(), tiny()).unwrap();
    assert_clean(&store);
    let v = store.open_volume(id).unwrap();
    for round in 10..=12u64 {
        overwrite(&v, &mut gens, scattered(round, 37), round);
        assert!(!testing::change_log_read_whole(&store), "round {round}: the log was read whole");
        assert_eq!(testing::logged_changes_outside_ram(&store), 0, "round {round}: they did not leave");
        let (reads, in_ram) = testing::count_groups(&store);
        assert!(reads > in_ram, "round {round}: {reads} group reads, {in_ram} groups in RAM: nothing was evicted");
        assert_blocks(&v, &gens);
        store.checkpoint().unwrap();
    }
    // Read back group by group, again and again, they are still every
    // change: the disk and RAM agree, and the counts check clean.
    assert_eq!(testing::counts_differing_on_disk(&store), []);
    assert_clean(&store);
    drop(v);
    store.close().unwrap();
    let store = Store::open(dir.path(), tiny()).unwrap();
    assert_clean(&store);
    assert_blocks(&store.open_volume(id).unwrap(), &gens);
    assert_eq!(testing::counts_differing_on_disk(&store), []);
}

/// A checkpoint sets pages aside for the most entries its chunk may hold,
/// in as many runs as the free map gives; on a file whose free space is
/// scattered single pages, those are many. The chunk keeps only the pages
/// its entries fill: the others go back to the free map, and no catalog
/// lists a run or a fence for them.
#[test]
fn a_chunk_laid_over_scattered_free_pages_keeps_only_the_pages_it_fills() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    let (id, v, mut gens) = filled_volume(&store);
    // Every other block discarded: its page is free once a checkpoint
    // has made the discard durable, between two pages in use.
    for lb in (0..BLOCKS).step_by(2) {
        v.discard(lb * BS, BS).unwrap();
        gens[lb as usize] = DISCARDED;
    }
    v.flush().unwrap();
    store.checkpoint().unwrap();
    let mut fragmented = false;
    for round in 1..=4u64 {
        let lbs = scattered(2 * round + 1, 16);
        overwrite(&v, &mut gens, lbs, round);
        store.checkpoint().unwrap();
        let per_page = BS / 12 - 1;
        for (entries, pages, runs) in testing::change_log_chunks(&store) {
            fragmented |= runs > 1;
            assert!(
                pages <= entries.div_ceil(per_page).max(1),
                "round {round}: a chunk of {entries} entries kept {pages} pages in {runs} runs"
            );
        }
    }
    assert!(fragmented, "no chunk was laid over more than one run: the free space was not scattered");
    assert_eq!(testing::counts_differing_on_disk(&store), []);
    assert_clean(&store);
    drop(v);
    store.close().unwrap();
    reopens_clean_with(dir.path(), id, &gens);
}

/// Past their budget, folds take the changes kept down to seven eighths of
/// it, the groups with the most changes first: the changes kept stay near
/// the budget, so each group page written carries many of them.
/// Scattered overwrites of a volume spanning 512 groups, a few changes per
/// group per round, too few for a group to fold for density alone. The
/// blocks are keyed, so the volume costs little disk.
#[test]
fn past_the_budget_folds_keep_the_changes_near_it() {
    const GROUPS: u64 = 512;
    const BLOCKS: u64 = GROUPS * GROUP;
    let dir = tempfile::tempdir().unwrap();
    let keyed = || Arc::new(testing::KeyedDir::create(dir.path(), BS as usize).unwrap());
    // A 1 MiB budget keeps 16,384 changes.
    let budget = 16384;
    let store = Store::open_in(keyed(), opts(1 << 20)).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", BLOCKS * BS)).unwrap().id;
    let v = store.open_volume(id).unwrap();
    let mut keys = vec![0u64; BLOCKS as usize];
    let mut next_key = 1;
    for first in (0..BLOCKS).step_by(256) {
        let mut buf = Vec::with_capacity(256 * BS as usize);
        for lb in first..first + 256 {
            buf.extend(testing::keyed_block(next_key, BS as usize));
            keys[lb as usize] = next_key;
            next_key += 1;
        }
        v.write_at(&buf, first * BS).unwrap();
    }
    v.flush().unwrap();
    store.checkpoint().unwrap();

    let mut rng = testing::SplitMix64(12);
    let mut past = false;
    let mut kept_once_past = Vec::new();
    for round in 0..32 {
        for _ in 0..1000 {
            let lb = rng.below(BLOCKS);
            v.write_at(&testing::keyed_block(next_key, BS as usize), lb * BS).unwrap();
            keys[lb as usize] = next_key;
            next_key += 1;
        }
        v.flush().unwrap();
        let (before, _, _) = testing::change_log(&store);
        past |= before > budget;
        store.checkpoint().unwrap();
        let (kept, _, _) = testing::change_log(&store);
        if past {
            kept_once_past.push(kept);
        }
        assert!(kept <= budget + 4000, "round {round}: {kept} changes kept");
    }
    assert!(kept_once_past.len() > 4, "the budget was passed late or never: {kept_once_past:?}");
    // Seven eighths of 16,384 is 14,336: after each fold the changes kept
    // sit just under it, never near half the budget.
    assert!(kept_once_past.iter().all(|&k| k >= 12000), "{kept_once_past:?}");
    assert_eq!(testing::counts_differing_on_disk(&store), []);
    assert_clean(&store);
    let mut buf = vec![0u8; BS as usize];
    for lb in (0..BLOCKS).step_by(97) {
        v.read_at(&mut buf, lb * BS).unwrap();
        assert_eq!(buf, testing::keyed_block(keys[lb as usize], BS as usize), "block {lb}");
    }
    drop(v);
    store.close().unwrap();
    let store = Store::open_in(keyed(), opts(1 << 20)).unwrap();
    assert_clean(&store);
}
