//! The catalog: which volumes and snapshots exist, their names, sizes and
//! the roots of their extent trees. It is saved whole at every checkpoint;
//! between checkpoints its changes travel through the WAL.

use crate::error::{Error, Result};
use crate::format::{Crc, Dec, Enc};
use crate::space::TableRoot;
use crate::tree::NodeAddr;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod limits;
mod schedule;

pub use schedule::{
    Every, RunResult, Schedule, ScheduleInfo, ScheduleStatus, TimeOfDay, Weekday, FAILING_AFTER, MAX_SCHEDULES,
    RESERVED_LABEL_PREFIX, SCHEDULE_LABEL,
};

macro_rules! typed_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        ///
        /// Displays as
        #[doc = concat!("`", $prefix, "-N`")]
        /// and parses back from that form (or from the bare number).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub(crate) u64);

        impl $name {
            /// The numeric value, stable for the life of the store.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "-{}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                let digits = s.strip_prefix(concat!($prefix, "-")).unwrap_or(s);
                digits.parse::<u64>().ok().filter(|&n| n > 0).map($name).ok_or_else(|| {
                    Error::invalid(format!(concat!("{:?} is not a ", $prefix, " id (expected ", $prefix, "-N)"), s))
                })
            }
        }
    };
}

typed_id!(VolumeId, "vol", "Identifies a volume.");
typed_id!(SnapshotId, "snap", "Identifies a snapshot.");
typed_id!(TemplateId, "tmpl", "Identifies a template.");

/// Reads a one-byte code into an enum, or reports an unknown code.
macro_rules! coded_enum {
    ($name:ident { $($variant:ident = $code:literal),+ $(,)? }) => {
        impl $name {
            pub(crate) fn code(self) -> u8 {
                match self { $($name::$variant => $code),+ }
            }
            pub(crate) fn from_code(c: u8, d: &Dec<'_>) -> Result<Self> {
                match c {
                    $($code => Ok($name::$variant),)+
                    _ => Err(d.bad(format!(concat!("unknown ", stringify!($name), " code {}"), c))),
                }
            }
        }
    };
}

/// Who may open a volume for writing at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccessMode {
    /// One writable handle at a time (read-only handles are unlimited). The default.
    #[default]
    ReadWriteOnce,
    /// Any number of writable handles.
    ReadWriteMany,
    /// Read-only handles only; every write is refused.
    ReadOnlyMany,
}

coded_enum!(AccessMode { ReadWriteOnce = 0, ReadWriteMany = 1, ReadOnlyMany = 2 });

/// Who took a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SnapshotKind {
    /// Taken on request. Retention never deletes it. The default.
    #[default]
    Manual,
    /// Taken by a volume's snapshot policy; retention prunes it.
    Auto,
}

coded_enum!(SnapshotKind { Manual = 0, Auto = 1 });

/// Where a snapshot is in its life.
///
/// A snapshot taken in one call ([`crate::Store::create_snapshot`]) is born
/// `Ready`. One taken in two steps ([`crate::Store::begin_snapshot`], then
/// [`crate::Store::commit_snapshot`]) is `Creating` in between; a crash or
/// [`crate::Store::abort_snapshot`] turns it `Failed`, never half there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SnapshotStatus {
    /// Registered, its point in time not yet captured; holds no data.
    Creating,
    /// Captured and durable: can be read, restored, forked.
    #[default]
    Ready,
    /// Never captured (aborted, or interrupted by a crash); holds no data
    /// and can only be deleted.
    Failed,
}

coded_enum!(SnapshotStatus { Creating = 0, Ready = 1, Failed = 2 });

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotKind::Manual => "manual",
            SnapshotKind::Auto => "auto",
        })
    }
}

impl FromStr for SnapshotKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "manual" => Ok(SnapshotKind::Manual),
            "auto" => Ok(SnapshotKind::Auto),
            _ => Err(Error::invalid(format!("{s:?} is not a snapshot kind (manual or auto)"))),
        }
    }
}

impl fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotStatus::Creating => "creating",
            SnapshotStatus::Ready => "ready",
            SnapshotStatus::Failed => "failed",
        })
    }
}

impl FromStr for SnapshotStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "creating" => Ok(SnapshotStatus::Creating),
            "ready" => Ok(SnapshotStatus::Ready),
            "failed" => Ok(SnapshotStatus::Failed),
            _ => Err(Error::invalid(format!("{s:?} is not a snapshot status (creating, ready or failed)"))),
        }
    }
}

