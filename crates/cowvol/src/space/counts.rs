//! Reference counts paged through the reference table: a group's counts
//! are in RAM only while something needs them, so RAM follows what is in
//! use rather than the size of the file.
//!
//! A group is in one of three places:
//! - *in RAM* (`slots[g]` holds its counts): read and changed there;
//! - *on the disk*: its page in the table (see [`super::table`]) holds
//!   them, as of the last checkpoint that wrote it;
//! - *never written*: every count is zero, and "loading" it costs no read.
//!
//! Changes to a group that is not in RAM are not a reason to read it: a
//! write that overwrites a block must not wait for a table page under the
//! state lock. They wait as *pending* changes, in order, and are applied
//! when the group is next loaded; the next checkpoint loads every group
//! with pending changes before it captures the table, so a data page whose
//! count reaches zero that way is quarantined before the capture, exactly
//! as if its count had been in RAM.
//!
//! Invariants enforced here:
//! - a group with changes not yet captured (dirty) or captured but not yet
//!   written by its checkpoint (`unwritten`) is never evicted: its page on
//!   the disk is not its current state;
//! - counts whose value decides what a tree does next (is this node shared,
//!   was that its last reference) are read through [`Space::refcount`],
//!   which loads the group; [`Space::dec_node`] is only called on a node
//!   whose count was just read that way, so it sees a group in RAM;
//! - a group is checked against what only RAM knows (the catalog's and the
//!   log's pages, the table's own pages) the first time it is loaded; every
//!   change since then went through this module.

use super::group_set::GroupSet;
use super::table::{META, NODE};
use super::Space;
use crate::error::Result;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// A change to a count whose group is not in RAM.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// One more reference.
    Inc,
    /// One reference fewer; at zero the page is quarantined, as
    /// [`Space::dec`] does with the count in RAM.
    Dec,
    /// The count set outright.
    Set(u32),
}

/// The counts of the groups in RAM, and what waits for the others.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    slots: Vec<Option<Box<[u32]>>>,
    /// Groups in RAM, in the order they were loaded (eviction order).
    fifo: VecDeque<u64>,
    loaded: usize,
    /// Groups kept in RAM at most, beyond those that cannot be evicted.
    budget: usize,
    pending: HashMap<u64, Vec<(u32, Pending)>>,
    /// Changes in `pending`, all groups together.
    pending_changes: usize,
    /// Groups checked at their first load.
    checked: GroupSet,
    /// Groups the last capture encoded whose pages are not yet written.
    unwritten: BTreeSet<u64>,
    /// Group pages read since the store was opened (tests and figures).
    pub(crate) reads: u64,
}

/// Groups kept in RAM at least, whatever the budget.
const MIN_GROUPS: usize = 2;

impl Counts {
    pub(super) fn new(ngroups: u64) -> Counts {
        Counts { slots: vec![None; ngroups as usize], budget: usize::MAX, ..Counts::default() }
    }

    pub(super) fn cover(&mut self, ngroups: u64) {
        if self.slots.len() < ngroups as usize {
            self.slots.resize(ngroups as usize, None);
        }
    }

    pub(super) fn is_checked(&self, g: u64) -> bool {
        self.checked.contains(g)
    }
}

impl Space {
    /// Keeps about `bytes` of counts in RAM (groups that cannot be evicted
    /// come on top).
    pub(crate) fn set_count_budget(&mut self, bytes: u64) {
        let per_group = self.block_size.max(1);
        self.counts.budget = usize::try_from(bytes / per_group).unwrap_or(usize::MAX).max(MIN_GROUPS);
    }

    /// Bytes the counts take in RAM: the groups loaded, the changes
    /// waiting, and a slot per group.
    pub(crate) fn count_bytes(&self) -> u64 {
        let pending: usize = self.counts.pending.values().map(|v| v.len() * 8 + 32).sum();
        (self.counts.loaded as u64 * self.block_size) + pending as u64 + self.counts.slots.len() as u64 * 16
    }

