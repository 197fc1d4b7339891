//! Workloads that measure cowvol against the physical limit of the same
//! disk, in the same run: raw `pwrite`, `pread` and `fdatasync` on a plain
//! file in the same directory with the same access pattern. Used by
//! `cowvol bench` and the criterion benches; see `docs/performance.md`.
//!
//! Every figure is the median of several repetitions, because shared
//! machines are noisy.

use cowvol::{
    Error, ForkOptions, RestoreOptions, Result, SnapshotOptions, Store, StoreOptions, Volume, VolumeId, VolumeOptions,
};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u64 = 4096;
const MIB: u64 = 1 << 20;

/// How much work a benchmark run does.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Directory for the stores and raw files (removed afterwards).
    pub dir: PathBuf,
    /// Smaller sizes and fewer repetitions: a few minutes on 2 cores.
    pub quick: bool,
    /// Mapped-block counts for the snapshot latency table. A size whose
    /// data (4 KiB per block) would not fit in the directory's free space,
    /// with a quarter to spare, is skipped and has no row.
    pub snapshot_sizes: Vec<u64>,
    /// Mapped-block counts of the scale figures (open time and memory;
    /// see [`default_scale_sizes`]). Their data is kept by key, so the
    /// directory needs room for metadata only (about 25 bytes a block).
    pub scale_sizes: Vec<u64>,
    /// The parts to run (`random`, `sequential`, `durable`, `admin`,
    /// `names`, `sparse`, `punch`, `check`, `cache`, `scale`,
    /// `amplification`); empty runs them all.
    pub only: Vec<String>,
}

/// The size at which the store-wide figures (check, scrub, memory, open,
/// recovery, write latency during a big delete) are taken: the largest
/// latency size up to this one. Without such a size they are not taken.
pub const FIGURES_BLOCKS: u64 = 1_000_000;
/// Snapshots in the listing figure (`list_10k_snapshots`).
pub const LISTED_SNAPSHOTS: u64 = 10_000;

impl BenchOptions {
    /// Defaults for `dir`: sizes up to one million mapped blocks; the full
    /// run adds ten million (40 GiB of data, about a minute of writing on
    /// a disk that does 1 GiB/s).
    pub fn new(dir: impl Into<PathBuf>, quick: bool) -> Self {
        let mut snapshot_sizes = vec![1_000, 100_000, 1_000_000];
        if !quick {
            snapshot_sizes.push(10_000_000);
        }
        BenchOptions {
            dir: dir.into(),
            quick,
            snapshot_sizes,
            scale_sizes: default_scale_sizes(quick),
            only: Vec::new(),
        }
    }
    fn reps(&self) -> usize {
        if self.quick {
            3
        } else {
            5
        }
    }
    fn volume_bytes(&self) -> u64 {
        if self.quick {
            256 * MIB
        } else {
            1024 * MIB
        }
    }
    fn random_ops(&self) -> u64 {
        if self.quick {
            20_000
        } else {
            100_000
        }
    }
    /// Random reads from the disk (page cache dropped), per side.
    fn cold_ops(&self) -> u64 {
        if self.quick {
            1_000
        } else {
            4_000
        }
    }
    fn durable_ops(&self) -> u64 {
        if self.quick {
            1_000
        } else {
            4_000
        }
    }
}

/// One workload: cowvol and the raw file side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Stable name, e.g. `rand4k_write`.
    pub name: String,
    /// Unit of both figures (`ops/s`, `MiB/s`, `us`, ...).
    pub unit: String,
    /// cowvol's median.
    pub cowvol: f64,
    /// The raw file's median, when the workload has a raw equivalent.
    pub raw: Option<f64>,
    /// cowvol / raw for rates; raw / cowvol for latencies (so higher is
    /// better and 1.0 means "as fast as the raw disk").
    pub ratio: Option<f64>,
}

/// Administrative latencies at one volume size.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotLatency {
    /// Blocks mapped by the volume.
    pub mapped_blocks: u64,
    /// Median snapshot create, microseconds (includes its one sync).
    pub create_us: f64,
    /// Median fork.
    pub fork_us: f64,
    /// Median restore.
    pub restore_us: f64,
    /// Median delete of a snapshot that shares everything.
    pub delete_us: f64,
    /// Median raw 4 KiB `pwrite` + `fdatasync` in the same directory.
    pub raw_fdatasync_us: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchReport {
    /// Throughput and latency workloads.
    pub workloads: Vec<Workload>,
    /// Snapshot, fork, restore and delete latency by size.
    pub snapshot_latency: Vec<SnapshotLatency>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn block(&mut self, nblocks: u64) -> u64 {
        self.next() % nblocks
    }
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io { during: what.to_string(), source: e }
}

/// A plain file: the physical limit.
struct Raw {
    file: File,
    path: PathBuf,
}

impl Raw {
    fn create(dir: &Path, name: &str) -> Result<Raw> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("creating the raw file"))?;
        Ok(Raw { file, path })
    }
    fn write(&self, buf: &[u8], off: u64) -> Result<()> {
        self.file.write_all_at(buf, off).map_err(io_err("raw pwrite"))
    }
    fn read(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.file.read_exact_at(buf, off).map_err(io_err("raw pread"))
    }
    fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(io_err("raw fdatasync"))
    }
    fn fill(&self, bytes: u64) -> Result<()> {
        let buf = pattern(MIB as usize, 1);
        for off in (0..bytes).step_by(MIB as usize) {
            self.write(&buf, off)?;
        }
        self.sync()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

fn store_opts() -> StoreOptions {
    StoreOptions::default()
}

/// A volume for the workloads without flushes. Its write buffer is the
/// whole volume, so cowvol never flushes on its own during the run: the
/// raw side it is compared with never syncs either. (With the default
/// 64 MiB buffer, a 1 GiB run would also pay 16 automatic syncs.)
fn unflushed_volume(size: u64) -> VolumeOptions {
    VolumeOptions { write_buffer_bytes: size.max(1), ..VolumeOptions::new("v", size) }
}

/// A fresh store in a fresh subdirectory, removed on drop.
struct Scratch {
    store: Option<Store>,
    dir: PathBuf,
}

impl Scratch {
    fn new(root: &Path, name: &str, opts: StoreOptions) -> Result<Scratch> {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, opts)?;
        Ok(Scratch { store: Some(store), dir })
    }
    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.store.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rate(ops: u64, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64()
}

fn push(report: &mut BenchReport, name: &str, unit: &str, cowvol: f64, raw: Option<f64>, higher_is_better: bool) {
    let ratio =
        raw.filter(|r| *r > 0.0 && cowvol > 0.0).map(|r| if higher_is_better { cowvol / r } else { r / cowvol });
    report.workloads.push(Workload { name: name.into(), unit: unit.into(), cowvol, raw, ratio });
}

/// Runs every workload, calling `progress` with the name of each as it starts.
///
/// # Errors
/// I/O errors of the scratch directory, or of the store.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    std::fs::create_dir_all(&opts.dir).map_err(io_err("creating the bench directory"))?;
    let mut report = BenchReport::default();
    type Part = fn(&BenchOptions, &mut BenchReport, &mut dyn FnMut(&str)) -> Result<()>;
    let parts: &[(&str, Part)] = &[
        ("random", random_io),
        ("sequential", sequential),
        ("durable", durable),
        ("admin", admin_latency),
        ("names", create_among_many),
        ("sparse", sparse_writes),
        ("punch", punch_space),
        ("check", check_beside_writes),
        ("cache", node_cache),
        ("scale", scale),
        ("amplification", amplification),
    ];
    for &(name, part) in parts {
        if opts.only.is_empty() || opts.only.iter().any(|o| o == name) {
            part(opts, &mut report, progress)?;
        }
    }
    Ok(report)
}

