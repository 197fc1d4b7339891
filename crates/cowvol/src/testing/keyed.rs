//! `KeyedDir`: a store directory on the host file system that keeps data
//! blocks of a known pattern by their key instead of their bytes, so that a
//! store of 10^8 distinct blocks (400 GB of data) fits on a small disk while
//! its metadata is written, read and cached for real.
//!
//! A *keyed block* ([`keyed_block`]) starts with a magic number and its
//! key; the rest follows from the key. When a write covers whole blocks
//! that are keyed, only their keys reach the disk, in a side file
//! (`NAME.keys`, 8 bytes per block of the file; 0 = not keyed), and the
//! data file keeps a hole there. Every other write goes to the data file
//! and clears the keys it covers. A read rebuilds keyed blocks from their
//! keys. Reservations (`allocate`) only extend the file's length, sparse:
//! the figures this backend serves are of metadata, and a 400 GB
//! reservation would fail here.
//!
//! For benchmarks and tests of scale only: a block of user data that
//! happened to start with the magic number would be stored wrong.

use crate::backend::{DirLock, FileDir, StorageDir, StorageFile};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const MAGIC: u64 = 0x6b65_7965_645f_626c; // "keyed_bl"

/// The block of `len` bytes that key `key` (not 0) stands for.
pub fn keyed_block(key: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn key_of(block: &[u8]) -> Option<u64> {
    let magic = u64::from_le_bytes(block.get(..8)?.try_into().ok()?);
    let key = u64::from_le_bytes(block.get(8..16)?.try_into().ok()?);
    (magic == MAGIC && key != 0).then_some(key)
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct KeyedDir {
    inner: FileDir,
    path: PathBuf,
    block: usize,
    written: Arc<Written>,
}

/// Bytes written through a [`KeyedDir`], by kind (all its files together).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyedWrites {
    /// Keyed blocks, counted at their full size: the data.
    pub keyed: u64,
    /// Whole blocks of zeroes (space zeroed ahead of the allocator).
    pub zero: u64,
    /// Everything else: metadata (tree nodes, the reference table, the
    /// catalog, superblocks, the log).
    pub other: u64,
}

#[derive(Debug, Default)]
struct Written {
    keyed: AtomicU64,
    zero: AtomicU64,
    other: AtomicU64,
}

impl KeyedDir {
    /// Uses `path` as the store directory (created when missing), keying
    /// blocks of `block_size` bytes.
    pub fn create(path: &Path, block_size: usize) -> io::Result<Self> {
        Ok(KeyedDir {
            inner: FileDir::create(path)?,
            path: path.to_path_buf(),
            block: block_size,
            written: Arc::default(),
        })
    }

    /// Bytes written so far through this directory and its clones.
    pub fn written(&self) -> KeyedWrites {
        KeyedWrites {
            keyed: self.written.keyed.load(Ordering::Relaxed),
            zero: self.written.zero.load(Ordering::Relaxed),
            other: self.written.other.load(Ordering::Relaxed),
        }
    }

    fn keys_name(name: &str) -> String {
        format!("{name}.keys")
    }
}

impl StorageDir for KeyedDir {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let data = self.inner.open_file(name, create)?;
        let keys = self.inner.open_file(&Self::keys_name(name), true)?;
        Ok(Arc::new(KeyedFile { data, keys, block: self.block, written: self.written.clone() }))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(&Self::keys_name(from), &Self::keys_name(to))?;
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(&Self::keys_name(name))?;
        self.inner.remove(name)
    }

    fn lock(&self) -> io::Result<DirLock> {
        self.inner.lock()
    }

    fn describe(&self) -> String {
        format!("{} (keyed blocks)", self.path.display())
    }
}

#[derive(Debug)]
struct KeyedFile {
    data: Arc<dyn StorageFile>,
    keys: Arc<dyn StorageFile>,
    block: usize,
    written: Arc<Written>,
}

