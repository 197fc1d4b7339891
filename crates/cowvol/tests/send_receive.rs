//! Send/receive between stores: full and incremental round trips, chains
//! through a third store, a wrong or missing base refused, damaged, cut,
//! reordered and repeated streams refused with nothing visible, an
//! interrupted receive resumed (from the start of the stream or from the
//! sender's resume point), and power cut at every step of a receive.

use cowvol::stream::{self, ReceiveOptions, Received, SendOptions, ORIGIN_LABEL};
use cowvol::testing::SplitMix64 as Rng;
use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Arc;

mod common;
use common::{assert_clean, assert_same, read_all};

const BS: u64 = 4096;
/// Not a multiple of the block size: the last block is partial.
const SIZE: u64 = 96 * BS - 100;

fn opts() -> StoreOptions {
    StoreOptions { background_checkpoints: false, ..Default::default() }
}

fn sim_store() -> (SimDir, Store) {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    (disk, store)
}

/// A source store with one volume and three snapshots: random writes, a
/// discard, a write to the partial last block.
struct Source {
    store: Store,
    snaps: Vec<SnapshotInfo>,
}

fn source() -> Source {
    let (_, store) = sim_store();
    let v = store.create_volume(VolumeOptions::new("db", SIZE)).unwrap().id;
    let vol = store.open_volume(v).unwrap();
    let mut rng = Rng(11);
    let mut snaps = Vec::new();
    for round in 0..3u64 {
        for _ in 0..12 {
            let off = rng.below(SIZE - 9000);
            let len = rng.range(1, 9000) as usize;
            vol.write_at(&rng.bytes(len), off).unwrap();
        }
        if round == 1 {
            vol.discard(8 * BS, 20 * BS).unwrap();
        }
        if round == 2 {
            vol.write_at(b"tail", SIZE - 4).unwrap();
        }
        let opts = SnapshotOptions {
            name: format!("s{round}"),
            description: format!("round {round}\nof three"),
            owner: "ops".into(),
            labels: [("env".to_string(), "prod".to_string()), ("round".to_string(), round.to_string())].into(),
            kind: if round == 1 { SnapshotKind::Auto } else { SnapshotKind::Manual },
            ..Default::default()
        };
        snaps.push(store.create_snapshot(v, opts).unwrap());
    }
    Source { store, snaps }
}

fn send(store: &Store, snap: SnapshotId, from: Option<SnapshotId>) -> Vec<u8> {
    let mut out = Vec::new();
    stream::send(store, snap, &SendOptions { from, ..Default::default() }, &mut out, &mut |_| {}).unwrap();
    out
}

fn receive_with(store: &Store, bytes: &[u8], opts: &ReceiveOptions) -> Result<Received> {
    stream::receive(store, &mut &bytes[..], opts, &mut |_| {})
}

fn receive(store: &Store, bytes: &[u8]) -> Result<Received> {
    receive_with(store, bytes, &ReceiveOptions::default())
}

fn contents(store: &Store, s: &SnapshotInfo) -> Vec<u8> {
    read_all(&store.open_snapshot(s.volume_id, s.id).unwrap())
}

/// The received snapshot holds the sent one's bytes and record.
fn assert_received(src: &Store, sent: &SnapshotInfo, dst: &Store, got: &SnapshotInfo) {
    assert_same(&format!("snapshot {}", sent.name), &contents(dst, got), &contents(src, sent));
    assert_eq!(
        (&got.name, &got.description, &got.owner, got.kind, got.created_at, got.size_bytes),
        (&sent.name, &sent.description, &sent.owner, sent.kind, sent.created_at, sent.size_bytes)
    );
    let mut labels = got.labels.clone();
    assert!(labels.remove(ORIGIN_LABEL).is_some(), "no origin label");
    let mut sent_labels = sent.labels.clone();
    sent_labels.remove(ORIGIN_LABEL);
    assert_eq!(labels, sent_labels);
    assert_eq!(got.status, SnapshotStatus::Ready);
}

/// Nothing of a failed receive is visible: no volume, and only the
/// snapshots there were before.
fn assert_nothing_visible(store: &Store, snapshots_before: usize) {
    assert!(store.list_volumes().is_empty(), "{:?}", store.list_volumes());
    assert_eq!(store.all_snapshots().len(), snapshots_before);
}

fn abort_all(store: &Store) {
    for p in stream::pending_receives(store) {
        assert!(stream::abort_receive(store, &p.key).unwrap());
    }
}

