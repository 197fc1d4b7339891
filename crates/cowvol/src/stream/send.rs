//! Writing a stream: the extents a diff finds, read from the snapshot and
//! framed.

use super::frame::{Begin, Frame, FrameWriter, Identity, Totals, DATA_FRAME_BYTES};
use super::identity::{identity_of, ORIGIN_LABEL};
use super::{Progress, SendOptions, Sent};
use crate::catalog::SnapshotId;
use crate::diff::{diff_locked, DiffExtent, DiffPoint};
use crate::error::{Error, Result};
use crate::store::Store;
use std::io::Write;

/// Everything a send needs from the state, taken under one lock.
struct Plan {
    begin: Begin,
    extents: Vec<DiffExtent>,
}

fn plan(store: &Store, snapshot: SnapshotId, from: Option<SnapshotId>) -> Result<Plan> {
    let engine = &store.engine;
    let this_store = engine.store_id();
    let st = engine.state.lock();
    let not_found = |s: SnapshotId| Error::not_found(format!("snapshot {s}"));
    let info = st.snapshots.get(&snapshot.0).ok_or_else(|| not_found(snapshot))?.info.clone();
    st.ready_snap_of(info.volume_id, snapshot)?;
    let identity = identity_of(&st, &info, this_store).ok_or_else(|| not_found(snapshot))?;
    let base: Option<Identity> = match from {
        Some(b) => {
            let binfo = st.snapshots.get(&b.0).ok_or_else(|| not_found(b))?.info.clone();
            st.ready_snap_of(binfo.volume_id, b)?;
            Some(identity_of(&st, &binfo, this_store).ok_or_else(|| not_found(b))?)
        }
        None => None,
    };
    let diff = diff_locked(&st, engine.block_size, from.map(DiffPoint::Snapshot), DiffPoint::Snapshot(snapshot))?;
    drop(st);
    let mut labels = info.labels;
    // The identity travels in the begin frame; the receiver sets the label.
    labels.remove(ORIGIN_LABEL);
    let begin = Begin {
        block_size: engine.block_size,
        size_bytes: info.size_bytes,
        data_bytes: diff.data_bytes(),
        snapshot: identity,
        base,
        created_at: info.created_at,
        kind: info.kind,
        volume_name: info.volume_name,
        name: info.name,
        description: info.description,
        owner: info.owner,
        labels,
    };
    Ok(Plan { begin, extents: diff.extents })
}

pub(super) fn send(
    store: &Store,
    snapshot: SnapshotId,
    opts: &SendOptions,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(Progress),
) -> Result<Sent> {
    let Plan { begin, extents } = plan(store, snapshot, opts.from)?;
    let volume = store.snapshot(snapshot)?.volume_id;
    let handle = store.open_snapshot(volume, snapshot)?;
    let digest = begin.snapshot.digest;
    let data_total = begin.data_bytes;
    let mut w = FrameWriter::new(out);
    w.write(&Frame::Begin(Box::new(begin)))?;
    let mut totals = Totals { digest, ..Totals::default() };
    let mut buf = Vec::new();
    for e in &extents {
        let frames = if e.data { e.len.div_ceil(DATA_FRAME_BYTES) } else { 1 };
        for i in 0..frames {
            let (offset, len) = if e.data {
                let at = i * DATA_FRAME_BYTES;
                (e.offset + at, (e.len - at).min(DATA_FRAME_BYTES))
            } else {
                (e.offset, e.len)
            };
            totals.frames += 1;
            if e.data {
                totals.data_bytes += len;
            } else {
                totals.hole_bytes += len;
            }
            // A resumed send numbers the frames the receiver already has
            // without reading or writing them.
            if w.next_seq() < opts.resume_from_frame {
                w.skip();
                continue;
            }
            let frame = if e.data {
                buf.resize(len as usize, 0);
                handle.read_at(&mut buf, offset)?;
                Frame::Data { offset, bytes: std::mem::take(&mut buf) }
            } else {
                Frame::Hole { offset, len }
            };
            w.write(&frame)?;
            if let Frame::Data { bytes, .. } = frame {
                buf = bytes;
            }
            progress(Progress { stream_bytes: w.bytes, data_bytes: totals.data_bytes, data_bytes_total: data_total });
        }
    }
    if w.next_seq() < opts.resume_from_frame {
        return Err(Error::invalid(format!(
            "the stream has {} frames; it cannot resume from frame {}",
            w.next_seq(),
            opts.resume_from_frame
        )));
    }
    w.write(&Frame::End(totals))?;
    w.flush()?;
    Ok(Sent {
        stream_bytes: w.bytes,
        frames: totals.frames + 2,
        data_bytes: totals.data_bytes,
        hole_bytes: totals.hole_bytes,
    })
}
