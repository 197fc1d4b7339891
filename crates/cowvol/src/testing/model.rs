//! The operation model the model test (`tests/model.rs`, proptest) and the
//! `ops` fuzz target share: sequences of operations on the public API, applied
//! to a store on a [`SimDir`] and to a plain model that holds the expected
//! `VolumeInfo`, `SnapshotInfo` and `TemplateInfo` of every live object and
//! its bytes. After every operation the listings must equal the model field
//! by field (origin, policy, kind, status, hold, labels, creation time), each
//! volume, ready snapshot and template must read back exactly, a snapshot
//! that is not ready must refuse to open, and `Store::check()` must be clean.
//! Every call the model expects to succeed must succeed; every call it
//! expects to fail must fail with the expected error and change nothing.
//!
//! The snapshot lifecycle is covered: holds, two-step snapshots (a reopen or
//! crash while `Creating` leaves them `Failed`, as does deleting their
//! volume), group snapshots, restores with a safety snapshot, templates,
//! volumes made from templates and snapshots, snapshot policies and calendar
//! schedules (hourly and daily, in UTC) run on a simulated clock (what is
//! taken, for which slot, and what each one's retention prunes is predicted
//! exactly; manual, held and other schedules' snapshots are never pruned),
//! snapshots that expire, and idempotency keys on snapshot create.
//!
//! Inputs are bytes ([`Op::decode_all`]), so that any byte string is a valid
//! sequence: libFuzzer mutates them and proptest generates and shrinks them.
//! Sizes are bounded so one sequence runs in milliseconds: volumes of at most
//! 64 blocks of 4 KiB, at most 16 live volumes, 32 snapshots (a policy run
//! may add one per volume) and 8 templates.

use super::{LossMode, SimDir};
use crate::{
    Error, Every, ForkOptions, OpenMode, RestoreOptions, RunResult, Schedule, ScheduleInfo, ScheduleStatus, SnapshotId,
    SnapshotInfo, SnapshotKind, SnapshotOptions, SnapshotPolicy, SnapshotQuery, SnapshotStatus, Store, StoreOptions,
    TemplateId, TemplateInfo, TemplateOptions, TimeOfDay, UtcTime, VolumeId, VolumeInfo, VolumeOptions, VolumeOrigin,
    AUTO_LABEL, SCHEDULE_LABEL,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One operation of a sequence. Indices (`vol`, `snap`, `tmpl`) pick among
/// the live objects modulo their number.
#[expect(missing_docs, reason = "each variant is the API call it names; its fields are indices and sizes as above")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
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
    /// A one-step snapshot, manual or (by hand) automatic.
    Snapshot {
        vol: u8,
        auto: bool,
    },
    /// Restore one of the volume's snapshots (it may not be ready). With
    /// `safety`, a safety snapshot is taken: `Some(true)` reuses the name
    /// of one of the volume's snapshots, so the restore must fail.
    Restore {
        vol: u8,
        snap: u8,
        safety: Option<bool>,
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
    /// `create_volume_from_snapshot`; `size`: `None` passes 0,
    /// `Some(true)` the snapshot's size, `Some(false)` a wrong size.
    FromSnapshot {
        snap: u8,
        size: Option<bool>,
    },
    DeleteSnapshot {
        snap: u8,
    },
    /// Hold (`true`) or release a snapshot.
    Hold {
        snap: u8,
        hold: bool,
    },
    /// First step of a two-step snapshot.
    Begin {
        vol: u8,
        auto: bool,
    },
    /// Commit a snapshot: a creating one, or with `any` any snapshot.
    Commit {
        snap: u8,
        any: bool,
    },
    /// Abort a snapshot: a creating one, or with `any` any snapshot.
    Abort {
        snap: u8,
        any: bool,
    },
    /// Group snapshot of two volumes (the same one twice must fail); with
    /// `clash` the name is one the first volume's snapshots already use.
    Group {
        a: u8,
        b: u8,
        clash: bool,
    },
    /// A template from a snapshot; with `clash` under a taken name.
    Template {
        snap: u8,
        clash: bool,
    },
    /// `create_volume_from_template`; `size` as in `FromSnapshot`.
    FromTemplate {
        tmpl: u8,
        size: Option<bool>,
    },
    DeleteTemplate {
        tmpl: u8,
    },
    /// Set (`Some`) or clear a volume's policy. Zero intervals and zero
    /// retention rules must be refused.
    SetPolicy {
        vol: u8,
        policy: Option<(u16, Option<u8>, Option<u16>)>,
    },
    /// Advance the simulated clock by `advance` seconds and run every
    /// policy.
    RunPolicies {
        advance: u16,
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
    /// Add a UTC schedule named `s{name % 3}` (a taken name must be
    /// refused): daily at `at % 1440` minutes past midnight, or hourly at
    /// minute `at % 60`, keeping `keep` (0 must be refused). It always
    /// snapshots, changed or not.
    AddSchedule {
        vol: u8,
        name: u8,
        daily: bool,
        at: u16,
        keep: Option<u8>,
    },
    /// Remove schedule `s{name % 3}` (it may not exist).
    RemoveSchedule {
        vol: u8,
        name: u8,
    },
    /// A manual snapshot that expires `expires` seconds after the
    /// simulated clock's present, and/or carries idempotency key
    /// `k{key % 3}` (a repeat must return the first snapshot).
    SnapshotWith {
        vol: u8,
        expires: Option<u16>,
        key: Option<u8>,
    },
}

/// Reads fields from the bytes of an input; past the end every field reads
/// as zero, so any byte string decodes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.bool().then(|| f(self))
    }
}

/// Writes fields in the order [`Reader`] reads them.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T) -> &mut Self) -> &mut Self {
        self.bool(v.is_some());
        if let Some(v) = v {
            f(self, v);
        }
        self
    }
}

