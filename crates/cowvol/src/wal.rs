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
use crate::format::{BatchHeader, Dec, Enc, LogLink, LogSeal, LogStart, SegmentHeader, BATCH_HEADER_LEN, SECTOR};
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
    /// reserved) by filling it with zeroes. The fill is for speed only: a
    /// segment carved from fallocated space is unwritten to the file
    /// system, and a sync after the first write into each of its blocks
    /// must also convert that extent, an extra metadata write on every
    /// flush. Written once here, every later batch is a plain overwrite. A
    /// failed fill is ignored: the log never relies on what a segment held
    /// before.
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
    /// What a log carried on at open still has to write before its first
    /// batch: see [`Wal::resume`].
    pending: Option<PendingStart>,
    /// A batch of records was written since the last seal or checkpoint.
    unsealed: bool,
    /// The first sector of `seg_next` holds this log's seal, which the next
    /// batch must clear: see [`Wal::write_seal`].
    sealed: bool,
}

/// The writes that start a log carried on at open, put off until the first
/// batch so that an open that changes nothing writes nothing.
#[derive(Debug)]
struct PendingStart {
    /// The new log's first segment header.
    header: Vec<u8>,
    /// The link at the old log's end, and where it goes.
    link: Vec<u8>,
    link_at: u64,
}

