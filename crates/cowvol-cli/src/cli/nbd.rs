//! `cowvol nbd`: serve volumes over NBD, and take other `cowvol` commands
//! over the store's control socket while serving.

use super::args::NbdArgs;
use super::error::{CliResult, IoContext};
use super::{close, run_forwarded, Ctx};
use cowvol_nbd::{control, Control, ServerOptions};
use std::sync::Arc;
use std::time::Duration;

/// Runs the server until SIGINT or SIGTERM.
pub fn run(ctx: &Ctx, a: NbdArgs) -> CliResult {
    let store = ctx.open_store()?;
    let mut opts = ServerOptions::new(a.listen);
    opts.read_only = a.read_only;
    opts.exports = (!a.export.is_empty()).then_some(a.export);
    opts.disconnect_on_restore = a.disconnect_on_restore;
    opts.max_connections = a.max_connections;
    opts.handshake_timeout = Duration::from_secs(a.handshake_timeout.max(1));
    let socket = control::socket_path(&ctx.store_dir);
    opts.control = Some(Control { socket: socket.clone(), handler: Arc::new(run_forwarded) });
    let quiet = ctx.quiet;
    cowvol_nbd::run_until_signal(store.clone(), opts, |server| {
        if !quiet {
            for addr in server.local_addrs() {
                eprintln!("cowvol nbd: listening on {addr}");
            }
            eprintln!("cowvol nbd: control socket {}", socket.display());
        }
    })
    .io_ctx("serving NBD")?;
    close(store)
}
