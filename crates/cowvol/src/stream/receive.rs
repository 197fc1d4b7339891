//! Applying a stream: check the begin frame and the base, stage the data
//! in a hidden volume with acknowledgements along the way, check the end
//! frame and the digest, then land the snapshot in one logged step.
//!
//! Atomicity comes from operations the engine already has, so neither the
//! catalog nor the WAL changes: the staging volume is an ordinary volume
//! with a reserved name (never listed), the snapshot is one `CreateSnapshot`
//! record, and deleting the staging volume afterwards keeps the snapshot.
//! A crash before the snapshot's record is durable leaves only the staging
//! volume, which a resumed receive continues and an abort deletes.

use super::frame::{stream_error, Begin, Frame, FrameReader, Input, Totals};
use super::identity::{find_by_origin, origin_label, tree_digest, Fnv, ORIGIN_LABEL};
use super::{PendingReceive, Progress, ReceiveOptions, Received};
use crate::backend::StorageDir;
use crate::catalog::{limits, SnapshotInfo, SnapshotStatus, VolumeId, VolumeOrigin};
use crate::engine::record::Record;
use crate::engine::try_admin;
use crate::error::{Error, Result, StreamFault};
use crate::format::{Crc, Dec, Enc};
use crate::options::{SnapshotOptions, VolumeOptions};
use crate::store::Store;
use crate::volume::Volume;

/// Staging volumes are named this prefix and the stream's key in hex.
const STAGING_PREFIX: &str = ".cowvol-receive-";
const _: () = assert!(STAGING_PREFIX.len() > limits::RESERVED_VOLUME_PREFIX.len());

/// A receive's acknowledged position, kept in `receive-<key>.state` in the
/// store directory (docs/format.md, "Receive state").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    /// The first frame not yet applied.
    next_seq: u64,
    /// Stream offset of that frame.
    offset: u64,
    data_bytes: u64,
    hole_bytes: u64,
    /// End of the last applied range: later frames must start at or after it.
    end: u64,
}

const ACK_MAGIC: [u8; 4] = *b"CVRA";
/// magic, key, the five fields of `Ack`, CRC of the bytes before it.
const ACK_LEN: usize = 4 + 8 + 5 * 8 + 4;
const _: () = assert!(ACK_LEN == 56);

fn staging_name(key: u64) -> String {
    format!("{STAGING_PREFIX}{key:016x}")
}

fn ack_file(key: u64) -> String {
    format!("receive-{key:016x}.state")
}

/// Names a stream: the snapshot it builds and the base it builds on.
fn stream_key(b: &Begin) -> u64 {
    let mut h = Fnv::default();
    for id in std::iter::once(b.snapshot).chain(b.base) {
        h.update(&id.store_id.to_le_bytes());
        h.update(&id.snapshot_id.to_le_bytes());
        h.update(&id.digest.to_le_bytes());
    }
    h.finish()
}

impl Ack {
    fn encode(&self, key: u64) -> Vec<u8> {
        let mut e = Enc::with_capacity(ACK_LEN);
        e.bytes(&ACK_MAGIC);
        e.u64(key);
        for v in [self.next_seq, self.offset, self.data_bytes, self.hole_bytes, self.end] {
            e.u64(v);
        }
        let crc = Crc::of(&e.buf);
        e.u32(crc.0);
        e.buf
    }

    /// Decodes a state file; anything damaged or of another stream reads
    /// as no state, which restarts the receive from its first frame (always
    /// safe: re-applying frames converges on the same contents).
    fn decode(buf: &[u8], key: u64) -> Option<Ack> {
        if buf.len() != ACK_LEN || buf[..4] != ACK_MAGIC {
            return None;
        }
        let mut d = Dec::new(&buf[ACK_LEN - 4..], "receive state");
        Crc(d.u32().ok()?).verify(&buf[..ACK_LEN - 4], "receive state", String::new).ok()?;
        let mut d = Dec::new(&buf[4..], "receive state");
        if d.u64().ok()? != key {
            return None;
        }
        let mut f = || d.u64().ok();
        Some(Ack { next_seq: f()?, offset: f()?, data_bytes: f()?, hole_bytes: f()?, end: f()? })
    }
}

