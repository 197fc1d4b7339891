//! The reference table: every page's reference count and kind, kept on the
//! disk so that opening a store reads it instead of walking every tree.
//!
//! The data file's pages fall into groups of `block_size / 4` pages. A
//! group's entries fill exactly one page, its *group page*, one
//! little-endian `u32` per page of the group:
//!
//! | entry                 | the page is                                   |
//! |-----------------------|-----------------------------------------------|
//! | `0`                   | free, or used only by the WAL or the catalog  |
//! | `1 ..= 2^31 - 1`      | data, held by that many leaves                |
//! | `2^31 + n`, `n >= 1`  | a tree node, referenced `n` times             |
//! | `0xFFFF_FFFF`         | a group page or an index page of this table   |
//!
//! A checkpoint writes, copy-on-write, the group pages whose entries
//! changed since the last one. *Index pages* say where each group page
//! lives: 16 bytes per group (page, CRC, zero entries), `block_size / 16`
//! groups per index page; page 0 stands for a group (or an index page) of
//! zeroes that was never written. The catalog lists the index pages with
//! their CRCs and the number of pages the table covers ([`TableRoot`]).
//!
//! Invariants enforced here:
//! - the table a checkpoint writes describes the store as that checkpoint
//!   captures it: pages freed but waiting for the checkpoint to be durable
//!   (quarantined data, obsolete nodes, replaced table pages) are written
//!   as free, because after that checkpoint they are;
//! - the table describes its own pages (`0xFFFF_FFFF`), so open needs no
//!   list of them to keep the allocator off them; a checkpoint gives every
//!   group page and index page that changes a new page, and the groups of
//!   those pages change too, until nothing more changes (a fixed point
//!   reached in a few rounds, since a group moves at most once per
//!   checkpoint);
//! - RAM learns the table's own pages as it reads the table, not at open:
//!   the index pages when open reads them, a group page when its group is
//!   first read (its *owner* names it) or when the group it lies in is
//!   first read (its entry *marks* it). Each group is read before any of
//!   its pages can be handed out (the free map takes pages only from
//!   groups read, or from groups whose index entry says every page is
//!   free, which a table page's group never is), so a page of the table
//!   is never allocated before RAM knows it. The two sides are checked
//!   against each other as soon as both are known; `check` reads every
//!   group, so it finds any page named and not marked, or marked and not
//!   named;
//! - the catalog and the WAL are not in the table (their entries are 0):
//!   open marks them from the superblock and the log chain, and a table
//!   entry for one of their pages is corruption.

use super::changes::{self, ChunkRef, Logged};
use super::counts::Op;
use super::group_set::GroupSet;
use super::{Run, Space};
use crate::error::{Error, Result};
use crate::format::{Crc, Dec, Enc, DATA_FILE};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Entry flag of a tree node page.
pub(crate) const NODE: u32 = 1 << 31;
/// Entry of a page of the table itself.
pub(crate) const META: u32 = u32::MAX;
/// Bytes per group in an index page: page (8), CRC (4), zero entries (4).
const INDEX_ENTRY: usize = 16;
/// Groups a checkpoint may fold beyond those that changed since the last.
const FOLD_SLACK: u64 = 8;
/// Entries the change log holds beyond twice the changes kept, at least,
/// before a checkpoint compacts it.
const MIN_COMPACTION_ENTRIES: u64 = 1024;
/// Past their budget, the changes kept are folded down to this many
/// eighths of it. Small steps keep them near the budget, so that each group
/// folded carries about as many changes as it can (the groups' counts of
/// changes spread evenly below the fold's, twice their mean), and no
/// checkpoint loads a large share of the groups at once: folding down to
/// half the budget wrote pages carrying about 10 changes on the dense row,
/// and the writer's peak rose by some 400 MiB once such folds began.
const FOLD_DOWN_TO_EIGHTHS: u64 = 7;
/// A checkpoint whose fresh changes are at least this share of the budget
/// of changes kept may read the whole change log to fold groups.
const BIG_CHECKPOINT_SHARE: u64 = 64;

/// Where one group page lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupRef {
    /// 0: never written, all entries zero.
    pub(crate) page: u64,
    pub(crate) crc: u32,
    /// Entries that are zero: a hint of where free space is.
    pub(crate) zeros: u32,
}

/// Where one index page lives, as the catalog records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IndexRef {
    /// 0: never written, every group in it never written.
    pub(crate) page: u64,
    pub(crate) crc: u32,
}

/// The table as the catalog records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TableRoot {
    /// Pages the table describes; pages past this are free.
    pub(crate) covered_pages: u64,
    pub(crate) index: Vec<IndexRef>,
    /// The change log's chunks, oldest first (version 8 on).
    pub(crate) changes: Vec<ChunkRef>,
}

