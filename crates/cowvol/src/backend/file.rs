//! The real backend: files in a directory of the host file system.

use super::{DirLock, StorageDir, StorageFile};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A store directory on the host file system.
#[derive(Debug, Clone)]
pub struct FileDir {
    path: PathBuf,
}

impl FileDir {
    /// Uses `path` as the store directory, creating it (and its parents) when missing.
    pub fn create(path: &Path) -> io::Result<Self> {
        // Every directory this call creates must be durable in its parent,
        // or a power cut can take the whole store away with its entry.
        let mut missing = Vec::new();
        let mut p = Some(path);
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            missing.push(dir.to_path_buf());
            p = dir.parent();
        }
        std::fs::create_dir_all(path)?;
        for dir in missing.iter().rev() {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            File::open(parent)?.sync_all()?;
        }
        Ok(FileDir { path: path.to_path_buf() })
    }
}

#[derive(Debug)]
struct HostFile {
    file: File,
}

impl StorageDir for FileDir {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file =
            OpenOptions::new().read(true).write(true).create(create).truncate(false).open(self.path.join(name))?;
        Ok(Arc::new(HostFile { file }))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn lock(&self) -> io::Result<DirLock> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.path.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

impl StorageFile for HostFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, 0, offset, len).or_else(|e| {
            // File systems without fallocate: extending the length is the
            // best reservation they offer.
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                let end = offset + len;
                if self.len()? < end {
                    self.set_len(end)?;
                }
                Ok(())
            } else {
                Err(e)
            }
        })
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        // st_blocks counts 512-byte units whatever the file system's block size.
        Ok(self.file.metadata()?.blocks() * 512)
    }

    fn try_lock(&self) -> io::Result<DirLock> {
        // flock belongs to the open file description, which the duplicate
        // shares: the lock covers this handle, and a separate open of the
        // same file (another Store in this process included) conflicts.
        let dup = self.file.try_clone()?;
        match dup.try_lock() {
            Ok(()) => Ok(Box::new(FileLock(dup))),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn drop_cache(&self) -> io::Result<()> {
        // After fdatasync every cached page is clean: written, or marked
        // clean by a failed write-back. DONTNEED drops clean pages that are
        // not mapped, locked or under write-back; the engine maps nothing
        // and holds the data file's lock, so no page of it is in those
        // states, and the next read of every page goes to the disk.
        let synced = self.file.sync_data();
        fadvise_dontneed(&self.file, 0, 0)?;
        synced
    }

    fn drop_cache_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        fadvise_dontneed(&self.file, offset, len)
    }
}

/// The guard of [`HostFile::try_lock`]: unlocking explicitly releases the
/// lock when the guard goes, even while the engine still holds the file.
struct FileLock(File);

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the last descriptor would release it too; an error here
        // leaves nothing to do.
        let _ = self.0.unlock();
    }
}

#[expect(unsafe_code, reason = "posix_fadvise(2) has no safe wrapper in std")]
/// `POSIX_FADV_DONTNEED` over `[offset, offset + len)`; a `len` of 0 means
/// to the end of the file.
fn fadvise_dontneed(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor
    // is owned by `file` and stays open for the duration of the call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    // It returns the error number instead of setting errno.
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

#[expect(unsafe_code, reason = "fallocate(2) has no safe wrapper in std")]
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    loop {
        // SAFETY: fallocate only reads its integer arguments; the descriptor
        // is owned by `file` and stays open for the duration of the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