/// Where a log read at open ended: the place the next batch would have
/// gone, and what a writer carrying the log on needs to know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogTail {
    pub(crate) log_id: u64,
    pub(crate) segment_page: u64,
    /// Byte offset inside that segment.
    pub(crate) offset: u64,
    /// The LSN the next record gets.
    pub(crate) lsn: u64,
    /// The segment that segment's header set aside to follow it.
    pub(crate) next_page: u64,
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
        let wal = Wal::new(file, geo, log_id, first, next, lsn);
        let hdr = SegmentHeader { log_id, seq: 1, next_page: next, prev_log_id: 0 };
        wal.file
            .write_at(&hdr.encode(), geo.segment_offset(first))
            .map_err(|e| Error::io("writing a WAL segment header", e))?;
        Ok(wal)
    }

    /// Carries on the log that open read, which ended at `tail`, instead of
    /// starting over after a checkpoint. The old log's segments since its
    /// checkpoint stay in use (they are `old_segments`; the next checkpoint
    /// retires them); new records go to a new log, `log_id`, in the segment
    /// the tail's header set aside to follow it (`tail.next_page`, which
    /// the caller has claimed; `next` is preallocated after it), and a
    /// [`LogLink`] written at the old log's end leads replay there.
    ///
    /// Why a new log and not more batches at the tail: a crash can leave a
    /// torn tail, and behind it batches the disk kept although the sync that
    /// would have made them count never finished. Written over, such a
    /// stale batch could line up with the new ones (same log, the next LSN)
    /// and be replayed as theirs. A log of a new identity cannot be confused
    /// with anything the old one left. Why that segment: recovery that finds
    /// the link damaged still looks there (see `LogEnd::check`), so the
    /// damage is reported rather than taken for the log's end.
    ///
    /// Nothing is written until the first batch: the link, the new segment's
    /// header and the batch then go out together and one sync makes them
    /// durable. The caller guarantees the link fits in the tail's segment
    /// ([`Wal::link_fits`]) and that every record before `tail.lsn` is
    /// durable.
    pub(crate) fn resume(
        file: Arc<dyn StorageFile>,
        geo: LogGeometry,
        tail: LogTail,
        old_segments: Vec<u64>,
        log_id: u64,
        next: u64,
    ) -> Wal {
        let first = tail.next_page;
        let mut wal = Wal::new(file, geo, log_id, first, next, tail.lsn);
        let link = LogLink { log_id: tail.log_id, lsn: tail.lsn, new_log_id: log_id, segment_page: first };
        wal.pending = Some(PendingStart {
            header: SegmentHeader { log_id, seq: 1, next_page: next, prev_log_id: tail.log_id }.encode(),
            link: link.encode(),
            link_at: geo.segment_offset(tail.segment_page) + tail.offset,
        });
        wal.segments = old_segments.into_iter().chain([first]).collect();
        wal
    }

    /// Whether a link fits at the end of a log read at open.
    pub(crate) fn link_fits(geo: &LogGeometry, tail: &LogTail) -> bool {
        tail.offset + SECTOR <= geo.segment_bytes()
    }

    fn new(file: Arc<dyn StorageFile>, geo: LogGeometry, log_id: u64, first: u64, next: u64, lsn: u64) -> Wal {
        Wal {
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
            pending: None,
            unsealed: false,
            sealed: false,
        }
    }

    /// Writes what a carried-on log put off. `with_link`: the link too (a
    /// checkpoint that starts the log afresh in the new segment needs only
    /// the header; replay will start there).
    fn write_pending(&mut self, with_link: bool) -> Result<()> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        let mut result = self.file.write_at(&p.header, self.geo.segment_offset(self.seg_page));
        if with_link && result.is_ok() {
            result = self.file.write_at(&p.link, p.link_at);
        }
        result.map_err(|e| {
            self.failed = true;
            Error::io("starting the carried-on WAL", e)
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
        self.write_pending(true)?;
        self.clear_seal()?;
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
        self.unsealed = true;
        Ok(())
    }

    /// Seals the log (a [`LogSeal`] in the first sector of the segment set
    /// aside to follow the current one) when a batch was written since the
    /// last seal or checkpoint and every record is durable, and says whether
    /// it did; nobody syncs it (`Engine::seal_log` says why). Without it, damage to the last batch of
    /// a log left for the next open to replay would read as the log's end,
    /// losing synced records silently; and a clean end would need a search
    /// of the segments past it for batches that say otherwise. (When
    /// records are still on their way, their writer's own close seals them.)
    ///
    /// `after_checkpoint`: seal even with no batch since the last seal or
    /// checkpoint. A store closed by a checkpoint seals the empty log after
    /// it, so that the next open finds a clean end without searching past
    /// it.
    pub(crate) fn write_seal(&mut self, after_checkpoint: bool) -> Result<bool> {
        let anything = self.unsealed || after_checkpoint;
        if !anything || self.buf_count > 0 || self.durable_lsn != self.next_lsn || self.failed {
            return Ok(false);
        }
        let seal = LogSeal { log_id: self.log_id, end_lsn: self.next_lsn };
        self.file.write_at(&seal.encode(), self.geo.segment_offset(self.seg_next)).map_err(|e| {
            self.failed = true;
            Error::io("sealing the WAL", e)
        })?;
        self.unsealed = false;
        self.sealed = true;
        Ok(true)
    }

    /// A batch after a seal makes it stale: it is cleared in the same write
    /// window as the batch, so no sync can make the batch durable and leave
    /// a seal that says the log ended before it.
    fn clear_seal(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.sealed) {
            return Ok(());
        }
        self.file.write_at(&vec![0u8; SECTOR as usize], self.geo.segment_offset(self.seg_next)).map_err(|e| {
            self.failed = true;
            Error::io("clearing the WAL's seal", e)
        })
    }

    fn next_segment(&mut self) -> Result<()> {
        let next = self
            .spares
            .pop()
            .ok_or_else(|| Error::NoSpace { during: "extending the WAL (no spare segment)".into() })?;
        let hdr = SegmentHeader { log_id: self.log_id, seq: self.seg_seq + 1, next_page: next, prev_log_id: 0 };
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

    /// Segments the log has used since the last checkpoint began.
    pub(crate) fn segments_since_checkpoint(&self) -> usize {
        self.segments.len()
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
        // Replay will start in the current segment: it needs its header.
        self.write_pending(false)?;
        self.unsealed = false;
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
    /// Bytes of batches read.
    pub(crate) bytes: u64,
    /// Where the log ended.
    pub(crate) tail: LogTail,
    /// Whether it ended at a seal for exactly its last record: the clean
    /// end its writer left, every record durable.
    pub(crate) sealed: bool,
}

/// One segment, read from the disk as far as the reader needs it.
struct SegmentReader<'a> {
    file: &'a dyn StorageFile,
    geo: LogGeometry,
    page: u64,
    buf: Vec<u8>,
    /// Bytes read so far from the segment's start.
    have: usize,
}

impl<'a> SegmentReader<'a> {
    /// Reads the start of the segment at `page`, or `None` when it lies
    /// outside the file.
    fn open(file: &'a dyn StorageFile, geo: LogGeometry, page: u64, npages: u64) -> Result<Option<Self>> {
        if page == 0 || page.checked_add(geo.segment_pages).is_none_or(|end| end > npages) {
            return Ok(None);
        }
        let mut r = SegmentReader { file, geo, page, buf: vec![0u8; geo.segment_bytes() as usize], have: 0 };
        r.ensure(SECTOR as usize)?;
        Ok(Some(r))
    }

