//! The control socket: how a second `cowvol` process reaches the store this
//! server holds locked.
//!
//! Protocol (one request per connection, on a unix socket with mode 0600):
//! each message is a 4-byte big-endian length followed by that many bytes of
//! JSON. The client sends a [`ControlRequest`] (`{"version":1,"argv":[...]}`,
//! the command line after the program name); the server runs it against its
//! open store and answers with a [`ControlResponse`]
//! (`{"code":0,"stdout":"...","stderr":"..."}`), then closes. Messages are
//! limited to [`MAX_MESSAGE`] bytes.

use crate::server::{bind_unix, Server};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The largest request or response, in bytes.
pub const MAX_MESSAGE: u32 = 16 << 20;
/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;
/// How long the server waits for a request to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A command forwarded to the serving process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// Protocol version ([`VERSION`]).
    pub version: u32,
    /// The command's arguments, without the program name.
    pub argv: Vec<String>,
}

/// What the forwarded command printed, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Exit code.
    pub code: u8,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ControlResponse {
    /// A failure with a message on stderr.
    pub fn failure(code: u8, stderr: impl Into<String>) -> ControlResponse {
        ControlResponse { code, stdout: String::new(), stderr: stderr.into() }
    }
}

/// Runs a forwarded command against the server's store. It runs on the
/// blocking pool, so it may call the engine and
/// [`Server::restore_snapshot_blocking`].
pub type ControlHandler = Arc<dyn Fn(&Server, ControlRequest) -> ControlResponse + Send + Sync>;

/// The control socket of a server: where it listens and what runs requests.
#[derive(Clone)]
pub struct Control {
    /// Socket path, conventionally [`socket_path`] of the store directory.
    pub socket: PathBuf,
    /// Runs each request.
    pub handler: ControlHandler,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control").field("socket", &self.socket).finish_non_exhaustive()
    }
}

/// The conventional control socket of a store directory: `DIR/cowvol.ctl`.
pub fn socket_path(store_dir: &Path) -> PathBuf {
    store_dir.join("cowvol.ctl")
}

/// Binds the socket so that only its owner can connect: it is created under
/// a temporary name, restricted, then renamed into place.
pub(crate) async fn bind(path: &Path) -> io::Result<UnixListener> {
    let tmp = path.with_extension(format!("ctl.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = bind_unix(&tmp).await?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    if path.exists() && UnixStream::connect(path).await.is_ok() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("{} is in use", path.display())));
    }
    std::fs::rename(&tmp, path)?;
    Ok(l)
}

/// Serves control requests until the server shuts down, one task per request.
pub(crate) async fn serve(l: UnixListener, server: Server, handler: ControlHandler) {
    let stop = server.shutdown_token();
    loop {
        let r = tokio::select! {
            () = stop.cancelled() => return,
            r = l.accept() => r,
        };
        match r {
            Ok((s, _)) => {
                let (server, handler) = (server.clone(), handler.clone());
                tokio::spawn(async move {
                    if let Err(e) = one_request(s, server, handler).await {
                        eprintln!("cowvol-nbd: control request failed: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("cowvol-nbd: control accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn one_request(mut s: UnixStream, server: Server, handler: ControlHandler) -> io::Result<()> {
    let body = tokio::time::timeout(READ_TIMEOUT, async {
        let len = s.read_u32().await?;
        if len > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("request of {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).await?;
        Ok(body)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request did not arrive in time"))??;
    let response = match serde_json::from_slice::<ControlRequest>(&body) {
        Ok(req) if req.version == VERSION => {
            eprintln!("cowvol-nbd: control: running `cowvol {}`", req.argv.join(" "));
            tokio::task::spawn_blocking(move || handler(&server, req)).await.unwrap_or_else(|_| {
                ControlResponse::failure(1, "cowvol: error: the forwarded command panicked in the server\n")
            })
        }
        Ok(req) => ControlResponse::failure(
            2,
            format!(
                "cowvol: error: control protocol version {} is not supported (this server speaks {VERSION})\n",
                req.version
            ),
        ),
        Err(e) => ControlResponse::failure(2, format!("cowvol: error: malformed control request: {e}\n")),
    };
    let out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    s.write_u32(out.len() as u32).await?;
    s.write_all(&out).await?;
    s.shutdown().await
}

/// Sends `argv` to the server listening on `socket` and waits for the result.
/// Blocking; for the `cowvol` command and tests.
///
/// # Errors
/// The socket cannot be reached, or the answer is malformed.
pub fn forward(socket: &Path, argv: Vec<String>) -> io::Result<ControlResponse> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    let body = serde_json::to_vec(&ControlRequest { version: VERSION, argv }).map_err(io::Error::other)?;
    s.write_all(&(body.len() as u32).to_be_bytes())?;
    s.write_all(&body)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("response of {len} bytes")));
    }
    let mut out = vec![0u8; len as usize];
    s.read_exact(&mut out)?;
    serde_json::from_slice(&out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