/// 4 KiB random writes (fresh, after a snapshot, with 100 snapshots) and
/// reads: page-cache hot after the fill, hot after the random overwrites
/// and snapshots, and cold (both files dropped from the page cache).
fn random_io(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let size = opts.volume_bytes();
    let nblocks = size / BS;
    let n = opts.random_ops();
    let buf = pattern(BS as usize, 7);
    let (mut fresh, mut after, mut hundred, mut reads, mut scattered, mut cold) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut raw_w, mut raw_over, mut raw_r, mut raw_r_over, mut raw_cold) = (vec![], vec![], vec![], vec![], vec![]);
    for rep in 0..opts.reps() {
        progress("rand4k");
        // Raw: fresh sparse file, then filled; overwritten in place later,
        // when the volume is. It stays open beside the store so that reads
        // of both run side by side.
        let raw = Raw::create(&opts.dir, "raw.img")?;
        raw.file.set_len(size).map_err(io_err("sizing the raw file"))?;
        let mut rng = Rng(rep as u64 + 11);
        let t = Instant::now();
        for _ in 0..n {
            raw.write(&buf, rng.block(nblocks) * BS)?;
        }
        raw_w.push(rate(n, t.elapsed()));
        raw.fill(size)?;

        let s = Scratch::new(&opts.dir, "store", store_opts())?;
        let store = s.store();
        let id = store.create_volume(unflushed_volume(size))?.id;
        let vol = store.open_volume(id)?;
        let mut rng = Rng(rep as u64 + 11);
        let t = Instant::now();
        for _ in 0..n {
            vol.write_at(&buf, rng.block(nblocks) * BS)?;
        }
        fresh.push(rate(n, t.elapsed()));
        let fill = pattern(MIB as usize, 1);
        for off in (0..size).step_by(MIB as usize) {
            vol.write_at(&fill, off)?;
        }
        vol.flush()?;
        // Reads of the filled volume, in the state the raw file is in: every
        // block written, none moved by copy-on-write yet.
        let (r, c) = random_reads_side_by_side(&raw, &vol, nblocks, n, rep as u64 + 13)?;
        raw_r.push(r);
        reads.push(c);
        let mut raw_rng = Rng(rep as u64 + 17);
        let t = Instant::now();
        for _ in 0..n {
            raw.write(&buf, raw_rng.block(nblocks) * BS)?;
        }
        raw_over.push(rate(n, t.elapsed()));
        store.create_snapshot(id, SnapshotOptions::named("base"))?;
        let t = Instant::now();
        for _ in 0..n {
            vol.write_at(&buf, rng.block(nblocks) * BS)?;
        }
        after.push(rate(n, t.elapsed()));
        for i in 0..99 {
            store.create_snapshot(id, SnapshotOptions::named(format!("s{i}")))?;
            for _ in 0..n / 100 {
                vol.write_at(&buf, rng.block(nblocks) * BS)?;
            }
        }
        let t = Instant::now();
        for _ in 0..n {
            vol.write_at(&buf, rng.block(nblocks) * BS)?;
        }
        hundred.push(rate(n, t.elapsed()));
        let (r, c) = random_reads_side_by_side(&raw, &vol, nblocks, n, rep as u64 + 19)?;
        raw_r_over.push(r);
        scattered.push(c);
        vol.flush()?;
        raw.sync()?;
        drop_page_cache(&[raw.path.clone(), s.dir.clone()])?;
        let (r, c) = random_reads_side_by_side(&raw, &vol, nblocks, opts.cold_ops(), rep as u64 + 23)?;
        raw_cold.push(r);
        cold.push(c);
    }
    push(report, "rand4k_write", "ops/s", median(fresh), Some(median(raw_w)), true);
    let ro = median(raw_over);
    push(report, "rand4k_write_after_snapshot", "ops/s", median(after), Some(ro), true);
    push(report, "rand4k_write_100_snapshots", "ops/s", median(hundred), Some(ro), true);
    push(report, "rand4k_read", "ops/s", median(reads), Some(median(raw_r)), true);
    push(report, "rand4k_read_100_snapshots", "ops/s", median(scattered), Some(median(raw_r_over)), true);
    push(report, "rand4k_read_cold", "ops/s", median(cold), Some(median(raw_cold)), true);
    Ok(())
}

/// Reads run in batches of this many operations that alternate between the
/// raw file and the volume, so that a noisy neighbour slows both alike.
const SIDE_BY_SIDE_BATCH: u64 = 256;

/// Times `batches` batches of `raw_batch` and `cow_batch` alternately (the
/// side that goes first alternates too); returns the time each side took.
fn side_by_side(
    batches: u64,
    mut raw_batch: impl FnMut(u64) -> Result<()>,
    mut cow_batch: impl FnMut(u64) -> Result<()>,
) -> Result<(Duration, Duration)> {
    let (mut raw_t, mut cow_t) = (Duration::ZERO, Duration::ZERO);
    for b in 0..batches {
        for side in [b % 2, 1 - b % 2] {
            let t = Instant::now();
            if side == 0 {
                raw_batch(b)?;
                raw_t += t.elapsed();
            } else {
                cow_batch(b)?;
                cow_t += t.elapsed();
            }
        }
    }
    Ok((raw_t, cow_t))
}

/// `n` 4 KiB reads of the same random blocks of `raw` and `vol`, side by
/// side; returns their rates (raw, cowvol).
fn random_reads_side_by_side(raw: &Raw, vol: &Volume, nblocks: u64, n: u64, seed: u64) -> Result<(f64, f64)> {
    let mut rng = Rng(seed);
    let blocks: Vec<u64> = (0..n).map(|_| rng.block(nblocks)).collect();
    let batch = |b: u64| &blocks[(b * SIDE_BY_SIDE_BATCH) as usize..(n.min((b + 1) * SIDE_BY_SIDE_BATCH)) as usize];
    let (mut rbuf, mut cbuf) = (vec![0u8; BS as usize], vec![0u8; BS as usize]);
    let (raw_t, cow_t) = side_by_side(
        n.div_ceil(SIDE_BY_SIDE_BATCH),
        |b| batch(b).iter().try_for_each(|&lb| raw.read(&mut rbuf, lb * BS)),
        |b| batch(b).iter().try_for_each(|&lb| vol.read_at(&mut cbuf, lb * BS)),
    )?;
    Ok((rate(n, raw_t), rate(n, cow_t)))
}

/// Drops the pages of every file at `paths` (a file, or a directory's
/// files) from the page cache, so that the next reads go to the disk. The
/// files must be synced: only clean pages are dropped.
fn drop_page_cache(paths: &[PathBuf]) -> Result<()> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(io_err("listing the store directory"))?;
            files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|f| f.is_file()));
        } else {
            files.push(p.clone());
        }
    }
    for f in files {
        let file = File::open(&f).map_err(io_err("opening a file to drop its cached pages"))?;
        // SAFETY: posix_fadvise only reads its arguments; the descriptor is
        // open for the whole call.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(io_err("dropping cached pages")(std::io::Error::from_raw_os_error(rc)));
        }
    }
    Ok(())
}

