//! Node deltas (format 10): a written node as a page and, optionally, a
//! small record of the entries in which it differs from that page.
//!
//! Random 4 KiB writes over a large, fully written volume change about one
//! entry of each leaf between two checkpoints, and writing the leaf whole
//! costs a page per 4 KiB of data. A node copied from a page that no other
//! tree holds keeps that page as its *base*, and a checkpoint writes only a
//! *delta record*: the entries at the indexes where the node changed since
//! the base was written (12 bytes each in a leaf, 14 in an interior node),
//! packed with other nodes' records into a *delta page*. The node's parent
//! names both the page and the record (a [`NodeAddr`]), so no index is
//! needed to find a delta, and a node read from the disk costs two reads at
//! most. Records are cumulative: a node's new record replaces its previous
//! one, so none are chained; once a node has changed at more indexes than a
//! record may hold ([`max_entries`]), it is written whole to a new page.
//!
//! Invariants enforced here and by the tree:
//! - every reference to a base page names the same record (a page that
//!   several trees share takes no new record: a write copies it first);
//! - a record's page is reserved metadata whose reference count is the
//!   number of records in it that some node still uses;
//! - a record names its base page and level, and a page's header its own
//!   page, so a misdirected read is refused.

use super::{DecodedNode, LeafEntry, NodeAddr};
use crate::error::{Error, Result};
use crate::format::{Crc, Dec, Enc, DELTA_MAGIC, MAX_PAGE};

/// magic, CRC, the page itself, bytes used, records, zeroes: the first
/// record starts right after, on a [`UNIT`] boundary.
pub(crate) const PAGE_HEADER_LEN: usize = 32;
/// base page (u48), level, kind, entry count, zeroes.
const RECORD_HEADER_LEN: usize = 16;
/// Records start on multiples of this many bytes of the page area, and a
/// record's address counts in them.
const UNIT: u64 = 16;
/// A leaf's delta entry: index (u16), data page (u48, 0 for removed), CRC.
const LEAF_DELTA_LEN: usize = 12;
/// An interior node's delta entry: index (u16), child page (u48, 0 for
/// removed), the child's delta (u48).
const INTERIOR_DELTA_LEN: usize = 14;
const KIND_LEAF: u8 = 0;
const KIND_INTERIOR: u8 = 1;

/// The most entries one record holds; a node changed at more indexes since
/// its base was written is written whole again. A record then takes at
/// most an eighth of a page, and a page written whole carries at least this
/// many changes.
pub(crate) fn max_entries(block_size: usize) -> usize {
    (block_size / 128).max(8)
}

/// What a delta record says of each index it names, in ascending order:
/// the entry there now, or none (removed, or never there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeltaEntries {
    /// Index, and the data page with its CRC.
    Leaf(Vec<(u32, Option<(u64, u32)>)>),
    /// Index, and the child.
    Interior(Vec<(usize, Option<NodeAddr>)>),
}

impl DeltaEntries {
    pub(crate) fn len(&self) -> usize {
        match self {
            DeltaEntries::Leaf(v) => v.len(),
            DeltaEntries::Interior(v) => v.len(),
        }
    }

    /// The indexes named, in ascending order.
    pub(crate) fn indexes(&self) -> Vec<u32> {
        match self {
            DeltaEntries::Leaf(v) => v.iter().map(|e| e.0).collect(),
            DeltaEntries::Interior(v) => v.iter().map(|e| e.0 as u32).collect(),
        }
    }
}

/// Bytes a record of `count` entries takes in its page, padding included.
pub(crate) fn record_len(leaf: bool, count: usize) -> usize {
    let entry = if leaf { LEAF_DELTA_LEN } else { INTERIOR_DELTA_LEN };
    (RECORD_HEADER_LEN + count * entry).next_multiple_of(UNIT as usize)
}

/// The address of a record at byte `offset` of `page`.
pub(crate) fn address(page: u64, offset: usize, block_size: usize) -> u64 {
    (page * block_size as u64 + offset as u64) / UNIT
}

/// The page and byte offset of the record at `addr`.
pub(crate) fn location(addr: u64, block_size: usize) -> (u64, usize) {
    let byte = addr * UNIT;
    (byte / block_size as u64, (byte % block_size as u64) as usize)
}

