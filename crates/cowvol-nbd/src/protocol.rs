//! The NBD wire format: magics, option and command codes, and the encoders
//! and decoders of every message this server reads or writes. Everything on
//! the wire is big-endian ("network byte order"); nothing outside this
//! module touches byte order.
//!
//! The protocol has two phases: the fixed-newstyle handshake, where the
//! client sends options (`IHAVEOPT`, option, length, data) and the server
//! answers each with option replies, and transmission, where the client
//! sends 28-byte requests (plus a payload for writes) and the server sends
//! simple replies (16 bytes, plus data for a read) or, when the client
//! asked for them, structured reply chunks (20-byte header plus payload).

/// Sent first by the server: ASCII `NBDMAGIC`.
pub(crate) const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// Sent by the server after `NBD_MAGIC`, and by the client before each option: ASCII `IHAVEOPT`.
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply.
pub(crate) const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every request.
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts every simple reply.
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Starts every structured reply chunk.
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server): fixed newstyle, and the 124 zero bytes after
/// `NBD_OPT_EXPORT_NAME` may be left out.
pub(crate) const HANDSHAKE_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(crate) const HANDSHAKE_NO_ZEROES: u16 = 1 << 1;
/// Client flags: the same two bits; any other bit means a client we do not understand.
pub(crate) const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub(crate) const CLIENT_NO_ZEROES: u32 = 1 << 1;
pub(crate) const CLIENT_KNOWN_FLAGS: u32 = CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES;

/// Transmission flags, sent with the export's size.
pub(crate) mod tflag {
    pub(crate) const HAS_FLAGS: u16 = 1 << 0;
    pub(crate) const READ_ONLY: u16 = 1 << 1;
    pub(crate) const SEND_FLUSH: u16 = 1 << 2;
    pub(crate) const SEND_FUA: u16 = 1 << 3;
    pub(crate) const SEND_TRIM: u16 = 1 << 5;
    pub(crate) const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub(crate) const CAN_MULTI_CONN: u16 = 1 << 8;
    pub(crate) const SEND_CACHE: u16 = 1 << 10;
    pub(crate) const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// The options a client sends during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opt {
    ExportName,
    Abort,
    List,
    StartTls,
    Info,
    Go,
    StructuredReply,
    ListMetaContext,
    SetMetaContext,
    Unknown(u32),
}

impl Opt {
    pub(crate) fn from_wire(v: u32) -> Opt {
        match v {
            1 => Opt::ExportName,
            2 => Opt::Abort,
            3 => Opt::List,
            5 => Opt::StartTls,
            6 => Opt::Info,
            7 => Opt::Go,
            8 => Opt::StructuredReply,
            9 => Opt::ListMetaContext,
            10 => Opt::SetMetaContext,
            other => Opt::Unknown(other),
        }
    }
}

/// Option reply types. Errors have the top bit set.
pub(crate) mod rep {
    pub(crate) const ACK: u32 = 1;
    pub(crate) const SERVER: u32 = 2;
    pub(crate) const INFO: u32 = 3;
    pub(crate) const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    pub(crate) const ERR_UNSUP: u32 = ERR | 1;
    pub(crate) const ERR_POLICY: u32 = ERR | 2;
    pub(crate) const ERR_INVALID: u32 = ERR | 3;
    pub(crate) const ERR_PLATFORM: u32 = ERR | 4;
    pub(crate) const ERR_UNKNOWN: u32 = ERR | 6;
}

/// `NBD_INFO_*` items inside an `NBD_REP_INFO` reply.
pub(crate) mod info {
    pub(crate) const EXPORT: u16 = 0;
    pub(crate) const NAME: u16 = 1;
    pub(crate) const BLOCK_SIZE: u16 = 3;
}

/// Error values in replies (the protocol's own numbering, not the host's errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Errno {
    Perm,
    Io,
    Inval,
    NoSpc,
    NotSup,
}

impl Errno {
    pub(crate) fn to_wire(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::NotSup => 95,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Errno::Perm => "EPERM",
            Errno::Io => "EIO",
            Errno::Inval => "EINVAL",
            Errno::NoSpc => "ENOSPC",
            Errno::NotSup => "ENOTSUP",
        }
    }
}

/// The commands of the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmd {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl Cmd {
    fn from_wire(v: u16) -> Cmd {
        match v {
            0 => Cmd::Read,
            1 => Cmd::Write,
            2 => Cmd::Disc,
            3 => Cmd::Flush,
            4 => Cmd::Trim,
            5 => Cmd::Cache,
            6 => Cmd::WriteZeroes,
            7 => Cmd::BlockStatus,
            other => Cmd::Unknown(other),
        }
    }
}

/// Command flags.
pub(crate) mod cflag {
    pub(crate) const FUA: u16 = 1 << 0;
    pub(crate) const NO_HOLE: u16 = 1 << 1;
    pub(crate) const DF: u16 = 1 << 2;
    pub(crate) const REQ_ONE: u16 = 1 << 3;
    pub(crate) const FAST_ZERO: u16 = 1 << 4;
    pub(crate) const KNOWN: u16 = FUA | NO_HOLE | DF | REQ_ONE | FAST_ZERO;
}

/// Structured reply chunk types and flags.
pub(crate) mod chunk {
    pub(crate) const FLAG_DONE: u16 = 1 << 0;
    pub(crate) const NONE: u16 = 0;
    pub(crate) const OFFSET_DATA: u16 = 1;
    pub(crate) const OFFSET_HOLE: u16 = 2;
    pub(crate) const BLOCK_STATUS: u16 = 5;
    pub(crate) const ERROR: u16 = (1 << 15) | 1;
}