/// 1 MiB sequential writes over a whole volume, then reads of the volume
/// and of the raw file side by side.
fn sequential(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let size = opts.volume_bytes();
    let buf = pattern(MIB as usize, 3);
    let (mut cw, mut cr, mut rw, mut rr) = (vec![], vec![], vec![], vec![]);
    let mib = (size / MIB) as f64;
    for _ in 0..opts.reps() {
        progress("seq1m");
        let raw = Raw::create(&opts.dir, "raw.img")?;
        let t = Instant::now();
        for off in (0..size).step_by(MIB as usize) {
            raw.write(&buf, off)?;
        }
        rw.push(mib / t.elapsed().as_secs_f64());
        let s = Scratch::new(&opts.dir, "store", store_opts())?;
        let id = s.store().create_volume(unflushed_volume(size))?.id;
        let vol = s.store().open_volume(id)?;
        let t = Instant::now();
        for off in (0..size).step_by(MIB as usize) {
            vol.write_at(&buf, off)?;
        }
        cw.push(mib / t.elapsed().as_secs_f64());
        // Batches of 8 MiB, each side reading the same offsets.
        let per_batch = 8;
        let (mut rbuf, mut cbuf) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
        let offsets = |b: u64| (b * per_batch..((b + 1) * per_batch).min(size / MIB)).map(|i| i * MIB);
        let (raw_t, cow_t) = side_by_side(
            (size / MIB).div_ceil(per_batch),
            |b| offsets(b).try_for_each(|off| raw.read(&mut rbuf, off)),
            |b| offsets(b).try_for_each(|off| vol.read_at(&mut cbuf, off)),
        )?;
        rr.push(mib / raw_t.as_secs_f64());
        cr.push(mib / cow_t.as_secs_f64());
    }
    push(report, "seq1m_write", "MiB/s", median(cw), Some(median(rw)), true);
    push(report, "seq1m_read", "MiB/s", median(cr), Some(median(rr)), true);
    Ok(())
}

/// Write + flush of 4 KiB from 1, 2 and 4 threads, against pwrite + fdatasync.
fn durable(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let size = 64 * MIB;
    let nblocks = size / BS;
    for threads in [1u64, 2, 4] {
        progress(&format!("durable4k x{threads}"));
        let n = opts.durable_ops();
        let (mut c, mut r) = (vec![], vec![]);
        for _ in 0..opts.reps() {
            let raw = Arc::new(Raw::create(&opts.dir, "raw.img")?);
            raw.fill(size)?;
            let t = Instant::now();
            run_threads(threads, |i| {
                let buf = pattern(BS as usize, i);
                let mut rng = Rng(i + 5);
                for _ in 0..n / threads {
                    raw.write(&buf, rng.block(nblocks) * BS)?;
                    raw.sync()?;
                }
                Ok(())
            })?;
            r.push(rate(n / threads * threads, t.elapsed()));
            drop(raw);
            let s = Scratch::new(&opts.dir, "store", store_opts())?;
            let info = s.store().create_volume(VolumeOptions {
                access_mode: cowvol::AccessMode::ReadWriteMany,
                ..VolumeOptions::new("v", size)
            })?;
            let vol = s.store().open_volume(info.id)?;
            let fill = pattern(MIB as usize, 1);
            for off in (0..size).step_by(MIB as usize) {
                vol.write_at(&fill, off)?;
            }
            vol.flush()?;
            let t = Instant::now();
            run_threads(threads, |i| {
                let buf = pattern(BS as usize, i);
                let mut rng = Rng(i + 5);
                for _ in 0..n / threads {
                    vol.write_at(&buf, rng.block(nblocks) * BS)?;
                    vol.flush()?;
                }
                Ok(())
            })?;
            c.push(rate(n / threads * threads, t.elapsed()));
        }
        let name = match threads {
            1 => "durable4k_write".to_string(),
            t => format!("durable4k_write_{t}threads"),
        };
        push(report, &name, "ops/s", median(c), Some(median(r)), true);
    }
    Ok(())
}

fn run_threads(n: u64, f: impl Fn(u64) -> Result<()> + Sync) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn({
                    let f = &f;
                    move || f(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err(Error::InvalidArgument("bench thread panicked".into()))))
    })
}

fn raw_fdatasync_us(dir: &Path, reps: usize) -> Result<f64> {
    let raw = Raw::create(dir, "raw-sync.img")?;
    raw.fill(MIB)?;
    let buf = pattern(BS as usize, 9);
    let mut v = Vec::new();
    for i in 0..reps.max(20) {
        let t = Instant::now();
        raw.write(&buf, (i as u64 % 256) * BS)?;
        raw.sync()?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(v))
}

fn time_us<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let out = f()?;
    Ok((t.elapsed().as_secs_f64() * 1e6, out))
}

/// Snapshot, fork, restore and delete latency at each size; then, at the
/// largest, open and recovery time, check cost, metadata memory, snapshot
/// listing and I/O latency while a big snapshot is deleted.
fn admin_latency(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    // Each repetition costs a few syncs: take many, so one slow sync on a
    // shared disk does not move the median.
    let reps = opts.reps().max(5) * 5;
    let sync_us = raw_fdatasync_us(&opts.dir, reps)?;
    push(report, "raw_fdatasync", "us", sync_us, Some(sync_us), false);
    let figures_at = opts.snapshot_sizes.iter().copied().filter(|&b| b <= FIGURES_BLOCKS).max();
    for &blocks in &opts.snapshot_sizes {
        if !fits_on_disk(&opts.dir, blocks * BS) {
            progress(&format!("skipping {blocks} blocks: not enough free disk space"));
            continue;
        }
        progress(&format!("snapshot latency at {blocks} blocks"));
        let mut s = Scratch::new(&opts.dir, "store", store_opts())?;
        let store = s.store();
        let size = blocks * BS;
        let id = store.create_volume(VolumeOptions::new("v", size))?.id;
        let vol = store.open_volume(id)?;
        let fill = pattern(MIB as usize, 1);
        for off in (0..size).step_by(MIB as usize) {
            let len = MIB.min(size - off) as usize;
            vol.write_at(&fill[..len], off)?;
        }
        vol.flush()?;
        store.checkpoint()?;
        // The raw limit again, now: writing the data may have left the disk
        // busy with write-back, which slows every sync that follows.
        let sync_here = raw_fdatasync_us(&opts.dir, reps)?;
        let (mut c, mut f, mut r, mut d) = (vec![], vec![], vec![], vec![]);
        for i in 0..reps {
            let (us, snap) = time_us(|| store.create_snapshot(id, SnapshotOptions::named(format!("s{i}"))))?;
            c.push(us);
            let (us, _) = time_us(|| {
                store.fork_volume(
                    id,
                    ForkOptions { name: format!("f{i}"), from_snapshot: Some(snap.id), ..Default::default() },
                )
            })?;
            f.push(us);
            vol.write_at(&fill[..BS as usize], 0)?;
            let (us, _) = time_us(|| store.restore_snapshot(id, snap.id, RestoreOptions::default()))?;
            r.push(us);
            let (us, _) = time_us(|| store.delete_snapshot(id, snap.id))?;
            d.push(us);
        }
        report.snapshot_latency.push(SnapshotLatency {
            mapped_blocks: blocks,
            create_us: median(c),
            fork_us: median(f),
            restore_us: median(r),
            delete_us: median(d),
            raw_fdatasync_us: sync_here,
        });
        drop(vol);
        if Some(blocks) == figures_at {
            large_store_figures(opts, report, progress, &mut s, sync_us)?;
        }
    }
    list_snapshots(opts, report, progress)
}

