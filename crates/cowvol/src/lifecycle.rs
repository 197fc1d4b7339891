//! The snapshot lifecycle platforms build on: two-step snapshots with a
//! durable status, holds, group snapshots, search, templates, volumes made
//! from snapshots and templates, and scheduled snapshots with retention.
//!
//! Every change here is one logged record, applied and made durable in one
//! step like the core operations in `store`: a crash leaves each change
//! wholly done or wholly undone, and a snapshot left `Creating` is marked
//! `Failed` when the store opens.

use crate::catalog::limits;
use crate::catalog::{
    now_secs, BackupRecord, BackupState, ScheduleStatus, SnapshotId, SnapshotInfo, SnapshotKind, SnapshotPolicy,
    SnapshotStatus, TemplateId, TemplateInfo, VolumeId, VolumeInfo, VolumeOrigin,
};
use crate::engine::record::Record;
use crate::engine::{try_admin, Engine, State, VolRuntime};
use crate::error::{Error, Result};
use crate::options::{Deleted, SnapshotOptions, VolumeOptions};
use crate::store::Store;
use crate::volume::{Target, Volume};
use std::collections::BTreeMap;
use std::sync::Arc;

mod schedules;

/// Label that automatic snapshots carry, naming the policy run that took them.
pub const AUTO_LABEL: &str = "cowvol.policy";

/// How a template is made.
#[derive(Debug, Clone, Default)]
pub struct TemplateOptions {
    /// Unique among templates; limits as [`SnapshotOptions::name`].
    pub name: String,
    /// Free text; limits as [`SnapshotOptions::description`].
    pub description: String,
    /// Free key/value labels; limits as [`SnapshotOptions::labels`].
    pub labels: BTreeMap<String, String>,
    /// Owner of the template; empty (the default) means its snapshot's owner.
    pub owner: String,
}

impl TemplateOptions {
    /// A template named `name` with no description.
    pub fn named(name: impl Into<String>) -> Self {
        TemplateOptions { name: name.into(), ..Default::default() }
    }
}

/// Which snapshots [`Store::search_snapshots`] returns. Every field that is
/// set must match; the default matches everything.
#[derive(Debug, Clone, Default)]
pub struct SnapshotQuery {
    /// Substring of the snapshot's name, compared case-insensitively.
    pub name_contains: Option<String>,
    /// Snapshots of this volume (live or deleted).
    pub volume: Option<VolumeId>,
    /// Snapshots of a volume that had this name when they were taken.
    pub volume_name: Option<String>,
    /// Manual or automatic.
    pub kind: Option<SnapshotKind>,
    /// Creating, ready or failed.
    pub status: Option<SnapshotStatus>,
    /// Exact owner.
    pub owner: Option<String>,
    /// Labels the snapshot must carry with exactly these values.
    pub labels: BTreeMap<String, String>,
    /// Only held (`Some(true)`) or only unheld (`Some(false)`) snapshots.
    pub held: Option<bool>,
    /// Only snapshots whose last backup is in this state (backed up, failed,
    /// in progress); snapshots never backed up match no state.
    pub backup: Option<BackupState>,
    /// Sort newest first instead of oldest first (by creation time, then id).
    pub newest_first: bool,
    /// Matches to skip before the page starts.
    pub offset: usize,
    /// Largest page; `None` returns every match after `offset`.
    pub limit: Option<usize>,
}

/// One page of search results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotPage {
    /// The snapshots on this page, in the requested order.
    pub snapshots: Vec<SnapshotInfo>,
    /// How many snapshots match in all.
    pub total: usize,
    /// The offset of the next page, when there is one.
    pub next_offset: Option<usize>,
}

/// What one [`Store::run_policies`] pass did.
#[derive(Debug, Default)]
pub struct PolicyRun {
    /// Automatic snapshots taken, by schedules and interval policies.
    pub created: Vec<SnapshotInfo>,
    /// Automatic snapshots that retention deleted.
    pub pruned: Vec<SnapshotInfo>,
    /// Snapshots deleted because their `expires_at` had passed.
    pub expired: Vec<SnapshotInfo>,
    /// Every schedule that was due in this pass, with what it did.
    pub schedules: Vec<ScheduleRunReport>,
    /// Volumes whose policy, schedule or expiry could not run this time
    /// (for example [`Error::Busy`] while another administrative operation
    /// held the volume); the next pass tries again.
    pub errors: Vec<(VolumeId, Error)>,
}

