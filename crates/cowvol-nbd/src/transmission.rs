//! The transmission phase of one connection.
//!
//! One task reads requests in order. Each valid request takes an in-flight
//! slot (per connection), its buffer bytes (server-wide) and, on a volume,
//! the volume's gate (shared), then runs on the blocking pool; its encoded
//! reply goes to the one writer task, so replies leave in completion order,
//! matched to requests by handle. The slot and bytes are returned when the
//! reply has been written, which bounds both the work and the memory a
//! client can hold.

use crate::errors;
use crate::export::OpenExport;
use crate::handshake::Negotiated;
use crate::protocol::{self as p, cflag, chunk, Cmd, Errno, Request};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedRwLockReadGuard, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Per-server limits every connection obeys.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Largest read or write payload (also advertised as the maximum block size).
    pub(crate) max_payload: u32,
    /// Requests one connection may have in flight.
    pub(crate) max_in_flight: usize,
    /// Buffer bytes all connections together may hold for requests in flight.
    pub(crate) buffer_bytes: Arc<Semaphore>,
    /// A reply that cannot be written for this long means a client that
    /// stopped reading: the connection is dropped.
    pub(crate) write_timeout: Duration,
}

/// Zeroes written per engine call for `WRITE_ZEROES` with `NO_HOLE`.
const ZERO_CHUNK: u64 = 1 << 20;
/// Descriptors in one block-status reply, so a reply never gets huge.
const MAX_DESCRIPTORS: usize = 64 * 1024;
/// Bytes of chunk headers reserved per read beyond its data.
const READ_OVERHEAD: u32 = 64 * 1024;

/// One connection's fixed facts.
struct Conn {
    export: Arc<OpenExport>,
    structured: bool,
    base_allocation: bool,
    peer: String,
    wrote: AtomicBool,
}

/// A reply on its way to the writer, with what it holds until written.
struct Outgoing {
    bytes: Vec<u8>,
    _slot: Option<OwnedSemaphorePermit>,
    _buffer: Option<OwnedSemaphorePermit>,
}

/// A request ready for the engine.
struct Job {
    req: Request,
    payload: Vec<u8>,
    slot: OwnedSemaphorePermit,
    buffer: Option<OwnedSemaphorePermit>,
    gate: Option<OwnedRwLockReadGuard<()>>,
}

/// What reading the next request produced.
enum Step {
    Run(Job),
    /// Refused without touching the engine.
    Refuse(Request, Errno, &'static str),
    End(End),
}

/// Why a connection ends.
enum End {
    Disc,
    /// End of stream between requests.
    HungUp,
    /// End of stream inside a request.
    HungUpMidRequest,
    Violation(String),
    ClosedByServer,
    Io(io::Error),
}

/// Serves requests until the client disconnects, breaks the protocol, or
/// `close` fires; then finishes what is in flight, flushes, and returns.
pub(crate) async fn serve<S>(stream: S, neg: Negotiated, limits: Limits, close: CancellationToken, peer: String)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let conn = Arc::new(Conn {
        export: neg.export,
        structured: neg.structured,
        base_allocation: neg.base_allocation,
        peer,
        wrote: AtomicBool::new(false),
    });
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let (tx, rx) = mpsc::channel::<Outgoing>(limits.max_in_flight.max(1));
    let writer = tokio::spawn(write_replies(wr, rx, limits.write_timeout));
    let max_in_flight = limits.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let end = loop {
        let step = tokio::select! {
            biased;
            () = close.cancelled() => Step::End(End::ClosedByServer),
            s = next_request(&mut rd, &conn, &slots, &limits) => s,
        };
        match step {
            Step::Run(job) => {
                let idle = slots.available_permits() + 1 == max_in_flight && rd.buffer().is_empty();
                match try_inline(job, &conn, idle) {
                    Ok(out) => {
                        if tx.send(out).await.is_err() {
                            break End::Io(io::Error::other("reply writer stopped"));
                        }
                    }
                    Err(job) => dispatch(job, conn.clone(), tx.clone()),
                }
            }
            Step::Refuse(req, errno, why) => {
                log(
                    &conn,
                    format_args!("refused {:?} at {}+{}: {why} ({})", req.cmd, req.offset, req.length, errno.name()),
                );
                let bytes = error_reply(&conn, &req, errno, why);
                if tx.send(Outgoing { bytes, _slot: None, _buffer: None }).await.is_err() {
                    break End::Io(io::Error::other("reply writer stopped"));
                }
            }
            Step::End(end) => break end,
        }
    };
    // Finish what is in flight: every slot comes back once its reply is written.
    let _ = slots.acquire_many(limits.max_in_flight.max(1) as u32).await;
    if conn.wrote.load(Ordering::Acquire) {
        let vol = conn.export.volume.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || vol.flush()).await {
            log(&conn, format_args!("flush at disconnect failed: {e}"));
        }
    }
    drop(tx);
    let _ = writer.await;
    log_end(&conn, end);
}

