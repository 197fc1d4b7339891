//! What the engine writes to the data file, by what it is, and the syncs it
//! makes: the figures behind metadata write amplification
//! ([`crate::Store::written`]). Every write of the engine goes through
//! [`Engine::write_as`] or a [`Counted`] view of the file, so the kinds add
//! up to exactly the bytes the backend received.

use super::Engine;
use crate::backend::{DirLock, StorageFile};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a write to the data file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// Volume data blocks.
    Data,
    /// Zeroes written ahead of the allocator into space never written.
    Zeroes,
    /// WAL batches, segment headers, links and seals.
    Log,
    /// Tree nodes a checkpoint wrote whole.
    Nodes,
    /// Delta pages: the records of nodes a checkpoint wrote as deltas of
    /// their pages.
    Deltas,
    /// Group and index pages of the reference table.
    Table,
    /// The catalog blob.
    Catalog,
    /// Superblocks.
    Superblock,
}

const KINDS: usize = 8;

/// Counters shared by the engine and its counted views of the file.
#[derive(Debug, Default)]
pub(crate) struct WriteCounters {
    bytes: [AtomicU64; KINDS],
    syncs: AtomicU64,
}

impl WriteCounters {
    pub(crate) fn add(&self, what: Wrote, n: usize) {
        self.bytes[what as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn synced(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn figures(&self) -> WriteStats {
        let b = |what: Wrote| self.bytes[what as usize].load(Ordering::Relaxed);
        WriteStats {
            data_bytes: b(Wrote::Data),
            zeroed_bytes: b(Wrote::Zeroes),
            log_bytes: b(Wrote::Log),
            node_bytes: b(Wrote::Nodes),
            delta_bytes: b(Wrote::Deltas),
            table_bytes: b(Wrote::Table),
            catalog_bytes: b(Wrote::Catalog),
            superblock_bytes: b(Wrote::Superblock),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }
}

/// Bytes the store wrote to its data file since it was opened, by what they
/// hold, and the syncs it made (from [`crate::Store::written`]; also in
/// [`crate::StoreStats`]). Cheap to read: no lock, no walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Volume data blocks (a partial-block write counts its whole blocks).
    pub data_bytes: u64,
    /// Never-written space zeroed ahead of small writes and new log
    /// segments, so that a later sync does not also convert unwritten
    /// extents. Stops once the file's space has been written once.
    pub zeroed_bytes: u64,
    /// The write-ahead log: batches (padded to 4 KiB), segment headers,
    /// links and seals.
    pub log_bytes: u64,
    /// Tree nodes written whole by checkpoints.
    pub node_bytes: u64,
    /// Delta pages written by checkpoints: the records of the nodes
    /// written as changes to the pages they were copied from.
    pub delta_bytes: u64,
    /// Pages of the reference table written by checkpoints.
    pub table_bytes: u64,
    /// Catalogs written by checkpoints.
    pub catalog_bytes: u64,
    /// Superblocks written by checkpoints.
    pub superblock_bytes: u64,
    /// `fdatasync` calls on the data file.
    pub syncs: u64,
}

impl WriteStats {
    /// Every byte that is not data or zero fill: log, nodes, deltas,
    /// table, catalogs and superblocks.
    pub fn metadata_bytes(&self) -> u64 {
        self.log_bytes
            + self.node_bytes
            + self.delta_bytes
            + self.table_bytes
            + self.catalog_bytes
            + self.superblock_bytes
    }

    /// Metadata bytes per data byte (0 before any data was written).
    pub fn metadata_per_data_byte(&self) -> f64 {
        if self.data_bytes == 0 {
            0.0
        } else {
            self.metadata_bytes() as f64 / self.data_bytes as f64
        }
    }
}

impl Engine {
    /// Writes `buf` at `offset` of the data file, counted as `what`.
    pub(crate) fn write_as(&self, what: Wrote, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_at(buf, offset)?;
        self.written.add(what, buf.len());
        Ok(())
    }

    /// `fdatasync` of the data file, counted.
    pub(crate) fn sync_file(&self) -> io::Result<()> {
        self.file.sync()?;
        self.written.synced();
        Ok(())
    }
}

/// A view of the data file whose writes count as one kind (the log writer
/// and segment zeroing hold one); everything else passes through.
#[derive(Debug)]
pub(crate) struct Counted {
    inner: Arc<dyn StorageFile>,
    counters: Arc<WriteCounters>,
    what: Wrote,
}

impl Counted {
    pub(crate) fn view(
        inner: &Arc<dyn StorageFile>,
        counters: &Arc<WriteCounters>,
        what: Wrote,
    ) -> Arc<dyn StorageFile> {
        Arc::new(Counted { inner: inner.clone(), counters: counters.clone(), what })
    }
}

impl StorageFile for Counted {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)?;
        self.counters.add(self.what, buf.len());
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()?;
        self.counters.synced();
        Ok(())
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

    fn allocated_bytes(&self) -> io::Result<u64> {
        self.inner.allocated_bytes()
    }

    fn try_lock(&self) -> io::Result<DirLock> {
        self.inner.try_lock()
    }

    fn drop_cache(&self) -> io::Result<()> {
        self.inner.drop_cache()
    }

    fn drop_cache_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.drop_cache_range(offset, len)
    }
}
