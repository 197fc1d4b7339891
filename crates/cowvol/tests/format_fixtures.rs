//! Stores written by earlier versions of cowvol still open and read back
//! what was written into them, and a damaged one is refused cleanly.
//!
//! For each version N kept here (2 to 9), `tests/fixtures/vN-clean` was
//! closed cleanly; `vN-crashed` was abandoned like a killed process with
//! changes in its WAL after the last checkpoint, so opening it replays
//! version-N records; `vN-damaged-catalog` is `vN-clean` with one byte of
//! its catalog flipped. They were made by `COWVOL_WRITE_FIXTURES=vN cargo
//! test --test format_fixtures write_fixtures -- --ignored` on the version
//! that wrote them, and are never rewritten: a format change that cannot
//! read them fails here.

use cowvol::*;
use std::path::{Path, PathBuf};

const BS: usize = 4096;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A private copy of a fixture: opening a store recovers and checkpoints it.
fn copy_of(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// The contents every fixture's block `lb` holds at generation `g`.
fn block(g: u8, lb: usize) -> Vec<u8> {
    (0..BS).map(|i| g.wrapping_mul(37) ^ (lb as u8).wrapping_mul(11) ^ (i as u8) | 1).collect()
}

/// The history every fixture shares: a volume with data, a held and
/// labelled snapshot, overwrites, a fork of the snapshot, a template and a
/// volume made from it, a policy, and a deleted snapshot.
fn write_history(store: &Store) {
    let base = store.create_volume(VolumeOptions::new("base", 64 * BS as u64)).unwrap();
    let v = store.open_volume(base.id).unwrap();
    for lb in 0..16 {
        v.write_at(&block(1, lb), (lb * BS) as u64).unwrap();
    }
    v.flush().unwrap();
    let mut opts = SnapshotOptions::named("golden");
    opts.description = "clean install".into();
    opts.owner = "team-a".into();
    opts.labels.insert("tier".into(), "gold".into());
    let golden = store.create_snapshot(base.id, opts).unwrap();
    store.hold_snapshot(base.id, golden.id).unwrap();
    for lb in 8..24 {
        v.write_at(&block(2, lb), (lb * BS) as u64).unwrap();
    }
    v.discard(0, 2 * BS as u64).unwrap();
    let gone = store.create_snapshot(base.id, SnapshotOptions::named("gone")).unwrap();
    store.delete_snapshot(base.id, gone.id).unwrap();
    store
        .fork_volume(
            base.id,
            ForkOptions { name: "clone".into(), from_snapshot: Some(golden.id), ..Default::default() },
        )
        .unwrap();
    let tmpl = store.create_template(golden.id, TemplateOptions::named("debian")).unwrap();
    store.create_volume_from_template(tmpl.id, VolumeOptions::new("vm-1", 0)).unwrap();
    let policy = SnapshotPolicy { interval_secs: 3600, keep_last: Some(3), keep_for_secs: None };
    store.set_policy(base.id, Some(policy)).unwrap();
    v.flush().unwrap();
}

/// What the history leaves: (volume name, blocks as generations).
fn expected_volumes() -> Vec<(&'static str, Vec<u8>)> {
    let golden: Vec<u8> = (0..64).map(|lb| if lb < 16 { 1 } else { 0 }).collect();
    let base: Vec<u8> = (0..64)
        .map(|lb| match lb {
            0 | 1 => 0,
            8..24 => 2,
            2..8 => 1,
            _ => 0,
        })
        .collect();
    vec![("base", base), ("clone", golden.clone()), ("vm-1", golden)]
}

fn assert_contents(what: &str, v: &Volume, gens: &[u8]) {
    let mut buf = vec![0u8; BS];
    for (lb, &g) in gens.iter().enumerate() {
        v.read_at(&mut buf, (lb * BS) as u64).unwrap();
        let want = if g == 0 { vec![0u8; BS] } else { block(g, lb) };
        assert!(buf == want, "{what}: block {lb} differs from generation {g}");
    }
}

fn assert_history(store: &Store) {
    for (name, gens) in expected_volumes() {
        let info = store.volume_by_name(name).unwrap_or_else(|| panic!("volume {name} is missing"));
        assert_contents(name, &store.open_volume(info.id).unwrap(), &gens);
    }
    let base = store.volume_by_name("base").unwrap();
    assert_eq!(base.policy.map(|p| p.interval_secs), Some(3600));
    let snaps = store.list_snapshots(base.id);
    assert_eq!(snaps.len(), 1, "only golden is left: {snaps:?}");
    let golden = &snaps[0];
    assert_eq!(
        (golden.name.as_str(), golden.description.as_str(), golden.owner.as_str(), golden.held),
        ("golden", "clean install", "team-a", true)
    );
    assert_eq!(golden.labels.get("tier").map(String::as_str), Some("gold"));
    assert_contents("golden", &store.open_snapshot(base.id, golden.id).unwrap(), &expected_volumes()[1].1);
    let tmpl = store.template_by_name("debian").expect("template");
    assert_contents("template", &store.open_template(tmpl.id).unwrap(), &expected_volumes()[1].1);
    let r = store.check().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert!(store.scrub().unwrap().is_clean());
}

/// The format version this build writes.
const CURRENT: u32 = 10;

/// Opens a clean fixture, checks it, writes to it, and checks that the
/// first checkpoint upgraded it and that what the new version added works.
fn upgrade_clean(version: &str) {
    let original = std::fs::read(fixture(&format!("{version}-clean")).join("cowvol.dat")).unwrap();
    let written_in = cowvol::testing::format_version(&original).map(|v| format!("v{v}"));
    assert_eq!(written_in.as_deref(), Some(version), "the fixture is in the version it is named for");
    let dir = copy_of(&format!("{version}-clean"));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_history(&store);
    // It keeps working, and reopens.
    let base = store.volume_by_name("base").unwrap();
    assert!(base.schedules.is_empty(), "{version} had no schedules");
    let golden = &store.list_snapshots(base.id)[0];
    assert_eq!((golden.expires_at, &golden.schedule, &golden.idempotency_key), (None, &None, &None));
    store.open_volume(base.id).unwrap().write_at(&block(3, 40), 40 * BS as u64).unwrap();
    let daily = Schedule::new("daily", Every::Daily { at: TimeOfDay::new(2, 0) }, "Europe/Berlin");
    store.add_schedule(base.id, daily, 1_800_000_000).unwrap();
    store.close().unwrap();
    let image = std::fs::read(dir.path().join("cowvol.dat")).unwrap();
    assert_eq!(cowvol::testing::format_version(&image), Some(CURRENT), "the first checkpoint upgrades the store");
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    if version == "v2" {
        assert!(store.list_volumes().iter().all(|v| v.owner.is_empty()), "version 2 had no volume owners");
    }
    let base = store.volume(base.id).unwrap();
    assert_eq!(base.schedules.iter().map(|s| s.schedule.name.as_str()).collect::<Vec<_>>(), ["daily"]);
    let mut buf = vec![0u8; BS];
    store.open_volume(base.id).unwrap().read_at(&mut buf, 40 * BS as u64).unwrap();
    assert_eq!(buf, block(3, 40));
}

fn refused_as_corruption(version: &str) {
    let dir = copy_of(&format!("{version}-damaged-catalog"));
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(Error::Corruption { what, .. }) => assert!(what.contains("catalog"), "{what}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_cleanly_closed_version_2_store_opens_and_reads_back() {
    upgrade_clean("v2");
}

#[test]
fn a_cleanly_closed_version_3_store_opens_and_is_upgraded() {
    upgrade_clean("v3");
}

#[test]
fn a_cleanly_closed_version_4_store_opens_and_is_upgraded() {
    upgrade_clean("v4");
}

#[test]
fn a_cleanly_closed_version_5_store_opens_and_is_upgraded() {
    upgrade_clean("v5");
}

/// Version 6 trees have leaves at level 0 only; version 7 reads them as
/// they are and lets new leaves stand at level 1.
#[test]
fn a_cleanly_closed_version_6_store_opens_and_is_upgraded() {
    upgrade_clean("v6");
}

/// A version-7 table has no change log; versions 8 and on read it as one
/// whose log is empty, and the checkpoint that upgrades it starts one.
#[test]
fn a_cleanly_closed_version_7_store_opens_and_is_upgraded() {
    upgrade_clean("v7");
}

/// A version-8 change log is in log order with one CRC per chunk: it is
/// read whole, and the checkpoint that upgrades the store rewrites what it
/// keeps as one sorted chunk with a fence per page.
#[test]
fn a_cleanly_closed_version_8_store_opens_and_is_upgraded() {
    let dir = copy_of("v8-clean");
    let store = Store::open(dir.path(), StoreOptions { background_checkpoints: false, ..Default::default() }).unwrap();
    let (_, chunks, entries) = cowvol::testing::change_log(&store);
    assert!(chunks > 0 && entries > 0, "the fixture has a change log to upgrade");
    // Its changes are what the trees imply, once upgraded and reopened.
    store.checkpoint().unwrap();
    assert_eq!(cowvol::testing::counts_differing_on_disk(&store), []);
    store.close().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(cowvol::testing::counts_differing_on_disk(&store), []);
    assert_history(&store);
    upgrade_clean("v8");
}

#[test]
fn a_crashed_version_2_store_replays_its_log() {
    let dir = copy_of("v2-crashed");
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_history(&store);
}

#[test]
fn a_crashed_version_3_store_replays_its_log() {
    let dir = copy_of("v3-crashed");
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_history(&store);
}

#[test]
fn a_crashed_version_4_store_replays_its_log() {
    let dir = copy_of("v4-crashed");
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_history(&store);
}

/// Opens a crashed fixture, whose log open replays, checks what it reads
/// back, and checks that the checkpoint open wrote upgraded the store.
fn replay_and_upgrade(version: &str) {
    let dir = copy_of(&format!("{version}-crashed"));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_history(&store);
    store.close().unwrap();
    let image = std::fs::read(dir.path().join("cowvol.dat")).unwrap();
    assert_eq!(cowvol::testing::format_version(&image), Some(CURRENT));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_history(&store);
}

/// Version 5 wrote segment headers without the field version 6 added:
/// its log is read as it was written, replayed, and then replaced by one
/// of the current version at the checkpoint open writes.
#[test]
fn a_crashed_version_5_store_replays_its_log_and_is_upgraded() {
    replay_and_upgrade("v5");
}

/// A version 6 log (links and seals) is replayed, then replaced at the
/// checkpoint open writes to upgrade the store.
#[test]
fn a_crashed_version_6_store_replays_its_log_and_is_upgraded() {
    replay_and_upgrade("v6");
}

/// A version-7 log is replayed onto a table without a change log, then
/// replaced at the checkpoint open writes to upgrade the store.
#[test]
fn a_crashed_version_7_store_replays_its_log_and_is_upgraded() {
    replay_and_upgrade("v7");
}

/// A version-8 log is replayed onto a table whose change log is in log
/// order, then replaced at the checkpoint open writes.
#[test]
fn a_crashed_version_8_store_replays_its_log_and_is_upgraded() {
    replay_and_upgrade("v8");
}

#[test]
fn a_damaged_version_8_store_is_refused_as_corruption() {
    refused_as_corruption("v8");
}

/// Version 10 adds node deltas and interior entries that name them; a
/// version-9 node (entries without them) is read as a node with no delta.
#[test]
fn a_cleanly_closed_version_9_store_opens_and_is_upgraded() {
    upgrade_clean("v9");
}

#[test]
fn a_crashed_version_9_store_replays_its_log_and_is_upgraded() {
    replay_and_upgrade("v9");
}

#[test]
fn a_damaged_version_9_store_is_refused_as_corruption() {
    refused_as_corruption("v9");
}

#[test]
fn a_damaged_version_7_store_is_refused_as_corruption() {
    refused_as_corruption("v7");
}

#[test]
fn a_damaged_version_6_store_is_refused_as_corruption() {
    refused_as_corruption("v6");
}

#[test]
fn a_damaged_version_5_store_is_refused_as_corruption() {
    refused_as_corruption("v5");
}

#[test]
fn a_damaged_version_2_store_is_refused_as_corruption() {
    refused_as_corruption("v2");
}

#[test]
fn a_damaged_version_3_store_is_refused_as_corruption() {
    refused_as_corruption("v3");
}

#[test]
fn a_damaged_version_4_store_is_refused_as_corruption() {
    refused_as_corruption("v4");
}

/// Writes the fixtures. Run only by hand, on the version whose format they
/// pin (see the module comment).
#[test]
#[ignore = "writes the fixtures; run by hand when a format version is introduced"]
fn write_fixtures() {
    let Ok(prefix) = std::env::var("COWVOL_WRITE_FIXTURES") else {
        return;
    };
    let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
    let clean = fixture(&format!("{prefix}-clean"));
    std::fs::create_dir_all(&clean).unwrap();
    let store = Store::open(&clean, opts()).unwrap();
    write_history(&store);
    store.close().unwrap();

    let crashed = fixture(&format!("{prefix}-crashed"));
    std::fs::create_dir_all(&crashed).unwrap();
    let store = Store::open(&crashed, opts()).unwrap();
    store.checkpoint().unwrap();
    write_history(&store);
    cowvol::testing::abandon(store);

    let damaged = fixture(&format!("{prefix}-damaged-catalog"));
    std::fs::create_dir_all(&damaged).unwrap();
    for entry in std::fs::read_dir(&clean).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), damaged.join(entry.file_name())).unwrap();
        }
    }
    let data = damaged.join("cowvol.dat");
    let mut bytes = std::fs::read(&data).unwrap();
    let catalog_at = cowvol::testing::catalog_offset(&bytes).expect("a superblock");
    bytes[catalog_at as usize + 20] ^= 0x40;
    std::fs::write(&data, bytes).unwrap();
}
