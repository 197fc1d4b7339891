//! The write-ahead log: CRC-framed batches of records in a chain of
//! segments that live in the data file's own pages.
//!
//! Because the WAL shares the data file with the blocks it maps, one
//! `fdatasync` makes both durable: a flush costs one sync.
//!
//! Records are numbered by LSN. They are appended to an in-memory batch
//! under the store's state lock (so LSN order is the order changes were made
//! in memory), and written as one batch at a time, always starting on a
//! [`SECTOR`] boundary so a later write never touches bytes an earlier sync
//! made durable. A batch header carries `durable_lsn`: every record below it
//! was known durable when the batch was written. Recovery uses it to know
//! which records' data blocks must be verified.

use crate::backend::StorageFile;
use crate::error::{Error, Result};
use crate::format::{BatchHeader, Dec, Enc, LogStart, SegmentHeader, BATCH_HEADER_LEN, SECTOR};
use std::sync::Arc;

/// A change the log carries. The log frames, numbers and checksums records;
/// what they mean belongs to the layer above.
pub(crate) trait LogRecord: Sized {
    /// Appends the record's bytes.
    fn encode(&self, e: &mut Enc);
    /// Reads one record back; fails on anything malformed, never panics.
    fn decode(d: &mut Dec<'_>) -> Result<Self>;
}

/// Decodes every record of a verified batch payload.
pub(crate) fn decode_batch<R: LogRecord>(payload: &[u8], count: u32, version: u32) -> Result<Vec<R>> {
    let mut d = Dec::of_version(payload, "WAL batch", version);
    let recs = (0..count).map(|_| R::decode(&mut d)).collect::<Result<Vec<_>>>()?;
    if d.remaining() != 0 {
        return Err(d.bad("trailing bytes after the last record"));
    }
    Ok(recs)
}

/// Layout of the WAL inside the data file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogGeometry {
    pub(crate) data_start: u64,
    pub(crate) block_size: u64,
    pub(crate) segment_pages: u64,
}

impl LogGeometry {
    pub(crate) fn new(data_start: u64, block_size: u32) -> LogGeometry {
        let block_size = block_size as u64;
        let segment_pages = ((1u64 << 20) / block_size).max(2);
        LogGeometry { data_start, block_size, segment_pages }
    }
    pub(crate) fn segment_bytes(&self) -> u64 {
        self.segment_pages * self.block_size
    }
    fn segment_offset(&self, page: u64) -> u64 {
        self.data_start + page * self.block_size
    }
    /// Prepares the segment at `page` (pages the caller allocated and
    /// reserved) by filling it with zeroes. The fill is for speed only: a segment carved from
    /// fallocated space is unwritten to the file system, and a sync after
    /// the first write into each of its blocks must also convert that
    /// extent, an extra metadata write on every flush. Written once here,
    /// every later batch is a plain overwrite. A failed fill is ignored: the
    /// log never relies on what a segment held before.
    pub(crate) fn zero_segment(&self, page: u64, file: &dyn StorageFile) {
        let _ = file.write_at(&vec![0u8; self.segment_bytes() as usize], self.segment_offset(page));
    }
    /// The largest payload one batch may carry so it fits in a fresh segment.
    pub(crate) fn max_payload(&self) -> usize {
        (self.segment_bytes() - SECTOR) as usize - BATCH_HEADER_LEN
    }
}

/// The writing end of the log.
#[derive(Debug)]
pub(crate) struct Wal {
    file: Arc<dyn StorageFile>,
    geo: LogGeometry,
    log_id: u64,
    seg_page: u64,
    seg_seq: u64,
    seg_next: u64,
    /// Write offset inside the current segment.
    offset: u64,
    buf: Enc,
    buf_count: u32,
    buf_first_lsn: u64,
    next_lsn: u64,
    durable_lsn: u64,
    /// Preallocated segments (first page of each), reserved in the space map.
    pub(crate) spares: Vec<u64>,
    /// Segments written since the current checkpoint's start, oldest first;
    /// the last one is the current segment.
    segments: Vec<u64>,
    /// Bytes of WAL written since the last checkpoint started.
    pub(crate) bytes_since_checkpoint: u64,
    /// Batch size at which appends write the batch out.
    buffer_limit: usize,
    failed: bool,
}

