//! Diff and send/receive figures for docs/performance.md, in one run:
//!
//! * `Store::diff` time (median of 9) against the number of changed blocks,
//!   at two volume sizes 64 times apart, with the tree nodes each visits;
//! * send and receive throughput (median of 3) of a full stream through a
//!   file, beside raw sequential writing and reading of a file of the same
//!   size in the same directory (with an fsync, as a receive ends with one).
//!
//!     cargo bench -p cowvol --bench backup
//!
//! `COWVOL_BENCH_DIR` picks the directory (default: the system temp dir).

use cowvol::stream::{self, ReceiveOptions, SendOptions};
use cowvol::{SnapshotOptions, Store, StoreOptions, VolumeOptions};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const BS: u64 = 4096;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn diff_figures(dir: &Path) {
    println!(
        "diff: time against changed blocks (median of 9; 4 KiB blocks, 4096 blocks written spread over the volume)"
    );
    println!("{:>10} {:>9} {:>12} {:>14}", "volume", "changed", "time", "nodes visited");
    for (label, blocks) in [("1 GiB", 1u64 << 18), ("64 GiB", 1 << 24)] {
        let path = dir.join(format!("diff-{label}").replace(' ', ""));
        let _ = std::fs::remove_dir_all(&path);
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let v = store.create_volume(VolumeOptions::new("v", blocks * BS)).unwrap().id;
        let vol = store.open_volume(v).unwrap();
        for i in 0..4096 {
            vol.write_at(&[1u8; BS as usize], (i * (blocks / 4096) + 1) * BS).unwrap();
        }
        for (round, changed) in [1u64, 100, 10_000].into_iter().enumerate() {
            let s = store.create_snapshot(v, SnapshotOptions::named(format!("s{round}"))).unwrap().id;
            let buf = vec![2u8; BS as usize];
            for i in 0..changed {
                vol.write_at(&buf, (i * (blocks / changed)) * BS).unwrap();
            }
            store.checkpoint().unwrap();
            let mut times = Vec::new();
            let mut nodes = 0;
            for _ in 0..9 {
                let t = Instant::now();
                let d = store.diff(s, v).unwrap();
                times.push(t.elapsed());
                nodes = d.cost.nodes_visited;
            }
            println!("{label:>10} {changed:>9} {:>12.1?} {nodes:>14}", median(times));
        }
        drop(vol);
        store.close().unwrap();
        let _ = std::fs::remove_dir_all(&path);
    }
}

fn stream_figures(dir: &Path) {
    let size: u64 = 256 << 20;
    let src_path = dir.join("send-src");
    let dst_path = dir.join("send-dst");
    let file = dir.join("stream.bin");
    let raw = dir.join("raw.bin");
    let _ = std::fs::remove_dir_all(&src_path);
    let src = Store::open(&src_path, StoreOptions::default()).unwrap();
    let v = src.create_volume(VolumeOptions::new("v", size)).unwrap().id;
    let vol = src.open_volume(v).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 4 << 20];
    for at in (0..size).step_by(chunk.len()) {
        for w in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        vol.write_at(&chunk, at).unwrap();
    }
    vol.flush().unwrap();
    let snap = src.create_snapshot(v, SnapshotOptions::named("s")).unwrap().id;
    let (mut send_t, mut recv_t, mut raw_w, mut raw_r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&file).unwrap());
        stream::send(&src, snap, &SendOptions::default(), &mut out, &mut |_| {}).unwrap();
        let f = out.into_inner().unwrap();
        f.sync_all().unwrap();
        send_t.push(t.elapsed());

        let _ = std::fs::remove_dir_all(&dst_path);
        let dst = Store::open(&dst_path, StoreOptions::default()).unwrap();
        let t = Instant::now();
        let mut input = BufReader::with_capacity(1 << 20, File::open(&file).unwrap());
        stream::receive(&dst, &mut input, &ReceiveOptions::default(), &mut |_| {}).unwrap();
        recv_t.push(t.elapsed());
        dst.close().unwrap();

        let t = Instant::now();
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&raw).unwrap());
        for at in (0..size).step_by(chunk.len()) {
            let _ = at;
            w.write_all(&chunk).unwrap();
        }
        w.into_inner().unwrap().sync_all().unwrap();
        raw_w.push(t.elapsed());

        let t = Instant::now();
        let mut r = File::open(&raw).unwrap();
        while r.read(&mut chunk).unwrap() > 0 {}
        raw_r.push(t.elapsed());
    }
    println!();
    println!("send/receive of a full 256 MiB snapshot through a file, beside raw sequential I/O (median of 3)");
    println!("{:<44} {:>10} {:>10}", "", "time", "MiB/s");
    for (what, t) in [
        ("send (read snapshot, write stream, fsync)", median(send_t)),
        ("receive (read stream, stage, land)", median(recv_t)),
        ("raw sequential write + fsync", median(raw_w)),
        ("raw sequential read (page cache may help)", median(raw_r)),
    ] {
        println!("{what:<44} {:>10.1?} {:>10.0}", t, mib_s(size, t));
    }
    drop(vol);
    src.close().unwrap();
    for p in [&src_path, &dst_path] {
        let _ = std::fs::remove_dir_all(p);
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&raw);
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let base = std::env::var_os("COWVOL_BENCH_DIR").map(Into::into).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    diff_figures(dir.path());
    stream_figures(dir.path());
}