    /// Makes sure the first `upto` bytes (at most the segment) are read:
    /// at least twice what was read before, so a long log costs a few reads
    /// per segment, while the end of a short one costs a sector or two.
    /// Appended in place: what a failed write-back left in the cache must
    /// not be read as the log (see `engine::open`), so each piece's cached
    /// pages are dropped first.
    fn ensure(&mut self, upto: usize) -> Result<()> {
        let upto = upto.min(self.buf.len());
        if upto <= self.have {
            return Ok(());
        }
        let to = upto.max(2 * self.have).next_multiple_of(SECTOR as usize).min(self.buf.len());
        let at = self.geo.segment_offset(self.page) + self.have as u64;
        let page = self.page;
        self.file
            .drop_cache_range(at, (to - self.have) as u64)
            .map_err(|e| Error::io(format!("dropping WAL segment {page}'s cached pages"), e))?;
        self.file
            .read_at(&mut self.buf[self.have..to], at)
            .map_err(|e| Error::io(format!("reading WAL segment at page {page}"), e))?;
        self.have = to;
        Ok(())
    }

    fn header(&self, version: u32) -> Option<SegmentHeader> {
        SegmentHeader::decode(&self.buf, version)
    }

    /// The batch of `log_id` starting at `offset` with record `lsn`, read
    /// as far as its header says it goes.
    fn batch<R: LogRecord>(
        &mut self,
        offset: usize,
        log_id: u64,
        lsn: u64,
        version: u32,
    ) -> Result<Option<(BatchHeader, Vec<R>, usize)>> {
        self.ensure(offset + BATCH_HEADER_LEN)?;
        if let Some((bh, _)) = self.buf.get(offset..).and_then(BatchHeader::decode) {
            self.ensure(offset.saturating_add(bh.padded_len() as usize))?;
        }
        Ok(parse_batch(&self.buf[..self.have], offset, log_id, lsn, version))
    }

    /// The link that ends log `log_id` at record `lsn`, if one is at `offset`.
    fn link(&mut self, offset: usize, log_id: u64, lsn: u64) -> Result<Option<LogLink>> {
        self.ensure(offset + SECTOR as usize)?;
        Ok(parse_link(&self.buf[..self.have], offset, log_id, lsn))
    }

    /// The whole segment.
    fn all(&mut self) -> Result<&[u8]> {
        self.ensure(self.buf.len())?;
        Ok(&self.buf)
    }
}

