//! The testing surface: a simulated disk for crash and fault-injection tests.
//!
//! [`SimDir`] is a [`crate::backend::StorageDir`] that keeps every file in
//! memory with a durable image and a volatile write cache. Open a store on it
//! with [`crate::Store::open_in`], cut the power with [`SimDir::crash`], and
//! reopen the surviving image to check what recovery makes of it.

pub mod sim;

pub use sim::{LossMode, SimDir, SimStats};

use crate::error::Result;

/// Decodes one WAL batch (header, CRC, records) as recovery does, returning
/// the number of records, or `None` where recovery would stop. For fuzzing:
/// any input must give an answer, never a panic.
pub fn decode_wal_batch(bytes: &[u8]) -> Option<usize> {
    let (hdr, _) = crate::format::BatchHeader::decode(bytes)?;
    crate::wal::parse_batch(bytes, 0, hdr.log_id, hdr.first_lsn).map(|(_, recs, _)| recs.len())
}

/// Decodes a checkpoint's catalog (volumes, snapshots, tree roots) after
/// verifying `crc`, returning the numbers of volumes and snapshots.
///
/// # Errors
/// [`crate::Error::Corruption`] for anything malformed.
pub fn decode_catalog(bytes: &[u8], crc: u32) -> Result<(usize, usize)> {
    let img = crate::catalog::CatalogImage::decode(bytes, crc, "fuzz input")?;
    Ok((img.volumes.len(), img.snapshots.len()))
}

/// Decodes a superblock slot; `Ok(None)` when it holds none.
///
/// # Errors
/// [`crate::Error::Corruption`] for a damaged superblock.
pub fn decode_superblock(bytes: &[u8]) -> Result<Option<u64>> {
    Ok(crate::format::Superblock::decode(bytes)?.map(|sb| sb.generation))
}

/// Decodes a tree node page of a store with 4 KiB blocks as it would be read
/// at `page` and `level`, returning its entry count.
///
/// # Errors
/// [`crate::Error::Corruption`] for anything malformed.
pub fn decode_tree_node(bytes: &[u8], page: u64, level: u32) -> Result<usize> {
    let geo = crate::tree::Geometry { bits: crate::format::fanout_bits_for(4096), levels: level.saturating_add(1) };
    Ok(match crate::tree::decode_node(bytes, page, level, geo, 1 << 40)? {
        crate::tree::DecodedNode::Leaf(v) => v.len(),
        crate::tree::DecodedNode::Interior(v) => v.len(),
    })
}

/// CRC32 as the on-disk formats use it, for building valid fuzz seeds.
pub fn crc32(bytes: &[u8]) -> u32 {
    crate::format::Crc::of(bytes).0
}

/// Drops a store the way a crashed process leaves it: no final checkpoint,
/// and the open WAL batch (records not yet written) is lost. What was
/// written to the files stays, as it does in the page cache after `kill -9`.
/// Volume handles still open on the store fail from now on.
pub fn abandon(store: crate::Store) {
    store.inner.abandon();
    drop(store);
}
