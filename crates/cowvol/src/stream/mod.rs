//! Send and receive: a snapshot, or the changes between two snapshots, as
//! a stream of bytes that another store turns back into the same snapshot.
//!
//! The stream format is versioned and checksummed and is drawn byte by byte
//! in docs/format.md: a begin frame (the snapshot's name, description,
//! labels, size, block size, its identity and, for an incremental stream,
//! its base's), data and hole frames in ascending offset order, and an end
//! frame with totals. Every frame has a sequence number and a CRC, so a
//! damaged, cut, reordered or repeated frame is refused with
//! [`Error::Stream`](crate::Error::Stream).
//!
//! [`send`] writes a full stream, or with [`SendOptions::from`] an
//! incremental one that carries only what [`Store::diff`] finds.
//! [`receive`] applies a stream to a store:
//! - an incremental stream needs its base: a ready snapshot whose identity
//!   (origin store and id, and content digest) matches, else
//!   [`Error::BaseMismatch`](crate::Error::BaseMismatch) and nothing changes;
//! - the data is staged in a hidden volume (a fork of the base, or an empty
//!   volume), and the snapshot appears only once the end frame has been
//!   checked and the staged contents match the sender's digest: in one
//!   logged step, with the snapshot's name, description, labels and
//!   creation time, its volume name (see [`ReceiveOptions::volume_name`]),
//!   and the label [`ORIGIN_LABEL`] recording its identity. The staging
//!   volume is then deleted (its snapshot stays, as snapshots of deleted
//!   volumes do). Until then nothing is visible: the staging volume is not
//!   listed, and a crash or an error leaves no snapshot behind;
//! - every [`ReceiveOptions::ack_every_bytes`] the staged data is flushed
//!   and the position acknowledged in a small state file, so an interrupted
//!   receive resumes ([`ReceiveOptions::resume`]) from there: the receiver
//!   skips frames it already has, whether the sender starts over or resumes
//!   at [`PendingReceive::next_frame`] ([`SendOptions::resume_from_frame`]);
//!   [`receive_seekable`] seeks a file straight to that frame.
//!   [`pending_receives`] lists interrupted receives and [`abort_receive`]
//!   discards one.
//!
//! ```
//! use cowvol::stream::{self, ReceiveOptions, SendOptions};
//! use cowvol::{SnapshotOptions, Store, StoreOptions, VolumeOptions};
//! # fn main() -> cowvol::Result<()> {
//! # let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
//! let here = Store::open(d1.path(), StoreOptions::default())?;
//! let there = Store::open(d2.path(), StoreOptions::default())?;
//! let db = here.create_volume(VolumeOptions::new("db", 1 << 20))?.id;
//! here.open_volume(db)?.write_at(b"monday", 0)?;
//! let monday = here.create_snapshot(db, SnapshotOptions::named("monday"))?;
//! here.open_volume(db)?.write_at(b"tuesday", 4096)?;
//! let tuesday = here.create_snapshot(db, SnapshotOptions::named("tuesday"))?;
//!
//! let mut full = Vec::new();
//! stream::send(&here, monday.id, &SendOptions::default(), &mut full, &mut |_| {})?;
//! let incremental = SendOptions { from: Some(monday.id), ..Default::default() };
//! let mut changes = Vec::new();
//! stream::send(&here, tuesday.id, &incremental, &mut changes, &mut |_| {})?;
//!
//! stream::receive(&there, &mut &full[..], &ReceiveOptions::default(), &mut |_| {})?;
//! let got = stream::receive(&there, &mut &changes[..], &ReceiveOptions::default(), &mut |_| {})?;
//! let mut buf = [0u8; 7];
//! there.open_snapshot(got.snapshot.volume_id, got.snapshot.id)?.read_at(&mut buf, 4096)?;
//! assert_eq!(&buf, b"tuesday");
//! # Ok(()) }
//! ```

mod frame;
mod identity;
mod receive;
mod send;

pub use identity::ORIGIN_LABEL;

use crate::catalog::{SnapshotId, SnapshotInfo, VolumeId};
use crate::error::Result;
use crate::store::Store;
use std::io::{Read, Seek, Write};

/// How [`send`] builds its stream.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Send only the changes since this snapshot (an incremental stream);
    /// `None` (the default) sends the whole snapshot. The receiver must hold
    /// this snapshot (received earlier, or its own).
    pub from: Option<SnapshotId>,
    /// Leave out the data and hole frames numbered below this one: what a
    /// receiver that acknowledged them needs to resume
    /// ([`PendingReceive::next_frame`]). 0 (the default) sends everything.
    pub resume_from_frame: u64,
}

/// What [`send`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Bytes written.
    pub stream_bytes: u64,
    /// Frames in the stream, begin and end included.
    pub frames: u64,
    /// Data bytes the stream carries.
    pub data_bytes: u64,
    /// Bytes the stream marks as holes.
    pub hole_bytes: u64,
}

/// Where a send or receive is, reported as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Stream bytes written or read so far.
    pub stream_bytes: u64,
    /// Data bytes sent or applied so far.
    pub data_bytes: u64,
    /// Data bytes the whole stream carries.
    pub data_bytes_total: u64,
}

