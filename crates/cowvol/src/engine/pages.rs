//! Pages for data writes: claims from the space map, with a checkpoint to
//! turn freed pages reusable when the disk is full, and zeroing ahead of
//! the allocator with no lock held.

use super::{Engine, Wrote};
use crate::error::{Error, Result};
use crate::format;
use crate::space::Run;

impl Engine {
    /// Claims pages for a data write of blocks `first..first + n`. On a
    /// full disk, a checkpoint can turn freed (quarantined) pages into free
    /// ones: run it and try once more.
    pub(crate) fn claim_pages(&self, first: u64, n: u64) -> Result<Vec<Run>> {
        let (claimed, zero) = {
            let mut st = self.state.lock();
            let runs = st.space.claim(first, n);
            (runs, st.space.take_unwritten(n))
        };
        self.zero_pages(zero);
        match claimed {
            Err(Error::NoSpace { .. }) if self.checkpoint_frees_space() => {
                self.checkpoint()?;
                self.state.lock().space.claim(first, n)
            }
            other => other,
        }
    }

    /// Fills free pages from `Space::take_unwritten` with zeroes, with no
    /// lock held, and frees them again. Best effort: a failed write leaves
    /// the pages as they were, and nothing reads them before they are
    /// claimed and written.
    fn zero_pages(&self, runs: Vec<Run>) {
        if runs.is_empty() {
            return;
        }
        let bs = self.block_size as u64;
        let data_start = format::data_start(self.block_size);
        let longest = runs.iter().map(|r| r.len).max().unwrap_or(0);
        let zeroes = vec![0u8; (longest * bs) as usize];
        for r in &runs {
            let _ = self.write_as(Wrote::Zeroes, &zeroes[..(r.len * bs) as usize], data_start + r.start * bs);
        }
        self.state.lock().space.unclaim(&runs);
    }
}