/// `base:allocation` status bits: a hole reads as zeroes.
pub(crate) const STATE_HOLE: u32 = 1 << 0;
pub(crate) const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context this server offers.
pub(crate) const BASE_ALLOCATION: &str = "base:allocation";
/// Its context id: any value the server picks; clients echo it back.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// Length of a request header on the wire.
pub(crate) const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub(crate) const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub(crate) const CHUNK_HEADER_LEN: usize = 20;

/// One decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) flags: u16,
    pub(crate) cmd: Cmd,
    pub(crate) handle: u64,
    pub(crate) offset: u64,
    pub(crate) length: u32,
}

/// A request header whose magic is wrong: the stream cannot be trusted any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadMagic(pub(crate) u32);

impl Request {
    pub(crate) fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, BadMagic> {
        let magic = be_u32(&b[0..4]);
        if magic != REQUEST_MAGIC {
            return Err(BadMagic(magic));
        }
        Ok(Request {
            flags: be_u16(&b[4..6]),
            cmd: Cmd::from_wire(be_u16(&b[6..8])),
            handle: be_u64(&b[8..16]),
            offset: be_u64(&b[16..24]),
            length: be_u32(&b[24..28]),
        })
    }
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A cursor over option data that fails instead of panicking when the
/// client's lengths do not add up.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

/// Option data shorter or longer than its own fields say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.data.len() < n {
            return Err(Malformed);
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Malformed> {
        self.bytes(2).map(be_u16)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Malformed> {
        self.bytes(4).map(be_u32)
    }

    /// A string prefixed by its 32-bit length.
    pub(crate) fn string(&mut self) -> Result<String, Malformed> {
        let n = self.u32()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed)
    }

    pub(crate) fn finish(self) -> Result<(), Malformed> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

/// The server's greeting.
pub(crate) fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(HANDSHAKE_FIXED_NEWSTYLE | HANDSHAKE_NO_ZEROES).to_be_bytes());
    b
}

/// One option reply.
pub(crate) fn option_reply(opt: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub(crate) fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&info::EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_INFO_NAME`.
pub(crate) fn info_name(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + name.len());
    b.extend_from_slice(&info::NAME.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum request sizes.
pub(crate) fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&min.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&max.to_be_bytes());
    b
}

/// `NBD_REP_SERVER` data: one export name.
pub(crate) fn rep_server(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// `NBD_REP_META_CONTEXT` data: context id and name.
pub(crate) fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and (unless the
/// client said `NO_ZEROES`) 124 reserved zero bytes.
pub(crate) fn export_name_reply(size: u64, flags: u16, zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + 124);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if zeroes {
        b.resize(b.len() + 124, 0);
    }
    b
}

/// Writes a simple reply header into `b[..16]`.
pub(crate) fn put_simple_reply(b: &mut [u8], handle: u64, error: u32) {
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
}

/// A simple reply with no data.
pub(crate) fn simple_reply(handle: u64, error: u32) -> Vec<u8> {
    let mut b = vec![0u8; SIMPLE_REPLY_LEN];
    put_simple_reply(&mut b, handle, error);
    b
}

/// Appends a structured reply chunk header.
pub(crate) fn push_chunk_header(b: &mut Vec<u8>, flags: u16, kind: u16, handle: u64, len: u32) {
    b.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
}

/// Appends an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk.
pub(crate) fn push_hole_chunk(b: &mut Vec<u8>, flags: u16, handle: u64, offset: u64, len: u32) {
    push_chunk_header(b, flags, chunk::OFFSET_HOLE, handle, 12);
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk carrying `error` and a short message.
pub(crate) fn error_chunk(handle: u64, error: u32, msg: &str) -> Vec<u8> {
    // The message is for humans; keep it short so it never dominates a reply.
    let msg = truncate_utf8(msg, 200);
    let mut b = Vec::with_capacity(CHUNK_HEADER_LEN + 6 + msg.len());
    push_chunk_header(&mut b, chunk::FLAG_DONE, chunk::ERROR, handle, 6 + msg.len() as u32);
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg.as_bytes());
    b
}

/// A final empty chunk (`NBD_REPLY_TYPE_NONE` with `DONE`).
pub(crate) fn done_chunk(handle: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(CHUNK_HEADER_LEN);
    push_chunk_header(&mut b, chunk::FLAG_DONE, chunk::NONE, handle, 0);
    b
}

/// A final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk: `(length, status)` descriptors.
pub(crate) fn block_status_chunk(handle: u64, context: u32, descriptors: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * descriptors.len();
    let mut b = Vec::with_capacity(CHUNK_HEADER_LEN + len);
    push_chunk_header(&mut b, chunk::FLAG_DONE, chunk::BLOCK_STATUS, handle, len as u32);
    b.extend_from_slice(&context.to_be_bytes());
    for (l, s) in descriptors {
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&s.to_be_bytes());
    }
    b
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip_and_bad_magic() {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&cflag::FUA.to_be_bytes());
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = Request::decode(&b).expect("valid header");
        assert_eq!(r, Request { flags: cflag::FUA, cmd: Cmd::Write, handle: 7, offset: 4096, length: 512 });
        b[0] ^= 1;
        assert!(Request::decode(&b).is_err());
    }

    #[test]
    fn reader_rejects_short_and_long_data() {
        let mut r = Reader::new(&[0, 0, 0, 5, b'a']);
        assert_eq!(r.string(), Err(Malformed));
        let r = Reader::new(&[1]);
        assert_eq!(r.finish(), Err(Malformed));
    }

    #[test]
    fn error_chunk_message_is_bounded() {
        let long = "é".repeat(500);
        let c = error_chunk(1, 5, &long);
        assert!(c.len() <= CHUNK_HEADER_LEN + 6 + 200);
    }
}
