//! The free map, learned group by group instead of at open.
//!
//! Open reads no page of the reference table, so when it ends the free map
//! knows only what recovery brought into RAM. The rest of the file is
//! *undiscovered*: its groups' free pages are added the first time
//! something needs them:
//! - a group whose counts come into RAM is discovered right there, from
//!   the counts it loaded (see `Space::bring_in`);
//! - the allocator, when the free pages it knows do not cover a request,
//!   discovers further groups before it grows the file (a group the index
//!   says is all free or all used costs no read of its page). It starts at
//!   the segment the log set aside to go on in, where the last session
//!   found room, goes on to the file's end (where growth leaves free
//!   space) and then wraps to the start;
//! - `check`, `stats` and the background thread discover the rest in
//!   bounded steps; the background only until the free map holds what a
//!   sixteenth of the metadata budget pays for (`free_map_window`), so
//!   that a file copy-on-write scattered into millions of single free
//!   pages does not put all of them in RAM: the allocator goes on from
//!   there when the map runs short.
//!
//! Invariants enforced here:
//! - a page enters the free map only from a discovered group, and every
//!   group is discovered once: a group's free pages are added at its
//!   discovery, and from then on only by the paths that free a page
//!   (`release`, `free_run`, `punched`), never twice;
//! - a page of an undiscovered group has not changed since open, except
//!   through its group's counts (which discover it when they are loaded):
//!   no page of it can have been allocated, since allocation takes only
//!   from the free map. So "count zero and not reserved" is free, when it
//!   is read at the discovery, with the pages a load's waiting changes just
//!   quarantined left out (the checkpoint after them frees them);
//! - the file grows only once every group is discovered, so space at the
//!   end of the file is never added twice.

use super::group_set::GroupSet;
use super::{extent_holding, Run, Space};
use crate::error::Result;

/// Bytes of RAM a free extent takes in the free map (its share of a
/// B-tree node keyed by start; `heaptrack` measured about 20 on a map of
/// two million single pages).
pub(super) const FREE_EXTENT_BYTES: u64 = 24;
/// The fewest extents the background fills the free map with, whatever
/// the budget.
const MIN_FREE_MAP_WINDOW: u64 = 1024;

/// What the free map knows of the file's groups.
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    /// Off while open recovers: the counts it changes are not the free map's
    /// yet. [`Space::start_free_map`] turns it on.
    started: bool,
    /// Groups whose free pages are in the free map.
    groups: GroupSet,
    /// Where the allocator's discovery goes on: it moves past a group only
    /// once that group is discovered, and wraps from the file's end to 0.
    cursor: u64,
}

impl Space {
    /// Starts the free map after recovery: empty, then the groups recovery
    /// brought into RAM (from their counts as they stand), the rest left
    /// for later. The caller has reserved the pages recovery quarantined.
    ///
    /// Which free pages an earlier run punched is not recorded on disk.
    /// Punching is done in whole chunks, and a chunk is re-reserved whole
    /// before any page of it is used, so a chunk that is partly in use is
    /// allocated; a chunk that is wholly free when its group is discovered
    /// may be a hole. Those become holes, to be re-reserved before use and
    /// punched once more.
    pub(crate) fn start_free_map(&mut self, hint_page: u64) {
        self.free.clear();
        self.free_pages = 0;
        self.holes.clear();
        self.hole_pages = 0;
        self.punch_from = None;
        self.repunch_from = None;
        let cursor = self.group_of(hint_page.min(self.npages.saturating_sub(1)));
        self.discovery = Discovery { started: true, cursor, ..Discovery::default() };
        // The groups in RAM, not every group: open's cost must not follow
        // the file.
        let ngroups = self.groups_for(self.npages);
        for g in self.loaded_groups().into_iter().filter(|&g| g < ngroups) {
            if let Some(counts) = self.loaded_counts(g) {
                let runs = self.zero_runs(g, Some(&counts), &[]);
                self.add_discovered(g, runs);
            }
        }
        self.release_held_groups();
    }

    /// Whether group `g`'s free pages are in the free map.
    pub(super) fn is_discovered(&self, g: u64) -> bool {
        self.discovery.groups.contains(g)
    }