/// Where records of `sizes` bytes go, in order: `(page number among the
/// pages needed, byte offset)` each, filling one page before starting the
/// next; and how many pages that needs.
pub(crate) fn pack(sizes: &[usize], block_size: usize) -> (Vec<(usize, usize)>, usize) {
    let mut out = Vec::with_capacity(sizes.len());
    let (mut page, mut at) = (0, PAGE_HEADER_LEN);
    for &n in sizes {
        debug_assert!(PAGE_HEADER_LEN + n <= block_size, "a record fits a page");
        if at + n > block_size {
            page += 1;
            at = PAGE_HEADER_LEN;
        }
        out.push((page, at));
        at += n;
    }
    let pages = if sizes.is_empty() { 0 } else { page + 1 };
    (out, pages)
}

/// A delta page being filled by a checkpoint.
pub(crate) struct DeltaPage {
    page: u64,
    buf: Vec<u8>,
    used: usize,
    records: u32,
}

impl DeltaPage {
    pub(crate) fn new(page: u64, block_size: usize) -> DeltaPage {
        DeltaPage { page, buf: vec![0; block_size], used: PAGE_HEADER_LEN, records: 0 }
    }

    /// Writes the record of the node based on `base` at `level` at byte
    /// `offset` (as [`pack`] placed it).
    pub(crate) fn put(&mut self, offset: usize, base: u64, level: u32, entries: &DeltaEntries) {
        let mut e = Enc::with_capacity(record_len(false, entries.len()));
        e.u48(base);
        e.u8(level as u8);
        e.u8(if matches!(entries, DeltaEntries::Leaf(_)) { KIND_LEAF } else { KIND_INTERIOR });
        e.u16(entries.len() as u16);
        e.bytes(&[0; 6]);
        match entries {
            DeltaEntries::Leaf(v) => {
                for &(idx, entry) in v {
                    let (page, crc) = entry.unwrap_or((0, 0));
                    e.u16(idx as u16);
                    e.u48(page);
                    e.u32(crc);
                }
            }
            DeltaEntries::Interior(v) => {
                for &(idx, child) in v {
                    let NodeAddr { page, delta } = child.unwrap_or_default();
                    e.u16(idx as u16);
                    e.u48(page);
                    e.u48(delta);
                }
            }
        }
        self.buf[offset..offset + e.len()].copy_from_slice(&e.buf);
        self.used = self.used.max((offset + e.len()).next_multiple_of(UNIT as usize));
        self.records += 1;
    }

    /// How many records the page holds: its reference count.
    pub(crate) fn records(&self) -> u32 {
        self.records
    }

    pub(crate) fn page(&self) -> u64 {
        self.page
    }

    /// The page's bytes, header and CRC filled in.
    pub(crate) fn seal(mut self) -> Vec<u8> {
        let mut e = Enc::with_capacity(PAGE_HEADER_LEN);
        e.u32(DELTA_MAGIC);
        e.u32(0);
        e.u64(self.page);
        e.u32(self.used as u32);
        e.u32(self.records);
        self.buf[..e.len()].copy_from_slice(&e.buf);
        let crc = Crc::of(&self.buf[8..self.used]);
        self.buf[4..8].copy_from_slice(&crc.0.to_le_bytes());
        self.buf
    }
}

/// What a node read from its base page expects of its record: where the
/// node stands and what its indexes and pages may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    pub(crate) base: u64,
    pub(crate) level: u32,
    pub(crate) leaf: bool,
    /// Indexes are below this: the leaf's span, or the fan-out.
    pub(crate) span: u64,
    /// Pages are below this.
    pub(crate) npages: u64,
}

