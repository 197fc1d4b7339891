//! Decoders the fuzz targets drive (each the path recovery uses) and the
//! valid inputs their seeds start from.

use crate::catalog::{
    BackupRecord, BackupState, SnapshotId, SnapshotInfo, SnapshotKind, SnapshotPolicy, SnapshotStatus, TemplateId,
    TemplateInfo, VolumeId, VolumeInfo, VolumeOrigin,
};
use crate::error::Result;
use std::collections::BTreeMap;

/// Decodes one WAL batch (header, CRC, records) as recovery does, returning
/// the number of records, or `None` where recovery would stop. For fuzzing:
/// any input must give an answer, never a panic.
pub fn decode_wal_batch(bytes: &[u8]) -> Option<usize> {
    let (hdr, _) = crate::format::BatchHeader::decode(bytes)?;
    crate::wal::parse_batch::<crate::engine::record::Record>(
        bytes,
        0,
        hdr.log_id,
        hdr.first_lsn,
        crate::format::FORMAT_VERSION,
    )
    .map(|(_, recs, _)| recs.len())
}

/// Reads a log whose first segment holds `bytes` after a valid header (the
/// rest of that segment and the next one zero), as recovery does: batches,
/// links to other segments, seals, the search past the end. Returns the
/// number of records, or `None` where recovery would refuse the log. Also
/// runs the link, seal and segment-header decoders on `bytes` themselves.
/// For fuzzing: any input must give an answer, never a panic or a hang.
pub fn decode_wal_log(bytes: &[u8]) -> Option<usize> {
    use crate::backend::StorageDir;
    use crate::format::{LogLink, LogSeal, LogStart, SegmentHeader, FORMAT_VERSION, SECTOR};
    let _ = (LogLink::decode(bytes), LogSeal::decode(bytes), SegmentHeader::decode(bytes, FORMAT_VERSION));
    // Segments of four pages rather than a megabyte: the same code paths
    // at a fraction of the bytes per input, so the fuzzer runs fast.
    let geo = crate::wal::LogGeometry { data_start: 8192, block_size: 4096, segment_pages: 4 };
    let segs = 4;
    let file = crate::testing::SimDir::new().open_file("log", true).ok()?;
    let start_of = |page: u64| 8192 + page * 4096;
    file.set_len(start_of(1 + segs * geo.segment_pages)).ok()?;
    let header = SegmentHeader { log_id: 7, seq: 1, next_page: 1 + geo.segment_pages, prev_log_id: 0 };
    file.write_at(&header.encode(), start_of(1)).ok()?;
    let room = (geo.segment_bytes() - SECTOR) as usize;
    file.write_at(&bytes[..bytes.len().min(room)], start_of(1) + SECTOR).ok()?;
    let start = LogStart { log_id: 7, segment_page: 1, segment_seq: 1, offset: SECTOR, lsn: 1 };
    let log = crate::wal::read_log::<crate::engine::record::Record>(
        &*file,
        geo,
        start,
        1 + segs * geo.segment_pages,
        FORMAT_VERSION,
    );
    log.ok().map(|l| l.records.len())
}

/// Decodes a checkpoint's catalog (volumes, snapshots, tree roots) after
/// verifying `crc`, returning the numbers of volumes and snapshots.
///
/// # Errors
/// [`crate::Error::Corruption`] for anything malformed.
pub fn decode_catalog(bytes: &[u8], crc: u32) -> Result<(usize, usize)> {
    let img = crate::catalog::CatalogImage::decode(bytes, crc, "fuzz input", crate::format::FORMAT_VERSION)?;
    Ok((img.volumes.len(), img.snapshots.len()))
}

/// Decodes a superblock slot; `Ok(None)` when it holds none.
///
/// # Errors
/// [`crate::Error::Corruption`] for a damaged superblock.
pub fn decode_superblock(bytes: &[u8]) -> Result<Option<u64>> {
    Ok(crate::format::Superblock::decode(bytes)?.map(|sb| sb.generation))
}

