//! Helpers shared by the integration tests (each test file is its own
//! crate and uses what it needs, hence the `dead_code` allowance).
#![allow(dead_code)]

use cowvol::{Store, Volume};

const BLOCK: u64 = 4096;

/// Deterministic pseudo-random numbers (SplitMix64): a failing seed
/// replays exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
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