/// Decodes the record at `addr` from `buf`, the bytes of its page, after
/// checking the page (magic, CRC, that it says it lives there) and the
/// record (that it belongs to the node expected, and its entries are in
/// order and name pages inside the file).
pub(crate) fn decode_record(buf: &[u8], addr: u64, want: Expected) -> Result<DeltaEntries> {
    let (page, offset) = location(addr, buf.len());
    let loc = || format!("delta record {addr} (page {page}, byte {offset}) of the node at page {}", want.base);
    let bad = |detail: String| Error::corruption("node delta", loc(), detail);
    let used = verify_page(buf, page, &loc)?;
    if offset < PAGE_HEADER_LEN || offset + RECORD_HEADER_LEN > used {
        return Err(bad(format!("no record at byte {offset} of {used} used")));
    }
    let mut d = Dec::new(&buf[offset..used], "node delta");
    let (base, level, kind, count) = (d.u48()?, d.u8()? as u32, d.u8()?, d.u16()? as usize);
    d.bytes(6)?;
    if base != want.base || level != want.level || (kind == KIND_LEAF) != want.leaf || kind > KIND_INTERIOR {
        return Err(bad(format!("record of the node at page {base}, level {level}, kind {kind}")));
    }
    if count == 0 || count > max_entries(buf.len()) {
        return Err(bad(format!("{count} entries")));
    }
    let mut last = None;
    let mut index = |d: &mut Dec<'_>| -> Result<u32> {
        let i = d.u16()? as u32;
        if u64::from(i) >= want.span || last.is_some_and(|l| l >= i) {
            return Err(bad(format!("entry index {i} out of order")));
        }
        last = Some(i);
        Ok(i)
    };
    let check_page = |p: u64| -> Result<()> {
        if p >= want.npages || p > MAX_PAGE {
            return Err(bad(format!("names page {p} outside the file")));
        }
        Ok(())
    };
    if want.leaf {
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let (i, p, crc) = (index(&mut d)?, d.u48()?, d.u32()?);
            check_page(p)?;
            v.push((i, (p != 0).then_some((p, crc))));
        }
        Ok(DeltaEntries::Leaf(v))
    } else {
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            let (i, p, delta) = (index(&mut d)?, d.u48()?, d.u48()?);
            check_page(p)?;
            if p == 0 && delta != 0 {
                return Err(bad(format!("index {i} removed with a delta")));
            }
            v.push((i as usize, (p != 0).then_some(NodeAddr { page: p, delta })));
        }
        Ok(DeltaEntries::Interior(v))
    }
}

/// Checks the delta page read from `page`: magic, bytes used, CRC, and
/// that it says it lives there. Returns the bytes used.
pub(crate) fn verify_page(buf: &[u8], page: u64, loc: &dyn Fn() -> String) -> Result<usize> {
    let bad = |detail: String| Error::corruption("node delta", loc(), detail);
    let mut d = Dec::new(buf, "node delta");
    if d.u32()? != DELTA_MAGIC {
        return Err(bad("bad magic".into()));
    }
    let crc = d.u32()?;
    let self_page = d.u64()?;
    let used = d.u32()? as usize;
    if !(PAGE_HEADER_LEN..=buf.len()).contains(&used) {
        return Err(bad(format!("page claims {used} bytes used")));
    }
    Crc(crc).verify(&buf[8..used], "node delta", loc)?;
    if self_page != page {
        return Err(bad(format!("page claims to live at page {self_page}")));
    }
    Ok(used)
}

/// The node `base` holds with `delta` applied: each index the record names
/// takes its entry there, or loses it.
pub(crate) fn apply(base: DecodedNode, delta: &DeltaEntries) -> Result<DecodedNode> {
    match (base, delta) {
        (DecodedNode::Leaf(entries), DeltaEntries::Leaf(changes)) => {
            let entry = |&(idx, e): &(u32, Option<(u64, u32)>)| e.map(|(page, crc)| LeafEntry { idx, page, crc });
            Ok(DecodedNode::Leaf(merge(entries, changes, |e| e.idx, |c| c.0, entry)))
        }
        (DecodedNode::Interior(children), DeltaEntries::Interior(changes)) => {
            let entry = |&(idx, c): &(usize, Option<NodeAddr>)| c.map(|a| (idx, a));
            Ok(DecodedNode::Interior(merge(children, changes, |c| c.0 as u32, |c| c.0 as u32, entry)))
        }
        _ => Err(Error::corruption("node delta", "record", "a leaf's record on an interior node, or the reverse")),
    }
}

