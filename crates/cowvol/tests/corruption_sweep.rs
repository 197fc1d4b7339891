//! Corruption sweep: a small store is built on the simulated disk (volumes,
//! writes, snapshots, a fork, a restore, checkpoints, then WAL records), and
//! its data file image is damaged one way at a time: bit flips in every
//! byte of both superblocks and of every WAL segment and batch header, flips
//! sampled through WAL payloads, catalogs and tree nodes, one flip per data
//! page, and truncation at every page boundary plus odd lengths.
//!
//! Metadata regions are found without knowing the engine's internals, by
//! their magic numbers: `COWVOLSB` at 0 and 4096, and `CVSG`, `CVBT`,
//! `CVND`, `CVDL` (delta pages of node records), `CVCT` (little-endian
//! u32) at the start of 4096-byte pages from byte 8192 on. Data pages are recognised by the test's own block format.
//!
//! Every damaged image is opened on a fresh simulated disk. The contract
//! (docs/reliability.md, item 4): open fails with `Error::Corruption` naming
//! the place, or it succeeds and then `check()` answers (clean or listing
//! problems), and every volume and snapshot shows the acknowledged state,
//! except that a block may fail its read with `Error::Corruption`. Never
//! different bytes, never a panic. The one relaxation: damage to the WAL's
//! last batch, or to a data block that batch maps, is indistinguishable
//! from a flush that never completed, so each block that batch wrote may
//! show its previous content instead (as an unflushed write may, per block).
//!
//! Each failing case is listed by region; `COWVOL_SWEEP_DUMP=/some/path`
//! writes every failing case of a test to `/some/path.<test>`.

use cowvol::backend::StorageDir;
use cowvol::testing::{self, LossMode, SimDir};
use cowvol::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const BS: usize = 4096;
const DATA_START: usize = 8192;
const SB_LEN: usize = 112;
const DATA_MAGIC: &[u8; 8] = b"SWEEPBLK";

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The contents of logical block `lb` as written by write `w`.
fn block(w: u64, lb: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[..8].copy_from_slice(DATA_MAGIC);
    b[8..16].copy_from_slice(&w.to_le_bytes());
    b[16..24].copy_from_slice(&lb.to_le_bytes());
    let seed = splitmix(w.wrapping_mul(0x0100_0000_01b3) ^ lb);
    for (i, chunk) in b[24..].chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&word(seed, i));
    }
    b
}

/// The `i`-th 8-byte word after a block's header.
fn word(seed: u64, i: usize) -> [u8; 8] {
    (seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(i as u32 % 64).to_le_bytes()
}

/// Which write produced this block of logical block `lb` (0 for zeroes), or
/// `None` for anything else (garbage).
fn decode(b: &[u8], lb: u64) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    if &b[..8] != DATA_MAGIC || u64_at(b, 16) != lb {
        return None;
    }
    let w = u64_at(b, 8);
    let seed = splitmix(w.wrapping_mul(0x0100_0000_01b3) ^ lb);
    b[24..].chunks(8).enumerate().all(|(i, c)| c == word(seed, i)).then_some(w)
}

/// Object ("vol:NAME" or "snap:NAME") -> write id per block.
type State = BTreeMap<String, Vec<u64>>;

/// Builds the store while tracking every acknowledged state.
struct Builder {
    disk: SimDir,
    store: Store,
    state: State,
    acks: Vec<State>,
    next_w: u64,
    vols: BTreeMap<String, Volume>,
    snaps: BTreeMap<String, (VolumeId, SnapshotId)>,
    /// Write ids since the last acknowledgement.
    unacked: Vec<u64>,
    last_group: Vec<u64>,
}

impl Builder {
    fn new() -> Builder {
        let disk = SimDir::new();
        let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
        Builder {
            disk,
            store,
            state: State::new(),
            acks: Vec::new(),
            next_w: 1,
            vols: BTreeMap::new(),
            snaps: BTreeMap::new(),
            unacked: Vec::new(),
            last_group: Vec::new(),
        }
    }

    fn ack(&mut self) {
        self.acks.push(self.state.clone());
        self.last_group = std::mem::take(&mut self.unacked);
    }

    fn create(&mut self, name: &str, blocks: u64) {
        let info = self.store.create_volume(VolumeOptions::new(name, blocks * BS as u64)).unwrap();
        self.vols.insert(name.into(), self.store.open_volume(info.id).unwrap());
        self.state.insert(format!("vol:{name}"), vec![0; blocks as usize]);
        self.ack();
    }

