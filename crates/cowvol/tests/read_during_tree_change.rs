//! Reads whose tree nodes are not in the node cache read them with the
//! state lock released and validate them afterwards. With a node cache of
//! a few nodes, readers keep missing while a writer rewrites blocks,
//! snapshots come and go and checkpoints free and reuse node pages: every
//! read must return a version of each block that was written (the old or
//! the new), never bytes of another block or of a reused page.

use cowvol::testing::SplitMix64;
use cowvol::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

const BS: usize = 4096;
const BLOCKS: u64 = 4096;

fn opts() -> StoreOptions {
    StoreOptions { node_cache_bytes: 16 << 10, ..Default::default() }
}

/// Block `lb` as written by version `v`: its number, its version, and
/// bytes that depend on both.
fn block(lb: u64, v: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[..8].copy_from_slice(&lb.to_le_bytes());
    b[8..16].copy_from_slice(&v.to_le_bytes());
    let mut rng = SplitMix64(lb << 32 ^ v);
    for chunk in b[16..].chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
    b
}

/// Checks that `bytes` is a whole version of block `lb`.
fn assert_some_version(bytes: &[u8], lb: u64) {
    let got_lb = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let v = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    assert_eq!(got_lb, lb, "block {lb} read the bytes of block {got_lb}");
    assert!(bytes == block(lb, v).as_slice(), "block {lb} is not any version that was written (header says {v})");
}

#[test]
fn reads_that_miss_the_node_cache_see_old_or_new_data_while_trees_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts()).unwrap());
    let id = store.create_volume(VolumeOptions::new("v", BLOCKS * BS as u64)).unwrap().id;
    let vol = store.open_volume(id).unwrap();
    let all: Vec<u8> = (0..BLOCKS).flat_map(|lb| block(lb, 0)).collect();
    vol.write_at(&all, 0).unwrap();
    vol.flush().unwrap();
    store.checkpoint().unwrap();
    let misses_before = store.stats().node_cache_misses;

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let (vol, stop) = (vol.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = SplitMix64(t * 7 + 3);
                let mut buf = vec![0u8; 3 * BS];
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) || reads < 2_000 {
                    let lb = rng.next() % (BLOCKS - 3);
                    if rng.next().is_multiple_of(2) {
                        vol.read_at(&mut buf[..BS], lb * BS as u64).unwrap();
                        assert_some_version(&buf[..BS], lb);
                    } else {
                        // Three blocks, which may sit under two leaves.
                        vol.read_at(&mut buf, lb * BS as u64).unwrap();
                        for (k, b) in buf.chunks(BS).enumerate() {
                            assert_some_version(b, lb + k as u64);
                        }
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();

    let mut rng = SplitMix64(99);
    for round in 1..=40u64 {
        // Rewrites scattered over every leaf free the written nodes on their
        // paths; the checkpoint then writes new ones, and the one after it
        // lets the freed pages be reused.
        for _ in 0..64 {
            let lb = rng.next() % BLOCKS;
            vol.write_at(&block(lb, round), lb * BS as u64).unwrap();
        }
        let snap = store.create_snapshot(id, SnapshotOptions::named(format!("s{round}"))).unwrap();
        if round.is_multiple_of(3) {
            store.delete_snapshot(id, snap.id).unwrap();
        }
        store.checkpoint().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() >= 2_000);
    }
    assert!(store.stats().node_cache_misses > misses_before, "the readers never missed the node cache");
    assert!(store.check().unwrap().is_clean());
}