/// Reads the log from `start` to its end: the first batch that is missing,
/// torn, from another log, or out of sequence. `version` is the format
/// version of the superblock that points at it. A [`LogLink`] where the
/// next batch would be leads on to the log it names.
pub(crate) fn read_log<R: LogRecord>(
    file: &dyn StorageFile,
    geo: LogGeometry,
    start: LogStart,
    npages: u64,
    version: u32,
) -> Result<LogContents<R>> {
    let (mut log_id, mut seq, mut lsn) = (start.log_id, start.segment_seq, start.lsn);
    let mut offset = start.offset as usize;
    let first = SegmentReader::open(file, geo, start.segment_page, npages)?;
    let Some((mut seg, mut hdr)) =
        first.and_then(|r| r.header(version).map(|h| (r, h))).filter(|(_, h)| h.log_id == log_id && h.seq == seq)
    else {
        return Err(Error::corruption(
            "WAL",
            format!("segment at page {}", start.segment_page),
            "the checkpoint's log start is not a valid segment",
        ));
    };
    let mut out = LogContents {
        records: Vec::new(),
        durable_lsn: start.lsn,
        segments: vec![seg.page],
        batches: 0,
        bytes: 0,
        tail: LogTail { log_id, segment_page: seg.page, offset: start.offset, lsn, next_page: hdr.next_page },
        sealed: false,
    };
    // A link whose new segment does not verify: the end of the log, but
    // that segment is searched for batches that vouch for what is missing.
    let mut headless_link: Option<LogLink> = None;
    // The segment set aside after the last one, when the loop read it to
    // decide the log does not go on there: the end check reads it again.
    let mut after: Option<SegmentReader<'_>> = None;
    loop {
        if let Some((bh, recs, len)) = seg.batch::<R>(offset, log_id, lsn, version)? {
            out.durable_lsn = out.durable_lsn.max(bh.durable_lsn.min(lsn));
            lsn += recs.len() as u64;
            out.records.extend(recs.into_iter().enumerate().map(|(i, r)| (bh.first_lsn + i as u64, r)));
            out.batches += 1;
            out.bytes += len as u64;
            offset += len;
            continue;
        }
        if let Some(link) = seg.link(offset, log_id, lsn)? {
            if out.segments.contains(&link.segment_page) {
                return Err(Error::corruption(
                    "WAL",
                    format!("link at page {}, byte {offset}", seg.page),
                    format!("it leads back to segment {}, which the log has passed through", link.segment_page),
                ));
            }
            let next = SegmentReader::open(file, geo, link.segment_page, npages)?;
            match next.and_then(|r| r.header(version).map(|h| (r, h))) {
                Some((r, h)) if h.log_id == link.new_log_id && h.seq == 1 => {
                    (seg, hdr, seq, offset, log_id) = (r, h, 1, SECTOR as usize, h.log_id);
                    out.segments.push(seg.page);
                    continue;
                }
                _ => {
                    headless_link = Some(link);
                    break;
                }
            }
        }
        // Either the writer moved on to the next segment here, or this is
        // the end of the log; the next segment decides.
        let Some(mut next) = SegmentReader::open(file, geo, hdr.next_page, npages)? else { break };
        if let Some(h) = next.header(version).filter(|h| h.log_id == log_id && h.seq == seq + 1) {
            let goes_on = next.batch::<R>(SECTOR as usize, log_id, lsn, version)?.is_some()
                || next.link(SECTOR as usize, log_id, lsn)?.is_some();
            if goes_on {
                (seg, hdr, offset) = (next, h, SECTOR as usize);
                seq += 1;
                out.segments.push(seg.page);
                continue;
            }
        }
        after = Some(next);
        break;
    }
    out.tail = LogTail { log_id, segment_page: seg.page, offset: offset as u64, lsn, next_page: hdr.next_page };
    let end = LogEnd { seg: &mut seg, offset, log_id, lsn, next: hdr.next_page, after, headless_link };
    if end.check(file, geo, npages, version)? {
        // Sealed: every record was durable when the log was closed.
        out.durable_lsn = lsn;
        out.sealed = true;
    }
    // Durable markers can only vouch for records that exist.
    out.durable_lsn = out.durable_lsn.min(lsn);
    Ok(out)
}

/// Where [`read_log`] found the log's end, and what it knows past it.
struct LogEnd<'s, 'f> {
    seg: &'s mut SegmentReader<'f>,
    offset: usize,
    log_id: u64,
    lsn: u64,
    /// The segment set aside to follow the last one, and its reader if
    /// [`read_log`] already has one.
    next: u64,
    after: Option<SegmentReader<'f>>,
    headless_link: Option<LogLink>,
}

