//! On-disk encoding: every byte cowvol writes passes through here.
//!
//! Layouts are drawn in `docs/format.md`. Everything is little-endian and goes
//! through [`Enc`] and [`Dec`]; fixed-size headers have their offsets derived
//! from field sizes and their lengths `const`-asserted.

use crate::error::{Error, Result};

/// Size of the unit the disk is assumed to write atomically-or-not-at-all
/// per sector group, and the alignment of every WAL batch. Nothing durable is
/// ever rewritten by a later WAL write because batches start on this boundary.
pub(crate) const SECTOR: u64 = 4096;

/// The name of the single data file of a store.
pub(crate) const DATA_FILE: &str = "cowvol.dat";

/// Current on-disk format version. Version 3 added owners to volumes and
/// templates; version 4 added calendar schedules to volumes, expiry,
/// schedule and idempotency key to snapshots, and the schedule records;
/// version 5 added the reference table and the garbage list to the
/// catalog (see `space::table`); version 6 added the log link, which lets an
/// open carry on the log it found instead of checkpointing (see `wal`);
/// version 7 added wide leaves, leaves that stand above level 0 (a node
/// header flag, see `tree`); versions 8 and 9 the reference table's change
/// log; version 10 node deltas: a written node is a page and, optionally, a
/// small record of the entries that differ from it (see `tree::delta`).
pub(crate) const FORMAT_VERSION: u32 = 10;
/// The oldest version this build opens. Its stores are read as they are and
/// written in the current version from their first checkpoint on.
pub(crate) const OLDEST_READABLE_VERSION: u32 = 2;

/// A CRC32 (Castagnoli polynomial is not needed here; crc32fast is IEEE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Crc(pub(crate) u32);

impl Crc {
    pub(crate) fn of(bytes: &[u8]) -> Crc {
        Crc(crc32fast::hash(bytes))
    }

    /// Checks `bytes` against this checksum, naming `what` and `location` in the error.
    pub(crate) fn verify(self, bytes: &[u8], what: &str, location: impl FnOnce() -> String) -> Result<()> {
        let actual = Crc::of(bytes);
        if actual == self {
            Ok(())
        } else {
            Err(Error::corruption(
                what,
                location(),
                format!("checksum mismatch: stored {:#010x}, computed {:#010x}", self.0, actual.0),
            ))
        }
    }
}

/// Appends little-endian fields to a byte vector.
#[derive(Default, Debug)]
pub(crate) struct Enc {
    pub(crate) buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn with_capacity(n: usize) -> Enc {
        Enc { buf: Vec::with_capacity(n) }
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u48(&mut self, v: u64) {
        debug_assert!(v < 1 << 48);
        self.buf.extend_from_slice(&v.to_le_bytes()[..6]);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }
}

/// Reads little-endian fields, failing with a typed error instead of panicking
/// when the input is short or malformed.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
    /// The format version the bytes were written in; decoders of records
    /// that grew fields read the old shape for older versions.
    pub(crate) version: u32,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Dec<'a> {
        Dec { buf, pos: 0, what, version: FORMAT_VERSION }
    }

    /// Decodes bytes written in format `version`.
    pub(crate) fn of_version(buf: &'a [u8], what: &'static str, version: u32) -> Dec<'a> {
        Dec { version, ..Dec::new(buf, what) }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::corruption(
                self.what,
                format!("byte {}", self.pos),
                format!("truncated: needed {n} more bytes, {} left", self.buf.len() - self.pos),
            )),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u48(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a[..6].copy_from_slice(self.take(6)?);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        self.take(n)
    }
    pub(crate) fn str(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::corruption(self.what, format!("byte {}", self.pos - n), "string is not UTF-8"))
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    pub(crate) fn bad(&self, detail: impl Into<String>) -> Error {
        Error::corruption(self.what, format!("byte {}", self.pos), detail)
    }
}

// ---------------------------------------------------------------- superblock

/// Byte offsets of the two superblock slots; the valid one with the higher
/// generation wins, so a torn superblock write falls back to the other.
pub(crate) const SUPERBLOCK_SLOTS: [u64; 2] = [0, 4096];
pub(crate) const SUPERBLOCK_MAGIC: [u8; 8] = *b"COWVOLSB";
/// Encoded length of a superblock, CRC included.
pub(crate) const SUPERBLOCK_LEN: usize = 8 + 4 * 4 + 8 * 10 + 4 + 4;
const _: () = assert!(SUPERBLOCK_LEN == 112);
const _: () = assert!(SUPERBLOCK_LEN as u64 <= SECTOR);

