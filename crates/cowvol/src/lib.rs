//! cowvol: a copy-on-write block storage engine.
//!
//! A [`Store`] is a directory holding fixed-size virtual disks
//! ([`Volume`]s) with instant snapshots, rollback and writable forks. Every
//! block is immutable once written, reference counted and checksummed;
//! each volume and snapshot maps its logical blocks through an extent tree
//! whose nodes are shared, so snapshot, fork and restore copy a root pointer
//! and cost the same for any volume size. Changes are logged in a WAL that
//! lives in the same file as the data, so a flush costs one `fdatasync`;
//! checkpoints bound the WAL and the time to reopen after a crash.
//!
//! # A tour
//!
//! ```
//! use cowvol::{ForkOptions, RestoreOptions, SnapshotOptions, Store, StoreOptions, VolumeOptions};
//! # fn main() -> cowvol::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), StoreOptions::default())?;
//!
//! // A 64 MiB disk; unwritten ranges read as zeroes.
//! let disk = store.create_volume(VolumeOptions::new("root-disk", 64 << 20))?;
//! let vol = store.open_volume(disk.id)?;
//! vol.write_at(b"v1 of the data", 4096)?;
//! vol.flush()?; // durable from here on
//!
//! // O(1) snapshot, then keep writing.
//! let snap = store.create_snapshot(disk.id, SnapshotOptions::named("golden"))?;
//! vol.write_at(b"v2 of the data", 4096)?;
//!
//! // A writable fork of the snapshot, isolated from the volume both ways.
//! let fork = store.fork_volume(disk.id, ForkOptions { name: "clone".into(), from_snapshot: Some(snap.id), ..Default::default() })?;
//! let mut buf = [0u8; 14];
//! store.open_volume(fork.id)?.read_at(&mut buf, 4096)?;
//! assert_eq!(&buf, b"v1 of the data");
//!
//! // Roll the volume back, atomically.
//! store.restore_snapshot(disk.id, snap.id, RestoreOptions::default())?;
//! vol.read_at(&mut buf, 4096)?;
//! assert_eq!(&buf, b"v1 of the data");
//!
//! // Reference counts agree with what the trees reference.
//! assert!(store.check()?.is_clean());
//! # Ok(()) }
//! ```
//!
//! # Layers
//! Each module uses only the ones below it:
//! - [`stream`]: send and receive, snapshots as streams between stores;
//! - the public API: [`Store`] (`store`: open, volumes, snapshots, fork,
//!   restore), [`Volume`] (`volume`: reads, writes, discard, flush),
//!   `lifecycle` (holds, search, templates, policies, calendar schedules,
//!   expiry), `diff` (changed extents between two trees), `check` (check,
//!   scrub, stats), `options` and [`Error`];
//! - `engine`: the in-memory state and its replay, the commit path with
//!   group commit, checkpoints, open and recovery, the background thread,
//!   and `engine::record`, the changes it logs;
//! - `calendar`: the due times of schedules in IANA time zones;
//! - `catalog`: volume, snapshot, template and schedule records and their
//!   encoding;
//! - `tree`: extent trees shared by path copying;
//! - `space`: page allocation, reference counts, quarantine;
//! - `wal`: the log's segments and CRC-framed batches of records;
//! - `format`: the on-disk encoding, superblock and headers;
//! - [`backend`]: files, behind the `StorageDir` and `StorageFile` traits.

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod backend;
mod calendar;
mod catalog;
mod check;
mod diff;
mod engine;
mod error;
mod format;
mod lifecycle;
mod options;
mod space;
mod store;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tree;
mod volume;
mod wal;

pub use catalog::limits;
pub use catalog::{
    AccessMode, BackupRecord, BackupState, Every, RunResult, Schedule, ScheduleInfo, ScheduleStatus, SnapshotId,
    SnapshotInfo, SnapshotKind, SnapshotPolicy, SnapshotStatus, TemplateId, TemplateInfo, TimeOfDay, VolumeId,
    VolumeInfo, VolumeOrigin, Weekday, FAILING_AFTER, MAX_SCHEDULES, RESERVED_LABEL_PREFIX, SCHEDULE_LABEL,
};
pub use check::{CheckReport, DamagedBlock, Problem, ScrubReport, StoreStats};
pub use diff::{Diff, DiffCost, DiffExtent, DiffPoint};
pub use engine::WriteStats;
pub use error::{Error, Result, StreamFault};
pub use lifecycle::{PolicyRun, ScheduleRunReport, SnapshotPage, SnapshotQuery, TemplateOptions, UtcTime, AUTO_LABEL};
pub use options::{
    AutoFlush, Deleted, ForkOptions, HandleOptions, OpenMode, RestoreOptions, Restored, SnapshotOptions, StoreOptions,
    VolumeOptions, IDEMPOTENCY_WINDOW_SECS,
};
pub use store::Store;
pub use volume::{Extent, Volume, VolumeCursor};