    /// One write call per run of consecutive blocks.
    fn write(&mut self, vol: &str, runs: &[(u64, u64)]) {
        for &(start, n) in runs {
            let w = self.next_w;
            self.next_w += 1;
            let buf: Vec<u8> = (start..start + n).flat_map(|lb| block(w, lb)).collect();
            self.vols[vol].write_at(&buf, start * BS as u64).unwrap();
            let st = self.state.get_mut(&format!("vol:{vol}")).unwrap();
            for lb in start..start + n {
                st[lb as usize] = w;
            }
            self.unacked.push(w);
        }
    }

    fn flush(&mut self, vol: &str) {
        self.vols[vol].flush().unwrap();
        self.ack();
    }

    fn snapshot(&mut self, vol: &str, name: &str) {
        let vid = self.vols[vol].volume_id().unwrap();
        let s = self.store.create_snapshot(vid, SnapshotOptions::named(name)).unwrap();
        self.snaps.insert(name.into(), (vid, s.id));
        let content = self.state[&format!("vol:{vol}")].clone();
        self.state.insert(format!("snap:{name}"), content);
        self.ack();
    }

    fn fork(&mut self, vol: &str, snap: &str, name: &str) {
        let vid = self.vols[vol].volume_id().unwrap();
        let (_, sid) = self.snaps[snap];
        let info = self
            .store
            .fork_volume(vid, ForkOptions { name: name.into(), from_snapshot: Some(sid), ..Default::default() })
            .unwrap();
        self.vols.insert(name.into(), self.store.open_volume(info.id).unwrap());
        let content = self.state[&format!("snap:{snap}")].clone();
        self.state.insert(format!("vol:{name}"), content);
        self.ack();
    }

    fn restore(&mut self, vol: &str, snap: &str) {
        let (vid, sid) = self.snaps[snap];
        self.store.restore_snapshot(vid, sid, RestoreOptions::default()).unwrap();
        let content = self.state[&format!("snap:{snap}")].clone();
        self.state.insert(format!("vol:{vol}"), content);
        self.ack();
    }

    fn delete_snapshot(&mut self, snap: &str) {
        let (vid, sid) = self.snaps.remove(snap).unwrap();
        assert!(self.store.delete_snapshot(vid, sid).unwrap().existed);
        self.state.remove(&format!("snap:{snap}"));
        self.ack();
    }

    fn discard(&mut self, vol: &str, start: u64, n: u64) {
        self.vols[vol].discard(start * BS as u64, n * BS as u64).unwrap();
        let st = self.state.get_mut(&format!("vol:{vol}")).unwrap();
        for lb in start..start + n {
            st[lb as usize] = 0;
        }
    }

    fn checkpoint(&mut self) {
        self.store.checkpoint().unwrap();
        self.ack();
    }
}

/// A built store: its image, the acknowledged states in order, and the
/// write ids of the last flush (the WAL's tail batch when the store crashed).
struct Built {
    image: Vec<u8>,
    /// A dead disk holding `image`: each `crash` of it gives a fresh copy.
    base: SimDir,
    acks: Vec<State>,
    tail_writes: BTreeSet<u64>,
    crashed: bool,
}

fn build(crash: bool) -> Built {
    build_with(crash, workload)
}

fn build_with(crash: bool, steps: fn(&mut Builder)) -> Built {
    let mut b = Builder::new();
    steps(&mut b);
    // The last flush: the tail batch of the WAL.
    let tail_writes: BTreeSet<u64> = b.last_group.iter().copied().collect();
    let Builder { disk, store, acks, vols, .. } = b;
    drop(vols);
    let image = if crash {
        let after = disk.crash(LossMode::KeepAll, 0);
        testing::abandon(store);
        after.read_durable("cowvol.dat").unwrap()
    } else {
        drop(store);
        // What the disk holds once the kernel has written back the close:
        // the seal close writes is not synced (reliability.md, "Opening a
        // sealed store"), and damage found after a clean close is damage
        // to a disk that holds it.
        disk.crash(LossMode::KeepAll, 0).read_durable("cowvol.dat").unwrap()
    };
    let base = disk_with(&image);
    let _ = base.crash(LossMode::KeepAll, 0);
    Built { image, base, acks, tail_writes, crashed: crash }
}