/// What one due schedule did in a policy pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRunReport {
    /// The schedule's volume.
    pub volume: VolumeId,
    /// The schedule's name.
    pub schedule: String,
    /// The slot that was due (seconds since the Unix epoch); `None` when
    /// even that could not be worked out (a zone this build does not know).
    pub slot: Option<u64>,
    /// The schedule's status after the run: its result, error and count
    /// of consecutive failures.
    pub status: ScheduleStatus,
    /// Whether it has now failed [`crate::FAILING_AFTER`] times in a row.
    pub failing: bool,
}

impl Store {
    /// Registers a snapshot in status `Creating`, without capturing any
    /// data yet: the first of two steps, for hosts that quiesce an
    /// application between them. [`Store::commit_snapshot`] captures the
    /// volume at that moment; [`Store::abort_snapshot`] gives up. If the
    /// store crashes in between, the snapshot is `Failed` after reopening.
    ///
    /// ```
    /// use cowvol::{SnapshotOptions, SnapshotStatus, Store, StoreOptions, VolumeOptions};
    /// # fn main() -> cowvol::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let db = store.create_volume(VolumeOptions::new("db", 1 << 20))?.id;
    /// let pending = store.begin_snapshot(db, SnapshotOptions::named("quiesced"))?;
    /// assert_eq!(pending.status, SnapshotStatus::Creating);
    /// // ... the application freezes its file system and flushes ...
    /// let snap = store.commit_snapshot(db, pending.id)?;
    /// assert_eq!(snap.status, SnapshotStatus::Ready);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::create_snapshot`].
    pub fn begin_snapshot(&self, volume: VolumeId, opts: SnapshotOptions) -> Result<SnapshotInfo> {
        self.engine.take_snapshot(volume, opts, SnapshotStatus::Creating, now_secs())
    }

    /// Captures a `Creating` snapshot: it holds exactly the writes that
    /// completed before this call, and becomes `Ready`. Durable when it
    /// returns. O(1).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidArgument`] when the snapshot
    /// is not `Creating`; [`Error::Busy`] when another administrative
    /// operation holds the volume.
    pub fn commit_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<SnapshotInfo> {
        let engine = &self.engine;
        engine.ensure_writable()?;
        let rt = engine.state.lock().vol(volume)?.rt.clone();
        let _admin = try_admin(&rt, volume, "commit")?;
        engine.commit(|st| {
            let s = creating_snap(st, volume, snapshot)?;
            let info = SnapshotInfo { status: SnapshotStatus::Ready, ..s.clone() };
            Ok((info, Some(Record::CommitSnapshot { snap: snapshot.0 })))
        })
    }

    /// Gives up a `Creating` snapshot: it becomes `Failed` (it stays
    /// listed until deleted, so the failure is visible).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidArgument`] when the snapshot
    /// is not `Creating`.
    pub fn abort_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<SnapshotInfo> {
        self.engine.update_snapshot(volume, snapshot, |s| {
            creating_status(s)?;
            s.status = SnapshotStatus::Failed;
            Ok(())
        })
    }

    /// Records where the snapshot's backup stands (see [`BackupRecord`]);
    /// `None` forgets it. One logged step, durable when it returns. The
    /// `cowvol-backup` crate sets `InProgress` before it uploads anything,
    /// then `BackedUp` once the backup's manifest is durable on the target,
    /// or `Failed` with the reason; a store that opens with a backup still
    /// `InProgress` marks it `Failed`.
    ///
    /// ```
    /// use cowvol::{BackupRecord, BackupState, SnapshotOptions, SnapshotQuery, Store, StoreOptions, VolumeOptions};
    /// # fn main() -> cowvol::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let db = store.create_volume(VolumeOptions::new("db", 1 << 20))?.id;
    /// let snap = store.create_snapshot(db, SnapshotOptions::named("nightly"))?.id;
    /// let done = BackupRecord {
    ///     state: BackupState::BackedUp,
    ///     target: "file:///srv/backups".into(),
    ///     backup_id: "3f0c9a1e5b7d2c40".into(),
    ///     reason: String::new(),
    ///     at: 1_800_000_000,
    /// };
    /// store.set_snapshot_backup(snap, Some(done))?;
    /// let q = SnapshotQuery { backup: Some(BackupState::BackedUp), ..Default::default() };
    /// assert_eq!(store.search_snapshots(&q).total, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidArgument`] for a snapshot that
    /// is not ready (only ready snapshots hold data to back up) or a target
    /// longer than [`limits::MAX_BACKUP_TEXT_BYTES`].
    pub fn set_snapshot_backup(&self, snapshot: SnapshotId, record: Option<BackupRecord>) -> Result<SnapshotInfo> {
        let record = record.map(bounded_backup_record).transpose()?;
        let volume = self.snapshot(snapshot)?.volume_id;
        self.engine.update_snapshot(volume, snapshot, |s| {
            if record.is_some() && !s.is_ready() {
                return Err(Error::invalid(format!(
                    "snapshot {} is {}: only a ready snapshot can be backed up",
                    s.id, s.status
                )));
            }
            s.backup = record;
            Ok(())
        })
    }