/// Replaces the state file atomically: temporary file, sync, rename, sync
/// of the directory.
fn save_ack(dir: &dyn StorageDir, key: u64, ack: &Ack) -> Result<()> {
    let name = ack_file(key);
    let tmp = format!("{name}.tmp");
    let io = |e| Error::io(format!("saving the receive state {name}"), e);
    let f = dir.open_file(&tmp, true).map_err(io)?;
    f.set_len(0).map_err(io)?;
    f.write_at(&ack.encode(key), 0).map_err(io)?;
    f.sync().map_err(io)?;
    drop(f);
    dir.rename(&tmp, &name).map_err(io)?;
    dir.sync_dir().map_err(io)
}

fn load_ack(dir: &dyn StorageDir, key: u64) -> Option<Ack> {
    let f = dir.open_file(&ack_file(key), false).ok()?;
    let len = f.len().ok()?;
    if len != ACK_LEN as u64 {
        return None;
    }
    let mut buf = vec![0u8; ACK_LEN];
    f.read_at(&mut buf, 0).ok()?;
    Ack::decode(&buf, key)
}

fn remove_ack(dir: &dyn StorageDir, key: u64) -> Result<()> {
    let name = ack_file(key);
    let io = |e| Error::io(format!("removing the receive state {name}"), e);
    dir.remove(&name).map_err(io)?;
    dir.sync_dir().map_err(io)
}

/// The staging volume of a stream, when there is one.
fn find_staging(store: &Store, key: u64) -> Option<VolumeId> {
    let name = staging_name(key);
    let st = store.engine.state.lock();
    st.volumes.values().find(|v| v.info.name == name).map(|v| v.info.id)
}

