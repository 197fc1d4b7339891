//! An NBD (Network Block Device) server for cowvol volumes.
//!
//! Any NBD client (qemu, the libnbd tools, `nbdfuse`, the Linux `nbd`
//! driver) can attach a volume as a disk: the export name is a volume's
//! name or id, or `VOL@SNAP` for a snapshot (read-only). The server speaks
//! the fixed-newstyle handshake with `NBD_OPT_GO`, structured replies and
//! the `base:allocation` metadata context, so copy tools skip holes.
//!
//! ```no_run
//! use cowvol::{Store, StoreOptions};
//! use cowvol_nbd::{ListenAddr, Server, ServerOptions};
//! # async fn run() -> std::io::Result<()> {
//! let store = Store::open("/var/lib/disks", StoreOptions::default())?;
//! let opts = ServerOptions::new(vec![ListenAddr::Unix("/run/disks.sock".into())]);
//! let server = Server::start(store, opts).await?;
//! // qemu-img info 'nbd+unix:///root-disk?socket=/run/disks.sock'
//! server.store().list_volumes();                   // the store stays usable
//! server.shutdown(std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```
//!
//! Layers, each using only the ones below it: [`server`] (listeners,
//! limits, restore coordination, shutdown) and [`control`] (the control
//! socket) → `handshake` and `transmission` (one connection's two phases)
//! → `export` (names to engine handles) → `errors` (engine errors to
//! protocol codes, in one place) → `protocol` (the wire format).
#![deny(missing_docs)]

pub mod control;
mod errors;
mod export;
mod handshake;
mod protocol;
pub mod server;
mod transmission;

pub use control::{Control, ControlHandler, ControlRequest, ControlResponse};
pub use server::{run_until_signal, BoundAddr, ListenAddr, Server, ServerOptions};
