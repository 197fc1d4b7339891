//! Interoperability with QEMU's raw images: an image written by `qemu-io`
//! survives import and export, as judged by `qemu-img compare`. Skipped
//! (with a note) when qemu-img or qemu-io is not on PATH.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cowvol");

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn cowvol(store: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--store").arg(store).env_remove("COWVOL_STORE");
    c
}

#[test]
fn qemu_raw_image_round_trips() {
    if !on_path("qemu-img") || !on_path("qemu-io") {
        println!("note: qemu-img or qemu-io not on PATH; skipping the QEMU interoperability test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let exported = dir.path().join("exported");
    let snap_exported = dir.path().join("snap-exported");
    let store = dir.path().join("store");

    run(Command::new("qemu-img").args(["create", "-f", "raw"]).arg(&img).arg("8M"));
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xab 0 64k", "-c", "write -P 0xcd 1M 4k"])
        .arg(&img));

    run(cowvol(&store).arg("init"));
    let j: serde_json::Value =
        serde_json::from_str(&run(cowvol(&store).args(["--json", "volume", "import", "qemu"]).arg(&img))).unwrap();
    assert_eq!(j["volume"]["size_bytes"], 8 << 20);
    assert_eq!(j["blocks_written"], 17, "64 KiB + 4 KiB of data, the rest unmapped");
    run(cowvol(&store).args(["volume", "export", "qemu"]).arg(&exported));
    run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&img).arg(&exported));

    // Change the volume after a snapshot: the live volume matches the image
    // changed the same way by qemu-io, the snapshot still matches the original.
    run(cowvol(&store).args(["snapshot", "create", "qemu", "orig"]));
    let patch = dir.path().join("patch");
    std::fs::write(&patch, vec![0x11u8; 8192]).unwrap();
    run(cowvol(&store).args(["volume", "write", "qemu", "--offset", "2M"]).arg(&patch));
    let changed = dir.path().join("changed");
    std::fs::copy(&img, &changed).unwrap();
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x11 2M 8k"]).arg(&changed));
    let live_exported = dir.path().join("live-exported");
    run(cowvol(&store).args(["volume", "export", "qemu"]).arg(&live_exported));
    run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&changed).arg(&live_exported));
    run(cowvol(&store).args(["volume", "export", "qemu", "--snapshot", "orig"]).arg(&snap_exported));
    run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&img).arg(&snap_exported));
    let differs = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(&img)
        .arg(&live_exported)
        .status()
        .unwrap();
    assert_eq!(differs.code(), Some(1), "qemu-img compare should see the change");
}
