//! Reference counts paged through the reference table: a group's counts
//! are in RAM only while something needs them, so RAM follows what is in
//! use rather than the size of the file.
//!
//! A group's counts are its page in the table (as of the last checkpoint
//! that *folded* the group, see [`super::table`]) with the group's *count
//! changes* applied in order. Every change to a count is kept as a change
//! ([`Op`]): in RAM for every group that has any, and on the disk in the
//! table's change log once a checkpoint has written it. A checkpoint writes
//! only the changes made since the last one, a dozen bytes each, instead of
//! a page per group they touch; a group's page is rewritten (folded) only
//! when the changes waiting in RAM pass their budget, the groups with most
//! changes first, so that a page write carries many changes.
//!
//! A group is in one of three places:
//! - *in RAM* (`slots[g]` holds its counts): read and changed there, and
//!   each change is also kept as a change;
//! - *on the disk*: its page, with its changes applied when it is loaded;
//! - *never written*: every count of its page is zero, and "loading" it
//!   costs no read.
//!
//! Invariants enforced here:
//! - the counts of a group are its page with its changes applied, in the
//!   order they were made; a change is dropped only when a checkpoint folds
//!   its group (writes the page with the change in it, and logs that the
//!   page holds every change before);
//! - every change made to a group not in RAM is applied the first time the
//!   group is loaded afterwards (*unseen* until then): a count it brings to
//!   zero is quarantined then, exactly as if the count had been in RAM. A
//!   change already seen is applied silently at later loads;
//! - a group captured by a checkpoint but not yet written by it
//!   (`unwritten`) is never evicted: its page on the disk is not its
//!   current state, and its changes are gone;
//! - while an open recovers, no group is evicted until the free map starts:
//!   a load then may quarantine pages (unseen changes bringing counts to
//!   zero), and the free map's start reserves the quarantine while it
//!   discovers the groups in RAM; a group evicted before would be
//!   discovered later, by a load that no longer knows those pages wait, and
//!   would put them in the free map twice;
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
use crate::error::{Error, Result};
use crate::format::DATA_FILE;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// A change to the table entry of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// One more reference (a page with none becomes data).
    Inc,
    /// One reference fewer; at zero the page is free.
    Dec,
    /// The entry set outright: a node placed, a page of the table taken or
    /// given back.
    Raw(u32),
}

impl Op {
    /// `entry` (as the table stores it) after this change, or `None` when
    /// the change cannot apply to it: a count below zero or past its
    /// width, or a count on a page of the table.
    pub(crate) fn apply(self, entry: u32) -> Option<u32> {
        let count = entry & !NODE;
        match self {
            Op::Raw(v) => Some(v),
            Op::Inc if entry == META || count >= NODE - 1 => None,
            Op::Inc => Some(entry + 1),
            Op::Dec if entry == META || count == 0 => None,
            Op::Dec if entry == NODE | 1 => Some(0),
            Op::Dec => Some(entry - 1),
        }
    }
}

/// The changes kept for one group since its page was last written.
#[derive(Debug, Default)]
struct GroupChanges {
    /// Slot in the group and change, in the order they were made.
    ops: Vec<(u32, Op)>,
    /// The first `durable` are in the change log on the disk.
    durable: usize,
    /// The first `reread` of those were read from chunks open found, and
    /// can be read from them again: they leave RAM with the group's counts
    /// while the log is read a group at a time.
    reread: usize,
    /// The first `seen` were applied to the group's counts in RAM at some
    /// load (or made while it was in RAM).
    seen: usize,
}

impl GroupChanges {
    /// Decrements among the changes no load has applied yet.
    fn unseen_decrements(&self) -> u64 {
        self.ops[self.seen..].iter().filter(|&&(_, op)| op == Op::Dec).count() as u64
    }
}

/// Bytes of RAM a kept change takes, and a group that has some.
const CHANGE_BYTES: u64 = 12;
const GROUP_CHANGES_BYTES: u64 = 64;