fn log(conn: &Conn, msg: std::fmt::Arguments<'_>) {
    eprintln!("cowvol-nbd: {} export {:?}: {msg}", conn.peer, conn.export.name);
}

fn log_end(conn: &Conn, end: End) {
    match end {
        End::Disc | End::HungUp => {}
        End::HungUpMidRequest => log(conn, format_args!("client disconnected in the middle of a request")),
        End::Violation(why) => log(conn, format_args!("closing the connection: {why}")),
        End::ClosedByServer => log(conn, format_args!("connection closed by the server (restore or shutdown)")),
        End::Io(e) => log(conn, format_args!("connection failed: {e}")),
    }
}

/// Reads one request header (and payload) and decides what to do with it.
async fn next_request<R>(rd: &mut R, conn: &Conn, slots: &Arc<Semaphore>, limits: &Limits) -> Step
where
    R: AsyncRead + Unpin,
{
    let mut hdr = [0u8; p::REQUEST_LEN];
    if let Err(e) = read_header(rd, &mut hdr).await {
        return Step::End(e);
    }
    let req = match Request::decode(&hdr) {
        Ok(r) => r,
        Err(p::BadMagic(m)) => return Step::End(End::Violation(format!("bad request magic {m:#x}"))),
    };
    if req.cmd == Cmd::Disc {
        return Step::End(End::Disc);
    }
    if req.cmd == Cmd::Write && req.length > limits.max_payload {
        // The payload would have to be read to stay in sync; refusing to
        // buffer it is the one answer that bounds memory.
        return Step::End(End::Violation(format!(
            "write of {} bytes exceeds the maximum block size {}",
            req.length, limits.max_payload
        )));
    }
    let buffer_bytes = match req.cmd {
        Cmd::Write => req.length,
        Cmd::Read if req.length <= limits.max_payload => req.length + READ_OVERHEAD,
        _ => 0,
    };
    // Both semaphores live as long as the server; a closed one never happens.
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return Step::End(End::ClosedByServer);
    };
    let buffer = if buffer_bytes > 0 {
        match limits.buffer_bytes.clone().acquire_many_owned(buffer_bytes).await {
            Ok(b) => Some(b),
            Err(_) => return Step::End(End::ClosedByServer),
        }
    } else {
        None
    };
    // In flight from here: a restore waits for this request.
    let gate = match &conn.export.gate {
        Some(g) => Some(g.io.clone().read_owned().await),
        None => None,
    };
    let mut payload = Vec::new();
    if req.cmd == Cmd::Write {
        payload = vec![0u8; req.length as usize];
        if let Err(e) = rd.read_exact(&mut payload).await {
            return Step::End(if e.kind() == io::ErrorKind::UnexpectedEof {
                End::HungUpMidRequest
            } else {
                End::Io(e)
            });
        }
    }
    if let Some((errno, why)) = check(conn, &req, limits) {
        return Step::Refuse(req, errno, why);
    }
    Step::Run(Job { req, payload, slot, buffer, gate })
}

async fn read_header<R: AsyncRead + Unpin>(rd: &mut R, hdr: &mut [u8; p::REQUEST_LEN]) -> Result<(), End> {
    let mut got = 0;
    while got < hdr.len() {
        match rd.read(&mut hdr[got..]).await {
            Ok(0) if got == 0 => return Err(End::HungUp),
            Ok(0) => return Err(End::HungUpMidRequest),
            Ok(n) => got += n,
            Err(e) => return Err(End::Io(e)),
        }
    }
    Ok(())
}

/// Validates a request against the export and the negotiated features.
fn check(conn: &Conn, req: &Request, limits: &Limits) -> Option<(Errno, &'static str)> {
    let export = &conn.export;
    if req.flags & !cflag::KNOWN != 0 {
        return Some((Errno::Inval, "unknown command flags"));
    }
    let in_range = req.offset.checked_add(u64::from(req.length)).is_some_and(|end| end <= export.size());
    let writes = matches!(req.cmd, Cmd::Write | Cmd::Trim | Cmd::WriteZeroes);
    match req.cmd {
        Cmd::Unknown(_) => return Some((Errno::Inval, "unknown command")),
        _ if writes && export.read_only => return Some((Errno::Perm, "the export is read-only")),
        Cmd::Read if req.length > limits.max_payload => {
            return Some((Errno::Inval, "read larger than the maximum block size"))
        }
        Cmd::BlockStatus if !conn.base_allocation => return Some((Errno::Inval, "base:allocation was not negotiated")),
        Cmd::BlockStatus if req.length == 0 => return Some((Errno::Inval, "block status of an empty range")),
        _ => {}
    }
    if req.cmd != Cmd::Flush && !in_range {
        return Some((Errno::Inval, "range is outside the export"));
    }
    None
}