/// Decodes a tree node page of a store with 4 KiB blocks as it would be read
/// at `page` and `level`, returning its entry count.
///
/// # Errors
/// [`crate::Error::Corruption`] for anything malformed.
pub fn decode_tree_node(bytes: &[u8], page: u64, level: u32) -> Result<usize> {
    let geo = crate::tree::Geometry { bits: crate::format::fanout_bits_for(4096), levels: level.saturating_add(1) };
    Ok(match crate::tree::decode_node(bytes, page, level, geo, 1 << 40)? {
        crate::tree::DecodedNode::Leaf(v) => v.len(),
        crate::tree::DecodedNode::Interior(v) => v.len(),
    })
}

/// Decodes the delta record (format 10) a node of a store with 4 KiB blocks
/// names: the first 8 bytes are the record's address, the next 8 the node's
/// base page, the next one its level (0: a leaf; above: an interior node),
/// and the rest the record's page. Applies it to an empty node of that
/// kind and returns the entries that leaves.
///
/// # Errors
/// [`crate::Error::Corruption`] for anything malformed.
pub fn decode_node_delta(bytes: &[u8]) -> Result<usize> {
    use crate::tree::delta::{apply, decode_record, Expected};
    use crate::tree::DecodedNode;
    let Some((addr, rest)) = bytes.split_first_chunk::<8>() else { return Ok(0) };
    let Some((base, rest)) = rest.split_first_chunk::<8>() else { return Ok(0) };
    let Some((&level, page)) = rest.split_first() else { return Ok(0) };
    let Some(page) = page.get(..4096) else { return Ok(0) };
    // A parent stores a record's address in 48 bits, so no address read
    // from the disk reaches the range where it would overflow in bytes.
    let (addr, leaf) = (u64::from_le_bytes(*addr) & ((1 << 48) - 1), level == 0);
    let want = Expected { base: u64::from_le_bytes(*base), level: level.into(), leaf, span: 256, npages: 1 << 40 };
    if crate::tree::delta::location(addr, 4096).0 >= 1 << 40 {
        return Ok(0);
    }
    let record = decode_record(page, addr, want)?;
    let empty = if leaf { DecodedNode::Leaf(Vec::new()) } else { DecodedNode::Interior(Vec::new()) };
    Ok(match apply(empty, &record)? {
        DecodedNode::Leaf(v) => v.len(),
        DecodedNode::Interior(v) => v.len(),
    })
}

/// Decodes a chunk of the reference table's change log (formats 8 and 9)
/// of a store with 4 KiB blocks and a table of 2^40 pages: the first 8
/// bytes are its entry count, the next 8 the fence of its first page (the
/// group of the page's first entry, format 9), the whole 4 KiB pages after
/// them its pages. Decodes the pages as a chunk in log order, then the
/// first page as a page of a sorted chunk under that fence. Returns the
/// entries decoded.
///
/// # Errors
/// [`crate::Error::Corruption`] for anything malformed.
pub fn decode_change_chunk(bytes: &[u8]) -> Result<usize> {
    let Some((count, rest)) = bytes.split_first_chunk::<8>() else {
        return Ok(0);
    };
    let Some((first_group, pages)) = rest.split_first_chunk::<8>() else {
        return Ok(0);
    };
    let pages = &pages[..pages.len() / 4096 * 4096];
    let limits = (1 << 40, (1 << 40) / 1024);
    let count = u64::from_le_bytes(*count);
    let entries = crate::space::decode_chunk(pages, count, 4096, limits, "fuzz input")?.len();
    if let Some(page) = pages.get(..4096) {
        let fence = crate::space::Fence { first_group: u64::from_le_bytes(*first_group), crc: 0 };
        crate::space::decode_sorted_page(page, count.min(341), fence, limits, 1024, "fuzz input")?;
    }
    Ok(entries)
}

/// CRC32 as the on-disk formats use it, for building valid fuzz seeds.
pub fn crc32(bytes: &[u8]) -> u32 {
    crate::format::Crc::of(bytes).0
}

