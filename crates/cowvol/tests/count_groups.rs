//! Reference counts paged through the reference table: opening a store
//! reads a group's page only when the table cannot tell without it where
//! its free pages are; writes never wait for one; and with a budget far
//! smaller than the store, counts leave RAM and come back with the values
//! the trees imply, across snapshots, deletes, checkpoints and reopening.

use cowvol::testing::{self, SimDir};
use cowvol::*;
use std::sync::Arc;

const BS: u64 = 4096;
/// Pages per group of counts (one `u32` per page in a 4 KiB page).
const GROUP: u64 = BS / 4;
const BLOCKS: u64 = 16 * GROUP;

fn opts(node_cache_bytes: u64) -> StoreOptions {
    StoreOptions { background_checkpoints: false, node_cache_bytes, ..Default::default() }
}

fn block(w: u64, lb: u64) -> Vec<u8> {
    let seed = (w << 32 | lb).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..BS).map(|i| (seed >> (i % 7 * 8)) as u8 ^ i as u8).collect()
}

/// Writes generation `w` of blocks `lbs` in runs of up to 64 blocks.
fn write_blocks(v: &Volume, w: &dyn Fn(u64) -> u64, lbs: &[u64]) {
    for &lb in lbs {
        v.write_at(&block(w(lb), lb), lb * BS).unwrap();
    }
    v.flush().unwrap();
}

fn fill(v: &Volume) {
    let mut buf = Vec::with_capacity(64 * BS as usize);
    for first in (0..BLOCKS).step_by(64) {
        buf.clear();
        for lb in first..first + 64 {
            buf.extend(block(0, lb));
        }
        v.write_at(&buf, first * BS).unwrap();
    }
    v.flush().unwrap();
}

fn assert_blocks(v: &Volume, gen: &dyn Fn(u64) -> u64) {
    let mut buf = vec![0u8; BS as usize];
    for lb in 0..BLOCKS {
        v.read_at(&mut buf, lb * BS).unwrap();
        assert!(buf == block(gen(lb), lb), "block {lb} holds the wrong data");
    }
}

fn assert_clean(store: &Store) {
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// A store in `dir` with one volume of [`BLOCKS`] blocks, all written,
/// closed cleanly; returns the volume.
fn filled_and_closed(dir: &std::path::Path) -> VolumeId {
    let store = Store::open(dir, opts(256 << 20)).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", BLOCKS * BS)).unwrap().id;
    fill(&store.open_volume(id).unwrap());
    // A checkpoint puts every count in the table (a short log would
    // otherwise be left for open to replay, which reads its groups).
    store.checkpoint().unwrap();
    store.close().unwrap();
    id
}

/// Every 37th block, scattered over every group.
fn scattered() -> Vec<u64> {
    (0..BLOCKS).step_by(37).collect()
}

#[test]
fn open_reads_no_group_the_first_write_only_mixed_ones_and_overwrites_none() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts(256 << 20)).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", BLOCKS * BS)).unwrap().id;
    fill(&store.open_volume(id).unwrap());
    // A checkpoint puts every count in the table (a short log would
    // otherwise be left for open to replay, which reads its groups).
    store.checkpoint().unwrap();
    store.close().unwrap();

    let store = Store::open_in(Arc::new(disk.clone()), opts(256 << 20)).unwrap();
    // Open reads no page of the table for free space, which is found when
    // the allocator first needs it: only the index page (and at most the
    // group) above the log segment it carries the log on into, to claim it.
    assert!(testing::count_groups(&store).0 <= 1, "open read group pages");
    assert!(testing::index_reads(&store) <= 1, "open read index pages");

    // The first write looks for free space: the volume's 16 groups of data
    // are full, and the index says so; only groups holding both free and
    // used pages (where the metadata and the file's end lie) are read.
    let v = store.open_volume(id).unwrap();
    let blocks = scattered();
    write_blocks(&v, &|_| 1, &blocks[..1]);
    let read_by_first = testing::count_groups(&store).0;
    assert!(read_by_first <= 4, "the first write read {read_by_first} group pages of 17 or more");

    // Overwrites drop references to pages whose groups are on the disk:
    // the changes wait, and nothing is read for them.
    write_blocks(&v, &|_| 1, &blocks[1..]);
    assert_eq!(testing::count_groups(&store).0, read_by_first, "a write read a group page");

    // The checkpoint loads those groups, quarantines the pages whose last
    // reference went, and writes the groups back.
    store.checkpoint().unwrap();
    assert!(testing::count_groups(&store).0 > read_by_first);
    let gen = |lb: u64| u64::from(lb.is_multiple_of(37));
    assert_blocks(&v, &gen);
    assert_clean(&store);
    drop(v);
    store.close().unwrap();

    let store = Store::open_in(Arc::new(disk), opts(256 << 20)).unwrap();
    assert_clean(&store);
    assert_blocks(&store.open_volume(id).unwrap(), &gen);
}

