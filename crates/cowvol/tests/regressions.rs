//! Minimal reproductions of engine bugs found by the reliability tests
//! (corruption_sweep, disk_full). Each test states the contract of
//! docs/reliability.md it checks and fails while the bug is present.

use cowvol::testing::{self, LossMode, SimDir};
use cowvol::*;
use std::sync::Arc;

const BS: usize = 4096;
const DATA_START: usize = 8192;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn block(w: u8) -> Vec<u8> {
    vec![w; BS]
}

fn u64_at(img: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(img[off..off + 8].try_into().unwrap())
}

/// File offsets of the pages starting with `magic`, from the page area on.
fn pages_with_magic(img: &[u8], magic: &[u8; 4]) -> Vec<usize> {
    (DATA_START..img.len().saturating_sub(BS - 1)).step_by(BS).filter(|&o| &img[o..o + 4] == magic).collect()
}

/// Reads block `lb` and returns its first byte, or the error.
fn first_byte(store: &Store, vol: VolumeId, lb: u64) -> Result<u8> {
    let h = store.open_volume_with(vol, OpenMode::ReadOnly)?;
    let mut b = vec![0u8; BS];
    h.read_at(&mut b, lb * BS as u64)?;
    Ok(b[0])
}

/// Found by corruption_sweep (`bit_flips_after_crash_with_wal_records`):
/// one flipped bit in a WAL batch that is *not* the last one makes recovery
/// stop the log there (`wal::read_log` treats the first batch that fails
/// its CRC as the end of the log) and open succeeds with every later
/// record silently dropped: writes acknowledged by a returned `flush()`
/// vanish, and in the sweep a deleted snapshot came back and a created
/// volume disappeared. The batches after the damaged one are intact, carry
/// the right log id and continue the LSN sequence, so the damage is
/// detectable; the contract (item 4) asks for `Error::Corruption` or a
/// state that keeps every acknowledged change.
#[test]
fn damaged_wal_batch_before_the_tail_is_reported_not_dropped() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", 8 * BS as u64)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    for lb in 0..3u8 {
        vol.write_at(&block(lb + 1), lb as u64 * BS as u64).unwrap();
        vol.flush().unwrap(); // acknowledged: one WAL batch per flush
    }
    drop(vol);
    let crashed = disk.crash(LossMode::DropAll, 0);
    testing::abandon(store);
    let img = crashed.read_durable("cowvol.dat").unwrap();
    // The live batches in LSN order: create-volume, then the three writes.
    let mut batches = pages_with_magic(&img, b"CVBT");
    batches.sort_by_key(|&o| u64_at(&img, o + 16));
    assert_eq!(batches.len(), 4);
    // Damage the payload of the batch holding the first write.
    crashed.corrupt("cowvol.dat", (batches[1] + 45) as u64, 0x01);
    match Store::open_in(Arc::new(crashed), opts()) {
        Err(Error::Corruption { .. }) => {}
        Err(e) => panic!("open failed with {e:?}"),
        Ok(store) => {
            let got: Vec<_> = (0..3).map(|lb| first_byte(&store, info.id, lb)).collect();
            for (lb, g) in got.iter().enumerate() {
                assert!(
                    matches!(g, Ok(x) if *x == lb as u8 + 1) || matches!(g, Err(Error::Corruption { .. })),
                    "acknowledged writes silently lost: blocks 0..3 read as {got:?}, want [1, 2, 3]"
                );
            }
        }
    }
}