/// Valid inputs for the `wal_batch` fuzz target, as `(name, bytes)`: whole
/// batches (header, CRC, records, padding to 4 KiB sectors) built with the
/// encoders the WAL uses. `all-records` holds one record of every type,
/// with a restore both with and without a safety snapshot and volumes of
/// every origin. `fuzz/examples/write_seeds.rs` writes them as seeds.
pub fn sample_wal_batches() -> Vec<(&'static str, Vec<u8>)> {
    use crate::engine::record::Record;
    let (vol, fork) = (samples::volume(), samples::fork());
    let (snap, creating) = (samples::snapshot(), samples::creating_snapshot());
    let from_snapshot = VolumeInfo {
        id: VolumeId(4),
        name: "from-golden".into(),
        origin: Some(VolumeOrigin::Snapshot(VolumeId(1), SnapshotId(2))),
        ..vol.clone()
    };
    let from_template = samples::from_template();
    let safety =
        SnapshotInfo { id: SnapshotId(7), name: "before-restore".into(), labels: BTreeMap::new(), ..snap.clone() };
    let group: Vec<SnapshotInfo> = [(8, 1, "root-disk"), (9, 2, "clone")]
        .into_iter()
        .map(|(id, v, vname)| SnapshotInfo {
            id: SnapshotId(id),
            volume_id: VolumeId(v),
            volume_name: vname.into(),
            name: "consistent".into(),
            ..snap.clone()
        })
        .collect();
    let all = vec![
        Record::Map { vol: 1, lblock: 3, page: 200, crcs: vec![0x1eef, 0x3dde, 0x5ccd, 0x7bbc] },
        Record::Unmap { vol: 1, lblock: 0, count: 2 },
        Record::CreateVolume(vol.clone()),
        Record::Fork(fork),
        Record::Fork(from_snapshot),
        Record::Fork(from_template),
        Record::DeleteVolume { vol: 2 },
        Record::CreateSnapshot(snap.clone()),
        Record::CreateSnapshot(creating.clone()),
        Record::CommitSnapshot { snap: creating.id.0 },
        Record::UpdateSnapshot(SnapshotInfo { held: true, ..snap.clone() }),
        Record::UpdateSnapshot(SnapshotInfo { backup: Some(samples::backup(BackupState::InProgress)), ..snap.clone() }),
        Record::CreateSnapshots(group),
        Record::CreateTemplate(samples::template()),
        Record::DeleteTemplate { tmpl: 1 },
        Record::SetPolicy { vol: 1, policy: Some(samples::policy()) },
        Record::SetPolicy { vol: 1, policy: Some(SnapshotPolicy { keep_last: None, ..samples::policy() }) },
        Record::SetPolicy { vol: 1, policy: None },
        Record::Restore { vol: 1, snap: 2, safety: None },
        Record::Restore { vol: 1, snap: 2, safety: Some(safety) },
        Record::DeleteSnapshot { snap: 2 },
        Record::SetSchedule { vol: 1, name: "daily".into(), schedule: samples::schedules().into_iter().next() },
        Record::SetSchedule { vol: 1, name: "daily".into(), schedule: None },
        Record::ScheduleRun {
            vol: 1,
            name: "daily".into(),
            status: samples::schedules()[0].status.clone(),
            snapshot: Some(samples::scheduled_snapshot()),
        },
        Record::ScheduleRun { vol: 1, name: "hourly".into(), status: samples::failed_run(), snapshot: None },
    ];
    let batch = |first_lsn: u64, recs: &[Record]| {
        let mut e = crate::format::Enc::default();
        for r in recs {
            crate::wal::LogRecord::encode(r, &mut e);
        }
        let hdr = crate::format::BatchHeader {
            log_id: 42,
            first_lsn,
            count: recs.len() as u32,
            payload_len: e.len() as u32,
            durable_lsn: first_lsn,
        };
        hdr.encode_with(&e.buf)
    };
    vec![
        ("map", batch(100, &all[..1])),
        ("unmap", batch(101, &all[1..2])),
        ("all-records", batch(100, &all)),
        ("lifecycle", batch(120, &all[7..])),
    ]
}

