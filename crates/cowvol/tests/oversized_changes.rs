//! Changes too large for one WAL record are refused before anything is
//! applied, and the store keeps working; text fields over their limits
//! (`cowvol::limits`) are refused by every operation that takes them.
//! Regression: a snapshot with a description of about 1 MB after some
//! writes was applied in memory, then refused by the log because the open
//! batch counted against it, which left the store refusing every change.
//! Descriptions are now limited to 4 KiB, so the test reaches the same size
//! with a group snapshot, one record for all its snapshots.

use cowvol::*;

/// Snapshot options at every limit: about 26 KB in a record.
fn maxed(name: &str) -> SnapshotOptions {
    SnapshotOptions {
        description: "d".repeat(limits::MAX_DESCRIPTION_BYTES),
        owner: "o".repeat(limits::MAX_OWNER_BYTES),
        labels: labels(limits::MAX_LABELS, limits::MAX_LABEL_KEY_BYTES, limits::MAX_LABEL_VALUE_BYTES),
        ..SnapshotOptions::named(name)
    }
}

#[test]
fn an_oversized_group_snapshot_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let ids: Vec<VolumeId> =
        (0..60).map(|i| store.create_volume(VolumeOptions::new(format!("v{i}"), 1 << 20)).unwrap().id).collect();
    let id = ids[0];
    let vol = store.open_volume(id).unwrap();
    for i in 0..200u64 {
        vol.write_at(&[i as u8; 4096], (i % 256) * 4096).unwrap();
    }
    // Fits in a record by itself, though not beside the writes' records.
    store.create_group_snapshot(&ids[..39], maxed("large")).unwrap();
    // Fits in no record: refused, nothing applied.
    assert!(matches!(store.create_group_snapshot(&ids, maxed("huge")), Err(Error::InvalidArgument(_))));
    assert_eq!(store.list_snapshots(id).len(), 1);
    assert_eq!(store.all_snapshots().len(), 39);
    // The store still takes changes, and reopens with the same contents.
    store.create_snapshot(id, SnapshotOptions::named("small")).unwrap();
    vol.write_at(b"after", 0).unwrap();
    vol.flush().unwrap();
    assert!(store.check().unwrap().is_clean());
    drop(vol);
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.list_snapshots(id).len(), 2);
    let mut buf = [0u8; 5];
    store.open_volume(id).unwrap().read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"after");
}

/// A string of exactly `bytes` bytes, with two-byte characters so byte and
/// character counts differ.
fn text(bytes: usize) -> String {
    let mut s = "é".repeat(bytes / 2);
    if bytes % 2 == 1 {
        s.push('x');
    }
    s
}

/// `n` labels whose keys and values have exactly the given lengths.
fn labels(n: usize, key: usize, value: usize) -> std::collections::BTreeMap<String, String> {
    (0..n).map(|i| (format!("{i:0>width$}", width = key.max(1)), text(value))).collect()
}

fn refused(r: Result<impl std::fmt::Debug>, field: &str) {
    match r {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(field), "error {m:?} does not name {field}"),
        other => panic!("{field}: expected InvalidArgument, got {other:?}"),
    }
}

/// What the store holds, to show that a refused change created nothing.
fn census(store: &Store) -> (usize, usize, usize) {
    (store.list_volumes().len(), store.all_snapshots().len(), store.list_templates().len())
}