/// How often each kind of operation comes out of random bytes: a write is
/// the most common thing a disk sees, so it gets several of the 32 slots.
const KINDS: [u8; 32] =
    [0, 1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26];

impl Op {
    /// Decodes a sequence: per operation, one byte picks its kind, then its
    /// fields follow little-endian. Stops at the end of the input or after
    /// [`MAX_OPS`] operations.
    pub fn decode_all(bytes: &[u8]) -> Vec<Op> {
        let mut r = Reader(bytes);
        let mut ops = Vec::new();
        while !r.0.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::decode(&mut r));
        }
        ops
    }

    fn decode(r: &mut Reader<'_>) -> Op {
        match KINDS[(r.u8() % 32) as usize] {
            0 => Op::Create { blocks: r.u8(), tail: r.u16() },
            1 => Op::Write { vol: r.u8(), offset: r.u32(), len: r.u16(), seed: r.u8() },
            2 => Op::Discard { vol: r.u8(), offset: r.u32(), len: r.u32() },
            3 => Op::Flush { vol: r.u8() },
            4 => Op::Snapshot { vol: r.u8(), auto: r.bool() },
            5 => Op::Restore { vol: r.u8(), snap: r.u8(), safety: r.opt(Reader::bool) },
            6 => Op::Fork { vol: r.u8(), snap: r.opt(Reader::u8) },
            7 => Op::ForkSnapshot { snap: r.u8() },
            8 => Op::FromSnapshot { snap: r.u8(), size: r.opt(Reader::bool) },
            9 => Op::DeleteSnapshot { snap: r.u8() },
            10 => Op::Hold { snap: r.u8(), hold: r.bool() },
            11 => Op::Begin { vol: r.u8(), auto: r.bool() },
            12 => Op::Commit { snap: r.u8(), any: r.bool() },
            13 => Op::Abort { snap: r.u8(), any: r.bool() },
            14 => Op::Group { a: r.u8(), b: r.u8(), clash: r.bool() },
            15 => Op::Template { snap: r.u8(), clash: r.bool() },
            16 => Op::FromTemplate { tmpl: r.u8(), size: r.opt(Reader::bool) },
            17 => Op::DeleteTemplate { tmpl: r.u8() },
            18 => Op::SetPolicy { vol: r.u8(), policy: r.opt(|r| (r.u16(), r.opt(Reader::u8), r.opt(Reader::u16))) },
            19 => Op::RunPolicies { advance: r.u16() },
            20 => Op::DeleteVolume { vol: r.u8() },
            21 => Op::Checkpoint,
            22 => Op::Reopen,
            23 => Op::CrashAfterFlush { vol: r.u8(), seed: r.u8() },
            24 => Op::AddSchedule { vol: r.u8(), name: r.u8(), daily: r.bool(), at: r.u16(), keep: r.opt(Reader::u8) },
            25 => Op::RemoveSchedule { vol: r.u8(), name: r.u8() },
            _ => Op::SnapshotWith { vol: r.u8(), expires: r.opt(Reader::u16), key: r.opt(Reader::u8) },
        }
    }

    /// Encodes a sequence so that [`Op::decode_all`] gives it back (for
    /// scripted fuzz seeds).
    pub fn encode_all(ops: &[Op]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            op.encode(&mut out);
        }
        out
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let kind = |k: u8| KINDS.iter().position(|&x| x == k).expect("every kind has a slot") as u8;
        let mut w = Writer(out);
        match *self {
            Op::Create { blocks, tail } => w.u8(kind(0)).u8(blocks).u16(tail),
            Op::Write { vol, offset, len, seed } => w.u8(kind(1)).u8(vol).u32(offset).u16(len).u8(seed),
            Op::Discard { vol, offset, len } => w.u8(kind(2)).u8(vol).u32(offset).u32(len),
            Op::Flush { vol } => w.u8(kind(3)).u8(vol),
            Op::Snapshot { vol, auto } => w.u8(kind(4)).u8(vol).bool(auto),
            Op::Restore { vol, snap, safety } => w.u8(kind(5)).u8(vol).u8(snap).opt(safety, Writer::bool),
            Op::Fork { vol, snap } => w.u8(kind(6)).u8(vol).opt(snap, Writer::u8),
            Op::ForkSnapshot { snap } => w.u8(kind(7)).u8(snap),
            Op::FromSnapshot { snap, size } => w.u8(kind(8)).u8(snap).opt(size, Writer::bool),
            Op::DeleteSnapshot { snap } => w.u8(kind(9)).u8(snap),
            Op::Hold { snap, hold } => w.u8(kind(10)).u8(snap).bool(hold),
            Op::Begin { vol, auto } => w.u8(kind(11)).u8(vol).bool(auto),
            Op::Commit { snap, any } => w.u8(kind(12)).u8(snap).bool(any),
            Op::Abort { snap, any } => w.u8(kind(13)).u8(snap).bool(any),
            Op::Group { a, b, clash } => w.u8(kind(14)).u8(a).u8(b).bool(clash),
            Op::Template { snap, clash } => w.u8(kind(15)).u8(snap).bool(clash),
            Op::FromTemplate { tmpl, size } => w.u8(kind(16)).u8(tmpl).opt(size, Writer::bool),
            Op::DeleteTemplate { tmpl } => w.u8(kind(17)).u8(tmpl),
            Op::SetPolicy { vol, policy } => w
                .u8(kind(18))
                .u8(vol)
                .opt(policy, |w, (interval, last, age)| w.u16(interval).opt(last, Writer::u8).opt(age, Writer::u16)),
            Op::RunPolicies { advance } => w.u8(kind(19)).u16(advance),
            Op::DeleteVolume { vol } => w.u8(kind(20)).u8(vol),
            Op::Checkpoint => w.u8(kind(21)),
            Op::Reopen => w.u8(kind(22)),
            Op::CrashAfterFlush { vol, seed } => w.u8(kind(23)).u8(vol).u8(seed),
            Op::AddSchedule { vol, name, daily, at, keep } => {
                w.u8(kind(24)).u8(vol).u8(name).bool(daily).u16(at).opt(keep, Writer::u8)
            }
            Op::RemoveSchedule { vol, name } => w.u8(kind(25)).u8(vol).u8(name),
            Op::SnapshotWith { vol, expires, key } => {
                w.u8(kind(26)).u8(vol).opt(expires, Writer::u16).opt(key, Writer::u8)
            }
        };
    }
}