/// Valid inputs for the `catalog` fuzz target, as `(name, bytes)`: a
/// catalog with volumes of every origin (one with a snapshot policy and a
/// schedule of every kind), ready, automatic, held, creating, failed and
/// scheduled snapshots with labels, expiry and idempotency key, and
/// a template and a change log chunk in its table; an empty catalog; a
/// superblock; a leaf, an interior and a wide leaf tree node (format 7),
/// each after the 9-byte page and level prefix the target reads first; and
/// a chunk of the reference table's change log (format 8) after its 8-byte
/// entry count. `fuzz/examples/write_seeds.rs`
/// writes them as seeds.
pub fn sample_catalog_inputs() -> Vec<(&'static str, Vec<u8>)> {
    use crate::catalog::CatalogImage;
    use crate::tree::{build_node, encode_node, DecodedNode, LeafEntry, NodeAddr};
    let snap = samples::snapshot();
    let snapshots = vec![
        (snap.clone(), 9),
        (
            SnapshotInfo {
                id: SnapshotId(3),
                name: "auto-20270115-080000".into(),
                kind: SnapshotKind::Auto,
                held: true,
                backup: Some(samples::backup(BackupState::BackedUp)),
                ..snap.clone()
            },
            9,
        ),
        (SnapshotInfo { status: SnapshotStatus::Failed, ..samples::creating_snapshot() }, 0),
        (SnapshotInfo { id: SnapshotId(6), ..samples::creating_snapshot() }, 0),
        (
            SnapshotInfo {
                id: SnapshotId(4),
                backup: Some(samples::backup(BackupState::Failed)),
                ..samples::scheduled_snapshot()
            },
            9,
        ),
    ];
    let volumes = vec![
        (VolumeInfo { policy: Some(samples::policy()), schedules: samples::schedules(), ..samples::volume() }, 9),
        (samples::fork(), 9),
        (samples::from_template(), 9),
        (
            VolumeInfo {
                id: VolumeId(6),
                name: "restored".into(),
                origin: Some(VolumeOrigin::Snapshot(VolumeId(1), SnapshotId(2))),
                ..samples::volume()
            },
            0,
        ),
    ];
    let full = CatalogImage {
        next_volume: 7,
        next_snapshot: 7,
        next_template: 2,
        volumes,
        snapshots,
        templates: vec![(samples::template(), 9)],
        table: Some(crate::space::TableRoot {
            changes: vec![crate::space::ChunkRef {
                runs: vec![crate::space::Run { start: 40, len: 1 }, crate::space::Run { start: 90, len: 2 }],
                entries: 4,
                fences: [(2, 0x0bad_cafe), (u64::MAX, 7), (u64::MAX, 9)]
                    .map(|(first_group, crc)| crate::space::Fence { first_group, crc })
                    .to_vec(),
                crc: 0,
            }],
            ..Default::default()
        }),
        garbage: vec![(NodeAddr::whole(9), 0), (NodeAddr { page: 31, delta: 48 * 256 + 2 }, 0)],
    };
    let empty = CatalogImage {
        next_volume: 1,
        next_snapshot: 1,
        next_template: 1,
        table: Some(crate::space::TableRoot::default()),
        ..Default::default()
    };
    let sb = crate::format::Superblock {
        version: crate::format::FORMAT_VERSION,
        block_size: 4096,
        fanout_bits: crate::format::fanout_bits_for(4096),
        generation: 7,
        store_id: 0x5eed,
        catalog_page: 12,
        catalog_len: full.encode().len() as u64,
        catalog_crc: crc32(&full.encode()),
        log: crate::format::LogStart { log_id: 42, segment_page: 1, segment_seq: 3, offset: 4096, lsn: 100 },
    };
    let entries = [(0, 20, 0x1111_1111), (5, 21, 0x2222_2222), (255, 22, 0)];
    let built = |d: DecodedNode| build_node(d, NodeAddr::default(), Vec::new());
    let leaf = built(DecodedNode::Leaf(entries.iter().map(|&(idx, page, crc)| LeafEntry { idx, page, crc }).collect()));
    let with_delta = NodeAddr { page: 31, delta: crate::tree::delta::address(48, 32, 4096) };
    let interior =
        built(DecodedNode::Interior(vec![(0, NodeAddr::whole(9)), (1, with_delta), (200, NodeAddr::whole(32))]));
    let wide = [(0, 40, 0x3333_3333), (300, 41, 1), (65_535, 42, 2)];
    let wide = built(DecodedNode::Leaf(wide.iter().map(|&(idx, page, crc)| LeafEntry { idx, page, crc }).collect()));
    let node = |page: u64, level: u8, n: &crate::tree::Node| {
        let mut b = page.to_le_bytes().to_vec();
        b.push(level);
        b.extend(encode_node(n, level as u32, page, 4096));
        b
    };
    let changes = {
        use crate::space::Logged;
        use crate::space::Op;
        // Sorted as a chunk of format 9 is: its first page's fence is group 0.
        let entries = [
            Logged::Change(7, Op::Raw(!0)),
            Logged::Fold(2),
            Logged::Change(2048, Op::Inc),
            Logged::Change(2049, Op::Dec),
        ];
        let mut b = (entries.len() as u64).to_le_bytes().to_vec();
        b.extend(0u64.to_le_bytes());
        b.extend(crate::space::encode_chunk(&entries, 1, 4096));
        b
    };
    let delta_page = {
        use crate::tree::delta::{DeltaEntries, DeltaPage, PAGE_HEADER_LEN};
        let mut p = DeltaPage::new(48, 4096);
        p.put(PAGE_HEADER_LEN, 31, 0, &DeltaEntries::Leaf(vec![(4, Some((77, 0x4444_4444))), (9, None)]));
        let mut b = with_delta.delta.to_le_bytes().to_vec();
        b.extend(31u64.to_le_bytes());
        b.push(0);
        b.extend(p.seal());
        b
    };
    vec![
        ("catalog", full.encode()),
        ("node-delta", delta_page),
        ("change-chunk", changes),
        ("catalog-empty", empty.encode()),
        ("superblock", sb.encode()),
        ("leaf", node(9, 0, &leaf)),
        ("interior", node(30, 1, &interior)),
        ("wide-leaf", node(33, 1, &wide)),
    ]
}

