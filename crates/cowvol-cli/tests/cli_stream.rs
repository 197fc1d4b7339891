//! `cowvol snapshot diff | send | receive` through the real binary: a full
//! and an incremental stream between two stores, through a file and
//! through a pipe, compared byte for byte with the source; diff output in
//! both shapes; a stream for a missing base and a damaged stream refused
//! with their exit codes.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_cowvol");
const BS: usize = 4096;

fn cowvol(store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--store").arg(store).args(args).env_remove("COWVOL_STORE");
    c
}

fn ok(store: &Path, args: &[&str]) -> Vec<u8> {
    let out = cowvol(store, args).stdin(Stdio::null()).output().unwrap();
    check(&out, args, 0);
    out.stdout
}

fn check(out: &Output, args: &[&str], code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "cowvol {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(store: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_slice(&ok(store, &a)).unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed) | 1).collect()
}

/// Exports a snapshot of `store` and returns its bytes.
fn export(store: &Path, dir: &Path, vol: &str, snap: &str) -> Vec<u8> {
    let p: PathBuf = dir.join(format!("export-{snap}.img"));
    ok(store, &["volume", "export", vol, p.to_str().unwrap(), "--snapshot", snap]);
    fs::read(p).unwrap()
}

#[test]
fn snapshots_travel_between_stores_through_files_and_pipes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&a, &["init"]);
    ok(&b, &["init"]);
    let img = tmp.path().join("disk.img");
    let mut data = pattern(3, 64 * BS);
    data[10 * BS..12 * BS].fill(0);
    fs::write(&img, &data).unwrap();
    ok(&a, &["volume", "import", "disk", img.to_str().unwrap()]);
    ok(&a, &["snapshot", "create", "disk", "mon", "--description", "monday", "--label", "env=prod"]);
    let patch = tmp.path().join("patch");
    fs::write(&patch, pattern(7, 3 * BS)).unwrap();
    ok(&a, &["volume", "write", "disk", "--offset", &(20 * BS).to_string(), patch.to_str().unwrap()]);
    ok(&a, &["snapshot", "create", "disk", "tue"]);

    // Diff: the three rewritten blocks, as a table and as JSON.
    let text = String::from_utf8(ok(&a, &["snapshot", "diff", "disk", "mon", "tue"])).unwrap();
    assert!(text.contains("1 extent, 12 KiB of data changed"), "{text}");
    let d = json(&a, &["snapshot", "diff", "disk", "mon", "-"]);
    assert_eq!(d["extents"], serde_json::json!([{"offset": 20 * BS, "length": 3 * BS, "data": true}]));
    assert_eq!(d["data_bytes"], 3 * BS);

    // Full stream through a file, incremental through a pipe.
    let full = tmp.path().join("mon.stream");
    let sent = json(&a, &["snapshot", "send", "disk", "mon", "-o", full.to_str().unwrap()]);
    assert_eq!(sent["data_bytes"].as_u64(), Some((data.len() - 2 * BS) as u64));
    let got = json(&b, &["snapshot", "receive", "-i", full.to_str().unwrap(), "--as", "replica"]);
    assert_eq!(got["snapshot"]["name"], "mon");
    assert_eq!(got["snapshot"]["recorded_volume_name"], "replica");
    assert_eq!(got["snapshot"]["labels"]["env"], "prod");
    let mut send = cowvol(&a, &["snapshot", "send", "disk", "tue", "--from", "mon"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let recv = cowvol(&b, &["snapshot", "receive"]).stdin(send.stdout.take().unwrap()).output().unwrap();
    assert!(send.wait().unwrap().success());
    check(&recv, &["snapshot", "receive"], 0);
    let listed = json(&b, &["snapshot", "list"]);
    let snaps = listed["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    for s in snaps {
        // Received snapshots belong to their (deleted) staging volumes.
        let (snap, vol) = (s["name"].as_str().unwrap(), s["volume_id"].as_str().unwrap());
        assert!(export(&a, tmp.path(), "disk", snap) == export(&b, tmp.path(), vol, snap), "{snap} differs");
    }
    assert!(json(&b, &["volume", "list"])["volumes"].as_array().unwrap().is_empty());

    // The incremental again, into a store without its base: refused (exit 1).
    let c = tmp.path().join("c");
    ok(&c, &["init"]);
    let inc = tmp.path().join("tue.stream");
    ok(&a, &["snapshot", "send", "disk", "tue", "--from", "mon", "-o", inc.to_str().unwrap()]);
    let out = cowvol(&c, &["snapshot", "receive", "-i", inc.to_str().unwrap()]).output().unwrap();
    check(&out, &["receive without base"], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot receive onto"));
    // A damaged stream: exit 5, nothing visible, one pending receive to abort.
    let mut bytes = fs::read(&full).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&full, &bytes).unwrap();
    let out = cowvol(&c, &["snapshot", "receive", "-i", full.to_str().unwrap()]).output().unwrap();
    check(&out, &["receive damaged"], 5);
    assert!(json(&c, &["snapshot", "list"])["snapshots"].as_array().unwrap().is_empty());
    let pending = json(&c, &["snapshot", "receive", "--pending"]);
    let key = pending[0]["key"].as_str().unwrap().to_string();
    ok(&c, &["snapshot", "receive", "--abort", &key]);
    assert!(json(&c, &["snapshot", "receive", "--pending"]).as_array().unwrap().is_empty());
}