const BS: u64 = 4096;
const MAX_BLOCKS: u64 = 64;
/// Operations [`run`] applies at most; [`Op::decode_all`] stops there too.
pub const MAX_OPS: usize = 64;
const MAX_VOLUMES: usize = 16;
const MAX_SNAPSHOTS: usize = 32;
const MAX_TEMPLATES: usize = 8;
/// Where the simulated policy clock starts (2096-10-02): later than any
/// wall-clock `created_at` the store gives manual snapshots, so runs do not
/// depend on the date.
const CLOCK_START: u64 = 4_000_000_000;

struct Vol {
    info: VolumeInfo,
    data: Vec<u8>,
}

struct Snap {
    info: SnapshotInfo,
    /// The captured bytes; `None` until the snapshot is ready.
    data: Option<Vec<u8>>,
}

struct Tmpl {
    info: TemplateInfo,
    data: Vec<u8>,
}

struct Model {
    volumes: BTreeMap<VolumeId, Vol>,
    snapshots: BTreeMap<SnapshotId, Snap>,
    templates: BTreeMap<TemplateId, Tmpl>,
    /// The simulated clock `run_policies` is called with.
    now: u64,
}

impl Model {
    /// Registers a new snapshot of `vol` the store returned as `got`,
    /// checking every field against what the model expects.
    fn add_snapshot(&mut self, got: &SnapshotInfo, vol: VolumeId, opts: &SnapshotOptions, status: SnapshotStatus) {
        self.add_snapshot_of(got, vol, opts, status, None);
    }

    /// As `add_snapshot`, for a snapshot that `schedule` (when set) took.
    fn add_snapshot_of(
        &mut self,
        got: &SnapshotInfo,
        vol: VolumeId,
        opts: &SnapshotOptions,
        status: SnapshotStatus,
        schedule: Option<String>,
    ) {
        let v = &self.volumes[&vol];
        let want = SnapshotInfo {
            id: got.id,
            volume_id: vol,
            volume_name: v.info.name.clone(),
            name: opts.name.clone(),
            description: opts.description.clone(),
            size_bytes: v.data.len() as u64,
            created_at: got.created_at,
            owner: opts.owner.clone(),
            labels: opts.labels.clone(),
            kind: opts.kind,
            status,
            held: false,
            expires_at: opts.expires_at,
            schedule,
            idempotency_key: opts.idempotency_key.clone(),
            backup: None,
        };
        assert_eq!(*got, want, "new snapshot");
        assert!(!self.snapshots.contains_key(&got.id), "snapshot id {} reused", got.id);
        let data = (status == SnapshotStatus::Ready).then(|| v.data.clone());
        self.snapshots.insert(got.id, Snap { info: want, data });
    }

    /// Registers a new volume the store returned as `got`, made from
    /// `origin` with `data`.
    fn add_volume(&mut self, got: VolumeInfo, name: &str, origin: Option<VolumeOrigin>, data: Vec<u8>) {
        assert_eq!((got.name.as_str(), got.origin, got.policy), (name, origin, None), "new volume");
        assert_eq!(got.size_bytes, data.len() as u64, "size of new volume {}", got.id);
        assert!(!self.volumes.contains_key(&got.id), "volume id {} reused", got.id);
        self.volumes.insert(got.id, Vol { info: got, data });
    }

    fn snapshots_of(&self, vol: VolumeId) -> impl Iterator<Item = &Snap> {
        self.snapshots.values().filter(move |s| s.info.volume_id == vol)
    }

    /// A crash or reopen fails every snapshot still `Creating`.
    fn fail_creating(&mut self, vol: Option<VolumeId>) {
        for s in self.snapshots.values_mut() {
            if s.info.status == SnapshotStatus::Creating && vol.is_none_or(|v| s.info.volume_id == v) {
                s.info.status = SnapshotStatus::Failed;
            }
        }
    }

