//! Helpers shared by the integration tests (each test file is its own
//! crate and uses what it needs, hence the allowances).
#![allow(dead_code, unused_imports)]

use cowvol::{Store, Volume};

const BLOCK: u64 = 4096;

/// Deterministic pseudo-random numbers: a failing seed replays exactly.
pub use cowvol::testing::SplitMix64 as Rng;

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
