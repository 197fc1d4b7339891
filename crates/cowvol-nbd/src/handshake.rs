//! The fixed-newstyle handshake: greeting, client flags, then options until
//! the client picks an export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or
//! leaves (`NBD_OPT_ABORT`, or hanging up).

use crate::errors;
use crate::export::{Exports, OpenExport, Target};
use crate::protocol::{self as p, rep, Malformed, Opt, Reader};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Option data longer than this ends the connection: names are at most
/// 4 KiB, and nothing this server understands needs more than a few names.
const MAX_OPTION_LEN: u32 = 64 * 1024;
/// A client that sends more options than this is not negotiating.
const MAX_OPTIONS: usize = 512;

/// What the handshake needs from the server.
pub(crate) struct HandshakeCtx {
    pub(crate) exports: Arc<Exports>,
    /// `NBD_INFO_BLOCK_SIZE` preferred size: the store's block size.
    pub(crate) preferred_block: u32,
    /// `NBD_INFO_BLOCK_SIZE` maximum: the largest read or write payload.
    pub(crate) max_payload: u32,
}

/// The result of a successful handshake.
pub(crate) struct Negotiated {
    pub(crate) export: Arc<OpenExport>,
    pub(crate) structured: bool,
    /// `base:allocation` was selected for this export, so `NBD_CMD_BLOCK_STATUS` is allowed.
    pub(crate) base_allocation: bool,
}

/// How the handshake ended.
pub(crate) enum Outcome {
    Transmission(Negotiated),
    /// The client aborted or hung up during option haggling.
    ClientLeft,
}

/// A protocol violation that ends the connection, with the reason to log.
fn violation(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

struct State {
    structured: bool,
    /// The export named by the last `NBD_OPT_SET_META_CONTEXT`, and whether it selected `base:allocation`.
    meta: Option<(String, bool)>,
    no_zeroes: bool,
}

/// Runs the handshake on `s`.
///
/// # Errors
/// I/O errors, and `InvalidData` for a client that breaks the protocol.
pub(crate) async fn negotiate<S>(s: &mut S, ctx: &HandshakeCtx) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&p::greeting()).await?;
    s.flush().await?;
    let client_flags = s.read_u32().await?;
    if client_flags & !p::CLIENT_KNOWN_FLAGS != 0 {
        return Err(violation(format!("unknown client flags {client_flags:#x}")));
    }
    let mut st = State { structured: false, meta: None, no_zeroes: client_flags & p::CLIENT_NO_ZEROES != 0 };
    for _ in 0..MAX_OPTIONS {
        let magic = match s.read_u64().await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Outcome::ClientLeft),
            Err(e) => return Err(e),
        };
        if magic != p::IHAVEOPT {
            return Err(violation(format!("bad option magic {magic:#x}")));
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION_LEN {
            return Err(violation(format!("option {opt} carries {len} bytes (limit {MAX_OPTION_LEN})")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        if let Some(outcome) = option(s, ctx, &mut st, opt, &data).await? {
            return Ok(outcome);
        }
    }
    Err(violation(format!("more than {MAX_OPTIONS} options")))
}

/// Handles one option; `Some` ends the handshake.
async fn option<S>(s: &mut S, ctx: &HandshakeCtx, st: &mut State, opt: u32, data: &[u8]) -> io::Result<Option<Outcome>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match Opt::from_wire(opt) {
        Opt::ExportName => export_name(s, ctx, st, data).await,
        Opt::Abort => {
            // The client hangs up after this; a failed write changes nothing.
            let _ = reply(s, opt, rep::ACK, &[]).await;
            Ok(Some(Outcome::ClientLeft))
        }
        Opt::List => {
            if !data.is_empty() {
                return reply(s, opt, rep::ERR_INVALID, b"NBD_OPT_LIST takes no data").await.map(|()| None);
            }
            let exports = ctx.exports.clone();
            let names = blocking(move || exports.list()).await?;
            for n in names {
                send(s, opt, rep::SERVER, &p::rep_server(&n)).await?;
            }
            reply(s, opt, rep::ACK, &[]).await.map(|()| None)
        }
        Opt::Info | Opt::Go => info_or_go(s, ctx, st, opt, data).await,
        Opt::StructuredReply => {
            if !data.is_empty() {
                return reply(s, opt, rep::ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data").await.map(|()| None);
            }
            st.structured = true;
            reply(s, opt, rep::ACK, &[]).await.map(|()| None)
        }
        Opt::ListMetaContext | Opt::SetMetaContext => meta_context(s, ctx, st, opt, data).await.map(|()| None),
        Opt::StartTls | Opt::Unknown(_) => {
            reply(s, opt, rep::ERR_UNSUP, b"option not supported by this server").await.map(|()| None)
        }
    }
}

/// `NBD_OPT_EXPORT_NAME`: no way to report an error but hanging up.
async fn export_name<S>(s: &mut S, ctx: &HandshakeCtx, st: &mut State, data: &[u8]) -> io::Result<Option<Outcome>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = String::from_utf8(data.to_vec()).map_err(|_| violation("export name is not UTF-8"))?;
    let export = match open(ctx, name.clone()).await? {
        Ok(e) => e,
        Err(e) => return Err(violation(format!("NBD_OPT_EXPORT_NAME {name:?}: {e}"))),
    };
    s.write_all(&p::export_name_reply(export.size(), export.flags(), !st.no_zeroes)).await?;
    s.flush().await?;
    Ok(Some(Outcome::Transmission(negotiated(st, export, &name))))
}

fn negotiated(st: &State, export: Arc<OpenExport>, name: &str) -> Negotiated {
    // Contexts chosen for another export name do not carry over.
    let base_allocation = matches!(&st.meta, Some((n, true)) if n == name);
    Negotiated { export, structured: st.structured, base_allocation }
}

/// `NBD_OPT_INFO` and `NBD_OPT_GO`: describe the export; `GO` also enters transmission.
async fn info_or_go<S>(
    s: &mut S,
    ctx: &HandshakeCtx,
    st: &mut State,
    opt: u32,
    data: &[u8],
) -> io::Result<Option<Outcome>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let parse = |data| -> Result<(String, Vec<u16>), Malformed> {
        let mut r = Reader::new(data);
        let name = r.string()?;
        let n = r.u16()?;
        let infos = (0..n).map(|_| r.u16()).collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok((name, infos))
    };
    let Ok((name, infos)) = parse(data) else {
        return reply(s, opt, rep::ERR_INVALID, b"malformed NBD_OPT_INFO/GO data").await.map(|()| None);
    };
    let export = match open(ctx, name.clone()).await? {
        Ok(e) => e,
        Err(e) => {
            let msg = e.to_string();
            return reply(s, opt, errors::option_error(&e), msg.as_bytes()).await.map(|()| None);
        }
    };
    send(s, opt, rep::INFO, &p::info_export(export.size(), export.flags())).await?;
    if infos.contains(&p::info::NAME) {
        send(s, opt, rep::INFO, &p::info_name(&export.name)).await?;
    }
    // Always sent: min 1 means any alignment works; clients that honour the
    // preferred size avoid read-modify-write of partial blocks.
    send(s, opt, rep::INFO, &p::info_block_size(1, ctx.preferred_block, ctx.max_payload)).await?;
    reply(s, opt, rep::ACK, &[]).await?;
    if Opt::from_wire(opt) == Opt::Go {
        return Ok(Some(Outcome::Transmission(negotiated(st, export, &name))));
    }
    Ok(None)
}

/// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`; the only context is `base:allocation`.
async fn meta_context<S>(s: &mut S, ctx: &HandshakeCtx, st: &mut State, opt: u32, data: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let set = Opt::from_wire(opt) == Opt::SetMetaContext;
    if set && !st.structured {
        return reply(s, opt, rep::ERR_INVALID, b"negotiate structured replies first").await;
    }
    let parse = |data| -> Result<(String, Vec<String>), Malformed> {
        let mut r = Reader::new(data);
        let name = r.string()?;
        let n = r.u32()?;
        let mut queries = Vec::new();
        for _ in 0..n {
            queries.push(r.string()?);
        }
        r.finish()?;
        Ok((name, queries))
    };
    let Ok((name, queries)) = parse(data) else {
        return reply(s, opt, rep::ERR_INVALID, b"malformed meta context data").await;
    };
    let exports = ctx.exports.clone();
    let lookup = name.clone();
    if let Err(e) = blocking(move || exports.resolve(&lookup)).await? {
        let msg = e.to_string();
        return reply(s, opt, errors::option_error(&e), msg.as_bytes()).await;
    }
    let matches = |q: &str| q == p::BASE_ALLOCATION || (!set && q == "base:");
    let selected =
        if set { queries.iter().any(|q| matches(q)) } else { queries.is_empty() || queries.iter().any(|q| matches(q)) };
    if selected {
        send(s, opt, rep::META_CONTEXT, &p::rep_meta_context(p::BASE_ALLOCATION_ID, p::BASE_ALLOCATION)).await?;
    }
    if set {
        st.meta = Some((name, selected));
    }
    reply(s, opt, rep::ACK, &[]).await
}

/// Resolves and opens an export off the async workers.
async fn open(ctx: &HandshakeCtx, name: String) -> io::Result<Result<Arc<OpenExport>, cowvol::Error>> {
    let exports = ctx.exports.clone();
    blocking(move || {
        let (name, target): (String, Target) = exports.resolve(&name)?;
        exports.open(name, target)
    })
    .await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)
}

/// Sends one option reply without flushing (more follow).
async fn send<S: AsyncWrite + Unpin>(s: &mut S, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    s.write_all(&p::option_reply(opt, kind, data)).await
}

/// Sends the final reply to an option and flushes.
async fn reply<S: AsyncWrite + Unpin>(s: &mut S, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    send(s, opt, kind, data).await?;
    s.flush().await
}
