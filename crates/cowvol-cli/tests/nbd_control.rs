//! `cowvol nbd` serves a store and takes other `cowvol` commands over the
//! store's control socket: while it runs, snapshot create/list/restore/delete
//! and volume fork/list from a second process work (restores through the
//! server's restore path), commands that need local files are refused, and
//! SIGTERM shuts it down cleanly.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_cowvol");

fn cowvol(store: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--store").arg(store).args(args).output().expect("run cowvol")
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = cowvol(store, args);
    assert!(out.status.success(), "cowvol {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_io(uri: &str, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, uri])
        .output()
        .expect("qemu-io is not installed: install the Debian package `qemu-utils` (.ci/deps-nbd.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && !text.contains("failed") && !text.contains("Pattern"), "qemu-io {cmd}: {text}");
    text
}

/// Stops the server at the end even when the test fails.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn commands_are_forwarded_to_the_serving_process() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    let sock = tmp.path().join("nbd.sock");
    ok(&store, &["init"]);
    ok(&store, &["volume", "create", "disk", "--size", "8M"]);
    let child = Command::new(BIN)
        .arg("--store")
        .arg(&store)
        .args(["nbd", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cowvol nbd");
    let mut server = Serving(child);
    let ctl = store.join("cowvol.ctl");
    for _ in 0..100 {
        if ctl.exists() && sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ctl.exists(), "control socket {}", ctl.display());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&ctl).expect("stat").permissions().mode() & 0o777, 0o600);

    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    qemu_io(&uri, "write -P 0x61 0 64k");
    ok(&store, &["snapshot", "create", "disk", "s1"]);
    qemu_io(&uri, "write -P 0x62 0 64k");
    let list = ok(&store, &["snapshot", "list", "disk"]);
    assert!(list.contains("s1"), "{list}");
    let json = ok(&store, &["--json", "snapshot", "list", "disk"]);
    assert!(json.contains("\"s1\""), "{json}");
    ok(&store, &["snapshot", "restore", "disk", "s1"]);
    qemu_io(&uri, "read -P 0x61 0 64k");
    ok(&store, &["volume", "fork", "disk", "copy", "--from-snapshot", "s1"]);
    let vols = ok(&store, &["volume", "list"]);
    assert!(vols.contains("copy"), "{vols}");
    qemu_io(&format!("nbd+unix:///copy?socket={}", sock.display()), "read -P 0x61 0 64k");
    ok(&store, &["snapshot", "delete", "disk", "s1"]);
    assert!(!ok(&store, &["snapshot", "list", "disk"]).contains("s1"));
    // Errors come back with their exit code.
    let out = cowvol(&store, &["snapshot", "restore", "disk", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // Commands that read or write local files do not run in the server.
    let out = cowvol(&store, &["volume", "export", "disk", tmp.path().join("x.img").to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));

    // SIGTERM: a clean exit, and the store is free again.
    let killed = Command::new("kill").arg("-TERM").arg(server.0.id().to_string()).status().expect("kill");
    assert!(killed.success());
    let status = server.0.wait().expect("wait");
    assert!(status.success(), "cowvol nbd exited with {status}");
    assert!(!ctl.exists(), "the control socket is removed at shutdown");
    let check = ok(&store, &["check"]);
    assert!(!check.is_empty());
}