/// Where replay starts: a position in the WAL and the first LSN expected there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LogStart {
    pub(crate) log_id: u64,
    pub(crate) segment_page: u64,
    pub(crate) segment_seq: u64,
    pub(crate) offset: u64,
    pub(crate) lsn: u64,
}

/// The root of everything: which checkpoint is current and where the WAL
/// that follows it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Superblock {
    /// The version the store's catalog and log were written in. Encoding
    /// always writes [`FORMAT_VERSION`].
    pub(crate) version: u32,
    pub(crate) block_size: u32,
    pub(crate) fanout_bits: u32,
    pub(crate) generation: u64,
    pub(crate) store_id: u64,
    pub(crate) catalog_page: u64,
    pub(crate) catalog_len: u64,
    pub(crate) catalog_crc: u32,
    pub(crate) log: LogStart,
}

impl Superblock {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(SUPERBLOCK_LEN);
        e.bytes(&SUPERBLOCK_MAGIC);
        e.u32(FORMAT_VERSION);
        e.u32(self.block_size);
        e.u32(self.fanout_bits);
        e.u32(self.catalog_crc);
        e.u64(self.generation);
        e.u64(self.store_id);
        e.u64(self.catalog_page);
        e.u64(self.catalog_len);
        e.u64(self.log.log_id);
        e.u64(self.log.segment_page);
        e.u64(self.log.segment_seq);
        e.u64(self.log.offset);
        e.u64(self.log.lsn);
        e.u64(0);
        e.u32(0);
        let crc = Crc::of(&e.buf);
        e.u32(crc.0);
        debug_assert_eq!(e.len(), SUPERBLOCK_LEN);
        e.buf
    }

    /// Decodes one slot. `Ok(None)` means the slot holds no superblock at all
    /// (never written); a slot with the magic but a bad checksum is an error.
    pub(crate) fn decode(buf: &[u8]) -> Result<Option<Superblock>> {
        if buf.len() < SUPERBLOCK_LEN || buf[..8] != SUPERBLOCK_MAGIC {
            return Ok(None);
        }
        let body = &buf[..SUPERBLOCK_LEN - 4];
        let stored = u32::from_le_bytes(buf[SUPERBLOCK_LEN - 4..SUPERBLOCK_LEN].try_into().unwrap_or_default());
        Crc(stored).verify(body, "superblock", || "checksum field".into())?;
        let mut d = Dec::new(body, "superblock");
        d.bytes(8)?;
        let version = d.u32()?;
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(d.bad(format!(
                "format version {version} is not supported (this build reads versions \
                 {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})"
            )));
        }
        let block_size = d.u32()?;
        let fanout_bits = d.u32()?;
        let catalog_crc = d.u32()?;
        let generation = d.u64()?;
        let store_id = d.u64()?;
        let catalog_page = d.u64()?;
        let catalog_len = d.u64()?;
        let log = LogStart {
            log_id: d.u64()?,
            segment_page: d.u64()?,
            segment_seq: d.u64()?,
            offset: d.u64()?,
            lsn: d.u64()?,
        };
        if !block_size.is_power_of_two() || !(4096..=1 << 20).contains(&block_size) {
            return Err(d.bad(format!("block size {block_size} is invalid")));
        }
        if fanout_bits != fanout_bits_for(block_size) {
            return Err(d.bad(format!("fan-out {fanout_bits} does not match block size {block_size}")));
        }
        Ok(Some(Superblock {
            version,
            block_size,
            fanout_bits,
            generation,
            store_id,
            catalog_page,
            catalog_len,
            catalog_crc,
            log,
        }))
    }
}

/// Byte offset of page 0 of the page area: after both superblock slots, and
/// aligned to the block size so that data pages are aligned on disk.
pub(crate) fn data_start(block_size: u32) -> u64 {
    (2 * SECTOR).max(block_size as u64)
}

// ---------------------------------------------------------------- tree nodes

