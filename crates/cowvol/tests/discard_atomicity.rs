//! A discard is one step: racing writes, restores and snapshots see all of
//! it or none of it, and never bring discarded bytes back.

use cowvol::testing::SimDir;
use cowvol::*;
use std::sync::{Arc, Barrier};

const BS: u64 = 4096;

fn store() -> Store {
    let opts = StoreOptions { background_checkpoints: false, ..Default::default() };
    Store::open_in(Arc::new(SimDir::new()), opts).unwrap()
}

fn read(v: &Volume, offset: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    v.read_at(&mut b, offset).unwrap();
    b
}

/// Runs `a` and `b` at the same moment on two threads.
fn race(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            start.wait();
            a();
        });
        start.wait();
        b();
    });
}

/// Found by review (issue 11, finding 3): the unmap of a discard took the
/// volume's gate but not the write stripes, so a one-byte write to the
/// same block could read the old block before the unmap and map it back
/// after: the discarded 0xAA bytes reappeared behind the new byte, about
/// once in a thousand races. For guests that TRIM to scrub data, a leak.
#[test]
fn a_small_write_racing_a_discard_never_brings_discarded_bytes_back() {
    let store = store();
    let info = store.create_volume(VolumeOptions::new("v", 4 * BS)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    let zeroes = vec![0u8; BS as usize];
    let mut written_then_discarded = 0;
    for round in 0..3000 {
        v.write_at(&vec![0xAA; BS as usize], BS).unwrap();
        race(|| v.discard(BS, BS).unwrap(), || v.write_at(&[0x55], BS).unwrap());
        let got = read(&v, BS, BS);
        let discard_last = got == zeroes;
        let write_last = got[0] == 0x55 && got[1..] == zeroes[1..];
        assert!(discard_last || write_last, "round {round}: discarded bytes came back: {:02x?}", &got[..8]);
        written_then_discarded += usize::from(discard_last);
    }
    // Both orders happen, or the race tested nothing.
    assert!(written_then_discarded > 0 && written_then_discarded < 3000, "{written_then_discarded}");
}

/// Found by review (issue 11, finding 4): a discard that is not block
/// aligned zeroed its partial edges with separate writes and unmapped the
/// middle in a third step, so a restore in between left the middle zero and
/// the edges restored: neither order of the two operations.
#[test]
fn a_discard_racing_a_restore_lands_wholly_before_or_after_it() {
    let store = store();
    let info = store.create_volume(VolumeOptions::new("v", 8 * BS)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    v.write_at(&vec![0xAA; 8 * BS as usize], 0).unwrap();
    let snap = store.create_snapshot(info.id, SnapshotOptions::named("aa")).unwrap();
    let (off, len) = (100, 4 * BS);
    let restored_then_discarded = {
        let mut b = vec![0xAA; 8 * BS as usize];
        b[off as usize..(off + len) as usize].fill(0);
        b
    };
    let discarded_then_restored = vec![0xAA; 8 * BS as usize];
    for round in 0..500 {
        v.write_at(&vec![0x11; 8 * BS as usize], 0).unwrap();
        race(
            || v.discard(off, len).unwrap(),
            || {
                store.restore_snapshot(info.id, snap.id, RestoreOptions::default()).unwrap();
            },
        );
        let got = read(&v, 0, 8 * BS);
        assert!(
            got == restored_then_discarded || got == discarded_then_restored,
            "round {round}: a mix of the two orders (bytes 0..8 {:02x?}, 100..108 {:02x?}, 8192..8200 {:02x?})",
            &got[..8],
            &got[100..108],
            &got[8192..8200]
        );
    }
}

/// A snapshot taken while a discard runs holds the volume before the
/// discard or after it, never half of it.
#[test]
fn a_snapshot_racing_a_discard_holds_all_of_it_or_none() {
    let store = store();
    let info = store.create_volume(VolumeOptions::new("v", 8 * BS)).unwrap();
    let v = store.open_volume(info.id).unwrap();
    let (off, len) = (100, 4 * BS);
    let before = vec![0x22; 8 * BS as usize];
    let mut after = before.clone();
    after[off as usize..(off + len) as usize].fill(0);
    for round in 0..300 {
        v.write_at(&before, 0).unwrap();
        let name = format!("s{round}");
        let mut taken = None;
        race(
            || v.discard(off, len).unwrap(),
            || taken = Some(store.create_snapshot(info.id, SnapshotOptions::named(name)).unwrap()),
        );
        let s = store.open_snapshot(info.id, taken.unwrap().id).unwrap();
        let got = read(&s, 0, 8 * BS);
        assert!(got == before || got == after, "round {round}: the snapshot holds part of the discard");
    }
}
