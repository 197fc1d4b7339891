//! The changes the engine logs: one [`Record`] per change, encoded into WAL
//! batches (docs/format.md, section 3.3). Replay applies each with the same
//! code the live operation ran (`State::apply`).

use crate::catalog::{ScheduleInfo, ScheduleStatus, SnapshotInfo, SnapshotPolicy, TemplateInfo, VolumeInfo};
use crate::error::Result;
use crate::format::{Dec, Enc};
use crate::wal::LogRecord;

/// Largest number of blocks one `Map` record describes; longer writes are
/// split so that a record always fits in a batch.
pub(crate) const MAX_MAP_BLOCKS: usize = 4096;

/// One logged change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// Logical blocks `lblock..` of `vol` now live in pages `page..`, one
    /// CRC per block.
    Map {
        vol: u64,
        lblock: u64,
        page: u64,
        crcs: Vec<u32>,
    },
    /// Logical blocks `lblock..lblock+count` of `vol` are unmapped.
    Unmap {
        vol: u64,
        lblock: u64,
        count: u64,
    },
    CreateVolume(VolumeInfo),
    /// A fork: a new volume whose tree is its origin's (volume or snapshot).
    Fork(VolumeInfo),
    DeleteVolume {
        vol: u64,
    },
    /// A snapshot: `Ready` ones capture their volume's tree now,
    /// `Creating` ones only register the name.
    CreateSnapshot(SnapshotInfo),
    DeleteSnapshot {
        snap: u64,
    },
    /// Rolls `vol` back to `snap`; when `safety` is set, that snapshot of
    /// the state being discarded is taken first, in the same step.
    Restore {
        vol: u64,
        snap: u64,
        safety: Option<SnapshotInfo>,
    },
    /// Several snapshots taken at one instant (a group snapshot).
    CreateSnapshots(Vec<SnapshotInfo>),
    /// A `Creating` snapshot captures its volume's tree and becomes `Ready`.
    CommitSnapshot {
        snap: u64,
    },
    /// A snapshot's record changes (status, hold); its tree does not.
    UpdateSnapshot(SnapshotInfo),
    /// A template that shares its source snapshot's tree.
    CreateTemplate(TemplateInfo),
    DeleteTemplate {
        tmpl: u64,
    },
    /// A volume's snapshot policy is set or cleared.
    SetPolicy {
        vol: u64,
        policy: Option<SnapshotPolicy>,
    },
    /// A volume's schedule `name` is added or replaced (`Some`) or
    /// removed (`None`).
    SetSchedule {
        vol: u64,
        name: String,
        schedule: Option<ScheduleInfo>,
    },
    /// A schedule of `vol` ran: its new status, and in the same step the
    /// `Ready` snapshot it took, if any, so that a pass cut short by a
    /// crash never takes a slot's snapshot twice.
    ScheduleRun {
        vol: u64,
        name: String,
        status: ScheduleStatus,
        snapshot: Option<SnapshotInfo>,
    },
}

const TAG_MAP: u8 = 1;
const TAG_UNMAP: u8 = 2;
const TAG_CREATE_VOLUME: u8 = 3;
const TAG_FORK: u8 = 4;
const TAG_DELETE_VOLUME: u8 = 5;
const TAG_CREATE_SNAPSHOT: u8 = 6;
const TAG_DELETE_SNAPSHOT: u8 = 7;
const TAG_RESTORE: u8 = 8;
const TAG_CREATE_SNAPSHOTS: u8 = 9;
const TAG_COMMIT_SNAPSHOT: u8 = 10;
const TAG_UPDATE_SNAPSHOT: u8 = 11;
const TAG_CREATE_TEMPLATE: u8 = 12;
const TAG_DELETE_TEMPLATE: u8 = 13;
const TAG_SET_POLICY: u8 = 14;
const TAG_SET_SCHEDULE: u8 = 15;
const TAG_SCHEDULE_RUN: u8 = 16;