    /// Whether every group of the file is discovered (before the free map
    /// starts, the free map is whatever was put in it, and there is
    /// nothing to discover).
    pub(crate) fn fully_discovered(&self) -> bool {
        !self.discovery.started || self.discovery.groups.len() >= self.groups_for(self.npages)
    }

    /// Discovers up to `max_groups` more groups from the cursor on, and
    /// none once the free map holds `max_extents` extents (holes
    /// included). Returns whether every group is discovered.
    pub(crate) fn discover_some(&mut self, max_groups: u64, max_extents: u64) -> Result<bool> {
        let mut left = max_groups;
        while left > 0 && !self.fully_discovered() && self.free_extents() < max_extents {
            self.discover_next()?;
            left -= 1;
        }
        Ok(self.fully_discovered())
    }

    /// Discovers every group not discovered yet.
    pub(crate) fn discover_all(&mut self) -> Result<()> {
        while !self.fully_discovered() {
            self.discover_next()?;
        }
        Ok(())
    }

    /// Discovers groups while `more` says so and some are left.
    pub(super) fn discover_while(&mut self, more: impl Fn(&Space) -> bool) -> Result<()> {
        while more(self) && !self.fully_discovered() {
            self.discover_next()?;
        }
        Ok(())
    }

    /// Discovers groups until the free map (or its holes) has an extent
    /// of at least `n` pages, or none are left. Each group discovered is
    /// looked at for such an extent, not the whole map.
    pub(super) fn discover_run_of(&mut self, n: u64) -> Result<()> {
        if self.longest_known_run() >= n {
            return Ok(());
        }
        while !self.fully_discovered() {
            if self.discover_next()? >= n {
                break;
            }
        }
        Ok(())
    }

    /// Extents in the free map, holes included.
    pub(crate) fn free_extents(&self) -> u64 {
        (self.free.len() + self.holes.len()) as u64
    }

    /// How many extents the background may fill the free map with: what a
    /// sixteenth of the metadata budget pays for, at about
    /// [`FREE_EXTENT_BYTES`] each, and at least [`MIN_FREE_MAP_WINDOW`].
    pub(crate) fn free_map_window(&self) -> u64 {
        (self.metadata_budget / 16 / FREE_EXTENT_BYTES).max(MIN_FREE_MAP_WINDOW)
    }

    fn longest_known_run(&self) -> u64 {
        self.free.longest().max(self.holes.longest())
    }

    /// Discovers the groups holding pages `start..end`.
    pub(super) fn discover_range(&mut self, start: u64, end: u64) -> Result<()> {
        let last = self.groups_for(end.min(self.npages));
        for g in self.group_of(start)..last {
            self.discover_group(g)?;
        }
        Ok(())
    }

    /// Discovers the next group not discovered yet from the cursor on,
    /// wrapping at the file's end; the caller knows one is left. Returns
    /// the longest free extent the group's pages now lie in.
    fn discover_next(&mut self) -> Result<u64> {
        let ngroups = self.groups_for(self.npages);
        let mut g = self.discovery.cursor % ngroups.max(1);
        let mut looked = 0;
        while self.is_discovered(g) && looked < ngroups {
            g = (g + 1) % ngroups;
            looked += 1;
        }
        if looked == ngroups {
            debug_assert!(false, "{} groups discovered of {ngroups}, none left", self.discovery.groups.len());
            for g in 0..ngroups {
                self.discovery.groups.insert(g);
            }
            return Ok(0);
        }
        let longest = self.discover_group(g)?;
        self.discovery.cursor = g + 1;
        Ok(longest)
    }

    /// Adds group `g`'s free pages to the free map, unless they are there.
    /// Reads the index page above it when RAM does not have it, and the
    /// group's own page only when the index cannot tell (some pages free,
    /// some not) or changes wait for it.
    /// Returns the longest free extent the group's pages lie in after it.
    fn discover_group(&mut self, g: u64) -> Result<u64> {
        if self.is_discovered(g) || !self.discovery.started || g >= self.groups_for(self.npages) {
            return Ok(0);
        }
        if let Some(counts) = self.loaded_counts(g) {
            // In RAM since before the free map started (a group loaded
            // since is discovered by its load): from its counts, without
            // the pages waiting in quarantine.
            let n = self.group_entries();
            let waiting: Vec<u64> = self.quarantine.iter().copied().filter(|&p| p / n == g).collect();
            let runs = self.zero_runs(g, Some(&counts), &waiting);
            return Ok(self.add_discovered(g, runs));
        }
        match self.group_zeros_hint(g)? {
            // Loading discovers it (see `note_loaded`).
            None => {
                self.load_group(g)?;
                Ok(self.longest_extent_in_group(g))
            }
            Some(all_free) => {
                let runs = if all_free { self.zero_runs(g, None, &[]) } else { Vec::new() };
                Ok(self.add_discovered(g, runs))
            }
        }
    }