/// The counts of the groups in RAM, and the changes kept for every group.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    slots: Vec<Option<Box<[u32]>>>,
    /// Groups in RAM, in the order they were loaded (eviction order).
    fifo: VecDeque<u64>,
    loaded: usize,
    /// Groups kept in RAM at most, beyond those that cannot be evicted.
    budget: usize,
    changes: HashMap<u64, GroupChanges>,
    /// Changes kept, all groups together.
    live: u64,
    /// Changes not yet in the change log on the disk.
    fresh: u64,
    /// Changes made to groups not in RAM and not applied by a load since.
    unseen: u64,
    /// Of those, decrements: the ones that may free a page.
    unseen_decs: u64,
    /// Groups with unseen changes.
    unseen_groups: BTreeSet<u64>,
    /// Changes kept at most before checkpoints fold groups.
    pub(super) max_live: u64,
    /// Groups checked at their first load.
    checked: GroupSet,
    /// Groups the last capture encoded whose pages are not yet written.
    unwritten: BTreeSet<u64>,
    /// No eviction at all (an open recovering, until the free map starts).
    hold_all: bool,
    /// Group pages read since the store was opened (tests and figures).
    pub(crate) reads: u64,
}

/// Groups kept in RAM at least, whatever the budget.
const MIN_GROUPS: usize = 2;
/// Changes kept at least before checkpoints fold groups.
const MIN_LIVE_CHANGES: u64 = 4096;

impl Counts {
    pub(super) fn new(ngroups: u64) -> Counts {
        Counts { slots: vec![None; ngroups as usize], budget: usize::MAX, max_live: u64::MAX, ..Counts::default() }
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
    /// come on top), and about twice as much of changes. The changes get
    /// the larger share because the table's write cost falls with them: a
    /// group page folded carries about twice the changes kept per group, and
    /// on a fully written 1 TiB volume under random overwrites, doubling
    /// them (to 4 million) took the table from about 0.15 bytes per byte of
    /// data to about 0.09.
    pub(crate) fn set_count_budget(&mut self, bytes: u64) {
        let per_group = self.block_size.max(1);
        self.counts.budget = usize::try_from(bytes / per_group).unwrap_or(usize::MAX).max(MIN_GROUPS);
        self.counts.max_live = (2 * bytes / (CHANGE_BYTES + 4)).max(MIN_LIVE_CHANGES);
    }

    /// Bytes the counts take in RAM: the groups loaded, the changes kept,
    /// and a slot per group.
    pub(crate) fn count_bytes(&self) -> u64 {
        let changes = self.counts.live * CHANGE_BYTES + self.counts.changes.len() as u64 * GROUP_CHANGES_BYTES;
        (self.counts.loaded as u64 * self.block_size) + changes + self.counts.slots.len() as u64 * 16
    }

    /// Group pages read since open.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn group_reads(&self) -> u64 {
        self.counts.reads
    }

