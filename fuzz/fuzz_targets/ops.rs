//! Operation sequences against the public API, compared with a model.
//!
//! Like `tests/model.rs`, but driven by libFuzzer: the input decodes (through
//! `arbitrary`) into at most 64 operations on a store opened on a
//! [`SimDir`]; the model is a byte vector per live volume and per snapshot.
//! After every operation each volume and snapshot must read back exactly as
//! the model says, the catalog must list the same volumes and snapshots, and
//! `Store::check()` must be clean. Every API call the model expects to
//! succeed must succeed.
//!
//! Sizes are bounded so one input runs in milliseconds: volumes of at most
//! 64 blocks of 4 KiB, at most 16 live volumes and 32 snapshots.
#![no_main]

use arbitrary::Arbitrary;
use cowvol::testing::{LossMode, SimDir};
use cowvol::{
    ForkOptions, OpenMode, RestoreOptions, SnapshotId, SnapshotOptions, Store, StoreOptions, VolumeId, VolumeOptions,
};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::Arc;

const BS: u64 = 4096;
const MAX_BLOCKS: u64 = 64;
const MAX_OPS: usize = 64;
const MAX_VOLUMES: usize = 16;
const MAX_SNAPSHOTS: usize = 32;

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// A volume of `1 + blocks % 64` blocks, less `tail % 4096` bytes.
    Create {
        blocks: u8,
        tail: u16,
    },
    Write {
        vol: u8,
        offset: u32,
        len: u16,
        seed: u8,
    },
    Discard {
        vol: u8,
        offset: u32,
        len: u32,
    },
    Flush {
        vol: u8,
    },
    Snapshot {
        vol: u8,
    },
    Restore {
        vol: u8,
        snap: u8,
    },
    /// Fork a live volume, or one of its snapshots.
    Fork {
        vol: u8,
        snap: Option<u8>,
    },
    /// Fork any snapshot, also one whose volume was deleted.
    ForkSnapshot {
        snap: u8,
    },
    DeleteSnapshot {
        snap: u8,
    },
    DeleteVolume {
        vol: u8,
    },
    Checkpoint,
    Reopen,
    /// Flush (through one volume's handle: a flush is store-wide), then cut
    /// the power losing every unsynced write, and reopen what survived.
    CrashAfterFlush {
        vol: u8,
        seed: u8,
    },
}

