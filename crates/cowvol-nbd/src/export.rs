//! Export names and the handles behind them.
//!
//! An export name is a volume's name or id (`db`, `vol-3`, `3`), or
//! `VOL@SNAP` for one of its snapshots (read-only). All connections to one
//! target share one engine handle: a read-write-once volume admits one
//! writable handle, and sharing it is also what makes `CAN_MULTI_CONN`
//! true (every connection writes through the same handle, and the engine's
//! flush covers the whole store).

use crate::protocol::tflag;
use cowvol::{AutoFlush, Error, HandleOptions, OpenMode, SnapshotId, Store, Volume, VolumeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio_util::sync::CancellationToken;

/// What an export name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Volume(VolumeId),
    Snapshot(VolumeId, SnapshotId),
}

/// Per-volume coordination between NBD requests and restores.
#[derive(Debug, Default)]
pub(crate) struct VolumeGate {
    /// Requests hold it shared from the moment their header arrives until
    /// the engine call returns; a restore holds it exclusively, so it waits
    /// for in-flight requests and new ones wait for it (tokio's lock is
    /// fair: a waiting writer holds back later readers).
    pub(crate) io: Arc<tokio::sync::RwLock<()>>,
    /// Open connections to the volume: id → (ask it to close, it has closed).
    conns: Mutex<HashMap<u64, ConnSignals>>,
}

#[derive(Debug, Clone)]
struct ConnSignals {
    close: CancellationToken,
    closed: CancellationToken,
}

impl VolumeGate {
    /// Registers a connection; the returned guard unregisters it and
    /// announces that it has closed.
    pub(crate) fn register(self: &Arc<Self>, id: u64, close: CancellationToken) -> ConnRegistration {
        let closed = CancellationToken::new();
        lock(&self.conns).insert(id, ConnSignals { close, closed: closed.clone() });
        ConnRegistration { gate: self.clone(), id, closed }
    }

    /// Asks every open connection to close, and returns tokens that fire as each one has.
    pub(crate) fn close_all(&self) -> Vec<CancellationToken> {
        lock(&self.conns)
            .values()
            .map(|s| {
                s.close.cancel();
                s.closed.clone()
            })
            .collect()
    }
}

/// Keeps a connection listed on its volume until dropped.
#[derive(Debug)]
pub(crate) struct ConnRegistration {
    gate: Arc<VolumeGate>,
    id: u64,
    closed: CancellationToken,
}

impl Drop for ConnRegistration {
    fn drop(&mut self) {
        lock(&self.gate.conns).remove(&self.id);
        self.closed.cancel();
    }
}

/// An export in use by one or more connections.
#[derive(Debug)]
pub(crate) struct OpenExport {
    pub(crate) name: String,
    pub(crate) volume: Volume,
    pub(crate) read_only: bool,
    /// The volume's gate; `None` for snapshots, which no restore changes.
    pub(crate) gate: Option<Arc<VolumeGate>>,
}

impl OpenExport {
    /// The transmission flags this export advertises.
    pub(crate) fn flags(&self) -> u16 {
        let common = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::CAN_MULTI_CONN | tflag::SEND_CACHE;
        if self.read_only {
            common | tflag::READ_ONLY
        } else {
            common | tflag::SEND_FUA | tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES | tflag::SEND_FAST_ZERO
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.volume.size()
    }
}

/// Name resolution and the shared handles of every open export.
#[derive(Debug)]
pub(crate) struct Exports {
    store: Store,
    /// `--export`: only these names are served; `None` serves every volume.
    allowed: Option<Vec<String>>,
    read_only: bool,
    open: Mutex<HashMap<Target, Weak<OpenExport>>>,
    gates: Mutex<HashMap<VolumeId, Arc<VolumeGate>>>,
}

impl Exports {
    pub(crate) fn new(store: Store, allowed: Option<Vec<String>>, read_only: bool) -> Exports {
        Exports { store, allowed, read_only, open: Mutex::default(), gates: Mutex::default() }
    }

