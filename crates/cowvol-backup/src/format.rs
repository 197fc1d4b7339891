//! The objects a backup writes, encoded byte by byte as docs/backup.md
//! ("Format") draws them. Everything is little-endian; strings are a u32
//! byte length then UTF-8; every object but a pack ends with the BLAKE3
//! hash of the bytes before it, checked before anything is used.

use crate::error::Error;
use std::collections::BTreeMap;
use std::fmt;

/// The BLAKE3 hash of a chunk's bytes: its name on the target.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> ChunkHash {
        ChunkHash(*blake3::hash(bytes).as_bytes())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`ChunkHash::to_hex`]'s form.
    pub fn from_hex(s: &str) -> Option<ChunkHash> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ChunkHash(out))
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

pub(crate) const PACK_MAGIC: [u8; 4] = *b"CVPK";
pub(crate) const INDEX_MAGIC: [u8; 4] = *b"CVPI";
pub(crate) const MANIFEST_MAGIC: [u8; 4] = *b"CVBM";
pub(crate) const LOCK_MAGIC: [u8; 4] = *b"CVLK";
/// The version every object carries after its magic; a reader refuses
/// versions it does not know.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// A pack's header: magic, version.
pub(crate) const PACK_HEADER_BYTES: u64 = 8;
/// One index entry: chunk hash (32), offset in the pack (u64), length (u32).
const INDEX_ENTRY_BYTES: usize = 32 + 8 + 4;
const _: () = assert!(INDEX_ENTRY_BYTES == 44);
const TRAILER_BYTES: usize = 32;

pub(crate) fn pack_key(pack: &ChunkHash) -> String {
    format!("packs/{pack}")
}

pub(crate) fn index_key(pack: &ChunkHash) -> String {
    format!("index/{pack}")
}

pub(crate) fn manifest_key(backup_id: &str) -> String {
    format!("backups/{backup_id}")
}

/// The pack a key in `packs/` or `index/` names.
pub(crate) fn pack_of_key(key: &str) -> Option<ChunkHash> {
    ChunkHash::from_hex(key.rsplit('/').next()?)
}

/// Little-endian writer.
#[derive(Default)]
pub(crate) struct Enc {
    pub(crate) buf: Vec<u8>,
}

impl Enc {
    fn with_header(magic: [u8; 4]) -> Enc {
        let mut e = Enc::default();
        e.buf.extend_from_slice(&magic);
        e.u32(FORMAT_VERSION);
        e
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn hash(&mut self, h: &ChunkHash) {
        self.buf.extend_from_slice(&h.0);
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
    }
    /// Appends the BLAKE3 of everything so far and returns the object.
    fn finish(mut self) -> Vec<u8> {
        let sum = blake3::hash(&self.buf);
        self.buf.extend_from_slice(sum.as_bytes());
        self.buf
    }
}

/// Little-endian reader over a checked object; every read is bounds-checked
/// and reports a damaged object instead of panicking.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Why an object does not decode; the caller adds the target and key.
pub(crate) struct Bad(pub(crate) String);

type DecResult<T> = std::result::Result<T, Bad>;

impl<'a> Dec<'a> {
    /// Checks the trailer, magic and version, and reads from after them.
    fn open(obj: &'a [u8], magic: [u8; 4]) -> DecResult<Dec<'a>> {
        if obj.len() < 8 + TRAILER_BYTES {
            return Err(Bad(format!("{} bytes is too short", obj.len())));
        }
        let (body, sum) = obj.split_at(obj.len() - TRAILER_BYTES);
        if blake3::hash(body).as_bytes() != sum {
            return Err(Bad("its checksum does not match".into()));
        }
        let mut d = Dec { buf: body, pos: 0 };
        let m = d.take(4)?;
        if m != magic {
            return Err(Bad(format!("bad magic {m:02x?}")));
        }
        let v = d.u32()?;
        if v != FORMAT_VERSION {
            return Err(Bad(format!("format version {v}; this build reads version {FORMAT_VERSION}")));
        }
        Ok(d)
    }
    fn take(&mut self, n: usize) -> DecResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| Bad("cut short".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> DecResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> DecResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn hash(&mut self) -> DecResult<ChunkHash> {
        Ok(ChunkHash(self.take(32)?.try_into().expect("32 bytes")))
    }
    fn str(&mut self) -> DecResult<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Bad("a string is not UTF-8".into()))
    }
    fn end(&self) -> DecResult<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Bad(format!("{} bytes after the end", self.buf.len() - self.pos)))
        }
    }
}

/// Where a chunk lives: its pack, and its bytes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkLocation {
    pub(crate) pack: ChunkHash,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// A pack's index: the chunks a pack holds, written after the pack is
