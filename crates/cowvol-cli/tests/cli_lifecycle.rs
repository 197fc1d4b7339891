//! The snapshot lifecycle through the real `cowvol` binary: search filters
//! and paging, holds, templates, volumes made from snapshots and templates,
//! group snapshots, policies with retention, restore with a safety snapshot.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_cowvol");

/// Exit code of a refused delete of a held snapshot.
const HELD: i32 = 7;

/// A temporary store driven through the binary.
struct Store {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Store {
    /// A fresh, initialized store.
    fn new() -> Store {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let s = Store { _tmp: tmp, dir };
        s.ok(&["init"]);
        s
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--store")
            .arg(&self.dir)
            .args(args)
            .env_remove("COWVOL_STORE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs, asserts exit 0 and returns stdout.
    fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        assert!(
            out.status.success(),
            "cowvol {args:?} exited {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        out.stdout
    }

    /// Runs with `--json`, asserts exit 0 and parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = std::iter::once("--json").chain(args.iter().copied()).collect();
        let out = self.ok(&args);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    /// Runs, asserts the exit code and returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(code), "cowvol {args:?}: stderr: {err}");
        // The CLI's own errors are one line; clap's usage errors (exit 2) add a usage block.
        if err.starts_with("cowvol: error: ") {
            assert_eq!(err.lines().count(), 1, "one line on stderr expected: {err}");
        } else {
            assert_eq!(code, 2, "{err}");
        }
        err
    }

    /// Writes `data` into `vol` at offset 0 through `volume write -`.
    fn write(&self, vol: &str, data: &[u8]) {
        let path = self.dir.with_file_name(format!("in-{vol}.bin"));
        std::fs::write(&path, data).unwrap();
        self.ok(&["volume", "write", vol, "--offset", "0", path.to_str().unwrap()]);
    }

    /// Reads `len` bytes at offset 0 of `vol`, or of one of its snapshots.
    fn read(&self, vol: &str, len: usize, snapshot: Option<&str>) -> Vec<u8> {
        let len = len.to_string();
        let mut args = vec!["volume", "read", vol, "--offset", "0", "--length", &len];
        if let Some(s) = snapshot {
            args.extend(["--snapshot", s]);
        }
        self.ok(&args)
    }

    /// The names of the snapshots `snapshot list ARGS` returns, in order.
    fn names(&self, args: &[&str]) -> Vec<String> {
        let mut a = vec!["snapshot", "list"];
        a.extend_from_slice(args);
        let j = self.json(&a);
        let snaps = j["snapshots"].as_array().unwrap();
        assert!(j["total"].as_u64().unwrap() as usize >= snaps.len(), "{j}");
        snaps.iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn search_filters_by_name_kind_status_owner_label_and_deleted_volume_name() {
    let st = Store::new();
    st.ok(&["volume", "create", "db", "--size", "1M"]);
    st.ok(&["volume", "create", "logs", "--size", "1M"]);
    st.ok(&["snapshot", "create", "db", "Nightly-1", "--owner", "alice", "--label", "env=prod"]);
    st.ok(&["snapshot", "create", "db", "nightly-2", "--label", "env=dev", "--label", "tier=1"]);
    st.ok(&["snapshot", "create", "logs", "weekly", "--owner", "bob"]);
    st.ok(&["policy", "set", "db", "--interval", "1h"]);
    st.ok(&["policy", "run", "--now", "1800000000"]);
    // A two-step snapshot left unfinished when the store closes is failed after reopening.
    {
        let store = cowvol::Store::open(&st.dir, cowvol::StoreOptions::default()).unwrap();
        let logs = store.volume_by_name("logs").unwrap().id;
        store.begin_snapshot(logs, cowvol::SnapshotOptions::named("interrupted")).unwrap();
        store.close().unwrap();
    }

    assert_eq!(st.names(&["--search", "NIGHTLY"]), ["Nightly-1", "nightly-2"]);
    assert_eq!(st.names(&["--search", "ly-"]), ["Nightly-1", "nightly-2"]);
    assert_eq!(st.names(&["--kind", "auto"]), ["auto-20270115-080000"]);
    assert_eq!(st.names(&["--kind", "manual", "--status", "ready"]), ["Nightly-1", "nightly-2", "weekly"]);
    assert_eq!(st.names(&["--status", "failed"]), ["interrupted"]);
    assert_eq!(st.names(&["--label", "env=prod"]), ["Nightly-1"]);
    assert_eq!(st.names(&["--label", "env=dev", "--label", "tier=1"]), ["nightly-2"]);
    assert!(st.names(&["--label", "env=prod", "--label", "tier=1"]).is_empty());
    assert_eq!(st.names(&["--owner", "bob"]), ["weekly"]);
    assert_eq!(st.names(&["logs"]), ["weekly", "interrupted"]);
    let auto = &st.json(&["snapshot", "list", "--kind", "auto"])["snapshots"][0];
    assert_eq!(auto["kind"], "auto");
    assert_eq!(auto["labels"]["cowvol.policy"], "1800000000");
    let failed = &st.json(&["snapshot", "info", "logs", "interrupted"])["snapshot"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["held"], false);

    // A deleted volume's snapshots are found by the name it had.
    st.ok(&["volume", "delete", "logs"]);
    assert_eq!(st.names(&["logs"]), ["weekly", "interrupted"]);
    assert_eq!(st.names(&["logs", "--status", "ready"]), ["weekly"]);
    let j = st.json(&["snapshot", "list", "logs", "--search", "week"]);
    assert_eq!(j["snapshots"][0]["volume_name"], Value::Null);
    assert_eq!(j["snapshots"][0]["recorded_volume_name"], "logs");
    assert_eq!(j["snapshots"][0]["volume_id"], "vol-2");
    let table = String::from_utf8(st.ok(&["snapshot", "list", "logs"])).unwrap();
    assert!(table.contains("logs (vol-2, deleted)"), "{table}");
    assert!(table.lines().next().unwrap().split_whitespace().eq([
        "ID",
        "VOLUME",
        "NAME",
        "KIND",
        "STATUS",
        "BACKUP",
        "HELD",
        "OWNER",
        "SIZE",
        "CREATED",
        "DESCRIPTION"
    ]));
    st.ok(&["snapshot", "info", "logs", "weekly"]);
    st.ok(&["snapshot", "delete", "logs", "interrupted"]);
    assert_eq!(st.names(&["logs"]), ["weekly"]);

    st.fails(&["snapshot", "list", "nosuch"], 3);
    st.fails(&["snapshot", "list", "--kind", "sometimes"], 2);
    st.fails(&["snapshot", "list", "--status", "done"], 2);
    st.fails(&["snapshot", "list", "--label", "novalue"], 2);
    st.fails(&["snapshot", "list", "--held", "--not-held"], 2);
}

#[test]
fn search_pages_in_order() {
    let st = Store::new();
    st.ok(&["volume", "create", "db", "--size", "1M"]);
    for i in 1..=5 {
        st.ok(&["snapshot", "create", "db", &format!("s{i}")]);
    }
    let all = st.names(&[]);
    assert_eq!(all, ["s1", "s2", "s3", "s4", "s5"]);

    let first = st.json(&["snapshot", "list", "--limit", "2"]);
    assert_eq!(first["total"], 5);
    assert_eq!(first["next_offset"], 2);
    assert_eq!(first["snapshots"].as_array().unwrap().len(), 2);
    let mut paged = Vec::new();
    let mut offset = Some(0u64);
    while let Some(o) = offset {
        let j = st.json(&["snapshot", "list", "--limit", "2", "--offset", &o.to_string()]);
        paged.extend(j["snapshots"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()));
        offset = j["next_offset"].as_u64();
    }
    assert_eq!(paged, all);
    let last = st.json(&["snapshot", "list", "--limit", "2", "--offset", "4"]);
    assert_eq!(last["next_offset"], Value::Null);
    assert_eq!(st.names(&["--newest-first", "--limit", "2"]), ["s5", "s4"]);
    assert!(st.names(&["--offset", "9"]).is_empty());
    let text = String::from_utf8(st.ok(&["snapshot", "list", "--limit", "2", "--offset", "2"])).unwrap();
    assert!(text.contains("3-4 of 5 matching snapshots; next page: --offset 4"), "{text}");
}

#[test]
fn held_snapshot_is_refused_until_released() {
    let st = Store::new();
    st.ok(&["volume", "create", "db", "--size", "1M"]);
    st.ok(&["snapshot", "create", "db", "keep"]);
    st.ok(&["snapshot", "create", "db", "other"]);
    let held = st.json(&["snapshot", "hold", "db", "keep"]);
    assert_eq!(held["snapshot"]["held"], true);
    st.ok(&["snapshot", "hold", "db", "keep"]); // holding twice is fine
    assert_eq!(st.names(&["--held"]), ["keep"]);
    assert_eq!(st.names(&["--not-held"]), ["other"]);

    let err = st.fails(&["snapshot", "delete", "db", "keep"], HELD);
    assert!(err.starts_with("cowvol: error: ") && err.contains("held") && err.contains("snapshot release"), "{err}");
    assert_eq!(st.names(&["db"]), ["keep", "other"]);
    // Deleting the volume leaves the held snapshot, still held.
    st.ok(&["volume", "delete", "db"]);
    st.fails(&["snapshot", "delete", "db", "keep"], HELD);

    let released = st.json(&["snapshot", "release", "db", "keep"]);
    assert_eq!(released["snapshot"]["held"], false);
    let del = st.json(&["snapshot", "delete", "db", "keep"]);
    assert_eq!(del["existed"], true);
    assert_eq!(st.names(&[]), ["other"]);
    st.fails(&["snapshot", "hold", "vol-1", "keep"], 3);
}

#[test]
fn template_outlives_its_snapshot_and_volumes_made_from_it_outlive_the_template() {
    let st = Store::new();
    let golden = pattern(1, 40_000);
    st.ok(&["volume", "create", "base", "--size", "256K"]);
    st.write("base", &golden);
    st.ok(&["snapshot", "create", "base", "v1"]);
    st.write("base", &pattern(2, 40_000));

    let t = st.json(&[
        "template",
        "create",
        "golden",
        "--from-snapshot",
        "v1",
        "--description",
        "base image",
        "--label",
        "os=linux",
    ]);
    let t = &t["template"];
    assert_eq!(t["id"], "tmpl-1");
    assert_eq!(t["name"], "golden");
    assert_eq!(t["size_bytes"], 256 << 10);
    assert_eq!(t["source_volume_id"], "vol-1");
    assert_eq!(t["source_snapshot_id"], "snap-1");
    assert_eq!(t["labels"]["os"], "linux");
    assert_eq!(t["volume_count"], 0);
    st.fails(&["template", "create", "golden", "--from-snapshot", "v1"], 1);
    st.fails(&["template", "create", "other", "--from-snapshot", "nosuch"], 3);

    // The template outlives the snapshot and the volume it came from.
    st.ok(&["snapshot", "delete", "base", "v1"]);
    st.ok(&["volume", "delete", "base"]);
    let v = st.json(&["volume", "create", "web", "--from-template", "golden"]);
    assert_eq!(v["volume"]["size_bytes"], 256 << 10);
    assert_eq!(v["volume"]["origin"]["template_id"], "tmpl-1");
    assert_eq!(v["volume"]["origin"]["volume_id"], Value::Null);
    assert_eq!(st.read("web", golden.len(), None), golden);
    st.ok(&["volume", "create", "web2", "--from-template", "tmpl-1", "--size", "256K"]);
    st.fails(&["volume", "create", "web3", "--from-template", "golden", "--size", "1M"], 2);
    st.fails(&["volume", "create", "web3", "--from-template", "nosuch"], 3);

    let list = st.json(&["template", "list"]);
    assert_eq!(list["templates"].as_array().unwrap().len(), 1);
    assert_eq!(st.json(&["stats"])["templates"], 1);
    assert_eq!(st.json(&["check"])["templates"], 1);
    assert_eq!(list["templates"][0]["volume_count"], 2);
    let info = String::from_utf8(st.ok(&["template", "info", "golden"])).unwrap();
    assert!(info.contains("os=linux") && info.contains("since deleted"), "{info}");
    let vinfo = String::from_utf8(st.ok(&["volume", "info", "web"])).unwrap();
    assert!(vinfo.contains("made from template golden (tmpl-1)"), "{vinfo}");

    // Deleting the template leaves the volumes whole.
    st.write("web2", &pattern(3, 5000));
    let del = st.json(&["template", "delete", "golden"]);
    assert_eq!(del["existed"], true);
    assert_eq!(del["template_id"], "tmpl-1");
    assert_eq!(st.read("web", golden.len(), None), golden);
    let mut want = golden.clone();
    want[..5000].copy_from_slice(&pattern(3, 5000));
    assert_eq!(st.read("web2", golden.len(), None), want);
    st.ok(&["check"]);
    st.ok(&["scrub"]);

    // Idempotent: gone is fine.
    let again = st.json(&["template", "delete", "golden"]);
    assert_eq!(again["existed"], false);
    assert_eq!(again["template_id"], Value::Null);
    st.fails(&["template", "info", "golden"], 3);
    assert_eq!(st.json(&["template", "list"])["templates"], Value::Array(vec![]));
}

#[test]
fn volume_from_snapshot_and_group_snapshots() {
    let st = Store::new();
    let (a, b) = (pattern(4, 9000), pattern(5, 7000));
    st.ok(&["volume", "create", "app", "--size", "64K"]);
    st.ok(&["volume", "create", "logs", "--size", "32K"]);
    st.write("app", &a);
    st.write("logs", &b);

    let g =
        st.json(&["snapshot", "create-group", "consistent", "app", "logs", "--description", "both", "--owner", "ops"]);
    let snaps = g["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["volume_name"], "app");
    assert_eq!(snaps[1]["volume_name"], "logs");
    assert!(snaps.iter().all(|s| s["name"] == "consistent" && s["owner"] == "ops" && s["description"] == "both"));
    assert_eq!(snaps[0]["created_at"], snaps[1]["created_at"]);
    st.fails(&["snapshot", "create-group", "again", "app", "app"], 2);
    st.fails(&["snapshot", "create-group", "consistent", "app"], 1);
    st.fails(&["snapshot", "create-group", "x", "app", "nosuch"], 3);
    assert_eq!(st.names(&["--search", "x"]), Vec::<String>::new());
    st.fails(&["snapshot", "create-group", "only-name"], 2);

    st.write("app", &pattern(6, 9000));
    // Two snapshots share the name: the name alone is ambiguous.
    let err = st.fails(&["volume", "create", "copy", "--from-snapshot", "consistent"], 2);
    assert!(err.contains("--volume"), "{err}");
    let v = st.json(&["volume", "create", "copy", "--from-snapshot", "consistent", "--volume", "app"]);
    assert_eq!(v["volume"]["size_bytes"], 64 << 10);
    assert_eq!(v["volume"]["origin"]["volume_id"], "vol-1");
    assert_eq!(v["volume"]["origin"]["snapshot_id"], snaps[0]["id"]);
    assert_eq!(st.read("copy", a.len(), None), a);
    let logs_snap = snaps[1]["id"].as_str().unwrap();
    st.ok(&["volume", "create", "copy2", "--from-snapshot", logs_snap]);
    assert_eq!(st.read("copy2", b.len(), None), b);
    st.fails(&["volume", "create", "copy3", "--from-snapshot", logs_snap, "--size", "64K"], 2);
    st.fails(&["volume", "create", "copy3", "--from-snapshot", "snap-99"], 3);
    st.fails(&["volume", "create", "copy3"], 2);
    st.fails(&["volume", "create", "copy3", "--from-snapshot", logs_snap, "--from-template", "t"], 2);
    st.ok(&["check"]);
}

#[test]
fn policies_take_and_prune_automatic_snapshots_only() {
    let st = Store::new();
    st.ok(&["volume", "create", "db", "--size", "1M"]);
    st.ok(&["volume", "create", "idle", "--size", "1M"]);
    st.fails(&["policy", "set", "db", "--interval", "soon"], 2);
    st.fails(&["policy", "set", "db", "--interval", "0"], 2);
    st.fails(&["policy", "set", "db", "--interval", "1h", "--keep-last", "0"], 2);
    st.fails(&["policy", "set", "nosuch", "--interval", "1h"], 3);

    let set = st.json(&["policy", "set", "db", "--interval", "1h", "--keep-last", "2"]);
    assert_eq!(set["policy"]["interval_secs"], 3600);
    assert_eq!(set["policy"]["keep_last"], 2);
    assert_eq!(set["policy"]["keep_for_secs"], Value::Null);
    assert_eq!(st.json(&["volume", "info", "db"])["volume"]["policy"]["interval_secs"], 3600);
    assert_eq!(st.json(&["volume", "info", "idle"])["volume"]["policy"], Value::Null);
    st.ok(&["snapshot", "create", "db", "manual-before"]);

    let t0: u64 = 1_800_000_000;
    let run = |at: u64| st.json(&["policy", "run", "--now", &at.to_string()]);
    let first = run(t0);
    assert_eq!(first["now"], t0);
    assert_eq!(first["created"].as_array().unwrap().len(), 1);
    assert_eq!(first["created"][0]["kind"], "auto");
    assert_eq!(first["created"][0]["volume_name"], "db");
    assert_eq!(first["created"][0]["created_at"], t0);
    assert_eq!(first["pruned"], Value::Array(vec![]));
    assert_eq!(first["errors"], Value::Array(vec![]));
    // Not due again before the interval has passed.
    assert_eq!(run(t0 + 1800)["created"], Value::Array(vec![]));
    assert_eq!(run(t0 + 3600)["created"].as_array().unwrap().len(), 1);
    st.ok(&["snapshot", "create", "db", "manual-between"]);
    let third = run(t0 + 7200);
    assert_eq!(third["created"].as_array().unwrap().len(), 1);
    let pruned = third["pruned"].as_array().unwrap();
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0]["created_at"], t0);
    assert_eq!(pruned[0]["kind"], "auto");

    assert_eq!(st.names(&["db", "--kind", "auto"]).len(), 2);
    assert_eq!(st.names(&["db", "--kind", "manual"]), ["manual-before", "manual-between"]);

    // A held automatic snapshot is not pruned either.
    let newest = st.names(&["db", "--kind", "auto", "--newest-first", "--limit", "1"]).remove(0);
    st.ok(&["snapshot", "hold", "db", &newest]);
    run(t0 + 3 * 3600);
    let after = run(t0 + 4 * 3600);
    assert_eq!(after["pruned"].as_array().unwrap().len(), 1);
    let autos = st.names(&["db", "--kind", "auto"]);
    assert_eq!(autos.len(), 3, "{autos:?}");
    assert!(autos.contains(&newest));

    let text = String::from_utf8(st.ok(&["policy", "run", "--now", &(t0 + 5 * 3600).to_string()])).unwrap();
    assert!(text.contains("1 created, 1 pruned, 0 failed"), "{text}");
    assert!(text.contains("created") && text.contains("pruned") && text.contains("db (vol-1)"), "{text}");

    let show = st.json(&["policy", "show"]);
    let all = show["policies"].as_array().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["volume_name"], "db");
    assert_eq!(all[0]["auto_snapshots"], 3);
    assert_eq!(all[0]["newest_auto_at"], t0 + 5 * 3600);
    assert_eq!(all[0]["next_due_at"], t0 + 6 * 3600);
    assert_eq!(st.json(&["policy", "show", "idle"])["policies"][0]["policy"], Value::Null);
    let human = String::from_utf8(st.ok(&["policy", "show"])).unwrap();
    assert!(human.contains("db (vol-1)") && human.contains("1h"), "{human}");

    // Durations: suffixes and plain seconds.
    let p = st.json(&["policy", "set", "idle", "--interval", "90", "--keep-for", "7d"]);
    assert_eq!(p["policy"]["interval_secs"], 90);
    assert_eq!(p["policy"]["keep_for_secs"], 7 * 86_400);
    let p = st.json(&["policy", "set", "idle", "--interval", "1h30m"]);
    assert_eq!(p["policy"]["interval_secs"], 5400);

    let cleared = st.json(&["policy", "clear", "db"]);
    assert_eq!(cleared["policy"], Value::Null);
    assert_eq!(st.json(&["policy", "run", "--now", &(t0 + 99 * 3600).to_string()])["pruned"], Value::Array(vec![]));
    assert_eq!(st.names(&["db", "--kind", "manual"]), ["manual-before", "manual-between"]);
    st.ok(&["policy", "clear", "db"]);
    st.ok(&["check"]);
}

#[test]
fn restore_keeps_a_safety_snapshot_of_what_it_discards() {
    let st = Store::new();
    let (old, new) = (pattern(7, 12_000), pattern(8, 12_000));
    st.ok(&["volume", "create", "db", "--size", "64K"]);
    st.write("db", &old);
    st.ok(&["snapshot", "create", "db", "good"]);
    st.write("db", &new);

    let r = st.json(&["snapshot", "restore", "db", "good", "--safety-snapshot", "before-restore"]);
    assert_eq!(r["volume_id"], "vol-1");
    assert_eq!(r["snapshot_id"], "snap-1");
    assert_eq!(r["safety_snapshot"]["name"], "before-restore");
    assert_eq!(r["safety_snapshot"]["kind"], "manual");
    assert_eq!(st.read("db", old.len(), None), old);
    assert_eq!(st.read("db", new.len(), Some("before-restore")), new);
    // The restore itself can be undone.
    let r = st.json(&["snapshot", "restore", "db", "before-restore"]);
    assert_eq!(r["safety_snapshot"], Value::Null);
    assert_eq!(st.read("db", new.len(), None), new);
    // A taken name fails and changes nothing.
    st.fails(&["snapshot", "restore", "db", "good", "--safety-snapshot", "good"], 1);
    assert_eq!(st.read("db", new.len(), None), new);
    let text = String::from_utf8(st.ok(&["snapshot", "restore", "db", "good", "--safety-snapshot", "s2"])).unwrap();
    assert!(text.contains("kept as snapshot s2"), "{text}");
    st.ok(&["check"]);
}

#[test]
fn calendar_schedules_expiry_and_idempotency_keys_from_the_command_line() {
    let st = Store::new();
    st.ok(&["volume", "create", "db", "--size", "1M"]);
    st.write("db", &pattern(1, 4096));
    // Added on 2027-01-01 at 00:00 UTC; 02:00 in Berlin is 01:00 UTC in winter.
    let added = st.json(&[
        "policy",
        "add",
        "db",
        "--daily",
        "02:00",
        "--tz",
        "Europe/Berlin",
        "--keep",
        "7",
        "--now",
        "2027-01-01T00:00:00Z",
    ]);
    let s = &added["schedule"];
    assert_eq!((s["name"].as_str(), s["kind"].as_str(), s["hour"].as_u64()), (Some("daily"), Some("daily"), Some(2)));
    assert_eq!(s["next_due_at"], 1_798_765_200, "2027-01-01T01:00:00Z");
    st.ok(&["policy", "add", "db", "--weekly", "03:30", "--on", "sun", "--name", "sunday", "--keep", "4"]);
    st.ok(&["policy", "add", "db", "--hourly", ":15", "--keep-for", "1d", "--label", "tier=gold"]);
    st.fails(&["policy", "add", "db", "--daily", "02:00"], 1);
    st.fails(&["policy", "add", "db", "--daily", "25:00", "--name", "x"], 2);
    st.fails(&["policy", "add", "db", "--daily", "02:00", "--tz", "Mars/Base", "--name", "x"], 2);
    st.fails(&["policy", "add", "db", "--weekly", "02:00", "--name", "x"], 2);
    st.fails(&["policy", "add", "db", "--monthly", "02:00", "--on", "32", "--name", "x"], 2);
    let list = st.json(&["policy", "list", "db"]);
    let names: Vec<&str> = list["schedules"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["daily", "sunday", "hourly"]);

    let run = st.json(&["policy", "run", "--now", "2027-01-01T01:00:00Z"]);
    let created: Vec<&str> = run["created"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(created.contains(&"daily-20270101-0200"), "{run}");
    let daily = run["schedules"].as_array().unwrap().iter().find(|r| r["schedule"] == "daily").unwrap().clone();
    assert_eq!((daily["result"].as_str(), daily["failing"].as_bool()), (Some("created"), Some(false)));
    // Nothing written since: the next day's run skips, and says so.
    let text = String::from_utf8(st.ok(&["policy", "run", "--now", "2027-01-02T01:00:00Z"])).unwrap();
    assert!(text.contains("schedule daily of db (vol-1): skipped"), "{text}");
    let show = st.json(&["policy", "show", "db"]);
    let shown = &show["policies"][0]["schedules"][0];
    assert_eq!(
        (shown["last_result"].as_str(), shown["consecutive_failures"].as_u64()),
        (Some("skipped_unchanged"), Some(0))
    );
    let human = String::from_utf8(st.ok(&["policy", "list"])).unwrap();
    assert!(human.contains("daily at 02:00") && human.contains("Europe/Berlin"), "{human}");
    let removed = st.json(&["policy", "remove", "db", "sunday"]);
    assert_eq!(removed["existed"], true);
    assert_eq!(st.json(&["policy", "list", "db"])["schedules"].as_array().unwrap().len(), 2);

    // Expiry and idempotency keys on snapshot create.
    let made = st.json(&["snapshot", "create", "db", "s1", "--expires-in", "7d", "--idempotency-key", "req-1"]);
    let first = made["snapshot"]["id"].clone();
    assert!(made["snapshot"]["expires_at"].as_u64().is_some());
    let again = st.json(&["snapshot", "create", "db", "s1", "--expires-in", "7d", "--idempotency-key", "req-1"]);
    assert_eq!(again["snapshot"]["id"], first, "a retry returns the first snapshot");
    let expires = made["snapshot"]["expires_at"].as_u64().unwrap();
    let run = st.json(&["policy", "run", "--now", &expires.to_string()]);
    let expired: Vec<&Value> = run["expired"].as_array().unwrap().iter().map(|s| &s["id"]).collect();
    assert_eq!(expired, [&first]);
}