/// Runs a job on the blocking pool and queues its reply.
fn dispatch(job: Job, conn: Arc<Conn>, tx: mpsc::Sender<Outgoing>) {
    tokio::task::spawn_blocking(move || {
        let out = run_job(job, &conn);
        // The channel holds as many replies as there are slots, so this
        // never waits; it fails only when the writer is gone, and then the
        // reply has nobody to go to.
        let _ = tx.blocking_send(out);
    });
}

/// Runs a job where the reader is, when nothing else is in flight on the
/// connection and no further request is already buffered: a lone request
/// (queue depth 1) then costs no hand-off to a pool thread and back, which
/// dominates its latency on a busy machine. `block_in_place` first moves
/// this worker's other tasks to another thread, so the engine call still
/// blocks no async work. Returns the job when it must be dispatched.
fn try_inline(job: Job, conn: &Conn, idle: bool) -> Result<Outgoing, Job> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if !idle || !multi_thread {
        return Err(job);
    }
    Ok(tokio::task::block_in_place(|| run_job(job, conn)))
}

fn run_job(job: Job, conn: &Conn) -> Outgoing {
    let Job { req, payload, slot, buffer, gate } = job;
    let bytes = execute(conn, &req, &payload);
    drop(payload);
    drop(gate);
    Outgoing { bytes, _slot: Some(slot), _buffer: buffer }
}

/// Performs one request against the engine and encodes the reply.
fn execute(conn: &Conn, req: &Request, payload: &[u8]) -> Vec<u8> {
    let vol = &conn.export.volume;
    let fua = req.flags & cflag::FUA != 0;
    let result = match req.cmd {
        Cmd::Read => return read(conn, req),
        Cmd::BlockStatus => return block_status(conn, req),
        Cmd::Write => {
            conn.wrote.store(true, Ordering::Release);
            vol.write_at(payload, req.offset).and_then(|()| flush_if(vol, fua))
        }
        Cmd::Flush => vol.flush(),
        Cmd::Trim => {
            conn.wrote.store(true, Ordering::Release);
            vol.discard(req.offset, u64::from(req.length)).and_then(|()| flush_if(vol, fua))
        }
        Cmd::WriteZeroes => {
            conn.wrote.store(true, Ordering::Release);
            if req.flags & cflag::NO_HOLE != 0 && req.flags & cflag::FAST_ZERO != 0 {
                // Writing zeroes is as slow as any write: say so, as FAST_ZERO asks.
                return error_reply(conn, req, Errno::NotSup, "zeroing without holes is not fast");
            }
            write_zeroes(vol, req).and_then(|()| flush_if(vol, fua))
        }
        // Reads go through the OS page cache already; there is nothing to prefetch into.
        Cmd::Cache => Ok(()),
        Cmd::Disc | Cmd::Unknown(_) => Ok(()),
    };
    match result {
        Ok(()) => p::simple_reply(req.handle, 0),
        Err(e) => engine_error(conn, req, &e),
    }
}

fn flush_if(vol: &cowvol::Volume, fua: bool) -> cowvol::Result<()> {
    if fua {
        vol.flush()
    } else {
        Ok(())
    }
}