pub(super) fn receive(
    store: &Store,
    input: &mut dyn Input,
    opts: &ReceiveOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Received> {
    let mut reader = FrameReader::new(input);
    let first = reader.next()?;
    let begin = match first.frame {
        Frame::Begin(b) if first.seq == 0 => *b,
        _ => {
            return Err(stream_error(
                StreamFault::OutOfOrder,
                first.offset,
                format!("frame {} comes first; a stream starts with its begin frame (frame 0)", first.seq),
            ))
        }
    };
    check_begin(store, &begin)?;
    let key = stream_key(&begin);
    if let Some(done) = already_received(store, &begin) {
        return finish_landed(store, key, done);
    }
    let base = find_base(store, &begin)?;
    let landing = landing_options(&begin, base.as_ref(), opts)?;
    let (staging, ack) = open_staging(store, &begin, base.as_ref(), key, opts.resume)?;
    let start = ack.unwrap_or(Ack { next_seq: 1, offset: reader.offset, data_bytes: 0, hole_bytes: 0, end: 0 });
    // A seekable input jumps to the first frame not acknowledged; any other
    // is read on, and the acknowledged frames are checked and skipped.
    let jumped = reader.skip_to(start.offset)?;
    let vol = store.open_volume(staging)?;
    let mut apply = Applier {
        store,
        vol,
        begin: &begin,
        key,
        resume_at: start.next_seq,
        acked: start,
        done: start,
        unacked_bytes: 0,
        ack_every: opts.ack_every_bytes.max(1),
        applied: 0,
        skipped: if jumped { start.next_seq - 1 } else { 0 },
    };
    match apply.run(&mut reader, progress) {
        Ok(totals) => {
            let Applier { vol, applied, skipped, .. } = apply;
            check_staged_digest(store, staging, &begin, reader.offset)?;
            drop(vol);
            let snapshot = land(store, staging, landing, &begin)?;
            cleanup(store, staging, key);
            Ok(Received {
                snapshot,
                stream_bytes: reader.offset,
                frames_applied: applied,
                frames_skipped: skipped,
                data_bytes: totals.data_bytes,
                hole_bytes: totals.hole_bytes,
            })
        }
        Err(e) => {
            // Keep what was applied for a resume; if even that fails, the
            // last acknowledgement stands and the resume applies more again.
            let _ = apply.acknowledge();
            Err(e)
        }
    }
}

/// What the receiving store needs of the begin frame before anything else.
fn check_begin(store: &Store, b: &Begin) -> Result<()> {
    let bs = store.block_size();
    if b.block_size != bs {
        return Err(Error::invalid(format!(
            "the stream has blocks of {} bytes and this store {bs}: streams move between stores of one block size",
            b.block_size
        )));
    }
    if b.size_bytes == 0 || b.size_bytes.div_ceil(bs as u64) > 1 << 48 {
        return Err(stream_error(StreamFault::Malformed, 0, format!("volume size {} bytes", b.size_bytes)));
    }
    Ok(())
}

/// The received snapshot's record and the volume name it is filed under,
/// checked against the catalog's limits before anything is created.
struct Landing {
    opts: SnapshotOptions,
    volume_name: String,
}

/// The volume name is the one asked for, else the local base's (so that a
/// chain of incrementals stays under the name its first snapshot was given
/// here), else the sender's.
fn landing_options(b: &Begin, base: Option<&SnapshotInfo>, opts: &ReceiveOptions) -> Result<Landing> {
    let volume_name = (opts.volume_name.clone())
        .or_else(|| base.map(|s| s.volume_name.clone()))
        .unwrap_or_else(|| b.volume_name.clone());
    limits::name("volume", &volume_name)?;
    let mut labels = b.labels.clone();
    labels.insert(ORIGIN_LABEL.to_string(), origin_label(b.snapshot.store_id, b.snapshot.snapshot_id));
    let opts = SnapshotOptions {
        name: b.name.clone(),
        description: b.description.clone(),
        owner: b.owner.clone(),
        labels,
        kind: b.kind,
        // The stream carries no expiry or key: a received snapshot is
        // kept until deleted here.
        ..SnapshotOptions::default()
    };
    opts.check_limits()?;
    Ok(Landing { opts, volume_name })
}

/// The snapshot the stream builds, if this store already has it.
fn already_received(store: &Store, b: &Begin) -> Option<SnapshotInfo> {
    let st = store.engine.state.lock();
    find_by_origin(&st, store.engine.store_id(), b.snapshot.store_id, b.snapshot.snapshot_id)
}

/// The stream's snapshot is here. If its staging volume is still around, a
/// crash came between landing and clean-up: finish the clean-up and report
/// the receive done. Otherwise the stream was received before.
fn finish_landed(store: &Store, key: u64, done: SnapshotInfo) -> Result<Received> {
    match find_staging(store, key) {
        Some(staging) => {
            cleanup(store, staging, key);
            Ok(Received {
                snapshot: done,
                stream_bytes: 0,
                frames_applied: 0,
                frames_skipped: 0,
                data_bytes: 0,
                hole_bytes: 0,
            })
        }
        None => Err(Error::AlreadyExists {
            what: format!("snapshot {:?} (received earlier as {}, {:?})", done.name, done.id, done.volume_name),
        }),
    }
}

/// The local snapshot an incremental stream applies to, checked against the
/// identity the sender gave; `None` for a full stream.
fn find_base(store: &Store, b: &Begin) -> Result<Option<SnapshotInfo>> {
    let Some(want) = b.base else {
        return Ok(None);
    };
    let what = || format!("base snapshot {} of store {:016x}", want.snapshot_id, want.store_id);
    let st = store.engine.state.lock();
    let Some(info) = find_by_origin(&st, store.engine.store_id(), want.store_id, want.snapshot_id) else {
        return Err(Error::BaseMismatch {
            what: what(),
            detail: "this store has no ready snapshot with that origin; receive the base (or a full stream) first"
                .into(),
        });
    };
    let s = st.snapshots.get(&info.id.0).ok_or_else(|| Error::not_found(format!("snapshot {}", info.id)))?;
    if info.size_bytes != b.size_bytes {
        return Err(Error::BaseMismatch {
            what: what(),
            detail: format!(
                "local snapshot {} has {} bytes; the stream's volume has {}",
                info.id, info.size_bytes, b.size_bytes
            ),
        });
    }
    let digest = tree_digest(&s.root, s.geo, info.size_bytes, st.block_size as u32, &st.nodes)?;
    if digest != want.digest {
        return Err(Error::BaseMismatch {
            what: what(),
            detail: format!(
                "local snapshot {} ({:?}) has other contents: digest {digest:016x}, the stream expects {:016x}",
                info.id, info.name, want.digest
            ),
        });
    }
    Ok(Some(info))
}

/// Finds or creates the staging volume; returns it with the acknowledged
/// position of an interrupted receive being resumed.
fn open_staging(
    store: &Store,
    b: &Begin,
    base: Option<&SnapshotInfo>,
    key: u64,
    resume: bool,
) -> Result<(VolumeId, Option<Ack>)> {
    match find_staging(store, key) {
        Some(id) if resume => Ok((id, load_ack(&*store.engine.dir, key))),
        Some(_) => Err(Error::AlreadyExists {
            what: format!(
                "an interrupted receive of snapshot {:?} (stream {key:016x}): resume it, or abort it to start over",
                b.name
            ),
        }),
        None => Ok((create_staging(store, b, base, key)?, None)),
    }
}

/// Creates the hidden staging volume: a fork of the base, or an empty
/// volume. Bypasses the public name check, which refuses reserved names.
fn create_staging(store: &Store, b: &Begin, base: Option<&SnapshotInfo>, key: u64) -> Result<VolumeId> {
    let engine = &store.engine;
    engine.ensure_writable()?;
    engine.commit(|st| {
        let origin = match base {
            Some(s) => {
                st.ready_snap_of(s.volume_id, s.id)?;
                Some(VolumeOrigin::Snapshot(s.volume_id, s.id))
            }
            None => None,
        };
        let info = st.new_volume_info(VolumeOptions::new(staging_name(key), b.size_bytes), origin)?;
        let rec = if origin.is_some() { Record::Fork(info.clone()) } else { Record::CreateVolume(info.clone()) };
        Ok((info.id, Some(rec)))
    })
}

/// Applies data and hole frames to the staging volume.
struct Applier<'a> {
    store: &'a Store,
    vol: Volume,
    begin: &'a Begin,
    key: u64,
    /// Frames below this were acknowledged by an earlier receive.
    resume_at: u64,
    /// What the state file says.
    acked: Ack,
    /// What has been applied (at least `acked`).
    done: Ack,
    unacked_bytes: u64,
    ack_every: u64,
    applied: u64,
    skipped: u64,
}

