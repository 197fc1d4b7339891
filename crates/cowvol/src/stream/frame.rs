//! The stream's wire format: frames with a fixed header, a sequence number
//! and a CRC, drawn byte by byte in docs/format.md (section "Send/receive
//! streams"). Everything is little-endian through `format::{Enc, Dec}`.

use crate::catalog::SnapshotKind;
use crate::error::{Error, Result, StreamFault};
use crate::format::{Crc, Dec, Enc};
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Starts every frame.
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"CVSF";
/// The stream format this build writes and reads.
pub(crate) const STREAM_VERSION: u32 = 1;
/// magic, kind, 3 reserved bytes, sequence number, payload length, CRC.
pub(crate) const FRAME_HEADER_LEN: usize = 4 + 1 + 3 + 8 + 4 + 4;
const _: () = assert!(FRAME_HEADER_LEN == 24);
/// Offset of the CRC in the frame header; it covers the bytes before it
/// and the payload.
const CRC_AT: usize = FRAME_HEADER_LEN - 4;
/// Largest payload a reader accepts: a bound on what one frame can make
/// the receiver allocate, whatever the input says.
pub(crate) const MAX_PAYLOAD: usize = 8 << 20;
/// Data bytes the sender puts in one data frame (a multiple of every
/// block size the engine supports).
pub(crate) const DATA_FRAME_BYTES: u64 = 1 << 20;
/// Bit 0 of the begin frame's flags: the stream is incremental.
const FLAG_INCREMENTAL: u32 = 1;

const KIND_BEGIN: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_HOLE: u8 = 3;
const KIND_END: u8 = 4;

/// Which snapshot a stream carries or builds on, as the sender knows it:
/// the store that first took it, its id there, and the digest of its block
/// map (see `identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    pub(crate) store_id: u64,
    pub(crate) snapshot_id: u64,
    pub(crate) digest: u64,
}

/// The first frame: what the stream builds and on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Begin {
    pub(crate) block_size: u32,
    pub(crate) size_bytes: u64,
    /// Data bytes the stream carries in all, for progress.
    pub(crate) data_bytes: u64,
    pub(crate) snapshot: Identity,
    /// The snapshot an incremental stream applies to; `None` for a full one.
    pub(crate) base: Option<Identity>,
    pub(crate) created_at: u64,
    pub(crate) kind: SnapshotKind,
    pub(crate) volume_name: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) owner: String,
    pub(crate) labels: BTreeMap<String, String>,
}

/// The last frame: totals over every data and hole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub(crate) frames: u64,
    pub(crate) data_bytes: u64,
    pub(crate) hole_bytes: u64,
    pub(crate) digest: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Begin(Box<Begin>),
    /// Bytes of the volume from `offset` on.
    Data {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// `len` bytes from `offset` read as zeroes.
    Hole {
        offset: u64,
        len: u64,
    },
    End(Totals),
}

fn encode_identity(id: &Identity, e: &mut Enc) {
    e.u64(id.store_id);
    e.u64(id.snapshot_id);
    e.u64(id.digest);
}

fn decode_identity(d: &mut Dec<'_>) -> Result<Identity> {
    Ok(Identity { store_id: d.u64()?, snapshot_id: d.u64()?, digest: d.u64()? })
}

impl Begin {
    fn encode(&self, e: &mut Enc) {
        e.u32(STREAM_VERSION);
        e.u32(if self.base.is_some() { FLAG_INCREMENTAL } else { 0 });
        e.u32(self.block_size);
        e.u64(self.size_bytes);
        e.u64(self.data_bytes);
        encode_identity(&self.snapshot, e);
        encode_identity(&self.base.unwrap_or(Identity { store_id: 0, snapshot_id: 0, digest: 0 }), e);
        e.u64(self.created_at);
        e.u8(self.kind.code());
        for s in [&self.volume_name, &self.name, &self.description, &self.owner] {
            e.str(s);
        }
        e.u32(self.labels.len() as u32);
        for (k, v) in &self.labels {
            e.str(k);
            e.str(v);
        }
    }

