//! A read checks every block it fetches from the disk against its CRC,
//! whatever the shape of the read: one block, part of one, or a long run
//! fetched and checked piece by piece. A damaged block fails the read that
//! first fetches it with `Error::Corruption`; reads around it are whole.

use cowvol::testing::SimDir;
use cowvol::*;
use std::sync::Arc;

const BS: usize = 4096;
/// 2 MiB: a long run, read in several pieces.
const BLOCKS: usize = 512;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

/// Block `lb`: unique bytes, easy to find in the data file.
fn block(lb: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..BS).map(|i| (i * 31 + lb * 7) as u8).collect();
    b[..8].copy_from_slice(&(lb as u64).to_le_bytes());
    b[8..16].copy_from_slice(b"READBLK!");
    b
}

/// A store whose volume holds `BLOCKS` blocks written in one run, with the
/// blocks in `damaged` flipped on the disk.
fn store_with_damage(damaged: &[usize]) -> (Store, Volume) {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let vid = store.create_volume(VolumeOptions::new("v", (BLOCKS * BS) as u64)).unwrap().id;
    let v = store.open_volume(vid).unwrap();
    v.write_at(&(0..BLOCKS).flat_map(block).collect::<Vec<u8>>(), 0).unwrap();
    drop(v);
    store.close().unwrap();
    let image = disk.read_visible("cowvol.dat").unwrap();
    for &lb in damaged {
        let at = image.chunks(BS).position(|c| c == block(lb)).expect("block in the data file");
        disk.corrupt("cowvol.dat", (at * BS + 200) as u64, 0x10);
    }
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    let v = store.open_volume(vid).unwrap();
    (store, v)
}

fn is_corruption<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(Error::Corruption { .. }))
}

#[test]
fn a_damaged_block_fails_every_read_that_fetches_it_and_no_other() {
    // One block near the start of the run, one deep in a later piece.
    let (_store, v) = store_with_damage(&[3, 400]);
    let mut all = vec![0u8; BLOCKS * BS];
    assert!(is_corruption(v.read_at(&mut all, 0)), "a long read over both");
    assert!(is_corruption(v.read_at(&mut all[..300 * BS], 200 * BS as u64)), "a long read over the later one");
    let mut one = vec![0u8; BS];
    assert!(is_corruption(v.read_at(&mut one, 400 * BS as u64)), "the block alone");
    assert!(is_corruption(v.read_at(&mut one[..10], 3 * BS as u64 + 5)), "part of the block");
    assert!(is_corruption(v.read_at(&mut one, 3 * BS as u64 - 100)), "a read across its first byte");

    // Everything that avoids the two blocks reads back whole.
    let mut run = vec![0u8; 390 * BS];
    v.read_at(&mut run, 5 * BS as u64).unwrap();
    let want: Vec<u8> = (5..395).flat_map(block).collect();
    assert!(run == want, "blocks 5..395");
    let mut odd = vec![0u8; 3 * BS];
    v.read_at(&mut odd, 100 * BS as u64 + 17).unwrap();
    let want: Vec<u8> = (100..104).flat_map(block).collect();
    assert!(odd == want[17..17 + 3 * BS], "an unaligned read over four blocks");
}

#[test]
fn reads_of_every_shape_return_what_was_written() {
    let (_store, v) = store_with_damage(&[]);
    let want: Vec<u8> = (0..BLOCKS).flat_map(block).collect();
    for (offset, len) in [(0, BLOCKS * BS), (BS + 1, 200 * BS), (7, 10), (BS - 1, 2), (300 * BS, 33 * BS + 5)] {
        let mut got = vec![0u8; len];
        v.read_at(&mut got, offset as u64).unwrap();
        assert!(got == want[offset..offset + len], "read of {len} bytes at {offset}");
    }
}
