//! Extents of pages, start page -> length, for the free map and the
//! punched holes, also ordered by length: the longest extent, and the
//! shortest of at least `n` pages, are found without a pass over the map.
//! A file fragmented by copy-on-write holds millions of single free pages,
//! and a checkpoint looks for a contiguous run for its catalog, the log for
//! each segment.
//!
//! Invariant enforced here: `by_len` holds `(length, start)` for exactly
//! the extents of `by_start`; every change goes through these methods (the
//! map is lent out read-only).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

#[derive(Debug, Default)]
pub(crate) struct Extents {
    by_start: BTreeMap<u64, u64>,
    by_len: BTreeSet<(u64, u64)>,
}

impl Extents {
    pub(crate) fn insert(&mut self, start: u64, len: u64) {
        if let Some(old) = self.by_start.insert(start, len) {
            self.by_len.remove(&(old, start));
        }
        self.by_len.insert((len, start));
    }

    pub(crate) fn remove(&mut self, start: &u64) -> Option<u64> {
        let len = self.by_start.remove(start)?;
        self.by_len.remove(&(len, *start));
        Some(len)
    }

    pub(crate) fn clear(&mut self) {
        self.by_start.clear();
        self.by_len.clear();
    }

    /// The length of the longest extent, 0 when there is none.
    pub(crate) fn longest(&self) -> u64 {
        self.by_len.last().map_or(0, |&(len, _)| len)
    }

    /// The shortest extent of at least `n` pages (the lowest of those that
    /// long), as `(start, length)`.
    pub(crate) fn best_fit(&self, n: u64) -> Option<(u64, u64)> {
        self.by_len.range((n, 0)..).next().map(|&(len, start)| (start, len))
    }

    /// Takes `[start, start + len)`, which lies inside one extent, out of
    /// it.
    pub(crate) fn carve(&mut self, start: u64, len: u64) {
        let Some((&s, &l)) = self.by_start.range(..=start).next_back() else {
            return;
        };
        debug_assert!(s <= start && start + len <= s + l);
        self.remove(&s);
        if start > s {
            self.insert(s, start - s);
        }
        if s + l > start + len {
            self.insert(start + len, s + l - start - len);
        }
    }
}

impl Deref for Extents {
    type Target = BTreeMap<u64, u64>;

    fn deref(&self) -> &BTreeMap<u64, u64> {
        &self.by_start
    }
}

#[cfg(test)]
mod tests {
    use super::Extents;

    #[test]
    fn the_length_order_follows_every_change() {
        let mut e = Extents::default();
        e.insert(10, 1);
        e.insert(20, 8);
        e.insert(40, 3);
        assert_eq!((e.longest(), e.best_fit(2), e.best_fit(9)), (8, Some((40, 3)), None));
        e.carve(22, 2);
        assert_eq!(e.iter().map(|(&s, &l)| (s, l)).collect::<Vec<_>>(), vec![(10, 1), (20, 2), (24, 4), (40, 3)]);
        assert_eq!((e.longest(), e.best_fit(4), e.best_fit(2)), (4, Some((24, 4)), Some((20, 2))));
        e.insert(24, 9);
        assert_eq!(e.remove(&40), Some(3));
        assert_eq!((e.longest(), e.best_fit(3)), (9, Some((24, 9))));
        e.clear();
        assert_eq!((e.longest(), e.best_fit(1), e.is_empty()), (0, None, true));
    }
}