impl LogEnd<'_, '_> {
    /// The log ends at the first batch that does not verify. A seal for
    /// exactly this record says the end is the clean one the writer left.
    /// Otherwise the end is a torn tail when nothing later vouches for it;
    /// but if a seal for a later record, or a later batch of this log (in
    /// the rest of this segment, in the next one whatever its header, or in
    /// the segment a link at the end names), or of a log carrying this one
    /// on in the next segment (its header names this log), says records
    /// from `lsn` on were durable, the end is damage to synced data and
    /// must not pass for a clean end. Returns whether the end is sealed.
    fn check(self, file: &dyn StorageFile, geo: LogGeometry, npages: u64, version: u32) -> Result<bool> {
        let LogEnd { seg, offset, log_id, lsn, next, after, headless_link } = self;
        let opened = match after {
            Some(r) => Some(r),
            None => SegmentReader::open(file, geo, next, npages)?,
        };
        let Some(mut next_seg) = opened else {
            // Segments are allocated inside the file, which never shrinks.
            return Err(Error::corruption(
                "WAL",
                format!("segment at page {}", seg.page),
                format!(
                    "the segment set aside to follow it (page {next}) lies outside the file: is the file truncated?"
                ),
            ));
        };
        let seal = LogSeal::decode(&next_seg.buf).filter(|s| s.log_id == log_id);
        let mut vouchers = Vec::new();
        match seal {
            Some(s) if s.end_lsn == lsn => return Ok(true),
            Some(s) if s.end_lsn > lsn => vouchers.push((next, 0)),
            _ => {}
        }
        let page = seg.page;
        vouchers.extend(vouching_batch(seg.all()?, offset + SECTOR as usize, log_id, lsn).map(|o| (page, o)));
        let successor = next_seg.header(version).filter(|h| h.seq == 1 && h.prev_log_id == log_id);
        let b = next_seg.all()?;
        vouchers.extend(vouching_batch(b, SECTOR as usize, log_id, lsn).map(|o| (next, o)));
        // A carried-on log starts in this log's next segment: a damaged
        // link must not hide it, nor its own seal.
        if let Some(h) = successor {
            vouchers.extend(vouching_batch(b, SECTOR as usize, h.log_id, lsn).map(|o| (next, o)));
            vouchers.extend(sealed_past(file, geo, npages, h.next_page, h.log_id, lsn)?);
        }
        if let Some(link) = headless_link {
            if let Some(mut r) = SegmentReader::open(file, geo, link.segment_page, npages)? {
                let b = r.all()?;
                vouchers
                    .extend(vouching_batch(b, SECTOR as usize, link.new_log_id, lsn).map(|o| (link.segment_page, o)));
            }
        }
        match vouchers.first() {
            Some((p, o)) => Err(Error::corruption(
                "WAL",
                format!("segment at page {page}, byte {offset} (record {lsn})"),
                format!("the log breaks here, but the WAL at page {p} byte {o} shows record {lsn} was synced"),
            )),
            None => Ok(false),
        }
    }
}

/// A seal of `log_id` at the start of segment `page` that vouches for
/// record `lsn`, as (page, byte 0).
fn sealed_past(
    file: &dyn StorageFile,
    geo: LogGeometry,
    npages: u64,
    page: u64,
    log_id: u64,
    lsn: u64,
) -> Result<Option<(u64, usize)>> {
    let Some(r) = SegmentReader::open(file, geo, page, npages)? else { return Ok(None) };
    Ok(LogSeal::decode(&r.buf).filter(|s| s.log_id == log_id && s.end_lsn > lsn).map(|_| (page, 0)))
}

