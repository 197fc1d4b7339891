//! Model test: random sequences of operations applied to the engine and to a
//! plain model (a byte vector per volume and per snapshot), compared after
//! every step, with a clean `check()` after every step.

use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const BS: u64 = 4096;

#[derive(Debug, Clone)]
enum Op {
    Create { size_blocks: u8 },
    Write { vol: u8, offset: u32, len: u16, seed: u8 },
    Discard { vol: u8, offset: u32, len: u32 },
    Flush { vol: u8 },
    Snapshot { vol: u8 },
    Restore { vol: u8, snap: u8 },
    Fork { vol: u8, snap: Option<u8> },
    DeleteSnapshot { snap: u8 },
    DeleteVolume { vol: u8 },
    Reopen,
    Checkpoint,
    CrashAfterFlush { seed: u8 },
    Template { snap: u8 },
    FromTemplate { tmpl: u8 },
    DeleteTemplate { tmpl: u8 },
    FromSnapshot { snap: u8 },
    Group { a: u8, b: u8 },
    ToggleHold { snap: u8 },
    RestoreWithSafety { vol: u8, snap: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1u8..40).prop_map(|size_blocks| Op::Create { size_blocks }),
        8 => (any::<u8>(), any::<u32>(), 1u16..20000, any::<u8>())
            .prop_map(|(vol, offset, len, seed)| Op::Write { vol, offset, len, seed }),
        1 => (any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(vol, offset, len)| Op::Discard { vol, offset, len }),
        2 => any::<u8>().prop_map(|vol| Op::Flush { vol }),
        2 => any::<u8>().prop_map(|vol| Op::Snapshot { vol }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::Restore { vol, snap }),
        1 => (any::<u8>(), any::<Option<u8>>()).prop_map(|(vol, snap)| Op::Fork { vol, snap }),
        1 => any::<u8>().prop_map(|snap| Op::DeleteSnapshot { snap }),
        1 => any::<u8>().prop_map(|vol| Op::DeleteVolume { vol }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Checkpoint),
        1 => any::<u8>().prop_map(|seed| Op::CrashAfterFlush { seed }),
        1 => any::<u8>().prop_map(|snap| Op::Template { snap }),
        1 => any::<u8>().prop_map(|tmpl| Op::FromTemplate { tmpl }),
        1 => any::<u8>().prop_map(|tmpl| Op::DeleteTemplate { tmpl }),
        1 => any::<u8>().prop_map(|snap| Op::FromSnapshot { snap }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Group { a, b }),
        1 => any::<u8>().prop_map(|snap| Op::ToggleHold { snap }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::RestoreWithSafety { vol, snap }),
    ]
}

#[derive(Default)]
struct Model {
    volumes: BTreeMap<VolumeId, Vec<u8>>,
    snapshots: BTreeMap<SnapshotId, (VolumeId, Vec<u8>)>,
    templates: BTreeMap<TemplateId, Vec<u8>>,
    held: std::collections::BTreeSet<SnapshotId>,
}

fn pick<K: Copy, V>(m: &BTreeMap<K, V>, i: u8) -> Option<K> {
    if m.is_empty() {
        None
    } else {
        m.keys().nth(i as usize % m.len()).copied()
    }
}

fn opts() -> StoreOptions {
    StoreOptions { checkpoint_wal_bytes: 64 << 10, background_checkpoints: false, ..Default::default() }
}

fn verify(store: &Store, model: &Model) {
    let vols: Vec<VolumeId> = store.list_volumes().iter().map(|v| v.id).collect();
    assert_eq!(vols, model.volumes.keys().copied().collect::<Vec<_>>());
    for (id, data) in &model.volumes {
        let v = store.open_volume_with(*id, OpenMode::ReadOnly).unwrap();
        let mut buf = vec![0u8; data.len()];
        v.read_at(&mut buf, 0).unwrap();
        assert!(buf == *data, "volume {id} differs from the model");
    }
    for (id, (vol, data)) in &model.snapshots {
        let s = store.open_snapshot(*vol, *id).unwrap();
        let mut buf = vec![0u8; data.len()];
        s.read_at(&mut buf, 0).unwrap();
        assert!(buf == *data, "snapshot {id} differs from the model");
    }
    let tmpls: Vec<TemplateId> = store.list_templates().iter().map(|t| t.id).collect();
    assert_eq!(tmpls, model.templates.keys().copied().collect::<Vec<_>>());
    for (id, data) in &model.templates {
        let t = store.open_template(*id).unwrap();
        let mut buf = vec![0u8; data.len()];
        t.read_at(&mut buf, 0).unwrap();
        assert!(buf == *data, "template {id} differs from the model");
    }
    for s in store.all_snapshots() {
        assert_eq!(s.held, model.held.contains(&s.id), "hold of {}", s.id);
    }
    let report = store.check().unwrap();
    assert!(report.is_clean(), "check: {:?}", report.problems);
}

