//! Target wrappers for tests (feature `testing`): one that counts what is
//! asked of a target, and one that fails every operation after the first
//! N, the way a crash would stop a backup between two requests.

use crate::error::{Error, Result};
use crate::target::Target;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counts the operations and bytes that pass through to `inner`.
pub struct Counting<T> {
    /// The wrapped target.
    pub inner: T,
    /// Keys put, in order.
    pub puts: Mutex<Vec<String>>,
    /// Bytes put.
    pub bytes_put: AtomicU64,
    /// Gets (whole and ranged).
    pub gets: AtomicU64,
    /// Keys deleted.
    pub deletes: Mutex<Vec<String>>,
}

impl<T: Target> Counting<T> {
    /// Wraps `inner` with every count at zero.
    pub fn new(inner: T) -> Counting<T> {
        Counting {
            inner,
            puts: Mutex::default(),
            bytes_put: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            deletes: Mutex::default(),
        }
    }

    /// Keys put in `folder` so far.
    pub fn puts_in(&self, folder: &str) -> usize {
        let prefix = format!("{folder}/");
        self.puts.lock().unwrap().iter().filter(|k| k.starts_with(&prefix)).count()
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        self.puts.lock().unwrap().clear();
        self.deletes.lock().unwrap().clear();
        self.bytes_put.store(0, Ordering::Relaxed);
        self.gets.store(0, Ordering::Relaxed);
    }
}

impl<T: Target> Target for Counting<T> {
    fn url(&self) -> &str {
        self.inner.url()
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.puts.lock().unwrap().push(key.to_string());
        self.bytes_put.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(key, offset, len)
    }
    fn list(&self, folder: &str) -> Result<Vec<String>> {
        self.inner.list(folder)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.deletes.lock().unwrap().push(key.to_string());
        self.inner.delete(key)
    }
    fn remove_leftovers(&self) -> Result<u64> {
        self.inner.remove_leftovers()
    }
}

/// Lets the first `budget` operations through to `inner`, then fails every
/// one, as if the process had died there. A write that fails did not
/// happen; with `apply_failing_write`, the write that crosses the budget
/// happens but is reported failed (the process died after the target
/// stored the object, before it heard back).
pub struct FailAfter<T> {
    /// The wrapped target.
    pub inner: T,
    left: AtomicU64,
    apply_failing_write: bool,
    /// Whether an operation has failed.
    pub tripped: AtomicBool,
    /// Only the first failing write may land: later ones come after the
    /// "crash".
    landed: AtomicBool,
}

impl<T: Target> FailAfter<T> {
    /// Lets `budget` operations through.
    pub fn new(inner: T, budget: u64, apply_failing_write: bool) -> FailAfter<T> {
        FailAfter {
            inner,
            left: AtomicU64::new(budget),
            apply_failing_write,
            tripped: false.into(),
            landed: false.into(),
        }
    }

    /// Takes one operation from the budget; false when it is spent.
    fn pass(&self) -> bool {
        let ok = self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if !ok {
            self.tripped.store(true, Ordering::SeqCst);
        }
        ok
    }

    fn crash(&self, op: &'static str, key: &str) -> Error {
        Error::Target {
            target: self.inner.url().to_string(),
            op,
            key: key.to_string(),
            detail: "injected crash".into(),
        }
    }
}

impl<T: Target> Target for FailAfter<T> {
    fn url(&self) -> &str {
        self.inner.url()
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        if self.pass() {
            return self.inner.put(key, bytes);
        }
        if self.apply_failing_write && !self.landed.swap(true, Ordering::SeqCst) {
            self.inner.put(key, bytes)?;
        }
        Err(self.crash("put", key))
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        if self.pass() {
            self.inner.get(key)
        } else {
            Err(self.crash("get", key))
        }
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if self.pass() {
            self.inner.get_range(key, offset, len)
        } else {
            Err(self.crash("get", key))
        }
    }
    fn list(&self, folder: &str) -> Result<Vec<String>> {
        if self.pass() {
            self.inner.list(folder)
        } else {
            Err(self.crash("list", folder))
        }
    }
    fn delete(&self, key: &str) -> Result<()> {
        if self.pass() {
            return self.inner.delete(key);
        }
        if self.apply_failing_write && !self.landed.swap(true, Ordering::SeqCst) {
            self.inner.delete(key)?;
        }
        Err(self.crash("delete", key))
    }
    fn remove_leftovers(&self) -> Result<u64> {
        if self.pass() {
            self.inner.remove_leftovers()
        } else {
            Err(self.crash("remove", "leftovers"))
        }
    }
}