#[test]
fn a_full_stream_round_trips_with_its_record() {
    let src = source();
    let (_, dst) = sim_store();
    let bytes = send(&src.store, src.snaps[2].id, None);
    let got = receive(&dst, &bytes).unwrap();
    assert_received(&src.store, &src.snaps[2], &dst, &got.snapshot);
    assert_eq!(got.snapshot.volume_name, "db");
    assert_eq!(got.stream_bytes, bytes.len() as u64);
    assert_eq!(got.frames_skipped, 0);
    // The staging volume is gone; the snapshot outlives it.
    assert!(dst.list_volumes().is_empty());
    assert!(stream::pending_receives(&dst).is_empty());
    assert_clean(&dst);
    // Receiving it again is refused.
    assert!(matches!(receive(&dst, &bytes), Err(Error::AlreadyExists { .. })));
    // It lands under another volume name on request, and survives reopening.
    let (disk, other) = sim_store();
    let o = ReceiveOptions { volume_name: Some("db-replica".into()), ..Default::default() };
    let got = receive_with(&other, &bytes, &o).unwrap().snapshot;
    assert_eq!(got.volume_name, "db-replica");
    other.close().unwrap();
    let other = Store::open_in(Arc::new(disk), opts()).unwrap();
    let again = other.snapshot(got.id).unwrap();
    assert_received(&src.store, &src.snaps[2], &other, &again);
}

#[test]
fn an_incremental_chain_round_trips_and_carries_only_the_changes() {
    let src = source();
    let (_, dst) = sim_store();
    let s = &src.snaps;
    let full = send(&src.store, s[0].id, None);
    let inc1 = send(&src.store, s[1].id, Some(s[0].id));
    let inc2 = send(&src.store, s[2].id, Some(s[1].id));
    let d2 = src.store.diff(s[1].id, s[2].id).unwrap();
    assert!((inc2.len() as u64) < d2.data_bytes() + 64 * 1024, "incremental of {} bytes", inc2.len());
    // The full stream lands under another name; the incrementals on top of
    // it follow their base's name without being told.
    let renamed = ReceiveOptions { volume_name: Some("replica".into()), ..Default::default() };
    let mut received = vec![receive_with(&dst, &full, &renamed).unwrap()];
    for bytes in [&inc1, &inc2] {
        received.push(receive(&dst, bytes).unwrap());
    }
    for (sent, got) in s.iter().zip(&received) {
        assert_received(&src.store, sent, &dst, &got.snapshot);
        assert_eq!(got.snapshot.volume_name, "replica");
    }
    assert_eq!(received[2].data_bytes, d2.data_bytes());
    assert_eq!(received[1].hole_bytes, src.store.diff(s[0].id, s[1].id).unwrap().hole_bytes());
    assert_clean(&dst);

    // A third store takes its full copy from the second, and the next
    // incremental straight from the first: identities travel with the
    // snapshots.
    let (_, third) = sim_store();
    receive(&third, &send(&dst, received[1].snapshot.id, None)).unwrap();
    let got = receive(&third, &inc2).unwrap();
    assert_received(&src.store, &s[2], &third, &got.snapshot);
    // And the first store takes an incremental back from the third, based
    // on its own snapshot... which it already has: refused as received.
    let back = send(&third, got.snapshot.id, Some(third.all_snapshots()[0].id));
    assert!(matches!(receive(&src.store, &back), Err(Error::AlreadyExists { .. })));
}

#[test]
fn an_incremental_without_its_base_or_with_another_base_is_refused() {
    let src = source();
    let s = &src.snaps;
    let inc = send(&src.store, s[2].id, Some(s[1].id));
    // Missing.
    let (_, dst) = sim_store();
    receive(&dst, &send(&src.store, s[0].id, None)).unwrap();
    let r = receive(&dst, &inc);
    assert!(matches!(&r, Err(Error::BaseMismatch { .. })), "{r:?}");
    assert_nothing_visible(&dst, 1);
    assert!(stream::pending_receives(&dst).is_empty());
    // Present by origin, other contents: a snapshot claiming to be s1.
    let origin = dst.all_snapshots()[0].labels[ORIGIN_LABEL].replace("/1", &format!("/{}", s[1].id.get()));
    let v = dst.create_volume(VolumeOptions::new("forged", SIZE)).unwrap().id;
    dst.open_volume(v).unwrap().write_at(b"not the same", 0).unwrap();
    let labels: BTreeMap<String, String> = [(ORIGIN_LABEL.to_string(), origin)].into();
    dst.create_snapshot(v, SnapshotOptions { labels, ..SnapshotOptions::named("s1") }).unwrap();
    let r = receive(&dst, &inc);
    match &r {
        Err(Error::BaseMismatch { detail, .. }) => assert!(detail.contains("other contents"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(dst.all_snapshots().len(), 2);
}

/// Frame boundaries of a stream: each frame is a 24-byte header whose
/// bytes 16..20 hold the payload length.
fn frames(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 16..at + 20].try_into().unwrap()) as usize;
        out.push(at..at + 24 + len);
        at += 24 + len;
    }
    out
}