    /// Holds (protects) a snapshot: [`Store::delete_snapshot`] and
    /// retention refuse it with [`Error::Held`] until
    /// [`Store::release_snapshot`]. Holding a held snapshot is a no-op.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn hold_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<SnapshotInfo> {
        self.set_hold(volume, snapshot, true)
    }

    /// Releases a hold. Releasing an unheld snapshot is a no-op.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn release_snapshot(&self, volume: VolumeId, snapshot: SnapshotId) -> Result<SnapshotInfo> {
        self.set_hold(volume, snapshot, false)
    }

    fn set_hold(&self, volume: VolumeId, snapshot: SnapshotId, held: bool) -> Result<SnapshotInfo> {
        self.engine.update_snapshot(volume, snapshot, |s| {
            s.held = held;
            Ok(())
        })
    }

    /// Takes one snapshot of each volume at the same instant, in one
    /// atomic, durable step: after a crash either all of them exist or
    /// none does. Each gets `opts` (the same name on every volume).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty or repeated volume list;
    /// [`Error::NotFound`]; [`Error::AlreadyExists`] when a volume already
    /// has a snapshot of that name; [`Error::Busy`] when another
    /// administrative operation holds one of the volumes. On any error no
    /// snapshot is taken.
    pub fn create_group_snapshot(&self, volumes: &[VolumeId], opts: SnapshotOptions) -> Result<Vec<SnapshotInfo>> {
        opts.check_limits()?;
        opts.check_expiry(now_secs())?;
        opts.refuse_idempotency_key("a group snapshot")?;
        let mut ids = volumes.to_vec();
        ids.sort();
        ids.dedup();
        if ids.is_empty() || ids.len() != volumes.len() {
            return Err(Error::invalid("a group snapshot needs a list of distinct volumes"));
        }
        let engine = &self.engine;
        engine.ensure_writable()?;
        let rts: Vec<Arc<VolRuntime>> = {
            let st = engine.state.lock();
            ids.iter().map(|&v| st.vol(v).map(|v| v.rt.clone())).collect::<Result<_>>()?
        };
        // Taken in id order; `try_lock` cannot deadlock anyway.
        let _admins =
            ids.iter().zip(&rts).map(|(&v, rt)| try_admin(rt, v, "group snapshot")).collect::<Result<Vec<_>>>()?;
        engine.commit_growing(|st| {
            let now = now_secs();
            let infos = volumes
                .iter()
                .map(|&v| st.new_snapshot_info(v, opts.clone(), SnapshotStatus::Ready, now))
                .collect::<Result<Vec<_>>>()?;
            Ok((infos.clone(), Some(Record::CreateSnapshots(infos))))
        })
    }

    /// A snapshot's record, by id alone (ids are unique in the store).
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn snapshot(&self, snapshot: SnapshotId) -> Result<SnapshotInfo> {
        let st = self.engine.state.lock();
        st.snapshots.get(&snapshot.0).map(|s| s.info.clone()).ok_or_else(|| not_found_snapshot(snapshot))
    }

    /// Finds snapshots across the store: filtered by every field of `query`
    /// that is set, sorted by creation time (then id), and paged. Cost:
    /// one pass over the snapshot records; only the page is copied.
    ///
    /// ```
    /// use cowvol::{SnapshotOptions, SnapshotQuery, Store, StoreOptions, VolumeOptions};
    /// # fn main() -> cowvol::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let db = store.create_volume(VolumeOptions::new("db", 1 << 20))?.id;
    /// for name in ["Nightly-1", "adhoc", "nightly-2"] {
    ///     store.create_snapshot(db, SnapshotOptions::named(name))?;
    /// }
    /// let page = store.search_snapshots(&SnapshotQuery {
    ///     name_contains: Some("NIGHTLY".into()),
    ///     newest_first: true,
    ///     limit: Some(1),
    ///     ..Default::default()
    /// });
    /// assert_eq!((page.total, page.snapshots[0].name.as_str()), (2, "nightly-2"));
    /// assert_eq!(page.next_offset, Some(1));
    /// # Ok(()) }
    /// ```
    pub fn search_snapshots(&self, query: &SnapshotQuery) -> SnapshotPage {
        let needle = query.name_contains.as_ref().map(|n| n.to_lowercase());
        let st = self.engine.state.lock();
        // A query for one volume looks only at that volume's snapshots.
        let candidates: Box<dyn Iterator<Item = &SnapshotInfo>> = match query.volume {
            Some(v) => Box::new(st.snapshots_of(v).into_iter().map(|s| &s.info)),
            None => Box::new(st.snapshots.values().map(|s| &s.info)),
        };
        let mut hits: Vec<&SnapshotInfo> = candidates.filter(|s| matches(s, query, needle.as_deref())).collect();
        hits.sort_by_key(|s| (s.created_at, s.id));
        if query.newest_first {
            hits.reverse();
        }
        let total = hits.len();
        let start = query.offset.min(total);
        let end = query.limit.map_or(total, |l| start.saturating_add(l).min(total));
        SnapshotPage {
            snapshots: hits[start..end].iter().map(|s| (*s).clone()).collect(),
            total,
            next_offset: (end < total).then_some(end),
        }
    }

    /// Creates a writable volume from a snapshot, sharing all its blocks.
    /// The new volume outlives the snapshot and the snapshot's volume.
    /// `opts.size_bytes` must be 0 (take the snapshot's size) or equal it.
    /// O(1), durable when it returns.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidArgument`] for a snapshot that
    /// is not ready or a different size; [`Error::AlreadyExists`] for a
    /// taken name.
    pub fn create_volume_from_snapshot(&self, snapshot: SnapshotId, opts: VolumeOptions) -> Result<VolumeInfo> {
        let (volume, size) = {
            let st = self.engine.state.lock();
            let s = st.snapshots.get(&snapshot.0).ok_or_else(|| not_found_snapshot(snapshot))?;
            st.ready_snap_of(s.info.volume_id, snapshot)?;
            (s.info.volume_id, s.info.size_bytes)
        };
        self.engine.create_volume_with_origin(VolumeOrigin::Snapshot(volume, snapshot), size, opts)
    }

    /// Creates a writable volume from a template, sharing all its blocks.
    /// `opts.size_bytes` must be 0 (the template's size) or equal it.
    ///
    /// # Errors
    /// As [`Store::create_volume_from_snapshot`].
    pub fn create_volume_from_template(&self, template: TemplateId, opts: VolumeOptions) -> Result<VolumeInfo> {
        let size = self.template(template)?.size_bytes;
        self.engine.create_volume_with_origin(VolumeOrigin::Template(template), size, opts)
    }

    /// Makes a template from a ready snapshot: a named, read-only image
    /// that shares the snapshot's blocks and outlives it and its volume.
    /// O(1), durable when it returns.
    ///
    /// ```
    /// use cowvol::{SnapshotOptions, Store, StoreOptions, TemplateOptions, VolumeOptions};
    /// # fn main() -> cowvol::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let golden = store.create_volume(VolumeOptions::new("golden", 1 << 20))?.id;
    /// store.open_volume(golden)?.write_at(b"installed", 0)?;
    /// let snap = store.create_snapshot(golden, SnapshotOptions::named("v1"))?;
    /// let base = store.create_template(snap.id, TemplateOptions::named("debian"))?;
    /// store.delete_volume(golden)?; // the template keeps the image
    /// let vm = store.create_volume_from_template(base.id, VolumeOptions::new("vm-1", 0))?;
    /// let mut buf = [0u8; 9];
    /// store.open_volume(vm.id)?.read_at(&mut buf, 0)?;
    /// assert_eq!(&buf, b"installed");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidArgument`] for a snapshot that
    /// is not ready; [`Error::AlreadyExists`] for a taken template name.
    pub fn create_template(&self, snapshot: SnapshotId, opts: TemplateOptions) -> Result<TemplateInfo> {
        limits::described("template", &opts.name, &opts.description, &opts.owner, &opts.labels)?;
        self.engine.commit_growing(|st| {
            let s = st.snapshots.get(&snapshot.0).ok_or_else(|| not_found_snapshot(snapshot))?;
            let s = st.ready_snap_of(s.info.volume_id, snapshot)?;
            if st.templates.values().any(|t| t.info.name == opts.name) {
                return Err(Error::AlreadyExists { what: format!("template {:?}", opts.name) });
            }
            let info = TemplateInfo {
                id: TemplateId(st.next_template),
                name: opts.name,
                description: opts.description,
                size_bytes: s.info.size_bytes,
                created_at: now_secs(),
                source: (s.info.volume_id, snapshot),
                labels: opts.labels,
                owner: if opts.owner.is_empty() { s.info.owner.clone() } else { opts.owner },
            };
            Ok((info.clone(), Some(Record::CreateTemplate(info))))
        })
    }

    /// Every template, by id.
    pub fn list_templates(&self) -> Vec<TemplateInfo> {
        self.engine.state.lock().templates.values().map(|t| t.info.clone()).collect()
    }

    /// One template's record.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn template(&self, id: TemplateId) -> Result<TemplateInfo> {
        let st = self.engine.state.lock();
        st.templates.get(&id.0).map(|t| t.info.clone()).ok_or_else(|| Error::not_found(format!("template {id}")))
    }

    /// Finds a template by name.
    pub fn template_by_name(&self, name: &str) -> Option<TemplateInfo> {
        self.engine.state.lock().templates.values().find(|t| t.info.name == name).map(|t| t.info.clone())
    }

    /// Deletes a template. Idempotent. Volumes made from it keep every
    /// block they share with it; only blocks nothing else references are
    /// freed, in bounded steps after the delete is durable.
    ///
    /// # Errors
    /// I/O errors only.
    pub fn delete_template(&self, id: TemplateId) -> Result<Deleted> {
        let deleted = self.engine.commit(|st| {
            if !st.templates.contains_key(&id.0) {
                return Ok((Deleted { existed: false }, None));
            }
            Ok((Deleted { existed: true }, Some(Record::DeleteTemplate { tmpl: id.0 })))
        })?;
        self.engine.release_garbage();
        Ok(deleted)
    }

    /// Opens a read-only handle on a template.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn open_template(&self, id: TemplateId) -> Result<Volume> {
        let size = self.template(id)?.size_bytes;
        Ok(Volume::new(
            self.keeper.clone(),
            self.engine.clone(),
            Target::Template(id),
            size,
            Arc::new(VolRuntime::default()),
            false,
            u64::MAX,
        ))
    }

    /// Sets (or, with `None`, clears) a volume's automatic snapshot policy.
    /// Durable when it returns.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidArgument`] for an interval of
    /// 0 or a retention rule of 0.
    pub fn set_policy(&self, volume: VolumeId, policy: Option<SnapshotPolicy>) -> Result<VolumeInfo> {
        if let Some(p) = &policy {
            validate_policy(p)?;
        }
        self.engine.commit(|st| {
            let info = VolumeInfo { policy, ..st.vol(volume)?.info.clone() };
            Ok((info, Some(Record::SetPolicy { vol: volume.0, policy })))
        })
    }

    /// Runs every volume's policy as of `now` (seconds since the Unix
    /// epoch; the host decides the clock and when to call): takes the
    /// automatic snapshots that are due, then prunes the automatic
    /// snapshots retention lets go. Never deletes a manual or held
    /// snapshot. Passes never overlap: a second caller waits.
    ///
    /// A volume's snapshot is due when it has no ready automatic snapshot
    /// or its newest is at least `interval_secs` old. Automatic snapshots
    /// are named `auto-YYYYMMDD-HHMMSS` (UTC, from `now`) and carry the
    /// label [`AUTO_LABEL`].
    ///
    /// ```
    /// use cowvol::{SnapshotPolicy, Store, StoreOptions, VolumeOptions};
    /// # fn main() -> cowvol::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let db = store.create_volume(VolumeOptions::new("db", 1 << 20))?.id;
    /// let hourly = SnapshotPolicy { interval_secs: 3600, keep_last: Some(2), keep_for_secs: None };
    /// store.set_policy(db, Some(hourly))?;
    /// let start = 1_800_000_000;
    /// for hour in 0..5 {
    ///     store.run_policies(start + hour * 3600); // the host's clock, here simulated
    /// }
    /// let names: Vec<String> = store.list_snapshots(db).into_iter().map(|s| s.name).collect();
    /// assert_eq!(names, ["auto-20270115-110000", "auto-20270115-120000"]);
    /// # Ok(()) }
    /// ```
    pub fn run_policies(&self, now: u64) -> PolicyRun {
        self.engine.run_policies(now)
    }
}