impl Wal {
    /// Starts a new log in the segment at `first` (with `next` preallocated
    /// after it) and writes the first segment header.
    pub(crate) fn start(
        file: Arc<dyn StorageFile>,
        geo: LogGeometry,
        log_id: u64,
        first: u64,
        next: u64,
        lsn: u64,
    ) -> Result<Wal> {
        let hdr = SegmentHeader { log_id, seq: 1, next_page: next };
        file.write_at(&hdr.encode(), geo.segment_offset(first))
            .map_err(|e| Error::io("writing a WAL segment header", e))?;
        Ok(Wal {
            file,
            geo,
            log_id,
            seg_page: first,
            seg_seq: 1,
            seg_next: next,
            offset: SECTOR,
            buf: Enc::default(),
            buf_count: 0,
            buf_first_lsn: lsn,
            next_lsn: lsn,
            durable_lsn: lsn,
            spares: Vec::new(),
            segments: vec![first],
            bytes_since_checkpoint: 0,
            buffer_limit: (256 << 10).min(geo.max_payload() / 2),
            failed: false,
        })
    }

    /// The LSN the next record will get.
    pub(crate) fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Spare segments that must be on hand before `incoming` bytes of
    /// records are appended: a batch holds at least half a segment's
    /// payload before a segment switch, plus two for slack.
    pub(crate) fn spares_needed(&self, incoming: usize) -> usize {
        2 + (self.buf.len() + incoming).div_ceil(self.geo.max_payload() / 2)
    }

    /// Whether one record of `len` encoded bytes fits in a batch.
    pub(crate) fn fits(&self, len: usize) -> bool {
        len <= self.geo.max_payload()
    }