impl TableRoot {
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u64(self.covered_pages);
        e.u32(self.index.len() as u32);
        for r in &self.index {
            e.u64(r.page);
            e.u32(r.crc);
        }
        e.u32(self.changes.len() as u32);
        for c in &self.changes {
            c.encode(e);
        }
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<TableRoot> {
        let covered_pages = d.u64()?;
        let n = d.u32()? as usize;
        if n > d.remaining() / 12 {
            return Err(d.bad(format!("{n} index pages do not fit")));
        }
        let mut index = Vec::with_capacity(n);
        for _ in 0..n {
            index.push(IndexRef { page: d.u64()?, crc: d.u32()? });
        }
        let mut changes = Vec::new();
        if d.version >= 8 {
            let n = d.u32()? as usize;
            if n > d.remaining() / ChunkRef::MIN_ENCODED {
                return Err(d.bad(format!("{n} change log chunks do not fit")));
            }
            for _ in 0..n {
                changes.push(ChunkRef::decode(d)?);
            }
        }
        Ok(TableRoot { covered_pages, index, changes })
    }
}

/// Which part of the table a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Group(u64),
    Index(u64),
    /// A page of the change log's chunk that starts at this page.
    Changes(u64),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Group(g) => write!(f, "group {g}"),
            Owner::Index(i) => write!(f, "index page {i}"),
            Owner::Changes(start) => write!(f, "the change log chunk at page {start}"),
        }
    }
}

/// What RAM knows of one page of the table so far (see the module's
/// invariants): who names it, and whether the entry of its own group,
/// once read, marks it as the table's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TablePage {
    owner: Option<Owner>,
    marked: bool,
}

/// The table's bookkeeping inside [`Space`].
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Where each group's current page lives, one slice per index page:
    /// `None` until that index page is read (open reads none of them; the
    /// first need of one of its groups does).
    groups: Vec<Option<Box<[GroupRef]>>>,
    /// Groups the table has: those past it are all free, never written.
    pub(super) ngroups: u64,
    index: Vec<IndexRef>,
    /// Index pages read since open (tests and figures).
    pub(crate) index_reads: u64,
    /// The pages of the table RAM knows: every index page, the page of
    /// every group read since open, and every page a group read since open
    /// marks as the table's. Every page of the table that lies in a group
    /// read since open is here.
    pages: BTreeMap<u64, TablePage>,
    /// Groups whose entries changed since the last capture.
    dirty: GroupSet,
    /// The change log's chunks as the last checkpoint listed them.
    pub(super) chunks: Vec<ChunkRef>,
    /// The chunks open found, until the log is read whole.
    pub(super) unread: Vec<ChunkRef>,
    /// Groups whose changes in `unread` were read on their own (and are
    /// kept in RAM like every change since).
    pub(super) groups_read: GroupSet,
    /// Pages of the change log read since open (tests and figures).
    pub(super) log_page_reads: std::sync::atomic::AtomicU64,
    /// The last pages of the change log read, decoded.
    pub(super) recent_log_pages: changes::RecentLogPages,
    /// Entries the chunks hold, all together.
    pub(super) logged_entries: u64,
}

/// What a checkpoint plan took for the table: new pages for the groups it
/// folds and the index pages above them, and a run for the change log's
/// new chunk, allocated up front, so that a full disk fails the plan
/// before anything changed.
#[derive(Debug, Default)]
pub(crate) struct TableMoves {
    groups: BTreeMap<u64, u64>,
    index: BTreeMap<u64, u64>,
    pool: Vec<Run>,
    used: u64,
    /// Pages the captured table describes: the file as it was once the
    /// pool was allocated (later growth is free space, implicitly).
    covered: u64,
    /// Pages set aside for the new chunk (none when empty), for as many
    /// entries as it may hold. The capture gives back the pages past those
    /// the chunk needs, so that the catalog (a run and a fence per page
    /// each) is at most the length it was planned with.
    chunk: Vec<Run>,
    /// Whether the new chunk holds every change kept, and the old chunks go.
    compact: bool,
}

impl TableMoves {
    /// Index pages the captured table has (the catalog's length depends
    /// on it).
    pub(crate) fn index_pages(&self, space: &Space) -> usize {
        space.groups_for(self.covered).div_ceil(space.index_fanout()) as usize
    }

    /// The chunks the captured table lists, at their longest in the
    /// catalog (the catalog's length depends on it): the new chunk with
    /// every page planned for it, of which the capture may give some back.
    pub(crate) fn chunk_shapes(&self, space: &Space) -> Vec<ChunkRef> {
        let mut chunks = if self.compact { Vec::new() } else { space.table.chunks.clone() };
        if !self.chunk.is_empty() {
            let pages: u64 = self.chunk.iter().map(|r| r.len).sum();
            let fences = vec![changes::Fence::default(); pages as usize];
            chunks.push(ChunkRef { runs: self.chunk.clone(), fences, ..ChunkRef::default() });
        }
        chunks
    }
}

/// The pages a checkpoint writes for the table, and the root it records.
#[derive(Debug, Default)]
pub(crate) struct TableWrite {
    pub(crate) pages: Vec<(u64, Vec<u8>)>,
    pub(crate) root: TableRoot,
}