/// Which automatic snapshots a retention rule counts: those of one
/// schedule, or those of the volume's interval policy (no schedule).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention<'a> {
    pub(crate) schedule: Option<&'a str>,
    pub(crate) keep_last: Option<u32>,
    pub(crate) keep_for_secs: Option<u64>,
}

impl Engine {
    pub(crate) fn run_policies(&self, now: u64) -> PolicyRun {
        let _one_pass = self.policy_pass.lock();
        let mut run = PolicyRun::default();
        self.run_schedules(now, &mut run);
        self.run_interval_policies(now, &mut run);
        self.expire_snapshots(now, &mut run);
        run
    }

    fn run_interval_policies(&self, now: u64, run: &mut PolicyRun) {
        let due: Vec<(VolumeId, SnapshotPolicy, bool)> = {
            let st = self.state.lock();
            st.volumes
                .values()
                .filter_map(|v| v.info.policy.map(|p| (v.info.id, p)))
                .map(|(id, p)| (id, p, snapshot_due(&st, id, &p, now)))
                .collect()
        };
        for (volume, policy, is_due) in due {
            if is_due {
                match self.take_auto_snapshot(volume, now) {
                    Ok(info) => run.created.push(info),
                    Err(e) => run.errors.push((volume, e)),
                }
            }
            let rules = Retention { schedule: None, keep_last: policy.keep_last, keep_for_secs: policy.keep_for_secs };
            self.prune(volume, rules, now, run);
        }
    }