pub(crate) const NODE_MAGIC: u32 = u32::from_le_bytes(*b"CVND");
/// magic, crc, self address, level, flags, reserved, entry count.
pub(crate) const NODE_HEADER_LEN: usize = 4 + 4 + 8 + 1 + 1 + 2 + 4;
const _: () = assert!(NODE_HEADER_LEN == 24);
/// A leaf entry: index within the leaf (u16), page (u48), data CRC (u32).
pub(crate) const LEAF_ENTRY_LEN: usize = 2 + 6 + 4;
/// An interior entry before format 10: child index (u16), child node page
/// (u48).
pub(crate) const INTERIOR_ENTRY_LEN: usize = 2 + 6;
/// An interior entry from format 10: child index (u16), child node page
/// (u48), and the child's delta (u48, 0 for none).
pub(crate) const INTERIOR_DELTA_ENTRY_LEN: usize = 2 + 6 + 6;
/// Node flag (format 7): a leaf standing above level 0, a *wide leaf*
/// whose entries index every block of its level's span.
const NODE_WIDE_LEAF: u8 = 1;
/// Node flag (format 10): an interior node whose entries name their
/// children's deltas too ([`INTERIOR_DELTA_ENTRY_LEN`]).
const NODE_DELTA_ENTRIES: u8 = 2;
/// Magic of a delta page (format 10), which packs the delta records of
/// many nodes (see `tree::delta`).
pub(crate) const DELTA_MAGIC: u32 = u32::from_le_bytes(*b"CVDL");
/// Where the node's CRC sits; it covers every byte after it up to the end
/// of the entries.
const NODE_CRC_AT: usize = 4;
const NODE_CRC_END: usize = NODE_CRC_AT + 4;

/// The header of a tree node page (docs/format.md, section 3.6): magic,
/// CRC, the page the node lives at, its level, whether it is a leaf and
/// its entry count. Encoded and decoded here only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeHeader {
    pub(crate) page: u64,
    pub(crate) level: u32,
    /// Always true at level 0; above it, a wide leaf.
    pub(crate) leaf: bool,
    /// An interior node whose entries carry their children's deltas
    /// (written from format 10 on; never set on a leaf).
    pub(crate) deltas: bool,
    pub(crate) count: usize,
}

impl NodeHeader {
    /// Starts a node page: the header with its CRC still zero. The entries
    /// follow; [`NodeHeader::seal`] then fills in the CRC.
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u32(NODE_MAGIC);
        e.u32(0);
        e.u64(self.page);
        e.u8(self.level as u8);
        let flags = match (self.leaf, self.deltas) {
            (true, _) if self.level > 0 => NODE_WIDE_LEAF,
            (true, _) => 0,
            (false, true) => NODE_DELTA_ENTRIES,
            (false, false) => 0,
        };
        e.u8(flags);
        e.bytes(&[0; 2]);
        e.u32(self.count as u32);
    }

    /// Stores the CRC of a node page whose header and entries are `buf`.
    pub(crate) fn seal(buf: &mut [u8]) {
        let crc = Crc::of(&buf[NODE_CRC_END..]);
        buf[NODE_CRC_AT..NODE_CRC_END].copy_from_slice(&crc.0.to_le_bytes());
    }

    /// Bytes of the entries that follow the header.
    pub(crate) fn entries_len(&self) -> Option<usize> {
        let entry = match (self.leaf, self.deltas) {
            (true, _) => LEAF_ENTRY_LEN,
            (false, true) => INTERIOR_DELTA_ENTRY_LEN,
            (false, false) => INTERIOR_ENTRY_LEN,
        };
        self.count.checked_mul(entry)
    }

    /// Decodes the header of the node page read from `page` and verifies
    /// the page: magic, entry count within the page, CRC, and that the node
    /// says it lives at `page`. The level is returned, not checked: only the
    /// tree knows where the node should sit.
    pub(crate) fn decode(buf: &[u8], page: u64) -> Result<NodeHeader> {
        let loc = || format!("tree node at page {page}");
        let mut d = Dec::new(buf, "tree node");
        if d.u32()? != NODE_MAGIC {
            return Err(Error::corruption("tree node", loc(), "bad magic"));
        }
        let crc = d.u32()?;
        let page_field = d.u64()?;
        let level = d.u8()? as u32;
        let flags = d.u8()?;
        d.bytes(2)?;
        let count = d.u32()? as usize;
        // A version 6 node has no flags: its leaves are all at level 0. A
        // leaf's entries never name deltas.
        let known = flags == 0 || flags == NODE_WIDE_LEAF || flags == NODE_DELTA_ENTRIES;
        if !known || (flags != 0 && level == 0) {
            return Err(Error::corruption("tree node", loc(), format!("unknown flags {flags:#x} at level {level}")));
        }
        let leaf = level == 0 || flags == NODE_WIDE_LEAF;
        let hdr = NodeHeader { page: page_field, level, leaf, deltas: flags == NODE_DELTA_ENTRIES, count };
        let end = hdr.entries_len().map(|n| NODE_HEADER_LEN + n).filter(|&end| end <= buf.len()).ok_or_else(|| {
            Error::corruption("tree node", loc(), format!("entry count {} overflows the page", hdr.count))
        })?;
        Crc(crc).verify(&buf[NODE_CRC_END..end], "tree node", loc)?;
        if hdr.page != page {
            return Err(Error::corruption("tree node", loc(), format!("node claims to live at page {}", hdr.page)));
        }
        Ok(hdr)
    }
}
/// Page numbers are stored in 48 bits.
pub(crate) const MAX_PAGE: u64 = (1 << 48) - 1;