impl Space {
    /// Entries per group page.
    pub(crate) fn group_entries(&self) -> u64 {
        self.block_size / 4
    }

    /// Groups per index page.
    fn index_fanout(&self) -> u64 {
        self.block_size / INDEX_ENTRY as u64
    }

    pub(super) fn group_of(&self, page: u64) -> u64 {
        page / self.group_entries()
    }

    /// Groups the table has for a file of `npages` pages.
    pub(super) fn groups_for(&self, npages: u64) -> u64 {
        npages.div_ceil(self.group_entries())
    }

    /// Records that the entry of `page` changed.
    pub(super) fn mark_changed(&mut self, page: u64) {
        self.mark_group_changed(self.group_of(page));
    }

    fn mark_group_changed(&mut self, g: u64) {
        self.table.dirty.insert(g);
    }

    /// Where group `g`'s page lives, if the table has the group: reads
    /// the index page above it the first time one of its groups is needed.
    pub(super) fn group_ref(&mut self, g: u64) -> Result<Option<GroupRef>> {
        if g >= self.table.ngroups {
            return Ok(None);
        }
        self.read_index_for(g)?;
        Ok(self.known_group_ref(g))
    }

    /// Where group `g`'s page lives as far as RAM knows without a read:
    /// `None` both for a group past the table and for one whose index page
    /// is not read yet (see [`Space::group_is_blank`]).
    fn known_group_ref(&self, g: u64) -> Option<GroupRef> {
        let fanout = self.index_fanout();
        let (i, k) = ((g / fanout) as usize, (g % fanout) as usize);
        match self.table.groups.get(i)? {
            Some(refs) => Some(refs[k]),
            None if self.table.index[i].page == 0 => Some(GroupRef::default()),
            None => None,
        }
    }

    /// Whether group `g` is known, without a read, never to have been
    /// written (all its entries zero): past the table, or named so by an
    /// index page already read.
    pub(super) fn group_is_blank(&self, g: u64) -> bool {
        g >= self.table.ngroups || self.known_group_ref(g).is_some_and(|r| r.page == 0)
    }

    /// Reads and checks the index page above group `g`, unless RAM has it.
    fn read_index_for(&mut self, g: u64) -> Result<()> {
        let i = g / self.index_fanout();
        if self.table.groups.get(i as usize).is_none_or(|s| s.is_some()) || self.table.index[i as usize].page == 0 {
            return Ok(());
        }
        let r = self.table.index[i as usize];
        let mut buf = vec![0u8; self.block_size as usize];
        self.read_table_page(r.page, r.crc, "index page", &mut buf)?;
        self.table.index_reads += 1;
        let location = || format!("{DATA_FILE} index page {}", r.page);
        let first = i * self.index_fanout();
        let mut refs = Vec::with_capacity(self.index_fanout() as usize);
        for (g, entry) in (first..).zip(buf.chunks_exact(INDEX_ENTRY)) {
            let r = decode_group_ref(entry);
            if r.zeros as u64 > self.group_entries() {
                let detail = format!("group {g} has {} zero entries of {}", r.zeros, self.group_entries());
                return Err(table_corruption(location(), detail));
            }
            if g >= self.table.ngroups && r.page != 0 {
                return Err(table_corruption(location(), "a group past the table's end"));
            }
            refs.push(r);
        }
        self.table.groups[i as usize] = Some(refs.into_boxed_slice());
        Ok(())
    }

    /// The slice of group references of index page `i`, which the caller
    /// has read (or which was never written), for a checkpoint to change.
    fn index_slice_mut(&mut self, i: u64) -> &mut [GroupRef] {
        let fanout = self.index_fanout() as usize;
        let never_written = self.table.index.get(i as usize).is_none_or(|r| r.page == 0);
        let slot = &mut self.table.groups[i as usize];
        debug_assert!(slot.is_some() || never_written, "index page {i} changed before it was read");
        slot.get_or_insert_with(|| vec![GroupRef::default(); fanout].into_boxed_slice())
    }

    /// Groups changed since the last checkpoint: pages the next one
    /// writes for them (before the fixed point adds its own few).
    pub(crate) fn dirty_groups(&self) -> u64 {
        self.table.dirty.len()
    }

    /// Pages the next checkpoint may need for the table: a page for each
    /// group it may fold (at most as many as changed, and a few), the
    /// index pages, and a chunk for the changes it logs: those made since
    /// the last one, the nodes it places and the pages of the table that
    /// move. Never more groups than the whole table.
    pub(super) fn table_reserve(&self) -> u64 {
        let ngroups = self.groups_for(self.npages) + 1;
        let folded = (self.table.dirty.len() + FOLD_SLACK).min(ngroups);
        let changes = self.fresh_changes() + self.dirty_nodes + 3 * folded + ngroups.div_ceil(self.index_fanout());
        folded + ngroups.div_ceil(self.index_fanout()) + self.chunk_pages_bound(changes)
    }