/// Where a snapshot's copy on a backup target stands (the `cowvol-backup`
/// crate sets it). It is kept beside [`SnapshotStatus`], not in it: a
/// backup that fails leaves the snapshot itself ready to read, restore and
/// back up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackupState {
    /// A backup has started and not yet finished. A store that opens with a
    /// snapshot in this state turns it `Failed` (the process that ran the
    /// backup is gone); the target stays readable either way.
    InProgress,
    /// The backup, manifest last, is durable on the target.
    BackedUp,
    /// The last backup attempt failed; [`BackupRecord::reason`] says why.
    Failed,
}

coded_enum!(BackupState { InProgress = 0, BackedUp = 1, Failed = 2 });

impl fmt::Display for BackupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupState::InProgress => "backing-up",
            BackupState::BackedUp => "backed-up",
            BackupState::Failed => "backup-failed",
        })
    }
}

impl FromStr for BackupState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "backing-up" | "in-progress" => Ok(BackupState::InProgress),
            "backed-up" | "backedup" => Ok(BackupState::BackedUp),
            "backup-failed" | "failed" => Ok(BackupState::Failed),
            _ => Err(Error::invalid(format!("{s:?} is not a backup state (backing-up, backed-up or backup-failed)"))),
        }
    }
}

/// The last backup of a snapshot: its state, where it went, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// In progress, backed up, or failed.
    pub state: BackupState,
    /// The target, as a URL without credentials (at most
    /// [`limits::MAX_BACKUP_TEXT_BYTES`]).
    pub target: String,
    /// The backup's id on the target; empty until one is known.
    pub backup_id: String,
    /// Why the backup failed; empty unless `state` is `Failed`.
    pub reason: String,
    /// When the state was set (seconds since the Unix epoch).
    pub at: u64,
}

impl BackupRecord {
    fn encode(&self, e: &mut Enc) {
        e.u8(self.state.code());
        e.str(&self.target);
        e.str(&self.backup_id);
        e.str(&self.reason);
        e.u64(self.at);
    }

    fn decode(d: &mut Dec<'_>) -> Result<BackupRecord> {
        Ok(BackupRecord {
            state: BackupState::from_code(d.u8()?, d)?,
            target: d.str()?,
            backup_id: d.str()?,
            reason: d.str()?,
            at: d.u64()?,
        })
    }
}

/// What a volume's tree was copied from when it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeOrigin {
    /// A fork of another volume's live state.
    Volume(VolumeId),
    /// Made from a snapshot (a fork of it, or a volume created from it).
    Snapshot(VolumeId, SnapshotId),
    /// Made from a template.
    Template(TemplateId),
}

/// A volume's automatic snapshots: how often, and how long they are kept.
///
/// Retention prunes an `Auto` snapshot only when every rule that is set
/// lets it go: it is not among the newest `keep_last`, and it is older
/// than `keep_for_secs`. Manual and held snapshots are never pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotPolicy {
    /// Seconds between automatic snapshots (at least 1).
    pub interval_secs: u64,
    /// Keep at least the newest N automatic snapshots.
    pub keep_last: Option<u32>,
    /// Keep automatic snapshots younger than this many seconds.
    pub keep_for_secs: Option<u64>,
}