/// Whether `bytes` of data fit in the free space of `dir` with a quarter
/// to spare (the store's metadata, WAL and growth steps).
fn fits_on_disk(dir: &Path, bytes: u64) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: statvfs is a plain C struct for which all-zero bytes are a
    // valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return true;
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    free >= bytes + bytes / 4
}

/// Listing every snapshot of a volume that has ten thousand, each with its
/// size: the median of several `list_snapshots` calls.
fn list_snapshots(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    progress(&format!("creating {LISTED_SNAPSHOTS} snapshots"));
    let s = Scratch::new(&opts.dir, "store-list", store_opts())?;
    let store = s.store();
    let id = store.create_volume(VolumeOptions::new("v", 64 * MIB))?.id;
    let vol = store.open_volume(id)?;
    let fill = pattern(MIB as usize, 5);
    for i in 0..LISTED_SNAPSHOTS {
        // A block changes between snapshots, so each one has its own root.
        vol.write_at(&fill[..BS as usize], (i % 16_384) * BS)?;
        store.create_snapshot(id, SnapshotOptions::named(format!("s{i}")))?;
    }
    let mut v = Vec::new();
    for _ in 0..opts.reps().max(5) {
        let (us, list) = time_us(|| Ok(store.list_snapshots(id)))?;
        let bytes: u64 = list.iter().map(|s| s.size_bytes).sum();
        debug_assert_eq!(list.len() as u64, LISTED_SNAPSHOTS);
        std::hint::black_box(bytes);
        v.push(us);
    }
    push(report, "list_10k_snapshots", "us", median(v), None, false);
    Ok(())
}

/// Snapshot create on a volume that has 10 snapshots and on one that has
/// 100,000 (10,000 with `--quick`), in one store: the name check and the
/// insert must not grow with the count. The two volumes and a raw
/// fdatasync take turns, so that all three see the same moments of a
/// noisy disk; each create is undone by an untimed delete so the counts
/// stay put. Medians.
fn create_among_many(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let many: u64 = if opts.quick { 10_000 } else { 100_000 };
    let s = Scratch::new(&opts.dir, "store-many", store_opts())?;
    let store = s.store();
    let few_vol = store.create_volume(VolumeOptions::new("few", 64 * MIB))?.id;
    let many_vol = store.create_volume(VolumeOptions::new("many", 64 * MIB))?.id;
    progress(&format!("creating {many} snapshots on one volume"));
    for (vol, n) in [(few_vol, 10), (many_vol, many)] {
        for i in 0..n {
            store.create_snapshot(vol, SnapshotOptions::named(format!("s{i}")))?;
        }
    }
    let raw = Raw::create(&opts.dir, "raw-sync-names.img")?;
    raw.fill(MIB)?;
    let buf = pattern(BS as usize, 9);
    let create_once = |vol: VolumeId, i: usize| -> Result<f64> {
        let (us, snap) = time_us(|| store.create_snapshot(vol, SnapshotOptions::named(format!("t{i}"))))?;
        store.delete_snapshot(vol, snap.id)?;
        Ok(us)
    };
    let (mut few, mut at_many, mut sync) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..opts.reps().max(5) * 10 {
        few.push(create_once(few_vol, i)?);
        at_many.push(create_once(many_vol, i)?);
        let (us, ()) = time_us(|| {
            raw.write(&buf, (i as u64 % 256) * BS)?;
            raw.sync()
        })?;
        sync.push(us);
    }
    let raw_us = median(sync);
    push(report, "snapshot_create_us_10_on_volume", "us", median(few), Some(raw_us), false);
    let name = if opts.quick { "snapshot_create_us_10k_on_volume" } else { "snapshot_create_us_100k_on_volume" };
    push(report, name, "us", median(at_many), Some(raw_us), false);
    Ok(())
}

fn large_store_figures(
    opts: &BenchOptions,
    report: &mut BenchReport,
    progress: &mut dyn FnMut(&str),
    s: &mut Scratch,
    sync_us: f64,
) -> Result<()> {
    progress("check, memory, open and recovery");
    let store = s.store().clone();
    let stats = store.stats();
    let mapped = stats.data_blocks.max(1);
    push(
        report,
        "metadata_bytes_per_mapped_block",
        "bytes",
        stats.metadata_memory_bytes as f64 / mapped as f64,
        None,
        false,
    );
    let (us, rep) = time_us(|| store.check())?;
    let nodes_one = rep.nodes;
    push(report, "check_us_per_mapped_block", "us", us / mapped as f64, None, false);
    let id = store.list_volumes()[0].id;
    for i in 0..100 {
        store.create_snapshot(id, SnapshotOptions::named(format!("c{i}")))?;
    }
    let (us100, rep100) = time_us(|| store.check())?;
    push(report, "check_us_per_mapped_block_100_snapshots", "us", us100 / mapped as f64, None, false);
    debug_assert!(rep100.nodes >= nodes_one);
    let (us, scrub) = time_us(|| store.scrub())?;
    let scrub_mib = scrub.bytes_read as f64 / MIB as f64 / (us / 1e6);
    let raw_mib = {
        let raw = Raw::create(&opts.dir, "raw-scrub.img")?;
        raw.fill(scrub.bytes_read.max(MIB))?;
        let mut buf = vec![0u8; 4 * MIB as usize];
        let t = Instant::now();
        let mut off = 0;
        while off < scrub.bytes_read {
            let n = (4 * MIB).min(scrub.bytes_read - off) as usize;
            raw.read(&mut buf[..n], off)?;
            off += n as u64;
        }
        (scrub.bytes_read as f64 / MIB as f64) / t.elapsed().as_secs_f64()
    };
    push(report, "scrub", "MiB/s", scrub_mib, Some(raw_mib), true);

    // p99 of 4 KiB writes on another volume while the big snapshot is deleted.
    let other = store.create_volume(VolumeOptions::new("other", 64 * MIB))?.id;
    let ov = store.open_volume(other)?;
    let big = store.create_snapshot(id, SnapshotOptions::named("big"))?;
    let vol = store.open_volume(id)?;
    let fill = pattern(MIB as usize, 2);
    let size = store.volume(id)?.size_bytes;
    for off in (0..size).step_by(MIB as usize) {
        vol.write_at(&fill[..MIB.min(size - off) as usize], off)?;
    }
    drop(vol);
    for i in 0..100 {
        let s = store.list_snapshots(id).into_iter().find(|s| s.name == format!("c{i}"));
        if let Some(s) = s {
            store.delete_snapshot(id, s.id)?;
        }
    }
    let buf = pattern(BS as usize, 4);
    let mut rng = Rng(3);
    let mut quiet = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        ov.write_at(&buf, rng.block(64 * MIB / BS) * BS)?;
        quiet.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut busy = Vec::new();
    std::thread::scope(|sc| -> Result<()> {
        let h = sc.spawn(|| store.delete_snapshot(id, big.id));
        while !h.is_finished() || busy.len() < 200 {
            let t = Instant::now();
            ov.write_at(&buf, rng.block(64 * MIB / BS) * BS)?;
            busy.push(t.elapsed().as_secs_f64() * 1e6);
            if busy.len() > 2_000_000 {
                break;
            }
        }
        h.join().unwrap_or_else(|_| Err(Error::InvalidArgument("delete thread panicked".into())))?;
        Ok(())
    })?;
    push(
        report,
        "p99_write4k_us_during_big_delete",
        "us",
        percentile(busy, 0.99),
        Some(percentile(quiet, 0.99)),
        false,
    );
    drop(ov);

    // Open time after a clean close, then recovery after a crash with a full WAL.
    let dir = s.dir.clone();
    drop(store);
    drop(s.store.take());
    let (open_us, store) = time_us(|| Store::open(&dir, store_opts()))?;
    push(report, "open_clean_ms", "ms", open_us / 1000.0, None, false);
    let wal_opts = StoreOptions { checkpoint_wal_bytes: 16 * MIB, ..store_opts() };
    drop(store);
    let store = Store::open(&dir, wal_opts.clone())?;
    let vol = store.open_volume(id)?;
    let nblocks = size / BS;
    let mut rng = Rng(17);
    // Single-block writes make the WAL grow fastest per byte of data; stop
    // just short of the checkpoint threshold.
    let writes = (16 * MIB / 48).min(nblocks * 4);
    for _ in 0..writes {
        vol.write_at(&buf, rng.block(nblocks) * BS)?;
    }
    vol.flush()?;
    drop(vol);
    cowvol::testing::abandon(store);
    let (rec_us, store) = time_us(|| Store::open(&dir, wal_opts))?;
    push(report, "open_after_crash_full_wal_ms", "ms", rec_us / 1000.0, None, false);
    let _ = sync_us;
    s.store = Some(store);
    Ok(())
}