impl KeyedFile {
    fn read_keys(&self, first: u64, n: usize) -> io::Result<Vec<u64>> {
        let mut raw = vec![0u8; n * 8];
        self.keys.read_at(&mut raw, first * 8)?;
        Ok(raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("eight bytes"))).collect())
    }

    fn write_keys(&self, first: u64, keys: &[u64]) -> io::Result<()> {
        let raw: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
        self.keys.write_at(&raw, first * 8)
    }

    /// The blocks `offset..offset + len` touch: first block and count.
    fn blocks_of(&self, offset: u64, len: usize) -> (u64, usize) {
        let b = self.block as u64;
        let first = offset / b;
        let end = (offset + len as u64).div_ceil(b);
        (first, (end - first) as usize)
    }
}

impl StorageFile for KeyedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.data.read_at(buf, offset)?;
        let (first, n) = self.blocks_of(offset, buf.len());
        let b = self.block as u64;
        for (i, key) in self.read_keys(first, n)?.into_iter().enumerate() {
            if key == 0 {
                continue;
            }
            let start = (first + i as u64) * b;
            let block = keyed_block(key, self.block);
            let from = offset.max(start);
            let to = (offset + buf.len() as u64).min(start + b);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&block[(from - start) as usize..(to - start) as usize]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let (first, n) = self.blocks_of(offset, buf.len());
        let whole = offset.is_multiple_of(self.block as u64) && buf.len().is_multiple_of(self.block);
        if !whole {
            // Part of a block: the bytes go to the data file, and a keyed
            // block it lands in is written out whole first.
            let keys = self.read_keys(first, n)?;
            for (i, &key) in keys.iter().enumerate().filter(|(_, k)| **k != 0) {
                let at = (first + i as u64) * self.block as u64;
                self.data.write_at(&keyed_block(key, self.block), at)?;
            }
            if keys.iter().any(|&k| k != 0) {
                self.write_keys(first, &vec![0; n])?;
            }
            self.written.other.fetch_add(buf.len() as u64, Ordering::Relaxed);
            return self.data.write_at(buf, offset);
        }
        let mut keys = Vec::with_capacity(n);
        for (i, block) in buf.chunks_exact(self.block).enumerate() {
            let key = key_of(block);
            let kind = match key {
                Some(_) => &self.written.keyed,
                None if block.iter().all(|&b| b == 0) => &self.written.zero,
                None => &self.written.other,
            };
            kind.fetch_add(block.len() as u64, Ordering::Relaxed);
            if key.is_none() {
                self.data.write_at(block, offset + (i * self.block) as u64)?;
            }
            keys.push(key.unwrap_or(0));
        }
        self.write_keys(first, &keys)
    }

    fn sync(&self) -> io::Result<()> {
        self.keys.sync()?;
        self.data.sync()
    }

    fn len(&self) -> io::Result<u64> {
        self.data.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.data.set_len(len)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.data.len()? < offset + len {
            self.data.set_len(offset + len)?;
        }
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.data.punch_hole(offset, len)
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        Ok(self.data.allocated_bytes()? + self.keys.allocated_bytes()?)
    }

    fn try_lock(&self) -> io::Result<DirLock> {
        self.data.try_lock()
    }

    fn drop_cache(&self) -> io::Result<()> {
        self.keys.drop_cache()?;
        self.data.drop_cache()
    }

    fn drop_cache_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let (first, n) = self.blocks_of(offset, len as usize);
        self.keys.drop_cache_range(first * 8, n as u64 * 8)?;
        self.data.drop_cache_range(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_blocks_round_trip_and_other_writes_replace_them() {
        let tmp = std::env::temp_dir().join(format!("cowvol-keyed-{}", std::process::id()));
        let dir = KeyedDir::create(&tmp, 4096).unwrap();
        let f = dir.open_file("data", true).unwrap();
        let mut two = keyed_block(7, 4096);
        two.extend(keyed_block(8, 4096));
        f.write_at(&two, 4096).unwrap();
        let mut back = vec![0u8; 8192];
        f.read_at(&mut back, 4096).unwrap();
        assert!(back == two);
        // A plain block over a keyed one, and part of a block over another.
        f.write_at(&[5u8; 4096], 4096).unwrap();
        f.write_at(&[9u8; 100], 8192 + 50).unwrap();
        f.read_at(&mut back, 4096).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 5));
        let mut expect = keyed_block(8, 4096);
        expect[50..150].fill(9);
        assert!(back[4096..] == expect[..]);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
