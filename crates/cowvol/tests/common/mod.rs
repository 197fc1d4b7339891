//! Helpers shared by the integration tests (each test file is its own
//! crate and uses what it needs, hence the allowances).
#![allow(dead_code, unused_imports)] // each test crate uses a different part; `expect` would fail in those that use it all

pub mod stall;

use cowvol::{Store, Volume};

const BLOCK: u64 = 4096;

/// Deterministic pseudo-random numbers: a failing seed replays exactly.
pub use cowvol::testing::SplitMix64 as Rng;

/// The 4 KiB contents of logical block `lb` as write number `w` leaves
/// it: both numbers in the first 16 bytes, a pattern of both after them
/// (never all zeroes), so a read can tell which write it sees.
pub fn block(w: u64, lb: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[..8].copy_from_slice(&w.to_le_bytes());
    b[8..16].copy_from_slice(&lb.to_le_bytes());
    for (i, x) in b[16..].iter_mut().enumerate() {
        *x = (w as u8).wrapping_mul(31).wrapping_add(i as u8).wrapping_add((lb as u8).wrapping_mul(7)) | 1;
    }
    b
}

/// Which write produced a block read at `lb` (0 for zeroes), or `None`
/// for anything no write produced: garbage, a torn block, a misplaced one.
pub fn decode(b: &[u8], lb: u64) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let w = u64::from_le_bytes(b[..8].try_into().unwrap());
    (block(w, lb) == b).then_some(w)
}

/// `check()` finds nothing wrong.
pub fn assert_clean(store: &Store) {
    let r = store.check().unwrap();
    assert!(r.is_clean(), "check found problems: {:#?}", r.problems);
}

/// The whole of a volume or snapshot.
pub fn read_all(v: &Volume) -> Vec<u8> {
    let mut b = vec![0u8; v.size() as usize];
    v.read_at(&mut b, 0).unwrap();
    b
}

/// Equal contents, or a panic naming the first differing byte and its
/// 4 KiB block (clearer than a dump of two large vectors).
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (block {}): got {:#04x}, want {:#04x}",
            i as u64 / BLOCK,
            got[i],
            want[i]
        );
    }
}