/// Scattered writes on a huge, nearly empty volume: what the extent trees
/// cost in memory per write. Each unaligned 4 KiB write touches two blocks
/// far from every other write, so each needs a leaf and a path of interior
/// nodes of its own. The ratio is tree memory to data bytes written.
fn sparse_writes(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    progress("scattered writes on a 16 TiB volume");
    let writes: u64 = if opts.quick { 5_000 } else { 20_000 };
    let s = Scratch::new(&opts.dir, "sparse", store_opts())?;
    let size = 16u64 << 40;
    let id = s.store().create_volume(unflushed_volume(size))?.id;
    let vol = s.store().open_volume(id)?;
    let buf = pattern(BS as usize, 9);
    let mut rng = Rng(0x5ca7_7e3d);
    for _ in 0..writes {
        vol.write_at(&buf, rng.next() % (size - BS))?;
    }
    vol.flush()?;
    let stats = s.store().stats();
    // `metadata_memory_bytes` also counts 4 bytes per page of the file for
    // reference counts; take them out to see the trees alone.
    let tree_bytes = stats.metadata_memory_bytes.saturating_sub(stats.file_bytes / BS * 4);
    let data_bytes = writes * BS;
    push(report, "sparse_tree_bytes_per_write", "bytes", tree_bytes as f64 / writes as f64, None, false);
    push(report, "sparse_tree_nodes_per_write", "nodes", stats.tree_nodes as f64 / writes as f64, None, false);
    push(report, "sparse_tree_ram_per_data_byte", "ratio", tree_bytes as f64 / data_bytes as f64, None, false);
    Ok(())
}
/// Free space given back to the file system: a volume is written and
/// deleted, and once the checkpoint that frees it is durable, punching
/// runs. Reports the data file's allocated size before and after beside
/// the bytes in use, the time of a punch step (64 MiB), and the median and
/// p99 of 4 KiB writes to another volume while punching runs, beside the
/// same writes with no punching (in the `raw` column).
fn punch_space(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    progress("punch");
    let size = opts.volume_bytes();
    // Punching runs only when asked here, so each phase is timed alone.
    let s = Scratch::new(&opts.dir, "store", StoreOptions { punch_free_space: false, ..store_opts() })?;
    let store = s.store();
    let other = store.create_volume(unflushed_volume(64 * MIB))?.id;
    let vol = store.open_volume(other)?;
    fill_volume(&vol, 64 * MIB)?;
    let (mut before, mut after, mut used, mut step_ms) = (vec![], vec![], vec![], vec![]);
    let (mut busy, mut quiet) = (vec![], vec![]);
    for rep in 0..opts.reps() {
        let big = store.create_volume(VolumeOptions::new(format!("big{rep}"), size))?.id;
        fill_volume(&store.open_volume(big)?, size)?;
        store.delete_volume(big)?;
        store.checkpoint()?;
        let st = store.stats();
        before.push(st.allocated_bytes as f64 / MIB as f64);
        used.push(st.used_bytes as f64 / MIB as f64);
        // The same writes twice: alone, then while another thread punches.
        quiet.extend(write_latencies_us(&vol, 64 * MIB, 2_000, rep as u64, || true)?);
        let punched = std::sync::atomic::AtomicU64::new(0);
        let done = std::sync::atomic::AtomicBool::new(false);
        let t = Instant::now();
        let lat = std::thread::scope(|sc| {
            let punching = sc.spawn(|| {
                let r = store.punch_free_space();
                done.store(true, std::sync::atomic::Ordering::Release);
                r.map(|n| punched.store(n, std::sync::atomic::Ordering::Relaxed))
            });
            let lat = write_latencies_us(&vol, 64 * MIB, 2_000, rep as u64 + 100, || {
                done.load(std::sync::atomic::Ordering::Acquire)
            });
            punching
                .join()
                .map_err(|_| io_err("joining the punching thread")(std::io::Error::other("it panicked")))??;
            lat
        })?;
        let elapsed_ms = t.elapsed().as_secs_f64() * 1e3;
        busy.extend(lat);
        let bytes = punched.load(std::sync::atomic::Ordering::Relaxed);
        step_ms.push(elapsed_ms / bytes.div_ceil(64 * MIB).max(1) as f64);
        after.push(store.stats().allocated_bytes as f64 / MIB as f64);
    }
    push(report, "punch_allocated_before", "MiB", median(before), None, false);
    push(report, "punch_allocated_after", "MiB", median(after), None, false);
    push(report, "punch_in_use", "MiB", median(used), None, false);
    push(report, "punch_step_64mib", "ms", median(step_ms), None, false);
    push(report, "write4k_while_punching_p50", "us", median(busy.clone()), Some(median(quiet.clone())), false);
    push(report, "write4k_while_punching_p99", "us", percentile(busy, 0.99), Some(percentile(quiet, 0.99)), false);
    Ok(())
}