    /// Adds a record to the open batch and returns its LSN. The batch is
    /// written out (not synced) when it reaches the buffer limit.
    pub(crate) fn append(&mut self, rec: &impl LogRecord) -> Result<u64> {
        let before = self.buf.len();
        rec.encode(&mut self.buf);
        if self.buf.len() - before > self.geo.max_payload() {
            self.buf.buf.truncate(before);
            return Err(Error::invalid("a WAL record does not fit in one segment"));
        }
        if self.buf.len() > self.buffer_limit && before > 0 {
            let tail = self.buf.buf.split_off(before);
            self.write_out()?;
            self.buf.buf = tail;
        }
        if self.buf_count == 0 {
            self.buf_first_lsn = self.next_lsn;
        }
        self.buf_count += 1;
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Writes the open batch to its place in the log without syncing.
    pub(crate) fn write_out(&mut self) -> Result<()> {
        if self.buf_count == 0 {
            return Ok(());
        }
        if self.failed {
            return Err(Error::Poisoned { during: "writing the WAL".into() });
        }
        let hdr = BatchHeader {
            log_id: self.log_id,
            first_lsn: self.buf_first_lsn,
            count: self.buf_count,
            payload_len: self.buf.len() as u32,
            durable_lsn: self.durable_lsn,
        };
        let bytes = hdr.encode_with(&self.buf.buf);
        if self.offset + bytes.len() as u64 > self.geo.segment_bytes() {
            self.next_segment()?;
        }
        let at = self.geo.segment_offset(self.seg_page) + self.offset;
        if let Err(e) = self.file.write_at(&bytes, at) {
            self.failed = true;
            return Err(Error::io("writing the WAL", e));
        }
        self.offset += bytes.len() as u64;
        self.bytes_since_checkpoint += bytes.len() as u64;
        self.buf.buf.clear();
        self.buf_count = 0;
        Ok(())
    }

    fn next_segment(&mut self) -> Result<()> {
        let next = self
            .spares
            .pop()
            .ok_or_else(|| Error::NoSpace { during: "extending the WAL (no spare segment)".into() })?;
        let hdr = SegmentHeader { log_id: self.log_id, seq: self.seg_seq + 1, next_page: next };
        let page = self.seg_next;
        if let Err(e) = self.file.write_at(&hdr.encode(), self.geo.segment_offset(page)) {
            self.failed = true;
            self.spares.push(next);
            return Err(Error::io("writing a WAL segment header", e));
        }
        self.seg_page = page;
        self.seg_seq += 1;
        self.seg_next = next;
        self.offset = SECTOR;
        self.segments.push(page);
        Ok(())
    }

    /// Whether the log has moved past segments that the next checkpoint
    /// frees.
    pub(crate) fn has_retired_segments(&self) -> bool {
        self.segments.len() > 1
    }

    /// Records that every record below `lsn` is durable.
    pub(crate) fn mark_durable(&mut self, lsn: u64) {
        self.durable_lsn = self.durable_lsn.max(lsn);
    }

    /// Marks the WAL failed: after a failed sync nothing written since the
    /// last good sync can be trusted, so no further batch is written.
    pub(crate) fn poison(&mut self) {
        self.failed = true;
    }

    /// Begins a checkpoint: writes the open batch out and returns where
    /// replay must start for a checkpoint of the state as of now, plus the
    /// segments that only older records use (free once the checkpoint is
    /// durable).
    pub(crate) fn checkpoint_start(&mut self) -> Result<(LogStart, Vec<u64>)> {
        self.write_out()?;
        let start = LogStart {
            log_id: self.log_id,
            segment_page: self.seg_page,
            segment_seq: self.seg_seq,
            offset: self.offset,
            lsn: self.next_lsn,
        };
        let cur = self.segments.pop().expect("current segment");
        let retired = std::mem::replace(&mut self.segments, vec![cur]);
        self.bytes_since_checkpoint = 0;
        Ok((start, retired))
    }
}

/// What recovery found in the log.
#[derive(Debug)]
pub(crate) struct LogContents<R> {
    pub(crate) records: Vec<(u64, R)>,
    /// Every record below this LSN is known to have been durable.
    pub(crate) durable_lsn: u64,
    /// First page of every segment the log passed through.
    pub(crate) segments: Vec<u64>,
    pub(crate) batches: u64,
}

/// Reads the log from `start` to its end: the first batch that is missing,
/// torn, from another log, or out of sequence. `version` is the format
/// version of the superblock that points at it.
pub(crate) fn read_log<R: LogRecord>(
    file: &dyn StorageFile,
    geo: LogGeometry,
    start: LogStart,
    npages: u64,
    version: u32,
) -> Result<LogContents<R>> {
    let mut out = LogContents { records: Vec::new(), durable_lsn: start.lsn, segments: Vec::new(), batches: 0 };
    let seg_bytes = geo.segment_bytes() as usize;
    let mut buf = vec![0u8; seg_bytes];
    let mut page = start.segment_page;
    let mut seq = start.segment_seq;
    let mut offset = start.offset as usize;
    let mut lsn = start.lsn;
    let read_segment = |page: u64, buf: &mut [u8]| -> Result<Option<SegmentHeader>> {
        if page == 0 || page + geo.segment_pages > npages {
            return Ok(None);
        }
        // Appended in place: what a failed write-back left in the cache
        // must not be read as the log (see `engine::open`).
        file.drop_cache_range(geo.segment_offset(page), buf.len() as u64)
            .map_err(|e| Error::io(format!("dropping WAL segment {page}'s cached pages"), e))?;
        file.read_at(buf, geo.segment_offset(page))
            .map_err(|e| Error::io(format!("reading WAL segment at page {page}"), e))?;
        Ok(SegmentHeader::decode(buf))
    };
    let Some(mut hdr) = read_segment(page, &mut buf)?.filter(|h| h.log_id == start.log_id && h.seq == seq) else {
        return Err(Error::corruption(
            "WAL",
            format!("segment at page {page}"),
            "the checkpoint's log start is not a valid segment",
        ));
    };
    out.segments.push(page);
    loop {
        match parse_batch(&buf, offset, start.log_id, lsn, version) {
            Some((bh, recs, len)) => {
                out.durable_lsn = out.durable_lsn.max(bh.durable_lsn.min(lsn));
                lsn += recs.len() as u64;
                out.records.extend(recs.into_iter().enumerate().map(|(i, r)| (bh.first_lsn + i as u64, r)));
                out.batches += 1;
                offset += len;
            }
            None => {
                // Either the writer moved on to the next segment here, or this
                // is the end of the log; the next segment decides.
                let next = hdr.next_page;
                let mut nbuf = vec![0u8; seg_bytes];
                match read_segment(next, &mut nbuf)? {
                    Some(h) if h.log_id == start.log_id && h.seq == seq + 1 => {
                        if parse_batch::<R>(&nbuf, SECTOR as usize, start.log_id, lsn, version).is_none() {
                            break;
                        }
                        buf = nbuf;
                        hdr = h;
                        page = next;
                        seq += 1;
                        offset = SECTOR as usize;
                        out.segments.push(page);
                    }
                    _ => break,
                }
            }
        }
    }
    // The log ends at the first batch that does not verify. That is a torn
    // tail when nothing later vouches for it; but if a later batch of this
    // log (in the rest of this segment, or in the next one, whatever its
    // header) says records from `lsn` on were durable, the end is damage
    // to synced data and must not pass for a clean end.
    let mut next_buf = vec![0u8; seg_bytes];
    let next = hdr.next_page;
    let next_ok = next != 0 && next + geo.segment_pages <= npages;
    if next_ok {
        file.read_at(&mut next_buf, geo.segment_offset(next))
            .map_err(|e| Error::io(format!("reading WAL segment at page {next}"), e))?;
    }
    let here = vouching_batch(&buf, offset + SECTOR as usize, start.log_id, lsn).map(|o| (page, o));
    let there =
        if next_ok { vouching_batch(&next_buf, SECTOR as usize, start.log_id, lsn).map(|o| (next, o)) } else { None };
    if let Some((p, o)) = here.or(there) {
        return Err(Error::corruption(
            "WAL",
            format!("segment at page {page}, byte {offset} (record {lsn})"),
            format!("the log breaks here, but the batch at page {p} byte {o} shows record {lsn} was synced"),
        ));
    }
    // Durable markers can only vouch for records that exist.
    out.durable_lsn = out.durable_lsn.min(lsn);
    let _ = page;
    Ok(out)
}

/// Finds, from `from` on, a valid batch of `log_id` that lies after record
/// `lsn` and vouches that record `lsn` was durable.
fn vouching_batch(seg: &[u8], from: usize, log_id: u64, lsn: u64) -> Option<usize> {
    (from..seg.len()).step_by(SECTOR as usize).find(|&off| {
        let Some((bh, crc)) = BatchHeader::decode(&seg[off..]) else { return false };
        let end = off + BATCH_HEADER_LEN + bh.payload_len as usize;
        bh.log_id == log_id
            && bh.first_lsn > lsn
            && bh.durable_lsn > lsn
            && end <= seg.len()
            && BatchHeader::verify(crc, &seg[off..end])
    })
}

pub(crate) fn parse_batch<R: LogRecord>(
    seg: &[u8],
    offset: usize,
    log_id: u64,
    lsn: u64,
    version: u32,
) -> Option<(BatchHeader, Vec<R>, usize)> {
    let (bh, crc) = BatchHeader::decode(seg.get(offset..)?)?;
    if bh.log_id != log_id || bh.first_lsn != lsn || bh.count == 0 {
        return None;
    }
    let len = bh.padded_len() as usize;
    let end = offset + BATCH_HEADER_LEN + bh.payload_len as usize;
    if offset + len > seg.len() || !BatchHeader::verify(crc, &seg[offset..end]) {
        return None;
    }
    let recs = decode_batch(&seg[offset + BATCH_HEADER_LEN..end], bh.count, version).ok()?;
    Some((bh, recs, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StorageDir;
    use crate::format::FORMAT_VERSION;
    use crate::testing::SimDir;

    /// A record of the test's own: the log does not care what it carries.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Rec {
        id: u64,
        body: Vec<u32>,
    }

    impl LogRecord for Rec {
        fn encode(&self, e: &mut Enc) {
            e.u64(self.id);
            e.u32(self.body.len() as u32);
            self.body.iter().for_each(|&x| e.u32(x));
        }

        fn decode(d: &mut Dec<'_>) -> Result<Rec> {
            let id = d.u64()?;
            let n = d.u32()?;
            Ok(Rec { id, body: (0..n).map(|_| d.u32()).collect::<Result<_>>()? })
        }
    }

    fn setup() -> (Arc<dyn StorageFile>, LogGeometry) {
        let f = SimDir::new().open_file("d", true).unwrap();
        (f, LogGeometry::new(8192, 4096))
    }

    fn map(i: u64) -> Rec {
        Rec { id: i, body: vec![i as u32; 3] }
    }

    #[test]
    fn records_round_trip_through_segments() {
        let (f, geo) = setup();
        let sp = geo.segment_pages;
        let mut w = Wal::start(f.clone(), geo, 77, 1, 1 + sp, 5).unwrap();
        w.spares = (2..40).map(|i| i * sp).collect();
        let start = LogStart { log_id: 77, segment_page: 1, segment_seq: 1, offset: SECTOR, lsn: 5 };
        let mut expect = Vec::new();
        for i in 0..60_000u64 {
            let r = map(i);
            assert_eq!(w.append(&r).unwrap(), 5 + i);
            expect.push((5 + i, r));
            if i % 1000 == 999 {
                w.write_out().unwrap();
            }
        }
        w.write_out().unwrap();
        let got = read_log::<Rec>(&*f, geo, start, 100 * sp, FORMAT_VERSION).unwrap();
        assert!(got.segments.len() > 1, "the log spans segments");
        assert_eq!(got.records, expect);
    }

    /// Regression: a single large change could need more WAL segments than
    /// the two spares kept on hand, and failed half-applied.
    #[test]
    fn spares_needed_covers_a_burst_of_records_without_write_outs() {
        let (f, geo) = setup();
        let sp = geo.segment_pages;
        let mut w = Wal::start(f.clone(), geo, 3, 1, 1 + sp, 1).unwrap();
        let recs: Vec<Rec> = (0..2000).map(|i| Rec { id: i, body: vec![1; 400] }).collect();
        let mut e = Enc::default();
        recs.iter().for_each(|r| r.encode(&mut e));
        let need = w.spares_needed(e.len());
        assert!(need > 2, "the burst spans several segments");
        w.spares = (0..need as u64).map(|i| (i + 2) * sp).collect();
        for r in &recs {
            w.append(r).unwrap();
        }
        w.write_out().unwrap();
    }

    #[test]
    fn a_torn_batch_ends_the_log() {
        let (f, geo) = setup();
        let sp = geo.segment_pages;
        let mut w = Wal::start(f.clone(), geo, 9, 1, 1 + sp, 1).unwrap();
        w.append(&map(1)).unwrap();
        w.write_out().unwrap();
        w.append(&map(2)).unwrap();
        w.write_out().unwrap();
        w.append(&map(3)).unwrap();
        w.write_out().unwrap();
        // Damage the second batch: the third must not be replayed either.
        f.write_at(&[0xff], 8192 + 4096 + SECTOR + 4096 + 50).unwrap();
        let start = LogStart { log_id: 9, segment_page: 1, segment_seq: 1, offset: SECTOR, lsn: 1 };
        let got = read_log::<Rec>(&*f, geo, start, 10 * sp, FORMAT_VERSION).unwrap();
        assert_eq!(got.records, vec![(1, map(1))]);
    }

    #[test]
    fn records_from_another_log_are_ignored() {
        let (f, geo) = setup();
        let sp = geo.segment_pages;
        let mut w = Wal::start(f.clone(), geo, 1, 1, 1 + sp, 1).unwrap();
        w.append(&map(1)).unwrap();
        w.write_out().unwrap();
        let mut w2 = Wal::start(f.clone(), geo, 2, 1, 1 + sp, 1).unwrap();
        w2.append(&map(9)).unwrap();
        let start = LogStart { log_id: 2, segment_page: 1, segment_seq: 1, offset: SECTOR, lsn: 1 };
        // The old log's batch sits where log 2 expects its first batch.
        let got = read_log::<Rec>(&*f, geo, start, 10 * sp, FORMAT_VERSION).unwrap();
        assert!(got.records.is_empty());
    }
}