impl Applier<'_> {
    /// Reads frames up to the end frame; returns its totals once they check.
    fn run(&mut self, r: &mut FrameReader<'_>, progress: &mut dyn FnMut(Progress)) -> Result<Totals> {
        let mut expected = 1;
        loop {
            let f = r.next()?;
            // A sender resuming at `resume_at` leaves out the frames before.
            let resumed_sender = expected == 1 && self.resume_at > 1 && f.seq == self.resume_at;
            if f.seq != expected && !resumed_sender {
                return Err(stream_error(
                    StreamFault::OutOfOrder,
                    f.offset,
                    format!("frame {} where frame {expected} was expected", f.seq),
                ));
            }
            expected = f.seq + 1;
            let (offset, len, data) = match &f.frame {
                Frame::Begin(_) => {
                    return Err(stream_error(StreamFault::OutOfOrder, f.offset, "a second begin frame"));
                }
                Frame::End(t) => {
                    self.check_end(t, f.seq, f.offset)?;
                    return Ok(*t);
                }
                Frame::Data { offset, bytes } => (*offset, bytes.len() as u64, Some(bytes)),
                Frame::Hole { offset, len } => (*offset, *len, None),
            };
            if f.seq < self.resume_at {
                self.skipped += 1;
                continue;
            }
            self.check_range(offset, len, f.offset)?;
            match data {
                Some(bytes) => self.vol.write_at(bytes, offset)?,
                None => self.vol.discard(offset, len)?,
            }
            self.applied += 1;
            let d = &mut self.done;
            (d.next_seq, d.offset, d.end) = (f.seq + 1, r.offset, offset + len);
            if data.is_some() {
                d.data_bytes += len;
            } else {
                d.hole_bytes += len;
            }
            self.unacked_bytes += len.min(super::frame::DATA_FRAME_BYTES);
            if self.unacked_bytes >= self.ack_every {
                self.acknowledge()?;
            }
            progress(Progress {
                stream_bytes: r.offset,
                data_bytes: self.done.data_bytes,
                data_bytes_total: self.begin.data_bytes,
            });
        }
    }

    /// A range must lie in the volume, start on a block boundary, cover
    /// whole blocks (or run to the end of the volume), and come after the
    /// previous one: frames arrive in ascending offset order.
    fn check_range(&self, offset: u64, len: u64, at: u64) -> Result<()> {
        let (bs, size) = (self.begin.block_size as u64, self.begin.size_bytes);
        let end = offset.checked_add(len).filter(|&e| e <= size);
        let bad = |detail: String| stream_error(StreamFault::Malformed, at, detail);
        let Some(end) = end else {
            return Err(bad(format!("range {offset}+{len} outside the volume of {size} bytes")));
        };
        if len == 0 || !offset.is_multiple_of(bs) || (!len.is_multiple_of(bs) && end != size) {
            return Err(bad(format!("range {offset}+{len} is not whole blocks of {bs} bytes")));
        }
        if offset < self.done.end {
            return Err(stream_error(
                StreamFault::OutOfOrder,
                at,
                format!("range at {offset} comes after one that ended at {}", self.done.end),
            ));
        }
        Ok(())
    }

    fn check_end(&self, t: &Totals, seq: u64, at: u64) -> Result<()> {
        let d = &self.done;
        let mismatch = |detail: String| Err(stream_error(StreamFault::Mismatch, at, detail));
        if t.frames != seq - 1 {
            return mismatch(format!("the end frame counts {} frames; {} came before it", t.frames, seq - 1));
        }
        if (t.data_bytes, t.hole_bytes) != (d.data_bytes, d.hole_bytes) {
            return mismatch(format!(
                "the end frame counts {} data and {} hole bytes; the stream carried {} and {}",
                t.data_bytes, t.hole_bytes, d.data_bytes, d.hole_bytes
            ));
        }
        if t.digest != self.begin.snapshot.digest {
            return mismatch(format!(
                "the end frame's digest {:016x} is not the begin frame's {:016x}",
                t.digest, self.begin.snapshot.digest
            ));
        }
        Ok(())
    }

    /// Makes what was applied durable, then records how far that is.
    fn acknowledge(&mut self) -> Result<()> {
        if self.done == self.acked {
            return Ok(());
        }
        self.vol.flush()?;
        save_ack(&*self.store.engine.dir, self.key, &self.done)?;
        self.acked = self.done;
        self.unacked_bytes = 0;
        Ok(())
    }
}