fn workload(b: &mut Builder) {
    b.create("a", 600);
    b.write("a", &[(0, 4), (100, 1), (255, 2), (300, 1), (511, 2), (599, 1)]);
    b.flush("a");
    b.snapshot("a", "s0");
    b.write("a", &[(0, 2), (256, 1), (50, 1)]);
    b.flush("a");
    b.snapshot("a", "s1");
    b.fork("a", "s1", "f1");
    b.write("f1", &[(2, 1), (257, 3)]);
    b.flush("f1");
    b.snapshot("a", "sr");
    b.write("a", &[(0, 1), (400, 2)]);
    b.flush("a");
    b.restore("a", "sr");
    b.checkpoint();
    b.write("a", &[(1, 1), (450, 1)]);
    b.write("f1", &[(300, 1)]);
    b.flush("a");
    b.checkpoint();
    // From here on, only the WAL holds the changes.
    b.write("a", &[(3, 2), (258, 1)]);
    b.flush("a");
    b.snapshot("a", "s2");
    b.delete_snapshot("s0");
    b.create("b", 64);
    b.write("b", &[(0, 3), (63, 1)]);
    b.flush("b");
    b.discard("a", 100, 2);
    b.flush("a");
    b.write("f1", &[(10, 1)]);
    b.flush("f1");
    // The last flush: the tail batch of the WAL.
    b.write("a", &[(5, 2), (599, 1)]);
    b.write("f1", &[(11, 1)]);
    b.flush("a");
}

/// A WAL long enough to span several segments: one small flush at a time.
fn long_log_workload(b: &mut Builder) {
    b.create("m", 64);
    b.write("m", &[(0, 64)]);
    b.flush("m");
    b.snapshot("m", "base");
    b.checkpoint();
    for i in 0..600u64 {
        b.write("m", &[((i * 7) % 64, 1)]);
        b.flush("m");
    }
}

fn u32_at(img: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(img[off..off + 4].try_into().unwrap())
}

fn u64_at(img: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(img[off..off + 8].try_into().unwrap())
}

/// The fields of the current (valid, highest generation) superblock the
/// sweep needs: log id, first LSN of replay, catalog page and length.
struct SbInfo {
    log_id: u64,
    lsn: u64,
    catalog_page: u64,
    catalog_len: u64,
}

fn current_superblock(img: &[u8]) -> SbInfo {
    let mut best: Option<(u64, usize)> = None;
    for slot in [0usize, 4096] {
        if let Ok(Some(generation)) = testing::decode_superblock(&img[slot..slot + SB_LEN]) {
            if best.is_none_or(|(g, _)| generation > g) {
                best = Some((generation, slot));
            }
        }
    }
    let (_, s) = best.expect("a valid superblock");
    SbInfo {
        log_id: u64_at(img, s + 56),
        lsn: u64_at(img, s + 88),
        catalog_page: u64_at(img, s + 40),
        catalog_len: u64_at(img, s + 48),
    }
}

#[derive(Debug, Clone)]
enum Damage {
    /// XOR these bytes.
    Flip(Vec<(usize, u8)>),
    /// Cut the file to this length.
    Truncate(usize),
}

#[derive(Debug, Clone)]
struct Case {
    label: String,
    damage: Damage,
    /// The damage touches the WAL's tail (its last live batch, or a data
    /// page that batch maps): rolling back to the previous acknowledged
    /// state is allowed.
    tail_ok: bool,
    /// A flipped data page that some object still maps: (page, write, lblock).
    live_data: Option<(u64, u64, u64)>,
    /// A flipped tree node: open does not read the trees, so reads of the
    /// blocks below it may fail instead, naming this page.
    damaged_node: Option<u64>,
}

/// Single-byte flips: every byte with a rotating single bit and with 0xFF
/// when `exhaustive`, else every `step`-th byte with a rotating bit.
fn flips(cases: &mut Vec<Case>, label: &str, start: usize, len: usize, step: usize, exhaustive: bool, tail_ok: bool) {
    let mut i = 0;
    while i < len {
        let off = start + i;
        let bit = 1u8 << (off % 8);
        let patterns: &[u8] = if exhaustive { &[bit, 0xFF] } else { &[bit] };
        for &x in patterns {
            cases.push(Case {
                label: format!("{label} byte {i} (file offset {off}) ^{x:#04x}"),
                damage: Damage::Flip(vec![(off, x)]),
                tail_ok,
                live_data: None,
                damaged_node: None,
            });
        }
        i += if exhaustive { 1 } else { step };
    }
}

/// Region counts per kind, for the report.
#[derive(Default, Debug)]
struct Regions {
    segments: usize,
    batches: usize,
    live_batches: usize,
    nodes: usize,
    delta_pages: usize,
    catalogs: usize,
    data_pages: usize,
    live_data_pages: usize,
}