/// Merges two lists sorted by index: `changes` replace, add or (mapping to
/// `None`) drop the entries of `base` at their indexes.
fn merge<T, C>(
    base: Vec<T>,
    changes: &[C],
    base_idx: impl Fn(&T) -> u32,
    change_idx: impl Fn(&C) -> u32,
    entry: impl Fn(&C) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(base.len() + changes.len());
    let mut changes = changes.iter().peekable();
    for b in base {
        while let Some(c) = changes.next_if(|c| change_idx(c) < base_idx(&b)) {
            out.extend(entry(c));
        }
        match changes.next_if(|c| change_idx(c) == base_idx(&b)) {
            Some(c) => out.extend(entry(c)),
            None => out.push(b),
        }
    }
    out.extend(changes.filter_map(entry));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4096;

    fn expected(base: u64, leaf: bool) -> Expected {
        Expected { base, level: 0, leaf, span: 256, npages: 1 << 20 }
    }

    #[test]
    fn records_pack_into_pages_and_read_back_by_address() {
        let leaf = DeltaEntries::Leaf(vec![(3, Some((900, 7))), (9, None)]);
        let interior = DeltaEntries::Interior(vec![(1, Some(NodeAddr { page: 70, delta: 12_345 })), (200, None)]);
        let sizes = [record_len(true, 2), record_len(false, 2)];
        let (at, pages) = pack(&sizes, BS);
        assert_eq!(pages, 1);
        let mut p = DeltaPage::new(40, BS);
        p.put(at[0].1, 11, 0, &leaf);
        p.put(at[1].1, 12, 0, &interior);
        assert_eq!(p.records(), 2);
        let buf = p.seal();
        let a0 = address(40, at[0].1, BS);
        let a1 = address(40, at[1].1, BS);
        assert_eq!(location(a1, BS), (40, at[1].1));
        assert_eq!(decode_record(&buf, a0, expected(11, true)).unwrap(), leaf);
        assert_eq!(decode_record(&buf, a1, expected(12, false)).unwrap(), interior);
        // Another node's record, the wrong kind, a wrong page, damage.
        assert!(decode_record(&buf, a0, expected(12, true)).is_err());
        assert!(decode_record(&buf, a0, expected(11, false)).is_err());
        assert!(decode_record(&buf, address(41, at[0].1, BS), expected(11, true)).is_err());
        let mut torn = buf.clone();
        torn[at[0].1 + 20] ^= 1;
        assert!(decode_record(&torn, a0, expected(11, true)).is_err());
        // An address past the records used.
        assert!(decode_record(&buf, address(40, 2048, BS), expected(11, true)).is_err());
    }

    #[test]
    fn pack_starts_a_new_page_when_a_record_does_not_fit() {
        let big = record_len(false, max_entries(BS));
        let (at, pages) = pack(&[big; 9], BS);
        let per_page = (BS - PAGE_HEADER_LEN) / big;
        assert_eq!(pages, 9usize.div_ceil(per_page));
        assert_eq!(at[per_page], (1, PAGE_HEADER_LEN));
        assert!(at.iter().all(|&(_, off)| off + big <= BS));
    }

    #[test]
    fn apply_replaces_adds_and_drops_entries() {
        let e = |idx, page| LeafEntry { idx, page, crc: page as u32 };
        let base = DecodedNode::Leaf(vec![e(1, 10), e(4, 40), e(7, 70)]);
        let delta = DeltaEntries::Leaf(vec![(0, Some((5, 5))), (4, None), (7, Some((71, 71))), (8, Some((80, 80)))]);
        let DecodedNode::Leaf(out) = apply(base, &delta).unwrap() else { panic!("a leaf") };
        assert_eq!(out, vec![e(0, 5), e(1, 10), e(7, 71), e(8, 80)]);
        // An index removed that was never there changes nothing.
        let DecodedNode::Leaf(out) = apply(DecodedNode::Leaf(out), &DeltaEntries::Leaf(vec![(3, None)])).unwrap()
        else {
            panic!("a leaf")
        };
        assert_eq!(out.len(), 4);
        assert!(apply(DecodedNode::Leaf(out), &DeltaEntries::Interior(vec![])).is_err());
    }
}
