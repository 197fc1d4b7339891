//! Backups of cowvol snapshots to targets off the disk: a directory, or any
//! S3-compatible object store.
//!
//! A backup cuts a snapshot into fixed-size chunks and names each by its
//! BLAKE3 hash. The target stores each distinct chunk once, in large pack
//! objects (16 MiB by default) with a small index per pack, so repeated
//! backups of one volume, and backups of many volumes made from one
//! template, upload and keep only the chunks the target lacks. A manifest,
//! written last, lists the snapshot's record and its chunks' hashes.
//! docs/backup.md draws every object byte by byte and explains why a crash
//! at any point leaves the target readable.
//!
//! - [`backup`] (incremental through [`cowvol::Store::diff`] against the
//!   volume's last backed-up snapshot) records the outcome in the
//!   snapshot's [`cowvol::BackupRecord`]: `BackedUp` once the manifest is
//!   durable, `Failed` with the reason otherwise;
//! - [`restore`] writes a backup into a new volume of any store and takes a
//!   snapshot there, checking every chunk's hash;
//! - [`list_backups`], [`delete_backup`], [`prune`] (keep the newest N),
//!   [`collect_garbage`] (delete packs no backup references) and
//!   [`verify`] look after a target.
//!
//! ```
//! use cowvol::{BackupState, SnapshotOptions, Store, StoreOptions, VolumeOptions};
//! use cowvol_backup::{backup, restore, BackupOptions, DirTarget, RestoreOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let (here, there, backups) = (tmp.path().join("here"), tmp.path().join("there"), tmp.path().join("backups"));
//! let store = Store::open(&here, StoreOptions::default())?;
//! let db = store.create_volume(VolumeOptions::new("db", 4 << 20))?.id;
//! store.open_volume(db)?.write_at(b"precious", 1 << 20)?;
//! let snap = store.create_snapshot(db, SnapshotOptions::named("nightly"))?.id;
//!
//! let target = DirTarget::open(&backups)?;
//! let done = backup(&store, snap, &target, &BackupOptions::default(), &mut |_| {})?;
//! assert_eq!(store.snapshot(snap)?.backup.unwrap().state, BackupState::BackedUp);
//!
//! // On another machine, another store:
//! let other = Store::open(&there, StoreOptions::default())?;
//! let got = restore(&target, &done.backup_id, &other, &RestoreOptions::named("db-restored"), &|_, _| {})?;
//! let mut buf = [0u8; 8];
//! other.open_volume(got.volume.id)?.read_at(&mut buf, 1 << 20)?;
//! assert_eq!(&buf, b"precious");
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod create;
mod error;
mod format;
mod maint;
mod parallel;
mod repo;
mod restore;
pub mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use create::{backup, backup_id_of, BackupOptions, BackupProgress, BackupReport};
pub use error::{Error, Result};
pub use format::{ChunkHash, SnapshotMeta};
pub use maint::{
    backup_info, break_locks, collect_garbage, delete_backup, list_backups, locks, prune, verify, BackupInfo, GcReport,
    VerifyReport,
};
pub use restore::{restore, RestoreOptions, Restored};
pub use target::{open_target, DirTarget, S3Credentials, S3Target, Target};
