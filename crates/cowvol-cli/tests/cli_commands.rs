//! Drives the real `cowvol` binary: import/export round trips, snapshots,
//! restore, forks, idempotent deletes, exit codes and `--json` output.

use serde_json::Value;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cowvol");
const BS: usize = 4096;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let store = root.join("store");
        Env { _tmp: tmp, root, store }
    }

    /// A fresh env with an initialized store.
    fn init() -> Env {
        let env = Env::new();
        env.ok(&["init"]);
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--store").arg(&self.store).args(args).env_remove("COWVOL_STORE");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cowvol {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Runs with `--json` and parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("cowvol {a:?} printed invalid JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    /// Runs and asserts the exit code; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(code),
            "cowvol {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    fn write_file(&self, name: &str, data: &[u8]) -> String {
        let p = self.path(name);
        fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn export(&self, vol: &str, extra: &[&str]) -> Vec<u8> {
        let p = self.path("export.img");
        let p = p.to_str().unwrap();
        let mut a = vec!["volume", "export", vol, p];
        a.extend_from_slice(extra);
        self.ok(&a);
        fs::read(p).unwrap()
    }
}

/// Deterministic pseudo-random bytes.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Random data with holes (all-zero blocks) and a partial last block.
fn image_with_holes() -> Vec<u8> {
    let mut img = random_bytes(7, 4 * 1024 * 1024 + 1234);
    for (from, to) in [(10, 50), (300, 301), (512, 700)] {
        img[from * BS..to * BS].fill(0);
    }
    img
}

