//! Background work: the thread that checkpoints when asked, gives free
//! space back to the file system and runs snapshot policies, the handle
//! that stops it when the store closes, and the release of detached trees
//! in bounded steps.

use super::{Engine, State};
use crate::catalog::now_secs;
use crate::space::Space;
use crate::tree;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Nodes released per step when freeing a deleted tree; the state lock is
/// dropped between steps so I/O on other volumes keeps flowing.
const RELEASE_STEP: usize = 64;
/// Groups of the reference table discovered per step (see
/// `space/discover.rs`): at most one index page and a few group pages read
/// under the state lock, most steps none.
const DISCOVER_STEP: u64 = 64;

/// Wakes the background thread; shared by the store and that thread, so
/// the thread can wait without keeping the store alive.
#[derive(Debug, Default)]
pub(super) struct Maintenance {
    checkpoint_due: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
    /// Steps of garbage release run since open: tells whether a round of
    /// [`Engine::release_garbage`] got anywhere.
    release_steps: AtomicU64,
}

impl Maintenance {
    /// Asks for a checkpoint: the background thread runs it, or, without
    /// one, the next sync does inline.
    pub(super) fn request_checkpoint(&self) {
        *self.checkpoint_due.lock() = true;
        self.cv.notify_all();
    }

    /// Whether a checkpoint was asked for since the last call.
    pub(super) fn take_checkpoint_request(&self) -> bool {
        std::mem::take(&mut *self.checkpoint_due.lock())
    }
}

/// Held by every user-facing handle (`Store` clones and `Volume`s). When the
/// last one goes, the background thread is stopped and joined, so the store
/// closes on the dropping thread and its lock is free when the drop returns.
#[derive(Debug)]
pub(crate) struct Keeper {
    maint: Arc<Maintenance>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the background thread calls to run snapshot policies at `now`.
pub(crate) type PolicyRunner = fn(&Engine, u64);

impl Keeper {
    /// Starts the background thread when the engine's options ask for one,
    /// and returns the handle that stops it.
    pub(crate) fn start(engine: &Arc<Engine>, run_policies: PolicyRunner) -> Arc<Keeper> {
        let opts = &engine.opts;
        let thread = if opts.background_checkpoints || opts.policy_interval.is_some() {
            let policies = opts.policy_interval.map(|every| (every, run_policies));
            spawn_maintenance(Arc::downgrade(engine), engine.maint.clone(), policies)
        } else {
            None
        };
        Arc::new(Keeper { maint: engine.maint.clone(), thread: Mutex::new(thread) })
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        {
            // Under the lock the thread waits with: set between its check
            // and its wait, the flag and the wake-up would be missed, and
            // closing would wait out a whole tick.
            let _waiting = self.maint.checkpoint_due.lock();
            self.maint.stop.store(true, Ordering::Release);
        }
        self.maint.cv.notify_all();
        if let Some(t) = self.thread.lock().take() {
            // A panic on the thread has already been reported; close anyway.
            let _ = t.join();
        }
    }
}

impl Engine {
    /// Adds to the free map every group of the file open left undiscovered,
    /// a bounded step per hold of the state lock, until done or `stop`.
    pub(crate) fn discover_free_space(&self, stop: impl Fn() -> bool) -> crate::Result<()> {
        self.discover_in_steps(stop, |_| u64::MAX)
    }

    /// [`Engine::discover_free_space`] for the background thread: it also
    /// pauses while the free map holds as many extents as its share of the
    /// metadata budget pays for (see `Space::free_map_window`). On a file
    /// that copy-on-write scattered into millions of single free pages the
    /// whole map would cost tens of megabytes for space the allocator
    /// reaches group by group anyway (it discovers further groups when the
    /// map runs short), and single pages are never punched.
    fn discover_free_space_in_background(&self, stop: impl Fn() -> bool) -> crate::Result<()> {
        self.discover_in_steps(stop, Space::free_map_window)
    }

