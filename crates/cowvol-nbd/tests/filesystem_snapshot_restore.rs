//! A real file system on an export: nbdfuse shows the export as a file, a
//! loop device sits on it, ext4 is made and mounted, files are written, the
//! volume is snapshotted (file system frozen), more is written, then after
//! unmounting, the restore brings back the old files and e2fsck is clean.
//!
//! Needs root, /dev/fuse and loop devices.

mod common;
use common::{run, tool, TestServer, VOLUME};
use cowvol::SnapshotOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// Undoes mounts, loop devices and nbdfuse even when the test fails.
struct Attached {
    fuse_dir: PathBuf,
    fuse: Option<Child>,
    loop_dev: Option<String>,
    mount: Option<PathBuf>,
}

impl Attached {
    fn fuse(uri: &str, fuse_dir: &Path) -> Attached {
        std::fs::create_dir_all(fuse_dir).expect("mountpoint");
        let child = Command::new(tool("nbdfuse", "nbdfuse"))
            .arg(fuse_dir.join("disk"))
            .arg(uri)
            .spawn()
            .expect("start nbdfuse");
        let a = Attached { fuse_dir: fuse_dir.to_path_buf(), fuse: Some(child), loop_dev: None, mount: None };
        for _ in 0..100 {
            if a.file().exists() {
                return a;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nbdfuse did not show {}", a.file().display());
    }

    fn file(&self) -> PathBuf {
        self.fuse_dir.join("disk")
    }

    fn attach_loop(&mut self) -> String {
        let out = run(Command::new(tool("losetup", "mount")).args(["-f", "--show"]).arg(self.file()));
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        self.loop_dev = Some(dev.clone());
        dev
    }

    fn mount(&mut self, dir: &Path) {
        let dev = self.loop_dev.clone().expect("loop device");
        std::fs::create_dir_all(dir).expect("mount dir");
        run(Command::new("mount").arg(&dev).arg(dir));
        self.mount = Some(dir.to_path_buf());
    }

    fn unmount(&mut self) {
        if let Some(m) = self.mount.take() {
            run(Command::new("umount").arg(m));
        }
    }

    fn detach_loop(&mut self) {
        if let Some(d) = self.loop_dev.take() {
            run(Command::new("losetup").arg("-d").arg(d));
        }
    }

    fn detach_fuse(&mut self) {
        if let Some(mut c) = self.fuse.take() {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.fuse_dir).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if let Some(d) = self.loop_dev.take() {
            let _ = Command::new("losetup").arg("-d").arg(d).status();
        }
        self.detach_fuse();
    }
}

#[test]
fn ext4_files_come_back_after_a_restore() {
    for (name, pkg) in
        [("mkfs.ext4", "e2fsprogs"), ("e2fsck", "e2fsprogs"), ("fusermount3", "fuse3"), ("fsfreeze", "util-linux")]
    {
        tool(name, pkg);
    }
    let s = TestServer::start(64 << 20);
    let uri = s.unix_uri(VOLUME);
    let mnt = s.dir.path().join("mnt");
    let mut a = Attached::fuse(&uri, &s.dir.path().join("fuse"));
    let dev = a.attach_loop();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dev));
    a.mount(&mnt);
    std::fs::write(mnt.join("before.txt"), "kept by the snapshot").expect("write");
    // A consistent snapshot: flush and freeze the file system, then snapshot.
    run(Command::new("fsfreeze").arg("-f").arg(&mnt));
    let snap = s.store().create_snapshot(s.volume, SnapshotOptions::named("fs"));
    run(Command::new("fsfreeze").arg("-u").arg(&mnt));
    let snap = snap.expect("snapshot");
    std::fs::write(mnt.join("after.txt"), "gone after the restore").expect("write");
    std::fs::remove_file(mnt.join("before.txt")).expect("remove");
    a.unmount();
    a.detach_loop();
    // The client's caches (loop device, FUSE page cache) hold the old state:
    // detach before the restore, attach again after it.
    a.detach_fuse();
    s.restore(snap.id, Duration::from_secs(30)).expect("restore");

    let mut a = Attached::fuse(&uri, &s.dir.path().join("fuse"));
    a.attach_loop();
    a.mount(&mnt);
    assert_eq!(std::fs::read_to_string(mnt.join("before.txt")).expect("old file"), "kept by the snapshot");
    assert!(!mnt.join("after.txt").exists(), "the file written after the snapshot is gone");
    a.unmount();
    a.detach_loop();
    run(Command::new("e2fsck").arg("-fn").arg(a.file()));
}
