//! The transmission phase of one connection.
//!
//! The engine's calls block, so after the handshake a connection is served
//! by threads of its own, not by the async workers. A thread takes the
//! connection's read side, reads one request (and its payload), lets go of
//! it, runs the request against the engine and writes the reply under the
//! write side's lock. A lone request (queue depth 1) is thus read, served
//! and answered by one thread with no hand-off between threads; the hops
//! from an async worker to the blocking pool and back cost more than the
//! request itself on a small machine (docs/performance.md has the profile).
//! A thread that finds more bytes buffered behind the request it read, or
//! that read a request which may take long (a flush), starts another thread
//! unless one is already waiting for the read side, up to the connection's
//! limit: requests run concurrently and replies leave in completion order,
//! matched by handle. From its header until its reply is written, a request
//! holds its buffer bytes (server-wide) and, on a volume, the volume's gate
//! (shared) until the engine call returns; the number of threads bounds
//! what one connection has in flight.

use crate::errors;
use crate::export::{lock, OpenExport};
use crate::handshake::Negotiated;
use crate::protocol::{self as p, cflag, chunk, Cmd, Errno, Request};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{OwnedRwLockReadGuard, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Per-server limits every connection obeys.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Largest read or write payload (also advertised as the maximum block size).
    pub(crate) max_payload: u32,
    /// Requests one connection may have in flight (its threads are at most
    /// this many, and at most [`MAX_THREADS`]).
    pub(crate) max_in_flight: usize,
    /// Buffer bytes all connections together may hold for requests in flight.
    pub(crate) buffer_bytes: Arc<Semaphore>,
    /// A reply that cannot be written for this long means a client that
    /// stopped reading: the connection is dropped.
    pub(crate) write_timeout: Duration,
}

/// Threads one connection runs at most. More would only queue on the
/// engine's locks and the disk; nbdkit's default is the same.
const MAX_THREADS: usize = 16;
/// Zeroes written per engine call for `WRITE_ZEROES` with `NO_HOLE`.
const ZERO_CHUNK: u64 = 1 << 20;
/// Descriptors in one block-status reply, so a reply never gets huge.
const MAX_DESCRIPTORS: usize = 64 * 1024;
/// Bytes of chunk headers reserved per read beyond its data.
const READ_OVERHEAD: u32 = 64 * 1024;

