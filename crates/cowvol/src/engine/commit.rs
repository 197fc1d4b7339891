//! The one path every change takes: applied in memory and appended to the
//! log under the state lock, then made durable by a sync that concurrent
//! callers share (group commit). After a failed write or sync the engine is
//! poisoned and refuses every further change.

use super::record::Record;
use super::{Engine, State};
use crate::error::{Error, Result};
use crate::wal::Wal;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Pages held back from reuse past which a checkpoint is asked for, to
/// make them reusable: quarantined pages, and count decrements waiting for
/// their groups' loads (each may free a page).
const QUARANTINE_CHECKPOINT: u64 = 1 << 16;

/// Count changes waiting for their groups' loads past which a checkpoint
/// is asked for (about 6 MiB of them; see `apply_and_log_many`). Measured
/// on a 1 TiB volume overwritten after a snapshot: at 2^16 (with the pages
/// held back, as before) 4.3 bytes of metadata per byte of data; at 2^19,
/// 3.8; at the budget of changes kept (2^21), 3.2, but two and a half
/// times slower, with 300 MiB more resident, as each checkpoint loaded
/// tens of thousands of groups through a budget of eight thousand.
const UNSEEN_CHECKPOINT: u64 = 1 << 19;

/// Dirty nodes below which no checkpoint is asked for on their account.
const DIRTY_NODES_FLOOR: u64 = 4096;

/// Longest a group-commit leader waits for writes under way to append
/// their records before it syncs.
const GATHER_WAIT: Duration = Duration::from_micros(200);

