//! A backend that stops the first read made by a thread of a given name
//! until the test releases it: a way to park `scrub` or `check` in the
//! middle of its reads and show what else goes on meanwhile.

use cowvol::backend::{DirLock, StorageDir, StorageFile};
use cowvol::testing::SimDir;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, Default)]
pub struct Stall {
    /// Only reads made by a thread of this name stop.
    thread: String,
    armed: AtomicBool,
    /// (stalled, released)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Stall {
    pub fn for_thread(name: &str) -> Stall {
        Stall { thread: name.to_owned(), ..Default::default() }
    }

    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn wait_until_stalled(&self) {
        let mut st = self.state.lock().unwrap();
        while !st.0 {
            st = self.cv.wait(st).unwrap();
        }
    }

    /// As `wait_until_stalled`, giving up after `limit`: returns whether
    /// a read stalled.
    pub fn wait_until_stalled_for(&self, limit: std::time::Duration) -> bool {
        let st = self.state.lock().unwrap();
        let (st, _) = self.cv.wait_timeout_while(st, limit, |st| !st.0).unwrap();
        st.0
    }

    /// Releases the parked read after a minute unless the returned flag is
    /// set first: should the work a test does beside the parked thread
    /// wait for it, the test then fails on `is_released` instead of
    /// hanging.
    pub fn watchdog<'scope>(self: &Arc<Self>, s: &'scope std::thread::Scope<'scope, '_>) -> Arc<AtomicBool> {
        let (stall, done) = (self.clone(), Arc::new(AtomicBool::new(false)));
        let watched = done.clone();
        s.spawn(move || {
            let t = std::time::Instant::now();
            while !watched.load(Ordering::Relaxed) && t.elapsed() < std::time::Duration::from_secs(60) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            stall.release();
        });
        done
    }

    /// Whether `release` has been called.
    pub fn is_released(&self) -> bool {
        self.state.lock().unwrap().1
    }

    pub fn release(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }

    fn maybe_stop(&self) {
        let chosen = std::thread::current().name() == Some(self.thread.as_str());
        if !chosen || !self.armed.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut st = self.state.lock().unwrap();
        st.0 = true;
        self.cv.notify_all();
        while !st.1 {
            st = self.cv.wait(st).unwrap();
        }
    }
}

#[derive(Debug)]
pub struct StallingDir {
    pub inner: SimDir,
    pub stall: Arc<Stall>,
}

#[derive(Debug)]
struct StallingFile {
    inner: Arc<dyn StorageFile>,
    stall: Arc<Stall>,
}

impl StorageDir for StallingDir {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let inner = self.inner.open_file(name, create)?;
        Ok(Arc::new(StallingFile { inner, stall: self.stall.clone() }))
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn lock(&self) -> io::Result<DirLock> {
        self.inner.lock()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

impl StorageFile for StallingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.stall.maybe_stop();
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.allocate(offset, len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)
    }
    fn try_lock(&self) -> io::Result<DirLock> {
        self.inner.try_lock()
    }
    fn drop_cache(&self) -> io::Result<()> {
        self.inner.drop_cache()
    }
}