    /// The entry of `page` as the table records it now.
    /// The group is in RAM: a checkpoint loads every group it encodes.
    fn entry(&self, page: u64) -> u32 {
        debug_assert!(page >= self.npages || self.loaded_count(page).is_some(), "group of page {page} not loaded");
        let n = self.loaded_count(page).unwrap_or(0);
        if !self.is_reserved(page) {
            n
        } else if n > 0 {
            NODE | n
        } else if self.table.pages.contains_key(&page) {
            META
        } else {
            0
        }
    }

    /// Plans the table's part of a checkpoint: applies every unseen change
    /// (so that the pages it frees are quarantined and the checkpoint frees
    /// them), chooses the groups to fold and new pages for them and for
    /// the index pages above them, and sets aside a run for the chunk of
    /// the change log that keeps the rest, `extra_changes` (changes the
    /// caller makes before the capture) among them. Allocates all of it;
    /// on failure gives it back and changes nothing.
    pub(crate) fn plan_table_moves(&mut self, extra_changes: u64) -> Result<TableMoves> {
        self.read_log_whole_if_cheaper()?;
        self.settle_counts()?;
        if self.table.chunks.iter().any(|c| !c.is_sorted()) {
            // A log of version 8: read whole, and rewritten sorted by this
            // checkpoint's compaction (see `wants_compaction`).
            self.read_change_log()?;
        }
        let folds = self.choose_folds()?;
        let mut moves = TableMoves { compact: self.wants_compaction(&folds), ..TableMoves::default() };
        match self.take_table_pages(&mut moves, &folds, extra_changes) {
            Ok(()) => Ok(moves),
            Err(e) => {
                self.abandon_table_moves(moves);
                Err(e)
            }
        }
    }

    fn take_table_pages(&mut self, moves: &mut TableMoves, folds: &[u64], extra_changes: u64) -> Result<()> {
        for &g in folds {
            let page = self.take_from_pool(moves)?;
            moves.groups.insert(g, page);
            self.group_ref(g)?;
        }
        let fanout = self.index_fanout();
        let index: BTreeSet<u64> = moves.groups.keys().map(|g| g / fanout).collect();
        for i in index {
            let page = self.take_from_pool(moves)?;
            moves.index.insert(i, page);
        }
        let entries = self.chunk_entries_bound(moves, extra_changes);
        if entries > 0 {
            moves.chunk = self.alloc(self.chunk_pages_bound(entries))?;
        }
        // The file as the pool left it (later growth is free space). A table
        // read at open may cover more than the file holds (see
        // `load_table`); it never shrinks.
        moves.covered = self.npages.max(self.table.ngroups * self.group_entries());
        // The groups folded are encoded from RAM: loaded, and held there.
        self.hold_unwritten(moves.groups.keys().copied());
        for &g in moves.groups.keys() {
            self.load_group(g)?;
        }
        Ok(())
    }

    /// The most entries the new chunk can hold: a fold mark per group
    /// folded, the changes it keeps (all of them when compacting, those
    /// since the last checkpoint otherwise), the caller's, and a change per
    /// page of the table that moves.
    fn chunk_entries_bound(&self, moves: &TableMoves, extra_changes: u64) -> u64 {
        let kept = if moves.compact { self.live_changes() } else { self.fresh_changes() };
        let moved = 2 * (moves.groups.len() + moves.index.len()) as u64;
        let dropped: u64 = if moves.compact { self.table.chunks.iter().map(ChunkRef::page_count).sum() } else { 0 };
        moves.groups.len() as u64 + kept + extra_changes + moved + dropped
    }

    /// The groups this checkpoint folds: those whose changes would take
    /// more room in the log than a quarter of their page (a page written
    /// then carries many changes: a write in order folds every group it
    /// filled), and, while the changes kept are past their budget, those
    /// with the most changes until seven eighths of it are left. At most as
    /// many as changed since the last checkpoint (and a few), which the
    /// metadata reserve counts on; the most changes first.
    fn choose_folds(&mut self) -> Result<Vec<u64>> {
        let max_live = self.counts.max_live;
        // Reading the whole log is put off until a checkpoint carries
        // enough changes for folding to pay: a process that opens, takes a
        // snapshot and closes reads a page or two of it, not all of it.
        let unread_past_budget = !self.change_log_read()
            && self.table.logged_entries + self.fresh_changes() > max_live
            && self.fresh_changes() >= max_live / BIG_CHECKPOINT_SHARE;
        if unread_past_budget {
            self.read_change_log()?;
        }
        let mut by_changes = self.change_counts();
        by_changes.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let fold_at = changes::entries_per_page(self.block_size) / 4;
        let limit = self.table.dirty.len() + FOLD_SLACK;
        let past_budget = self.change_log_read() && self.live_changes() > max_live;
        let fold_down_to = max_live / 8 * FOLD_DOWN_TO_EIGHTHS;
        let mut live = self.live_changes();
        let mut folds = Vec::new();
        for (g, n) in by_changes {
            let dense = n as u64 >= fold_at;
            let over_budget = past_budget && live > fold_down_to;
            if folds.len() as u64 >= limit || !(dense || over_budget) {
                break;
            }
            folds.push(g);
            live -= n as u64;
        }
        Ok(folds)
    }