impl SnapshotPolicy {
    pub(crate) fn encode(p: &Option<SnapshotPolicy>, e: &mut Enc) {
        let Some(p) = p else {
            e.u8(0);
            return;
        };
        e.u8(1 | u8::from(p.keep_last.is_some()) << 1 | u8::from(p.keep_for_secs.is_some()) << 2);
        e.u64(p.interval_secs);
        e.u32(p.keep_last.unwrap_or(0));
        e.u64(p.keep_for_secs.unwrap_or(0));
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<Option<SnapshotPolicy>> {
        let flags = d.u8()?;
        if flags == 0 {
            return Ok(None);
        }
        if flags & !7 != 0 || flags & 1 == 0 {
            return Err(d.bad(format!("bad policy flags {flags:#x}")));
        }
        let interval_secs = d.u64()?;
        let keep_last = d.u32()?;
        let keep_for = d.u64()?;
        Ok(Some(SnapshotPolicy {
            interval_secs,
            keep_last: (flags & 2 != 0).then_some(keep_last),
            keep_for_secs: (flags & 4 != 0).then_some(keep_for),
        }))
    }
}

fn encode_origin(o: &Option<VolumeOrigin>, e: &mut Enc) {
    match o {
        None => e.u8(0),
        Some(VolumeOrigin::Volume(v)) => {
            e.u8(1);
            e.u64(v.0);
        }
        Some(VolumeOrigin::Snapshot(v, s)) => {
            e.u8(2);
            e.u64(v.0);
            e.u64(s.0);
        }
        Some(VolumeOrigin::Template(t)) => {
            e.u8(3);
            e.u64(t.0);
        }
    }
}

fn decode_origin(d: &mut Dec<'_>) -> Result<Option<VolumeOrigin>> {
    Ok(match d.u8()? {
        0 => None,
        1 => Some(VolumeOrigin::Volume(VolumeId(d.u64()?))),
        2 => Some(VolumeOrigin::Snapshot(VolumeId(d.u64()?), SnapshotId(d.u64()?))),
        3 => Some(VolumeOrigin::Template(TemplateId(d.u64()?))),
        t => return Err(d.bad(format!("unknown volume origin {t}"))),
    })
}

fn encode_labels(labels: &BTreeMap<String, String>, e: &mut Enc) {
    e.u32(labels.len() as u32);
    for (k, v) in labels {
        e.str(k);
        e.str(v);
    }
}

fn decode_labels(d: &mut Dec<'_>) -> Result<BTreeMap<String, String>> {
    let n = d.u32()?;
    let mut labels = BTreeMap::new();
    for _ in 0..n {
        let k = d.str()?;
        labels.insert(k, d.str()?);
    }
    Ok(labels)
}

/// Seconds since the Unix epoch, as stored in the catalog.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a volume is, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its id.
    pub id: VolumeId,
    /// Its unique name.
    pub name: String,
    /// Logical size in bytes.
    pub size_bytes: u64,
    /// Who may write to it.
    pub access_mode: AccessMode,
    /// Read cache budget in bytes, as given at creation.
    pub cache_bytes: u64,
    /// Unflushed bytes after which the engine flushes on its own.
    pub write_buffer_bytes: u64,
    /// When it was created (seconds since the Unix epoch).
    pub created_at: u64,
    /// The volume, snapshot or template its tree was copied from, if any.
    pub origin: Option<VolumeOrigin>,
    /// Its interval snapshot policy, if any.
    pub policy: Option<SnapshotPolicy>,
    /// Free-form owner; empty when unset.
    pub owner: String,
    /// Its calendar snapshot schedules, in the order they were added.
    pub schedules: Vec<ScheduleInfo>,
}

/// What a snapshot is, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its id, unique in the store.
    pub id: SnapshotId,
    /// The volume it was taken of. The snapshot outlives that volume.
    pub volume_id: VolumeId,
    /// That volume's name when the snapshot was taken (kept after the
    /// volume is deleted, so its snapshots stay findable by name).
    pub volume_name: String,
    /// Its name, unique among the snapshots of its volume.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The volume's logical size when the snapshot was taken.
    pub size_bytes: u64,
    /// When it was taken (seconds since the Unix epoch).
    pub created_at: u64,
    /// Free-form owner; empty when unset.
    pub owner: String,
    /// Free key/value labels.
    pub labels: BTreeMap<String, String>,
    /// Taken on request or by a policy.
    pub kind: SnapshotKind,
    /// Where it is in its life.
    pub status: SnapshotStatus,
    /// A held snapshot cannot be deleted, by hand or by retention, until
    /// the hold is released.
    pub held: bool,
    /// When set, the policy pass deletes the snapshot once this time
    /// (seconds since the Unix epoch) has passed, unless it is held.
    pub expires_at: Option<u64>,
    /// The name of the volume's schedule that took it, for automatic
    /// snapshots taken by a calendar schedule.
    pub schedule: Option<String>,
    /// The idempotency key it was created with (see
    /// [`crate::SnapshotOptions::idempotency_key`]).
    pub idempotency_key: Option<String>,
    /// Its last backup to a target off the disk, if any.
    pub backup: Option<BackupRecord>,
}

impl SnapshotInfo {
    /// Whether its data can be read, restored or forked.
    pub fn is_ready(&self) -> bool {
        self.status == SnapshotStatus::Ready
    }
}