    /// Discovers groups a step per hold of the state lock until every group
    /// is, `stop` says so, or the free map holds `window` extents.
    fn discover_in_steps(&self, stop: impl Fn() -> bool, window: impl Fn(&Space) -> u64) -> crate::Result<()> {
        while !stop() {
            let mut st = self.state.lock();
            let max_extents = window(&st.space);
            let step = st.space.discover_some(DISCOVER_STEP, max_extents);
            // Discovery loads groups of counts and fills the free map, which
            // the node cache makes room for (errors included: what a step
            // loaded before failing stays).
            st.count_metadata_outside_the_cache();
            if step? || st.space.free_extents() >= max_extents {
                break;
            }
        }
        Ok(())
    }

    /// Releases garbage trees in bounded steps, dropping the state lock
    /// between steps, for as long as the next checkpoint has room for the
    /// counts the releases change (near a full disk, a node at a time).
    /// Returns whether the garbage is all released; what is left waits for
    /// a checkpoint to free what was released so far. A node that cannot
    /// be read stops the release and fails the store: its pages can no
    /// longer be accounted for.
    pub(crate) fn reclaim(&self) -> bool {
        loop {
            let mut st = self.state.lock();
            let State { garbage, space, nodes, .. } = &mut *st;
            if garbage.is_empty() {
                return true;
            }
            let step = if space.room_to_release(RELEASE_STEP as u64) {
                RELEASE_STEP
            } else if space.make_room_to_release_one() {
                1
            } else {
                return false;
            };
            self.maint.release_steps.fetch_add(1, Ordering::Relaxed);
            match tree::release_some(garbage, space, nodes, step) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(_) => {
                    drop(st);
                    self.fail();
                    return true;
                }
            }
        }
    }

    /// Releases every garbage tree, checkpointing whenever the room runs
    /// out: a delete at a full disk pays for the checkpoints its release
    /// needs, each of which frees what the release has dropped so far.
    /// Stops when a round (a release and the checkpoint after it, which
    /// releases again at its end) releases nothing: the rest waits for
    /// space freed otherwise. Errors poison the store; the next operation
    /// reports them.
    pub(crate) fn release_garbage(&self) {
        loop {
            let before = self.maint.release_steps.load(Ordering::Relaxed);
            if self.reclaim() || self.checkpoint().is_err() {
                return;
            }
            if self.maint.release_steps.load(Ordering::Relaxed) == before {
                return;
            }
        }
    }
}

/// The background thread: checkpoints when asked, punches free space in
/// bounded steps after a checkpoint (and on any tick that finds some
/// waiting), and runs snapshot policies every `policies` (when set) with
/// the wall clock.
fn spawn_maintenance(
    weak: Weak<Engine>,
    maint: Arc<Maintenance>,
    policies: Option<(Duration, PolicyRunner)>,
) -> Option<std::thread::JoinHandle<()>> {
    let tick = policies.map_or(Duration::from_millis(500), |(p, _)| p.min(Duration::from_millis(500)));
    let spawned = std::thread::Builder::new().name("cowvol-maint".into()).spawn(move || {
        let mut last_policy_run = std::time::Instant::now();
        loop {
            let due = {
                let mut m = maint.checkpoint_due.lock();
                if !*m && !maint.stop.load(Ordering::Acquire) {
                    maint.cv.wait_for(&mut m, tick);
                }
                std::mem::take(&mut *m)
            };
            if maint.stop.load(Ordering::Acquire) {
                return;
            }
            let policies_due = policies.filter(|(every, _)| last_policy_run.elapsed() >= *every);
            let Some(engine) = weak.upgrade() else { return };
            if due {
                // Errors poison the store; the next operation reports them.
                let _ = engine.checkpoint();
            }
            if let Some((_, run_policies)) = policies_due {
                last_policy_run = std::time::Instant::now();
                run_policies(&engine, now_secs());
            }
            let stop = || maint.stop.load(Ordering::Acquire);
            // Errors are left for the operation that needs the group, and
            // for `check`, to report.
            let _ = engine.discover_free_space_in_background(stop);
            engine.punch_in_background(stop);
        }
    });
    // Without the thread, checkpoints still happen inline at close; a
    // store that cannot spawn threads is only slower to reopen.
    spawned.ok()
}