    /// Decodes a begin payload whose version was already checked.
    fn decode(d: &mut Dec<'_>) -> Result<Begin> {
        let flags = d.u32()?;
        if flags & !FLAG_INCREMENTAL != 0 {
            return Err(d.bad(format!("unknown flags {flags:#x}")));
        }
        let block_size = d.u32()?;
        let size_bytes = d.u64()?;
        let data_bytes = d.u64()?;
        let snapshot = decode_identity(d)?;
        let base = decode_identity(d)?;
        let base = (flags & FLAG_INCREMENTAL != 0).then_some(base);
        let created_at = d.u64()?;
        let kind = SnapshotKind::from_code(d.u8()?, d)?;
        let (volume_name, name, description, owner) = (d.str()?, d.str()?, d.str()?, d.str()?);
        let n = d.u32()? as usize;
        // Each label takes at least 8 bytes: a count beyond that is damage.
        if n > d.remaining() / 8 {
            return Err(d.bad(format!("{n} labels in {} bytes", d.remaining())));
        }
        let mut labels = BTreeMap::new();
        for _ in 0..n {
            let k = d.str()?;
            labels.insert(k, d.str()?);
        }
        Ok(Begin {
            block_size,
            size_bytes,
            data_bytes,
            snapshot,
            base,
            created_at,
            kind,
            volume_name,
            name,
            description,
            owner,
            labels,
        })
    }
}

/// Writes frames with consecutive sequence numbers, counting the bytes.
pub(crate) struct FrameWriter<'w> {
    out: &'w mut dyn Write,
    next_seq: u64,
    pub(crate) bytes: u64,
}

impl<'w> FrameWriter<'w> {
    pub(crate) fn new(out: &'w mut dyn Write) -> Self {
        FrameWriter { out, next_seq: 0, bytes: 0 }
    }

    /// The sequence number the next frame gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers a frame without writing it: a resumed send leaves out the
    /// frames the receiver already has, but keeps their numbers.
    pub(crate) fn skip(&mut self) {
        self.next_seq += 1;
    }

    pub(crate) fn write(&mut self, frame: &Frame) -> Result<()> {
        let bytes = encode_frame(self.next_seq, frame);
        self.out.write_all(&bytes).map_err(|e| Error::io("writing the stream", e))?;
        self.next_seq += 1;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io("writing the stream", e))
    }
}

/// One frame's bytes: header, then payload.
pub(crate) fn encode_frame(seq: u64, frame: &Frame) -> Vec<u8> {
    let mut p = Enc::default();
    let kind = match frame {
        Frame::Begin(b) => {
            b.encode(&mut p);
            KIND_BEGIN
        }
        Frame::Data { offset, bytes } => {
            p.u64(*offset);
            p.bytes(bytes);
            KIND_DATA
        }
        Frame::Hole { offset, len } => {
            p.u64(*offset);
            p.u64(*len);
            KIND_HOLE
        }
        Frame::End(t) => {
            p.u64(t.frames);
            p.u64(t.data_bytes);
            p.u64(t.hole_bytes);
            p.u64(t.digest);
            KIND_END
        }
    };
    let mut e = Enc::with_capacity(FRAME_HEADER_LEN + p.len());
    e.bytes(&FRAME_MAGIC);
    e.u8(kind);
    e.bytes(&[0; 3]);
    e.u64(seq);
    e.u32(p.len() as u32);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&e.buf);
    crc.update(&p.buf);
    e.u32(crc.finalize());
    e.bytes(&p.buf);
    e.buf
}

/// Where a stream is read from: any reader, and for one that can seek, a
/// way to jump over the frames an interrupted receive acknowledged instead
/// of reading them again.
pub(crate) trait Input: Read {
    /// Moves to byte `offset` of the stream when the input can; returns
    /// whether it did.
    fn seek_to(&mut self, offset: u64) -> io::Result<bool>;
}

/// An input read from start to end (a pipe, a socket, a buffer).
pub(crate) struct Sequential<'a>(pub(crate) &'a mut dyn Read);