    /// Group pages read since open.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn group_reads(&self) -> u64 {
        self.counts.reads
    }

    /// Groups of counts in RAM now.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn groups_in_ram(&self) -> u64 {
        self.counts.loaded as u64
    }

    /// The count of `page` if its group is in RAM (pending changes are
    /// applied at load, so a group in RAM has none).
    pub(crate) fn loaded_count(&self, page: u64) -> Option<u32> {
        let (g, k) = self.group_and_slot(page);
        self.counts.slots.get(g as usize)?.as_ref().map(|c| c[k])
    }

    fn group_and_slot(&self, page: u64) -> (u64, usize) {
        let n = self.group_entries();
        (page / n, (page % n) as usize)
    }

    /// How many leaves (data page) or parents and roots (node page)
    /// reference `page`: loads its group when it is not in RAM.
    pub(crate) fn refcount(&mut self, page: u64) -> Result<u32> {
        if page >= self.npages {
            return Ok(0);
        }
        self.load_group(page / self.group_entries())?;
        Ok(self.loaded_count(page).unwrap_or(0))
    }

    /// A new leaf (or parent, for a node page) references `page`.
    pub(crate) fn inc(&mut self, page: u64) {
        self.mark_changed(page);
        let (g, k) = self.group_and_slot(page);
        match self.counts_in_ram(g) {
            Some(c) => c[k] += 1,
            None => self.add_pending(g, k, Pending::Inc),
        }
    }

    /// A leaf that referenced `page` is gone or changed; at zero the page is
    /// quarantined until the next checkpoint is durable (at the group's
    /// load, when it is not in RAM now).
    pub(crate) fn dec(&mut self, page: u64) {
        self.mark_changed(page);
        let (g, k) = self.group_and_slot(page);
        match self.counts_in_ram(g) {
            Some(c) => {
                debug_assert!(c[k] > 0, "refcount underflow on page {page}");
                c[k] = c[k].saturating_sub(1);
                if c[k] == 0 {
                    self.quarantine.push(page);
                }
            }
            None => self.add_pending(g, k, Pending::Dec),
        }
    }

    /// A reference to the tree node at `page` is gone. Returns whether it
    /// was the last: the page then becomes obsolete (still reserved, so not
    /// reused before the next checkpoint is durable). The caller read the
    /// count through [`Space::refcount`] just before, so the group is in RAM.
    pub(crate) fn dec_node(&mut self, page: u64) -> bool {
        self.mark_changed(page);
        let (g, k) = self.group_and_slot(page);
        let Some(c) = self.counts.slots.get_mut(g as usize).and_then(|s| s.as_mut()) else {
            debug_assert!(false, "node page {page} dropped with its group on the disk");
            self.add_pending(g, k, Pending::Dec);
            return false;
        };
        debug_assert!(c[k] > 0, "node refcount underflow on page {page}");
        c[k] = c[k].saturating_sub(1);
        if c[k] == 0 {
            self.obsolete.push(page);
            return true;
        }
        false
    }

    /// Sets the reference count directly (recovery, and nodes a checkpoint
    /// places).
    pub(crate) fn set_refcount(&mut self, page: u64, n: u32) {
        self.mark_changed(page);
        let (g, k) = self.group_and_slot(page);
        match self.counts_in_ram(g) {
            Some(c) => c[k] = n,
            None => self.add_pending(g, k, Pending::Set(n)),
        }
    }

    /// Group `g`'s counts when they are in RAM, or can be without a read
    /// (a group never written is all zero).
    fn counts_in_ram(&mut self, g: u64) -> Option<&mut Box<[u32]>> {
        let loaded = self.is_loaded(g);
        let blank = self.group_is_blank(g);
        if !loaded && blank && !self.counts.pending.contains_key(&g) {
            // No read happens, and nothing is evicted: the caller may be
            // between reading a node's count and dropping its reference
            // (see `dec_node`). A failed check of an all-zero group (a
            // table page in it) leaves the change pending, for the
            // checkpoint's load to report.
            self.bring_in(g, false).ok()?;
        }
        self.counts.slots.get_mut(g as usize).and_then(|s| s.as_mut())
    }

    /// Brings group `g` into RAM (a read of its page unless it was never
    /// written) and applies what waited for it, first evicting others to
    /// keep within the budget. Only `g` is sure to be in RAM afterwards.
    pub(crate) fn load_group(&mut self, g: u64) -> Result<()> {
        self.bring_in(g, true)
    }

    fn bring_in(&mut self, g: u64, evict: bool) -> Result<()> {
        if self.is_loaded(g) {
            return Ok(());
        }
        let mut counts = self.read_counts(g)?;
        let first = g * self.group_entries();
        let waiting = self.counts.pending.remove(&g).unwrap_or_default();
        self.counts.pending_changes -= waiting.len();
        let quarantined_before = self.quarantine.len();
        for (k, change) in waiting {
            let c = &mut counts[k as usize];
            match change {
                Pending::Dec => {
                    debug_assert!(*c > 0, "refcount underflow on page {}", first + k as u64);
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        self.quarantine.push(first + k as u64);
                    }
                }
                Pending::Inc => *c += 1,
                Pending::Set(n) => *c = n,
            }
        }
        let quarantined = self.quarantine[quarantined_before..].to_vec();
        self.note_loaded(g, &counts, &quarantined);
        if evict {
            self.evict_down_to(self.counts.budget.saturating_sub(1));
        }
        self.counts.cover(g + 1);
        self.counts.slots[g as usize] = Some(counts);
        self.counts.loaded += 1;
        self.counts.fifo.push_back(g);
        Ok(())
    }

    /// Loads every group with changes waiting (a checkpoint does this
    /// before it captures the table; `check` before it copies counts).
    pub(crate) fn settle_counts(&mut self) -> Result<()> {
        let waiting: Vec<u64> = self.counts.pending.keys().copied().collect();
        for g in waiting {
            self.load_group(g)?;
        }
        Ok(())
    }

    /// Whether some count changes wait for their group to load (a
    /// checkpoint would then free pages it cannot name yet).
    pub(crate) fn has_pending_counts(&self) -> bool {
        !self.counts.pending.is_empty()
    }

    /// Count changes waiting for their groups: like quarantined pages, a
    /// reason for a checkpoint when they pile up.
    pub(crate) fn pending_count_changes(&self) -> usize {
        self.counts.pending_changes
    }

    fn add_pending(&mut self, g: u64, slot: usize, change: Pending) {
        self.counts.pending.entry(g).or_default().push((slot as u32, change));
        self.counts.pending_changes += 1;
    }

    /// Groups a checkpoint is about to encode stay in RAM until their pages
    /// are written.
    pub(super) fn hold_unwritten(&mut self, groups: impl IntoIterator<Item = u64>) {
        self.counts.unwritten.extend(groups);
    }

    /// The checkpoint wrote the pages of the groups it captured: they may
    /// leave RAM now.
    pub(crate) fn table_written(&mut self) {
        self.counts.unwritten.clear();
        self.evict_down_to(self.counts.budget);
    }

    /// Drops groups, oldest loaded first, until at most `keep` are in RAM
    /// or none left can go.
    fn evict_down_to(&mut self, keep: usize) {
        let mut looked = 0;
        while self.counts.loaded > keep && looked < self.counts.fifo.len() {
            let Some(g) = self.counts.fifo.pop_front() else { break };
            if self.counts.slots.get(g as usize).is_none_or(|s| s.is_none()) {
                continue;
            }
            if self.is_group_dirty(g) || self.counts.unwritten.contains(&g) {
                self.counts.fifo.push_back(g);
                looked += 1;
                continue;
            }
            self.counts.slots[g as usize] = None;
            self.counts.loaded -= 1;
        }
    }

    /// Group `g`'s counts as its page holds them, checked at the group's
    /// first read.
    fn read_counts(&mut self, g: u64) -> Result<Box<[u32]>> {
        let mut counts = self.read_group(g)?;
        if !self.counts.is_checked(g) {
            self.check_group(g, &counts)?;
            self.name_group_page(g)?;
            self.counts.checked.insert(g);
        }
        strip_kinds(&mut counts);
        Ok(counts)
    }

    /// Whether group `g` has been read (and checked) since open.
    pub(super) fn is_group_checked(&self, g: u64) -> bool {
        self.counts.is_checked(g)
    }

    fn is_loaded(&self, g: u64) -> bool {
        self.counts.slots.get(g as usize).is_some_and(|s| s.is_some())
    }

    /// Group `g`'s entries as its page holds them (all zero when it was
    /// never written).
    fn read_group(&mut self, g: u64) -> Result<Box<[u32]>> {
        let n = self.group_entries() as usize;
        let Some(r) = self.group_ref(g)?.filter(|r| r.page != 0) else {
            return Ok(vec![0; n].into_boxed_slice());
        };
        let mut buf = vec![0u8; self.block_size as usize];
        self.read_table_page(r.page, r.crc, "group page", &mut buf)?;
        self.counts.reads += 1;
        Ok(buf.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("four bytes"))).collect())
    }

    /// Copies the counts of pages `pages` (into `out`) without keeping
    /// groups in RAM that were not there: `check` looks at every page once.
    /// Changes waiting for a group are applied first ([`Space::settle_counts`]).
    pub(crate) fn copy_group_counts(&mut self, pages: std::ops::Range<u64>, out: &mut Vec<u32>) -> Result<()> {
        self.settle_counts()?;
        out.clear();
        let n = self.group_entries();
        let mut p = pages.start;
        while p < pages.end {
            let g = p / n;
            let to = ((g + 1) * n).min(pages.end);
            let (from_k, to_k) = ((p - g * n) as usize, (to - g * n) as usize);
            match self.counts.slots.get(g as usize).and_then(|s| s.as_ref()) {
                Some(c) => out.extend_from_slice(&c[from_k..to_k]),
                None => out.extend_from_slice(&self.read_counts(g)?[from_k..to_k]),
            }
            p = to;
        }
        Ok(())
    }

    /// Whether group `g` may hold a page with no references, as far as the
    /// table tells without reading it: `Some(true)` every entry is zero,
    /// `Some(false)` none is, `None` it must be read to tell.
    /// Reads the index page above the group when RAM does not have it.
    pub(super) fn group_zeros_hint(&mut self, g: u64) -> Result<Option<bool>> {
        // Discovery asks this of every group: no hash of `g` when nothing waits.
        let waiting = !self.counts.pending.is_empty() && self.counts.pending.contains_key(&g);
        if self.is_loaded(g) || waiting {
            return Ok(None);
        }
        Ok(match self.group_ref(g)? {
            None => Some(true),
            Some(r) if r.page == 0 || r.zeros as u64 == self.group_entries() => Some(true),
            Some(r) if r.zeros == 0 => Some(false),
            Some(_) => None,
        })
    }

    /// The groups whose counts are in RAM, each once, in no set order.
    pub(super) fn loaded_groups(&self) -> Vec<u64> {
        let mut groups: Vec<u64> = self.counts.fifo.iter().copied().filter(|&g| self.is_loaded(g)).collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    /// A copy of group `g`'s counts, when they are in RAM.
    pub(super) fn loaded_counts(&self, g: u64) -> Option<Box<[u32]>> {
        self.counts.slots.get(g as usize)?.clone()
    }
}

/// Turns entries as the table stores them into counts: a node's count
/// without its flag, a table page's entry into zero.
fn strip_kinds(entries: &mut [u32]) {
    for e in entries.iter_mut() {
        *e = match *e {
            META => 0,
            v => v & !NODE,
        };
    }
}