fn nonzero_blocks(img: &[u8]) -> u64 {
    img.chunks(BS).filter(|b| b.iter().any(|&x| x != 0)).count() as u64
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[test]
fn import_snapshot_write_export_restore_and_fork() {
    let env = Env::init();
    let img = image_with_holes();
    let img_path = env.write_file("orig.img", &img);

    // Import: all-zero blocks stay unmapped.
    let j = env.json(&["volume", "import", "disk", &img_path]);
    assert_eq!(j["volume"]["name"], "disk");
    assert_eq!(j["volume"]["size_bytes"], img.len() as u64);
    assert_eq!(j["blocks_written"], nonzero_blocks(&img));
    assert_eq!(j["zero_blocks_skipped"], img.len().div_ceil(BS) as u64 - nonzero_blocks(&img));
    let stats = env.json(&["stats"]);
    assert_eq!(stats["data_blocks"], nonzero_blocks(&img));
    assert_eq!(stats["physical_bytes"], nonzero_blocks(&img) * BS as u64);
    assert_same(&env.export("disk", &[]), &img, "export after import");

    // Snapshot, then overwrite part of the volume (unaligned, across blocks).
    env.ok(&["snapshot", "create", "disk", "before", "--description", "pristine import"]);
    let patch = random_bytes(99, 100 * 1024 + 17);
    let patch_path = env.write_file("patch.bin", &patch);
    let offset = 1024 * 1024 + 3;
    env.ok(&["volume", "write", "disk", "--offset", &offset.to_string(), &patch_path]);
    let mut expected = img.clone();
    expected[offset..offset + patch.len()].copy_from_slice(&patch);
    assert_same(&env.export("disk", &[]), &expected, "export after write");
    assert_same(&env.export("disk", &["--snapshot", "before"]), &img, "export of the snapshot");

    // Read back a range through stdout, from the volume and the snapshot.
    let got = env.ok(&["volume", "read", "disk", "--offset", &offset.to_string(), "--length", "100K"]);
    assert_same(&got, &expected[offset..offset + 100 * 1024], "read from volume");
    let got = env.ok(&["volume", "read", "vol-1", "--offset", "1M", "--length", "4K", "--snapshot", "snap-1"]);
    assert_same(&got, &img[1 << 20..(1 << 20) + 4096], "read from snapshot");

    // Fork the snapshot; writes on either side stay on their side.
    env.ok(&["volume", "fork", "disk", "clone", "--from-snapshot", "before"]);
    assert_same(&env.export("clone", &[]), &img, "fresh fork");
    let fork_patch = vec![0x5au8; 8192];
    let fork_patch_path = env.write_file("fork.bin", &fork_patch);
    env.ok(&["volume", "write", "clone", "--offset", "0", &fork_patch_path]);
    let mut fork_expected = img.clone();
    fork_expected[..8192].copy_from_slice(&fork_patch);
    assert_same(&env.export("clone", &[]), &fork_expected, "fork after its write");
    assert_same(&env.export("disk", &[]), &expected, "volume unaffected by the fork's write");
    assert_same(&env.export("disk", &["--snapshot", "before"]), &img, "snapshot unaffected by the fork");

    // Restore: the volume reads as the original image again.
    env.ok(&["snapshot", "restore", "disk", "before", "--timeout", "10"]);
    assert_same(&env.export("disk", &[]), &img, "export after restore");
    assert_same(&env.export("clone", &[]), &fork_expected, "fork unaffected by the restore");

    // A fork of the live volume is isolated too.
    env.ok(&["volume", "fork", "disk", "live-clone"]);
    env.ok(&["volume", "write", "disk", "--offset", "0", &fork_patch_path]);
    assert_same(&env.export("live-clone", &[]), &img, "live fork unaffected by a later write");

    env.ok(&["check"]);
    env.ok(&["scrub"]);
}

#[test]
fn export_is_sparse_and_keeps_the_size() {
    let env = Env::init();
    let mut img = vec![0u8; 8 << 20];
    img[..65536].copy_from_slice(&random_bytes(3, 65536));
    img[(5 << 20) + 100] = 1;
    let p = env.write_file("sparse.img", &img);
    let j = env.json(&["volume", "import", "s", &p]);
    assert_eq!(j["blocks_written"], 17);
    let out = env.path("out.img");
    let j = env.json(&["volume", "export", "s", out.to_str().unwrap()]);
    assert_eq!(j["bytes"], 8u64 << 20);
    assert_eq!(j["zero_blocks_skipped"], 2048 - 17);
    assert_same(&fs::read(&out).unwrap(), &img, "sparse export");
    use std::os::unix::fs::MetadataExt;
    let allocated = fs::metadata(&out).unwrap().blocks() * 512;
    assert!(allocated < 4 << 20, "export of an almost empty image allocated {allocated} bytes");
}

#[test]
fn snapshot_delete_is_idempotent() {
    let env = Env::init();
    env.ok(&["volume", "create", "v", "--size", "1M"]);
    env.ok(&["snapshot", "create", "v", "s"]);
    let j = env.json(&["snapshot", "delete", "v", "s"]);
    assert_eq!(j["existed"], true);
    assert_eq!(j["snapshot_id"], "snap-1");
    let j = env.json(&["snapshot", "delete", "v", "s"]);
    assert_eq!(j["existed"], false);
    env.ok(&["snapshot", "delete", "v", "snap-1"]);
    env.ok(&["snapshot", "delete", "v", "never-existed"]);
}

#[test]
fn bad_arguments_exit_2() {
    let env = Env::init();
    env.ok(&["volume", "create", "v", "--size", "64K"]);
    env.fails(&["frobnicate"], 2);
    env.fails(&["volume", "create", "w"], 2);
    env.fails(&["volume", "create", "w", "--size", "12X"], 2);
    env.fails(&["volume", "create", "w", "--size", "1M", "--access-mode", "sometimes"], 2);
    env.fails(&["volume", "read", "v", "--offset", "60K", "--length", "8K"], 2);
    env.fails(&["snapshot", "restore", "v", "s", "--timeout", "soon"], 2);
    env.fails(&["volume", "create", "", "--size", "1M"], 2);
    env.fails(&["init", "--block-size", "3000"], 2);
    let p = env.write_file("big.bin", &[1u8; 8192]);
    let err = env.fails(&["volume", "write", "v", "--offset", "60K", &p], 2);
    assert!(err.starts_with("cowvol: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn missing_things_exit_3() {
    let env = Env::new();
    let err = env.fails(&["volume", "list"], 3);
    assert!(err.contains("cowvol init"), "hint expected: {err}");
    env.ok(&["init"]);
    let err = env.fails(&["volume", "info", "nope"], 3);
    assert!(err.starts_with("cowvol: error: ") && err.contains("nope"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    env.fails(&["volume", "info", "vol-42"], 3);
    env.fails(&["volume", "delete", "nope"], 3);
    env.fails(&["snapshot", "list", "nope"], 3);
    env.fails(&["volume", "export", "nope", env.path("x").to_str().unwrap()], 3);
    env.ok(&["volume", "create", "v", "--size", "1M"]);
    env.fails(&["snapshot", "info", "v", "nope"], 3);
    env.fails(&["snapshot", "restore", "v", "snap-9"], 3);
    env.fails(&["volume", "import", "w", env.path("no-such-file").to_str().unwrap()], 3);
}

#[test]
fn json_outputs_parse_with_stable_fields() {
    let env = Env::new();
    let j = env.json(&["init", "--block-size", "8K"]);
    assert_eq!(j["block_size"], 8192);
    assert_eq!(j["created"], true);
    let j = env.json(&["volume", "create", "db", "--size", "10G", "--access-mode", "rwx"]);
    assert_eq!(j["volume"]["id"], "vol-1");
    assert_eq!(j["volume"]["size_bytes"], 10u64 << 30);
    assert_eq!(j["volume"]["access_mode"], "rwx");
    let j = env.json(&["snapshot", "create", "db", "Nightly-1", "--description", "d"]);
    assert_eq!(j["snapshot"]["id"], "snap-1");
    assert_eq!(j["snapshot"]["volume_id"], "vol-1");
    env.ok(&["snapshot", "create", "db", "weekly"]);
    let j = env.json(&["volume", "fork", "vol-1", "db2", "--from-snapshot", "snap-1"]);
    assert_eq!(j["volume"]["origin"]["volume_id"], "vol-1");
    assert_eq!(j["volume"]["origin"]["snapshot_id"], "snap-1");

    let j = env.json(&["volume", "list"]);
    let vols = j["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2);
    for key in ["id", "name", "size_bytes", "access_mode", "created_at", "origin", "snapshot_count"] {
        assert!(vols[0].get(key).is_some(), "volume field {key} missing");
    }
    assert_eq!(vols[0]["snapshot_count"], 2);
    let j = env.json(&["volume", "info", "db"]);
    assert_eq!(j["volume"]["name"], "db");
    assert_eq!(j["snapshots"].as_array().unwrap().len(), 2);

    let j = env.json(&["snapshot", "list", "--search", "NIGHT"]);
    let snaps = j["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["name"], "Nightly-1");
    assert_eq!(snaps[0]["volume_name"], "db");
    assert_eq!(env.json(&["snapshot", "list", "db"])["snapshots"].as_array().unwrap().len(), 2);
    let j = env.json(&["snapshot", "info", "db", "weekly"]);
    assert_eq!(j["snapshot"]["id"], "snap-2");
    let j = env.json(&["snapshot", "restore", "db", "Nightly-1"]);
    assert_eq!(j["volume_id"], "vol-1");
    assert_eq!(j["snapshot_id"], "snap-1");

    let j = env.json(&["stats"]);
    for key in [
        "block_size",
        "volumes",
        "snapshots",
        "logical_bytes",
        "mapped_bytes",
        "physical_bytes",
        "shared_blocks",
        "data_blocks",
        "tree_nodes",
        "file_bytes",
        "free_bytes",
        "used_bytes",
        "punched_bytes",
        "allocated_bytes",
    ] {
        assert!(j.get(key).is_some(), "stats field {key} missing");
    }
    assert_eq!(j["block_size"], 8192);
    let j = env.json(&["check"]);
    assert_eq!(j["clean"], true);
    assert!(j["problems"].as_array().unwrap().is_empty());
    let j = env.json(&["scrub"]);
    assert_eq!(j["clean"], true);
    assert!(j["damaged"].as_array().unwrap().is_empty());
    let j = env.json(&["volume", "delete", "db2"]);
    assert_eq!(j["deleted"], true);
}

#[test]
fn quiet_prints_nothing_on_success() {
    let env = Env::init();
    let out = env.ok(&["--quiet", "volume", "create", "v", "--size", "1M"]);
    assert!(out.is_empty());
    let out = env.ok(&["-q", "snapshot", "create", "v", "s"]);
    assert!(out.is_empty());
}

#[test]
fn store_from_environment() {
    let env = Env::new();
    let run = |args: &[&str]| Command::new(BIN).args(args).env("COWVOL_STORE", &env.store).output().unwrap();
    assert!(run(&["init"]).status.success());
    assert!(run(&["volume", "create", "from-env", "--size", "1M"]).status.success());
    let j = env.json(&["volume", "list"]);
    assert_eq!(j["volumes"][0]["name"], "from-env");
}

#[test]
fn locked_store_exits_4() {
    let env = Env::init();
    env.ok(&["volume", "create", "v", "--size", "1M"]);
    // A write from stdin holds the store open until its input ends. The
    // holder itself may find the store locked by one of the probes below
    // while it starts; then it exits 4 and is started again.
    let spawn_holder = || {
        env.cmd(&["volume", "write", "v", "--offset", "0", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut holder = spawn_holder();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    while Instant::now() < deadline {
        if holder.try_wait().unwrap().is_some() {
            holder = spawn_holder();
        }
        let out = env.run(&["volume", "list"]);
        if out.status.code() == Some(4) && holder.try_wait().unwrap().is_none() {
            seen = Some(String::from_utf8_lossy(&out.stderr).to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    holder.stdin.take().unwrap().write_all(b"held").unwrap();
    assert!(holder.wait().unwrap().success());
    let err = seen.expect("a second process should find the store locked");
    assert!(err.contains("locked"), "{err}");
    let got = env.ok(&["volume", "read", "v", "--offset", "0", "--length", "4"]);
    assert_eq!(got, b"held");
}

/// Finds `needle` in the files under `dir` and flips one byte of every copy.
fn corrupt(dir: &Path, needle: &[u8]) -> usize {
    let mut hits = 0;
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p.is_file() {
            continue;
        }
        let mut data = fs::read(&p).unwrap();
        let mut changed = false;
        let mut i = 0;
        while let Some(pos) = data[i..].windows(needle.len()).position(|w| w == needle) {
            let at = i + pos;
            data[at + 100] ^= 0xff;
            hits += 1;
            changed = true;
            i = at + needle.len();
        }
        if changed {
            fs::write(&p, &data).unwrap();
        }
    }
    hits
}

#[test]
fn corruption_exits_5_and_scrub_names_it() {
    let env = Env::init();
    let block = random_bytes(12345, BS);
    let mut img = vec![0u8; 64 * 1024];
    img[8 * BS..9 * BS].copy_from_slice(&block);
    let p = env.write_file("c.img", &img);
    env.ok(&["volume", "import", "c", &p]);
    assert!(corrupt(&env.store, &block) > 0, "the block's bytes should be in the store");
    let err = env.fails(&["volume", "read", "c", "--offset", "32K", "--length", "4K"], 5);
    assert!(err.contains("corrupt") && err.contains("scrub"), "{err}");
    env.fails(&["scrub"], 1);
    let out = env.run(&["--json", "scrub"]);
    assert_eq!(out.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["clean"], false);
    assert_eq!(j["damaged"][0]["volumes"][0]["id"], "vol-1");
    assert_eq!(j["damaged"][0]["volumes"][0]["block"], 8);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged") && err.contains("vol-1 block 8"), "{err}");
}

#[test]
fn demo_runs_and_verifies() {
    let env = Env::new();
    let j = env.json(&["demo"]);
    assert_eq!(j["verified"], true);
    assert_eq!(j["temporary"], false);
    let steps = j["steps"].as_array().unwrap();
    assert!(steps.len() >= 10);
    for s in steps {
        for key in ["step", "action", "detail", "micros", "physical_bytes", "shared_blocks", "data_blocks"] {
            assert!(s.get(key).is_some(), "demo step field {key} missing");
        }
    }
    // With --store the store is kept and holds the demo's volumes (the
    // volume, its fork, the volume made from the template) and template.
    let j = env.json(&["volume", "list"]);
    assert_eq!(j["volumes"].as_array().unwrap().len(), 3);
    let j = env.json(&["template", "list"]);
    assert_eq!(j["templates"].as_array().unwrap().len(), 1);
    env.ok(&["check"]);
    // Without --store, the temporary store is removed.
    let tmp = env.path("tmpdir");
    fs::create_dir(&tmp).unwrap();
    let out =
        Command::new(BIN).args(["--quiet", "demo"]).env_remove("COWVOL_STORE").env("TMPDIR", &tmp).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "the demo left its temporary store behind");
}

#[test]
fn closed_stdout_is_not_an_error() {
    let env = Env::init();
    let p = env.write_file("r.img", &random_bytes(5, 8 << 20));
    env.ok(&["volume", "import", "r", &p]);
    let mut child = env
        .cmd(&["volume", "read", "r", "--offset", "0", "--length", "8M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn full_disk_exits_6() {
    if !Path::new("/dev/full").exists() {
        println!("note: no /dev/full; skipping");
        return;
    }
    let env = Env::init();
    let p = env.write_file("f.img", &random_bytes(6, 1 << 20));
    env.ok(&["volume", "import", "f", &p]);
    let err = env.fails(&["volume", "export", "f", "/dev/full"], 6);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    env.fails(&["volume", "read", "f", "--offset", "0", "--length", "1M", "/dev/full"], 6);
}

#[test]
fn deleted_volume_snapshots_stay_reachable_by_id() {
    let env = Env::init();
    let img = random_bytes(8, 256 << 10);
    let p = env.write_file("d.img", &img);
    env.ok(&["volume", "import", "d", &p]);
    env.ok(&["snapshot", "create", "d", "keep"]);
    env.ok(&["volume", "delete", "d"]);
    env.fails(&["volume", "info", "d"], 3);
    let j = env.json(&["snapshot", "list", "vol-1"]);
    assert_eq!(j["snapshots"][0]["volume_name"], Value::Null);
    env.ok(&["volume", "fork", "vol-1", "revived", "--from-snapshot", "keep"]);
    assert_same(&env.export("revived", &[]), &img, "fork of a deleted volume's snapshot");
    env.ok(&["snapshot", "delete", "vol-1", "keep"]);
    env.fails(&["snapshot", "list", "vol-1"], 3);
    env.ok(&["snapshot", "delete", "vol-1", "keep"]);
}

/// `bench --dir DIR` works in a directory of its own inside DIR and removes
/// only that: a directory named by the user may hold other files.
#[test]
fn bench_leaves_what_its_directory_already_held() {
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("keep.txt");
    std::fs::write(&keep, b"mine").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cowvol"))
        .args(["-q", "bench", "--quick", "--only", "sparse", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&keep).unwrap(), b"mine");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("keep.txt")], "the bench left its scratch directory");
}