/// The staged volume must hold exactly what the sender's snapshot holds.
fn check_staged_digest(store: &Store, staging: VolumeId, b: &Begin, at: u64) -> Result<()> {
    let st = store.engine.state.lock();
    let v = st.vol(staging)?;
    let digest = tree_digest(&v.root, v.geo, v.info.size_bytes, st.block_size as u32, &st.nodes)?;
    if digest != b.snapshot.digest {
        return Err(stream_error(
            StreamFault::Mismatch,
            at,
            format!(
                "the received contents have digest {digest:016x}; the sender's snapshot has {:016x}",
                b.snapshot.digest
            ),
        ));
    }
    Ok(())
}

/// Makes the staged contents the received snapshot, in one logged step.
fn land(store: &Store, staging: VolumeId, landing: Landing, b: &Begin) -> Result<SnapshotInfo> {
    let engine = &store.engine;
    engine.ensure_writable()?;
    let rt = engine.state.lock().vol(staging)?.rt.clone();
    let _admin = try_admin(&rt, staging, "receive")?;
    let this_store = engine.store_id();
    engine.commit(|st| {
        if let Some(s) = find_by_origin(st, this_store, b.snapshot.store_id, b.snapshot.snapshot_id) {
            return Err(Error::AlreadyExists {
                what: format!("snapshot {:?} (received meanwhile as {})", s.name, s.id),
            });
        }
        let mut info = st.new_snapshot_info(staging, landing.opts, SnapshotStatus::Ready, b.created_at)?;
        info.volume_name = landing.volume_name;
        Ok((info.clone(), Some(Record::CreateSnapshot(info))))
    })
}