impl Read for Sequential<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Input for Sequential<'_> {
    fn seek_to(&mut self, _offset: u64) -> io::Result<bool> {
        Ok(false)
    }
}

/// A seekable input (a file) whose stream starts at `start`.
pub(crate) struct Seekable<'a, R> {
    inner: &'a mut R,
    start: u64,
}

impl<'a, R: Read + Seek> Seekable<'a, R> {
    /// The stream starts where `inner` is now.
    pub(crate) fn new(inner: &'a mut R) -> io::Result<Self> {
        let start = inner.stream_position()?;
        Ok(Seekable { inner, start })
    }
}

impl<R: Read> Read for Seekable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Read + Seek> Input for Seekable<'_, R> {
    fn seek_to(&mut self, offset: u64) -> io::Result<bool> {
        self.inner.seek(SeekFrom::Start(self.start + offset))?;
        Ok(true)
    }
}

/// Reads and verifies frames, tracking the byte offset for error messages
/// and for resuming.
pub(crate) struct FrameReader<'r> {
    input: &'r mut dyn Input,
    /// Bytes consumed so far: the offset of the next frame.
    pub(crate) offset: u64,
}

/// A verified frame and where it was.
#[derive(Debug)]
pub(crate) struct ReadFrame {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    pub(crate) frame: Frame,
}

pub(crate) fn stream_error(fault: StreamFault, offset: u64, detail: impl Into<String>) -> Error {
    Error::Stream { fault, offset, detail: detail.into() }
}

impl<'r> FrameReader<'r> {
    pub(crate) fn new(input: &'r mut dyn Input) -> Self {
        FrameReader { input, offset: 0 }
    }

    /// Jumps ahead to stream byte `offset` (a frame boundary the caller
    /// knows) when the input can seek; returns whether it did. The frame
    /// found there is checked like any other.
    pub(crate) fn skip_to(&mut self, offset: u64) -> Result<bool> {
        if offset <= self.offset || !self.input.seek_to(offset).map_err(|e| Error::io("seeking in the stream", e))? {
            return Ok(false);
        }
        self.offset = offset;
        Ok(true)
    }