    /// Whether the next chunk should hold every change kept, so that the
    /// chunks before it go: when they hold more than twice as many entries
    /// as the changes still kept after `folds` (and some).
    fn wants_compaction(&self, folds: &[u64]) -> bool {
        if self.table.chunks.iter().any(|c| !c.is_sorted()) {
            return true;
        }
        if !self.change_log_read() || self.table.chunks.is_empty() {
            return false;
        }
        let folded: u64 = folds.iter().map(|g| self.group_changes(*g, true).len() as u64).sum();
        let kept = self.live_changes() - folded;
        self.table.logged_entries > 2 * kept + (self.counts.max_live / 4).max(MIN_COMPACTION_ENTRIES)
    }

    /// A page for the table from the plan's pool, allocating more when the
    /// pool is used up.
    fn take_from_pool(&mut self, moves: &mut TableMoves) -> Result<u64> {
        let mut skip = moves.used;
        for r in &moves.pool {
            if skip < r.len {
                moves.used += 1;
                return Ok(r.start + skip);
            }
            skip -= r.len;
        }
        let want = (self.dirty_groups() / 8).clamp(4, 1024);
        moves.pool.extend(self.alloc(want)?);
        self.take_from_pool(moves)
    }

    /// Gives back every page a plan took (the checkpoint failed before it
    /// changed anything).
    pub(crate) fn abandon_table_moves(&mut self, moves: TableMoves) {
        for r in moves.pool {
            self.free_run(r);
        }
        for &r in &moves.chunk {
            self.free_run(r);
        }
        self.table_written();
    }

    /// Makes the moves, and encodes every folded group and moved index
    /// page, and the new chunk of the change log, as the store stands now
    /// (under the same hold of the state lock as the rest of the
    /// checkpoint's capture). Returns the pages to write and the root for
    /// the catalog.
    pub(crate) fn capture_table(&mut self, moves: TableMoves) -> TableWrite {
        let ngroups = self.groups_for(moves.covered);
        let nindex = ngroups.div_ceil(self.index_fanout());
        self.table.index.resize(nindex as usize, IndexRef::default());
        self.table.groups.resize(nindex as usize, None);
        self.table.ngroups = ngroups;
        self.relocate_table_pages(&moves);
        if moves.compact {
            self.drop_change_log();
        }
        let mut pages = Vec::with_capacity(moves.groups.len() + moves.index.len());
        for (&g, &page) in &moves.groups {
            let (bytes, zeros) = self.encode_group(g);
            let fanout = self.index_fanout();
            self.index_slice_mut(g / fanout)[(g % fanout) as usize] = GroupRef { page, crc: Crc::of(&bytes).0, zeros };
            pages.push((page, bytes));
        }
        for (&i, &page) in &moves.index {
            let bytes = self.encode_index(i);
            self.table.index[i as usize] = IndexRef { page, crc: Crc::of(&bytes).0 };
            pages.push((page, bytes));
        }
        for &g in moves.groups.keys() {
            self.drop_changes(g);
        }
        if !moves.chunk.is_empty() {
            pages.extend(self.log_changes(&moves));
        }
        self.changes_logged();
        self.table.dirty = GroupSet::default();
        self.give_back_unused(&moves);
        let root = TableRoot {
            covered_pages: moves.covered,
            index: self.table.index.clone(),
            changes: self.table.chunks.clone(),
        };
        TableWrite { pages, root }
    }

    /// Gives every folded group and moved index page its new page: the old
    /// ones become obsolete, and both changes are kept for the groups they
    /// lie in.
    fn relocate_table_pages(&mut self, moves: &TableMoves) {
        // The plan read the index page above every group it folds.
        let old_page = |s: &Space, g: u64| s.known_group_ref(g).map_or(0, |r| r.page);
        let moved = moves.groups.iter().map(|(&g, &p)| (Owner::Group(g), p, old_page(self, g)));
        let moved_index = moves.index.iter().map(|(&i, &p)| (Owner::Index(i), p, self.table.index[i as usize].page));
        let relocations: Vec<(Owner, u64, u64)> = moved.chain(moved_index).collect();
        for (owner, new, old) in relocations {
            if old != 0 {
                self.give_back_table_page(old);
            }
            self.take_table_page(new, owner);
        }
    }

    /// Drops every chunk of the change log (the new chunk keeps every
    /// change they held that is still kept).
    fn drop_change_log(&mut self) {
        // Their pages may be reused: none of them may be taken from the
        // cache of decoded pages again.
        self.table.recent_log_pages.clear();
        for c in std::mem::take(&mut self.table.chunks) {
            for p in c.pages() {
                self.give_back_table_page(p);
            }
        }
        self.table.logged_entries = 0;
    }

