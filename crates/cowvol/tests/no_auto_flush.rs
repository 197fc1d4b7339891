//! A handle opened with `AutoFlush::Never` leaves durability to its caller:
//! it never syncs on its own however much it writes past the volume's write
//! buffer, an explicit flush makes everything durable, and a power cut
//! before that flush leaves each block with its old or its new contents.

use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::sync::Arc;

mod common;
use common::*;

const BS: u64 = 4096;
const BLOCKS: u64 = 2048; // 8 MiB
const WRITE_BUFFER: u64 = 1 << 20;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

/// A store on a simulated disk with one 8 MiB volume whose write buffer is 1 MiB.
fn setup() -> (SimDir, Store, VolumeId) {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let mut v = VolumeOptions::new("v", BLOCKS * BS);
    v.write_buffer_bytes = WRITE_BUFFER;
    let id = store.create_volume(v).unwrap().id;
    (disk, store, id)
}

fn never(store: &Store, id: VolumeId) -> Volume {
    let opts = HandleOptions { auto_flush: AutoFlush::Never, ..Default::default() };
    store.open_volume_with_options(id, opts).unwrap()
}

/// Writes every block of the volume as write `w`, 64 KiB at a time.
fn write_all(vol: &Volume, w: u64) {
    for first in (0..BLOCKS).step_by(16) {
        let data: Vec<u8> = (first..first + 16).flat_map(|lb| block(w, lb)).collect();
        vol.write_at(&data, first * BS).unwrap();
    }
}

#[test]
fn a_default_handle_flushes_on_its_own_and_a_never_handle_does_not() {
    let (disk, store, id) = setup();

    // The default: 8 MiB through a 1 MiB write buffer syncs about 8 times.
    let vol = store.open_volume(id).unwrap();
    let before = disk.stats().syncs;
    write_all(&vol, 1);
    let by_default = disk.stats().syncs - before;
    assert!(by_default >= 7, "a default handle synced {by_default} times for 8 write buffers");
    vol.flush().unwrap();
    drop(vol);

    let vol = never(&store, id);
    let before = disk.stats().syncs;
    write_all(&vol, 2);
    assert_eq!(disk.stats().syncs, before, "a handle without auto-flush synced on its own");
    vol.flush().unwrap();
    assert!(disk.stats().syncs > before, "an explicit flush syncs");
}

#[test]
fn an_explicit_flush_makes_every_write_of_a_never_handle_durable() {
    for (i, loss) in [LossMode::DropAll, LossMode::Prefix, LossMode::Random { keep_prob: 0.5, tear_prob: 0.5 }]
        .into_iter()
        .enumerate()
    {
        let (disk, store, id) = setup();
        let vol = never(&store, id);
        write_all(&vol, 1);
        vol.flush().unwrap();
        write_all(&vol, 2);
        vol.flush().unwrap();
        let after = disk.crash(loss, 7 + i as u64);
        drop((vol, store));
        let store = Store::open_in(Arc::new(after), opts()).expect("reopen after a power cut");
        assert_clean(&store);
        let got = read_all(&store.open_volume(id).unwrap());
        for (lb, b) in got.chunks(BS as usize).enumerate() {
            assert_eq!(decode(b, lb as u64), Some(2), "{loss:?}: block {lb} lost a flushed write");
        }
    }
}

#[test]
fn a_power_cut_before_the_flush_leaves_each_block_old_or_new() {
    for seed in 0..4 {
        let loss = if seed == 0 { LossMode::DropAll } else { LossMode::Random { keep_prob: 0.5, tear_prob: 0.3 } };
        let (disk, store, id) = setup();
        let vol = never(&store, id);
        write_all(&vol, 1);
        vol.flush().unwrap();
        // Eight write buffers' worth, none of it flushed.
        write_all(&vol, 2);
        let after = disk.crash(loss, seed);
        drop((vol, store));
        let store = Store::open_in(Arc::new(after), opts()).expect("reopen after a power cut");
        assert_clean(&store);
        let vol = store.open_volume(id).unwrap();
        let got = read_all(&vol);
        let mut new = 0;
        for (lb, b) in got.chunks(BS as usize).enumerate() {
            match decode(b, lb as u64) {
                Some(1) => {}
                Some(2) => new += 1,
                other => panic!("{loss:?}/{seed}: block {lb} is neither old nor new ({other:?})"),
            }
        }
        if loss == LossMode::DropAll {
            assert_eq!(new, 0, "nothing unflushed survives losing the whole cache: no sync happened");
        }
        // The recovered volume keeps working.
        write_all(&vol, 3);
        vol.flush().unwrap();
        assert_clean(&store);
    }
}