fn fault(r: &Result<Received>) -> Option<StreamFault> {
    match r {
        Err(Error::Stream { fault, .. }) => Some(*fault),
        _ => None,
    }
}

#[test]
fn damaged_and_cut_streams_are_refused_and_leave_nothing_visible() {
    let src = source();
    let bytes = send(&src.store, src.snaps[1].id, None);
    let (_, dst) = sim_store();
    let mut rng = Rng(5);
    for i in 0..60 {
        let at = rng.below(bytes.len() as u64) as usize;
        let mut bad = bytes.clone();
        bad[at] ^= 1 << (i % 8);
        let r = receive(&dst, &bad);
        assert!(fault(&r).is_some(), "flip at byte {at}: {r:?}");
        assert_nothing_visible(&dst, 0);
        abort_all(&dst);
    }
    for cut in [0, 1, 23, 24, 200, bytes.len() / 2, bytes.len() - 1] {
        let r = receive(&dst, &bytes[..cut]);
        assert_eq!(fault(&r), Some(StreamFault::Truncated), "cut at {cut}: {r:?}");
        assert_nothing_visible(&dst, 0);
        abort_all(&dst);
    }
    let r = receive(&dst, b"this is not a cowvol stream, but it is long enough");
    assert_eq!(fault(&r), Some(StreamFault::NotAStream));
    assert_clean(&dst);
    // The intact stream still lands.
    receive(&dst, &bytes).unwrap();
}

#[test]
fn reordered_repeated_or_missing_frames_are_refused() {
    let src = source();
    let bytes = send(&src.store, src.snaps[2].id, None);
    let f = frames(&bytes);
    assert!(f.len() > 4, "{} frames", f.len());
    let cat = |order: &[usize]| -> Vec<u8> { order.iter().flat_map(|&i| bytes[f[i].clone()].to_vec()).collect() };
    let n = f.len();
    let cases: Vec<(&str, Vec<usize>)> = vec![
        ("swapped", [0, 2, 1].into_iter().chain(3..n).collect()),
        ("repeated", [0, 1, 1].into_iter().chain(2..n).collect()),
        ("missing", [0].into_iter().chain(2..n).collect()),
        ("begin not first", (1..n).collect()),
        ("two begins", [0, 0].into_iter().chain(1..n).collect()),
    ];
    let (_, dst) = sim_store();
    for (what, order) in cases {
        let r = receive(&dst, &cat(&order));
        assert_eq!(fault(&r), Some(StreamFault::OutOfOrder), "{what}: {r:?}");
        assert_nothing_visible(&dst, 0);
        abort_all(&dst);
    }
    // Everything but the end frame: cut short.
    let r = receive(&dst, &cat(&(0..n - 1).collect::<Vec<_>>()));
    assert_eq!(fault(&r), Some(StreamFault::Truncated));
}

/// Reads `limit` bytes of `data`, then fails like a dropped connection.
struct Interrupted<'a> {
    data: &'a [u8],
    limit: usize,
}

impl Read for Interrupted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.limit == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection reset"));
        }
        let n = buf.len().min(self.limit).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.limit -= n;
        Ok(n)
    }
}