/// A read-only, named base image made from a snapshot. It outlives the
/// snapshot and the volume it came from; volumes made from it share its
/// blocks, so deleting it frees nothing they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    /// Its id.
    pub id: TemplateId,
    /// Unique among templates.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Logical size in bytes (the snapshot's).
    pub size_bytes: u64,
    /// When it was made (seconds since the Unix epoch).
    pub created_at: u64,
    /// The volume and snapshot it was made from (which may since be gone).
    pub source: (VolumeId, SnapshotId),
    /// Free key/value labels.
    pub labels: BTreeMap<String, String>,
    /// Free-form owner; empty when unset.
    pub owner: String,
}

impl TemplateInfo {
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u64(self.id.0);
        e.str(&self.name);
        e.str(&self.description);
        e.u64(self.size_bytes);
        e.u64(self.created_at);
        e.u64(self.source.0 .0);
        e.u64(self.source.1 .0);
        encode_labels(&self.labels, e);
        e.str(&self.owner);
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<TemplateInfo> {
        Ok(TemplateInfo {
            id: TemplateId(d.u64()?),
            name: d.str()?,
            description: d.str()?,
            size_bytes: d.u64()?,
            created_at: d.u64()?,
            source: (VolumeId(d.u64()?), SnapshotId(d.u64()?)),
            labels: decode_labels(d)?,
            owner: decode_owner(d)?,
        })
    }
}

/// An owner field, which version 3 added to volumes and templates.
fn decode_owner(d: &mut Dec<'_>) -> Result<String> {
    if d.version >= 3 {
        d.str()
    } else {
        Ok(String::new())
    }
}

impl VolumeInfo {
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u64(self.id.0);
        e.str(&self.name);
        e.u64(self.size_bytes);
        e.u8(self.access_mode.code());
        e.u64(self.cache_bytes);
        e.u64(self.write_buffer_bytes);
        e.u64(self.created_at);
        encode_origin(&self.origin, e);
        SnapshotPolicy::encode(&self.policy, e);
        e.str(&self.owner);
        schedule::encode_schedules(&self.schedules, e);
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<VolumeInfo> {
        let id = VolumeId(d.u64()?);
        let name = d.str()?;
        let size_bytes = d.u64()?;
        let access_mode = AccessMode::from_code(d.u8()?, d)?;
        let cache_bytes = d.u64()?;
        let write_buffer_bytes = d.u64()?;
        let created_at = d.u64()?;
        let origin = decode_origin(d)?;
        let policy = SnapshotPolicy::decode(d)?;
        let owner = decode_owner(d)?;
        let schedules = schedule::decode_schedules(d)?;
        Ok(VolumeInfo {
            id,
            name,
            size_bytes,
            access_mode,
            cache_bytes,
            write_buffer_bytes,
            created_at,
            origin,
            policy,
            owner,
            schedules,
        })
    }
}

impl SnapshotInfo {
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u64(self.id.0);
        e.u64(self.volume_id.0);
        e.str(&self.volume_name);
        e.str(&self.name);
        e.str(&self.description);
        e.u64(self.size_bytes);
        e.u64(self.created_at);
        e.str(&self.owner);
        encode_labels(&self.labels, e);
        e.u8(self.kind.code());
        e.u8(self.status.code());
        e.u8(u8::from(self.held));
        encode_snapshot_extras(self, e);
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<SnapshotInfo> {
        let id = SnapshotId(d.u64()?);
        let volume_id = VolumeId(d.u64()?);
        let volume_name = d.str()?;
        let name = d.str()?;
        let description = d.str()?;
        let size_bytes = d.u64()?;
        let created_at = d.u64()?;
        let owner = d.str()?;
        let labels = decode_labels(d)?;
        let kind = SnapshotKind::from_code(d.u8()?, d)?;
        let status = SnapshotStatus::from_code(d.u8()?, d)?;
        let held = match d.u8()? {
            0 => false,
            1 => true,
            b => return Err(d.bad(format!("bad hold flag {b}"))),
        };
        let (expires_at, schedule, idempotency_key, backup) = decode_snapshot_extras(d)?;
        Ok(SnapshotInfo {
            id,
            volume_id,
            volume_name,
            name,
            description,
            size_bytes,
            created_at,
            owner,
            labels,
            kind,
            status,
            held,
            expires_at,
            schedule,
            idempotency_key,
            backup,
        })
    }
}