    /// Deletes what `rules` let go among `volume`'s automatic snapshots.
    pub(crate) fn prune(&self, volume: VolumeId, rules: Retention<'_>, now: u64, run: &mut PolicyRun) {
        for snap in self.expired_snapshots(volume, rules, now) {
            match self.delete_snapshot(volume, snap.id) {
                Ok(d) if d.existed => run.pruned.push(snap),
                // Deleted or held meanwhile: retention leaves it be.
                Ok(_) | Err(Error::Held { .. }) => {}
                Err(e) => run.errors.push((volume, e)),
            }
        }
    }

    /// Deletes every unheld snapshot whose `expires_at` has passed, of any
    /// kind: its maker asked for that. `Creating` ones are left to finish.
    fn expire_snapshots(&self, now: u64, run: &mut PolicyRun) {
        let expired: Vec<SnapshotInfo> = {
            let st = self.state.lock();
            st.snapshots
                .values()
                .map(|s| &s.info)
                .filter(|s| s.expires_at.is_some_and(|t| t <= now))
                .filter(|s| !s.held && s.status != SnapshotStatus::Creating)
                .cloned()
                .collect()
        };
        for snap in expired {
            match self.delete_snapshot(snap.volume_id, snap.id) {
                Ok(d) if d.existed => run.expired.push(snap),
                Ok(_) | Err(Error::Held { .. }) => {}
                Err(e) => run.errors.push((snap.volume_id, e)),
            }
        }
    }