impl Record {
    fn encode_fields(&self, e: &mut Enc) {
        match self {
            Record::Map { vol, lblock, page, crcs } => {
                e.u8(TAG_MAP);
                e.u64(*vol);
                e.u64(*lblock);
                e.u64(*page);
                e.u32(crcs.len() as u32);
                for c in crcs {
                    e.u32(*c);
                }
            }
            Record::Unmap { vol, lblock, count } => {
                e.u8(TAG_UNMAP);
                e.u64(*vol);
                e.u64(*lblock);
                e.u64(*count);
            }
            Record::CreateVolume(v) => {
                e.u8(TAG_CREATE_VOLUME);
                v.encode(e);
            }
            Record::Fork(v) => {
                e.u8(TAG_FORK);
                v.encode(e);
            }
            Record::DeleteVolume { vol } => {
                e.u8(TAG_DELETE_VOLUME);
                e.u64(*vol);
            }
            Record::CreateSnapshot(s) => {
                e.u8(TAG_CREATE_SNAPSHOT);
                s.encode(e);
            }
            Record::DeleteSnapshot { snap } => {
                e.u8(TAG_DELETE_SNAPSHOT);
                e.u64(*snap);
            }
            Record::Restore { vol, snap, safety } => {
                e.u8(TAG_RESTORE);
                e.u64(*vol);
                e.u64(*snap);
                e.u8(u8::from(safety.is_some()));
                if let Some(s) = safety {
                    s.encode(e);
                }
            }
            Record::CreateSnapshots(list) => {
                e.u8(TAG_CREATE_SNAPSHOTS);
                e.u32(list.len() as u32);
                for s in list {
                    s.encode(e);
                }
            }
            Record::CommitSnapshot { snap } => {
                e.u8(TAG_COMMIT_SNAPSHOT);
                e.u64(*snap);
            }
            Record::UpdateSnapshot(s) => {
                e.u8(TAG_UPDATE_SNAPSHOT);
                s.encode(e);
            }
            Record::CreateTemplate(t) => {
                e.u8(TAG_CREATE_TEMPLATE);
                t.encode(e);
            }
            Record::DeleteTemplate { tmpl } => {
                e.u8(TAG_DELETE_TEMPLATE);
                e.u64(*tmpl);
            }
            Record::SetPolicy { vol, policy } => {
                e.u8(TAG_SET_POLICY);
                e.u64(*vol);
                SnapshotPolicy::encode(policy, e);
            }
            Record::SetSchedule { vol, name, schedule } => {
                e.u8(TAG_SET_SCHEDULE);
                e.u64(*vol);
                e.str(name);
                e.u8(u8::from(schedule.is_some()));
                if let Some(s) = schedule {
                    s.encode(e);
                }
            }
            Record::ScheduleRun { vol, name, status, snapshot } => {
                e.u8(TAG_SCHEDULE_RUN);
                e.u64(*vol);
                e.str(name);
                status.encode(e);
                e.u8(u8::from(snapshot.is_some()));
                if let Some(s) = snapshot {
                    s.encode(e);
                }
            }
        }
    }