/// The snapshot fields version 4 added after the hold flag: a flags byte
/// saying which are present (1: expiry, 2: schedule, 4: idempotency key,
/// 8: backup record), then the present ones in that order. Flag 8 was
/// added without a version of its own: it is read in version 4 and
/// version 5 records alike, and stores without backups never set it, so
/// they read the same as before (docs/format.md, snapshot record).
fn encode_snapshot_extras(s: &SnapshotInfo, e: &mut Enc) {
    let flags = u8::from(s.expires_at.is_some())
        | u8::from(s.schedule.is_some()) << 1
        | u8::from(s.idempotency_key.is_some()) << 2
        | u8::from(s.backup.is_some()) << 3;
    e.u8(flags);
    if let Some(t) = s.expires_at {
        e.u64(t);
    }
    for text in [&s.schedule, &s.idempotency_key].into_iter().flatten() {
        e.str(text);
    }
    if let Some(b) = &s.backup {
        b.encode(e);
    }
}

type SnapshotExtras = (Option<u64>, Option<String>, Option<String>, Option<BackupRecord>);

fn decode_snapshot_extras(d: &mut Dec<'_>) -> Result<SnapshotExtras> {
    if d.version < 4 {
        return Ok((None, None, None, None));
    }
    let flags = d.u8()?;
    if flags & !15 != 0 {
        return Err(d.bad(format!("bad snapshot flags {flags:#x}")));
    }
    let expires_at = if flags & 1 != 0 { Some(d.u64()?) } else { None };
    let schedule = if flags & 2 != 0 { Some(d.str()?) } else { None };
    let key = if flags & 4 != 0 { Some(d.str()?) } else { None };
    let backup = if flags & 8 != 0 { Some(BackupRecord::decode(d)?) } else { None };
    Ok((expires_at, schedule, key, backup))
}

/// The catalog as saved at a checkpoint: every record plus the page of its
/// tree root (0 for an empty tree).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CatalogImage {
    pub(crate) next_volume: u64,
    pub(crate) next_snapshot: u64,
    pub(crate) next_template: u64,
    pub(crate) volumes: Vec<(VolumeInfo, u64)>,
    pub(crate) snapshots: Vec<(SnapshotInfo, u64)>,
    pub(crate) templates: Vec<(TemplateInfo, u64)>,
    /// The reference table (version 5 on; older catalogs have none, and
    /// open counts references by walking the trees).
    pub(crate) table: Option<TableRoot>,
    /// Subtrees no longer in any tree whose references are not yet
    /// dropped: (node address, level). Version 5 on; the node's delta
    /// record version 10 on.
    pub(crate) garbage: Vec<(NodeAddr, u32)>,
}

const CATALOG_MAGIC: u32 = u32::from_le_bytes(*b"CVCT");

impl CatalogImage {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u32(CATALOG_MAGIC);
        e.u64(self.next_volume);
        e.u64(self.next_snapshot);
        e.u64(self.next_template);
        e.u32(self.volumes.len() as u32);
        for (v, root) in &self.volumes {
            v.encode(&mut e);
            e.u64(*root);
        }
        e.u32(self.snapshots.len() as u32);
        for (s, root) in &self.snapshots {
            s.encode(&mut e);
            e.u64(*root);
        }
        e.u32(self.templates.len() as u32);
        for (t, root) in &self.templates {
            t.encode(&mut e);
            e.u64(*root);
        }
        self.table.clone().unwrap_or_default().encode(&mut e);
        e.u32(self.garbage.len() as u32);
        for &(addr, level) in &self.garbage {
            e.u64(addr.page);
            e.u32(level);
            e.u64(addr.delta);
        }
        e.buf
    }

    pub(crate) fn decode(buf: &[u8], crc: u32, location: &str, version: u32) -> Result<CatalogImage> {
        Crc(crc).verify(buf, "catalog", || location.to_string())?;
        let mut d = Dec::of_version(buf, "catalog", version);
        if d.u32()? != CATALOG_MAGIC {
            return Err(d.bad("bad magic"));
        }
        let next_volume = d.u64()?;
        let next_snapshot = d.u64()?;
        let next_template = d.u64()?;
        let nv = d.u32()?;
        let mut volumes = Vec::new();
        for _ in 0..nv {
            let v = VolumeInfo::decode(&mut d)?;
            volumes.push((v, d.u64()?));
        }
        let ns = d.u32()?;
        let mut snapshots = Vec::new();
        for _ in 0..ns {
            let s = SnapshotInfo::decode(&mut d)?;
            snapshots.push((s, d.u64()?));
        }
        let nt = d.u32()?;
        let mut templates = Vec::new();
        for _ in 0..nt {
            let t = TemplateInfo::decode(&mut d)?;
            templates.push((t, d.u64()?));
        }
        let (table, garbage) =
            if version >= 5 { (Some(TableRoot::decode(&mut d)?), decode_garbage(&mut d)?) } else { (None, Vec::new()) };
        if d.remaining() != 0 {
            return Err(d.bad("trailing bytes"));
        }
        Ok(CatalogImage { next_volume, next_snapshot, next_template, volumes, snapshots, templates, table, garbage })
    }
}