#[test]
fn counts_beyond_a_small_budget_leave_ram_and_come_back_right() {
    let disk = SimDir::new();
    // A node cache of 16 KiB leaves room for two groups of counts.
    let store = Store::open_in(Arc::new(disk.clone()), opts(16 << 10)).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", BLOCKS * BS)).unwrap().id;
    let v = store.open_volume(id).unwrap();
    fill(&v);
    let snap = store.create_snapshot(id, SnapshotOptions::named("before")).unwrap().id;
    store.checkpoint().unwrap();

    // Overwrites after the snapshot copy leaves: every data page of a
    // copied leaf gains a reference, in groups mostly not in RAM.
    let odd: Vec<u64> = (1..BLOCKS).step_by(2).filter(|lb| lb.is_multiple_of(5)).collect();
    write_blocks(&v, &|_| 2, &odd);
    store.checkpoint().unwrap();
    assert_clean(&store);
    let stats = store.stats();
    assert!(stats.shared_blocks > 0, "the snapshot shares blocks with the volume");
    let (_, in_ram) = testing::count_groups(&store);
    assert!(in_ram <= 2, "{in_ram} groups of counts in RAM with a budget of 2");

    // Deleting the snapshot drops the last reference to every page it
    // alone held: they come back as free space, and nothing else does.
    let exclusive = store.snapshot_exclusive_bytes(snap).unwrap();
    assert_eq!(exclusive, odd.len() as u64 * BS, "the snapshot alone holds the overwritten blocks");
    let free_before = store.stats().free_bytes;
    store.delete_snapshot(id, snap).unwrap();
    store.checkpoint().unwrap();
    store.checkpoint().unwrap();
    let freed = store.stats().free_bytes - free_before;
    assert!(freed >= exclusive, "deleting the snapshot freed {freed} bytes of {exclusive}");
    assert_clean(&store);
    let gen = |lb: u64| if lb % 2 == 1 && lb.is_multiple_of(5) { 2 } else { 0 };
    assert_blocks(&v, &gen);
    drop(v);
    store.close().unwrap();

    let store = Store::open_in(Arc::new(disk), opts(16 << 10)).unwrap();
    assert_clean(&store);
    assert_blocks(&store.open_volume(id).unwrap(), &gen);
}

/// A group page is read when something first needs its counts, not at
/// open: damage to one that open does not read is found then, as
/// corruption naming the table and the page, and never turns into a wrong
/// count. `check()` reads every group page, so it finds any of them.
#[test]
fn a_damaged_group_page_is_found_when_first_read_and_check_finds_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let id = filled_and_closed(dir.path());
    let path = dir.path().join("cowvol.dat");
    let pristine = std::fs::read(&path).unwrap();
    let groups: Vec<u64> =
        testing::table_pages(&pristine).into_iter().filter(|(_, kind)| *kind == "group").map(|(p, _)| p).collect();
    assert!(groups.len() >= 16, "{} group pages", groups.len());
    let is_table_error = |e: &Error, page: u64| match e {
        Error::Corruption { what, location, .. } => {
            what == "reference table" && location.contains(&format!("page {page}"))
        }
        _ => false,
    };
    let mut opened = 0;
    for &page in &groups {
        let mut image = pristine.clone();
        image[8192 + page as usize * BS as usize + 100] ^= 0x20;
        std::fs::write(&path, &image).unwrap();
        let store = match Store::open(dir.path(), opts(256 << 20)) {
            Err(e) => {
                assert!(is_table_error(&e, page), "open: {e:?}");
                continue;
            }
            Ok(s) => s,
        };
        opened += 1;
        // Reads need no counts: every block is still right.
        assert_blocks(&store.open_volume(id).unwrap(), &|_| 0);
        match store.check() {
            Err(e) => assert!(is_table_error(&e, page), "check: {e:?}"),
            Ok(r) => panic!("check passed over a damaged group page {page}: {:?}", r.problems),
        }
        testing::abandon(store);
    }
    assert!(opened > 0, "open read every group page");
    std::fs::write(&path, &pristine).unwrap();
}