    /// What one policy pass at `self.now` must do, in the store's order:
    /// every schedule (its snapshot if due, then its retention), every
    /// interval policy (likewise), then expiry. Snapshots taken are matched
    /// in order against `run.created`; pruned and expired ids as sets.
    fn run_policies(&mut self, store: &Store) {
        let now = self.now;
        let run = store.run_policies(now);
        assert!(run.errors.is_empty(), "policy errors: {:?}", run.errors);
        let mut created = run.created.iter();
        let mut pruned = Vec::new();
        let scheduled: Vec<(VolumeId, ScheduleInfo)> =
            self.volumes.values().flat_map(|v| v.info.schedules.iter().map(|s| (v.info.id, s.clone()))).collect();
        for (vol, sc) in scheduled {
            if let Some(slot) = utc_slot_due(&sc, now) {
                let got = created.next().unwrap_or_else(|| panic!("no scheduled snapshot of {vol} at {now}"));
                self.add_scheduled(got, vol, &sc.schedule, slot);
            }
            let name = Some(sc.schedule.name.as_str());
            pruned.extend(self.prune(vol, name, sc.schedule.keep_last, sc.schedule.keep_for_secs));
        }
        let with_policy: Vec<(VolumeId, SnapshotPolicy)> =
            self.volumes.values().filter_map(|v| v.info.policy.map(|p| (v.info.id, p))).collect();
        for (vol, p) in with_policy {
            let newest = self
                .snapshots_of(vol)
                .filter(|s| s.info.kind == SnapshotKind::Auto && s.info.status == SnapshotStatus::Ready)
                .filter(|s| s.info.schedule.is_none())
                .map(|s| s.info.created_at)
                .max();
            if newest.is_none_or(|t| now >= t.saturating_add(p.interval_secs)) {
                let t = UtcTime::from_unix(now);
                let base =
                    format!("auto-{:04}{:02}{:02}-{:02}{:02}{:02}", t.year, t.month, t.day, t.hour, t.minute, t.second);
                let opts = SnapshotOptions {
                    name: self.free_name(vol, base),
                    description: "taken by the volume's snapshot policy".into(),
                    labels: [(AUTO_LABEL.to_string(), now.to_string())].into(),
                    kind: SnapshotKind::Auto,
                    ..Default::default()
                };
                let got = created.next().unwrap_or_else(|| panic!("no automatic snapshot of {vol} at {now}"));
                assert_eq!(got.created_at, now, "time of automatic snapshot {}", got.id);
                self.add_snapshot(got, vol, &opts, SnapshotStatus::Ready);
            }
            pruned.extend(self.prune(vol, None, p.keep_last, p.keep_for_secs));
        }
        assert!(created.next().is_none(), "more automatic snapshots than due: {:?}", run.created);
        let mut got: Vec<SnapshotId> = run.pruned.iter().map(|s| s.id).collect();
        got.sort();
        pruned.sort();
        assert_eq!(got, pruned, "snapshots pruned at {now}");
        let mut expired: Vec<SnapshotId> = self
            .snapshots
            .values()
            .map(|s| &s.info)
            .filter(|s| s.expires_at.is_some_and(|t| t <= now) && !s.held && s.status != SnapshotStatus::Creating)
            .map(|s| s.id)
            .collect();
        for id in &expired {
            self.snapshots.remove(id);
        }
        let mut got: Vec<SnapshotId> = run.expired.iter().map(|s| s.id).collect();
        got.sort();
        expired.sort();
        assert_eq!(got, expired, "snapshots expired at {now}");
    }

    /// `base`, or `base-2`, `base-3`... whichever `vol` has no snapshot of.
    fn free_name(&self, vol: VolumeId, base: String) -> String {
        let taken = |n: &str| self.snapshots_of(vol).any(|s| s.info.name == n);
        let mut candidates = (1..).map(|i| if i == 1 { base.clone() } else { format!("{base}-{i}") });
        candidates.find(|n| !taken(n)).unwrap()
    }

    /// Registers the snapshot schedule `sc` of `vol` took for `slot`, and
    /// the schedule's new status.
    fn add_scheduled(&mut self, got: &SnapshotInfo, vol: VolumeId, sc: &Schedule, slot: u64) {
        let t = UtcTime::from_unix(slot);
        let base = format!("{}-{:04}{:02}{:02}-{:02}{:02}", sc.name, t.year, t.month, t.day, t.hour, t.minute);
        let mut labels = sc.labels.clone();
        labels.insert(AUTO_LABEL.to_string(), slot.to_string());
        labels.insert(SCHEDULE_LABEL.to_string(), sc.name.clone());
        let opts = SnapshotOptions {
            name: self.free_name(vol, base),
            description: format!("taken by schedule {:?} ({} {})", sc.name, sc.every, sc.time_zone),
            labels,
            kind: SnapshotKind::Auto,
            ..Default::default()
        };
        assert_eq!(got.created_at, self.now, "time of scheduled snapshot {}", got.id);
        self.add_snapshot_of(got, vol, &opts, SnapshotStatus::Ready, Some(sc.name.clone()));
        let v = self.volumes.get_mut(&vol).unwrap();
        let s = v.info.schedules.iter_mut().find(|s| s.schedule.name == sc.name).unwrap();
        s.status = ScheduleStatus {
            last_slot: Some(slot),
            last_run_at: Some(self.now),
            last_result: Some(RunResult::Created(got.id)),
            last_error: String::new(),
            consecutive_failures: 0,
        };
    }

    /// Removes and returns what retention lets go among the unheld
    /// automatic snapshots of `vol` that `schedule` took (`None`: the
    /// interval policy's). Failed ones go; a ready one stays when it is
    /// among the newest `keep_last` ready ones or younger than `keep_for`.
    fn prune(
        &mut self,
        vol: VolumeId,
        schedule: Option<&str>,
        keep_last: Option<u32>,
        keep_for: Option<u64>,
    ) -> Vec<SnapshotId> {
        // A policy or schedule without retention rules keeps everything.
        if keep_last.is_none() && keep_for.is_none() {
            return Vec::new();
        }
        let now = self.now;
        let autos = || {
            self.snapshots_of(vol)
                .map(|s| &s.info)
                .filter(|s| s.kind == SnapshotKind::Auto && !s.held && s.schedule.as_deref() == schedule)
        };
        let mut ready: Vec<(u64, SnapshotId)> =
            autos().filter(|s| s.status == SnapshotStatus::Ready).map(|s| (s.created_at, s.id)).collect();
        ready.sort_unstable_by(|a, b| b.cmp(a));
        let newest: Vec<SnapshotId> =
            ready.iter().take(keep_last.map_or(0, |n| n as usize)).map(|&(_, id)| id).collect();
        let young = |s: &SnapshotInfo| keep_for.is_some_and(|d| now.saturating_sub(s.created_at) < d);
        let gone: Vec<SnapshotId> = autos()
            .filter(|s| match s.status {
                SnapshotStatus::Failed => true,
                SnapshotStatus::Ready => !newest.contains(&s.id) && !young(s),
                _ => false,
            })
            .map(|s| s.id)
            .collect();
        for id in &gone {
            self.snapshots.remove(id);
        }
        gone
    }
}