/// A link at `offset` that ends log `log_id` at record `lsn`.
fn parse_link(seg: &[u8], offset: usize, log_id: u64, lsn: u64) -> Option<LogLink> {
    LogLink::decode(seg.get(offset..)?).filter(|l| l.log_id == log_id && l.lsn == lsn)
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

    /// Log 5, started in segment 1 of a file of 100 segments.
    fn log_five() -> (Arc<dyn StorageFile>, LogGeometry, LogStart, u64, Wal) {
        let (f, geo) = setup();
        let sp = geo.segment_pages;
        let start = LogStart { log_id: 5, segment_page: 1, segment_seq: 1, offset: SECTOR, lsn: 1 };
        let w = Wal::start(f.clone(), geo, 5, 1, 1 + sp, 1).unwrap();
        (f, geo, start, 100 * sp, w)
    }

    /// One batch per record.
    fn batches(w: &mut Wal, ids: &[u64]) {
        for &i in ids {
            w.append(&map(i)).unwrap();
            w.write_out().unwrap();
        }
    }

    /// A log written, sealed, read back and carried on under a new id:
    /// replay from the original start finds every record, in order.
    fn carry_on(f: &Arc<dyn StorageFile>, geo: LogGeometry, start: LogStart, npages: u64) -> Wal {
        let got = read_log::<Rec>(&**f, geo, start, npages, FORMAT_VERSION).unwrap();
        assert!(Wal::link_fits(&geo, &got.tail));
        let next = 40 * geo.segment_pages;
        Wal::resume(f.clone(), geo, got.tail, got.segments, 1000 + got.tail.lsn, next)
    }

    #[test]
    fn a_carried_on_log_replays_across_its_link_and_seals_end_it_cleanly() {
        let (f, geo, start, npages, mut w) = log_five();
        let sp = geo.segment_pages;
        let mut expect = Vec::new();
        for i in 0..3u64 {
            expect.push((w.append(&map(i)).unwrap(), map(i)));
        }
        w.write_out().unwrap();
        w.mark_durable(w.next_lsn());
        assert!(w.write_seal(false).unwrap());
        let got = read_log::<Rec>(&*f, geo, start, npages, FORMAT_VERSION).unwrap();
        assert_eq!(got.records, expect);
        assert_eq!(got.durable_lsn, 4, "a seal vouches for every record");
        let mut w = carry_on(&f, geo, start, npages);
        for i in 3..6u64 {
            expect.push((w.append(&map(i)).unwrap(), map(i)));
        }
        w.write_out().unwrap();
        let got = read_log::<Rec>(&*f, geo, start, npages, FORMAT_VERSION).unwrap();
        assert_eq!(got.records, expect);
        assert_eq!(got.segments, vec![1, 1 + sp], "the new log lives in the old one's next segment");
        assert_eq!(got.durable_lsn, 4, "the unsealed batch is not vouched for");
    }

    /// A crash left a torn batch and a stale whole batch behind it. The log
    /// carried on after the torn one must not let the stale one be replayed
    /// as the next batch, even where the new batch ends exactly where the
    /// stale one begins and the LSNs line up.
    #[test]
    fn stale_batches_behind_a_torn_tail_are_never_replayed_after_a_carry_on() {
        let (f, geo, start, npages, mut w) = log_five();
        batches(&mut w, &[1, 2, 3]);
        // Tear the second batch: the third, whole, now lies past the end.
        f.write_at(&[0xff], 8192 + 4096 + 2 * SECTOR + 60).unwrap();
        let mut w = carry_on(&f, geo, start, npages);
        batches(&mut w, &[20, 30]);
        let got = read_log::<Rec>(&*f, geo, start, npages, FORMAT_VERSION).unwrap();
        assert_eq!(got.records, vec![(1, map(1)), (2, map(20)), (3, map(30))]);
    }

    /// Damage to a link, or to the last batch before a seal, is damage to
    /// synced records: reported, not taken for the log's end.
    #[test]
    fn a_damaged_link_or_sealed_batch_is_corruption() {
        let (f, geo, start, npages, mut w) = log_five();
        w.append(&map(1)).unwrap();
        w.write_out().unwrap();
        w.mark_durable(w.next_lsn());
        w.write_seal(false).unwrap();
        let pristine = read_all(&f);
        // The sealed batch.
        f.write_at(&[0xee], 8192 + 4096 + SECTOR + 60).unwrap();
        let err = read_log::<Rec>(&*f, geo, start, npages, FORMAT_VERSION).unwrap_err();
        assert!(matches!(err, Error::Corruption { .. }), "{err:?}");
        f.write_at(&pristine, 0).unwrap();
        // The link, once the carried-on log is sealed.
        let mut w = carry_on(&f, geo, start, npages);
        w.append(&map(2)).unwrap();
        w.write_out().unwrap();
        w.mark_durable(w.next_lsn());
        assert!(w.write_seal(false).unwrap());
        assert_eq!(read_log::<Rec>(&*f, geo, start, npages, FORMAT_VERSION).unwrap().records.len(), 2);
        f.write_at(&[0xee], 8192 + 4096 + 2 * SECTOR + 20).unwrap();
        let err = read_log::<Rec>(&*f, geo, start, npages, FORMAT_VERSION).unwrap_err();
        assert!(matches!(err, Error::Corruption { .. }), "{err:?}");
    }

    /// A link that leads back into the chain is refused, not followed for
    /// ever.
    #[test]
    fn a_link_back_into_the_chain_is_corruption() {
        let (f, geo) = setup();
        let sp = geo.segment_pages;
        let start = LogStart { log_id: 5, segment_page: 1, segment_seq: 1, offset: SECTOR, lsn: 1 };
        let w = Wal::start(f.clone(), geo, 5, 1, 1 + sp, 1).unwrap();
        drop(w);
        let link = LogLink { log_id: 5, lsn: 1, new_log_id: 5, segment_page: 1 };
        f.write_at(&link.encode(), 8192 + 4096 + SECTOR).unwrap();
        let err = read_log::<Rec>(&*f, geo, start, 100 * sp, FORMAT_VERSION).unwrap_err();
        assert!(matches!(err, Error::Corruption { .. }), "{err:?}");
    }

    fn read_all(f: &Arc<dyn StorageFile>) -> Vec<u8> {
        let mut b = vec![0u8; f.len().unwrap() as usize];
        f.read_at(&mut b, 0).unwrap();
        b
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