    /// Checks that a sorted chunk's fences can be searched: one per page,
    /// ascending, and naming a group exactly for the pages that hold
    /// entries. A fence out of order would hide a group's changes from the
    /// search, and a count would be computed without them.
    fn check_fences(&self, c: &ChunkRef) -> Result<()> {
        let per = changes::entries_per_page(self.block_size);
        let holding = c.entries.div_ceil(per);
        let bad = |what: &str| Err(table_corruption(c.location(), what.to_string()));
        if c.fences.len() as u64 != c.page_count() || holding > c.page_count() {
            return bad("its entries, pages and fences disagree");
        }
        let named = |i: usize| c.fences[i].first_group != changes::NO_ENTRY;
        if (0..c.fences.len()).any(|i| named(i) != ((i as u64) < holding)) {
            return bad("a fence names no group for a page with entries, or one for a page without");
        }
        if c.fences.windows(2).any(|w| w[0].first_group > w[1].first_group) {
            return bad("its fences are out of order");
        }
        if c.fences.iter().any(|f| f.first_group != changes::NO_ENTRY && f.first_group >= self.table.ngroups) {
            return bad("a fence names a group outside the table");
        }
        Ok(())
    }

    /// `page` becomes a page of the table, held by `owner`. Its group need
    /// not be in RAM: the change kept for it marks it at the group's load,
    /// as its entry would.
    fn take_table_page(&mut self, page: u64, owner: Owner) {
        self.table.pages.insert(page, TablePage { owner: Some(owner), marked: true });
        self.set_reserved(page, true);
        self.keep_table_page_change(page, true);
    }

    /// `page` stops being the table's: obsolete until the checkpoint is
    /// durable.
    fn give_back_table_page(&mut self, page: u64) {
        self.table.pages.remove(&page);
        self.obsolete.push(page);
        self.keep_table_page_change(page, false);
    }

    /// Writes the new chunk: a fold mark for each group folded, and the
    /// changes kept (every one when compacting, else those since the last
    /// checkpoint), its own pages' among them, sorted by group with a fence
    /// per page. Returns its pages.
    fn log_changes(&mut self, moves: &TableMoves) -> Vec<(u64, Vec<u8>)> {
        let groups: Vec<u64> = if moves.compact {
            self.change_counts().into_iter().map(|(g, _)| g).collect()
        } else {
            self.table.dirty.iter().collect()
        };
        let mut entries: Vec<Logged> = moves.groups.keys().map(|&g| Logged::Fold(g)).collect();
        for &g in &groups {
            entries.extend(self.group_changes(g, moves.compact).into_iter().map(|(p, op)| Logged::Change(p, op)));
        }
        let chunk = ChunkRef { runs: self.trim_chunk(&moves.chunk, entries.len() as u64), ..ChunkRef::default() };
        let owner = Owner::Changes(chunk.runs[0].start);
        let pages: Vec<u64> = chunk.pages().collect();
        // Its own pages become the table's: the last change of each, as
        // they are taken after every other change kept for them.
        for &p in &pages {
            self.take_table_page(p, owner);
            entries.push(Logged::Change(p, Op::Raw(META)));
        }
        let per_page = changes::entries_per_page(self.block_size);
        assert!(entries.len() as u64 <= pages.len() as u64 * per_page, "the change log chunk outgrew its bound");
        let n = self.group_entries();
        changes::sort_entries(&mut entries, n);
        let bytes = changes::encode_chunk(&entries, pages.len() as u64, self.block_size);
        let fences = changes::fences_of(&entries, &bytes, self.block_size, n);
        let chunk = ChunkRef { entries: entries.len() as u64, fences, ..chunk };
        self.table.logged_entries += chunk.entries;
        self.table.chunks.push(chunk);
        let bs = self.block_size as usize;
        pages.into_iter().zip(bytes.chunks_exact(bs)).map(|(p, b)| (p, b.to_vec())).collect()
    }

    /// The runs of `planned` a chunk of `base` entries (and one for each of
    /// its pages) needs, at least one page: the pages past them freed. The
    /// plan sets aside pages for the most entries the chunk may hold, in
    /// as many runs as a fragmented free map gives; cutting only the last
    /// run kept the others' pages in the chunk, empty, and a fence for each
    /// in every catalog after it.
    fn trim_chunk(&mut self, planned: &[Run], base: u64) -> Vec<Run> {
        let mut need = changes::pages_for(base, self.block_size);
        let mut runs = Vec::new();
        for &r in planned {
            let keep = r.len.min(need);
            if keep > 0 {
                runs.push(Run { start: r.start, len: keep });
            }
            if keep < r.len {
                self.free_run(Run { start: r.start + keep, len: r.len - keep });
            }
            need -= keep;
        }
        runs
    }

    fn give_back_unused(&mut self, moves: &TableMoves) {
        let mut skip = moves.used;
        for r in &moves.pool {
            if skip >= r.len {
                skip -= r.len;
                continue;
            }
            self.free_run(Run { start: r.start + skip, len: r.len - skip });
            skip = 0;
        }
    }