/// The fan-out (as a power of two) of every tree node for a block size: the
/// largest that lets a full leaf fit in one page, capped so an index fits in
/// a u16.
pub(crate) fn fanout_bits_for(block_size: u32) -> u32 {
    let fits = (block_size as usize - NODE_HEADER_LEN) / LEAF_ENTRY_LEN;
    (usize::BITS - 1 - fits.leading_zeros()).min(16)
}

// ---------------------------------------------------------------- WAL

/// A sector of the log that is not a batch (segment header, link, seal):
/// magic, CRC of the fields, the fields, zeroes to the sector's end.
fn encode_log_sector(magic: u32, fields: &[u64]) -> Vec<u8> {
    let mut e = Enc::with_capacity(SECTOR as usize);
    e.u32(magic);
    e.u32(0);
    fields.iter().for_each(|&f| e.u64(f));
    let crc = Crc::of(&e.buf[8..]);
    e.buf[4..8].copy_from_slice(&crc.0.to_le_bytes());
    e.buf.resize(SECTOR as usize, 0);
    e.buf
}

/// The `N` fields of a log sector with this magic, or `None` when the
/// bytes are not a whole, valid one.
fn decode_log_sector<const N: usize>(buf: &[u8], magic: u32) -> Option<[u64; N]> {
    let bytes = buf.get(..8 + 8 * N)?;
    let mut d = Dec::new(bytes, "WAL sector");
    if d.u32().ok()? != magic {
        return None;
    }
    let crc = d.u32().ok()?;
    if Crc::of(&bytes[8..]).0 != crc {
        return None;
    }
    let mut fields = [0u64; N];
    for f in &mut fields {
        *f = d.u64().ok()?;
    }
    Some(fields)
}

pub(crate) const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"CVSG");
/// magic, crc, log id, sequence, next segment page, and from version 6 the
/// log this one carries on.
pub(crate) const SEGMENT_HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8 + 8;
const _: () = assert!(SEGMENT_HEADER_LEN == 40);

/// The header at the start of every WAL segment. The next segment is
/// allocated before this one is first written, so recovery can follow the
/// chain without any other index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) log_id: u64,
    pub(crate) seq: u64,
    pub(crate) next_page: u64,
    /// The log a [`LogLink`] leads here from (first segment of a carried-on
    /// log only; otherwise 0). Lets recovery recognise the segment as that
    /// log's continuation when the link itself is damaged.
    pub(crate) prev_log_id: u64,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_log_sector(SEGMENT_MAGIC, &[self.log_id, self.seq, self.next_page, self.prev_log_id])
    }

    /// `None` when the bytes are not a valid segment header of a log written
    /// in `version` (stale data, a torn write, or never written): the end of
    /// the log.
    pub(crate) fn decode(buf: &[u8], version: u32) -> Option<SegmentHeader> {
        if version >= 6 {
            let [log_id, seq, next_page, prev_log_id] = decode_log_sector(buf, SEGMENT_MAGIC)?;
            Some(SegmentHeader { log_id, seq, next_page, prev_log_id })
        } else {
            let [log_id, seq, next_page] = decode_log_sector(buf, SEGMENT_MAGIC)?;
            Some(SegmentHeader { log_id, seq, next_page, prev_log_id: 0 })
        }
    }
}

