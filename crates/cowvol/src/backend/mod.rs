//! Storage backends: the only way bytes reach or leave the disk.
//!
//! The engine talks to a [`StorageDir`] (a directory: open files, take the
//! directory lock, sync the directory) and to [`StorageFile`]s (positional
//! reads and writes, `fdatasync`, length, preallocation, hole punching, the
//! space allocated, the lock on the file itself, dropping cached pages).
//! [`FileDir`] is the real implementation over the operating system;
//! [`crate::testing::SimDir`] models a disk with a volatile write cache so
//! tests can cut the power at any operation and inject errors.

mod file;

pub use file::FileDir;

use std::any::Any;
use std::fmt::Debug;
use std::io;
use std::sync::Arc;

/// One file of the store, addressed by byte offset.
///
/// Implementations must be safe to call from many threads at once; writes to
/// disjoint ranges must not interfere.
pub trait StorageFile: Send + Sync + Debug {
    /// Fills `buf` from `offset`. Bytes past the end of the file read as zero.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the file if needed. The data
    /// is volatile until [`StorageFile::sync`] returns.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every earlier write and length change of this file durable
    /// (`fdatasync`). An error means nothing about earlier writes can be assumed.
    fn sync(&self) -> io::Result<()>;
    /// The current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space for `[offset, offset + len)` so later writes there
    /// cannot fail for lack of space (`fallocate`). Fails with `ENOSPC` when
    /// the file system is full.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Gives the space of `[offset, offset + len)` back to the file system;
    /// the range then reads as zeroes. Best effort: an unsupported punch is
    /// not an error.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Bytes the file system has allocated to the file (`st_blocks` × 512):
    /// less than the length where holes were punched, more where space was
    /// reserved past the end. The default, for backends that cannot tell,
    /// is the length.
    fn allocated_bytes(&self) -> io::Result<u64> {
        self.len()
    }
    /// Takes an exclusive lock on this file (the file, not its name: it
    /// follows the file through a rename, and a file later put under the
    /// same name is not covered). Fails with `ErrorKind::WouldBlock` while
    /// another handle holds it, whether in another process or opened
    /// separately in this one. Dropping the guard releases it.
    fn try_lock(&self) -> io::Result<DirLock>;
    /// Makes later reads return what is on the disk, not cached copies:
    /// syncs the file, then drops its cached pages.
    ///
    /// Needed after a failed sync. Linux marks pages whose write-back failed
    /// clean and keeps them cached, so reads keep returning bytes the disk
    /// never received until the kernel happens to evict them; recovery must
    /// not trust them. An error from the sync is returned (the pages are
    /// then clean and the cache is still dropped, so a second call reads the
    /// disk).
    fn drop_cache(&self) -> io::Result<()>;
    /// Drops the cached pages of `[offset, offset + len)` only, without a
    /// sync: the caller syncs first (dirty pages are not dropped). Recovery
    /// drops just the ranges a failed write-back can have left wrong in the
    /// cache and that it will trust (see `engine::open`), so that its cost
    /// does not follow the size of the file. Dropping more is allowed; the
    /// default drops everything.
    fn drop_cache_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        self.drop_cache()
    }
}

/// A held exclusive lock on a store directory or file; dropping it releases the lock.
pub type DirLock = Box<dyn Any + Send + Sync>;

/// The directory a store lives in.
pub trait StorageDir: Send + Sync + Debug {
    /// Opens the named file, creating it when `create` is set. Opening a
    /// missing file without `create` fails with `ErrorKind::NotFound`.
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Makes the directory's entries (created, renamed, removed files) durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Renames `from` to `to`, atomically replacing `to` if it exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes the named file; a missing file is not an error.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Takes the exclusive lock on the directory (the `LOCK` file of
    /// [`FileDir`]). Fails with `ErrorKind::WouldBlock` when another opener
    /// holds it. This lock is a name that can be deleted or replaced under
    /// its holder, so the engine also locks its data file with
    /// [`StorageFile::try_lock`], which is what keeps a second writer out; this one
    /// keeps out versions of cowvol that lock only the directory.
    fn lock(&self) -> io::Result<DirLock>;
    /// A human-readable location, used in error messages.
    fn describe(&self) -> String;
}