    /// Group `g`'s page as it stands, and how many of its entries are zero.
    fn encode_group(&self, g: u64) -> (Vec<u8>, u32) {
        let n = self.group_entries();
        let mut e = Enc::with_capacity(self.block_size as usize);
        let mut zeros = 0;
        for page in g * n..(g + 1) * n {
            let v = self.entry(page);
            zeros += u32::from(v == 0);
            e.u32(v);
        }
        (e.buf, zeros)
    }

    /// Index page `i` as the group references stand.
    fn encode_index(&self, i: u64) -> Vec<u8> {
        let fanout = self.index_fanout();
        debug_assert!(
            self.table.groups.get(i as usize).is_some_and(|s| s.is_some()) || self.table.index[i as usize].page == 0,
            "index page {i} encoded before it was read"
        );
        let mut e = Enc::with_capacity(self.block_size as usize);
        for g in i * fanout..(i + 1) * fanout {
            let r = self.known_group_ref(g).unwrap_or_default();
            e.u64(r.page);
            e.u32(r.crc);
            e.u32(r.zeros);
        }
        e.buf
    }

    /// Takes where the table a checkpoint wrote lives, as the catalog
    /// records it, without reading any of it: an index page is read the
    /// first time one of its groups is needed, a group page the first time
    /// one of its counts is (see [`super::counts`]). Records the index
    /// pages as the table's own; a group page is recorded when its group,
    /// or the group it lies in, is first read (see the module's
    /// invariants), so open does no work per group and reads no page of
    /// the table. The caller has marked the catalog's and the log's pages
    /// reserved.
    pub(crate) fn load_table(&mut self, root: &TableRoot) -> Result<()> {
        // The table may cover more pages than the file holds: space added
        // at the end and never written need not survive a crash. Those
        // pages must be free in it (`check_group` checks).
        let ngroups = self.groups_for(root.covered_pages);
        if root.index.len() as u64 != ngroups.div_ceil(self.index_fanout()) {
            return Err(table_corruption(
                format!("{DATA_FILE} catalog"),
                format!("{} index pages for {ngroups} groups", root.index.len()),
            ));
        }
        self.table.index = root.index.clone();
        self.table.groups = vec![None; root.index.len()];
        self.table.ngroups = ngroups;
        self.counts.cover(ngroups);
        for (i, r) in root.index.iter().enumerate() {
            if r.page != 0 {
                self.name_table_page(r.page, Owner::Index(i as u64))?;
            }
        }
        for c in &root.changes {
            let outside = |r: &Run| r.len == 0 || r.start.checked_add(r.len).is_none_or(|end| end > self.npages);
            if c.runs.is_empty() || c.runs.iter().any(outside) {
                return Err(table_corruption(c.location(), "no pages, or pages outside the file"));
            }
            if c.is_sorted() {
                self.check_fences(c)?;
            }
            for p in c.pages() {
                self.name_table_page(p, Owner::Changes(c.runs[0].start))?;
            }
        }
        self.table.chunks = root.changes.clone();
        self.table.unread = root.changes.clone();
        self.table.groups_read = GroupSet::default();
        self.table.recent_log_pages.clear();
        self.table.logged_entries = root.changes.iter().map(|c| c.entries).sum();
        Ok(())
    }

    /// Records `page` as the table's own, held by `owner`, and reserved
    /// from now on. Fails when another part of the table holds it, when
    /// the group it lies in was read and does not mark it, or when it is
    /// the catalog's or the log's (reserved, and not known as the table's:
    /// before its group is read, nothing else reserves a page).
    fn name_table_page(&mut self, page: u64, owner: Owner) -> Result<()> {
        if page == 0 || page >= self.npages {
            return Err(table_corruption(format!("{DATA_FILE} page {page}"), "a table page outside the file"));
        }
        let known = self.table.pages.get(&page).copied();
        let clash = match known {
            Some(TablePage { owner: Some(other), .. }) if other != owner => {
                Some(format!("held by {other} and {owner}"))
            }
            Some(_) => None,
            None if self.is_group_checked(self.group_of(page)) => {
                Some(format!("of {owner}, not marked as the table's"))
            }
            None if self.is_reserved(page) => Some(format!("of {owner}, where the catalog or the log is")),
            None => None,
        };
        if let Some(detail) = clash {
            return Err(table_corruption(format!("{DATA_FILE} page {page}"), format!("a table page {detail}")));
        }
        let marked = known.is_some_and(|k| k.marked);
        self.table.pages.insert(page, TablePage { owner: Some(owner), marked });
        self.set_reserved(page, true);
        Ok(())
    }

    /// Records that the entry of `page`, in a group being read for the
    /// first time, marks it as the table's; it is reserved from now on.
    /// Fails when it is the catalog's or the log's.
    fn mark_table_page(&mut self, page: u64) -> Result<()> {
        let known = self.table.pages.get(&page).copied();
        if known.is_none() && self.is_reserved(page) {
            return Err(table_corruption(
                format!("entry of page {page}"),
                "marked as the table's, where the catalog or the log is",
            ));
        }
        let owner = known.and_then(|k| k.owner);
        self.table.pages.insert(page, TablePage { owner, marked: true });
        self.set_reserved(page, true);
        Ok(())
    }