/// Open learns the table's own pages as it reads the table (the index
/// pages, and the pages the groups it reads name or mark), not one by one
/// for every group: that work grew with the store. `check()` reads every
/// group, after which every page of the table is known, and the two ways a
/// page is known (its group names it, the group it lies in marks it)
/// agree.
#[test]
fn open_learns_the_table_pages_lazily_and_check_meets_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let id = filled_and_closed(dir.path());
    let image = std::fs::read(dir.path().join("cowvol.dat")).unwrap();
    let table = testing::table_pages(&image);
    let index = table.iter().filter(|(_, kind)| *kind == "index").count() as u64;
    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    let (reads, _) = testing::count_groups(&store);
    let known = testing::table_pages_known(&store);
    assert!(reads < table.len() as u64 / 2, "open read {reads} of {} group pages", table.len());
    // Each group read names its own page and marks the table's pages in
    // it (here, as the table's pages cluster in the groups with free
    // space, that may be all of them); the index pages are known anyway.
    assert!(known >= index, "open knew {known} table pages, fewer than the {index} index pages");
    assert_clean(&store);
    let image = std::fs::read(dir.path().join("cowvol.dat")).unwrap();
    assert_eq!(testing::table_pages_known(&store), testing::table_pages(&image).len() as u64);
    // Everything still works after: overwrite, reopen, check.
    let v = store.open_volume(id).unwrap();
    write_blocks(&v, &|_| 1, &scattered());
    drop(v);
    store.close().unwrap();
    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    assert_blocks(&store.open_volume(id).unwrap(), &|lb| u64::from(lb % 37 == 0));
    assert_clean(&store);
}

/// Open leaves free space to be found when the allocator needs it (see
/// `space/discover.rs`); what it finds must be all of it, so a reopened
/// store fills the space a deleted volume left in the middle of its file
/// before it grows the file, and its counts still check clean.
#[test]
fn a_reopened_store_fills_free_space_it_has_not_read_before_growing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cowvol.dat");
    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    let kept = store.create_volume(VolumeOptions::new("kept", BLOCKS * BS)).unwrap().id;
    let gone = store.create_volume(VolumeOptions::new("gone", BLOCKS * BS)).unwrap().id;
    fill(&store.open_volume(kept).unwrap());
    fill(&store.open_volume(gone).unwrap());
    let last = store.create_volume(VolumeOptions::new("last", 64 * BS)).unwrap().id;
    write_blocks(&store.open_volume(last).unwrap(), &|_| 5, &(0..64).collect::<Vec<_>>());
    store.delete_volume(gone).unwrap();
    store.checkpoint().unwrap();
    store.close().unwrap();
    let len = std::fs::metadata(&data).unwrap().len();

    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    // Half of the kept volume again: 8 groups' worth of new pages, while
    // the old ones wait for a checkpoint.
    let v = store.open_volume(kept).unwrap();
    let half: Vec<u64> = (0..BLOCKS / 2).collect();
    write_blocks(&v, &|_| 2, &half);
    assert_eq!(std::fs::metadata(&data).unwrap().len(), len, "the file grew with free space left in it");
    let gen = |lb: u64| if lb < BLOCKS / 2 { 2 } else { 0 };
    assert_blocks(&v, &gen);
    assert_clean(&store);
    drop(v);
    store.close().unwrap();

    let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
    assert_blocks(&store.open_volume(kept).unwrap(), &gen);
    assert_clean(&store);
}

/// The background thread discovers a reopened file's free space until the
/// free map holds what its share of the metadata budget pays for, and then
/// pauses: on a file whose free space copy-on-write scattered into single
/// pages, the whole map would grow with the file. The allocator still
/// finds every free page, discovering further groups when the map runs
/// short, before it grows the file.
#[test]
fn the_background_fills_the_free_map_to_its_window_and_writes_still_find_every_free_page() {
    let dir = tempfile::tempdir().unwrap();
    let id = filled_and_closed(dir.path());
    let every_other: Vec<u64> = (0..BLOCKS).step_by(2).collect();
    {
        let store = Store::open(dir.path(), opts(256 << 20)).unwrap();
        let v = store.open_volume(id).unwrap();
        for &lb in &every_other {
            v.discard(lb * BS, BS).unwrap();
        }
        v.flush().unwrap();
        // The discarded pages are free once a checkpoint has made their
        // release durable.
        store.checkpoint().unwrap();
        drop(v);
        store.close().unwrap();
    }
    // 8,192 single free pages in 16 groups; a 256 KiB budget pays for the
    // smallest window, 1,024 extents.
    let small = StoreOptions { background_checkpoints: true, ..opts(256 << 10) };
    let store = Store::open(dir.path(), small).unwrap();
    let mut seen = (u64::MAX, false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let now = testing::free_map_extents(&store);
        if now == seen {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the background never settled: {now:?}");
        seen = now;
    }
    let (extents, everything) = seen;
    assert!(extents >= 1024, "the background stopped short of its window: {extents} extents");
    assert!(
        extents <= 1024 + GROUP / 2 && !everything,
        "the background filled the free map past its window: {extents} extents, all discovered: {everything}"
    );
    // Not `stats`, which discovers the rest.
    let file_len = || std::fs::metadata(dir.path().join("cowvol.dat")).unwrap().len();
    let before = file_len();
    let v = store.open_volume(id).unwrap();
    write_blocks(&v, &|_| 1, &every_other);
    assert_eq!(file_len(), before, "the writes grew the file past free pages not yet discovered");
    assert_blocks(&v, &|lb| u64::from(lb % 2 == 0));
    drop(v);
    assert_clean(&store);
}
