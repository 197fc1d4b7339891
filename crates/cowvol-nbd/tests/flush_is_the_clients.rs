//! An export never syncs on its own: in NBD the client decides durability
//! with `FLUSH` (or `FUA`). Writing four times the volume's write buffer
//! costs no sync; the client's flush syncs, and after it a power cut loses
//! nothing.

mod common;
use common::raw::{Client, CMD_FLUSH};
use cowvol::testing::{LossMode, SimDir};
use cowvol::{Store, StoreOptions, VolumeOptions};
use cowvol_nbd::{ListenAddr, Server, ServerOptions};
use std::sync::Arc;

const WRITE_BUFFER: u64 = 1 << 20;
const SIZE: u64 = 8 << 20;
const PIECE: usize = 64 << 10;

fn piece(i: usize) -> Vec<u8> {
    (0..PIECE).map(|k| (i as u8).wrapping_mul(29).wrapping_add(k as u8) | 1).collect()
}

#[test]
fn writes_past_the_write_buffer_wait_for_the_clients_flush() {
    let disk = SimDir::new();
    let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
    let store = Store::open_in(Arc::new(disk.clone()), opts()).expect("open store");
    let mut v = VolumeOptions::new("disk", SIZE);
    v.write_buffer_bytes = WRITE_BUFFER;
    let id = store.create_volume(v).expect("create volume").id;
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("nbd.sock");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let server =
        rt.block_on(Server::start(store.clone(), ServerOptions::new(vec![ListenAddr::Unix(sock.clone())]))).unwrap();

    let (mut c, size) = Client::attach_unix(&sock, "disk");
    assert_eq!(size, SIZE);
    let before = disk.stats().syncs;
    let pieces = (4 * WRITE_BUFFER) as usize / PIECE;
    for i in 0..pieces {
        assert_eq!(c.write(i as u64, (i * PIECE) as u64, &piece(i)), 0);
    }
    assert_eq!(disk.stats().syncs, before, "the export synced without a flush from the client");
    c.request(0, CMD_FLUSH, 9999, 0, 0);
    assert_eq!(c.simple_reply(), (0, 9999));
    assert!(disk.stats().syncs > before, "the client's flush did not sync");

    // Power cut right after the flush's reply: everything acknowledged
    // before it survives. The old disk is gone, so the server is not shut
    // down gracefully (that would flush), only dropped.
    let after = disk.crash(LossMode::DropAll, 1);
    drop(c);
    drop((server, rt));
    cowvol::testing::abandon(store);
    let store = Store::open_in(Arc::new(after), opts()).expect("reopen after a power cut");
    let vol = store.open_volume(id).expect("open volume");
    for i in 0..pieces {
        let mut b = vec![0u8; PIECE];
        vol.read_at(&mut b, (i * PIECE) as u64).expect("read");
        assert!(b == piece(i), "piece {i} was lost although the client flushed");
    }
    assert!(store.check().expect("check").is_clean());
}