pub(crate) const LINK_MAGIC: u32 = u32::from_le_bytes(*b"CVLK");
/// magic, crc, log id, LSN, new log id, new log's first segment page.
pub(crate) const LINK_LEN: usize = 4 + 4 + 8 + 8 + 8 + 8;
const _: () = assert!(LINK_LEN == 40);

/// Where a log goes on under a new identity: written at the end of a log
/// that an open carried on, in place of the batch that would come next.
/// Replay that meets it at record `lsn` of log `log_id` continues in the
/// segment at `segment_page`, which heads log `new_log_id` (sequence 1),
/// expecting record `lsn` there. Whatever the old log held after the link
/// (a torn tail a crash left) is never read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogLink {
    pub(crate) log_id: u64,
    pub(crate) lsn: u64,
    pub(crate) new_log_id: u64,
    pub(crate) segment_page: u64,
}

impl LogLink {
    /// One sector: the link, then zeroes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_log_sector(LINK_MAGIC, &[self.log_id, self.lsn, self.new_log_id, self.segment_page])
    }

    /// `None` when the bytes are not a whole, valid link.
    pub(crate) fn decode(buf: &[u8]) -> Option<LogLink> {
        let [log_id, lsn, new_log_id, segment_page] = decode_log_sector(buf, LINK_MAGIC)?;
        Some(LogLink { log_id, lsn, new_log_id, segment_page })
    }
}

pub(crate) const SEAL_MAGIC: u32 = u32::from_le_bytes(*b"CVSE");
/// magic, crc, log id, end LSN.
pub(crate) const SEAL_LEN: usize = 4 + 4 + 8 + 8;
const _: () = assert!(SEAL_LEN == 24);

/// Written when a store closes without a checkpoint, in the first sector of
/// the segment set aside to follow the log's current one: every record of
/// log `log_id` below `end_lsn` is durable, and the log holds nothing more.
/// Replay that ends exactly at `end_lsn` has read everything and needs no
/// search for batches past the end; one that ends earlier has met damage to
/// synced records. The position is fixed so that a reader finds the seal
/// however the batch before it was damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogSeal {
    pub(crate) log_id: u64,
    pub(crate) end_lsn: u64,
}

impl LogSeal {
    /// One sector: the seal, then zeroes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_log_sector(SEAL_MAGIC, &[self.log_id, self.end_lsn])
    }

    /// `None` when the bytes are not a whole, valid seal.
    pub(crate) fn decode(buf: &[u8]) -> Option<LogSeal> {
        let [log_id, end_lsn] = decode_log_sector(buf, SEAL_MAGIC)?;
        Some(LogSeal { log_id, end_lsn })
    }
}

pub(crate) const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"CVBT");
/// magic, crc, log id, first LSN, record count, payload length, durable LSN.
pub(crate) const BATCH_HEADER_LEN: usize = 4 + 4 + 8 + 8 + 4 + 4 + 8;
const _: () = assert!(BATCH_HEADER_LEN == 40);

/// The header of one group-commit batch of WAL records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) log_id: u64,
    pub(crate) first_lsn: u64,
    pub(crate) count: u32,
    pub(crate) payload_len: u32,
    /// Every record with a smaller LSN was durable when this batch was formed.
    pub(crate) durable_lsn: u64,
}

impl BatchHeader {
    /// Encodes header + payload, padded to a whole number of sectors.
    pub(crate) fn encode_with(&self, payload: &[u8]) -> Vec<u8> {
        let total = (BATCH_HEADER_LEN + payload.len()).next_multiple_of(SECTOR as usize);
        let mut e = Enc::with_capacity(total);
        e.u32(BATCH_MAGIC);
        e.u32(0);
        e.u64(self.log_id);
        e.u64(self.first_lsn);
        e.u32(self.count);
        e.u32(self.payload_len);
        e.u64(self.durable_lsn);
        e.bytes(payload);
        let crc = Crc::of(&e.buf[8..]);
        e.buf[4..8].copy_from_slice(&crc.0.to_le_bytes());
        e.buf.resize(total, 0);
        e.buf
    }