/// durable. An index present means its pack is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackIndex {
    pub(crate) pack: ChunkHash,
    pub(crate) chunks: Vec<(ChunkHash, u64, u32)>,
}

impl PackIndex {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_header(INDEX_MAGIC);
        e.hash(&self.pack);
        e.u32(self.chunks.len() as u32);
        for (h, off, len) in &self.chunks {
            e.hash(h);
            e.u64(*off);
            e.u32(*len);
        }
        e.finish()
    }

    pub(crate) fn decode(obj: &[u8]) -> DecResult<PackIndex> {
        let mut d = Dec::open(obj, INDEX_MAGIC)?;
        let pack = d.hash()?;
        let n = d.u32()? as usize;
        if n.saturating_mul(INDEX_ENTRY_BYTES) > obj.len() {
            return Err(Bad(format!("{n} entries cannot fit")));
        }
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push((d.hash()?, d.u64()?, d.u32()?));
        }
        d.end()?;
        Ok(PackIndex { pack, chunks })
    }
}

/// Builds a pack: the header, then chunk bodies back to back.
pub(crate) struct PackBuilder {
    pub(crate) bytes: Vec<u8>,
    pub(crate) chunks: Vec<(ChunkHash, u64, u32)>,
}

impl PackBuilder {
    pub(crate) fn new() -> PackBuilder {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&PACK_MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        debug_assert_eq!(bytes.len() as u64, PACK_HEADER_BYTES);
        PackBuilder { bytes, chunks: Vec::new() }
    }

    pub(crate) fn add(&mut self, hash: ChunkHash, data: &[u8]) {
        self.chunks.push((hash, self.bytes.len() as u64, data.len() as u32));
        self.bytes.extend_from_slice(data);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The pack's bytes and its index; the pack is named by the hash of
    /// its bytes, so uploading the same pack twice writes the same object.
    pub(crate) fn seal(self) -> (Vec<u8>, PackIndex) {
        let pack = ChunkHash::of(&self.bytes);
        (self.bytes, PackIndex { pack, chunks: self.chunks })
    }
}

/// What a backup records about its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The store the snapshot was taken in ([`cowvol::Store::store_id`]).
    pub store_id: u64,
    /// Its id in that store.
    pub snapshot_id: u64,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its volume's name when it was taken.
    pub volume_name: String,
    /// When it was taken (seconds since the Unix epoch).
    pub created_at: u64,
    /// Its owner.
    pub owner: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A run of chunks that hold data, at consecutive chunk numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkRun {
    pub(crate) first: u64,
    pub(crate) hashes: Vec<ChunkHash>,
}

/// A backup: the snapshot's record and, for every chunk that holds data,
/// its hash. Chunks not listed are holes (never written, or all zeroes).
/// Written last, once every chunk it names is in a durable pack with a
/// durable index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) backup_id: String,
    /// When the backup finished (seconds since the Unix epoch).
    pub(crate) finished_at: u64,
    pub(crate) snapshot: SnapshotMeta,
    pub(crate) size_bytes: u64,
    pub(crate) block_size: u32,
    pub(crate) chunk_bytes: u32,
    /// The backup whose chunk list this one started from (empty for none).
    pub(crate) base: String,
    pub(crate) runs: Vec<ChunkRun>,
}