fn flip_cases(built: &Built) -> (Vec<Case>, Regions) {
    let img = &built.image;
    let sb = current_superblock(img);
    let mut cases = Vec::new();
    let mut regions = Regions::default();
    flips(&mut cases, "superblock slot 0", 0, SB_LEN, 1, true, false);
    flips(&mut cases, "superblock slot 1", 4096, SB_LEN, 1, true, false);
    let final_state = built.acks.last().unwrap();
    // Pages of live batches first, to find the tail.
    let mut live_batches: Vec<(u64, usize, usize)> = Vec::new();
    let mut off = DATA_START;
    while off + BS <= img.len() {
        if u32_at(img, off) == u32::from_le_bytes(*b"CVBT") {
            let log_id = u64_at(img, off + 8);
            let first = u64_at(img, off + 16);
            let payload = u32_at(img, off + 28) as usize;
            if log_id == sb.log_id && first >= sb.lsn && built.crashed {
                live_batches.push((first, off, 40 + payload));
            }
        }
        off += BS;
    }
    let tail = live_batches.iter().max_by_key(|b| b.0).map(|&(_, o, l)| (o, l));
    let mut off = DATA_START;
    while off + BS <= img.len() {
        let page = ((off - DATA_START) / BS) as u64;
        let magic = &img[off..off + 4];
        match magic {
            b"CVSG" => {
                regions.segments += 1;
                flips(&mut cases, &format!("WAL segment header at page {page}"), off, 32, 1, true, false);
            }
            b"CVBT" => {
                regions.batches += 1;
                let payload = (u32_at(img, off + 28) as usize).min(img.len() - off - 40);
                let live = live_batches.iter().any(|b| b.1 == off);
                regions.live_batches += live as usize;
                let is_tail = tail.is_some_and(|(o, _)| o == off);
                let label = format!("WAL batch at page {page}{}", if is_tail { " (tail)" } else { "" });
                flips(&mut cases, &format!("{label} header"), off, 40, 1, true, is_tail);
                flips(&mut cases, &format!("{label} payload"), off + 40, payload, 7, false, is_tail);
            }
            b"CVND" => {
                regions.nodes += 1;
                let (level, flags) = (img[off + 16], img[off + 17]);
                let count = u32_at(img, off + 20) as usize;
                // Leaf entries (level 0, or a wide leaf), interior entries
                // naming deltas (format 10), or the older interior ones.
                let entry = match (level, flags) {
                    (0, _) | (_, 1) => 12,
                    (_, 2) => 14,
                    _ => 8,
                };
                let used = (count * entry).min(BS - 24);
                let label = format!("tree node at page {page}");
                let first = cases.len();
                flips(&mut cases, &format!("{label} header"), off, 24, 1, true, false);
                flips(&mut cases, &format!("{label} entries"), off + 24, used, 7, false, false);
                // A byte past the entries: covered by nothing, must change nothing.
                if 24 + used + 5 < BS {
                    flips(&mut cases, &format!("{label} past the entries"), off + 24 + used + 5, 1, 1, false, false);
                }
                cases[first..].iter_mut().for_each(|c| c.damaged_node = Some(page));
            }
            b"CVDL" => {
                regions.delta_pages += 1;
                let used = (u32_at(img, off + 16) as usize).clamp(32, BS);
                let label = format!("node delta page at page {page}");
                let first = cases.len();
                flips(&mut cases, &format!("{label} header"), off, 32, 1, true, false);
                flips(&mut cases, &format!("{label} records"), off + 32, used - 32, 3, false, false);
                if used + 5 < BS {
                    flips(&mut cases, &format!("{label} past the records"), off + used + 5, 1, 1, false, false);
                }
                cases[first..].iter_mut().for_each(|c| c.damaged_node = Some(page));
            }
            b"CVCT" => {
                regions.catalogs += 1;
                let live = page == sb.catalog_page;
                let len = if live { sb.catalog_len as usize } else { 1024 }.min(img.len() - off);
                let step = if live { 2 } else { 7 };
                let label = format!("{} catalog at page {page}", if live { "live" } else { "stale" });
                flips(&mut cases, &label, off, len, step, false, false);
            }
            _ if &img[off..off + 8] == DATA_MAGIC => {
                regions.data_pages += 1;
                let w = u64_at(img, off + 8);
                let lb = u64_at(img, off + 16);
                let live = final_state.values().any(|v| v.get(lb as usize) == Some(&w));
                regions.live_data_pages += live as usize;
                let at = off + 24 + (page as usize * 97) % (BS - 24);
                cases.push(Case {
                    label: format!("data page {page} (write {w}, block {lb}, {})", if live { "live" } else { "stale" }),
                    damage: Damage::Flip(vec![(at, 0x10)]),
                    tail_ok: built.tail_writes.contains(&w),
                    live_data: live.then_some((page, w, lb)),
                    damaged_node: None,
                });
            }
            _ => {}
        }
        off += BS;
    }
    // The reference table has no magic of its own: the catalog names its
    // pages, and each is guarded by a CRC one level up.
    for (page, kind) in testing::table_pages(img) {
        let off = DATA_START + page as usize * BS;
        flips(&mut cases, &format!("table {kind} page at page {page}"), off, BS, 13, false, false);
    }
    (cases, regions)
}