/// The slot of a UTC hourly or daily schedule due at `now`, if any: the
/// latest instant at its wall time after the last slot it handled (or
/// after it was added), at or before `now`.
fn utc_slot_due(sc: &ScheduleInfo, now: u64) -> Option<u64> {
    let (period, offset) = match sc.schedule.every {
        Every::Hourly { minute } => (3600, u64::from(minute) * 60),
        Every::Daily { at } => (86_400, u64::from(at.hour) * 3600 + u64::from(at.minute) * 60),
        other => panic!("the model has no {other} schedules"),
    };
    let latest = now - (now - offset) % period;
    (latest > sc.status.last_slot.unwrap_or(sc.added_at)).then_some(latest)
}

fn pick<K: Copy, V>(m: &BTreeMap<K, V>, i: u8) -> Option<K> {
    if m.is_empty() {
        None
    } else {
        m.keys().nth(i as usize % m.len()).copied()
    }
}

/// The `i`-th (modulo) id of `ids`.
fn pick_of<K: Copy>(ids: &[K], i: u8) -> Option<K> {
    (!ids.is_empty()).then(|| ids[i as usize % ids.len()])
}

/// A snapshot for commit or abort: among the creating ones unless `any`
/// (or there are none).
fn pick_for_commit(model: &Model, snap: u8, any: bool) -> Option<SnapshotId> {
    let creating: Vec<SnapshotId> =
        model.snapshots.values().filter(|s| s.info.status == SnapshotStatus::Creating).map(|s| s.info.id).collect();
    if any || creating.is_empty() {
        pick(&model.snapshots, snap)
    } else {
        pick_of(&creating, snap)
    }
}

fn expect_err<T: std::fmt::Debug>(r: crate::Result<T>, ok: fn(&Error) -> bool, what: &str) {
    match r {
        Err(e) if ok(&e) => {}
        other => panic!("{what}: expected a specific error, got {other:?}"),
    }
}

fn is_invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { .. })
}

fn is_exists(e: &Error) -> bool {
    matches!(e, Error::AlreadyExists { .. })
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::NotFound { .. })
}

/// Small checkpoints, and a node cache of a few nodes, so that written
/// nodes are evicted and read back all the time: every model run also
/// checks that a tree read back from its pages is the tree that was written.
fn opts() -> StoreOptions {
    StoreOptions {
        checkpoint_wal_bytes: 64 << 10,
        background_checkpoints: false,
        node_cache_bytes: 16 << 10,
        ..Default::default()
    }
}

fn open(disk: &SimDir, what: &str) -> Store {
    Store::open_in(Arc::new(disk.clone()), opts()).unwrap_or_else(|e| panic!("open ({what}): {e}"))
}

fn differs(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        panic!("{what} differs from the model at byte {at}");
    }
}

fn verify(store: &Store, model: &Model, step: usize, op: &Op) {
    let ctx = || format!("after step {step} {op:?}");
    let vols: Vec<VolumeInfo> = model.volumes.values().map(|v| v.info.clone()).collect();
    assert_eq!(store.list_volumes(), vols, "volumes {}", ctx());
    let snaps: Vec<SnapshotInfo> = model.snapshots.values().map(|s| s.info.clone()).collect();
    assert_eq!(store.all_snapshots(), snaps, "snapshots {}", ctx());
    let tmpls: Vec<TemplateInfo> = model.templates.values().map(|t| t.info.clone()).collect();
    assert_eq!(store.list_templates(), tmpls, "templates {}", ctx());
    let auto = SnapshotQuery { kind: Some(SnapshotKind::Auto), held: Some(true), ..Default::default() };
    let held_autos = snaps.iter().filter(|s| s.kind == SnapshotKind::Auto && s.held).count();
    assert_eq!(store.search_snapshots(&auto).total, held_autos, "held automatic snapshots {}", ctx());
    for (id, v) in &model.volumes {
        let h = store.open_volume_with(*id, OpenMode::ReadOnly).unwrap();
        let mut buf = vec![0u8; v.data.len()];
        h.read_at(&mut buf, 0).unwrap_or_else(|e| panic!("reading volume {id} {}: {e}", ctx()));
        differs(&format!("volume {id} {}", ctx()), &buf, &v.data);
    }
    for (id, s) in &model.snapshots {
        let opened = store.open_snapshot(s.info.volume_id, *id);
        let Some(data) = &s.data else {
            expect_err(opened, is_invalid, &format!("opening {} snapshot {id} {}", s.info.status, ctx()));
            continue;
        };
        let h = opened.unwrap_or_else(|e| panic!("opening snapshot {id} {}: {e}", ctx()));
        assert_eq!(h.size(), data.len() as u64, "size of snapshot {id} {}", ctx());
        let mut buf = vec![0u8; data.len()];
        h.read_at(&mut buf, 0).unwrap_or_else(|e| panic!("reading snapshot {id} {}: {e}", ctx()));
        differs(&format!("snapshot {id} {}", ctx()), &buf, data);
    }
    for (id, t) in &model.templates {
        let h = store.open_template(*id).unwrap_or_else(|e| panic!("opening template {id} {}: {e}", ctx()));
        let mut buf = vec![0u8; t.data.len()];
        h.read_at(&mut buf, 0).unwrap_or_else(|e| panic!("reading template {id} {}: {e}", ctx()));
        differs(&format!("template {id} {}", ctx()), &buf, &t.data);
    }
    let report = store.check().unwrap_or_else(|e| panic!("check {}: {e}", ctx()));
    assert!(report.is_clean(), "check {}: {:?}", ctx(), report.problems);
}

/// The size to ask for when making a volume of `size` bytes from a
/// snapshot or template, and whether the call must succeed.
fn size_arg(size: u64, choice: Option<bool>) -> (u64, bool) {
    match choice {
        None => (0, true),
        Some(true) => (size, true),
        Some(false) => (size + BS, false),
    }
}