    /// Records group `g`'s own page as the table's, at the group's first
    /// read (after its entries were checked: the page may lie in it).
    pub(super) fn name_group_page(&mut self, g: u64) -> Result<()> {
        match self.group_ref(g)?.map(|r| r.page).filter(|&p| p != 0) {
            Some(page) => self.name_table_page(page, Owner::Group(g)),
            None => Ok(()),
        }
    }

    /// Index pages read since open.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn index_reads(&self) -> u64 {
        self.table.index_reads
    }

    /// Pages of the table RAM knows so far (tests: open learns them as it
    /// reads the table, not all at once).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn table_pages_known(&self) -> u64 {
        self.table.pages.len() as u64
    }

    /// Fails when a page is marked as the table's and no part of the table
    /// names it. Meaningful once every group has been read (`check` reads
    /// them all): until then a mark may wait for its group to be read.
    pub(crate) fn verify_table_pages_named(&self) -> Result<()> {
        match self.table.pages.iter().find(|(_, k)| k.owner.is_none()) {
            Some((&page, _)) => Err(table_corruption(
                format!("entry of page {page}"),
                "marked as the table's, and no group or index page is there",
            )),
            None => Ok(()),
        }
    }

    pub(super) fn read_table_page(&self, page: u64, crc: u32, what: &str, buf: &mut [u8]) -> Result<()> {
        if page >= self.npages {
            return Err(table_corruption(format!("{DATA_FILE} {what} at page {page}"), "outside the file"));
        }
        self.file.read_at(buf, self.offset_of(page)).map_err(|e| Error::io("reading the reference table", e))?;
        Crc(crc).verify(buf, "reference table", || format!("{DATA_FILE} {what} at page {page}"))
    }

    /// Checks group `g`'s page against its index entry, whose count of
    /// zero entries the free map trusts for groups it does not read.
    pub(super) fn check_group_hint(&mut self, g: u64, page_entries: &[u32]) -> Result<()> {
        let zeros = page_entries.iter().filter(|&&v| v == 0).count() as u64;
        let hint = match self.group_ref(g)? {
            Some(r) if r.page != 0 => r.zeros as u64,
            _ => self.group_entries(),
        };
        if zeros != hint {
            return Err(table_corruption(
                format!("{DATA_FILE} group {g}"),
                format!("{zeros} zero entries where its index entry says {hint}"),
            ));
        }
        Ok(())
    }

    /// Checks group `g`'s entries, its page with its changes applied,
    /// against what only RAM knows, and marks its node pages and the
    /// table's pages in it reserved. Called at the group's first load:
    /// until then nothing changed its pages but the reserved bits of the
    /// catalog's, the log's and the table's pages RAM knows, and the
    /// changes this process made (`own`, sorted slots), which reserved
    /// what they placed (a node placed on a page of a group not yet loaded
    /// is reserved, and is not the catalog's or the log's).
    pub(super) fn check_group(&mut self, g: u64, entries: &[u32], own: &[u32]) -> Result<()> {
        let first = g * self.group_entries();
        // The table's pages RAM already knows in this group (a few at
        // most): looked up once for the group, not once per entry.
        let known = self.table.pages.range(first..first + entries.len() as u64);
        if let Some((&page, _)) = known.into_iter().find(|(&p, _)| entries[(p - first) as usize] != META) {
            return Err(table_corruption(format!("{DATA_FILE} page {page}"), "a page of the table not marked as one"));
        }
        for (k, &v) in entries.iter().enumerate() {
            let page = first + k as u64;
            if v == META {
                self.mark_table_page(page)?;
                continue;
            }
            if v == 0 {
                continue;
            }
            let placed_here = own.binary_search(&(k as u32)).is_ok() && v & NODE != 0;
            if page == 0 || page >= self.npages || (self.is_reserved(page) && !placed_here) {
                return Err(table_corruption(
                    format!("entry of page {page}"),
                    "in use, but the page is page 0, outside the file, or the catalog's or the log's",
                ));
            }
            match v {
                NODE => return Err(table_corruption(format!("entry of page {page}"), "a node without references")),
                v if v & NODE != 0 => self.set_reserved(page, true),
                _ => {}
            }
        }
        Ok(())
    }
}

/// One entry of an index page (`INDEX_ENTRY` bytes): page, CRC, zeros.
/// Open decodes every entry of every index page, so this is plain slicing
/// rather than the checked decoder: the length is fixed by the caller's
/// `chunks_exact`.
fn decode_group_ref(entry: &[u8]) -> GroupRef {
    let (page, rest) = entry.split_at(8);
    let (crc, zeros) = rest.split_at(4);
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("four bytes"));
    GroupRef { page: u64::from_le_bytes(page.try_into().expect("eight bytes")), crc: le32(crc), zeros: le32(zeros) }
}

fn table_corruption(location: impl Into<String>, detail: impl Into<String>) -> Error {
    Error::corruption("reference table", location, detail)
}
