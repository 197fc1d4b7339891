//! `Store::scrub`: every live block is read and checked, shared blocks
//! once, and each damaged block is named with the volumes, snapshots and
//! templates that see it, across runs longer than one read.

use cowvol::testing::SimDir;
use cowvol::*;
use std::sync::Arc;

const BS: usize = 4096;
/// 2,600 blocks: more than one 4 MiB read run.
const BLOCKS: usize = 2600;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

/// Block `lb` written with generation `g`: unique bytes, easy to find.
fn block(g: u8, lb: usize) -> Vec<u8> {
    let mut b = vec![g; BS];
    b[..8].copy_from_slice(&(lb as u64).to_le_bytes());
    b[8..16].copy_from_slice(b"SCRUBME!");
    b
}

/// Byte offset of the block's copy in the data file.
fn find(image: &[u8], wanted: &[u8]) -> u64 {
    let at = image.chunks(BS).position(|c| c == wanted).expect("block present in the data file");
    (at * BS) as u64
}

#[test]
fn scrub_checks_every_live_block_once_and_names_the_damaged_ones() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let vid = store.create_volume(VolumeOptions::new("v", (BLOCKS * BS) as u64)).unwrap().id;
    let v = store.open_volume(vid).unwrap();
    let all: Vec<u8> = (0..BLOCKS).flat_map(|lb| block(1, lb)).collect();
    v.write_at(&all, 0).unwrap();
    v.flush().unwrap();
    let snap = store.create_snapshot(vid, SnapshotOptions::named("s")).unwrap();
    let tmpl = store.create_template(snap.id, TemplateOptions::named("t")).unwrap();
    // The volume moves on for a few blocks: those now have two copies.
    for lb in [5, 1500] {
        v.write_at(&block(2, lb), (lb * BS) as u64).unwrap();
    }
    v.flush().unwrap();
    drop(v);

    let clean = store.scrub().unwrap();
    assert!(clean.is_clean(), "{:?}", clean.damaged);
    assert_eq!(clean.blocks_checked, BLOCKS as u64 + 2, "every distinct live block, shared ones once");
    assert_eq!(clean.bytes_read, clean.blocks_checked * BS as u64);
    assert_eq!(store.stats().data_blocks, clean.blocks_checked);

    // Damage: a block only the snapshot and template see (the old copy of
    // 1500), a block everyone shares (7), and the volume's own new copy of 5.
    store.close().unwrap();
    let image = disk.read_visible("cowvol.dat").unwrap();
    let targets = [(block(1, 1500), 1500), (block(1, 7), 7), (block(2, 5), 5)];
    for (bytes, _) in &targets {
        disk.corrupt("cowvol.dat", find(&image, bytes) + 100, 0x40);
    }
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let report = store.scrub().unwrap();
    assert_eq!(report.damaged.len(), 3, "{:?}", report.damaged);
    let with_snapshot_block = |lb: u64| report.damaged.iter().find(|d| d.snapshots.contains(&(snap.id, lb)));
    let old_1500 = with_snapshot_block(1500).expect("the snapshot's block 1500");
    assert!(old_1500.volumes.is_empty(), "the volume has its own copy of 1500");
    assert_eq!(old_1500.templates, vec![(tmpl.id, 1500)]);
    let shared_7 = with_snapshot_block(7).expect("block 7");
    assert_eq!((&shared_7.volumes, &shared_7.templates), (&vec![(vid, 7)], &vec![(tmpl.id, 7)]));
    let new_5 = report.damaged.iter().find(|d| d.volumes == vec![(vid, 5)]).expect("the volume's block 5");
    assert!(new_5.snapshots.is_empty() && new_5.templates.is_empty());
    // Reads of the damaged blocks fail; the rest read back.
    let v = store.open_volume(vid).unwrap();
    let mut buf = vec![0u8; BS];
    assert!(matches!(v.read_at(&mut buf, 7 * BS as u64), Err(Error::Corruption { .. })));
    v.read_at(&mut buf, 8 * BS as u64).unwrap();
    assert_eq!(buf, block(1, 8));
}

#[test]
fn scrub_of_an_empty_store_is_clean() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk), opts()).unwrap();
    store.create_volume(VolumeOptions::new("v", 1 << 20)).unwrap();
    let r = store.scrub().unwrap();
    assert!(r.is_clean());
    assert_eq!((r.blocks_checked, r.bytes_read), (0, 0));
}