/// `NO_HOLE` asks for allocated zeroes; without it the range is unmapped,
/// which reads as zeroes and frees space.
fn write_zeroes(vol: &cowvol::Volume, req: &Request) -> cowvol::Result<()> {
    if req.flags & cflag::NO_HOLE == 0 {
        return vol.discard(req.offset, u64::from(req.length));
    }
    let end = req.offset + u64::from(req.length);
    let zeroes = vec![0u8; ZERO_CHUNK.min(u64::from(req.length)) as usize];
    let mut pos = req.offset;
    while pos < end {
        let n = (end - pos).min(ZERO_CHUNK) as usize;
        vol.write_at(&zeroes[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

fn engine_error(conn: &Conn, req: &Request, e: &cowvol::Error) -> Vec<u8> {
    if errors::worth_logging(e) {
        log(conn, format_args!("{:?} at {}+{} failed: {e}", req.cmd, req.offset, req.length));
    }
    error_reply(conn, req, errors::errno(e), &e.to_string())
}

/// An error reply: an error chunk where a structured reply is required
/// (reads and block status), else a simple reply.
fn error_reply(conn: &Conn, req: &Request, errno: Errno, why: &str) -> Vec<u8> {
    if conn.structured && matches!(req.cmd, Cmd::Read | Cmd::BlockStatus) {
        p::error_chunk(req.handle, errno.to_wire(), &format!("{}: {why}", errno.name()))
    } else {
        p::simple_reply(req.handle, errno.to_wire())
    }
}

fn read(conn: &Conn, req: &Request) -> Vec<u8> {
    let vol = &conn.export.volume;
    let len = req.length as usize;
    if !conn.structured {
        let mut b = vec![0u8; p::SIMPLE_REPLY_LEN + len];
        return match vol.read_at(&mut b[p::SIMPLE_REPLY_LEN..], req.offset) {
            Ok(()) => {
                p::put_simple_reply(&mut b, req.handle, 0);
                b
            }
            Err(e) => engine_error(conn, req, &e),
        };
    }
    if len == 0 {
        return p::done_chunk(req.handle);
    }
    match structured_read(vol, req, req.flags & cflag::DF == 0) {
        Ok(b) => b,
        Err(e) => engine_error(conn, req, &e),
    }
}

/// A structured read: holes become `OFFSET_HOLE` chunks (no data sent),
/// data becomes `OFFSET_DATA` chunks read straight into the reply buffer.
fn structured_read(vol: &cowvol::Volume, req: &Request, holes: bool) -> cowvol::Result<Vec<u8>> {
    let len = u64::from(req.length);
    let extents = if holes {
        vol.extents(req.offset, len)?
    } else {
        vec![cowvol::Extent { offset: req.offset, len, data: true }]
    };
    let mut b = Vec::with_capacity(req.length as usize + extents.len() * (p::CHUNK_HEADER_LEN + 12));
    let mut last_header = 0;
    for e in &extents {
        last_header = b.len();
        // Each extent is within the request, so its length fits the wire's u32.
        let elen = e.len as u32;
        if e.data {
            p::push_chunk_header(&mut b, 0, chunk::OFFSET_DATA, req.handle, 8 + elen);
            b.extend_from_slice(&e.offset.to_be_bytes());
            let start = b.len();
            b.resize(start + e.len as usize, 0);
            vol.read_at(&mut b[start..], e.offset)?;
        } else {
            p::push_hole_chunk(&mut b, 0, req.handle, e.offset, elen);
        }
    }
    // The last chunk carries DONE: patch its flags field in place.
    b[last_header + 4..last_header + 6].copy_from_slice(&chunk::FLAG_DONE.to_be_bytes());
    Ok(b)
}

fn block_status(conn: &Conn, req: &Request) -> Vec<u8> {
    let extents = match conn.export.volume.extents(req.offset, u64::from(req.length)) {
        Ok(x) => x,
        Err(e) => return engine_error(conn, req, &e),
    };
    let mut descs: Vec<(u32, u32)> = Vec::new();
    for e in extents {
        let status = if e.data { 0 } else { p::STATE_HOLE | p::STATE_ZERO };
        match descs.last_mut() {
            Some((l, s)) if *s == status => *l += e.len as u32,
            _ => descs.push((e.len as u32, status)),
        }
    }
    let keep = if req.flags & cflag::REQ_ONE != 0 { 1 } else { MAX_DESCRIPTORS };
    descs.truncate(keep);
    p::block_status_chunk(req.handle, p::BASE_ALLOCATION_ID, &descs)
}

/// The one writer of a connection: writes replies as they come and flushes
/// whenever the queue runs dry. After a failed write it keeps draining the
/// queue, so that every in-flight slot is still returned.
async fn write_replies<W>(wr: W, mut rx: mpsc::Receiver<Outgoing>, timeout: Duration)
where
    W: AsyncWrite + Unpin,
{
    let mut w = BufWriter::with_capacity(128 * 1024, wr);
    let mut ok = true;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next {
            if ok {
                ok = matches!(tokio::time::timeout(timeout, w.write_all(&out.bytes)).await, Ok(Ok(())));
            }
            drop(out);
            next = rx.try_recv().ok();
        }
        if ok {
            ok = matches!(tokio::time::timeout(timeout, w.flush()).await, Ok(Ok(())));
        }
    }
    if ok {
        let _ = tokio::time::timeout(timeout, w.shutdown()).await;
    }
}