/// How [`receive`] applies a stream.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The volume name the received snapshot is filed under (its
    /// `volume_name`). `None` (the default): for an incremental stream, the
    /// name its base has in this store, so a chain stays under one name;
    /// for a full stream, the sender's.
    pub volume_name: Option<String>,
    /// Continue an interrupted receive of the same stream from its last
    /// acknowledged frame. Without it, a stream whose receive was
    /// interrupted is refused with [`Error::AlreadyExists`](crate::Error::AlreadyExists).
    /// With it and nothing to resume, the receive starts afresh.
    pub resume: bool,
    /// Applied bytes after which the staged data is flushed and the position
    /// acknowledged. Default 64 MiB: one sync per 64 MiB, and at most that
    /// much to apply again after a crash.
    pub ack_every_bytes: u64,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions { volume_name: None, resume: false, ack_every_bytes: 64 << 20 }
    }
}

/// What [`receive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The snapshot as it now is in the receiving store.
    pub snapshot: SnapshotInfo,
    /// Stream bytes read.
    pub stream_bytes: u64,
    /// Data and hole frames applied by this call.
    pub frames_applied: u64,
    /// Data and hole frames skipped because an earlier, interrupted
    /// receive had acknowledged them.
    pub frames_skipped: u64,
    /// Data bytes the stream carried.
    pub data_bytes: u64,
    /// Bytes the stream marked as holes.
    pub hole_bytes: u64,
}

/// An interrupted receive, kept for [`ReceiveOptions::resume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReceive {
    /// Names the stream (16 hex digits); [`abort_receive`] takes it.
    pub key: String,
    /// The hidden volume the data is staged in.
    pub staging_volume: VolumeId,
    /// The first frame not yet acknowledged: a sender resuming the stream
    /// starts there ([`SendOptions::resume_from_frame`]).
    pub next_frame: u64,
    /// Stream bytes acknowledged: the offset of `next_frame` in the stream.
    pub acknowledged_bytes: u64,
}

/// Writes `snapshot` (whole, or with [`SendOptions::from`] only what changed
/// since that snapshot) to `out` as a stream, calling `progress` after
/// every frame.
///
/// Cost: the diff (proportional to the changes), then one read of every
/// changed block. The snapshot must stay until the send ends; deleting it
/// meanwhile fails the send with [`Error::NotFound`](crate::Error::NotFound).
///
/// # Errors
/// [`Error::NotFound`](crate::Error::NotFound) for a missing snapshot;
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for one that is
/// not ready, a base of another size, or a resume point past the end;
/// [`Error::Io`](crate::Error::Io) when `out` fails; read errors of the
/// snapshot's blocks.
pub fn send(
    store: &Store,
    snapshot: SnapshotId,
    opts: &SendOptions,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(Progress),
) -> Result<Sent> {
    send::send(store, snapshot, opts, out, progress)
}

/// Reads a stream from `input` and lands it in `store` as a ready snapshot,
/// atomically (see the module documentation), calling `progress` as data is
/// applied. Reads up to the end frame and no further.
///
/// # Errors
/// [`Error::Stream`](crate::Error::Stream) for a damaged, cut, reordered or
/// foreign stream, or one whose contents do not match its digest;
/// [`Error::BaseMismatch`](crate::Error::BaseMismatch) when an incremental
/// stream's base is missing or differs; [`Error::AlreadyExists`](crate::Error::AlreadyExists)
/// when the snapshot was already received, or an interrupted receive of
/// the stream waits to be resumed; [`Error::InvalidArgument`](crate::Error::InvalidArgument)
/// for another block size or names the catalog does not accept;
/// [`Error::Io`](crate::Error::Io) when `input` fails. After an error past
/// the begin frame, what was applied stays staged for
/// [`ReceiveOptions::resume`]; nothing is visible.
pub fn receive(
    store: &Store,
    input: &mut dyn Read,
    opts: &ReceiveOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Received> {
    receive::receive(store, &mut frame::Sequential(input), opts, progress)
}

/// [`receive`] from a seekable input (a file) whose stream starts at its
/// current position. A resumed receive seeks straight to the first frame
/// not yet acknowledged instead of reading the ones before it.
///
/// # Errors
/// As [`receive`]; [`Error::Io`](crate::Error::Io) when seeking fails.
pub fn receive_seekable<R: Read + Seek>(
    store: &Store,
    input: &mut R,
    opts: &ReceiveOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Received> {
    let mut input = frame::Seekable::new(input).map_err(|e| crate::Error::io("finding the stream's start", e))?;
    receive::receive(store, &mut input, opts, progress)
}

/// The interrupted receives of a store, oldest first.
pub fn pending_receives(store: &Store) -> Vec<PendingReceive> {
    receive::pending(store)
}

/// Discards an interrupted receive: deletes its staging volume and state.
/// Returns whether there was one.
///
/// # Errors
/// Errors of [`Store::delete_volume`].
pub fn abort_receive(store: &Store, key: &str) -> Result<bool> {
    receive::abort(store, key)
}