    /// The names `NBD_OPT_LIST` shows.
    pub(crate) fn list(&self) -> Vec<String> {
        match &self.allowed {
            Some(names) => names.clone(),
            None => self.store.list_volumes().into_iter().map(|v| v.name).collect(),
        }
    }

    /// The volume's gate (created on first use; one per volume for the server's life).
    pub(crate) fn gate(&self, id: VolumeId) -> Arc<VolumeGate> {
        lock(&self.gates).entry(id).or_default().clone()
    }

    /// Resolves an export name. The empty name means the only export when
    /// `--export` named exactly one.
    pub(crate) fn resolve(&self, name: &str) -> Result<(String, Target), Error> {
        let name = match (&self.allowed, name) {
            (Some(names), "") if names.len() == 1 => names[0].as_str(),
            (Some(names), n) if !names.iter().any(|a| a == n) => {
                return Err(Error::NotFound { what: format!("export {n:?} (not among the served exports)") })
            }
            (_, n) => n,
        };
        if let Some(id) = self.find_volume(name) {
            return Ok((name.to_string(), Target::Volume(id)));
        }
        let not_found = || Error::NotFound { what: format!("export {name:?}") };
        let (vol, snap) = name.rsplit_once('@').ok_or_else(not_found)?;
        let vid = self.find_volume(vol).ok_or_else(not_found)?;
        let snaps = self.store.list_snapshots(vid);
        let sid = snaps
            .iter()
            .find(|s| s.name == snap)
            .or_else(|| snap.parse::<SnapshotId>().ok().and_then(|id| snaps.iter().find(|s| s.id == id)))
            .map(|s| s.id)
            .ok_or_else(not_found)?;
        Ok((name.to_string(), Target::Snapshot(vid, sid)))
    }

    fn find_volume(&self, s: &str) -> Option<VolumeId> {
        if let Some(v) = self.store.volume_by_name(s) {
            return Some(v.id);
        }
        let id = s.parse::<VolumeId>().ok()?;
        self.store.volume(id).ok().map(|v| v.id)
    }

    /// Opens (or shares the already open handle of) a resolved export.
    /// Blocking: call it off the async workers.
    pub(crate) fn open(&self, name: String, target: Target) -> Result<Arc<OpenExport>, Error> {
        let mut open = lock(&self.open);
        if let Some(e) = open.get(&target).and_then(Weak::upgrade) {
            return Ok(e);
        }
        let (volume, gate) = match target {
            Target::Volume(id) => (self.open_volume(id)?, Some(self.gate(id))),
            Target::Snapshot(v, s) => (self.store.open_snapshot(v, s)?, None),
        };
        let read_only = !volume.is_writable();
        let e = Arc::new(OpenExport { name, volume, read_only, gate });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(target, Arc::downgrade(&e));
        Ok(e)
    }

    /// Opens a volume's shared handle. A writable one never flushes on its
    /// own: in NBD the client decides durability (`FLUSH`, `FUA`), and a
    /// sync it did not ask for only stalls its writes (a 1 MiB sequential
    /// writer paid one `fdatasync` of 64 MiB per write buffer).
    fn open_volume(&self, id: VolumeId) -> Result<Volume, Error> {
        if self.read_only {
            return self.store.open_volume_with(id, OpenMode::ReadOnly);
        }
        let opts = HandleOptions { mode: OpenMode::ReadWrite, auto_flush: AutoFlush::Never };
        match self.store.open_volume_with_options(id, opts) {
            // A read-only-many volume is served read-only rather than refused.
            Err(Error::ReadOnly { .. }) => self.store.open_volume_with(id, OpenMode::ReadOnly),
            other => other,
        }
    }

    /// Every open handle, for the final flush at shutdown.
    pub(crate) fn open_handles(&self) -> Vec<Arc<OpenExport>> {
        lock(&self.open).values().filter_map(Weak::upgrade).collect()
    }
}

/// Locks a std mutex, carrying on after a panic elsewhere: every map
/// guarded here stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