/// What a recovered store shows: object -> per block the write id, or
/// `None` where the read failed with `Error::Corruption`.
type Observed = BTreeMap<String, Vec<Option<u64>>>;

struct Observation {
    seen: Observed,
    /// (object, block, error text) of every block read that failed.
    corrupt_reads: Vec<(String, u64, String)>,
}

fn read_object(h: &Volume, key: &str, obs: &mut Observation) -> Result<(), String> {
    let blocks = (h.size() as usize).div_ceil(BS);
    let mut buf = vec![0u8; blocks * BS];
    let whole = h.read_at(&mut buf[..h.size() as usize], 0);
    let mut out = Vec::with_capacity(blocks);
    match whole {
        Ok(()) => {
            for lb in 0..blocks {
                let b = &buf[lb * BS..(lb + 1) * BS];
                let w = decode(b, lb as u64).ok_or_else(|| format!("{key} block {lb} holds garbage"))?;
                out.push(Some(w));
            }
        }
        Err(Error::Corruption { .. }) => {
            let mut b = vec![0u8; BS];
            for lb in 0..blocks {
                match h.read_at(&mut b, (lb * BS) as u64) {
                    Ok(()) => {
                        let w = decode(&b, lb as u64).ok_or_else(|| format!("{key} block {lb} holds garbage"))?;
                        out.push(Some(w));
                    }
                    Err(e @ Error::Corruption { .. }) => {
                        obs.corrupt_reads.push((key.to_string(), lb as u64, e.to_string()));
                        out.push(None);
                    }
                    Err(e) => return Err(format!("{key} block {lb}: unexpected error {e:?}")),
                }
            }
        }
        Err(e) => return Err(format!("{key}: unexpected read error {e:?}")),
    }
    obs.seen.insert(key.to_string(), out);
    Ok(())
}

fn observe(store: &Store) -> Result<Observation, String> {
    let mut obs = Observation { seen: Observed::new(), corrupt_reads: Vec::new() };
    for v in store.list_volumes() {
        let h = store.open_volume_with(v.id, OpenMode::ReadOnly).map_err(|e| format!("opening {}: {e}", v.name))?;
        read_object(&h, &format!("vol:{}", v.name), &mut obs)?;
    }
    for s in store.all_snapshots() {
        let h = store.open_snapshot(s.volume_id, s.id).map_err(|e| format!("opening snapshot {}: {e}", s.name))?;
        read_object(&h, &format!("snap:{}", s.name), &mut obs)?;
    }
    Ok(obs)
}

fn matches(seen: &Observed, st: &State) -> bool {
    seen.len() == st.len()
        && seen.iter().all(|(k, v)| {
            st.get(k).is_some_and(|want| {
                want.len() == v.len() && v.iter().zip(want).all(|(got, w)| got.is_none_or(|g| g == *w))
            })
        })
}

/// Like [`matches`], but each block may show either state (the writes of
/// an unfinished flush survive or vanish per block).
fn matches_either(seen: &Observed, a: &State, b: &State) -> bool {
    let keys_match = |st: &State| seen.len() == st.len() && seen.keys().all(|k| st.contains_key(k));
    (keys_match(a) || keys_match(b))
        && seen.iter().all(|(k, v)| {
            v.iter().enumerate().all(|(lb, got)| {
                got.is_none_or(|g| {
                    [a, b].iter().any(|st| st.get(k).is_some_and(|want| want.len() == v.len() && want[lb] == g))
                })
            })
        })
}

/// Why an observation is not the final state, for failure messages.
fn diff(seen: &Observed, st: &State) -> String {
    let mut out = Vec::new();
    for k in st.keys().filter(|k| !seen.contains_key(*k)) {
        out.push(format!("{k} missing"));
    }
    for k in seen.keys().filter(|k| !st.contains_key(*k)) {
        out.push(format!("{k} unexpected"));
    }
    for (k, v) in seen {
        if let Some(want) = st.get(k) {
            for (lb, (got, w)) in v.iter().zip(want).enumerate() {
                if got.is_some_and(|g| g != *w) {
                    out.push(format!("{k} block {lb}: write {} instead of {w}", got.unwrap()));
                }
            }
        }
    }
    out.truncate(8);
    out.join("; ")
}

fn disk_with(image: &[u8]) -> SimDir {
    let d = SimDir::new();
    let f = d.open_file("cowvol.dat", true).unwrap();
    f.write_at(image, 0).unwrap();
    f.sync().unwrap();
    d
}

