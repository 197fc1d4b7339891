//! A set of group numbers, one bit per group, that knows its size: which
//! groups changed since the last checkpoint, which were checked at their
//! first read, which are discovered.

/// Groups as bits in words of 64; grows as higher groups are added.
#[derive(Debug, Default, Clone)]
pub(crate) struct GroupSet {
    words: Vec<u64>,
    len: u64,
}

impl GroupSet {
    pub(crate) fn contains(&self, g: u64) -> bool {
        self.words.get((g / 64) as usize).is_some_and(|w| w & (1 << (g % 64)) != 0)
    }

    /// Adds `g`; returns whether it was not there.
    pub(crate) fn insert(&mut self, g: u64) -> bool {
        let (w, bit) = ((g / 64) as usize, 1u64 << (g % 64));
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let added = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += u64::from(added);
        added
    }

    /// Takes `g` out; returns whether it was there.
    pub(crate) fn remove(&mut self, g: u64) -> bool {
        let (w, bit) = ((g / 64) as usize, 1u64 << (g % 64));
        let Some(word) = self.words.get_mut(w).filter(|word| **word & bit != 0) else {
            return false;
        };
        *word &= !bit;
        self.len -= 1;
        true
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The groups in the set, lowest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let g = w as u64 * 64 + bits.trailing_zeros() as u64;
                    bits &= bits - 1;
                    g
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::GroupSet;

    #[test]
    fn inserts_and_removes_count_once_and_iterate_in_order() {
        let mut s = GroupSet::default();
        assert!(s.insert(130));
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(64));
        assert_eq!(s.len(), 3);
        assert!(s.contains(64) && !s.contains(65) && !s.contains(10_000));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 64, 130]);
        assert!(s.remove(64));
        assert!(!s.remove(64));
        assert!(!s.remove(9_999));
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 130]);
    }
}
