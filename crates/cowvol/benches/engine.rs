//! criterion micro-benchmarks of the engine's hot paths, each beside the
//! raw-file operation it competes with. `cowvol bench` runs the whole
//! workloads and prints the ratios; see docs/performance.md.

use cowvol::{SnapshotOptions, Store, StoreOptions, VolumeOptions};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

const BS: u64 = 4096;
const SIZE: u64 = 256 << 20;

struct Rng(u64);
impl Rng {
    fn block(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % (SIZE / BS)) * BS
    }
}

fn random_4k(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", SIZE)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    let raw =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.path().join("raw")).unwrap();
    raw.set_len(SIZE).unwrap();
    let buf = vec![0x5au8; BS as usize];
    let mut g = c.benchmark_group("random_4k");
    g.throughput(Throughput::Bytes(BS));
    let mut rng = Rng(1);
    g.bench_function("raw_pwrite", |b| b.iter(|| raw.write_all_at(&buf, rng.block()).unwrap()));
    g.bench_function("cowvol_write", |b| b.iter(|| vol.write_at(&buf, rng.block()).unwrap()));
    store.create_snapshot(id, SnapshotOptions::named("s")).unwrap();
    g.bench_function("cowvol_write_after_snapshot", |b| b.iter(|| vol.write_at(&buf, rng.block()).unwrap()));
    let mut out = vec![0u8; BS as usize];
    g.bench_function("raw_pread", |b| b.iter(|| raw.read_exact_at(&mut out, rng.block()).unwrap()));
    g.bench_function("cowvol_read", |b| b.iter(|| vol.read_at(&mut out, rng.block()).unwrap()));
    g.finish();
}

fn durable_4k(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", SIZE)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    let raw =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.path().join("raw")).unwrap();
    raw.set_len(SIZE).unwrap();
    let buf = vec![0xa5u8; BS as usize];
    let mut g = c.benchmark_group("durable_4k");
    g.sample_size(20);
    let mut rng = Rng(2);
    g.bench_function("raw_pwrite_fdatasync", |b| {
        b.iter(|| {
            raw.write_all_at(&buf, rng.block()).unwrap();
            raw.sync_data().unwrap();
        })
    });
    g.bench_function("cowvol_write_flush", |b| {
        b.iter(|| {
            vol.write_at(&buf, rng.block()).unwrap();
            vol.flush().unwrap();
        })
    });
    g.finish();
}

fn snapshot_ops(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", 64 << 20)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    let fill = vec![1u8; 1 << 20];
    for off in (0..64u64 << 20).step_by(1 << 20) {
        vol.write_at(&fill, off).unwrap();
    }
    vol.flush().unwrap();
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(20);
    let mut n = 0u64;
    g.bench_function("create_delete_16k_blocks", |b| {
        b.iter_batched(
            || {
                n += 1;
                n
            },
            |i| {
                let s = store.create_snapshot(id, SnapshotOptions::named(format!("s{i}"))).unwrap();
                store.delete_snapshot(id, s.id).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Listing a volume's 10 000 snapshots with their sizes (`list_10k_snapshots`).
fn list_snapshots(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
    let id = store.create_volume(VolumeOptions::new("v", 64 << 20)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    let buf = vec![3u8; BS as usize];
    for i in 0..10_000u64 {
        vol.write_at(&buf, (i % 16_384) * BS).unwrap();
        store.create_snapshot(id, SnapshotOptions::named(format!("s{i}"))).unwrap();
    }
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(20);
    g.bench_function("list_10k_with_sizes", |b| {
        b.iter(|| store.list_snapshots(id).iter().map(|s| s.size_bytes).sum::<u64>())
    });
    g.finish();
}

criterion_group!(benches, random_4k, durable_4k, snapshot_ops, list_snapshots);
criterion_main!(benches);