    /// Decodes the header only; the payload CRC is checked by [`BatchHeader::verify`].
    pub(crate) fn decode(buf: &[u8]) -> Option<(BatchHeader, u32)> {
        let mut d = Dec::new(buf.get(..BATCH_HEADER_LEN)?, "WAL batch");
        if d.u32().ok()? != BATCH_MAGIC {
            return None;
        }
        let crc = d.u32().ok()?;
        Some((
            BatchHeader {
                log_id: d.u64().ok()?,
                first_lsn: d.u64().ok()?,
                count: d.u32().ok()?,
                payload_len: d.u32().ok()?,
                durable_lsn: d.u64().ok()?,
            },
            crc,
        ))
    }

    /// Total bytes the batch occupies on disk, padding included.
    pub(crate) fn padded_len(&self) -> u64 {
        (BATCH_HEADER_LEN as u64 + self.payload_len as u64).next_multiple_of(SECTOR)
    }

    /// A batch is applied only after its CRC verifies over header and payload.
    pub(crate) fn verify(crc: u32, header_and_payload: &[u8]) -> bool {
        Crc::of(&header_and_payload[8..]).0 == crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segment headers, links and seals: each reads back as written, and a
    /// flipped bit anywhere in one (or another kind's magic) is no sector
    /// of that kind at all.
    #[test]
    fn log_sectors_round_trip_and_reject_bit_flips() {
        let hdr = SegmentHeader { log_id: 11, seq: 3, next_page: 900, prev_log_id: 12 };
        let link = LogLink { log_id: 11, lsn: 77, new_log_id: 13, segment_page: 900 };
        let seal = LogSeal { log_id: 11, end_lsn: 78 };
        assert_eq!(SegmentHeader::decode(&hdr.encode(), FORMAT_VERSION), Some(hdr));
        assert_eq!(LogLink::decode(&link.encode()), Some(link));
        assert_eq!(LogSeal::decode(&seal.encode()), Some(seal));
        assert_eq!(LogLink::decode(&seal.encode()), None);
        assert_eq!(LogSeal::decode(&hdr.encode()), None);
        for (bytes, len) in [(hdr.encode(), SEGMENT_HEADER_LEN), (link.encode(), LINK_LEN), (seal.encode(), SEAL_LEN)] {
            for bit in 0..len * 8 {
                let mut b = bytes.clone();
                b[bit / 8] ^= 1 << (bit % 8);
                let any = SegmentHeader::decode(&b, FORMAT_VERSION).is_some()
                    || LogLink::decode(&b).is_some()
                    || LogSeal::decode(&b).is_some();
                assert!(!any, "bit {bit} flipped still decodes");
            }
        }
        // Version 5 headers have no `prev_log_id`.
        let v5 = encode_log_sector(SEGMENT_MAGIC, &[11, 3, 900]);
        let read = SegmentHeader::decode(&v5, 5);
        assert_eq!(read, Some(SegmentHeader { prev_log_id: 0, ..hdr }));
    }

    #[test]
    fn superblock_round_trips_and_rejects_bit_flips() {
        let sb = Superblock {
            version: FORMAT_VERSION,
            block_size: 4096,
            fanout_bits: fanout_bits_for(4096),
            generation: 7,
            store_id: 99,
            catalog_page: 12,
            catalog_len: 300,
            catalog_crc: 0xdead_beef,
            log: LogStart { log_id: 5, segment_page: 3, segment_seq: 1, offset: 4096, lsn: 42 },
        };
        let bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes).unwrap(), Some(sb));
        for i in 8..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Superblock::decode(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn fanout_fits_a_full_leaf_in_one_page() {
        for bs in [4096u32, 8192, 65536, 1 << 20] {
            let bits = fanout_bits_for(bs);
            assert!(NODE_HEADER_LEN + (LEAF_ENTRY_LEN << bits) <= bs as usize);
        }
        assert_eq!(fanout_bits_for(4096), 8);
    }

    #[test]
    fn decoder_reports_truncation_instead_of_panicking() {
        let mut d = Dec::new(&[1, 2, 3], "test");
        assert!(d.u64().is_err());
        assert!(matches!(Dec::new(&[255, 255, 255, 255], "t").str(), Err(Error::Corruption { .. })));
    }
}