/// Writes `size` bytes of a volume in 1 MiB writes and flushes.
fn fill_volume(vol: &cowvol::Volume, size: u64) -> Result<()> {
    let fill = pattern(MIB as usize, 1);
    for off in (0..size).step_by(MIB as usize) {
        vol.write_at(&fill[..MIB.min(size - off) as usize], off)?;
    }
    vol.flush()
}

/// The latency of each of at least `min` random 4 KiB writes to `vol`,
/// going on until `stop` says so.
fn write_latencies_us(
    vol: &cowvol::Volume,
    size: u64,
    min: usize,
    seed: u64,
    stop: impl Fn() -> bool,
) -> Result<Vec<f64>> {
    let buf = pattern(BS as usize, seed);
    let mut rng = Rng(seed | 1);
    let mut lat = Vec::with_capacity(min);
    while lat.len() < min || !stop() {
        let (us, ()) = time_us(|| vol.write_at(&buf, rng.block(size / BS) * BS))?;
        lat.push(us);
    }
    Ok(lat)
}

/// Mapped blocks in the store `check_beside_writes` checks: ten million
/// (one million with `--quick`), or the largest of 5, 2 and 1 times a
/// power of ten below that whose data fits in the directory's free space
/// with a quarter to spare.
fn check_store_blocks(opts: &BenchOptions) -> u64 {
    let top: u64 = if opts.quick { 1_000_000 } else { 10_000_000 };
    let steps = (0..4).flat_map(|k| [10, 5, 2].map(|m| m * top / 10 / 10u64.pow(k)));
    steps.into_iter().find(|&b| fits_on_disk(&opts.dir, b * BS)).unwrap_or(1_000)
}