fn run(ops: Vec<Op>) {
    let mut disk = SimDir::new();
    let mut store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let mut model = Model::default();
    let mut names = 0u32;
    for op in ops {
        names += 1;
        match op {
            Op::Create { size_blocks } => {
                let size = size_blocks as u64 * BS - (names as u64 % 7) * 100;
                let info = store.create_volume(VolumeOptions::new(format!("v{names}"), size)).unwrap();
                model.volumes.insert(info.id, vec![0; size as usize]);
            }
            Op::Write { vol, offset, len, seed } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let m = model.volumes.get_mut(&id).unwrap();
                let off = offset as usize % m.len();
                let len = (len as usize).min(m.len() - off);
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect();
                store.open_volume(id).unwrap().write_at(&data, off as u64).unwrap();
                m[off..off + len].copy_from_slice(&data);
            }
            Op::Discard { vol, offset, len } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let m = model.volumes.get_mut(&id).unwrap();
                let off = offset as usize % m.len();
                let len = len as usize % (m.len() - off + 1);
                store.open_volume(id).unwrap().discard(off as u64, len as u64).unwrap();
                m[off..off + len].fill(0);
            }
            Op::Flush { vol } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                store.open_volume(id).unwrap().flush().unwrap();
            }
            Op::Snapshot { vol } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let s = store.create_snapshot(id, SnapshotOptions::named(format!("s{names}"))).unwrap();
                assert_eq!(s.size_bytes, model.volumes[&id].len() as u64);
                model.snapshots.insert(s.id, (id, model.volumes[&id].clone()));
            }
            Op::Restore { vol, snap } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let of_vol: BTreeMap<_, _> = model.snapshots.iter().filter(|(_, (v, _))| *v == id).collect();
                let Some(sid) = pick(&of_vol, snap) else { continue };
                store.restore_snapshot(id, *sid, RestoreOptions::default()).unwrap();
                let data = model.snapshots[sid].1.clone();
                model.volumes.insert(id, data);
            }
            Op::Fork { vol, snap } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let of_vol: BTreeMap<_, _> = model.snapshots.iter().filter(|(_, (v, _))| *v == id).collect();
                let from = snap.and_then(|s| pick(&of_vol, s)).copied();
                let opts = ForkOptions { name: format!("f{names}"), from_snapshot: from, ..Default::default() };
                let info = store.fork_volume(id, opts).unwrap();
                let data = match from {
                    Some(s) => model.snapshots[&s].1.clone(),
                    None => model.volumes[&id].clone(),
                };
                model.volumes.insert(info.id, data);
            }
            Op::DeleteSnapshot { snap } => {
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let vol = model.snapshots[&sid].0;
                if model.held.remove(&sid) {
                    assert!(matches!(store.delete_snapshot(vol, sid), Err(Error::Held { .. })));
                    store.release_snapshot(vol, sid).unwrap();
                }
                assert!(store.delete_snapshot(vol, sid).unwrap().existed);
                assert!(!store.delete_snapshot(vol, sid).unwrap().existed);
                model.snapshots.remove(&sid);
            }
            Op::DeleteVolume { vol } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                store.delete_volume(id).unwrap();
                model.volumes.remove(&id);
            }
            Op::Reopen => {
                drop(store);
                store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
            }
            Op::Checkpoint => store.checkpoint().unwrap(),
            Op::CrashAfterFlush { seed } => {
                if let Some(id) = pick(&model.volumes, 0) {
                    store.open_volume(id).unwrap().flush().unwrap();
                }
                let next = disk.crash(LossMode::DropAll, seed as u64);
                drop(store);
                disk = next;
                store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
            }
            Op::Template { snap } => {
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let t = store.create_template(sid, TemplateOptions::named(format!("t{names}"))).unwrap();
                model.templates.insert(t.id, model.snapshots[&sid].1.clone());
            }
            Op::FromTemplate { tmpl } => {
                let Some(tid) = pick(&model.templates, tmpl) else { continue };
                let v = store.create_volume_from_template(tid, VolumeOptions::new(format!("v{names}"), 0)).unwrap();
                model.volumes.insert(v.id, model.templates[&tid].clone());
            }
            Op::DeleteTemplate { tmpl } => {
                let Some(tid) = pick(&model.templates, tmpl) else { continue };
                assert!(store.delete_template(tid).unwrap().existed);
                model.templates.remove(&tid);
            }
            Op::FromSnapshot { snap } => {
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let v = store.create_volume_from_snapshot(sid, VolumeOptions::new(format!("v{names}"), 0)).unwrap();
                model.volumes.insert(v.id, model.snapshots[&sid].1.clone());
            }
            Op::Group { a, b } => {
                let (Some(x), Some(y)) = (pick(&model.volumes, a), pick(&model.volumes, b)) else { continue };
                let ids = if x == y { vec![x] } else { vec![x, y] };
                let snaps = store.create_group_snapshot(&ids, SnapshotOptions::named(format!("g{names}"))).unwrap();
                for s in snaps {
                    model.snapshots.insert(s.id, (s.volume_id, model.volumes[&s.volume_id].clone()));
                }
            }
            Op::ToggleHold { snap } => {
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let vol = model.snapshots[&sid].0;
                if model.held.remove(&sid) {
                    assert!(!store.release_snapshot(vol, sid).unwrap().held);
                } else {
                    assert!(store.hold_snapshot(vol, sid).unwrap().held);
                    model.held.insert(sid);
                }
            }
            Op::RestoreWithSafety { vol, snap } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let of_vol: BTreeMap<_, _> = model.snapshots.iter().filter(|(_, (v, _))| *v == id).collect();
                let Some(sid) = pick(&of_vol, snap).copied() else { continue };
                let safety = Some(SnapshotOptions::named(format!("safety{names}")));
                let r =
                    store.restore_snapshot(id, sid, RestoreOptions { safety_snapshot: safety, ..Default::default() });
                let kept = r.unwrap().safety_snapshot.unwrap();
                let before = model.volumes.insert(id, model.snapshots[&sid].1.clone()).unwrap();
                model.snapshots.insert(kept.id, (id, before));
            }
        }
        verify(&store, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("COWVOL_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