/// Found by corruption_sweep (`bit_flips_in_a_wal_of_several_segments`):
/// a flipped bit in the header of a WAL segment other than the one the
/// checkpoint points to ends the log at the previous segment
/// (`wal::read_log` breaks out of its loop when the next segment's header
/// does not decode). Every acknowledged change logged in that segment and
/// after it is silently dropped: here, hundreds of flushed writes.
#[test]
fn damaged_wal_segment_header_is_reported_not_dropped() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", 4 * BS as u64)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    // One 4 KiB batch per flush: 400 flushes fill more than one 1 MiB segment.
    for i in 0..400u32 {
        vol.write_at(&block((i % 250) as u8 + 1), (i % 4) as u64 * BS as u64).unwrap();
        vol.flush().unwrap();
    }
    drop(vol);
    let crashed = disk.crash(LossMode::DropAll, 0);
    testing::abandon(store);
    let img = crashed.read_durable("cowvol.dat").unwrap();
    let mut segments = pages_with_magic(&img, b"CVSG");
    // By sequence number: the checkpoint's segment first.
    segments.sort_by_key(|&o| u64_at(&img, o + 16));
    assert!(segments.len() >= 2, "the log spans {} segments", segments.len());
    crashed.corrupt("cowvol.dat", (segments[1] + 12) as u64, 0x01);
    let want: Vec<u8> = (396..400u32).map(|i| (i % 250) as u8 + 1).collect();
    match Store::open_in(Arc::new(crashed), opts()) {
        Err(Error::Corruption { .. }) => {}
        Err(e) => panic!("open failed with {e:?}"),
        Ok(store) => {
            let got: Vec<u8> = (0..4).map(|lb| first_byte(&store, info.id, lb).unwrap()).collect();
            assert_eq!(got, want, "acknowledged writes of the damaged segment and after it were silently dropped");
        }
    }
}

/// Found by corruption_sweep (`both_superblocks_damaged_...`, and truncation
/// to less than one superblock): when neither superblock slot is valid, open
/// fails with `corruption in superblock at checksum field: checksum
/// mismatch ...`, which names neither the file nor the offset of the slot
/// (`Superblock::decode` uses the location "checksum field"; only the
/// caller knows the slot). Contract item 4: the error names the file/offset.
#[test]
fn superblock_corruption_error_names_file_and_offset() {
    let disk = SimDir::new();
    drop(Store::open_in(Arc::new(disk.clone()), opts()).unwrap());
    // The catalog CRC field of both slots.
    disk.corrupt("cowvol.dat", 20, 0x04);
    disk.corrupt("cowvol.dat", 4096 + 20, 0x04);
    match Store::open_in(Arc::new(disk), opts()) {
        Err(e @ Error::Corruption { .. }) => {
            let Error::Corruption { location, .. } = &e else { unreachable!() };
            assert!(
                location.contains("cowvol.dat") || location.chars().any(|c| c.is_ascii_digit()),
                "the error does not say where: {e}"
            );
        }
        other => panic!("expected Corruption, got {:?}", other.map(|_| ())),
    }
}

/// Found by disk_full (`full_disk_then_free_space_inside_the_store_and_write_again`):
/// at a full disk, freeing space inside the store cannot work. Deleted
/// snapshots, discarded and overwritten blocks wait in quarantine until the
/// next checkpoint, but the checkpoint first needs fresh pages for the dirty
/// tree nodes and the catalog (`write_dirty_nodes`, catalog allocation), so
/// it fails with `NoSpace`, and `Inner::checkpoint` then marks the store
/// failed: every later write is refused with `Error::Io` ("refuses writes
/// until reopened") although nothing was written and `Error::NoSpace`
/// promises "the store works again once space is freed".
#[test]
fn freeing_space_at_a_full_disk_lets_checkpoints_and_writes_continue() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", 1024 * BS as u64)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    for lb in 0..64u64 {
        vol.write_at(&block(1), lb * BS as u64).unwrap();
    }
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("pin")).unwrap();
    store.checkpoint().unwrap();
    // The file may not grow any more: fill what is free inside it.
    disk.set_capacity(Some(disk.used_bytes()));
    let mut lb = 64;
    loop {
        match vol.write_at(&block(2), lb * BS as u64) {
            Ok(()) => lb += 1,
            Err(Error::NoSpace { .. }) => break,
            Err(e) => panic!("write: {e:?}"),
        }
        assert!(lb < 1024, "the disk never filled");
    }
    vol.flush().unwrap();
    // Free space inside the store: the snapshot's blocks (shared with the
    // volume, so also discard the volume's copy) and half the volume.
    store.delete_snapshot(info.id, snap.id).unwrap();
    vol.discard(0, lb / 2 * BS as u64).unwrap();
    let ck = store.checkpoint();
    let write = vol.write_at(&block(3), 0);
    assert!(
        ck.is_ok() && write.is_ok(),
        "after freeing {} blocks: checkpoint gave {ck:?}, then a write gave {write:?}",
        lb / 2
    );
}