    /// Group `g`'s counts just came into RAM (after the changes that waited
    /// for it, which quarantined `quarantined`): discovers the group if it
    /// is not yet.
    pub(super) fn note_loaded(&mut self, g: u64, counts: &[u32], quarantined: &[u64]) {
        if self.discovery.started && !self.is_discovered(g) && g < self.groups_for(self.npages) {
            let runs = self.zero_runs(g, Some(counts), quarantined);
            self.add_discovered(g, runs);
        }
    }

    /// The runs of group `g`'s pages that are free: not page 0, inside the
    /// file, not reserved, with a zero count in `counts` (all of them zero
    /// when `None`), and not in `skip` (sorted or short).
    fn zero_runs(&self, g: u64, counts: Option<&[u32]>, skip: &[u64]) -> Vec<Run> {
        let n = self.group_entries();
        let (first, end) = ((g * n).max(1), ((g + 1) * n).min(self.npages));
        let mut runs: Vec<Run> = Vec::new();
        for p in first..end {
            let zero = counts.is_none_or(|c| c[(p - g * n) as usize] == 0);
            if !zero || self.is_reserved(p) || skip.contains(&p) {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.start + r.len == p => r.len += 1,
                _ => runs.push(Run { start: p, len: 1 }),
            }
        }
        runs
    }

    /// Marks group `g` discovered and adds its free runs: whole chunks as
    /// holes (an earlier run may have punched them), the rest as free.
    /// Returns the longest free extent they now lie in.
    fn add_discovered(&mut self, g: u64, runs: Vec<Run>) -> u64 {
        self.discovery.groups.insert(g);
        for &r in &runs {
            self.insert_free_found(r.start, r.len);
        }
        runs.iter().map(|r| self.extent_len_at(r.start)).max().unwrap_or(0)
    }

    /// The longest free extent (punched or not) holding a page of group `g`.
    fn longest_extent_in_group(&self, g: u64) -> u64 {
        let n = self.group_entries();
        let (first, end) = (g * n, (g + 1) * n);
        let overlapping = |map: &std::collections::BTreeMap<u64, u64>| {
            let from = map.range(..=first).next_back().map_or(first, |(&s, _)| s);
            map.range(from..end).filter(|(&s, &l)| s + l > first).map(|(_, &l)| l).max().unwrap_or(0)
        };
        overlapping(&self.free).max(overlapping(&self.holes))
    }

    /// The length of the free extent (or hole) holding `page`, 0 if none.
    fn extent_len_at(&self, page: u64) -> u64 {
        let len = |map| extent_holding(map, page).map_or(0, |(_, l)| l);
        len(&self.free).max(len(&self.holes))
    }

    /// The file grew from `old` pages: the new groups (and the rest of the
    /// last old one, discovered before the growth) hold only the new free
    /// space, which the caller adds.
    pub(super) fn discovered_growth(&mut self, old: u64) {
        debug_assert!(!self.discovery.started || self.fully_discovered_below(old));
        if !self.discovery.started {
            return;
        }
        for g in self.groups_for(old)..self.groups_for(self.npages) {
            self.discovery.groups.insert(g);
        }
    }

    fn fully_discovered_below(&self, npages: u64) -> bool {
        (0..self.groups_for(npages)).all(|g| self.is_discovered(g))
    }

    /// Whether a page freed now goes to the free map: only when its group
    /// is discovered (otherwise the group's discovery finds it).
    pub(super) fn frees_into_map(&self, page: u64) -> bool {
        !self.discovery.started || self.is_discovered(self.group_of(page))
    }
}
