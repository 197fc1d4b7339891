//! The backup figures of docs/performance.md, measured in one run:
//!
//! 1. throughput of a full backup and of a restore, to a directory and to
//!    a single-node Garage on loopback (uploads 1 and 4 at a time), beside
//!    a raw sequential write + fsync of the same bytes to a file;
//! 2. incremental backups: bytes uploaded against bytes changed, for
//!    scattered 4 KiB writes and for sequential runs, at two chunk sizes.
//!
//! `cargo bench -p cowvol-backup --bench backup_targets [-- --quick]`.
//! Without Garage installed (.ci/deps-s3.sh) the S3 rows are left out.

use cowvol::{SnapshotOptions, Store, StoreOptions, VolumeOptions};
use cowvol_backup::testing::{noise, Garage};
use cowvol_backup::{backup, restore, BackupOptions, DirTarget, RestoreOptions, Target};
use std::io::Write;
use std::time::Instant;

const MIB: u64 = 1 << 20;

fn mib_s(bytes: u64, secs: f64) -> String {
    format!("{:.0}", bytes as f64 / MIB as f64 / secs)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let data_mib: u64 = if quick { 64 } else { 512 };
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = Store::open(tmp.path().join("store"), StoreOptions::default()).expect("store");
    let vol = store.create_volume(VolumeOptions::new("db", 2 * data_mib * MIB)).expect("volume").id;
    let h = store.open_volume(vol).expect("handle");
    for i in 0..data_mib {
        h.write_at(&noise(i + 1, MIB as usize), i * MIB).expect("write");
    }
    h.flush().expect("flush");
    drop(h);
    let garage = Garage::start();
    throughput(&store, vol, data_mib, tmp.path(), garage.as_ref());
    incremental(&store, vol, data_mib, tmp.path());
}

/// Full backup and restore throughput per target, beside a raw write.
fn throughput(store: &Store, vol: cowvol::VolumeId, data_mib: u64, dir: &std::path::Path, garage: Option<&Garage>) {
    let bytes = data_mib * MIB;
    let raw = {
        let path = dir.join("raw.img");
        let mut f = std::fs::File::create(&path).expect("raw file");
        // The same bytes, made before the clock starts.
        let data: Vec<Vec<u8>> = (0..data_mib).map(|i| noise(i + 1, MIB as usize)).collect();
        let t = Instant::now();
        for d in &data {
            f.write_all(d).expect("raw write");
        }
        f.sync_all().expect("raw sync");
        let secs = t.elapsed().as_secs_f64();
        std::fs::remove_file(path).ok();
        secs
    };
    println!("\n## Full backup and restore of {data_mib} MiB of data (256 KiB chunks, 16 MiB packs)\n");
    println!("| target | uploads at once | backup MiB/s | restore MiB/s | objects written |");
    println!("|---|---:|---:|---:|---:|");
    println!("| raw sequential write + fsync of the same bytes (a file) | - | {} | - | - |", mib_s(bytes, raw));
    let mut targets: Vec<(String, usize, Box<dyn Target>)> = Vec::new();
    for uploads in [1, 4] {
        let t = DirTarget::open(dir.join(format!("dir-{uploads}"))).expect("dir target");
        targets.push(("directory (same disk)".into(), uploads, Box::new(t)));
    }
    if let Some(g) = garage {
        for uploads in [1, 4] {
            targets.push(("Garage S3 on loopback".into(), uploads, Box::new(g.target(&format!("bench-{uploads}")))));
        }
    } else {
        println!("| Garage S3 on loopback | not installed (.ci/deps-s3.sh) | | | |");
    }
    for (i, (name, uploads, target)) in targets.iter().enumerate() {
        let snap = store.create_snapshot(vol, SnapshotOptions::named(format!("full-{i}"))).expect("snapshot").id;
        let opts = BackupOptions { uploads: *uploads, incremental: false, ..Default::default() };
        let t = Instant::now();
        let r = backup(store, snap, &**target, &opts, &mut |_| {}).expect("backup");
        let up = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let ropts = RestoreOptions { volume_name: format!("restored-{i}"), downloads: *uploads };
        let got = restore(&**target, &r.backup_id, store, &ropts, &|_, _| {}).expect("restore");
        let down = t.elapsed().as_secs_f64();
        store.delete_volume(got.volume.id).expect("delete restored");
        println!(
            "| {name} | {uploads} | {} | {} | {} |",
            mib_s(r.chunk_bytes_uploaded, up),
            mib_s(got.bytes_written, down),
            r.packs_uploaded * 2 + 1
        );
    }
}

/// Bytes uploaded by an incremental backup against the bytes changed.
fn incremental(store: &Store, vol: cowvol::VolumeId, data_mib: u64, dir: &std::path::Path) {
    println!("\n## Incremental backup: bytes uploaded against bytes changed (directory target)\n");
    println!("| change since the last backup | changed bytes | chunk size | chunks read | bytes uploaded (packs, indexes, manifest) | uploaded / changed | seconds |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let h = store.open_volume(vol).expect("handle");
    let mut seed = 1_000u64;
    let mut step = 0;
    for chunk_kib in [64u32, 256] {
        let target = DirTarget::open(dir.join(format!("incr-{chunk_kib}"))).expect("dir target");
        let opts = BackupOptions { chunk_bytes: chunk_kib << 10, ..Default::default() };
        let base = store.create_snapshot(vol, SnapshotOptions::named(format!("base-{chunk_kib}"))).expect("snap").id;
        backup(store, base, &target, &opts, &mut |_| {}).expect("base backup");
        let changes: [(&str, u64, u64); 5] = [
            ("10 scattered 4 KiB writes", 10, 4096),
            ("100 scattered 4 KiB writes", 100, 4096),
            ("1000 scattered 4 KiB writes", 1000, 4096),
            ("1 sequential run of 1 MiB", 1, MIB),
            ("1 sequential run of 16 MiB", 1, 16 * MIB),
        ];
        for (what, n, len) in changes {
            for _ in 0..n {
                seed += 1;
                // Scattered over the data, block-aligned.
                let at = (seed.wrapping_mul(0x9e37_79b9) % (data_mib * MIB - len)) & !4095;
                h.write_at(&noise(seed, len as usize), at).expect("write");
            }
            h.flush().expect("flush");
            step += 1;
            let snap = store.create_snapshot(vol, SnapshotOptions::named(format!("step-{step}"))).expect("snap").id;
            let t = Instant::now();
            let r = backup(store, snap, &target, &opts, &mut |_| {}).expect("incremental backup");
            let secs = t.elapsed().as_secs_f64();
            let changed = n * len;
            println!(
                "| {what} | {} | {chunk_kib} KiB | {} | {} | {:.1} | {secs:.3} |",
                changed,
                r.chunks_read,
                r.bytes_uploaded,
                r.bytes_uploaded as f64 / changed as f64
            );
        }
    }
}
