//! `cowvol backup ...` through the real binary: create (full, then
//! incremental), list, restore into another store compared byte for byte,
//! the snapshot's backup state in `snapshot list`, verify and restore of a
//! damaged backup with their exit codes, prune and gc.

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_cowvol");

fn run(store: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("COWVOL_STORE")
        .env_remove("COWVOL_BACKUP_TARGET")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn expect(store: &Path, args: &[&str], code: i32) -> Output {
    let out = run(store, args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.code() == Some(code), "cowvol {args:?} should exit {code}\n{stdout}\n{stderr}");
    out
}

fn json(store: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_slice(&expect(store, &a, 0).stdout).unwrap()
}

fn export(store: &Path, file: &Path, vol: &str, snap: &str) -> Vec<u8> {
    expect(store, &["volume", "export", vol, file.to_str().unwrap(), "--snapshot", snap], 0);
    fs::read(file).unwrap()
}

#[test]
fn backups_round_trip_through_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (here, there) = (tmp.path().join("here"), tmp.path().join("there"));
    let target = tmp.path().join("backups");
    let t = target.to_str().unwrap();
    expect(&here, &["init"], 0);
    expect(&there, &["init"], 0);
    let img = tmp.path().join("disk.img");
    let mut bytes = vec![0u8; 16 << 20];
    // xorshift: no two chunks alike (a repeating pattern would dedupe).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut bytes[..4 << 20] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(&img, &bytes).unwrap();
    expect(&here, &["volume", "import", "db", img.to_str().unwrap()], 0);
    expect(&here, &["snapshot", "create", "db", "monday", "--label", "env=prod"], 0);
    let first = json(&here, &["backup", "create", "db", "monday", "--target", t]);
    assert_eq!(first["chunks_uploaded"], 16);

    let patch = tmp.path().join("patch");
    fs::write(&patch, [7u8; 8192]).unwrap();
    expect(&here, &["volume", "write", "db", patch.to_str().unwrap(), "--offset", "1048576"], 0);
    expect(&here, &["snapshot", "create", "db", "tuesday"], 0);
    let second = json(&here, &["backup", "create", "db", "tuesday", "--target", t]);
    assert_eq!(second["base"], first["backup_id"]);
    assert_eq!((second["chunks_read"].as_u64(), second["chunks_uploaded"].as_u64()), (Some(1), Some(1)));

    let snaps = json(&here, &["snapshot", "list", "db", "--backup", "backed-up"]);
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 2);
    assert_eq!(snaps["snapshots"][1]["backup"]["backup_id"], second["backup_id"]);
    let table = String::from_utf8(expect(&here, &["snapshot", "list", "db"], 0).stdout).unwrap();
    assert!(table.contains("backed-up"), "{table}");

    let list = json(&there, &["backup", "list", "--target", t]);
    let names: Vec<&str> =
        list["backups"].as_array().unwrap().iter().map(|b| b["snapshot"].as_str().unwrap()).collect();
    assert_eq!(names, ["monday", "tuesday"]);
    let id = second["backup_id"].as_str().unwrap();
    expect(&there, &["backup", "restore", id, "--target", t, "--as", "db-copy"], 0);
    let got = export(&there, &tmp.path().join("got.img"), "db-copy", "tuesday");
    assert_eq!(got, export(&here, &tmp.path().join("want.img"), "db", "tuesday"));
    expect(&there, &["backup", "verify", "--target", t], 0);
    // A taken name is refused.
    expect(&there, &["backup", "restore", id, "--target", t, "--as", "db-copy"], 1);

    // Damage the only pack: verify exits 1, restore 5 (corruption).
    let pack = fs::read_dir(target.join("packs")).unwrap().next().unwrap().unwrap().path();
    let mut p = fs::read(&pack).unwrap();
    p[100] ^= 1;
    fs::write(&pack, p).unwrap();
    let out = expect(&there, &["backup", "verify", "--target", t], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its hash"));
    expect(&there, &["backup", "restore", id, "--target", t, "--as", "db-2"], 5);
    expect(&there, &["backup", "restore", "0123456789abcdef", "--target", t, "--as", "db-3"], 3);

    let pruned =
        String::from_utf8(expect(&here, &["backup", "prune", "--target", t, "--keep-last", "1"], 0).stdout).unwrap();
    assert!(pruned.contains("monday"), "{pruned}");
    assert_eq!(json(&here, &["backup", "list", "--target", t])["backups"].as_array().unwrap().len(), 1);
    // Credentials never come from the URL.
    expect(&here, &["backup", "list", "--target", "s3://key:secret@bucket"], 2);
}

/// `cowvol backup` and `cowvol serve` run helper programs: a `cowvol` with
/// neither beside it nor on PATH says which program it lacks and exits 1,
/// having touched nothing; a helper given another command refuses it as
/// bad usage.
#[test]
fn a_missing_helper_is_named_and_a_helper_runs_only_its_command() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    expect(&store, &["init"], 0);
    let alone = tmp.path().join("bin");
    fs::create_dir(&alone).unwrap();
    fs::copy(BIN, alone.join("cowvol")).unwrap();
    let target = tmp.path().join("backups");
    for (args, helper) in [
        (vec!["backup", "list", "--target", target.to_str().unwrap()], "cowvol-backup"),
        (vec!["serve", "--listen", "127.0.0.1:0"], "cowvol-serve"),
    ] {
        let out = Command::new(alone.join("cowvol"))
            .arg("--store")
            .arg(&store)
            .args(&args)
            .env("PATH", tmp.path().join("empty"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(helper) && stderr.contains("PATH"), "{args:?}: {stderr}");
    }
    assert!(!target.exists(), "a backup target was created without the helper");
    expect(&store, &["volume", "list"], 0);

    let out = Command::new(env!("CARGO_BIN_EXE_cowvol-backup"))
        .arg("--store")
        .arg(&store)
        .args(["volume", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cowvol backup"));
}