/// Found by the hardening review (issue 11, finding 7): text fields were
/// bounded only by the WAL record (a 500 KB description was accepted), and
/// the catalog they fill was refused by recovery past 4 GiB. Every field
/// now has a limit (`cowvol::limits`), checked by every operation that
/// creates a record, before anything changes.
#[test]
fn text_fields_over_their_limits_are_refused_by_every_entry_point_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let v = store.create_volume(VolumeOptions::new("v", 1 << 16)).unwrap().id;
    let base = store.create_snapshot(v, SnapshotOptions::named("base")).unwrap().id;
    let tpl = store.create_template(base, TemplateOptions::named("tpl")).unwrap().id;
    let vol = store.open_volume(v).unwrap();
    vol.write_at(b"after base", 0).unwrap();
    vol.flush().unwrap();
    let before = census(&store);

    let long_name = text(limits::MAX_NAME_BYTES + 1);
    let long_owner = text(limits::MAX_OWNER_BYTES + 1);
    let vopts = |name: &str, owner: &str| VolumeOptions { owner: owner.into(), ..VolumeOptions::new(name, 0) };
    let sized = |o: VolumeOptions| VolumeOptions { size_bytes: 1 << 16, ..o };
    refused(store.create_volume(sized(vopts(&long_name, ""))), "volume name");
    refused(store.create_volume(sized(vopts("ok", &long_owner))), "volume owner");
    refused(store.create_volume(sized(vopts("", ""))), "volume name");
    let fork = |name: &str, owner: &str| ForkOptions { name: name.into(), owner: owner.into(), ..Default::default() };
    refused(store.fork_volume(v, fork(&long_name, "")), "volume name");
    refused(store.fork_volume(v, fork("ok", &long_owner)), "volume owner");
    refused(store.create_volume_from_snapshot(base, vopts(&long_name, "")), "volume name");
    refused(store.create_volume_from_snapshot(base, vopts("ok", &long_owner)), "volume owner");
    refused(store.create_volume_from_template(tpl, vopts(&long_name, "")), "volume name");
    refused(store.create_volume_from_template(tpl, vopts("ok", &long_owner)), "volume owner");

    let bad_snapshots: Vec<(&str, SnapshotOptions)> = vec![
        ("snapshot name", SnapshotOptions::named(long_name.clone())),
        (
            "snapshot description",
            SnapshotOptions { description: text(limits::MAX_DESCRIPTION_BYTES + 1), ..SnapshotOptions::named("s") },
        ),
        ("snapshot description", SnapshotOptions { description: "x".repeat(500_000), ..SnapshotOptions::named("s") }),
        ("snapshot owner", SnapshotOptions { owner: long_owner.clone(), ..SnapshotOptions::named("s") }),
        (
            "snapshot labels",
            SnapshotOptions { labels: labels(limits::MAX_LABELS + 1, 3, 1), ..SnapshotOptions::named("s") },
        ),
        (
            "snapshot label key",
            SnapshotOptions { labels: labels(1, limits::MAX_LABEL_KEY_BYTES + 1, 1), ..SnapshotOptions::named("s") },
        ),
        (
            "snapshot label key",
            SnapshotOptions { labels: [(String::new(), "v".into())].into(), ..SnapshotOptions::named("s") },
        ),
        (
            "value",
            SnapshotOptions { labels: labels(1, 3, limits::MAX_LABEL_VALUE_BYTES + 1), ..SnapshotOptions::named("s") },
        ),
    ];
    for (field, opts) in bad_snapshots {
        refused(store.create_snapshot(v, opts.clone()), field);
        refused(store.begin_snapshot(v, opts.clone()), field);
        refused(store.create_group_snapshot(&[v], opts.clone()), field);
        let restore = RestoreOptions { safety_snapshot: Some(opts.clone()), ..Default::default() };
        refused(store.restore_snapshot(v, base, restore), field);
        let t = TemplateOptions {
            name: if field == "snapshot name" { opts.name.clone() } else { "t".into() },
            description: opts.description.clone(),
            labels: opts.labels.clone(),
            owner: opts.owner.clone(),
        };
        refused(store.create_template(base, t), &field.replace("snapshot", "template"));
    }
    assert_eq!(census(&store), before);
    // The refused restores did not roll the volume back.
    let mut buf = [0u8; 10];
    vol.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"after base");
    assert!(store.check().unwrap().is_clean());
}