/// 4 KiB writes, each followed by a flush, on a small volume of a store
/// that also holds one volume of [`check_store_blocks`] mapped blocks,
/// measured in four kinds of phase that take turns (100 writes each, ten
/// rounds per repetition, so all see the same moments of a noisy disk):
/// nothing else running; `check()` running back to back; the same at the
/// lowest CPU priority (nice 19, as a scheduled check would run); and, as
/// a control, a thread that only burns CPU and memory bandwidth and
/// touches no store. Median, p99 and maximum of each, side by side with
/// the quiet figure (`raw`), so the ratio is quiet / busy. Also the median
/// duration of one check while the writes run, the mapped blocks, and the
/// problems the checks found (expected: none).
fn check_beside_writes(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let blocks = check_store_blocks(opts);
    progress(&format!("writing {blocks} blocks to check"));
    let s = Scratch::new(&opts.dir, "store-check", store_opts())?;
    let store = s.store();
    let big = store.create_volume(unflushed_volume(blocks * BS))?.id;
    let vol = store.open_volume(big)?;
    let fill = pattern(4 * MIB as usize, 11);
    for off in (0..blocks * BS).step_by(fill.len()) {
        vol.write_at(&fill[..(fill.len() as u64).min(blocks * BS - off) as usize], off)?;
    }
    vol.flush()?;
    drop(vol);
    // Written nodes, so that check reads them all back.
    store.checkpoint()?;
    let other = store.create_volume(VolumeOptions::new("other", 64 * MIB))?.id;
    let ov = store.open_volume(other)?;
    let buf = pattern(BS as usize, 12);
    let mut rng = Rng(29);
    let mut write_flush = || -> Result<f64> {
        let off = rng.block(64 * MIB / BS) * BS;
        Ok(time_us(|| ov.write_at(&buf, off).and_then(|()| ov.flush()))?.0)
    };
    // Settle first: the fill leaves the disk busy writing back for a while.
    for _ in 0..200 {
        write_flush()?;
    }
    let checks = std::sync::Mutex::new((Vec::new(), 0usize));
    let check_loop = |nice: bool, stop: &AtomicBool| -> Result<()> {
        if nice {
            lower_thread_priority();
        }
        while !stop.load(Ordering::Relaxed) {
            let (us, r) = time_us(|| store.check())?;
            let mut c = checks.lock().unwrap_or_else(|e| e.into_inner());
            c.0.push(us / 1000.0);
            c.1 += r.problems.len();
        }
        Ok(())
    };
    let hog = |stop: &AtomicBool| -> Result<()> {
        let mut v = vec![1u32; 16 << 20];
        while !stop.load(Ordering::Relaxed) {
            let sum = v.iter().fold(0u32, |a, &x| a.wrapping_add(x));
            v[0] = std::hint::black_box(sum);
        }
        Ok(())
    };
    let mut samples: [Vec<f64>; 4] = Default::default();
    progress("writes alone, beside check, beside a niced check, beside a CPU hog, in turns");
    for _ in 0..opts.reps() * 10 {
        for (kind, out) in samples.iter_mut().enumerate() {
            let stop = AtomicBool::new(false);
            std::thread::scope(|sc| -> Result<()> {
                let background = sc.spawn(|| match kind {
                    1 => check_loop(false, &stop),
                    2 => check_loop(true, &stop),
                    3 => hog(&stop),
                    _ => Ok(()),
                });
                let mut result = Ok(());
                for _ in 0..100 {
                    match write_flush() {
                        Ok(us) => out.push(us),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                stop.store(true, Ordering::Relaxed);
                let joined = background.join();
                joined.unwrap_or_else(|_| Err(Error::InvalidArgument("a background thread panicked".into())))?;
                result
            })?;
        }
    }
    let (check_ms, problems) = checks.into_inner().unwrap_or_else(|e| e.into_inner());
    push(report, "check_mapped_blocks", "blocks", blocks as f64, None, false);
    push(report, "check_ms_beside_writes", "ms", median(check_ms), None, false);
    push(report, "check_problems_found", "problems", problems as f64, None, false);
    let [quiet, with_check, with_niced_check, with_hog] = samples;
    for (name, busy) in [("check", with_check), ("niced_check", with_niced_check), ("cpu_hog", with_hog)] {
        for (stat, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            let (b, q) = (percentile(busy.clone(), p), percentile(quiet.clone(), p));
            push(report, &format!("{stat}_write4k_flush_us_during_{name}"), "us", b, Some(q), false);
        }
    }
    Ok(())
}

/// Puts the calling thread at the lowest CPU priority (nice 19); best
/// effort, a failure leaves it as it was.
fn lower_thread_priority() {
    // SAFETY: gettid has no preconditions, and setpriority on one thread id
    // changes only that thread's scheduling priority.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// Trees larger than the node cache. One volume of `blocks` mapped blocks
/// (written sequentially, so its leaves are full), checkpointed and
/// reopened with a node cache of 1 MiB and with the default 256 MiB; for
/// each, the metadata memory the store reports after 4 KiB random reads
/// over the whole volume, the nodes cached, and the read rate beside
/// `pread` of the same blocks of a raw file (both page-cache hot). The
/// small cache holds about 1 % of this tree: every read that misses reads
/// its leaf's page again.
fn node_cache(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    progress("node cache");
    let size = opts.volume_bytes();
    let nblocks = size / BS;
    let n = opts.random_ops();
    let mut scratch = Scratch::new(&opts.dir, "cache-store", store_opts())?;
    let id = scratch.store().create_volume(unflushed_volume(size))?.id;
    fill_volume(&scratch.store().open_volume(id)?, size)?;
    scratch.store.take().expect("open").close()?;
    let dir = scratch.dir.clone();
    let raw = Raw::create(&opts.dir, "raw-cache.img")?;
    raw.fill(size)?;
    let mut buf = vec![0u8; BS as usize];
    for (name, cache) in [("small", MIB), ("default", 256 * MIB)] {
        let (mut rates, mut raw_rates, mut mem, mut cached) = (vec![], vec![], vec![], vec![]);
        for rep in 0..opts.reps() {
            let store = Store::open(&dir, StoreOptions { node_cache_bytes: cache, ..store_opts() })?;
            let vol = store.open_volume(id)?;
            let mut rng = Rng(rep as u64 + 31);
            let t = Instant::now();
            for _ in 0..n {
                vol.read_at(&mut buf, rng.block(nblocks) * BS)?;
            }
            rates.push(rate(n, t.elapsed()));
            let mut rng = Rng(rep as u64 + 31);
            let t = Instant::now();
            for _ in 0..n {
                raw.read(&mut buf, rng.block(nblocks) * BS)?;
            }
            raw_rates.push(rate(n, t.elapsed()));
            let st = store.stats();
            mem.push(st.metadata_memory_bytes as f64 / MIB as f64);
            cached.push(st.node_cache_bytes as f64 / MIB as f64);
            drop(vol);
            store.close()?;
        }
        push(report, &format!("rand4k_read_{name}_node_cache"), "ops/s", median(rates), Some(median(raw_rates)), true);
        push(report, &format!("metadata_memory_{name}_node_cache"), "MiB", median(mem), None, false);
        push(report, &format!("node_cache_held_{name}"), "MiB", median(cached), None, false);
    }
    drop((raw, scratch));
    Ok(())
}

/// Mapped-block counts of the scale figures (`--only scale`): every block
/// distinct, kept by key on a [`cowvol::testing::KeyedDir`] so that the
/// metadata of 10^8 blocks is real while their data takes no room.
pub fn default_scale_sizes(quick: bool) -> Vec<u64> {
    if quick {
        vec![1_000, 10_000, 100_000]
    } else {
        vec![1_000, 10_000, 100_000, 1_000_000, 10_000_000]
    }
}

/// Runs of the probe per size; the figures are their medians.
const PROBE_RUNS: usize = 5;
/// Random 4 KiB reads the probe makes after open: enough to fill a 256 MiB
/// node cache at 10^8 blocks (a leaf per read).
const PROBE_READS: u64 = 100_000;

/// What one probe process measured (see [`probe`]).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// Opening the store after a clean close.
    pub open_ms: f64,
    /// Resident set of the process right after open.
    pub rss_open_mib: f64,
    /// Resident set after the random reads.
    pub rss_reads_mib: f64,
    /// Node cache bytes after the reads.
    pub node_cache_mib: f64,
    /// A snapshot created (logged and synced).
    pub snapshot_ms: f64,
    /// The store closed after it (its checkpoint).
    pub close_ms: f64,
}

/// Opening a cleanly closed store, the memory of a process holding it, and
/// a snapshot plus close, against mapped blocks; each probe in a process of
/// its own (`cowvol bench-probe`), so that one's memory is not another's.
fn scale(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    for &n in &opts.scale_sizes {
        progress(&format!("scale: building {n} blocks"));
        let dir = opts.dir.join(format!("scale-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        build_keyed_store(&dir, n)?;
        let mut runs = Vec::new();
        for _ in 0..PROBE_RUNS {
            progress(&format!("scale: probing {n} blocks"));
            runs.push(spawn_probe(&dir)?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let m = |f: fn(&Probe) -> f64| median(runs.iter().map(f).collect());
        push(report, &format!("open_clean_ms_{n}"), "ms", m(|p| p.open_ms), None, false);
        push(report, &format!("snapshot_ms_{n}"), "ms", m(|p| p.snapshot_ms), None, false);
        push(report, &format!("close_ms_{n}"), "ms", m(|p| p.close_ms), None, false);
        push(report, &format!("rss_after_open_mib_{n}"), "MiB", m(|p| p.rss_open_mib), None, false);
        push(report, &format!("rss_after_reads_mib_{n}"), "MiB", m(|p| p.rss_reads_mib), None, false);
        push(report, &format!("node_cache_mib_{n}"), "MiB", m(|p| p.node_cache_mib), None, false);
    }
    Ok(())
}

fn keyed_dir(dir: &Path) -> Result<Arc<dyn cowvol::backend::StorageDir>> {
    let d =
        cowvol::testing::KeyedDir::create(dir, BS as usize).map_err(io_err("creating the keyed store directory"))?;
    Ok(Arc::new(d))
}

/// A store with one volume of `n` blocks, every one written once with
/// distinct contents, closed cleanly.
pub fn build_keyed_store(dir: &Path, n: u64) -> Result<()> {
    let store = Store::open_in(keyed_dir(dir)?, StoreOptions::default())?;
    let id = store.create_volume(VolumeOptions::new("scale", n * BS))?.id;
    let vol = store.open_volume(id)?;
    const BATCH: u64 = 256;
    let mut buf = Vec::with_capacity((BATCH * BS) as usize);
    for first in (0..n).step_by(BATCH as usize) {
        buf.clear();
        for lb in first..(first + BATCH).min(n) {
            buf.extend(cowvol::testing::keyed_block(lb + 1, BS as usize));
        }
        vol.write_at(&buf, first * BS)?;
    }
    vol.flush()?;
    drop(vol);
    store.close()
}

/// Metadata written by random 4 KiB overwrites of a keyed store's volume.
#[derive(Debug, serde::Serialize)]
pub struct Overwritten {
    pub writes: u64,
    pub data_bytes: u64,
    pub metadata_per_data_byte: f64,
    pub log_bytes: u64,
    pub node_bytes: u64,
    pub delta_bytes: u64,
    pub table_bytes: u64,
    pub catalog_and_superblock_bytes: u64,
    pub zeroed_bytes: u64,
    pub syncs: u64,
    pub seconds: f64,
}

/// `cowvol bench-probe DIR --overwrite BYTES`: the dense case of the
/// amplification figures. Overwrites `bytes` of the store's one volume
/// (built by [`build_keyed_store`], every block written) in 4 KiB writes at
/// random offsets with the default options.
pub fn overwrite_keyed_store(dir: &Path, bytes: u64, seed: u64) -> Result<Overwritten> {
    let store = Store::open_in(keyed_dir(dir)?, StoreOptions::default())?;
    let id = store.list_volumes().first().ok_or_else(|| Error::NotFound { what: "the scale volume".into() })?.id;
    let t = Instant::now();
    let (writes, w) = write_for_amplification(store, id, BS, bytes, seed)?;
    Ok(Overwritten {
        writes,
        data_bytes: w.data_bytes,
        metadata_per_data_byte: w.metadata_per_data_byte(),
        log_bytes: w.log_bytes,
        node_bytes: w.node_bytes,
        delta_bytes: w.delta_bytes,
        table_bytes: w.table_bytes,
        catalog_and_superblock_bytes: w.catalog_bytes + w.superblock_bytes,
        zeroed_bytes: w.zeroed_bytes,
        syncs: w.syncs,
        seconds: t.elapsed().as_secs_f64(),
    })
}

fn spawn_probe(dir: &Path) -> Result<Probe> {
    let exe = std::env::current_exe().map_err(io_err("finding the cowvol binary"))?;
    let out = std::process::Command::new(exe)
        .arg("bench-probe")
        .arg(dir)
        .output()
        .map_err(io_err("running the bench probe"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::InvalidArgument(format!("the bench probe failed: {msg}")));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::InvalidArgument(format!("the bench probe printed something unexpected: {e}")))
}

/// The probe itself, run in a process of its own by `cowvol bench-probe
/// DIR`: opens the keyed store in `dir` with the default options (a
/// 256 MiB node cache), creates a snapshot and closes; then opens it again
/// and reads random blocks of its volume. Last it deletes the snapshots
/// probes took (not timed): left in place, each would share every leaf of
/// the volume, and the overwrites measured after a probe would pay for
/// copying them (the cost after a snapshot) instead of the steady state.
pub fn probe(dir: &Path) -> Result<Probe> {
    // First what a one-command `cowvol snapshot create` does after exec:
    // open, snapshot, close.
    let t = Instant::now();
    let store = Store::open_in(keyed_dir(dir)?, StoreOptions::default())?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_open_mib = rss_mib();
    let info =
        store.list_volumes().into_iter().next().ok_or_else(|| Error::NotFound { what: "the scale volume".into() })?;
    let t = Instant::now();
    store.create_snapshot(info.id, SnapshotOptions::named(format!("probe-{}", std::process::id())))?;
    let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    store.close()?;
    let close_ms = t.elapsed().as_secs_f64() * 1e3;
    // Then the memory of a process reading the volume at random.
    let store = Store::open_in(keyed_dir(dir)?, StoreOptions::default())?;
    let vol = store.open_volume(info.id)?;
    let nblocks = info.size_bytes / BS;
    let mut rng = Rng(29);
    let mut buf = vec![0u8; BS as usize];
    for _ in 0..PROBE_READS.min(nblocks * 4) {
        vol.read_at(&mut buf, rng.block(nblocks) * BS)?;
    }
    drop(vol);
    let rss_reads_mib = rss_mib();
    let node_cache_mib = cowvol::testing::node_cache_bytes(&store) as f64 / MIB as f64;
    for s in store.list_snapshots(info.id) {
        if s.name.starts_with("probe-") {
            store.delete_snapshot(info.id, s.id)?;
        }
    }
    store.close()?;
    Ok(Probe { open_ms, rss_open_mib, rss_reads_mib, node_cache_mib, snapshot_ms, close_ms })
}

/// The resident set of this process (`VmRSS`), 0 where /proc cannot tell.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Metadata bytes written per byte of data, checkpoints and the log
/// included, under sustained writes across a 1 TiB volume: 4 KiB writes at
/// random offsets, and 1 MiB writes in order. The store is on a
/// [`cowvol::testing::KeyedDir`], which counts what reaches its files by
/// kind: data blocks (keyed), zeroes written ahead of the allocator, and
/// everything else, which is metadata. The engine's own counts
/// (`Store::written`) split the metadata into log, tree nodes, reference
/// table and the rest (catalogs and superblocks). A flush every 1 MiB of
/// data. Dense random overwrites of a fully written 1 TiB volume are
/// measured by hand: `cowvol bench-probe DIR --build N`, then
/// `cowvol bench-probe DIR --overwrite BYTES`.
fn amplification(opts: &BenchOptions, report: &mut BenchReport, progress: &mut dyn FnMut(&str)) -> Result<()> {
    const VOLUME: u64 = 1 << 40;
    let data_bytes: u64 = if opts.quick { 256 * MIB } else { 2048 * MIB };
    for (name, write_bytes) in [("random4k", BS), ("sequential1m", MIB)] {
        progress(&format!("amplification: {name}"));
        let path = opts.dir.join(format!("amp-{name}"));
        let _ = std::fs::remove_dir_all(&path);
        let dir = cowvol::testing::KeyedDir::create(&path, BS as usize)
            .map_err(io_err("creating the keyed store directory"))?;
        let store = Store::open_in(Arc::new(dir.clone()), StoreOptions::default())?;
        let id = store.create_volume(VolumeOptions::new("amp", VOLUME))?.id;
        let before = dir.written();
        let (_, engine) = write_for_amplification(store, id, write_bytes, data_bytes, AMPLIFICATION_SEED)?;
        let after = dir.written();
        let _ = std::fs::remove_dir_all(&path);
        let data = (after.keyed - before.keyed) as f64;
        let meta = (after.other - before.other) as f64;
        let zero = (after.zero - before.zero) as f64;
        push(report, &format!("metadata_bytes_per_data_byte_{name}"), "B/B", meta / data, None, false);
        push(report, &format!("zeroed_bytes_per_data_byte_{name}"), "B/B", zero / data, None, false);
        for (kind, bytes) in metadata_by_kind(&engine) {
            push(
                report,
                &format!("metadata_{kind}_bytes_per_data_byte_{name}"),
                "B/B",
                bytes as f64 / data,
                None,
                false,
            );
        }
    }
    Ok(())
}

/// The engine's metadata figures by kind: log, tree nodes written whole,
/// delta pages, reference table, and catalogs with superblocks.
fn metadata_by_kind(w: &cowvol::WriteStats) -> [(&'static str, u64); 5] {
    [
        ("log", w.log_bytes),
        ("nodes", w.node_bytes),
        ("deltas", w.delta_bytes),
        ("table", w.table_bytes),
        ("catalog", w.catalog_bytes + w.superblock_bytes),
    ]
}

/// Writes `data_bytes` to volume `id` of `store` in writes of `write_bytes`
/// (4 KiB ones at random offsets of the whole volume, larger ones in
/// order), flushing every 1 MiB, checkpoints and closes the store. Returns
/// the writes made and what the engine counted, the checkpoint included.
/// The seed of the amplification bench's random offsets (and the default
/// of `bench-probe --overwrite`): the figures repeat exactly.
const AMPLIFICATION_SEED: u64 = 41;

fn write_for_amplification(
    store: Store,
    id: VolumeId,
    write_bytes: u64,
    data_bytes: u64,
    seed: u64,
) -> Result<(u64, cowvol::WriteStats)> {
    let vol = store.open_volume(id)?;
    let nblocks = vol.size() / BS;
    let blocks_per_write = write_bytes / BS;
    let writes = data_bytes / write_bytes;
    let per_flush = (MIB / write_bytes).max(1);
    // Keys above any the builder used, so that every write is new data.
    let key_base = 1u64 << 62;
    let mut rng = Rng(seed);
    let mut buf = Vec::with_capacity(write_bytes as usize);
    for i in 0..writes {
        let first = if write_bytes == BS { rng.block(nblocks) } else { i * blocks_per_write % nblocks };
        buf.clear();
        for lb in first..first + blocks_per_write {
            buf.extend(cowvol::testing::keyed_block(key_base + (i << 8 | (lb - first)) + 1, BS as usize));
        }
        vol.write_at(&buf, first * BS)?;
        if (i + 1) % per_flush == 0 {
            vol.flush()?;
        }
    }
    vol.flush()?;
    drop(vol);
    // A last checkpoint, so that the figures include everything a close
    // could write (a close after it writes nothing).
    store.checkpoint()?;
    let counted = store.written();
    store.close()?;
    Ok((writes, counted))
}