/// The records the sample seeds share.
mod samples {
    use super::*;

    pub(super) fn volume() -> VolumeInfo {
        VolumeInfo {
            id: VolumeId(1),
            name: "root-disk".into(),
            size_bytes: 1 << 20,
            access_mode: crate::catalog::AccessMode::ReadWriteOnce,
            cache_bytes: 0,
            write_buffer_bytes: 64 << 20,
            created_at: 1_795_000_000,
            origin: None,
            policy: None,
            owner: "tenant-a".into(),
            schedules: Vec::new(),
        }
    }

    /// A daily schedule that has run once, and an hourly one whose last
    /// run failed.
    pub(super) fn schedules() -> Vec<crate::catalog::ScheduleInfo> {
        use crate::catalog::{Every, RunResult, Schedule, ScheduleInfo, ScheduleStatus, TimeOfDay, Weekday};
        let daily = Schedule {
            keep_last: Some(7),
            labels: [("tier".to_string(), "gold".to_string())].into(),
            ..Schedule::new("daily", Every::Daily { at: TimeOfDay::new(2, 0) }, "Europe/Berlin")
        };
        let hourly = Schedule {
            keep_for_secs: Some(86_400),
            skip_unchanged: false,
            ..Schedule::new("hourly", Every::Hourly { minute: 15 }, "Asia/Kolkata")
        };
        let weekly = Schedule::new("weekly", Every::Weekly { on: Weekday::Sunday, at: TimeOfDay::new(3, 30) }, "UTC");
        let monthly = Schedule::new("monthly", Every::Monthly { day: 31, at: TimeOfDay::new(0, 0) }, "UTC");
        let ran = ScheduleStatus {
            last_slot: Some(1_795_050_000),
            last_run_at: Some(1_795_050_060),
            last_result: Some(RunResult::Created(SnapshotId(3))),
            ..Default::default()
        };
        vec![
            ScheduleInfo { schedule: daily, added_at: 1_795_000_000, status: ran },
            ScheduleInfo { schedule: hourly, added_at: 1_795_000_000, status: failed_run() },
            ScheduleInfo { schedule: weekly, added_at: 1_795_000_000, status: Default::default() },
            ScheduleInfo { schedule: monthly, added_at: 1_795_000_000, status: Default::default() },
        ]
    }