    /// The length of [`LogRecord::encode`]'s output, without encoding the
    /// records on the I/O path.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Record::Map { crcs, .. } => 29 + 4 * crcs.len(),
            Record::Unmap { .. } => 25,
            Record::DeleteVolume { .. }
            | Record::DeleteSnapshot { .. }
            | Record::CommitSnapshot { .. }
            | Record::DeleteTemplate { .. } => 9,
            _ => {
                // Administrative records are rare: measure by encoding.
                let mut e = Enc::default();
                self.encode_fields(&mut e);
                e.len()
            }
        }
    }

    fn decode_fields(d: &mut Dec<'_>) -> Result<Record> {
        Ok(match d.u8()? {
            TAG_MAP => {
                let vol = d.u64()?;
                let lblock = d.u64()?;
                let page = d.u64()?;
                let n = d.u32()? as usize;
                if n == 0 || n > MAX_MAP_BLOCKS {
                    return Err(d.bad(format!("map record of {n} blocks")));
                }
                let crcs = (0..n).map(|_| d.u32()).collect::<Result<_>>()?;
                Record::Map { vol, lblock, page, crcs }
            }
            TAG_UNMAP => Record::Unmap { vol: d.u64()?, lblock: d.u64()?, count: d.u64()? },
            TAG_CREATE_VOLUME => Record::CreateVolume(VolumeInfo::decode(d)?),
            TAG_FORK => Record::Fork(VolumeInfo::decode(d)?),
            TAG_DELETE_VOLUME => Record::DeleteVolume { vol: d.u64()? },
            TAG_CREATE_SNAPSHOT => Record::CreateSnapshot(SnapshotInfo::decode(d)?),
            TAG_DELETE_SNAPSHOT => Record::DeleteSnapshot { snap: d.u64()? },
            TAG_RESTORE => {
                let (vol, snap) = (d.u64()?, d.u64()?);
                let safety = match d.u8()? {
                    0 => None,
                    1 => Some(SnapshotInfo::decode(d)?),
                    f => return Err(d.bad(format!("bad safety snapshot flag {f}"))),
                };
                Record::Restore { vol, snap, safety }
            }
            TAG_CREATE_SNAPSHOTS => {
                let n = d.u32()? as usize;
                // Each snapshot takes dozens of bytes: a count beyond what
                // is left is damage, not a reason to allocate.
                if n == 0 || n > d.remaining() {
                    return Err(d.bad(format!("group of {n} snapshots")));
                }
                Record::CreateSnapshots((0..n).map(|_| SnapshotInfo::decode(d)).collect::<Result<_>>()?)
            }
            TAG_COMMIT_SNAPSHOT => Record::CommitSnapshot { snap: d.u64()? },
            TAG_UPDATE_SNAPSHOT => Record::UpdateSnapshot(SnapshotInfo::decode(d)?),
            TAG_CREATE_TEMPLATE => Record::CreateTemplate(TemplateInfo::decode(d)?),
            TAG_DELETE_TEMPLATE => Record::DeleteTemplate { tmpl: d.u64()? },
            TAG_SET_POLICY => Record::SetPolicy { vol: d.u64()?, policy: SnapshotPolicy::decode(d)? },
            TAG_SET_SCHEDULE => {
                let (vol, name) = (d.u64()?, d.str()?);
                Record::SetSchedule { vol, name, schedule: decode_optional(d, ScheduleInfo::decode)? }
            }
            TAG_SCHEDULE_RUN => {
                let (vol, name, status) = (d.u64()?, d.str()?, ScheduleStatus::decode(d)?);
                Record::ScheduleRun { vol, name, status, snapshot: decode_optional(d, SnapshotInfo::decode)? }
            }
            t => return Err(d.bad(format!("unknown record tag {t}"))),
        })
    }
}

/// A presence byte (0 or 1), then the value when present.
fn decode_optional<T>(d: &mut Dec<'_>, decode: impl FnOnce(&mut Dec<'_>) -> Result<T>) -> Result<Option<T>> {
    match d.u8()? {
        0 => Ok(None),
        1 => decode(d).map(Some),
        f => Err(d.bad(format!("bad presence flag {f}"))),
    }
}

impl LogRecord for Record {
    fn encode(&self, e: &mut Enc) {
        self.encode_fields(e);
    }

    fn decode(d: &mut Dec<'_>) -> Result<Record> {
        Record::decode_fields(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_matches_encode() {
        let recs = [
            Record::Map { vol: 1, lblock: 2, page: 3, crcs: vec![7; 5] },
            Record::Unmap { vol: 1, lblock: 2, count: 3 },
            Record::DeleteVolume { vol: 4 },
            Record::DeleteSnapshot { snap: 5 },
            Record::Restore { vol: 1, snap: 5, safety: None },
            Record::CommitSnapshot { snap: 5 },
            Record::DeleteTemplate { tmpl: 2 },
        ];
        for rec in &recs {
            let mut e = Enc::default();
            LogRecord::encode(rec, &mut e);
            assert_eq!(rec.encoded_len(), e.len(), "{rec:?}");
        }
    }
}