fn decode_garbage(d: &mut Dec<'_>) -> Result<Vec<(NodeAddr, u32)>> {
    let n = d.u32()? as usize;
    let with_delta = d.version >= 10;
    let entry = if with_delta { 20 } else { 12 };
    if n > d.remaining() / entry {
        return Err(d.bad(format!("{n} garbage entries do not fit")));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (page, level) = (d.u64()?, d.u32()?);
        let delta = if with_delta { d.u64()? } else { 0 };
        // Record addresses are 48-bit wherever a node names one; a larger
        // one here is damage, and would overflow when turned into bytes.
        if delta >> 48 != 0 {
            return Err(d.bad(format!("garbage record address {delta:#x} is past 48 bits")));
        }
        out.push((NodeAddr { page, delta }, level));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_and_parse() {
        assert_eq!(VolumeId(3).to_string(), "vol-3");
        assert_eq!("vol-3".parse::<VolumeId>().unwrap(), VolumeId(3));
        assert_eq!("7".parse::<SnapshotId>().unwrap(), SnapshotId(7));
        assert!("snap-x".parse::<SnapshotId>().is_err());
        assert!("vol-0".parse::<VolumeId>().is_err());
    }

    #[test]
    fn catalog_round_trips() {
        let v = VolumeInfo {
            id: VolumeId(1),
            name: "db".into(),
            size_bytes: 1 << 30,
            access_mode: AccessMode::ReadWriteMany,
            cache_bytes: 0,
            write_buffer_bytes: 64 << 20,
            created_at: 17,
            origin: Some(VolumeOrigin::Snapshot(VolumeId(4), SnapshotId(2))),
            policy: Some(SnapshotPolicy { interval_secs: 3600, keep_last: Some(24), keep_for_secs: None }),
            owner: "tenant-7".into(),
            schedules: vec![ScheduleInfo {
                schedule: Schedule {
                    keep_last: Some(7),
                    keep_for_secs: Some(86_400),
                    labels: [("tier".to_string(), "gold".to_string())].into(),
                    ..Schedule::new("daily", Every::Weekly { on: Weekday::Sunday, at: TimeOfDay::new(3, 30) }, "UTC")
                },
                added_at: 16,
                status: ScheduleStatus {
                    last_slot: Some(20),
                    last_run_at: None,
                    last_result: Some(RunResult::Created(SnapshotId(2))),
                    last_error: "busy".into(),
                    consecutive_failures: 3,
                },
            }],
        };
        let s = SnapshotInfo {
            id: SnapshotId(2),
            volume_id: VolumeId(1),
            volume_name: "db".into(),
            name: "s".into(),
            description: "before upgrade".into(),
            size_bytes: 1 << 30,
            created_at: 18,
            owner: "ops".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            kind: SnapshotKind::Auto,
            status: SnapshotStatus::Failed,
            held: true,
            expires_at: Some(99),
            schedule: Some("daily".into()),
            idempotency_key: None,
            backup: Some(BackupRecord {
                state: BackupState::Failed,
                target: "s3://backups/db".into(),
                backup_id: String::new(),
                reason: "the target refused the upload".into(),
                at: 21,
            }),
        };
        let t = TemplateInfo {
            id: TemplateId(5),
            name: "base".into(),
            description: "debian".into(),
            size_bytes: 1 << 30,
            created_at: 19,
            source: (VolumeId(1), SnapshotId(2)),
            labels: BTreeMap::new(),
            owner: "platform".into(),
        };
        let img = CatalogImage {
            next_volume: 2,
            next_snapshot: 3,
            next_template: 6,
            volumes: vec![(v, 9)],
            snapshots: vec![(s, 0)],
            templates: vec![(t, 9)],
            table: Some(TableRoot {
                covered_pages: 5000,
                index: vec![crate::space::IndexRef { page: 31, crc: 7 }],
                changes: vec![crate::space::ChunkRef {
                    runs: vec![crate::space::Run { start: 40, len: 2 }],
                    entries: 500,
                    fences: vec![
                        crate::space::Fence { first_group: 0, crc: 9 },
                        crate::space::Fence { first_group: 3, crc: 10 },
                    ],
                    crc: 0,
                }],
            }),
            garbage: vec![(NodeAddr::whole(44), 1), (NodeAddr { page: 45, delta: 46 * 256 + 2 }, 0)],
        };
        let bytes = img.encode();
        let crc = Crc::of(&bytes).0;
        let v = crate::format::FORMAT_VERSION;
        assert_eq!(CatalogImage::decode(&bytes, crc, "t", v).unwrap(), img);
        assert!(CatalogImage::decode(&bytes[..bytes.len() - 1], Crc::of(&bytes[..bytes.len() - 1]).0, "t", v).is_err());
        // Read as an older version, the newer fields are not there: the
        // bytes do not parse.
        assert!(CatalogImage::decode(&bytes, crc, "t", 2).is_err());
        assert!(CatalogImage::decode(&bytes, crc, "t", 3).is_err());
        assert!(CatalogImage::decode(&bytes, crc, "t", 4).is_err());
        assert!(CatalogImage::decode(&bytes, crc, "t", 7).is_err(), "version 7 has no change log");
        assert!(CatalogImage::decode(&bytes, crc, "t", 8).is_err(), "version 8 has no fences");
        // A garbage record address past the 48 bits nodes give it is
        // damage, refused as such rather than turned into a wrong page.
        let far = CatalogImage { garbage: vec![(NodeAddr { page: 45, delta: 1 << 48 }, 0)], ..img };
        let bytes = far.encode();
        let err = CatalogImage::decode(&bytes, Crc::of(&bytes).0, "t", v).unwrap_err();
        assert!(matches!(err, crate::Error::Corruption { .. }), "{err}");
    }

    /// The backup record is an extras flag, not a format version: a
    /// version-4 catalog (no reference table or garbage list at its end)
    /// holding one reads back with it, as a version-5 catalog does.
    #[test]
    fn a_backup_record_reads_from_version_4_and_version_5_catalogs() {
        let backup = BackupRecord {
            state: BackupState::BackedUp,
            target: "file:///srv/backups".into(),
            backup_id: "3f0c9a1e5b7d2c40".into(),
            reason: String::new(),
            at: 1_800_000_000,
        };
        let s = SnapshotInfo {
            id: SnapshotId(2),
            volume_id: VolumeId(1),
            volume_name: "db".into(),
            name: "nightly".into(),
            description: String::new(),
            size_bytes: 1 << 20,
            created_at: 17,
            owner: String::new(),
            labels: BTreeMap::new(),
            kind: SnapshotKind::Manual,
            status: SnapshotStatus::Ready,
            held: false,
            expires_at: None,
            schedule: None,
            idempotency_key: None,
            backup: Some(backup),
        };
        let v4 = CatalogImage {
            next_volume: 2,
            next_snapshot: 3,
            next_template: 1,
            snapshots: vec![(s, 9)],
            ..Default::default()
        };
        let v5 =
            CatalogImage { table: Some(TableRoot::default()), garbage: vec![(NodeAddr::whole(12), 0)], ..v4.clone() };
        let bytes = v5.encode();
        let v = crate::format::FORMAT_VERSION;
        assert_eq!(CatalogImage::decode(&bytes, Crc::of(&bytes).0, "t", v).unwrap(), v5);
        // Version 5 appended an empty table (u64 covered pages, u32 index
        // count; version 8 a u32 count of change log chunks) and a garbage
        // list (u32 count, one u64 page and u32 level, and from version 10
        // a u64 delta): without them the bytes are a version-4 catalog.
        let old = &bytes[..bytes.len() - (8 + 4 + 4 + 4 + 20)];
        assert_eq!(CatalogImage::decode(old, Crc::of(old).0, "t", 4).unwrap(), v4);
    }
}