/// Deletes the staging volume (its snapshot stays) and the state file.
/// Best effort: the snapshot is in place either way, and a leftover
/// staging volume is listed by `pending_receives` and removed by the next
/// receive of the stream or by `abort_receive`.
fn cleanup(store: &Store, staging: VolumeId, key: u64) {
    if store.delete_volume(staging).is_ok() {
        let _ = remove_ack(&*store.engine.dir, key);
    }
}

pub(super) fn pending(store: &Store) -> Vec<PendingReceive> {
    let staged: Vec<(u64, VolumeId)> = {
        let st = store.engine.state.lock();
        st.volumes
            .values()
            .filter_map(|v| {
                let hex = v.info.name.strip_prefix(STAGING_PREFIX)?;
                Some((u64::from_str_radix(hex, 16).ok()?, v.info.id))
            })
            .collect()
    };
    staged
        .into_iter()
        .map(|(key, staging_volume)| {
            let ack = load_ack(&*store.engine.dir, key);
            PendingReceive {
                key: format!("{key:016x}"),
                staging_volume,
                next_frame: ack.map_or(1, |a| a.next_seq),
                acknowledged_bytes: ack.map_or(0, |a| a.offset),
            }
        })
        .collect()
}

pub(super) fn abort(store: &Store, key: &str) -> Result<bool> {
    let parsed = u64::from_str_radix(key, 16)
        .ok()
        .filter(|_| key.len() == 16)
        .ok_or_else(|| Error::invalid(format!("{key:?} is not a receive key (16 hex digits)")))?;
    let Some(staging) = find_staging(store, parsed) else {
        return Ok(false);
    };
    store.delete_volume(staging)?;
    remove_ack(&*store.engine.dir, parsed)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_state_round_trips_and_rejects_damage() {
        let ack = Ack { next_seq: 9, offset: 1 << 30, data_bytes: 5, hole_bytes: 6, end: 7 };
        let bytes = ack.encode(42);
        assert_eq!(bytes.len(), ACK_LEN);
        assert_eq!(Ack::decode(&bytes, 42), Some(ack));
        assert_eq!(Ack::decode(&bytes, 43), None, "another stream's state");
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert_eq!(Ack::decode(&b, 42), None, "flip at {i}");
        }
    }

    #[test]
    fn staging_names_are_reserved() {
        assert!(limits::is_reserved_volume(&staging_name(1)));
        assert!(limits::volume(&staging_name(1), "").is_err());
    }
}
