//! A directory as a target: one file per object.
//!
//! A `put` writes a temporary file in the object's folder, syncs it,
//! renames it over the key and syncs the folder, so an object is either
//! whole or absent after a crash, and durable once `put` returns. A
//! `delete` syncs the folder too. Temporary files left by a crash start
//! with `.tmp-`, are never listed, and garbage collection removes them
//! (it excludes backups, so none is being written then).

use super::{check_folder, check_key, Target, FOLDERS};
use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A target in a local directory (a mounted disk, NFS, ...).
#[derive(Debug)]
pub struct DirTarget {
    root: PathBuf,
    url: String,
    /// Makes temporary names unique among this process's concurrent puts.
    next_tmp: AtomicU64,
}

impl DirTarget {
    /// Opens (creating if needed) the directory `root` and its folders.
    ///
    /// # Errors
    /// [`Error::Target`] when a folder cannot be created or synced.
    pub fn open(root: impl AsRef<Path>) -> Result<DirTarget> {
        let root = std::path::absolute(root.as_ref()).unwrap_or_else(|_| root.as_ref().to_path_buf());
        let url = format!("file://{}", root.display());
        let t = DirTarget { root, url, next_tmp: AtomicU64::new(0) };
        for folder in FOLDERS {
            let path = t.root.join(folder);
            fs::create_dir_all(&path).map_err(|e| t.fail("create", folder, e))?;
            sync_dir(&path).map_err(|e| t.fail("sync", folder, e))?;
        }
        sync_dir(&t.root).map_err(|e| t.fail("sync", ".", e))?;
        Ok(t)
    }

    fn fail(&self, op: &'static str, key: &str, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            return Error::not_found(format!("{key} on {}", self.url));
        }
        Error::Target { target: self.url.clone(), op, key: key.to_string(), detail: e.to_string() }
    }

    fn write_durably(&self, folder: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = folder.join(format!(".tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            sync_dir(folder)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl Target for DirTarget {
    fn url(&self) -> &str {
        &self.url
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let (folder, _) = check_key(key)?;
        let folder = self.root.join(folder);
        self.write_durably(&folder, &self.root.join(key), bytes).map_err(|e| self.fail("put", key, e))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        fs::read(self.root.join(key)).map_err(|e| self.fail("get", key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_key(key)?;
        let f = File::open(self.root.join(key)).map_err(|e| self.fail("get", key, e))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::Damaged {
                target: self.url.clone(),
                key: key.to_string(),
                detail: format!("shorter than {} bytes", offset + len),
            },
            _ => self.fail("get", key, e),
        })?;
        Ok(buf)
    }

    fn list(&self, folder: &str) -> Result<Vec<String>> {
        check_folder(folder)?;
        let mut keys = Vec::new();
        for entry in fs::read_dir(self.root.join(folder)).map_err(|e| self.fail("list", folder, e))? {
            let entry = entry.map_err(|e| self.fail("list", folder, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                keys.push(format!("{folder}/{name}"));
            }
        }
        Ok(keys)
    }

    fn remove_leftovers(&self) -> Result<u64> {
        let mut removed = 0;
        for folder in FOLDERS {
            for entry in fs::read_dir(self.root.join(folder)).map_err(|e| self.fail("list", folder, e))? {
                let entry = entry.map_err(|e| self.fail("list", folder, e))?;
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    fs::remove_file(entry.path()).map_err(|e| self.fail("delete", folder, e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (folder, _) = check_key(key)?;
        match fs::remove_file(self.root.join(key)) {
            Ok(()) => sync_dir(&self.root.join(folder)).map_err(|e| self.fail("delete", key, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.fail("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let t = DirTarget::open(dir.path()).unwrap();
        t.put("packs/a1", b"hello").unwrap();
        t.put("packs/a1", b"hello!").unwrap();
        assert_eq!(t.get("packs/a1").unwrap(), b"hello!");
        assert_eq!(t.get_range("packs/a1", 1, 3).unwrap(), b"ell");
        assert!(matches!(t.get_range("packs/a1", 4, 9), Err(Error::Damaged { .. })));
        assert_eq!(t.list("packs").unwrap(), ["packs/a1"]);
        t.delete("packs/a1").unwrap();
        t.delete("packs/a1").unwrap();
        assert!(t.get("packs/a1").unwrap_err().is_not_found());
        assert!(t.list("packs").unwrap().is_empty());
    }

    #[test]
    fn leftover_temporary_files_are_not_listed_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t = DirTarget::open(dir.path()).unwrap();
        fs::write(dir.path().join("packs/.tmp-1-0"), b"half").unwrap();
        assert!(t.list("packs").unwrap().is_empty());
        assert_eq!(t.remove_leftovers().unwrap(), 1);
        assert!(!dir.path().join("packs/.tmp-1-0").exists());
    }
}