/// An error that says where: its location holds the file name or a
/// number (page, byte, record), or its detail names a page or offset.
fn names_place(e: &Error) -> bool {
    let numbered = |s: &str, word: &str| {
        s.match_indices(word).any(|(i, _)| s[i + word.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    match e {
        Error::Corruption { location, detail, .. } => {
            location.contains("cowvol.dat")
                || location.chars().any(|c| c.is_ascii_digit())
                || ["page ", "offset ", "byte "].iter().any(|w| numbered(detail, w))
        }
        _ => false,
    }
}

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    open_corruption: usize,
    open_ok_exact: usize,
    open_ok_tail_rollback: usize,
    read_corruption_cases: usize,
    check_problem_cases: usize,
    by_what: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Tally {
    fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }
}

fn run_case(built: &Built, case: &Case, t: &mut Tally) {
    t.cases += 1;
    let disk = built.base.crash(LossMode::KeepAll, 0);
    match &case.damage {
        Damage::Flip(f) => {
            for &(off, x) in f {
                disk.corrupt("cowvol.dat", off as u64, x);
            }
        }
        Damage::Truncate(len) => disk.truncate_durable("cowvol.dat", *len as u64),
    }
    let store = match Store::open_in(Arc::new(disk.clone()), opts()) {
        Err(e @ Error::Corruption { .. }) => {
            t.open_corruption += 1;
            if let Error::Corruption { what, .. } = &e {
                *t.by_what.entry(what.clone()).or_default() += 1;
            }
            if !names_place(&e) {
                t.fail(format!("{}: the corruption error does not name the place: {e}", case.label));
            }
            return;
        }
        Err(e) => return t.fail(format!("{}: open failed with a non-corruption error: {e:?}", case.label)),
        Ok(s) => s,
    };
    let report = match store.check() {
        Ok(r) => r,
        Err(e) => return t.fail(format!("{}: check() failed: {e:?}", case.label)),
    };
    if !report.is_clean() {
        t.check_problem_cases += 1;
    }
    let obs = match observe(&store) {
        Ok(o) => o,
        Err(msg) => return t.fail(format!("{}: {msg}", case.label)),
    };
    let n = built.acks.len();
    let final_state = &built.acks[n - 1];
    let exact = matches(&obs.seen, final_state);
    let rolled_back = !exact && case.tail_ok && matches_either(&obs.seen, final_state, &built.acks[n - 2]);
    if !exact && !rolled_back {
        return t.fail(format!(
            "{}: opened, but shows a state that was never acknowledged last: {}",
            case.label,
            diff(&obs.seen, final_state)
        ));
    }
    if exact {
        t.open_ok_exact += 1;
    } else {
        t.open_ok_tail_rollback += 1;
    }
    if !obs.corrupt_reads.is_empty() {
        t.read_corruption_cases += 1;
    }
    // A damaged live data page must fail every read that touches it, and
    // the error names the page.
    if let (Some((page, w, lb)), true) = (case.live_data, exact) {
        let objects: Vec<&String> =
            final_state.iter().filter(|(_, v)| v.get(lb as usize) == Some(&w)).map(|(k, _)| k).collect();
        for k in objects {
            let hit = obs.corrupt_reads.iter().find(|(o, b, _)| o == k && *b == lb);
            match hit {
                None => t.fail(format!("{}: reading {k} block {lb} did not report corruption", case.label)),
                Some((_, _, msg)) if !msg.contains(&format!("page {page}")) => {
                    t.fail(format!("{}: the read error does not name page {page}: {msg}", case.label))
                }
                _ => {}
            }
        }
    }
    for (k, lb, msg) in &obs.corrupt_reads {
        let names_damaged_node = case.damaged_node.is_some_and(|p| msg.contains(&format!("page {p}")));
        if case.live_data.is_none_or(|(_, _, l)| l != *lb) && !names_damaged_node {
            t.fail(format!("{}: {k} block {lb} fails to read although its data is intact: {msg}", case.label));
        }
    }
    // The recovered store keeps working and reopens clean.
    if report.is_clean() {
        if let Some(a) = store.volume_by_name("a") {
            let v = store.open_volume(a.id).unwrap();
            let w = 1_000_000 + t.cases as u64;
            if let Err(e) = v.write_at(&block(w, 7), 7 * BS as u64).and_then(|_| v.flush()) {
                return t.fail(format!("{}: the recovered store refuses a write: {e}", case.label));
            }
            drop(v);
            drop(store);
            let store = match Store::open_in(Arc::new(disk), opts()) {
                Ok(s) => s,
                Err(e) => return t.fail(format!("{}: reopening after recovery failed: {e}", case.label)),
            };
            let r = store.check().unwrap();
            if !r.is_clean() {
                return t.fail(format!("{}: check after the second open: {:?}", case.label, r.problems));
            }
            let h = store.open_volume_with(a.id, OpenMode::ReadOnly).unwrap();
            let mut b = vec![0u8; BS];
            match h.read_at(&mut b, 7 * BS as u64) {
                Ok(()) if decode(&b, 7) == Some(w) => {}
                other => t.fail(format!("{}: the write after recovery reads back as {other:?}", case.label)),
            }
        }
    }
}

fn report(name: &str, t: &Tally) {
    println!(
        "{name}: {} cases: {} open -> Corruption, {} open OK with the acknowledged state, {} open OK rolled back to \
         the state before the damaged WAL tail; {} with data reads failing as Corruption; {} with check problems",
        t.cases,
        t.open_corruption,
        t.open_ok_exact,
        t.open_ok_tail_rollback,
        t.read_corruption_cases,
        t.check_problem_cases
    );
    println!("{name}: open -> Corruption by structure: {:?}", t.by_what);
    if let Ok(path) = std::env::var("COWVOL_SWEEP_DUMP") {
        std::fs::write(format!("{path}.{}", name.replace([' ', ','], "_")), t.failures.join("\n")).unwrap();
    }
    if !t.failures.is_empty() {
        // Failures per damaged region, then the first few in full
        // (COWVOL_SWEEP_DUMP=path writes them all).
        let mut per_region: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &t.failures {
            let region = f.split([':', '(']).next().unwrap_or(f);
            let region = region.split(" byte ").next().unwrap_or(region).trim();
            *per_region.entry(region).or_default() += 1;
        }
        let regions: Vec<String> = per_region.iter().map(|(r, n)| format!("  {n:5} in {r}")).collect();
        let first: Vec<&str> = t.failures.iter().take(12).map(String::as_str).collect();
        panic!(
            "{name}: {} of {} cases broke the contract:\n{}\nfirst ones:\n{}",
            t.failures.len(),
            t.cases,
            regions.join("\n"),
            first.join("\n")
        );
    }
}

fn sweep(crash: bool) {
    let name = if crash { "crash KeepAll" } else { "clean close" };
    let built = build(crash);
    // The undamaged image recovers to the final state.
    let mut t = Tally::default();
    run_case(
        &built,
        &Case {
            label: "undamaged".into(),
            damage: Damage::Flip(vec![]),
            tail_ok: false,
            live_data: None,
            damaged_node: None,
        },
        &mut t,
    );
    assert!(t.failures.is_empty() && t.open_ok_exact == 1, "{name}: undamaged image: {:?}", t.failures);
    let (cases, regions) = flip_cases(&built);
    println!("{name}: image of {} bytes, regions found: {regions:?}", built.image.len());
    assert!(regions.segments >= 1 && regions.nodes >= 3 && regions.catalogs >= 1 && regions.live_data_pages >= 10);
    if crash {
        assert!(regions.live_batches >= 5, "the crashed image has WAL records to replay");
    }
    let mut t = Tally::default();
    for c in &cases {
        run_case(&built, c, &mut t);
    }
    report(name, &t);
    assert!(t.open_corruption > 0 && t.open_ok_exact > 0);
}

#[test]
fn bit_flips_after_clean_close() {
    sweep(false);
}

#[test]
fn bit_flips_after_crash_with_wal_records() {
    sweep(true);
}

fn truncation(crash: bool) {
    {
        let name = if crash { "truncate, crash KeepAll" } else { "truncate, clean close" };
        let built = build(crash);
        let len = built.image.len();
        let sb = current_superblock(&built.image);
        // Where the tail ends: a cut below that removes part of it.
        let mut tail_end = 0usize;
        if crash {
            let mut off = DATA_START;
            let mut best = (0u64, 0usize);
            while off + BS <= len {
                let img = &built.image;
                if &img[off..off + 4] == b"CVBT"
                    && u64_at(img, off + 8) == sb.log_id
                    && u64_at(img, off + 16) >= sb.lsn.max(best.0)
                {
                    best = (u64_at(img, off + 16), off + 40 + u32_at(img, off + 28) as usize);
                }
                if &img[off..off + 8] == DATA_MAGIC && built.tail_writes.contains(&u64_at(img, off + 8)) {
                    tail_end = tail_end.max(off + BS);
                }
                off += BS;
            }
            tail_end = tail_end.max(best.1);
        }
        let mut lengths: BTreeSet<usize> = (0..=len / BS).map(|p| p * BS).collect();
        for p in (0..len / BS).filter(|p| *p < 4 || p % 37 == 0) {
            for odd in [1, 111, 112, 113, 2048, 4095] {
                lengths.insert((p * BS + odd).min(len));
            }
        }
        lengths.insert(len);
        let mut t = Tally::default();
        for &l in &lengths {
            let case = Case {
                label: format!("{name}: truncated to {l} of {len} bytes"),
                damage: Damage::Truncate(l),
                tail_ok: l < tail_end,
                live_data: None,
                damaged_node: None,
            };
            run_case(&built, &case, &mut t);
        }
        report(name, &t);
        assert!(t.open_corruption > 0 && t.open_ok_exact > 0);
    }
}

#[test]
fn truncation_after_clean_close() {
    truncation(false);
}

#[test]
fn truncation_after_crash_with_wal_records() {
    truncation(true);
}

/// The segment chain: every byte of every segment header, and the headers
/// of the batches at the start and end of each segment.
/// Leaves below the root, overwritten after a checkpoint: the next
/// checkpoints write them as delta records of their pages.
fn delta_workload(b: &mut Builder) {
    b.create("a", 1024);
    b.write("a", &[(0, 1024)]);
    b.flush("a");
    b.checkpoint();
    b.write("a", &[(3, 1), (300, 2), (600, 1), (1000, 1)]);
    b.flush("a");
    b.checkpoint();
    b.snapshot("a", "s");
    b.write("a", &[(5, 1), (700, 1)]);
    b.flush("a");
    b.checkpoint();
    b.write("a", &[(6, 1), (701, 1), (900, 2)]);
    b.discard("a", 10, 3);
    b.flush("a");
    b.checkpoint();
    // The WAL's share: a record the next open replays onto them.
    b.write("a", &[(7, 1), (901, 1)]);
    b.flush("a");
}

#[test]
fn bit_flips_in_node_deltas() {
    for crash in [false, true] {
        let name = if crash { "deltas, crash KeepAll" } else { "deltas, clean close" };
        let built = build_with(crash, delta_workload);
        let (cases, regions) = flip_cases(&built);
        println!("{name}: image of {} bytes, regions found: {regions:?}", built.image.len());
        assert!(regions.delta_pages >= 2, "the workload wrote delta pages");
        // Every flip of the delta pages; a quarter of those of the nodes
        // (interior ones name records here), which the main sweep covers.
        let cases: Vec<Case> = cases
            .into_iter()
            .filter(|c| c.label.starts_with("node delta page") || c.label.starts_with("tree node"))
            .enumerate()
            .filter(|(i, c)| c.label.starts_with("node delta page") || i % 4 == 0)
            .map(|(_, c)| c)
            .collect();
        let mut t = Tally::default();
        for c in &cases {
            run_case(&built, c, &mut t);
        }
        report(name, &t);
        assert!(t.read_corruption_cases > 0, "{name}: no damaged record ever failed a read");
    }
}

#[test]
fn bit_flips_in_a_wal_of_several_segments() {
    let built = build_with(true, long_log_workload);
    let img = &built.image;
    let mut chosen = BTreeSet::new();
    let mut off = DATA_START;
    while off + BS <= img.len() {
        if &img[off..off + 4] == b"CVSG" {
            let page = (off - DATA_START) / BS;
            chosen.extend([page + 1, page + 2, page + 128, page + 254, page + 255]);
        }
        off += BS;
    }
    let (cases, regions) = flip_cases(&built);
    println!("long WAL: image of {} bytes, regions found: {regions:?}", img.len());
    assert!(regions.live_batches > 300, "the log spans more than one segment");
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| {
            c.label.starts_with("WAL segment header")
                || c.label.starts_with("superblock")
                || chosen.iter().any(|p| c.label.starts_with(&format!("WAL batch at page {p} ")))
        })
        .filter(|c| !c.label.contains("payload"))
        .collect();
    let mut t = Tally::default();
    for c in &cases {
        run_case(&built, c, &mut t);
    }
    report("long WAL", &t);
}

#[test]
fn both_superblocks_damaged_is_corruption_naming_the_place() {
    for crash in [false, true] {
        let built = build(crash);
        for (a, b) in [(20usize, 4096 + 20), (0, 4096), (108, 4096 + 108), (30, 4096 + 60)] {
            let mut img = built.image.clone();
            img[a] ^= 0x04;
            img[b] ^= 0x04;
            let disk = disk_with(&img);
            match Store::open_in(Arc::new(disk), opts()) {
                Err(e @ Error::Corruption { .. }) => {
                    assert!(names_place(&e), "flips at {a} and {b}: the error does not name the file or offset: {e}")
                }
                Err(e) => panic!("flips at {a} and {b}: expected Corruption, got {e:?}"),
                Ok(_) => panic!("flips at {a} and {b}: opened a store with no valid superblock"),
            }
        }
    }
}