    fn take_auto_snapshot(&self, volume: VolumeId, now: u64) -> Result<SnapshotInfo> {
        let name = free_snapshot_name(&self.state.lock(), volume, format!("auto-{}", utc_stamp(now)));
        let opts = SnapshotOptions {
            name,
            description: "taken by the volume's snapshot policy".into(),
            labels: [(AUTO_LABEL.to_string(), now.to_string())].into(),
            kind: SnapshotKind::Auto,
            ..Default::default()
        };
        self.take_snapshot(volume, opts, SnapshotStatus::Ready, now)
    }

    /// The automatic snapshots of `volume` counted by `rules` that they let
    /// go as of `now`: not held, not among the newest `keep_last` ready
    /// ones, and older than `keep_for_secs`, for every rule that is set.
    /// Failed automatic snapshots hold no data and always go.
    fn expired_snapshots(&self, volume: VolumeId, rules: Retention<'_>, now: u64) -> Vec<SnapshotInfo> {
        if rules.keep_last.is_none() && rules.keep_for_secs.is_none() {
            return Vec::new();
        }
        let st = self.state.lock();
        let mut autos: Vec<&SnapshotInfo> = st
            .snapshots_of(volume)
            .into_iter()
            .map(|s| &s.info)
            .filter(|s| s.kind == SnapshotKind::Auto && !s.held)
            .filter(|s| s.schedule.as_deref() == rules.schedule)
            .collect();
        autos.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
        let mut ready_seen = 0u64;
        let mut out = Vec::new();
        for s in autos {
            let expired = match s.status {
                SnapshotStatus::Failed => true,
                SnapshotStatus::Ready => {
                    ready_seen += 1;
                    let kept_by_count = rules.keep_last.is_some_and(|n| ready_seen <= n as u64);
                    let kept_by_age = rules.keep_for_secs.is_some_and(|d| now.saturating_sub(s.created_at) < d);
                    !kept_by_count && !kept_by_age
                }
                _ => false,
            };
            if expired {
                out.push(s.clone());
            }
        }
        out
    }

