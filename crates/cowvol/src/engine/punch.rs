//! Giving free space back to the file system: whole free chunks of the data
//! file are punched out in bounded steps, with no lock held while the file
//! system works.
//!
//! Why this is safe: only pages in the free map (or already holes) are
//! punched, and a page reaches the free map only once nothing durable needs
//! it: after the checkpoint that freed it is durable, or when nothing ever
//! referenced it (see `Space::take_punchable`). A punched page reads as
//! zeroes, which is what a page no checkpoint and no WAL record points to
//! may hold. Before such a page is handed out again its space is reserved
//! once more (`Space::grow`), so a write into a page the allocator gave
//! out never fails for lack of space.

use super::Engine;
use crate::error::{Error, Result};

/// File space one punch step gives back, at most. A step takes the state
/// lock twice, briefly (to pick the runs and to record them as holes); the
/// punches themselves run with no lock held.
const PUNCH_STEP_BYTES: u64 = 64 << 20;

impl Engine {
    /// Whether free space waits to be given back.
    pub(crate) fn has_punch_work(&self) -> bool {
        self.state.lock().space.has_punch_work()
    }

    /// One bounded punch step; returns the bytes punched, which may be 0
    /// while work remains (a step that looked at its share of a fragmented
    /// free map and found no whole chunk): ask [`Engine::has_punch_work`].
    ///
    /// A failed punch is reported but does not poison the store: the runs
    /// become holes all the same (their space may be partly given back),
    /// and a hole is re-reserved before it is used.
    pub(crate) fn punch_step(&self) -> Result<u64> {
        self.ensure_writable()?;
        let bs = u64::from(self.block_size);
        let batch = self.state.lock().space.take_punchable(PUNCH_STEP_BYTES.div_ceil(bs));
        let mut punched = 0;
        let mut result = Ok(());
        for r in &batch.runs {
            let offset = crate::format::data_start(self.block_size) + r.start * bs;
            if let Err(e) = self.file.punch_hole(offset, r.len * bs) {
                result = Err(Error::io(format!("punching free pages {}..{}", r.start, r.start + r.len), e));
                break;
            }
            punched += r.len * bs;
        }
        self.state.lock().space.punched(batch);
        result.map(|()| punched)
    }

    /// Runs punch steps until nothing is left to give back; returns the
    /// bytes punched.
    pub(crate) fn punch_free_space(&self) -> Result<u64> {
        // Free space open has not looked at yet is free space too.
        self.discover_free_space(|| false)?;
        // Ends: every step moves the scan forward or finishes it, and the
        // work left is bounded by the free map.
        let mut total = 0;
        while self.has_punch_work() {
            total += self.punch_step()?;
        }
        Ok(total)
    }

    /// Background punching: steps until the work is done or the store
    /// closes. Errors end the round; the next one tries again.
    pub(super) fn punch_in_background(&self, stop: impl Fn() -> bool) {
        if !self.opts.punch_free_space {
            return;
        }
        while !stop() && self.has_punch_work() {
            if self.punch_step().is_err() {
                return;
            }
        }
    }

    /// Without a background thread, a sync runs one punch step when free
    /// space waits (bounded, like the inline checkpoint before it).
    pub(super) fn punch_inline_if_due(&self) {
        if self.opts.background_checkpoints || !self.opts.punch_free_space || !self.has_punch_work() {
            return;
        }
        // Best effort: a failed punch leaves holes that are re-reserved
        // before use, and the next step tries again.
        let _ = self.punch_step();
    }
}