#[derive(Default)]
struct Model {
    volumes: BTreeMap<VolumeId, Vec<u8>>,
    snapshots: BTreeMap<SnapshotId, (VolumeId, Vec<u8>)>,
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

fn open(disk: &SimDir, what: &str) -> Store {
    Store::open_in(Arc::new(disk.clone()), opts()).unwrap_or_else(|e| panic!("open ({what}): {e}"))
}

fn verify(store: &Store, model: &Model, step: usize, op: &Op) {
    let vols: Vec<VolumeId> = store.list_volumes().iter().map(|v| v.id).collect();
    assert_eq!(vols, model.volumes.keys().copied().collect::<Vec<_>>(), "volumes after step {step} {op:?}");
    let snaps: Vec<SnapshotId> = store.all_snapshots().iter().map(|s| s.id).collect();
    assert_eq!(snaps, model.snapshots.keys().copied().collect::<Vec<_>>(), "snapshots after step {step} {op:?}");
    for (id, data) in &model.volumes {
        let v = store.open_volume_with(*id, OpenMode::ReadOnly).unwrap();
        assert_eq!(v.size(), data.len() as u64, "size of volume {id} after step {step} {op:?}");
        let mut buf = vec![0u8; data.len()];
        v.read_at(&mut buf, 0).unwrap_or_else(|e| panic!("reading volume {id} after step {step} {op:?}: {e}"));
        if buf != *data {
            let at = buf.iter().zip(data).position(|(a, b)| a != b).unwrap();
            panic!("volume {id} differs from the model at byte {at} after step {step} {op:?}");
        }
    }
    for (id, (vol, data)) in &model.snapshots {
        let s = store.open_snapshot(*vol, *id).unwrap_or_else(|e| panic!("opening {id} of {vol}: {e}"));
        assert_eq!(s.size(), data.len() as u64, "size of snapshot {id} after step {step} {op:?}");
        let mut buf = vec![0u8; data.len()];
        s.read_at(&mut buf, 0).unwrap_or_else(|e| panic!("reading snapshot {id} after step {step} {op:?}: {e}"));
        if buf != *data {
            let at = buf.iter().zip(data).position(|(a, b)| a != b).unwrap();
            panic!("snapshot {id} differs from the model at byte {at} after step {step} {op:?}");
        }
    }
    let report = store.check().unwrap_or_else(|e| panic!("check after step {step} {op:?}: {e}"));
    assert!(report.is_clean(), "check after step {step} {op:?}: {:?}", report.problems);
}

fn run(ops: &[Op]) {
    let mut disk = SimDir::new();
    let mut store = open(&disk, "new store");
    let mut model = Model::default();
    let mut names = 0u32;
    for (step, op) in ops.iter().enumerate() {
        names += 1;
        match *op {
            Op::Create { blocks, tail } => {
                if model.volumes.len() >= MAX_VOLUMES {
                    continue;
                }
                let size = (1 + blocks as u64 % MAX_BLOCKS) * BS - tail as u64 % BS;
                let info = store.create_volume(VolumeOptions::new(format!("v{names}"), size)).unwrap();
                assert_eq!(info.size_bytes, size);
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
                if model.snapshots.len() >= MAX_SNAPSHOTS {
                    continue;
                }
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let s = store.create_snapshot(id, SnapshotOptions::named(format!("s{names}"))).unwrap();
                assert_eq!(s.volume_id, id);
                assert_eq!(s.size_bytes, model.volumes[&id].len() as u64);
                model.snapshots.insert(s.id, (id, model.volumes[&id].clone()));
            }
            Op::Restore { vol, snap } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let of_vol: BTreeMap<_, _> = model.snapshots.iter().filter(|(_, (v, _))| *v == id).collect();
                let Some(sid) = pick(&of_vol, snap).copied() else { continue };
                let r = store.restore_snapshot(id, sid, RestoreOptions::default()).unwrap();
                assert_eq!((r.volume_id, r.snapshot_id), (id, sid));
                let data = model.snapshots[&sid].1.clone();
                model.volumes.insert(id, data);
            }
            Op::Fork { vol, snap } => {
                if model.volumes.len() >= MAX_VOLUMES {
                    continue;
                }
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let of_vol: BTreeMap<_, _> = model.snapshots.iter().filter(|(_, (v, _))| *v == id).collect();
                let from = snap.and_then(|s| pick(&of_vol, s)).copied();
                let fo = ForkOptions { name: format!("f{names}"), from_snapshot: from, ..Default::default() };
                let info = store.fork_volume(id, fo).unwrap();
                let origin = match from {
                    Some(s) => cowvol::VolumeOrigin::Snapshot(id, s),
                    None => cowvol::VolumeOrigin::Volume(id),
                };
                assert_eq!(info.origin, Some(origin));
                let data = match from {
                    Some(s) => model.snapshots[&s].1.clone(),
                    None => model.volumes[&id].clone(),
                };
                model.volumes.insert(info.id, data);
            }
            Op::ForkSnapshot { snap } => {
                if model.volumes.len() >= MAX_VOLUMES {
                    continue;
                }
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let (vol, data) = model.snapshots[&sid].clone();
                let fo = ForkOptions { name: format!("g{names}"), from_snapshot: Some(sid), ..Default::default() };
                let info = store.fork_volume(vol, fo).unwrap();
                assert_eq!(info.size_bytes, data.len() as u64);
                model.volumes.insert(info.id, data);
            }
            Op::DeleteSnapshot { snap } => {
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let vol = model.snapshots[&sid].0;
                assert!(store.delete_snapshot(vol, sid).unwrap().existed);
                assert!(!store.delete_snapshot(vol, sid).unwrap().existed);
                model.snapshots.remove(&sid);
            }
            Op::DeleteVolume { vol } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                store.delete_volume(id).unwrap();
                model.volumes.remove(&id);
            }
            Op::Checkpoint => store.checkpoint().unwrap(),
            Op::Reopen => {
                drop(store);
                store = open(&disk, "reopen");
            }
            Op::CrashAfterFlush { vol, seed } => {
                if let Some(id) = pick(&model.volumes, vol) {
                    store.open_volume(id).unwrap().flush().unwrap();
                }
                let next = disk.crash(LossMode::DropAll, seed as u64);
                drop(store);
                disk = next;
                store = open(&disk, "after crash");
            }
        }
        verify(&store, &model, step, op);
    }
}

fuzz_target!(|ops: Vec<Op>| {
    run(&ops[..ops.len().min(MAX_OPS)]);
});
