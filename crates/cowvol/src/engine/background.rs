//! Work that must not compete with I/O for the CPU: `check` and `scrub`
//! run on a thread of their own at the lowest priority, so that on a busy
//! machine the writers they run beside are scheduled first.

use parking_lot::Mutex;

/// Runs `work` on a new thread at the lowest CPU priority (nice 19) and
/// returns its result; the caller waits. A panic in `work` is resumed on
/// the caller; when no thread can be started, `work` runs on the caller's
/// thread at its own priority. Nice 19 rather than an idle-only class: the
/// work holds the state lock for short slices, and must still get the CPU
/// to let go of it on a machine that is never idle.
pub(crate) fn at_low_priority<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let work = Mutex::new(Some(work));
    let take = || work.lock().take();
    // The worker does the caller's work: it takes the caller's name, so
    // that what names threads (logs, profilers, tests) sees the same one.
    let name = std::thread::current().name().unwrap_or("cowvol-check").to_string();
    let ran = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new().name(name).spawn_scoped(s, || {
            lower_this_thread();
            take().map(|w| w())
        });
        spawned.ok().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    match ran.flatten() {
        Some(out) => out,
        None => (take().expect("the work ran on neither thread"))(),
    }
}

#[expect(unsafe_code, reason = "setpriority(2) on one thread has no safe wrapper in std")]
fn lower_this_thread() {
    // SAFETY: gettid has no preconditions, and setpriority on this thread's
    // id changes only its own scheduling priority. Best effort: a failure
    // leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

#[cfg(test)]
mod tests {
    use super::at_low_priority;

    #[expect(unsafe_code, reason = "getpriority(2) to observe the effect")]
    fn this_thread_nice() -> i32 {
        // SAFETY: getpriority on this thread's id only reads its priority.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn runs_the_work_at_nice_19_and_leaves_the_caller_as_it_was() {
        let before = this_thread_nice();
        let (nice, value) = at_low_priority(|| (this_thread_nice(), 42));
        assert_eq!((nice, value), (19, 42));
        assert_eq!(this_thread_nice(), before);
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| at_low_priority(|| panic!("inside")));
        assert!(caught.is_err());
    }
}
