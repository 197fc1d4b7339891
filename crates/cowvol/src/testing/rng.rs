//! A small deterministic generator for tests, the simulated disk and the demo.

/// splitmix64: a tiny, fast pseudo-random generator, good enough to pick
/// crash outcomes and test data. A fixed algorithm keeps a failing seed
/// reproducible forever, on any platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    #[expect(
        clippy::should_implement_trait,
        reason = "a generator, not an iterator: it never ends and takes no adapters"
    )]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`; `p >= 1` is always, `p <= 0` or NaN never.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        unit < p
    }

    /// Uniform in `0..=n`.
    pub fn up_to(&mut self, n: u64) -> u64 {
        match n.checked_add(1) {
            Some(m) => self.next() % m,
            None => self.next(),
        }
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes()[..c.len()]);
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}