    /// Changes a snapshot's record (not its data) in one logged step.
    fn update_snapshot(
        &self,
        volume: VolumeId,
        snapshot: SnapshotId,
        change: impl FnOnce(&mut SnapshotInfo) -> Result<()>,
    ) -> Result<SnapshotInfo> {
        self.commit(|st| {
            let old = &st.snap_of(volume, snapshot)?.info;
            let mut info = old.clone();
            change(&mut info)?;
            let rec = (info != *old).then(|| Record::UpdateSnapshot(info.clone()));
            Ok((info, rec))
        })
    }

    /// Creates a volume whose tree is `origin`'s, which has `size` bytes.
    fn create_volume_with_origin(&self, origin: VolumeOrigin, size: u64, opts: VolumeOptions) -> Result<VolumeInfo> {
        limits::volume(&opts.name, &opts.owner)?;
        if opts.size_bytes != 0 && opts.size_bytes != size {
            return Err(Error::invalid(format!(
                "a volume made from a snapshot or template has its size ({size} bytes), not {}",
                opts.size_bytes
            )));
        }
        self.commit_growing(|st| {
            // The origin may have been deleted since the caller looked it up.
            match origin {
                VolumeOrigin::Volume(v) => st.vol(v).map(drop)?,
                VolumeOrigin::Snapshot(v, snap) => st.ready_snap_of(v, snap).map(drop)?,
                VolumeOrigin::Template(t) if !st.templates.contains_key(&t.0) => {
                    return Err(Error::not_found(format!("template {t}")))
                }
                VolumeOrigin::Template(_) => {}
            }
            let info = st.new_volume_info(VolumeOptions { size_bytes: size, ..opts }, Some(origin))?;
            Ok((info.clone(), Some(Record::Fork(info))))
        })
    }
}

/// Checks a backup record's target against the catalog's limits and cuts
/// an over-long failure reason (a reason is for people; losing its tail is
/// better than losing the record).
fn bounded_backup_record(mut r: BackupRecord) -> Result<BackupRecord> {
    let max = limits::MAX_BACKUP_TEXT_BYTES;
    if r.target.len() > max || r.backup_id.len() > max {
        return Err(Error::invalid(format!("a backup target or id is longer than {max} bytes")));
    }
    if r.reason.len() > max {
        let mut end = max;
        while !r.reason.is_char_boundary(end) {
            end -= 1;
        }
        r.reason.truncate(end);
    }
    Ok(r)
}

fn not_found_snapshot(id: SnapshotId) -> Error {
    Error::not_found(format!("snapshot {id}"))
}

fn creating_status(s: &SnapshotInfo) -> Result<()> {
    if s.status != SnapshotStatus::Creating {
        return Err(Error::invalid(format!("snapshot {} ({:?}) is {}, not creating", s.id, s.name, s.status)));
    }
    Ok(())
}

fn creating_snap(st: &State, volume: VolumeId, snapshot: SnapshotId) -> Result<&SnapshotInfo> {
    let s = &st.snap_of(volume, snapshot)?.info;
    creating_status(s)?;
    Ok(s)
}

fn matches(s: &SnapshotInfo, q: &SnapshotQuery, needle: Option<&str>) -> bool {
    needle.is_none_or(|n| contains_ignoring_case(&s.name, n))
        && q.volume.is_none_or(|v| s.volume_id == v)
        && q.volume_name.as_ref().is_none_or(|n| &s.volume_name == n)
        && q.kind.is_none_or(|k| s.kind == k)
        && q.status.is_none_or(|st| s.status == st)
        && q.owner.as_ref().is_none_or(|o| &s.owner == o)
        && q.held.is_none_or(|h| s.held == h)
        && q.backup.is_none_or(|b| s.backup.as_ref().is_some_and(|r| r.state == b))
        && q.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
}

/// Whether `hay` contains `needle` (already lowercase), ignoring case.
/// ASCII needles, the common case, are matched without allocating.
fn contains_ignoring_case(hay: &str, needle: &str) -> bool {
    if needle.is_ascii() {
        let n = needle.as_bytes();
        n.is_empty() || hay.as_bytes().windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    } else {
        hay.to_lowercase().contains(needle)
    }
}