/// A connected socket in blocking mode, as the connection's threads use it.
#[derive(Debug)]
pub(crate) enum Socket {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Socket {
    fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
        })
    }

    /// Shuts one or both directions; a thread blocked reading wakes up to
    /// an end of stream.
    fn shutdown(&self, how: Shutdown) {
        // Fails only when the peer has gone already, which is the goal.
        let _ = match self {
            Socket::Unix(s) => s.shutdown(how),
            Socket::Tcp(s) => s.shutdown(how),
        };
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_write_timeout(Some(t)),
            Socket::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.read(buf),
            Socket::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.write(buf),
            Socket::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tokio stream that can leave the runtime for the transmission threads.
pub(crate) trait IntoSocket {
    /// The same connection as a blocking socket.
    fn into_socket(self) -> io::Result<Socket>;
}

impl IntoSocket for tokio::net::UnixStream {
    fn into_socket(self) -> io::Result<Socket> {
        let s = self.into_std()?;
        s.set_nonblocking(false)?;
        Ok(Socket::Unix(s))
    }
}

impl IntoSocket for tokio::net::TcpStream {
    fn into_socket(self) -> io::Result<Socket> {
        let s = self.into_std()?;
        s.set_nonblocking(false)?;
        Ok(Socket::Tcp(s))
    }
}

/// One connection: its fixed facts and what its threads share.
///
/// Field order matters: fields drop in declaration order, and `export` (the
/// volume's handle) must go before `socket`, `reader` and `writer` close
/// the connection.
struct Conn {
    export: Arc<OpenExport>,
    structured: bool,
    base_allocation: bool,
    peer: String,
    wrote: AtomicBool,
    limits: Limits,
    /// The server's runtime, to wait on its semaphore and lock when they are taken.
    runtime: Handle,
    /// A handle on the socket for shutting it down.
    socket: Socket,
    reader: Mutex<BufReader<Socket>>,
    writer: Mutex<ReplyWriter>,
    /// Threads waiting for the read side: when one is, nobody needs to be started.
    readers_waiting: AtomicUsize,
    /// Threads waiting for the write side: the last one writing flushes for all.
    writers_waiting: AtomicUsize,
    threads: AtomicUsize,
    max_threads: usize,
    /// Set once the connection is ending: no thread reads another request.
    ending: AtomicBool,
    /// Why it ends: the first reason wins.
    end: Mutex<Option<End>>,
    /// Fired by the last thread, when everything is finished.
    finished: CancellationToken,
}

struct ReplyWriter {
    out: BufWriter<Socket>,
    ok: bool,
}

/// A request ready for the engine.
struct Job {
    req: Request,
    payload: Vec<u8>,
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
pub(crate) async fn serve(socket: Socket, neg: Negotiated, limits: Limits, close: CancellationToken, peer: String) {
    let conn = match connect(socket, neg, limits, peer) {
        Ok(c) => Arc::new(c),
        Err((peer, e)) => {
            eprintln!("cowvol-nbd: {peer}: cannot serve the connection: {e}");
            return;
        }
    };
    if let Err(e) = start_thread(&conn) {
        conn.threads.fetch_sub(1, Ordering::AcqRel);
        log(&conn, format_args!("cannot start a thread for the connection: {e}"));
        return;
    }
    tokio::select! {
        () = conn.finished.cancelled() => {}
        () = close.cancelled() => {
            conn.finish(End::ClosedByServer);
            conn.finished.cancelled().await;
        }
    }
}

/// The shared state of a connection whose first thread is about to start.
fn connect(socket: Socket, neg: Negotiated, limits: Limits, peer: String) -> Result<Conn, (String, io::Error)> {
    let setup = || -> io::Result<(Socket, Socket)> {
        socket.set_write_timeout(limits.write_timeout)?;
        Ok((socket.try_clone()?, socket.try_clone()?))
    };
    let (rd, wr) = match setup() {
        Ok(x) => x,
        Err(e) => return Err((peer, e)),
    };
    Ok(Conn {
        export: neg.export,
        structured: neg.structured,
        base_allocation: neg.base_allocation,
        peer,
        wrote: AtomicBool::new(false),
        max_threads: limits.max_in_flight.clamp(1, MAX_THREADS),
        limits,
        runtime: Handle::current(),
        socket,
        reader: Mutex::new(BufReader::with_capacity(256 * 1024, rd)),
        writer: Mutex::new(ReplyWriter { out: BufWriter::with_capacity(128 * 1024, wr), ok: true }),
        readers_waiting: AtomicUsize::new(0),
        writers_waiting: AtomicUsize::new(0),
        threads: AtomicUsize::new(1),
        ending: AtomicBool::new(false),
        end: Mutex::new(None),
        finished: CancellationToken::new(),
    })
}

/// Starts a thread for `conn`; the caller has counted it in `conn.threads`.
fn start_thread(conn: &Arc<Conn>) -> io::Result<()> {
    let c = conn.clone();
    std::thread::Builder::new().name("cowvol-nbd-conn".into()).spawn(move || run_thread(c)).map(drop)
}

fn run_thread(conn: Arc<Conn>) {
    while let Some(step) = conn.next_step() {
        match step {
            Step::Run(job) => {
                let Job { req, payload, buffer, gate } = job;
                let bytes = execute(&conn, &req, &payload);
                drop((payload, gate));
                conn.reply(&bytes);
                drop(buffer);
            }
            Step::Refuse(req, errno, why) => {
                log(
                    &conn,
                    format_args!("refused {:?} at {}+{}: {why} ({})", req.cmd, req.offset, req.length, errno.name()),
                );
                conn.reply(&error_reply(&conn, &req, errno, why));
            }
            Step::End(end) => conn.finish(end),
        }
    }
    if conn.threads.fetch_sub(1, Ordering::AcqRel) == 1 {
        conn.close_down();
    }
}

impl Conn {
    /// The next request for this thread, or `None` once the connection is ending.
    fn next_step(self: &Arc<Self>) -> Option<Step> {
        if self.ending.load(Ordering::Acquire) {
            return None;
        }
        self.readers_waiting.fetch_add(1, Ordering::AcqRel);
        let mut rd = lock(&self.reader);
        self.readers_waiting.fetch_sub(1, Ordering::AcqRel);
        if self.ending.load(Ordering::Acquire) {
            return None;
        }
        let step = self.read_request(&mut rd);
        if let Step::Run(job) = &step {
            let more = !rd.buffer().is_empty() || may_take_long(&job.req);
            if more
                && self.readers_waiting.load(Ordering::Acquire) == 0
                && self.threads.load(Ordering::Acquire) < self.max_threads
            {
                self.threads.fetch_add(1, Ordering::AcqRel);
                // Only this thread (holding the read side) starts threads,
                // so the count cannot overshoot. Without a new thread the
                // requests are served one after another, which is still correct.
                if let Err(e) = start_thread(self) {
                    self.threads.fetch_sub(1, Ordering::AcqRel);
                    log(self, format_args!("cannot start another thread: {e}"));
                }
            }
        }
        Some(step)
    }

    /// Reads one request header (and payload) and decides what to do with it.
    fn read_request(&self, rd: &mut BufReader<Socket>) -> Step {
        let mut hdr = [0u8; p::REQUEST_LEN];
        if let Err(e) = read_header(rd, &mut hdr) {
            return Step::End(e);
        }
        let req = match Request::decode(&hdr) {
            Ok(r) => r,
            Err(p::BadMagic(m)) => return Step::End(End::Violation(format!("bad request magic {m:#x}"))),
        };
        if req.cmd == Cmd::Disc {
            return Step::End(End::Disc);
        }
        let limits = &self.limits;
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
        // The semaphore lives as long as the server; a closed one never happens.
        let buffer = if buffer_bytes > 0 {
            let sem = limits.buffer_bytes.clone();
            match sem.clone().try_acquire_many_owned(buffer_bytes) {
                Ok(b) => Some(b),
                Err(_) => match self.runtime.block_on(sem.acquire_many_owned(buffer_bytes)) {
                    Ok(b) => Some(b),
                    Err(_) => return Step::End(End::ClosedByServer),
                },
            }
        } else {
            None
        };
        // In flight from here: a restore waits for this request.
        let gate = self.export.gate.as_ref().map(|g| match g.io.clone().try_read_owned() {
            Ok(guard) => guard,
            Err(_) => self.runtime.block_on(g.io.clone().read_owned()),
        });
        let mut payload = Vec::new();
        if req.cmd == Cmd::Write {
            payload = vec![0u8; req.length as usize];
            if let Err(e) = rd.read_exact(&mut payload) {
                return Step::End(if e.kind() == io::ErrorKind::UnexpectedEof {
                    End::HungUpMidRequest
                } else {
                    End::Io(e)
                });
            }
        }
        if let Some((errno, why)) = check(self, &req, limits) {
            return Step::Refuse(req, errno, why);
        }
        Step::Run(Job { req, payload, buffer, gate })
    }

    /// Writes one reply. The socket is flushed by whoever writes last, so
    /// replies finishing together leave in one system call.
    fn reply(&self, bytes: &[u8]) {
        self.writers_waiting.fetch_add(1, Ordering::AcqRel);
        let mut w = lock(&self.writer);
        self.writers_waiting.fetch_sub(1, Ordering::AcqRel);
        if !w.ok {
            return;
        }
        let mut r = w.out.write_all(bytes);
        if r.is_ok() && self.writers_waiting.load(Ordering::Acquire) == 0 {
            r = w.out.flush();
        }
        if let Err(e) = r {
            w.ok = false;
            drop(w);
            self.finish(End::Io(e));
        }
    }

    /// Ends the connection: no further request is read, and threads
    /// waiting for one wake up. Requests already read still get replies.
    fn finish(&self, end: End) {
        lock(&self.end).get_or_insert(end);
        self.ending.store(true, Ordering::Release);
        self.socket.shutdown(Shutdown::Read);
    }

    /// The last thread's work: flush what was written, close, log, tell
    /// the async side.
    fn close_down(&self) {
        if self.wrote.load(Ordering::Acquire) {
            if let Err(e) = self.export.volume.flush() {
                log(self, format_args!("flush at disconnect failed: {e}"));
            }
        }
        {
            let mut w = lock(&self.writer);
            if w.ok {
                let _ = w.out.flush();
            }
        }
        // The socket is not shut down here: it closes when the `Conn` is
        // dropped, after its export (see the field order), so the volume's
        // handle is released before the client sees the end. A client that
        // reconnects at once to a read-write-once volume must not find it
        // busy with the connection it just left.
        let end = lock(&self.end).take().unwrap_or(End::HungUp);
        log_end(self, end);
        self.finished.cancel();
    }
}

/// Requests that can block for a long time: the next request should not
/// wait behind them for a thread.
fn may_take_long(req: &Request) -> bool {
    matches!(req.cmd, Cmd::Flush | Cmd::WriteZeroes) || req.flags & cflag::FUA != 0
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

fn read_header(rd: &mut BufReader<Socket>, hdr: &mut [u8; p::REQUEST_LEN]) -> Result<(), End> {
    let mut got = 0;
    while got < hdr.len() {
        match rd.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Err(End::HungUp),
            Ok(0) => return Err(End::HungUpMidRequest),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
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
