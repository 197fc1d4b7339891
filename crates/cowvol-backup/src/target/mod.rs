//! Where backups go: the [`Target`] trait, a flat key/value store of
//! immutable objects, and its two implementations, a directory
//! ([`DirTarget`]) and an S3-compatible bucket ([`S3Target`]).
//!
//! The backup format asks very little of a target, so that any S3 server
//! will do (Garage, for one, ignores conditional requests): a `put` is
//! atomic and durable when it returns, a `list` after a `put` returns shows
//! it (read-after-write consistency, which S3 and Garage give), and a
//! `delete` of a missing object succeeds. No rename, no append, no
//! compare-and-swap: crash safety comes from the order of the writes
//! (docs/backup.md, "Crash safety").

mod dir;
mod s3;

pub use dir::DirTarget;
pub use s3::{S3Credentials, S3Target};

use crate::error::{Error, Result};
use std::sync::Arc;

/// A place that stores objects by key. Keys are `folder/name` with folder
/// one of `packs`, `index`, `backups`, `locks` and name made of ASCII
/// letters, digits, `-` and `.`.
pub trait Target: Send + Sync {
    /// The target's URL, without credentials; it appears in messages and
    /// in snapshots' backup records.
    fn url(&self) -> &str;

    /// Stores `bytes` under `key`, replacing what was there. Atomic (a
    /// reader sees the old object or the whole new one, never part) and
    /// durable when it returns.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;

    /// The whole object.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is none.
    fn get(&self, key: &str) -> Result<Vec<u8>>;

    /// `len` bytes of the object from `offset`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no object; [`Error::Damaged`] when
    /// it is shorter than the range.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// The keys in `folder` (`packs`, `index`, `backups` or `locks`), in no
    /// particular order.
    fn list(&self, folder: &str) -> Result<Vec<String>>;

    /// Removes an object; removing a missing one succeeds, so every step
    /// that deletes can be repeated.
    fn delete(&self, key: &str) -> Result<()>;

    /// Removes what interrupted writes left outside the listed keys (a
    /// directory's temporary files) and returns how many. Garbage
    /// collection calls it while it holds the target, so no write is under
    /// way. An object store keeps nothing of a failed upload: the default
    /// does nothing.
    fn remove_leftovers(&self) -> Result<u64> {
        Ok(0)
    }
}

/// The folders of a target (see docs/backup.md, "Layout on the target").
pub(crate) const FOLDERS: [&str; 4] = ["packs", "index", "backups", "locks"];

/// Opens the target a URL names:
/// - `file:///srv/backups` or a plain path: a directory ([`DirTarget`]),
///   created if missing;
/// - `s3://BUCKET` or `s3://BUCKET/PREFIX`, with optional query
///   parameters `endpoint=http://HOST:PORT` and `region=NAME`: a bucket
///   ([`S3Target`]); the credentials come from the environment or a file
///   ([`S3Credentials::from_env`]), never from the URL.
///
/// # Errors
/// [`Error::InvalidArgument`] for a URL of another scheme or one that
/// carries credentials; errors creating the directory.
pub fn open_target(url: &str) -> Result<Arc<dyn Target>> {
    if let Some(rest) = url.strip_prefix("s3://") {
        return Ok(Arc::new(S3Target::open(rest, S3Credentials::from_env()?)?));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        return Err(Error::invalid(format!(
            "{url:?} is not a target URL: use file:///PATH, a plain path, or s3://BUCKET[/PREFIX]"
        )));
    }
    Ok(Arc::new(DirTarget::open(path)?))
}

/// Checks that `key` is `folder/name` as [`Target`] requires, so that no
/// key can escape a directory target's root or clash with a temporary file.
pub(crate) fn check_key(key: &str) -> Result<(&str, &str)> {
    let bad = || Error::invalid(format!("{key:?} is not an object key (folder/name)"));
    let (folder, name) = key.split_once('/').ok_or_else(bad)?;
    let name_ok = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if FOLDERS.contains(&folder) && name_ok {
        Ok((folder, name))
    } else {
        Err(bad())
    }
}

pub(crate) fn check_folder(folder: &str) -> Result<()> {
    if FOLDERS.contains(&folder) {
        Ok(())
    } else {
        Err(Error::invalid(format!("{folder:?} is not a target folder")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_their_folder() {
        assert!(check_key("packs/ab12").is_ok());
        assert!(check_key("backups/0123456789abcdef").is_ok());
        for bad in ["packs/../x", "other/x", "packs/", "packs/.tmp-1", "packs/a/b", "/etc/passwd", "packs"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