/// A seekable input that counts the bytes read from it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: io::Seek> io::Seek for Counting<R> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn an_interrupted_receive_resumes_from_its_last_acknowledgement() {
    let src = source();
    let snap = &src.snaps[2];
    let bytes = send(&src.store, snap.id, None);
    let small_acks = ReceiveOptions { ack_every_bytes: 16 << 10, ..Default::default() };
    let resume = ReceiveOptions { resume: true, ..small_acks.clone() };
    let (disk, dst) = sim_store();
    let mut cut = Interrupted { data: &bytes, limit: bytes.len() * 2 / 3 };
    let r = stream::receive(&dst, &mut cut, &small_acks, &mut |_| {});
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    assert_nothing_visible(&dst, 0);
    let pending = stream::pending_receives(&dst);
    assert_eq!(pending.len(), 1);
    assert!(pending[0].next_frame > 1 && pending[0].acknowledged_bytes > 0, "{pending:?}");
    // Without --resume the interrupted receive is not silently redone.
    assert!(matches!(receive_with(&dst, &bytes, &small_acks), Err(Error::AlreadyExists { .. })));
    // The state survives a reopen.
    dst.close().unwrap();
    let dst = Store::open_in(Arc::new(disk), opts()).unwrap();
    assert_eq!(stream::pending_receives(&dst), pending);
    let got = receive_with(&dst, &bytes, &resume).unwrap();
    assert_eq!(got.frames_skipped, pending[0].next_frame - 1);
    assert_received(&src.store, snap, &dst, &got.snapshot);
    assert!(stream::pending_receives(&dst).is_empty());
    assert_clean(&dst);

    // From a file, the receive seeks past the acknowledged frames.
    let (_, dst) = sim_store();
    let mut cut = Interrupted { data: &bytes, limit: bytes.len() * 3 / 4 };
    assert!(stream::receive(&dst, &mut cut, &small_acks, &mut |_| {}).is_err());
    let pending = stream::pending_receives(&dst);
    let mut file = Counting { inner: io::Cursor::new(&bytes[..]), read: 0 };
    let got = stream::receive_seekable(&dst, &mut file, &resume, &mut |_| {}).unwrap();
    assert_eq!(got.frames_skipped, pending[0].next_frame - 1);
    assert!(file.read < bytes.len() as u64 - pending[0].acknowledged_bytes + 4096, "read {} bytes", file.read);
    assert_received(&src.store, snap, &dst, &got.snapshot);

    // The sender can resume too: it leaves out the acknowledged frames.
    let (_, dst) = sim_store();
    let mut cut = Interrupted { data: &bytes, limit: bytes.len() / 2 };
    assert!(stream::receive(&dst, &mut cut, &small_acks, &mut |_| {}).is_err());
    let next = stream::pending_receives(&dst)[0].next_frame;
    let mut rest = Vec::new();
    let o = SendOptions { resume_from_frame: next, ..Default::default() };
    stream::send(&src.store, snap.id, &o, &mut rest, &mut |_| {}).unwrap();
    assert!(rest.len() < bytes.len() * 2 / 3);
    let got = receive_with(&dst, &rest, &resume).unwrap();
    assert_eq!((got.frames_skipped, got.stream_bytes), (0, rest.len() as u64));
    assert_received(&src.store, snap, &dst, &got.snapshot);
    // A resumed stream given to a receive that has nothing to resume is
    // refused: it does not start at frame 1.
    let (_, fresh) = sim_store();
    assert_eq!(fault(&receive_with(&fresh, &rest, &resume)), Some(StreamFault::OutOfOrder));
}

#[test]
fn a_power_cut_at_any_point_of_a_receive_leaves_nothing_half_there() {
    let src = source();
    let snap = &src.snaps[2];
    let base = send(&src.store, src.snaps[1].id, None);
    let inc = send(&src.store, snap.id, Some(src.snaps[1].id));
    let o = ReceiveOptions { ack_every_bytes: 32 << 10, ..Default::default() };
    let prepared = || {
        let (disk, store) = sim_store();
        receive(&store, &base).unwrap();
        store.close().unwrap();
        disk
    };
    // Count the disk operations of a whole receive.
    let disk = prepared();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let before = disk.ops_count();
    receive_with(&store, &inc, &o).unwrap();
    let total = disk.ops_count() - before;
    drop(store);
    let stride = std::env::var("COWVOL_CRASH_STRIDE").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut landed = 0;
    for cut in (0..total).step_by(stride).chain([total - 1]) {
        for (i, loss) in [LossMode::DropAll, LossMode::Prefix, LossMode::KeepAll].into_iter().enumerate() {
            let disk = prepared();
            let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
            disk.set_cut_after_ops(Some(cut));
            // Fails, except when the cut falls in the clean-up after landing.
            let _ = receive_with(&store, &inc, &o);
            cowvol::testing::abandon(store);
            let after = disk.crash(loss, cut * 3 + i as u64);
            let what = format!("cut after {cut}/{total} ops, {loss:?}");
            let store = Store::open_in(Arc::new(after), opts()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(store.check().unwrap().is_clean(), "{what}");
            assert!(store.list_volumes().is_empty(), "{what}: a volume is visible");
            let snaps = store.all_snapshots();
            match snaps.iter().find(|s| s.name == snap.name) {
                Some(got) => {
                    landed += 1;
                    assert_received(&src.store, snap, &store, got);
                }
                None => assert_eq!(snaps.len(), 1, "{what}"),
            }
            // A resumed receive finishes the job, whatever state the cut left.
            let resumed = receive_with(&store, &inc, &ReceiveOptions { resume: true, ..o.clone() });
            match resumed {
                Ok(got) => assert_received(&src.store, snap, &store, &got.snapshot),
                Err(Error::AlreadyExists { .. }) => {}
                Err(e) => panic!("{what}: resume failed: {e}"),
            }
            let got = store.all_snapshots().into_iter().find(|s| s.name == snap.name).expect("received");
            assert_received(&src.store, snap, &store, &got);
            assert!(stream::pending_receives(&store).is_empty(), "{what}");
            assert!(store.check().unwrap().is_clean(), "{what}");
        }
    }
    // Cuts in the last steps (after the snapshot's record is durable) land it.
    assert!(landed > 0);
    println!("{total} disk operations in the receive; stride {stride}; {landed} recoveries found it landed");
}