/// Applies `ops` (at most [`MAX_OPS`] of them) to a new store on a
/// [`SimDir`] and to the model, and panics at the first difference: an
/// unexpected result or error, a listing, a byte, or a `check()` problem.
pub fn run(ops: &[Op]) {
    let ops = &ops[..ops.len().min(MAX_OPS)];
    let mut disk = SimDir::new();
    let mut store = open(&disk, "new store");
    let mut model =
        Model { volumes: BTreeMap::new(), snapshots: BTreeMap::new(), templates: BTreeMap::new(), now: CLOCK_START };
    let mut names = 0u32;
    for (step, op) in ops.iter().enumerate() {
        names += 1;
        let full_vols = model.volumes.len() >= MAX_VOLUMES;
        let full_snaps = model.snapshots.len() >= MAX_SNAPSHOTS;
        match *op {
            Op::Create { blocks, tail } => {
                if full_vols {
                    continue;
                }
                let size = (1 + blocks as u64 % MAX_BLOCKS) * BS - tail as u64 % BS;
                let name = format!("v{names}");
                let info = store.create_volume(VolumeOptions::new(&name, size)).unwrap();
                model.add_volume(info, &name, None, vec![0; size as usize]);
            }
            Op::Write { vol, offset, len, seed } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let m = &mut model.volumes.get_mut(&id).unwrap().data;
                let off = offset as usize % m.len();
                let len = (len as usize).min(m.len() - off);
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect();
                store.open_volume(id).unwrap().write_at(&data, off as u64).unwrap();
                m[off..off + len].copy_from_slice(&data);
            }
            Op::Discard { vol, offset, len } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let m = &mut model.volumes.get_mut(&id).unwrap().data;
                let off = offset as usize % m.len();
                let len = len as usize % (m.len() - off + 1);
                store.open_volume(id).unwrap().discard(off as u64, len as u64).unwrap();
                m[off..off + len].fill(0);
            }
            Op::Flush { vol } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                store.open_volume(id).unwrap().flush().unwrap();
            }
            Op::Snapshot { vol, auto } | Op::Begin { vol, auto } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                if full_snaps {
                    continue;
                }
                let kind = if auto { SnapshotKind::Auto } else { SnapshotKind::Manual };
                let so = SnapshotOptions { kind, ..SnapshotOptions::named(format!("s{names}")) };
                let (s, status) = if matches!(op, Op::Begin { .. }) {
                    (store.begin_snapshot(id, so.clone()).unwrap(), SnapshotStatus::Creating)
                } else {
                    (store.create_snapshot(id, so.clone()).unwrap(), SnapshotStatus::Ready)
                };
                model.add_snapshot(&s, id, &so, status);
            }
            Op::Restore { vol, snap, safety } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let of_vol: Vec<SnapshotId> = model.snapshots_of(id).map(|s| s.info.id).collect();
                let Some(sid) = pick_of(&of_vol, snap) else { continue };
                if safety.is_some() && full_snaps {
                    continue;
                }
                let clash = safety == Some(true);
                let name = if clash { model.snapshots[&sid].info.name.clone() } else { format!("r{names}") };
                let safety_opts = safety.map(|_| SnapshotOptions::named(name));
                let ro = RestoreOptions { safety_snapshot: safety_opts.clone(), ..Default::default() };
                let r = store.restore_snapshot(id, sid, ro);
                let Some(data) = model.snapshots[&sid].data.clone() else {
                    expect_err(r, is_invalid, "restoring a snapshot that is not ready");
                    verify(&store, &model, step, op);
                    continue;
                };
                if clash {
                    expect_err(r, is_exists, "restore with a safety snapshot under a taken name");
                    verify(&store, &model, step, op);
                    continue;
                }
                let r = r.unwrap();
                assert_eq!((r.volume_id, r.snapshot_id), (id, sid));
                match (&r.safety_snapshot, &safety_opts) {
                    (Some(s), Some(o)) => model.add_snapshot(s, id, o, SnapshotStatus::Ready),
                    (None, None) => {}
                    other => panic!("safety snapshot: {other:?}"),
                }
                model.volumes.get_mut(&id).unwrap().data = data;
            }
            Op::Fork { vol, snap } => {
                if full_vols {
                    continue;
                }
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let of_vol: Vec<SnapshotId> = model.snapshots_of(id).map(|s| s.info.id).collect();
                let from = snap.and_then(|s| pick_of(&of_vol, s));
                let name = format!("f{names}");
                let fo = ForkOptions { name: name.clone(), from_snapshot: from, ..Default::default() };
                let r = store.fork_volume(id, fo);
                let (origin, data) = match from {
                    Some(s) => (VolumeOrigin::Snapshot(id, s), model.snapshots[&s].data.clone()),
                    None => (VolumeOrigin::Volume(id), Some(model.volumes[&id].data.clone())),
                };
                match data {
                    Some(data) => model.add_volume(r.unwrap(), &name, Some(origin), data),
                    None => expect_err(r, is_invalid, "forking a snapshot that is not ready"),
                }
            }
            Op::ForkSnapshot { snap } => {
                if full_vols {
                    continue;
                }
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let (vol, data) = (model.snapshots[&sid].info.volume_id, model.snapshots[&sid].data.clone());
                let name = format!("g{names}");
                let fo = ForkOptions { name: name.clone(), from_snapshot: Some(sid), ..Default::default() };
                let r = store.fork_volume(vol, fo);
                match data {
                    Some(data) => model.add_volume(r.unwrap(), &name, Some(VolumeOrigin::Snapshot(vol, sid)), data),
                    None => expect_err(r, is_invalid, "forking a snapshot that is not ready"),
                }
            }
            Op::FromSnapshot { snap, size } => {
                if full_vols {
                    continue;
                }
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let s = &model.snapshots[&sid];
                let (vol, data) = (s.info.volume_id, s.data.clone());
                let (asked, fits) = size_arg(s.info.size_bytes, size);
                let name = format!("n{names}");
                let r = store.create_volume_from_snapshot(sid, VolumeOptions::new(&name, asked));
                match data {
                    Some(data) if fits => {
                        model.add_volume(r.unwrap(), &name, Some(VolumeOrigin::Snapshot(vol, sid)), data)
                    }
                    Some(_) => expect_err(r, is_invalid, "a volume from a snapshot with a different size"),
                    None => expect_err(r, is_invalid, "a volume from a snapshot that is not ready"),
                }
            }
            Op::DeleteSnapshot { snap } => {
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let vol = model.snapshots[&sid].info.volume_id;
                if model.snapshots[&sid].info.held {
                    expect_err(store.delete_snapshot(vol, sid), |e| matches!(e, Error::Held { .. }), "deleting held");
                } else {
                    assert!(store.delete_snapshot(vol, sid).unwrap().existed);
                    assert!(!store.delete_snapshot(vol, sid).unwrap().existed);
                    model.snapshots.remove(&sid);
                }
            }
            Op::Hold { snap, hold } => {
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let s = model.snapshots.get_mut(&sid).unwrap();
                let vol = s.info.volume_id;
                let got = if hold { store.hold_snapshot(vol, sid) } else { store.release_snapshot(vol, sid) };
                s.info.held = hold;
                assert_eq!(got.unwrap(), s.info, "hold {hold}");
            }
            Op::Commit { snap, any } => {
                let Some(sid) = pick_for_commit(&model, snap, any) else { continue };
                let vol = model.snapshots[&sid].info.volume_id;
                let r = store.commit_snapshot(vol, sid);
                if !model.volumes.contains_key(&vol) {
                    expect_err(r, is_not_found, "committing a snapshot of a deleted volume");
                } else if model.snapshots[&sid].info.status != SnapshotStatus::Creating {
                    expect_err(r, is_invalid, "committing a snapshot that is not creating");
                } else {
                    let data = model.volumes[&vol].data.clone();
                    let s = model.snapshots.get_mut(&sid).unwrap();
                    s.info.status = SnapshotStatus::Ready;
                    s.data = Some(data);
                    assert_eq!(r.unwrap(), s.info, "committed snapshot");
                }
            }
            Op::Abort { snap, any } => {
                let Some(sid) = pick_for_commit(&model, snap, any) else { continue };
                let s = model.snapshots.get_mut(&sid).unwrap();
                let r = store.abort_snapshot(s.info.volume_id, sid);
                if s.info.status != SnapshotStatus::Creating {
                    expect_err(r, is_invalid, "aborting a snapshot that is not creating");
                } else {
                    s.info.status = SnapshotStatus::Failed;
                    assert_eq!(r.unwrap(), s.info, "aborted snapshot");
                }
            }
            Op::Group { a, b, clash } => {
                let (Some(va), Some(vb)) = (pick(&model.volumes, a), pick(&model.volumes, b)) else { continue };
                if model.snapshots.len() + 2 > MAX_SNAPSHOTS {
                    continue;
                }
                let taken = model.snapshots_of(va).map(|s| s.info.name.clone()).next();
                let name = if clash { taken.clone() } else { None };
                let so = SnapshotOptions::named(name.clone().unwrap_or_else(|| format!("c{names}")));
                let r = store.create_group_snapshot(&[va, vb], so.clone());
                if va == vb {
                    expect_err(r, is_invalid, "a group snapshot of one volume twice");
                } else if name.is_some() {
                    expect_err(r, is_exists, "a group snapshot under a taken name");
                } else {
                    let got = r.unwrap();
                    assert_eq!(got.len(), 2, "group snapshot");
                    model.add_snapshot(&got[0], va, &so, SnapshotStatus::Ready);
                    model.add_snapshot(&got[1], vb, &so, SnapshotStatus::Ready);
                }
            }
            Op::Template { snap, clash } => {
                if model.templates.len() >= MAX_TEMPLATES {
                    continue;
                }
                let Some(sid) = pick(&model.snapshots, snap) else { continue };
                let taken = model.templates.values().next().map(|t| t.info.name.clone());
                let name = if clash { taken } else { None };
                let to = TemplateOptions::named(name.clone().unwrap_or_else(|| format!("t{names}")));
                let r = store.create_template(sid, to.clone());
                let s = &model.snapshots[&sid];
                match (&s.data, name) {
                    (None, _) => expect_err(r, is_invalid, "a template from a snapshot that is not ready"),
                    (Some(_), Some(_)) => expect_err(r, is_exists, "a template under a taken name"),
                    (Some(data), None) => {
                        let got = r.unwrap();
                        let want = TemplateInfo {
                            id: got.id,
                            name: to.name,
                            description: String::new(),
                            size_bytes: data.len() as u64,
                            created_at: got.created_at,
                            source: (s.info.volume_id, sid),
                            labels: BTreeMap::new(),
                            owner: s.info.owner.clone(),
                        };
                        assert_eq!(got, want, "new template");
                        assert!(!model.templates.contains_key(&got.id), "template id {} reused", got.id);
                        model.templates.insert(got.id, Tmpl { info: got, data: data.clone() });
                    }
                }
            }
            Op::FromTemplate { tmpl, size } => {
                if full_vols {
                    continue;
                }
                let Some(tid) = pick(&model.templates, tmpl) else { continue };
                let data = model.templates[&tid].data.clone();
                let (asked, fits) = size_arg(data.len() as u64, size);
                let name = format!("m{names}");
                let r = store.create_volume_from_template(tid, VolumeOptions::new(&name, asked));
                if fits {
                    model.add_volume(r.unwrap(), &name, Some(VolumeOrigin::Template(tid)), data);
                } else {
                    expect_err(r, is_invalid, "a volume from a template with a different size");
                }
            }
            Op::DeleteTemplate { tmpl } => {
                let Some(tid) = pick(&model.templates, tmpl) else { continue };
                assert!(store.delete_template(tid).unwrap().existed);
                assert!(!store.delete_template(tid).unwrap().existed);
                model.templates.remove(&tid);
            }
            Op::SetPolicy { vol, policy } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let policy = policy.map(|(interval, keep_last, keep_for)| SnapshotPolicy {
                    interval_secs: interval as u64,
                    keep_last: keep_last.map(u32::from),
                    keep_for_secs: keep_for.map(u64::from),
                });
                let r = store.set_policy(id, policy);
                let valid =
                    policy.is_none_or(|p| p.interval_secs > 0 && p.keep_last != Some(0) && p.keep_for_secs != Some(0));
                if valid {
                    let v = model.volumes.get_mut(&id).unwrap();
                    v.info.policy = policy;
                    assert_eq!(r.unwrap(), v.info, "volume after set_policy");
                } else {
                    expect_err(r, is_invalid, "an invalid policy");
                }
            }
            Op::AddSchedule { vol, name, daily, at, keep } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let every = if daily {
                    let at = at % 1440;
                    Every::Daily { at: TimeOfDay::new((at / 60) as u8, (at % 60) as u8) }
                } else {
                    Every::Hourly { minute: (at % 60) as u8 }
                };
                let schedule = Schedule {
                    keep_last: keep.map(u32::from),
                    skip_unchanged: false,
                    ..Schedule::new(format!("s{}", name % 3), every, "UTC")
                };
                let r = store.add_schedule(id, schedule.clone(), model.now);
                let v = model.volumes.get_mut(&id).unwrap();
                if keep == Some(0) {
                    expect_err(r, is_invalid, "a schedule keeping 0");
                } else if v.info.schedules.iter().any(|s| s.schedule.name == schedule.name) {
                    expect_err(r, is_exists, "a taken schedule name");
                } else {
                    let info = ScheduleInfo { schedule, added_at: model.now, status: ScheduleStatus::default() };
                    assert_eq!(r.unwrap(), info, "added schedule");
                    v.info.schedules.push(info);
                }
            }
            Op::RemoveSchedule { vol, name } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                let name = format!("s{}", name % 3);
                let list = &mut model.volumes.get_mut(&id).unwrap().info.schedules;
                let before = list.len();
                list.retain(|s| s.schedule.name != name);
                assert_eq!(store.remove_schedule(id, &name).unwrap().existed, list.len() < before, "remove {name}");
            }
            Op::SnapshotWith { vol, expires, key } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                if full_snaps {
                    continue;
                }
                let so = SnapshotOptions {
                    expires_at: expires.map(|e| model.now + u64::from(e) + 1),
                    idempotency_key: key.map(|k| format!("k{}", k % 3)),
                    ..SnapshotOptions::named(format!("s{names}"))
                };
                let got = store.create_snapshot(id, so.clone()).unwrap();
                // The model's steps take seconds, far inside the window.
                let first = model
                    .snapshots_of(id)
                    .find(|s| so.idempotency_key.is_some() && s.info.idempotency_key == so.idempotency_key);
                match first {
                    Some(first) => assert_eq!(got, first.info, "a repeated idempotency key"),
                    None => model.add_snapshot(&got, id, &so, SnapshotStatus::Ready),
                }
            }
            Op::RunPolicies { advance } => {
                let schedules: usize = model.volumes.values().map(|v| v.info.schedules.len()).sum();
                let due = model.volumes.values().filter(|v| v.info.policy.is_some()).count() + schedules;
                if model.snapshots.len() + due > MAX_SNAPSHOTS + MAX_VOLUMES {
                    continue;
                }
                model.now += u64::from(advance);
                model.run_policies(&store);
            }
            Op::DeleteVolume { vol } => {
                let Some(id) = pick(&model.volumes, vol) else { continue };
                store.delete_volume(id).unwrap();
                model.volumes.remove(&id);
                model.fail_creating(Some(id));
            }
            Op::Checkpoint => store.checkpoint().unwrap(),
            Op::Reopen => {
                drop(store);
                store = open(&disk, "reopen");
                model.fail_creating(None);
            }
            Op::CrashAfterFlush { vol, seed } => {
                if let Some(id) = pick(&model.volumes, vol) {
                    store.open_volume(id).unwrap().flush().unwrap();
                }
                let next = disk.crash(LossMode::DropAll, seed as u64);
                drop(store);
                disk = next;
                store = open(&disk, "after crash");
                model.fail_creating(None);
            }
        }
        verify(&store, &model, step, op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_round_trip_through_bytes() {
        let ops = vec![
            Op::Create { blocks: 9, tail: 300 },
            Op::Write { vol: 1, offset: 70_000, len: 5000, seed: 3 },
            Op::Restore { vol: 0, snap: 2, safety: Some(true) },
            Op::Fork { vol: 0, snap: None },
            Op::SetPolicy { vol: 2, policy: Some((60, None, Some(7))) },
            Op::SetPolicy { vol: 2, policy: None },
            Op::CrashAfterFlush { vol: 4, seed: 200 },
            Op::Reopen,
            Op::AddSchedule { vol: 1, name: 2, daily: true, at: 600, keep: Some(3) },
            Op::RemoveSchedule { vol: 1, name: 2 },
            Op::SnapshotWith { vol: 0, expires: Some(60), key: None },
            Op::SnapshotWith { vol: 0, expires: None, key: Some(4) },
        ];
        assert_eq!(Op::decode_all(&Op::encode_all(&ops)), ops);
    }

    #[test]
    fn any_bytes_decode_and_short_inputs_read_as_zeroes() {
        assert!(Op::decode_all(&[]).is_empty());
        assert_eq!(Op::decode_all(&[0]), vec![Op::Create { blocks: 0, tail: 0 }]);
        assert_eq!(Op::decode_all(&[0xff; 10_000]).len(), MAX_OPS);
    }
}