impl Engine {
    pub(crate) fn ensure_writable(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Poisoned { during: "a change".into() });
        }
        Ok(())
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    #[cfg(any(test, feature = "testing"))]
    /// Makes the store drop like a crashed process (see `testing::abandon`).
    pub(crate) fn abandon(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub(super) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.wal.lock().poison();
    }

    /// The path every administrative change takes. It refuses at once when
    /// the store is poisoned; then, under the state lock, `build` checks
    /// what the change depends on and returns the caller's result with the
    /// record to log (`None` when there is nothing to change); the record is
    /// applied and appended there, and the call returns once it is durable.
    /// Checks and change under one lock hold: nothing can slip in between.
    pub(crate) fn commit<T>(&self, build: impl FnOnce(&mut State) -> Result<(T, Option<Record>)>) -> Result<T> {
        self.ensure_writable()?;
        self.reserve_log_room(0)?;
        let (out, lsn) = {
            let mut st = self.state.lock();
            let (out, rec) = build(&mut st)?;
            let lsn = rec.map(|rec| self.apply_and_log(&mut st, rec)).transpose()?;
            (out, lsn)
        };
        if let Some(lsn) = lsn {
            self.sync_to(lsn)?;
        }
        Ok(out)
    }

    /// [`Engine::commit`] for a change that adds to the catalog (a volume,
    /// a snapshot, a template). Like a data write it must leave the
    /// metadata reserve free, so that changes which free space (deletes,
    /// discards) always find room for their record and for the checkpoint
    /// that frees: without this, snapshots taken at a full disk used up the
    /// last WAL segments and catalog room, and then even deletes failed.
    /// When there is no room, a checkpoint runs first if it would free
    /// something.
    pub(crate) fn commit_growing<T>(&self, build: impl FnOnce(&mut State) -> Result<(T, Option<Record>)>) -> Result<T> {
        let room = || self.state.lock().space.make_room(1);
        match room() {
            Err(Error::NoSpace { .. }) if self.checkpoint_frees_space() => {
                self.checkpoint()?;
                room()?;
            }
            other => other?,
        }
        self.commit(|st| {
            let (out, rec) = build(st)?;
            if let Some(rec) = &rec {
                st.space.catalog_growth += rec.encoded_len() as u64;
            }
            Ok((out, rec))
        })
    }

    /// Applies a change in memory and appends its record to the WAL, keeping
    /// spare WAL segments topped up. Returns the LSN that must be durable
    /// for the change to be (pass it to [`Engine::sync_to`]).
    /// Dirty nodes stay in memory until a checkpoint writes them, outside
    /// the node cache's budget; a checkpoint is asked for once they would
    /// fill half of it (each counted at a page, what a full leaf takes),
    /// and not before a floor that keeps tiny caches from checkpointing
    /// after every write.
    fn dirty_node_limit(&self) -> u64 {
        (self.opts.node_cache_bytes / 2 / self.block_size as u64).max(DIRTY_NODES_FLOOR)
    }

    pub(crate) fn apply_and_log(&self, st: &mut State, rec: Record) -> Result<u64> {
        self.apply_and_log_many(st, std::slice::from_ref(&rec))
    }

    pub(crate) fn apply_and_log_many(&self, st: &mut State, recs: &[Record]) -> Result<u64> {
        // Measure first: nothing is applied unless every record can be logged.
        let mut incoming = 0;
        let mut wal = self.wal.lock();
        for rec in recs {
            let len = rec.encoded_len();
            if !wal.fits(len) {
                return Err(Error::invalid(
                    "the change is too large for one WAL record (a name, description or label is too long)",
                ));
            }
            incoming += len;
        }
        self.top_up_spares(st, &mut wal, incoming)?;
        for (i, rec) in recs.iter().enumerate() {
            let result = st.apply(rec).and_then(|()| wal.append(rec).map(drop));
            if let Err(e) = result {
                if i > 0 || st.torn || !matches!(e, Error::Corruption { .. }) {
                    // The in-memory state changed but the log did not follow:
                    // the store can no longer promise anything after this.
                    drop(wal);
                    self.fail();
                }
                return Err(e);
            }
        }
        let lsn = wal.next_lsn();
        // Count changes waiting for their groups' loads ask for a
        // checkpoint twice: decrements with the pages held back (each may
        // free one), and all of them past `UNSEEN_CHECKPOINT` (they take
        // RAM, and the checkpoint loads their groups). Increments free
        // nothing and come in floods: the first write to a leaf a snapshot
        // shares copies it and raises the counts of its 256 blocks.
        // Counted with the pages held back, they asked for a checkpoint
        // every 256 writes after a snapshot, each with a catalog and the
        // interior nodes above a few hundred leaves.
        let held_back = st.space.quarantine.len() as u64 + st.space.unseen_decrements();
        let want_checkpoint = wal.bytes_since_checkpoint > self.opts.checkpoint_wal_bytes
            || held_back > QUARANTINE_CHECKPOINT
            || st.space.unseen_changes() > UNSEEN_CHECKPOINT
            || st.space.dirty_nodes > self.dirty_node_limit();
        drop(wal);
        if want_checkpoint {
            self.maint.request_checkpoint();
        }
        Ok(lsn)
    }

    /// Makes sure the WAL has the spare segments a change of about
    /// `incoming` encoded bytes needs, before the caller takes the state
    /// lock to make it. A segment is a contiguous run: on a full or
    /// fragmented disk there may be none, although the segments the log has
    /// moved past since the last checkpoint are free as soon as a new one is
    /// durable. So when none is found and a checkpoint can free something,
    /// run it and look once more.
    pub(crate) fn reserve_log_room(&self, incoming: usize) -> Result<()> {
        let attempt = || {
            let mut st = self.state.lock();
            let mut wal = self.wal.lock();
            self.top_up_spares(&mut st, &mut wal, incoming)
        };
        match attempt() {
            Err(Error::NoSpace { .. }) if self.checkpoint_frees_space() => {
                self.checkpoint()?;
                attempt()
            }
            other => other,
        }
    }

    fn top_up_spares(&self, st: &mut State, wal: &mut Wal, incoming: usize) -> Result<()> {
        while wal.spares.len() < wal.spares_needed(incoming) {
            let page = st.new_log_segment(&self.log_geo, &*self.zero_file)?;
            wal.spares.push(page);
        }
        Ok(())
    }

    /// Whether a checkpoint would free pages: retired WAL segments,
    /// quarantined data pages, obsolete node pages, count changes waiting
    /// for their groups (which may quarantine pages when applied), or
    /// garbage whose release waits for the room a checkpoint makes, or
    /// dirty nodes whose pages the reserve holds.
    pub(super) fn checkpoint_frees_space(&self) -> bool {
        let st = self.state.lock();
        let wal = self.wal.lock();
        wal.has_retired_segments()
            || !st.space.quarantine.is_empty()
            || !st.space.obsolete.is_empty()
            || st.space.has_unseen_changes()
            || !st.garbage.is_empty()
            // The reserve keeps a page for each dirty node, and a node
            // copied from a page it took over is written as a record of a
            // few bytes (`tree::delta`): the checkpoint gives most of
            // those pages back.
            || st.space.dirty_nodes > 0
    }

    /// Writes a seal after the log's last batch (see [`Wal::write_seal`]);
    /// the caller has made every record durable. The seal is not synced:
    /// it vouches only for records that already are, and a seal lost to a
    /// power cut leaves the log as a crash does (unsealed, read from the
    /// disk and searched past its end), so its sync would buy nothing a
    /// close promises and cost a flush of the device's cache.
    pub(crate) fn seal_log(&self, after_checkpoint: bool) -> Result<()> {
        self.ensure_writable()?;
        self.wal.lock().write_seal(after_checkpoint).map(drop)
    }

    /// Waits until every record below `lsn` is durable. Concurrent callers
    /// share one sync: the first becomes the leader, writes the open batch
    /// and syncs; the others wait and are covered by it (group commit).
    pub(crate) fn sync_to(&self, lsn: u64) -> Result<()> {
        let mut c = self.commit.lock();
        loop {
            self.ensure_writable()?;
            if c.durable >= lsn {
                break;
            }
            if c.syncing {
                self.commit_cv.wait(&mut c);
                continue;
            }
            c.syncing = true;
            drop(c);
            self.gather_writes();
            let result = self.sync_once();
            c = self.commit.lock();
            c.syncing = false;
            self.commit_cv.notify_all();
            match result {
                Ok(end) => c.durable = c.durable.max(end),
                Err(e) => return Err(e),
            }
        }
        drop(c);
        self.run_inline_checkpoint_if_due()
    }

    /// Lets the data writes that are under way (their `pwrite` done or in
    /// progress, their record not yet appended) join the sync about to
    /// start: without this, concurrent writers that each flush alternate
    /// between syncs and two threads get no more syncs shared than one.
    /// Bounded by [`GATHER_WAIT`]; no lock is held while waiting.
    fn gather_writes(&self) {
        let started = self.writes_started.load(Ordering::Acquire);
        if self.writes_finished.load(Ordering::Acquire) >= started {
            return;
        }
        let deadline = std::time::Instant::now() + GATHER_WAIT;
        while self.writes_finished.load(Ordering::Acquire) < started && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
    }

    fn sync_once(&self) -> Result<u64> {
        let end = {
            let mut wal = self.wal.lock();
            if let Err(e) = wal.write_out() {
                drop(wal);
                self.fail();
                return Err(e);
            }
            wal.next_lsn()
        };
        if let Err(e) = self.sync_file() {
            self.fail();
            return Err(Error::io("syncing the data file", e));
        }
        self.wal.lock().mark_durable(end);
        Ok(end)
    }

    /// Flushes: every change made before the call is durable when it returns.
    pub(crate) fn flush(&self) -> Result<()> {
        let lsn = self.wal.lock().next_lsn();
        self.sync_to(lsn)
    }
}