    /// Changes read from the log (and readable again) kept for groups whose
    /// counts are not in RAM.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn rereadable_changes_outside_ram(&self) -> u64 {
        let outside = self.counts.changes.iter().filter(|(&g, _)| !self.is_loaded(g));
        outside.map(|(_, c)| c.reread as u64).sum()
    }

    /// Groups of counts in RAM now.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn groups_in_ram(&self) -> u64 {
        self.counts.loaded as u64
    }

    /// The count of `page` if its group is in RAM (a group in RAM has
    /// every change applied).
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
        let (g, k) = self.group_and_slot(page);
        if let Some(c) = self.counts_in_ram(g) {
            c[k] += 1;
        }
        self.keep_change(page, Op::Inc);
    }

    /// A leaf that referenced `page` is gone or changed; at zero the page is
    /// quarantined until the next checkpoint is durable (at the group's
    /// next load, when it is not in RAM now).
    pub(crate) fn dec(&mut self, page: u64) {
        let (g, k) = self.group_and_slot(page);
        if let Some(c) = self.counts_in_ram(g) {
            debug_assert!(c[k] > 0, "refcount underflow on page {page}");
            c[k] = c[k].saturating_sub(1);
            if c[k] == 0 {
                self.quarantine.push(page);
            }
        }
        self.keep_change(page, Op::Dec);
    }

    /// A reference to the tree node at `page` is gone. Returns whether it
    /// was the last: the page then becomes obsolete (still reserved, so not
    /// reused before the next checkpoint is durable). The caller read the
    /// count through [`Space::refcount`] just before, so the group is in RAM.
    pub(crate) fn dec_node(&mut self, page: u64) -> bool {
        let (g, k) = self.group_and_slot(page);
        let Some(c) = self.counts.slots.get_mut(g as usize).and_then(|s| s.as_mut()) else {
            debug_assert!(false, "node page {page} dropped with its group on the disk");
            self.keep_change(page, Op::Dec);
            return false;
        };
        debug_assert!(c[k] > 0, "node refcount underflow on page {page}");
        c[k] = c[k].saturating_sub(1);
        let last = c[k] == 0;
        self.keep_change(page, Op::Dec);
        if last {
            self.obsolete.push(page);
        }
        last
    }

    /// A reference to the metadata page `page` (a tree node or a page of
    /// delta records) is gone, and the caller does not need to know whether
    /// it was the last: when the group is in RAM as [`Space::dec_node`];
    /// otherwise the change waits for the group's next load, which makes the
    /// page obsolete if it brings the count to zero. For the page of a
    /// record a node lets go, and the base page a dirty node held alone.
    pub(crate) fn dec_node_anywhere(&mut self, page: u64) {
        let (g, _) = self.group_and_slot(page);
        if self.counts.slots.get(g as usize).is_some_and(|s| s.is_some()) {
            self.dec_node(page);
        } else {
            self.keep_change(page, Op::Dec);
        }
    }

    /// Makes `page` a tree node referenced `n` times (a node a checkpoint
    /// places, or one open counted by walking the trees): reserved, with
    /// that count.
    pub(crate) fn set_node_refcount(&mut self, page: u64, n: u32) {
        let (g, k) = self.group_and_slot(page);
        if let Some(c) = self.counts_in_ram(g) {
            c[k] = n;
        }
        self.set_reserved(page, true);
        self.keep_change(page, Op::Raw(NODE | n));
    }

    /// Keeps the change of a page of the table itself: it becomes one
    /// (`META`) or stops being one (free). Its count is zero either way.
    pub(super) fn keep_table_page_change(&mut self, page: u64, is_table: bool) {
        self.keep_change(page, Op::Raw(if is_table { META } else { 0 }));
    }

    /// Keeps `op` among the changes of `page`'s group, applied or not.
    fn keep_change(&mut self, page: u64, op: Op) {
        self.mark_changed(page);
        let (g, k) = self.group_and_slot(page);
        let loaded = self.is_loaded(g);
        let c = self.counts.changes.entry(g).or_default();
        c.ops.push((k as u32, op));
        if loaded {
            c.seen = c.ops.len();
        } else {
            self.counts.unseen += 1;
            self.counts.unseen_decs += u64::from(op == Op::Dec);
            self.counts.unseen_groups.insert(g);
        }
        self.counts.live += 1;
        self.counts.fresh += 1;
    }

    /// Group `g`'s counts when they are in RAM, or can be without a read
    /// (a group never written is all zero, and its changes are in RAM once
    /// the change log is read).
    fn counts_in_ram(&mut self, g: u64) -> Option<&mut Box<[u32]>> {
        if !self.is_loaded(g) && self.group_is_blank(g) && self.group_log_read(g) {
            // No read happens, and nothing is evicted: the caller may be
            // between reading a node's count and dropping its reference
            // (see `dec_node`). A failed check of an all-zero group (a
            // table page in it) leaves the change unseen, for the
            // checkpoint's load to report.
            self.bring_in(g, false).ok()?;
        }
        self.counts.slots.get_mut(g as usize).and_then(|s| s.as_mut())
    }

    /// Brings group `g` into RAM (a read of its page unless it was never
    /// written) with its changes applied, first evicting others to keep
    /// within the budget. Only `g` is sure to be in RAM afterwards.
    pub(crate) fn load_group(&mut self, g: u64) -> Result<()> {
        self.bring_in(g, true)
    }

    fn bring_in(&mut self, g: u64, evict: bool) -> Result<()> {
        if self.is_loaded(g) {
            return Ok(());
        }
        let quarantined_before = self.quarantine.len();
        let counts = self.current_counts(g, true)?;
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

    /// Group `g`'s counts as they stand: its page (checked at the group's
    /// first read) with its changes applied. With `see`, a data page an
    /// unseen change brings to zero is quarantined and the changes count as
    /// seen; `check`, which looks without keeping, passes `false` after
    /// settling every group.
    pub(super) fn current_counts(&mut self, g: u64, see: bool) -> Result<Box<[u32]>> {
        // A load keeps the group's logged changes in RAM while the group
        // is; a look (`check`) reads them and lets them go.
        let logged = if see {
            self.read_group_log(g)?;
            Vec::new()
        } else {
            self.unread_changes_of(g)?
        };
        let mut entries = self.read_group(g)?;
        let first_read = !self.counts.is_checked(g);
        if first_read {
            self.check_group_hint(g, &entries)?;
        }
        let first = g * self.group_entries();
        for &(k, op) in &logged {
            apply_change(&mut entries, first, k, op)?;
        }
        let mut zeroed = Vec::new();
        if let Some(c) = self.counts.changes.get(&g) {
            for (i, &(k, op)) in c.ops.iter().enumerate() {
                let e = apply_change(&mut entries, first, k, op)?;
                if see && i >= c.seen && op == Op::Dec && e == 0 {
                    zeroed.push(first + k as u64);
                }
            }
        }
        if first_read {
            let own = self.own_changed_slots(g);
            self.check_group(g, &entries, &own)?;
            self.name_group_page(g)?;
            self.counts.checked.insert(g);
        }
        if see {
            self.mark_seen(g);
            // A data page waits in the quarantine; a metadata page (one a
            // node or a record no longer uses, see `dec_node_anywhere`)
            // stays reserved as obsolete. Both are free after the next
            // checkpoint.
            let (meta, data): (Vec<u64>, Vec<u64>) = zeroed.into_iter().partition(|&p| self.is_reserved(p));
            self.obsolete.extend(meta);
            self.quarantine.extend(data);
        }
        strip_kinds(&mut entries);
        Ok(entries)
    }

    /// The slots of group `g` this process changed (not those it read from
    /// the log), sorted: their entries are what this process made them,
    /// a node it placed on a page it reserved among them.
    fn own_changed_slots(&self, g: u64) -> Vec<u32> {
        let Some(c) = self.counts.changes.get(&g) else {
            return Vec::new();
        };
        let mut slots: Vec<u32> = c.ops[c.reread..].iter().map(|&(k, _)| k).collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    fn mark_seen(&mut self, g: u64) {
        if let Some(c) = self.counts.changes.get_mut(&g) {
            self.counts.unseen -= (c.ops.len() - c.seen) as u64;
            self.counts.unseen_decs -= c.unseen_decrements();
            c.seen = c.ops.len();
        }
        self.counts.unseen_groups.remove(&g);
    }

    /// Loads every group with unseen changes, so that every page they free
    /// is in the quarantine (a checkpoint does this before it captures the
    /// table; `check` before it copies counts).
    pub(crate) fn settle_counts(&mut self) -> Result<()> {
        let waiting: Vec<u64> = self.counts.unseen_groups.iter().copied().collect();
        for g in waiting {
            self.load_group(g)?;
        }
        Ok(())
    }

    /// How many groups have changes waiting for their load.
    pub(super) fn waiting_groups(&self) -> u64 {
        self.counts.unseen_groups.len() as u64
    }

    /// Whether some changes wait for their groups to load (they may free
    /// pages no one can name yet).
    pub(crate) fn has_unseen_changes(&self) -> bool {
        !self.counts.unseen_groups.is_empty()
    }

    /// Changes made to groups not in RAM and not applied since: like
    /// quarantined pages, a reason for a checkpoint when they pile up.
    pub(crate) fn unseen_changes(&self) -> u64 {
        self.counts.unseen
    }

    /// Unseen changes that lower a count: each may free a page, which
    /// stays out of use until a load applies it.
    pub(crate) fn unseen_decrements(&self) -> u64 {
        self.counts.unseen_decs
    }

    /// Changes kept in RAM, all groups together.
    pub(crate) fn live_changes(&self) -> u64 {
        self.counts.live
    }

    /// Changes not yet in the change log on the disk.
    pub(super) fn fresh_changes(&self) -> u64 {
        self.counts.fresh
    }

    /// Whether group `g` has changes kept.
    pub(super) fn has_changes(&self, g: u64) -> bool {
        self.counts.changes.get(&g).is_some_and(|c| !c.ops.is_empty())
    }

    /// The groups with changes kept and how many each has.
    pub(super) fn change_counts(&self) -> Vec<(u64, usize)> {
        self.counts.changes.iter().map(|(&g, c)| (g, c.ops.len())).collect()
    }

    /// Group `g`'s changes (`all` of them, or those not yet in the change
    /// log), as pages and changes, in the order they were made.
    pub(super) fn group_changes(&self, g: u64, all: bool) -> Vec<(u64, Op)> {
        let first = g * self.group_entries();
        self.counts.changes.get(&g).map_or_else(Vec::new, |c| {
            let from = if all { 0 } else { c.durable };
            c.ops[from..].iter().map(|&(k, op)| (first + k as u64, op)).collect()
        })
    }

    /// Adds changes the change log on the disk holds for group `g` (read
    /// after open, the whole log's or the group's alone) before the ones
    /// made since.
    pub(super) fn prepend_logged_changes(&mut self, g: u64, logged: Vec<(u32, Op)>) {
        debug_assert!(!self.is_loaded(g), "group {g} loaded before the change log was read");
        let n = logged.len();
        let c = self.counts.changes.entry(g).or_default();
        let mut ops = logged;
        ops.append(&mut c.ops);
        c.ops = ops;
        c.durable += n;
        c.seen += n;
        c.reread += n;
        self.counts.live += n as u64;
    }

    /// The whole change log is in RAM now: no change is read again.
    pub(super) fn keep_logged_changes(&mut self) {
        for c in self.counts.changes.values_mut() {
            c.reread = 0;
        }
    }

    /// Group `g` was folded: its page holds every change, which are dropped.
    pub(super) fn drop_changes(&mut self, g: u64) {
        if let Some(c) = self.counts.changes.remove(&g) {
            self.counts.live -= c.ops.len() as u64;
            self.counts.fresh -= (c.ops.len() - c.durable) as u64;
            self.counts.unseen -= (c.ops.len() - c.seen) as u64;
            self.counts.unseen_decs -= c.unseen_decrements();
        }
        self.counts.unseen_groups.remove(&g);
    }

    /// Every change kept is in the change log now.
    pub(super) fn changes_logged(&mut self) {
        for c in self.counts.changes.values_mut() {
            c.durable = c.ops.len();
        }
        self.counts.fresh = 0;
    }

    /// Groups a checkpoint is about to encode stay in RAM until their pages
    /// are written.
    pub(super) fn hold_unwritten(&mut self, groups: impl IntoIterator<Item = u64>) {
        self.counts.unwritten.extend(groups);
    }

    /// The checkpoint wrote the pages of the groups it captured (or gave
    /// up on them): they may leave RAM now.
    pub(crate) fn table_written(&mut self) {
        self.counts.unwritten.clear();
        self.evict_down_to(self.counts.budget);
    }

    /// Keeps every group loaded from now until the free map starts (an open
    /// recovering; see the module's invariants).
    pub(crate) fn hold_groups_until_free_map(&mut self) {
        self.counts.hold_all = true;
    }

    /// The free map started: groups may be evicted again.
    pub(super) fn release_held_groups(&mut self) {
        self.counts.hold_all = false;
        self.evict_down_to(self.counts.budget);
    }

    /// Drops groups, oldest loaded first, until at most `keep` are in RAM
    /// or none left can go.
    fn evict_down_to(&mut self, keep: usize) {
        if self.counts.hold_all {
            return;
        }
        let mut looked = 0;
        while self.counts.loaded > keep && looked < self.counts.fifo.len() {
            let Some(g) = self.counts.fifo.pop_front() else { break };
            if self.counts.slots.get(g as usize).is_none_or(|s| s.is_none()) {
                continue;
            }
            if self.counts.unwritten.contains(&g) {
                self.counts.fifo.push_back(g);
                looked += 1;
                continue;
            }
            self.counts.slots[g as usize] = None;
            self.counts.loaded -= 1;
            self.forget_rereadable_changes(g);
        }
    }

    /// Drops the changes of group `g` that the chunks found at open hold,
    /// while those are read a group at a time: its next load reads them
    /// again, so the changes in RAM follow the groups in RAM rather than
    /// every group ever loaded. A group folded since open has none (its
    /// fold is in a newer chunk, and those found at open must not be read
    /// for it again), nor has one whose changes were read with the whole
    /// log.
    fn forget_rereadable_changes(&mut self, g: u64) {
        let Some(c) = self.counts.changes.get_mut(&g).filter(|c| c.reread > 0) else {
            return;
        };
        let n = c.reread;
        debug_assert!(c.seen >= n && c.durable >= n, "changes read from the log are seen and durable");
        c.ops.drain(..n);
        c.durable -= n;
        c.seen -= n;
        c.reread = 0;
        let empty = c.ops.is_empty();
        self.counts.live -= n as u64;
        if empty {
            self.counts.changes.remove(&g);
        }
        self.table.groups_read.remove(g);
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
    pub(super) fn read_group(&mut self, g: u64) -> Result<Box<[u32]>> {
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
    /// Unseen changes are applied first ([`Space::settle_counts`]).
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
                None => out.extend_from_slice(&self.current_counts(g, false)?[from_k..to_k]),
            }
            p = to;
        }
        Ok(())
    }

    /// Whether group `g` may hold a page with no references, as far as the
    /// table tells without reading it: `Some(true)` every entry is zero,
    /// `Some(false)` none is, `None` it must be read to tell (its page
    /// says neither, or changes are kept for it).
    /// Reads the index page above the group when RAM does not have it, and
    /// the group's changes in the change log when they are not in RAM.
    pub(super) fn group_zeros_hint(&mut self, g: u64) -> Result<Option<bool>> {
        if self.is_loaded(g) || self.has_changes(g) || !self.unread_changes_of(g)?.is_empty() {
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

/// Applies change `op` to slot `k` of a group's `entries` (the group whose
/// first page is `first`), and returns the entry it leaves.
fn apply_change(entries: &mut [u32], first: u64, k: u32, op: Op) -> Result<u32> {
    let e = &mut entries[k as usize];
    *e = op.apply(*e).ok_or_else(|| {
        let page = first + k as u64;
        Error::corruption(
            "reference table",
            format!("{DATA_FILE} change log"),
            format!("{op:?} does not apply to page {page}, whose entry is {e:#x}"),
        )
    })?;
    Ok(*e)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_applies_to_the_entries_it_can_and_refuses_the_rest() {
        assert_eq!(Op::Inc.apply(0), Some(1));
        assert_eq!(Op::Inc.apply(NODE | 2), Some(NODE | 3));
        assert_eq!(Op::Inc.apply(META), None);
        assert_eq!(Op::Inc.apply(NODE - 1), None);
        assert_eq!(Op::Dec.apply(1), Some(0));
        assert_eq!(Op::Dec.apply(NODE | 1), Some(0));
        assert_eq!(Op::Dec.apply(NODE | 5), Some(NODE | 4));
        assert_eq!(Op::Dec.apply(0), None);
        assert_eq!(Op::Dec.apply(META), None);
        assert_eq!(Op::Raw(META).apply(0), Some(META));
    }
}
