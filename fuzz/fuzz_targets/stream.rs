//! The send/receive stream decoder and receiver on arbitrary bytes.
//!
//! A source store (built once) has a base snapshot and a later one; every
//! input runs against a fresh receiving store that already holds the base,
//! so incremental streams get past the base check and reach the frames.
//! The first input byte picks the mode:
//!
//! * 0: the rest is the stream, as is;
//! * 1: the valid incremental stream, with the rest of the input written
//!   over it at the offset its first 4 bytes give (a realistic corruption);
//! * 2: as 1, but the receive is first cut after that many bytes, then
//!   resumed with the whole (patched) stream.
//!
//! Whatever the bytes, receive must return `Ok` or `Err`, never panic; the
//! store must stay clean with no volume visible; and an `Ok` must have
//! landed a snapshot whose contents equal the sender's.
#![no_main]

use cowvol::stream::{self, ReceiveOptions, SendOptions};
use cowvol::testing::{LossMode, SimDir};
use cowvol::{SnapshotOptions, Store, StoreOptions, VolumeOptions};
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use std::sync::{Arc, OnceLock};

const BS: usize = 4096;

struct Fixture {
    /// A closed store that holds the base; every input starts from a copy.
    prepared: SimDir,
    incremental: Vec<u8>,
    target_contents: Vec<u8>,
}

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let src = Store::open_in(Arc::new(SimDir::new()), opts()).unwrap();
        let v = src.create_volume(VolumeOptions::new("v", 16 * BS as u64 - 10)).unwrap().id;
        let vol = src.open_volume(v).unwrap();
        vol.write_at(&[1u8; 3 * BS], 0).unwrap();
        vol.write_at(&[2u8; BS], 9 * BS as u64).unwrap();
        let base = src.create_snapshot(v, SnapshotOptions::named("base")).unwrap();
        vol.write_at(&[3u8; 2 * BS], BS as u64).unwrap();
        vol.discard(9 * BS as u64, BS as u64).unwrap();
        vol.write_at(b"end", 16 * BS as u64 - 13).unwrap();
        let target = src.create_snapshot(v, SnapshotOptions::named("target")).unwrap();
        let send = |snap, from| {
            let mut out = Vec::new();
            stream::send(&src, snap, &SendOptions { from, ..Default::default() }, &mut out, &mut |_| {}).unwrap();
            out
        };
        let mut target_contents = vec![0u8; 16 * BS - 10];
        src.open_snapshot(v, target.id).unwrap().read_at(&mut target_contents, 0).unwrap();
        let prepared = SimDir::new();
        let store = Store::open_in(Arc::new(prepared.clone()), opts()).unwrap();
        stream::receive(&store, &mut &send(base.id, None)[..], &ReceiveOptions::default(), &mut |_| {}).unwrap();
        store.close().unwrap();
        Fixture { prepared, incremental: send(target.id, Some(base.id)), target_contents }
    })
}

/// Reads `limit` bytes, then fails like a dropped connection.
struct Cut<'a>(&'a [u8], usize);

impl Read for Cut<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1 == 0 {
            return Err(std::io::Error::other("cut"));
        }
        let n = buf.len().min(self.1).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        self.1 -= n;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    // A power cut that keeps everything copies the closed store's disk:
    // cheaper than building the store and receiving the base every time.
    let store = Store::open_in(Arc::new(f.prepared.crash(LossMode::KeepAll, 0)), opts()).unwrap();
    let small_acks = ReceiveOptions { ack_every_bytes: 4096, ..Default::default() };
    let (input, cut) = match mode % 3 {
        0 => (rest.to_vec(), None),
        m => {
            let mut s = f.incremental.clone();
            let at = rest.get(..4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
            let patch = rest.get(4..).unwrap_or(&[]);
            let start = at % (s.len() + 1);
            let end = (start + patch.len()).min(s.len());
            s[start..end].copy_from_slice(&patch[..end - start]);
            (s, (m == 2).then_some(at % (f.incremental.len() + 1)))
        }
    };
    if let Some(limit) = cut {
        let _ = stream::receive(&store, &mut Cut(&input, limit), &small_acks, &mut |_| {});
    }
    let resume = ReceiveOptions { resume: cut.is_some(), ..small_acks };
    let result = stream::receive(&store, &mut &input[..], &resume, &mut |_| {});
    assert!(store.list_volumes().is_empty(), "a staging volume is visible");
    assert!(store.check().unwrap().is_clean(), "check after receive: {result:?}");
    if let Ok(got) = result {
        if got.snapshot.name == "target" {
            let mut buf = vec![0u8; f.target_contents.len()];
            store.open_snapshot(got.snapshot.volume_id, got.snapshot.id).unwrap().read_at(&mut buf, 0).unwrap();
            assert!(buf == f.target_contents, "a stream accepted with other contents");
        }
    }
});