/// `base`, or `base-2`, `base-3`... whichever no snapshot of `volume` has.
pub(crate) fn free_snapshot_name(st: &State, volume: VolumeId, base: String) -> String {
    let taken = |n: &str| st.snapshot_named(volume, n).is_some();
    if !taken(&base) {
        return base;
    }
    (2..).map(|i| format!("{base}-{i}")).find(|n| !taken(n)).unwrap_or(base)
}

/// Whether the interval policy's snapshot is due: it counts only its own
/// snapshots, not those of schedules.
fn snapshot_due(st: &State, volume: VolumeId, p: &SnapshotPolicy, now: u64) -> bool {
    let newest = st
        .snapshots_of(volume)
        .into_iter()
        .map(|s| &s.info)
        .filter(|s| s.kind == SnapshotKind::Auto && s.is_ready() && s.schedule.is_none())
        .map(|s| s.created_at)
        .max();
    newest.is_none_or(|t| now >= t.saturating_add(p.interval_secs))
}

fn validate_policy(p: &SnapshotPolicy) -> Result<()> {
    if p.interval_secs == 0 {
        return Err(Error::invalid("a snapshot policy's interval must be at least 1 second"));
    }
    if p.keep_last == Some(0) || p.keep_for_secs == Some(0) {
        return Err(Error::invalid("a retention rule must keep at least 1 snapshot or 1 second"));
    }
    Ok(())
}

/// `YYYYMMDD-HHMMSS` in UTC for seconds since the Unix epoch.
pub(crate) fn utc_stamp(secs: u64) -> String {
    let t = UtcTime::from_unix(secs);
    format!("{:04}{:02}{:02}-{:02}{:02}{:02}", t.year, t.month, t.day, t.hour, t.minute, t.second)
}

/// A calendar date and time in UTC, for naming and showing the
/// timestamps the catalog keeps (seconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// Year (proleptic Gregorian).
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59.
    pub second: u32,
}

impl UtcTime {
    /// The date and time `secs` seconds after 1970-01-01 00:00:00 UTC.
    pub fn from_unix(secs: u64) -> UtcTime {
        // Days are split into 400-year eras of 146097 days, counted from
        // 0000-03-01 so that the leap day ends each year.
        let (days, rem) = ((secs / 86_400) as i64 + 719_468, (secs % 86_400) as u32);
        let era = days.div_euclid(146_097);
        let doe = days.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        UtcTime {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_795_000_000), "20261118-110640");
        assert_eq!(utc_stamp(4_102_444_799), "20991231-235959");
    }

    #[test]
    fn an_origin_deleted_after_lookup_is_not_found_and_harms_nothing() {
        // The public calls look the origin up, then create the volume under
        // the state lock; a delete can land in between.
        let store = Store::open_in(Arc::new(crate::testing::SimDir::new()), Default::default()).unwrap();
        let v = store.create_volume(VolumeOptions::new("v", 4096)).unwrap().id;
        let gone = [
            VolumeOrigin::Template(TemplateId(9)),
            VolumeOrigin::Snapshot(v, SnapshotId(9)),
            VolumeOrigin::Volume(VolumeId(9)),
        ];
        for origin in gone {
            let r = store.engine.create_volume_with_origin(origin, 4096, VolumeOptions::new("new", 0));
            assert!(matches!(r, Err(Error::NotFound { .. })), "{origin:?}: {r:?}");
        }
        assert!(!store.engine.is_failed());
        assert!(store.create_volume(VolumeOptions::new("still-works", 4096)).is_ok());
        assert!(store.check().unwrap().is_clean());
    }

    #[test]
    fn name_matching_ignores_case() {
        assert!(contains_ignoring_case("Nightly-ÉTÉ", "nightly"));
        assert!(contains_ignoring_case("Nightly-ÉTÉ", "été"));
        assert!(contains_ignoring_case("abc", ""));
        assert!(!contains_ignoring_case("ab", "abc"));
        assert!(!contains_ignoring_case("Nightly", "weekly"));
    }

    #[test]
    fn policies_need_a_positive_interval_and_rules() {
        let ok = SnapshotPolicy { interval_secs: 60, keep_last: Some(3), keep_for_secs: None };
        assert!(validate_policy(&ok).is_ok());
        assert!(validate_policy(&SnapshotPolicy { interval_secs: 0, ..ok }).is_err());
        assert!(validate_policy(&SnapshotPolicy { keep_last: Some(0), ..ok }).is_err());
        assert!(validate_policy(&SnapshotPolicy { keep_for_secs: Some(0), ..ok }).is_err());
    }
}