    /// Reads the next frame. Every failure is a typed error: the input ended
    /// ([`StreamFault::Truncated`]), the bytes are not a frame, the CRC does
    /// not match, or the payload does not parse.
    pub(crate) fn next(&mut self) -> Result<ReadFrame> {
        let at = self.offset;
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.fill(&mut header, at, "frame header")?;
        if header[..4] != FRAME_MAGIC {
            return Err(stream_error(StreamFault::NotAStream, at, "no frame magic \"CVSF\" where a frame starts"));
        }
        let mut d = Dec::new(&header[4..], "stream frame");
        let kind = d.u8()?;
        let reserved = d.bytes(3)?;
        if !(KIND_BEGIN..=KIND_END).contains(&kind) || reserved != [0; 3] {
            return Err(stream_error(StreamFault::NotAStream, at, format!("unknown frame kind {kind}")));
        }
        let seq = d.u64()?;
        let len = d.u32()? as usize;
        let stored_crc = d.u32()?;
        if len > MAX_PAYLOAD {
            return Err(stream_error(
                StreamFault::Malformed,
                at,
                format!("payload of {len} bytes; frames hold at most {MAX_PAYLOAD}"),
            ));
        }
        let mut payload = vec![0u8; len];
        self.fill(&mut payload, at, "frame payload")?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[..CRC_AT]);
        crc.update(&payload);
        let actual = Crc(crc.finalize());
        if actual != Crc(stored_crc) {
            return Err(stream_error(
                StreamFault::Checksum,
                at,
                format!("frame {seq}: stored {stored_crc:#010x}, computed {:#010x}", actual.0),
            ));
        }
        let frame = decode_payload(kind, &payload).map_err(|e| match e {
            Error::Stream { fault, detail, .. } => stream_error(fault, at, detail),
            other => stream_error(StreamFault::Malformed, at, format!("frame {seq}: {other}")),
        })?;
        Ok(ReadFrame { seq, offset: at, frame })
    }

    /// Reads exactly `buf.len()` bytes; the input ending first is a
    /// truncated stream.
    fn fill(&mut self, buf: &mut [u8], frame_at: u64, what: &str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(stream_error(
                        StreamFault::Truncated,
                        frame_at,
                        format!("the input ended {got} bytes into a {}-byte {what}", buf.len()),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading the stream", e)),
            }
        }
        self.offset += buf.len() as u64;
        Ok(())
    }
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame> {
    let mut d = Dec::new(payload, "stream frame");
    let frame = match kind {
        KIND_BEGIN => {
            let version = d.u32()?;
            if version != STREAM_VERSION {
                return Err(stream_error(
                    StreamFault::UnsupportedVersion,
                    0,
                    format!("stream version {version}; this build reads version {STREAM_VERSION}"),
                ));
            }
            Frame::Begin(Box::new(Begin::decode(&mut d)?))
        }
        KIND_DATA => {
            let offset = d.u64()?;
            Frame::Data { offset, bytes: d.bytes(d.remaining())?.to_vec() }
        }
        KIND_HOLE => Frame::Hole { offset: d.u64()?, len: d.u64()? },
        _ => Frame::End(Totals { frames: d.u64()?, data_bytes: d.u64()?, hole_bytes: d.u64()?, digest: d.u64()? }),
    };
    if d.remaining() != 0 {
        return Err(d.bad(format!("{} trailing bytes", d.remaining())));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin() -> Begin {
        Begin {
            block_size: 4096,
            size_bytes: 1 << 20,
            data_bytes: 8192,
            snapshot: Identity { store_id: 7, snapshot_id: 3, digest: 99 },
            base: Some(Identity { store_id: 7, snapshot_id: 2, digest: 98 }),
            created_at: 1_800_000_000,
            kind: SnapshotKind::Auto,
            volume_name: "db".into(),
            name: "nightly".into(),
            description: "two\nlines".into(),
            owner: "ops".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
        }
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Begin(Box::new(begin())),
            Frame::Data { offset: 4096, bytes: vec![5; 4096] },
            Frame::Hole { offset: 8192, len: 1 << 16 },
            Frame::End(Totals { frames: 2, data_bytes: 4096, hole_bytes: 1 << 16, digest: 99 }),
        ];
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf);
        for f in &frames {
            w.write(f).unwrap();
        }
        let total = w.bytes;
        assert_eq!(total, buf.len() as u64);
        let mut bytes = &buf[..];
        let mut input = Sequential(&mut bytes);
        let mut r = FrameReader::new(&mut input);
        for (i, f) in frames.iter().enumerate() {
            let got = r.next().unwrap();
            assert_eq!((got.seq, &got.frame), (i as u64, f));
        }
        assert!(matches!(r.next(), Err(Error::Stream { fault: StreamFault::Truncated, .. })));
    }

    #[test]
    fn every_flipped_bit_of_a_frame_is_refused() {
        let bytes = encode_frame(4, &Frame::Hole { offset: 4096, len: 4096 });
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let mut bytes = &b[..];
            let r = FrameReader::new(&mut Sequential(&mut bytes)).next();
            // The CRC covers the header and the payload, so no single flip
            // turns one valid frame into another.
            assert!(r.is_err(), "flip of bit {i} accepted: {r:?}");
        }
    }

    #[test]
    fn a_newer_version_is_refused_by_name() {
        let mut bytes = encode_frame(0, &Frame::Begin(Box::new(begin())));
        bytes[FRAME_HEADER_LEN] = 2;
        let crc = {
            let mut h = crc32fast::Hasher::new();
            h.update(&bytes[..CRC_AT]);
            h.update(&bytes[FRAME_HEADER_LEN..]);
            h.finalize()
        };
        bytes[CRC_AT..FRAME_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        let mut input = &bytes[..];
        let r = FrameReader::new(&mut Sequential(&mut input)).next();
        assert!(matches!(r, Err(Error::Stream { fault: StreamFault::UnsupportedVersion, .. })), "{r:?}");
    }
}
