//! Listeners, connection limits, restore coordination and shutdown.

use crate::control::{self, Control};
use crate::export::{lock, Exports};
use crate::handshake::{self, HandshakeCtx, Outcome};
use crate::transmission::{self, IntoSocket, Limits};
use cowvol::{Error, RestoreOptions, Restored, SnapshotId, Store, VolumeId};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A unix socket at this path (`unix:PATH`).
    Unix(PathBuf),
    /// A TCP address (`tcp:HOST:PORT`); port 0 picks a free port.
    Tcp(String),
}

impl FromStr for ListenAddr {
    type Err = String;

    /// Parses `unix:PATH` or `tcp:HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp:").filter(|a| a.contains(':')) {
            Ok(ListenAddr::Tcp(addr.to_string()))
        } else {
            Err(format!("{s:?} is not unix:PATH or tcp:HOST:PORT"))
        }
    }
}

/// An address the server is listening on, with the port chosen when port 0 was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP socket.
    Tcp(SocketAddr),
}

impl fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundAddr::Unix(p) => write!(f, "nbd+unix:///?socket={}", p.display()),
            BoundAddr::Tcp(a) => write!(f, "nbd://{a}/"),
        }
    }
}

/// How the server runs. Every field has a documented default
/// ([`ServerOptions::new`]).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen; at least one address.
    pub listen: Vec<ListenAddr>,
    /// Serve every export read-only. Default: false.
    pub read_only: bool,
    /// Serve only these export names (volume names or ids, or `VOL@SNAP`);
    /// `None` (the default) serves every volume and its snapshots. With
    /// exactly one name, the empty export name means that one.
    pub exports: Option<Vec<String>>,
    /// Close a volume's connections (finishing in-flight requests and
    /// flushing first) before restoring it. Default: false.
    pub disconnect_on_restore: bool,
    /// Open connections at most; more are accepted and closed at once. Default: 256.
    pub max_connections: usize,
    /// A client must finish the handshake within this time. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Requests one connection may have in flight. Default: 64. A
    /// connection serves them on at most 16 threads of its own, one request
    /// per thread, so at most 16 are in flight at once.
    pub max_in_flight: usize,
    /// Largest read or write payload, advertised as the maximum block size. Default: 32 MiB.
    pub max_payload: u32,
    /// Request buffer bytes all connections together may hold. Default: 512 MiB
    /// (raised to at least `max_payload` plus reply overhead).
    pub buffer_bytes: u32,
    /// A reply the client does not read for this long drops the connection. Default: 60 s.
    pub write_timeout: Duration,
    /// The control socket, for `cowvol` commands forwarded to this process. Default: none.
    pub control: Option<Control>,
}

impl ServerOptions {
    /// Options listening on `listen`, defaults elsewhere.
    pub fn new(listen: Vec<ListenAddr>) -> ServerOptions {
        ServerOptions {
            listen,
            read_only: false,
            exports: None,
            disconnect_on_restore: false,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            max_payload: 32 << 20,
            buffer_bytes: 512 << 20,
            write_timeout: Duration::from_secs(60),
            control: None,
        }
    }
}

/// A running NBD server: a cheap handle (clones share the server).
///
/// Snapshots, forks and every other store operation go through
/// [`Server::store`] while volumes are exported; restores go through
/// [`Server::restore_snapshot`], which coordinates with the connections.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("addrs", &self.shared.bound).finish_non_exhaustive()
    }
}

struct Shared {
    store: Store,
    exports: Arc<Exports>,
    opts: ServerOptions,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    runtime: Handle,
    connections: Arc<Semaphore>,
    next_conn: AtomicU64,
    bound: Vec<BoundAddr>,
    /// Socket files to remove at shutdown.
    socket_files: Mutex<Vec<PathBuf>>,
}