#[test]
fn forbidden_characters_are_refused_and_ordinary_text_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let v = store.create_volume(VolumeOptions::new("v", 1 << 16)).unwrap().id;
    let before = census(&store);
    // C0 (NUL, tab, LF, CR, ESC), DEL, C1, line and paragraph separators,
    // bidirectional embeddings, overrides, isolates and marks.
    let identifier_bad = [
        '\0', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{80}', '\u{85}', '\u{9f}', '\u{2028}', '\u{2029}', '\u{202A}',
        '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{200E}',
        '\u{200F}', '\u{061C}',
    ];
    for c in identifier_bad {
        let s = format!("a{c}b");
        refused(store.create_volume(VolumeOptions::new(s.clone(), 4096)), "volume name");
        let owned = VolumeOptions { owner: s.clone(), ..VolumeOptions::new("ok", 4096) };
        refused(store.create_volume(owned), "volume owner");
        refused(store.create_snapshot(v, SnapshotOptions::named(s.clone())), "snapshot name");
        let keyed = SnapshotOptions { labels: [(s.clone(), "v".into())].into(), ..SnapshotOptions::named("ok") };
        refused(store.create_snapshot(v, keyed), "snapshot label key");
    }
    // Free text keeps tab and LF (descriptions) and bidirectional text, but
    // no other control character.
    for c in ['\0', '\r', '\u{1b}', '\u{7f}', '\u{85}'] {
        let d = SnapshotOptions { description: format!("a{c}b"), ..SnapshotOptions::named("ok") };
        refused(store.create_snapshot(v, d), "snapshot description");
    }
    for c in ['\0', '\t', '\n', '\r', '\u{85}'] {
        let l = SnapshotOptions { labels: [("k".into(), format!("a{c}b"))].into(), ..SnapshotOptions::named("ok") };
        refused(store.create_snapshot(v, l), "snapshot label \"k\" value");
    }
    assert_eq!(census(&store), before);
    let description = "line one\n\tline two: \u{202B}עברית\u{202C} 名前".to_string();
    let labels: std::collections::BTreeMap<_, _> = [("lang".to_string(), "\u{2067}עברית\u{2069}".to_string())].into();
    let opts = SnapshotOptions {
        description: description.clone(),
        labels: labels.clone(),
        ..SnapshotOptions::named("ünï 名前")
    };
    store.create_snapshot(v, opts).unwrap();
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let s = &store.list_snapshots(v)[0];
    assert_eq!((s.name.as_str(), &s.description, &s.labels), ("ünï 名前", &description, &labels));
}

#[test]
fn text_fields_exactly_at_their_limits_are_accepted_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let name = |tag: char| {
        let mut s = text(limits::MAX_NAME_BYTES - 1);
        s.push(tag);
        s
    };
    let owner = text(limits::MAX_OWNER_BYTES);
    let vopts = |tag, size| VolumeOptions { owner: owner.clone(), ..VolumeOptions::new(name(tag), size) };
    let v = store.create_volume(vopts('a', 1 << 16)).unwrap().id;
    let w = store.create_volume(vopts('w', 1 << 16)).unwrap().id;
    let full = SnapshotOptions {
        name: name('s'),
        description: text(limits::MAX_DESCRIPTION_BYTES),
        owner: owner.clone(),
        labels: labels(limits::MAX_LABELS, limits::MAX_LABEL_KEY_BYTES, limits::MAX_LABEL_VALUE_BYTES),
        kind: SnapshotKind::Manual,
        expires_at: Some(u64::MAX),
        idempotency_key: None,
    };
    let s = store.create_snapshot(v, full.clone()).unwrap().id;
    store.begin_snapshot(v, SnapshotOptions { name: name('b'), ..full.clone() }).unwrap();
    store.create_group_snapshot(&[v, w], SnapshotOptions { name: name('g'), ..full.clone() }).unwrap();
    let restore = RestoreOptions {
        safety_snapshot: Some(SnapshotOptions { name: name('r'), ..full.clone() }),
        ..Default::default()
    };
    store.restore_snapshot(v, s, restore).unwrap();
    let t = TemplateOptions {
        name: name('t'),
        description: full.description.clone(),
        labels: full.labels.clone(),
        owner: owner.clone(),
    };
    let t = store.create_template(s, t).unwrap().id;
    let fork = ForkOptions { name: name('f'), owner: owner.clone(), ..Default::default() };
    store.fork_volume(v, fork).unwrap();
    store.create_volume_from_snapshot(s, vopts('s', 0)).unwrap();
    store.create_volume_from_template(t, vopts('t', 0)).unwrap();
    let state = |store: &Store| {
        let mut snaps = store.all_snapshots();
        snaps.sort_by_key(|s| s.id);
        (store.list_volumes(), snaps, store.list_templates())
    };
    let want = state(&store);
    assert_eq!((want.0.len(), want.1.len(), want.2.len()), (5, 5, 1));
    assert!(want.1.iter().all(|s| s.labels == full.labels && s.description == full.description && s.owner == owner));
    // The snapshot left creating fails when the store reopens.
    let mut want = want;
    for s in &mut want.1 {
        if s.status == SnapshotStatus::Creating {
            s.status = SnapshotStatus::Failed;
        }
    }
    // Reopened from the log, then from a checkpoint's catalog.
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(state(&store), want);
    store.checkpoint().unwrap();
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(state(&store), want);
    assert!(store.check().unwrap().is_clean());
}