impl Manifest {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_header(MANIFEST_MAGIC);
        e.str(&self.backup_id);
        e.u64(self.finished_at);
        let s = &self.snapshot;
        e.u64(s.store_id);
        e.u64(s.snapshot_id);
        e.str(&s.name);
        e.str(&s.description);
        e.str(&s.volume_name);
        e.u64(s.created_at);
        e.str(&s.owner);
        e.u32(s.labels.len() as u32);
        for (k, v) in &s.labels {
            e.str(k);
            e.str(v);
        }
        e.u64(self.size_bytes);
        e.u32(self.block_size);
        e.u32(self.chunk_bytes);
        e.str(&self.base);
        e.u32(self.runs.len() as u32);
        for r in &self.runs {
            e.u64(r.first);
            e.u32(r.hashes.len() as u32);
            for h in &r.hashes {
                e.hash(h);
            }
        }
        e.finish()
    }

    pub(crate) fn decode(obj: &[u8]) -> DecResult<Manifest> {
        let mut d = Dec::open(obj, MANIFEST_MAGIC)?;
        let backup_id = d.str()?;
        let finished_at = d.u64()?;
        let store_id = d.u64()?;
        let snapshot_id = d.u64()?;
        let name = d.str()?;
        let description = d.str()?;
        let volume_name = d.str()?;
        let created_at = d.u64()?;
        let owner = d.str()?;
        let nlabels = d.u32()?;
        let mut labels = BTreeMap::new();
        for _ in 0..nlabels {
            let k = d.str()?;
            labels.insert(k, d.str()?);
        }
        let size_bytes = d.u64()?;
        let block_size = d.u32()?;
        let chunk_bytes = d.u32()?;
        if chunk_bytes == 0 {
            return Err(Bad("a chunk size of 0".into()));
        }
        let base = d.str()?;
        let nruns = d.u32()? as usize;
        let mut runs = Vec::new();
        let nchunks = size_bytes.div_ceil(chunk_bytes as u64);
        let mut next_free = 0u64;
        for _ in 0..nruns {
            let first = d.u64()?;
            let n = d.u32()? as usize;
            if first < next_free || first.saturating_add(n as u64) > nchunks {
                return Err(Bad(format!("a run of {n} chunks at chunk {first} overlaps another or the volume's end")));
            }
            next_free = first + n as u64;
            let hashes = (0..n).map(|_| d.hash()).collect::<DecResult<Vec<_>>>()?;
            runs.push(ChunkRun { first, hashes });
        }
        d.end()?;
        let snapshot =
            SnapshotMeta { store_id, snapshot_id, name, description, volume_name, created_at, owner, labels };
        Ok(Manifest { backup_id, finished_at, snapshot, size_bytes, block_size, chunk_bytes, base, runs })
    }

    /// Every chunk with data: `(chunk number, hash)`, ascending.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (u64, ChunkHash)> + '_ {
        self.runs.iter().flat_map(|r| r.hashes.iter().enumerate().map(move |(i, h)| (r.first + i as u64, *h)))
    }

    /// The bytes chunk `n` covers (the last one may be short).
    pub(crate) fn chunk_len(&self, n: u64) -> u64 {
        let start = n * self.chunk_bytes as u64;
        (self.size_bytes - start).min(self.chunk_bytes as u64)
    }
}

/// A lock object: who holds the target, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lock {
    /// `backup` or `gc`.
    pub(crate) kind: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) since: u64,
}

impl Lock {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_header(LOCK_MAGIC);
        e.str(&self.kind);
        e.str(&self.host);
        e.u32(self.pid);
        e.u64(self.since);
        e.finish()
    }

    pub(crate) fn decode(obj: &[u8]) -> DecResult<Lock> {
        let mut d = Dec::open(obj, LOCK_MAGIC)?;
        let lock = Lock { kind: d.str()?, host: d.str()?, pid: d.u32()?, since: d.u64()? };
        d.end()?;
        Ok(lock)
    }
}

/// Turns a decoding failure into the error that names the object.
pub(crate) fn damaged(target: &str, key: &str) -> impl FnOnce(Bad) -> Error {
    let (target, key) = (target.to_string(), key.to_string());
    move |Bad(detail)| Error::Damaged { target, key, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            backup_id: "0123456789abcdef".into(),
            finished_at: 7,
            snapshot: SnapshotMeta {
                store_id: 9,
                snapshot_id: 3,
                name: "nightly".into(),
                description: "before upgrade".into(),
                volume_name: "db".into(),
                created_at: 5,
                owner: "ops".into(),
                labels: [("env".to_string(), "prod".to_string())].into(),
            },
            size_bytes: 10 << 20,
            block_size: 4096,
            chunk_bytes: 1 << 20,
            base: String::new(),
            runs: vec![
                ChunkRun { first: 0, hashes: vec![ChunkHash::of(b"a"), ChunkHash::of(b"b")] },
                ChunkRun { first: 5, hashes: vec![ChunkHash::of(b"c")] },
            ],
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_damage() {
        let m = manifest();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).ok(), Some(m.clone()));
        assert_eq!(m.chunks().map(|(n, _)| n).collect::<Vec<_>>(), [0, 1, 5]);
        for i in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i}");
        }
        assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn overlapping_runs_are_refused() {
        let mut m = manifest();
        m.runs[1].first = 1;
        assert!(Manifest::decode(&m.encode()).is_err());
    }

    #[test]
    fn index_round_trips() {
        let mut b = PackBuilder::new();
        b.add(ChunkHash::of(b"x"), b"x");
        b.add(ChunkHash::of(b"yy"), b"yy");
        let (bytes, idx) = b.seal();
        assert_eq!(&bytes[8..], b"xyy");
        assert_eq!(idx.chunks[1], (ChunkHash::of(b"yy"), 9, 2));
        assert_eq!(PackIndex::decode(&idx.encode()).ok(), Some(idx));
    }

    #[test]
    fn hashes_print_and_parse_as_hex() {
        let h = ChunkHash::of(b"x");
        assert_eq!(ChunkHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChunkHash::from_hex("zz"), None);
    }
}