impl Server {
    /// Binds every listener (and the control socket) and starts serving on
    /// the current tokio runtime.
    ///
    /// # Errors
    /// A listener that cannot be bound, or a unix socket path another live
    /// server answers on.
    pub async fn start(store: Store, opts: ServerOptions) -> io::Result<Server> {
        if opts.listen.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on"));
        }
        let max_payload = opts.max_payload.clamp(4096, 1 << 30);
        let buffer_bytes = opts.buffer_bytes.max(max_payload.saturating_add(1 << 20));
        let limits = Limits {
            max_payload,
            max_in_flight: opts.max_in_flight.max(1),
            buffer_bytes: Arc::new(Semaphore::new(buffer_bytes as usize)),
            write_timeout: opts.write_timeout,
        };
        let mut unix = Vec::new();
        let mut tcp = Vec::new();
        let mut bound = Vec::new();
        let mut socket_files = Vec::new();
        for addr in &opts.listen {
            match addr {
                ListenAddr::Unix(path) => {
                    let l = bind_unix(path).await?;
                    bound.push(BoundAddr::Unix(path.clone()));
                    socket_files.push(path.clone());
                    unix.push(l);
                }
                ListenAddr::Tcp(a) => {
                    let l = TcpListener::bind(a.as_str()).await?;
                    bound.push(BoundAddr::Tcp(l.local_addr()?));
                    tcp.push(l);
                }
            }
        }
        let control = match &opts.control {
            Some(c) => {
                let l = control::bind(&c.socket).await?;
                socket_files.push(c.socket.clone());
                Some((l, c.handler.clone()))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            exports: Arc::new(Exports::new(store.clone(), opts.exports.clone(), opts.read_only)),
            store,
            limits,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            runtime: Handle::current(),
            connections: Arc::new(Semaphore::new(opts.max_connections.max(1))),
            next_conn: AtomicU64::new(1),
            bound,
            socket_files: Mutex::new(socket_files),
            opts,
        });
        let server = Server { shared };
        for l in unix {
            let s = server.clone();
            server.shared.tracker.spawn(async move { s.accept_unix(l).await });
        }
        for l in tcp {
            let s = server.clone();
            server.shared.tracker.spawn(async move { s.accept_tcp(l).await });
        }
        if let Some((l, handler)) = control {
            let s = server.clone();
            server.shared.tracker.spawn(async move { control::serve(l, s, handler).await });
        }
        Ok(server)
    }

    /// The addresses the server listens on, in the order of [`ServerOptions::listen`].
    pub fn local_addrs(&self) -> &[BoundAddr] {
        &self.shared.bound
    }

    /// The store being served: snapshots, forks and every other operation
    /// work on it while volumes are exported.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Restores `volume` to `snapshot` while it may be exported.
    ///
    /// New requests to the volume wait while the restore waits for the
    /// requests in flight (those whose header has arrived) to finish; with
    /// [`ServerOptions::disconnect_on_restore`] the volume's connections are
    /// first closed cleanly (in-flight requests finished, flushed). Clients
    /// see the snapshot's data on their next read; a client must unmount or
    /// freeze its file system first, because its caches still hold the old
    /// state. `opts.timeout` bounds the whole wait.
    ///
    /// # Errors
    /// As [`Store::restore_snapshot`]; [`Error::Timeout`] when in-flight
    /// requests (or, with `disconnect_on_restore`, connections) do not
    /// finish in time, and then nothing was changed.
    pub async fn restore_snapshot(
        &self,
        volume: VolumeId,
        snapshot: SnapshotId,
        opts: RestoreOptions,
    ) -> cowvol::Result<Restored> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let timeout = |what: &str| Error::Timeout {
            what: format!("restoring volume {volume} to {snapshot} ({what})"),
            waited_ms: started.elapsed().as_millis() as u64,
        };
        let gate = self.shared.exports.gate(volume);
        if self.shared.opts.disconnect_on_restore {
            for closed in gate.close_all() {
                tokio::time::timeout_at(deadline, closed.cancelled())
                    .await
                    .map_err(|_| timeout("waiting for its NBD connections to close"))?;
            }
        }
        let exclusive = tokio::time::timeout_at(deadline, gate.io.clone().write_owned())
            .await
            .map_err(|_| timeout("waiting for in-flight NBD requests"))?;
        let store = self.shared.store.clone();
        let opts = RestoreOptions { timeout: opts.timeout.saturating_sub(started.elapsed()), ..opts };
        let result = tokio::task::spawn_blocking(move || store.restore_snapshot(volume, snapshot, opts))
            .await
            .map_err(|e| Error::Io { during: "restoring".into(), source: io::Error::other(e) })?;
        drop(exclusive);
        if let Err(e) = &result {
            eprintln!("cowvol-nbd: restore of volume {volume} to {snapshot} failed: {e}");
        }
        result
    }

    /// [`Server::restore_snapshot`] for a thread outside the runtime (such as a
    /// blocking-pool thread running a control command).
    ///
    /// # Errors
    /// As [`Server::restore_snapshot`].
    ///
    /// # Panics
    /// When called on one of the runtime's async worker threads.
    pub fn restore_snapshot_blocking(
        &self,
        volume: VolumeId,
        snapshot: SnapshotId,
        opts: RestoreOptions,
    ) -> cowvol::Result<Restored> {
        self.shared.runtime.block_on(self.restore_snapshot(volume, snapshot, opts))
    }

    /// Stops accepting, closes every connection after its in-flight requests
    /// (waiting at most `drain` for them), flushes and checkpoints the store,
    /// and removes the socket files.
    ///
    /// # Errors
    /// The final flush or checkpoint failed.
    pub async fn shutdown(&self, drain: Duration) -> cowvol::Result<()> {
        let sh = &self.shared;
        sh.shutdown.cancel();
        sh.tracker.close();
        if tokio::time::timeout(drain, sh.tracker.wait()).await.is_err() {
            eprintln!("cowvol-nbd: some connections did not finish within {drain:?}; closing anyway");
        }
        for path in lock(&sh.socket_files).drain(..) {
            let _ = std::fs::remove_file(path);
        }
        let exports = sh.exports.clone();
        let store = sh.store.clone();
        tokio::task::spawn_blocking(move || {
            for e in exports.open_handles() {
                if e.volume.is_writable() {
                    e.volume.flush()?;
                }
            }
            store.checkpoint()
        })
        .await
        .map_err(|e| Error::Io { during: "flushing at shutdown".into(), source: io::Error::other(e) })?
    }

    /// Whether [`Server::shutdown`] has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    async fn accept_unix(self, l: UnixListener) {
        loop {
            let r = tokio::select! {
                () = self.shared.shutdown.cancelled() => return,
                r = l.accept() => r,
            };
            match r {
                Ok((s, _)) => {
                    let id = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
                    self.admit(s, id, format!("unix client #{id}"));
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }

    async fn accept_tcp(self, l: TcpListener) {
        loop {
            let r = tokio::select! {
                () = self.shared.shutdown.cancelled() => return,
                r = l.accept() => r,
            };
            match r {
                Ok((s, peer)) => {
                    // Small requests and replies: latency matters more than packet count.
                    let _ = s.set_nodelay(true);
                    let id = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
                    self.admit(s, id, format!("tcp client {peer}"));
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }

    /// Starts serving a new connection, or closes it when the server is full.
    fn admit<S>(&self, stream: S, id: u64, peer: String)
    where
        S: AsyncRead + AsyncWrite + IntoSocket + Unpin + Send + 'static,
    {
        let Ok(permit) = self.shared.connections.clone().try_acquire_owned() else {
            eprintln!("cowvol-nbd: {peer}: refused: {} connections are open already", self.shared.opts.max_connections);
            return;
        };
        let s = self.clone();
        self.shared.tracker.spawn(async move {
            s.connection(stream, id, peer).await;
            drop(permit);
        });
    }

    async fn connection<S>(self, mut stream: S, id: u64, peer: String)
    where
        S: AsyncRead + AsyncWrite + IntoSocket + Unpin + Send + 'static,
    {
        let sh = &self.shared;
        let ctx = HandshakeCtx {
            exports: sh.exports.clone(),
            preferred_block: sh.store.block_size(),
            max_payload: sh.limits.max_payload,
        };
        let outcome = tokio::select! {
            () = sh.shutdown.cancelled() => return,
            r = tokio::time::timeout(sh.opts.handshake_timeout, handshake::negotiate(&mut stream, &ctx)) => r,
        };
        let neg = match outcome {
            Ok(Ok(Outcome::Transmission(neg))) => neg,
            Ok(Ok(Outcome::ClientLeft)) => return,
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                eprintln!("cowvol-nbd: {peer}: disconnected during the handshake");
                return;
            }
            Ok(Err(e)) => {
                eprintln!("cowvol-nbd: {peer}: handshake failed: {e}");
                return;
            }
            Err(_) => {
                eprintln!("cowvol-nbd: {peer}: handshake not finished within {:?}; closing", sh.opts.handshake_timeout);
                return;
            }
        };
        // The requests are served by threads of the connection's own (see `transmission`).
        let socket = match stream.into_socket() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cowvol-nbd: {peer}: cannot serve the connection: {e}");
                return;
            }
        };
        let close = sh.shutdown.child_token();
        let _registration = neg.export.gate.as_ref().map(|g| g.register(id, close.clone()));
        transmission::serve(socket, neg, sh.limits.clone(), close, peer).await;
    }
}

/// Accept errors are mostly running out of file descriptors: wait a moment
/// instead of spinning.
async fn accept_failed(e: io::Error) {
    eprintln!("cowvol-nbd: accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Binds a unix socket, replacing a stale socket file but never one a live
/// server answers on.
pub(crate) async fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// Runs a server on a new runtime until SIGINT or SIGTERM, then shuts it
/// down gracefully. `ready` is called once the listeners are bound (to print
/// the addresses, say).
///
/// # Errors
/// Binding failed, or the shutdown's flush failed.
pub fn run_until_signal(store: Store, opts: ServerOptions, ready: impl FnOnce(&Server)) -> io::Result<()> {
    // Requests run on their connections' own threads (see `transmission`);
    // the other engine calls (opening exports, control commands, restores,
    // shutdown) run on the blocking pool, whose cap keeps a burst of them
    // from becoming as many threads.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(64).build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let server = Server::start(store, opts).await?;
        ready(&server);
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("cowvol-nbd: shutting down: finishing in-flight requests");
        server.shutdown(Duration::from_secs(30)).await.map_err(io::Error::from)
    })
}