    pub(super) fn failed_run() -> crate::catalog::ScheduleStatus {
        crate::catalog::ScheduleStatus {
            last_slot: None,
            last_run_at: Some(1_795_050_060),
            last_result: Some(crate::catalog::RunResult::Failed),
            last_error: "volume vol-1 is busy".into(),
            consecutive_failures: 4,
        }
    }

    /// A snapshot a schedule took, with an expiry and an idempotency key.
    pub(super) fn scheduled_snapshot() -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId(3),
            name: "daily-20261118-0200".into(),
            kind: SnapshotKind::Auto,
            expires_at: Some(1_796_000_000),
            schedule: Some("daily".into()),
            idempotency_key: Some("req-7f3a".into()),
            ..snapshot()
        }
    }

    pub(super) fn fork() -> VolumeInfo {
        VolumeInfo {
            id: VolumeId(2),
            name: "clone".into(),
            access_mode: crate::catalog::AccessMode::ReadWriteMany,
            origin: Some(VolumeOrigin::Volume(VolumeId(1))),
            ..volume()
        }
    }

    pub(super) fn from_template() -> VolumeInfo {
        VolumeInfo {
            id: VolumeId(5),
            name: "web-1".into(),
            origin: Some(VolumeOrigin::Template(TemplateId(1))),
            ..volume()
        }
    }

    pub(super) fn snapshot() -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId(2),
            volume_id: VolumeId(1),
            volume_name: "root-disk".into(),
            name: "golden".into(),
            description: "before upgrade".into(),
            size_bytes: 1 << 20,
            created_at: 1_795_000_100,
            owner: "ops".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            kind: SnapshotKind::Manual,
            status: SnapshotStatus::Ready,
            held: false,
            expires_at: None,
            schedule: None,
            idempotency_key: None,
            backup: None,
        }
    }

    /// A backup record in `state` (a failed one with its reason).
    pub(super) fn backup(state: BackupState) -> BackupRecord {
        BackupRecord {
            state,
            target: "s3://backups/root-disk".into(),
            backup_id: if state == BackupState::BackedUp { "3f0c9a1e5b7d2c40".into() } else { String::new() },
            reason: if state == BackupState::Failed { "the target refused the upload".into() } else { String::new() },
            at: 1_795_000_200,
        }
    }

    pub(super) fn creating_snapshot() -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId(5),
            name: "quiesced".into(),
            owner: String::new(),
            labels: BTreeMap::new(),
            status: SnapshotStatus::Creating,
            ..snapshot()
        }
    }

    pub(super) fn template() -> TemplateInfo {
        TemplateInfo {
            id: TemplateId(1),
            name: "debian-base".into(),
            description: "golden image".into(),
            size_bytes: 1 << 20,
            created_at: 1_795_000_200,
            source: (VolumeId(1), SnapshotId(2)),
            labels: [("os".to_string(), "debian".to_string())].into(),
            owner: "platform".into(),
        }
    }

    pub(super) fn policy() -> SnapshotPolicy {
        SnapshotPolicy { interval_secs: 3600, keep_last: Some(24), keep_for_secs: Some(7 * 86_400) }
    }
}
