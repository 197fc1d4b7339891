//! Opening a store: creating a new one atomically, or recovering an
//! existing one (superblock, catalog, trees, reference counts, log replay)
//! and writing the checkpoint that makes the recovered state durable.

use super::maint::{Keeper, Maintenance, PolicyRunner};
use super::record::Record;
use super::state::{empty_state, Entry, State};
use super::{CheckpointState, CommitState, Counted, Engine, WriteCounters, Wrote};
use crate::backend::{DirLock, StorageDir, StorageFile};
use crate::catalog::{now_secs, BackupState, CatalogImage, SnapshotStatus};
use crate::error::{Error, Result};
use crate::format::{self, Crc, Superblock, DATA_FILE, SUPERBLOCK_SLOTS};
use crate::options::StoreOptions;
use crate::tree::{self, Child, NodeAddr, Root};
use crate::wal::{self, LogContents, LogGeometry, LogTail, Wal};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

/// Opens the store in `dir` (creating it when it has no data file) and
/// starts the background thread when the options ask for one. Policies run
/// through `run_policies`, which the layer above passes in.
pub(crate) fn open(
    dir: Arc<dyn StorageDir>,
    opts: StoreOptions,
    run_policies: PolicyRunner,
) -> Result<(Arc<Keeper>, Arc<Engine>)> {
    let dir_lock = dir.lock().map_err(lock_error(&*dir, "locking the store directory"))?;
    let engine = match dir.open_file(DATA_FILE, false) {
        Ok(file) => open_existing(dir, file, dir_lock, opts)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create(&dir, opts.clone())? {
            Created::Done(file, file_lock, opts) => finish_create(dir, file, Box::new((dir_lock, file_lock)), opts)?,
            // Another opener created the store while we looked.
            Created::Exists(file) => open_existing(dir, file, dir_lock, opts)?,
        },
        Err(e) => return Err(Error::io(format!("opening {DATA_FILE}"), e)),
    };
    let engine = Arc::new(engine);
    let keeper = Keeper::start(&engine, run_policies);
    Ok((keeper, engine))
}

/// Maps a failure to take a lock: held elsewhere is [`Error::Locked`].
fn lock_error(dir: &dyn StorageDir, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    let path = dir.describe();
    move |e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked { path: path.into() }
        } else {
            Error::io(what, e)
        }
    }
}

/// Locks the data file and recovers the store in it.
///
/// The lock on the data file, not the directory lock, is what keeps a
/// second writer out: the directory lock is the `LOCK` file, which can be
/// deleted or replaced under its holder, while the data file is the one
/// thing both writers would have to share. The lock belongs to the file
/// (the inode), so a rename or a new `LOCK` file does not release it.
fn open_existing(
    dir: Arc<dyn StorageDir>,
    file: Arc<dyn StorageFile>,
    dir_lock: DirLock,
    opts: StoreOptions,
) -> Result<Engine> {
    let file_lock = file.try_lock().map_err(lock_error(&*dir, "locking the data file"))?;
    let lock: DirLock = Box::new((dir_lock, file_lock));
    // A store its last writer closed cleanly ends its log with a seal, and
    // a seal is written only after every record of the log, and the
    // checkpoint whose superblock names the log, were synced: whatever the
    // cache holds of them is what the disk holds. So the first look reads
    // through the cache with no sync, and is kept when the log it finds is
    // sealed (reliability.md, "Opening a sealed store").
    let sb = read_superblock(&*file)?;
    let log = match read_log(&ThroughCache(file.clone()), &sb) {
        Ok(log) if log.sealed => Some(log),
        // Not sealed, or not readable as it stands in the cache: the disk
        // decides.
        _ => None,
    };
    let (sb, log) = match log {
        Some(log) => (sb, log),
        None => {
            // Recovery must read what is on the disk. After a failed sync
            // (in an earlier store of this process, or in another process:
            // the page cache is the kernel's) the cache can hold pages the
            // disk never received: pages written after the last sync that
            // succeeded. Of those, recovery trusts only the superblock
            // slots (written in place), the log's segments (appended in
            // place) and the data named by records after the durable
            // marker; it drops the cache of each just before reading it.
            // Every other page the durable state names was synced before
            // that state became durable and is not written again until a
            // later state is: copy-on-write (format.md, invariants). So the
            // cost follows the log, not the file.
            file.sync().map_err(|e| Error::io("syncing the data file before recovery", e))?;
            file.drop_cache_range(0, SUPERBLOCK_SLOTS[1] + format::SECTOR)
                .map_err(|e| Error::io("dropping the superblocks' cached pages", e))?;
            let sb = read_superblock(&*file)?;
            let log = read_log(&*file, &sb)?;
            (sb, log)
        }
    };
    recover(dir, file, lock, opts, sb, log)
}

/// Pages in the data file for the block size of `sb`.
fn pages_in(file: &dyn StorageFile, sb: &Superblock) -> Result<u64> {
    let len = file.len().map_err(|e| Error::io("reading the data file length", e))?;
    Ok(len.saturating_sub(format::data_start(sb.block_size)) / u64::from(sb.block_size))
}

/// The log `sb` names, read through `file`.
fn read_log(file: &dyn StorageFile, sb: &Superblock) -> Result<LogContents<Record>> {
    let log_geo = LogGeometry::new(format::data_start(sb.block_size), sb.block_size);
    wal::read_log(file, log_geo, sb.log, pages_in(file, sb)?, sb.version)
}

/// The data file read through the page cache: its cached pages are never
/// dropped (the first, trusting pass of [`open_existing`]).
#[derive(Debug)]
struct ThroughCache(Arc<dyn StorageFile>);

impl StorageFile for ThroughCache {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("recovery's first pass writes nothing"))
    }
    fn sync(&self) -> std::io::Result<()> {
        Err(std::io::Error::other("recovery's first pass syncs nothing"))
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("recovery's first pass writes nothing"))
    }
    fn allocate(&self, _: u64, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("recovery's first pass writes nothing"))
    }
    fn punch_hole(&self, _: u64, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("recovery's first pass writes nothing"))
    }
    fn try_lock(&self) -> std::io::Result<DirLock> {
        self.0.try_lock()
    }
    // Trusting the cache is the point of this pass: drops are not made.
    fn drop_cache(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn drop_cache_range(&self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

fn random_u64() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::collections::hash_map::RandomState::new().hash_one((t, std::process::id()))
}

/// Reads both superblock slots and returns the valid one with the higher
/// generation. A store file exists only once its first superblock was
/// durable (creation renames it into place), so finding none is corruption.
fn read_superblock(file: &dyn StorageFile) -> Result<Superblock> {
    let mut best: Option<Superblock> = None;
    let mut errors = Vec::new();
    for slot in SUPERBLOCK_SLOTS {
        let mut buf = vec![0u8; format::SUPERBLOCK_LEN];
        file.read_at(&mut buf, slot).map_err(|e| Error::io("reading the superblock", e))?;
        match Superblock::decode(&buf) {
            Ok(Some(sb)) => {
                if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                    best = Some(sb);
                }
            }
            Ok(None) => {}
            Err(Error::Corruption { detail, .. }) => {
                errors.push(Error::corruption("superblock", format!("{DATA_FILE} byte offset {slot}"), detail))
            }
            Err(e) => errors.push(e),
        }
    }
    match best {
        Some(sb) => Ok(sb),
        None => Err(errors.into_iter().next().unwrap_or_else(|| {
            Error::corruption(
                "superblock",
                format!("{DATA_FILE} offsets 0 and 4096"),
                "neither slot holds a superblock",
            )
        })),
    }
}

/// How a new engine's log begins.
enum LogPlan {
    /// A new log, which a checkpoint must make the start of replay before
    /// anything relies on it.
    Fresh,
    /// The log open read, carried on (see [`Wal::resume`]) in the segment
    /// its tail set aside, which the caller has claimed.
    CarryOn {
        tail: LogTail,
        /// Its segments since the checkpoint, and the bytes it holds.
        segments: Vec<u64>,
        bytes: u64,
        /// The first LSN the durable checkpoint does not cover.
        covered_to: u64,
    },
}

#[expect(
    clippy::too_many_arguments,
    reason = "one constructor shared by create and recover; each argument is a distinct piece of opened state"
)]
fn new_engine(
    dir: Arc<dyn StorageDir>,
    file: Arc<dyn StorageFile>,
    lock: DirLock,
    opts: StoreOptions,
    block_size: u32,
    store_id: u64,
    state: State,
    generation: u64,
    catalog_pages: (u64, u64),
    log: LogPlan,
) -> Result<Engine> {
    let log_geo = LogGeometry::new(format::data_start(block_size), block_size);
    let mut state = state;
    let written = Arc::new(WriteCounters::default());
    let zero_file = Counted::view(&file, &written, Wrote::Zeroes);
    let log_file = Counted::view(&file, &written, Wrote::Log);
    let (wal, durable, covered_to) = match log {
        LogPlan::Fresh => {
            let first = state.new_log_segment(&log_geo, &*zero_file)?;
            let next = state.new_log_segment(&log_geo, &*zero_file)?;
            (Wal::start(log_file, log_geo, random_u64(), first, next, 1)?, 0, None)
        }
        LogPlan::CarryOn { tail, segments, bytes, covered_to } => {
            let next = state.new_log_segment(&log_geo, &*zero_file)?;
            let log_id = std::iter::repeat_with(random_u64).find(|&id| id != tail.log_id).unwrap_or_default();
            let mut wal = Wal::resume(log_file, log_geo, tail, segments, log_id, next);
            wal.bytes_since_checkpoint = bytes;
            // Every record read was durable: its log was sealed, or open
            // synced the file before reading it.
            (wal, tail.lsn, Some(covered_to))
        }
    };
    Ok(Engine {
        dir,
        file,
        _lock: lock,
        block_size,
        store_id,
        opts,
        state: Mutex::new(state),
        wal: Mutex::new(wal),
        log_geo,
        commit: Mutex::new(CommitState { durable, syncing: false }),
        commit_cv: Condvar::new(),
        checkpoint: Mutex::new(CheckpointState { generation, catalog_pages, covered_to }),
        failed: AtomicBool::new(false),
        maint: Arc::new(Maintenance::default()),
        writes_started: AtomicU64::new(0),
        writes_finished: AtomicU64::new(0),
        policy_pass: Mutex::new(()),
        written,
        zero_file,
    })
}

/// Name the data file has until its first checkpoint is durable, so that a
/// crash during creation leaves no half-made store behind.
const NEW_DATA_FILE: &str = "cowvol.dat.new";

/// What [`create`] found once it held the new file's lock.
enum Created {
    /// The new data file, locked and emptied, ready to be built.
    Done(Arc<dyn StorageFile>, DirLock, StoreOptions),
    /// The store exists after all: another opener finished creating it.
    Exists(Arc<dyn StorageFile>),
}

/// Locks the file a new store is built in.
///
/// Creators exclude each other through the lock on `cowvol.dat.new`; the
/// winner keeps holding it through the rename, so the finished store stays
/// locked. Nobody removes or renames `cowvol.dat.new` without holding its
/// lock, so once we hold it and `cowvol.dat` is still missing, the file is
/// ours or the remains of an interrupted creation, never a live store.
fn create(dir: &Arc<dyn StorageDir>, opts: StoreOptions) -> Result<Created> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(4096..=1 << 20).contains(&bs) {
        return Err(Error::invalid(format!("block size {bs} must be a power of two from 4096 to 1048576")));
    }
    let io = |what: &'static str| move |e| Error::io(what, e);
    let file = dir.open_file(NEW_DATA_FILE, true).map_err(io("creating the data file"))?;
    let lock = file.try_lock().map_err(lock_error(&**dir, "locking the new data file"))?;
    match dir.open_file(DATA_FILE, false) {
        Ok(existing) => return Ok(Created::Exists(existing)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("opening {DATA_FILE}"), e)),
    }
    // Whatever an interrupted creation left goes; its superblocks could
    // otherwise outrank ours.
    file.set_len(0).map_err(io("emptying an unfinished store file"))?;
    Ok(Created::Done(file, lock, opts))
}

/// Builds a new store in the locked `cowvol.dat.new` and names it.
fn finish_create(
    dir: Arc<dyn StorageDir>,
    file: Arc<dyn StorageFile>,
    lock: DirLock,
    opts: StoreOptions,
) -> Result<Engine> {
    let io = |what: &'static str| move |e| Error::io(what, e);
    let bs = opts.block_size;
    let state = empty_state(file.clone(), bs, 1, cache_budget(&opts));
    let engine = new_engine(dir.clone(), file, lock, opts, bs, random_u64(), state, 0, (0, 0), LogPlan::Fresh)?;
    engine.checkpoint()?;
    dir.rename(NEW_DATA_FILE, DATA_FILE).map_err(io("naming the data file"))?;
    dir.sync_dir().map_err(io("syncing the store directory"))?;
    Ok(engine)
}

fn recover(
    dir: Arc<dyn StorageDir>,
    file: Arc<dyn StorageFile>,
    lock: DirLock,
    opts: StoreOptions,
    sb: Superblock,
    log: LogContents<Record>,
) -> Result<Engine> {
    let bs = sb.block_size;
    let bsz = bs as u64;
    let ds = format::data_start(bs);
    let npages = pages_in(&*file, &sb)?;
    let mut st = empty_state(file.clone(), bs, npages, cache_budget(&opts));
    st.space.hold_groups_until_free_map();
    // The catalog has no size limit of its own (its objects are bounded,
    // their number is not; see `catalog::limits`), so any catalog inside the
    // file is read: whatever a checkpoint wrote opens again. The file's
    // length bounds the allocation.
    let cat_pages = sb.catalog_len.div_ceil(bsz).max(1);
    let cat_len = usize::try_from(sb.catalog_len).ok();
    let (Some(cat_end), Some(cat_len)) = (sb.catalog_page.checked_add(cat_pages), cat_len) else {
        return Err(catalog_outside(&sb));
    };
    if sb.catalog_page == 0 || cat_end > npages {
        return Err(catalog_outside(&sb));
    }
    let mut cat = vec![0u8; cat_len];
    file.read_at(&mut cat, st.space.offset_of(sb.catalog_page)).map_err(|e| Error::io("reading the catalog", e))?;
    let location = format!("{DATA_FILE} page {}", sb.catalog_page);
    let image = CatalogImage::decode(&cat, sb.catalog_crc, &location, sb.version)?;
    for p in sb.catalog_page..sb.catalog_page + cat_pages {
        st.space.set_reserved(p, true);
    }
    // Trees stay on disk: a root is a page, read when something needs it.
    st.next_volume = image.next_volume.max(1);
    st.next_snapshot = image.next_snapshot.max(1);
    for (info, root) in image.volumes {
        let root = root_at(root, npages)?;
        st.insert_volume(info, root);
    }
    for (info, root) in image.snapshots {
        let geo = st.geometry(info.size_bytes);
        st.load_snapshot(info, root_at(root, npages)?, geo);
    }
    st.next_template = image.next_template.max(1);
    for (info, root) in image.templates {
        let geo = st.geometry(info.size_bytes);
        st.next_template = st.next_template.max(info.id.0 + 1);
        st.templates.insert(info.id.0, Entry::new(info, root_at(root, npages)?, geo));
    }
    // The log was read first (it decides how open reads); its segments
    // count as metadata below.
    let log_geo = LogGeometry::new(ds, bs);
    for &s in &log.segments {
        for p in s..(s + log_geo.segment_pages).min(npages) {
            st.space.set_reserved(p, true);
        }
    }
    match &image.table {
        // The table the checkpoint wrote: every count and kind as they
        // were, read rather than recomputed.
        Some(table) => {
            let State { space, .. } = &mut st;
            space.load_table(table)?;
            st.garbage = image.garbage.iter().map(|&(a, level)| (Child::Disk(a), level)).collect();
            for &(a, _) in &image.garbage {
                root_at(a.page, npages)?;
                if a.delta != 0 {
                    root_at(tree::delta::location(a.delta, bs as usize).0, npages)?;
                }
            }
        }
        // Before version 5: walk the trees; the first checkpoint writes
        // the table.
        None => count_references(&mut st, npages)?,
    }
    // Replay the WAL.
    let LogContents { mut records, durable_lsn, segments: log_segments, bytes: log_bytes, tail, .. } = log;
    let keep = first_unverifiable(&*file, &st, &records, durable_lsn, npages)?;
    let whole_log = keep == records.len();
    records.truncate(keep);
    for (lsn, rec) in &records {
        validate_record(&mut st, rec, npages).map_err(|e| match e {
            Error::Corruption { detail, .. } => Error::corruption("WAL", format!("record {lsn}"), detail),
            e => e,
        })?;
        st.apply(rec)?;
    }
    let fixed_up = fail_interrupted_work(&mut st);
    {
        let State { garbage, space, nodes, .. } = &mut st;
        while !tree::release_some(garbage, space, nodes, usize::MAX)? {}
    }
    // Pages freed during replay stay out of the free map until the next
    // checkpoint is durable, like any page freed since the last one.
    // Changes replay made to counts whose groups are on the disk wait
    // for each group's next load, which quarantines every page they free
    // (the free map takes a group's pages only from its load): open reads
    // neither those groups nor the table's change log.
    let quarantined = st.space.quarantine.clone();
    for &p in &quarantined {
        st.space.set_reserved(p, true);
    }
    // The allocator's search for free space begins where the last session
    // last found room: the segment its log set aside to go on in (first
    // fit, so at the frontier of a store that fills in order).
    st.space.start_free_map(tail.next_page);
    for &p in &quarantined {
        st.space.set_reserved(p, false);
    }
    // The log is carried on when what it says is exactly the recovered
    // state: every record replayed, nothing changed beside it, and written
    // in the current version (an older store is upgraded by a checkpoint
    // first). Otherwise a checkpoint of the recovered state starts a fresh
    // log, and the old one's pages are freed once it is durable.
    let carry_on = whole_log
        && !fixed_up
        && sb.version == format::FORMAT_VERSION
        && Wal::link_fits(&log_geo, &tail)
        && st.space.claim_exact(tail.next_page, log_geo.segment_pages)?;
    let plan = if carry_on {
        LogPlan::CarryOn { tail, segments: log_segments, bytes: log_bytes, covered_to: sb.log.lsn }
    } else {
        for &s in &log_segments {
            for p in s..(s + log_geo.segment_pages).min(npages) {
                st.space.obsolete(p);
            }
        }
        LogPlan::Fresh
    };
    let engine =
        new_engine(dir, file, lock, opts, bs, sb.store_id, st, sb.generation, (sb.catalog_page, cat_pages), plan)?;
    if !carry_on {
        engine.checkpoint()?;
    }
    Ok(engine)
}

/// A snapshot still `Creating` lost its moment: it fails. A backup still in
/// progress lost the process that ran it: it fails the same way (what it
/// left on the target is unreferenced until a later backup or garbage
/// collection, never half-referenced). Returns whether anything changed,
/// which a checkpoint at open then makes durable.
fn fail_interrupted_work(st: &mut State) -> bool {
    let mut changed = false;
    for s in st.snapshots.values_mut() {
        if s.info.status == SnapshotStatus::Creating {
            s.info.status = SnapshotStatus::Failed;
            changed = true;
        }
        if let Some(b) = s.info.backup.as_mut().filter(|b| b.state == BackupState::InProgress) {
            b.state = BackupState::Failed;
            b.reason = "interrupted: the store was closed or the process stopped before the backup finished".into();
            b.at = now_secs();
            changed = true;
        }
    }
    changed
}

fn catalog_outside(sb: &Superblock) -> Error {
    Error::corruption(
        "superblock",
        "catalog pointer",
        format!("catalog at page {} ({} bytes) lies outside the file", sb.catalog_page, sb.catalog_len),
    )
}

/// Checks that a record only names pages inside the file, before replay
/// trusts it.
///
/// The groups of the record's pages are loaded first: a node page is known
/// as one (reserved) once its group has been read.
fn validate_record(st: &mut State, rec: &Record, npages: u64) -> Result<()> {
    if let Record::Map { page, crcs, vol, lblock } = rec {
        let end = page + crcs.len() as u64;
        if *page == 0 || end > npages {
            return Err(Error::corruption("WAL", "map record", format!("pages {page}..{end} lie outside the file")));
        }
        let group = st.space.group_entries();
        for g in *page / group..=(end - 1) / group {
            st.space.load_group(g)?;
        }
        if (*page..end).any(|p| st.space.is_reserved(p)) {
            return Err(Error::corruption("WAL", "map record", format!("pages {page}..{end} overlap metadata")));
        }
        if let Some(v) = st.volumes.get(vol) {
            if (lblock + crcs.len() as u64) * st.block_size > v.info.size_bytes.next_multiple_of(st.block_size) {
                return Err(Error::corruption("WAL", "map record", "blocks beyond the volume's end"));
            }
        }
    }
    Ok(())
}

/// Finds the first record whose data blocks did not reach the disk. Only
/// records after the last durable marker can be such; for them every data
/// block is read and checked against its CRC. Each page is written at most
/// once in the replayed window (see `space`), so a block that fails here
/// was never synced, and neither was anything logged after it.
fn first_unverifiable(
    file: &dyn StorageFile,
    st: &State,
    records: &[(u64, Record)],
    durable_lsn: u64,
    npages: u64,
) -> Result<usize> {
    let bs = st.block_size as usize;
    let mut buf = Vec::new();
    for (i, (lsn, rec)) in records.iter().enumerate() {
        if *lsn < durable_lsn {
            continue;
        }
        if let Record::Map { page, crcs, .. } = rec {
            if *page == 0 || page + crcs.len() as u64 > npages {
                return Ok(i);
            }
            buf.resize(bs * crcs.len(), 0);
            let offset = st.space.offset_of(*page);
            file.drop_cache_range(offset, buf.len() as u64)
                .map_err(|e| Error::io("dropping unsynced WAL data's cached pages", e))?;
            file.read_at(&mut buf, offset).map_err(|e| Error::io("verifying unsynced WAL data", e))?;
            if buf.chunks(bs).zip(crcs).any(|(b, &c)| Crc::of(b).0 != c) {
                return Ok(i);
            }
        }
    }
    Ok(records.len())
}

/// A catalog entry's root page as a tree root (0: no tree).
fn root_at(page: u64, npages: u64) -> Result<Root> {
    match page {
        0 => Ok(None),
        p if p >= npages => Err(Error::corruption("tree", format!("page {p}"), "node pointer outside the file")),
        p => Ok(Some(Child::Disk(NodeAddr::whole(p)))),
    }
}

/// Reference counts are what the trees reference, recomputed, never read:
/// each node page gets the number of references to it (roots and parent
/// slots), each data page the number of distinct leaves that hold it. Every
/// node is read once, through the node cache. Node pages become metadata
/// (reserved); a page that is both a node and data, or a node and the
/// catalog or the log, is corruption.
fn count_references(st: &mut State, npages: u64) -> Result<()> {
    // Node pages seen: (level, references).
    let mut node_refs: HashMap<u64, (u32, u32)> = HashMap::new();
    let mut stack: Vec<(u64, u32)> = Vec::new();
    let mut visit = |page: u64, level: u32, stack: &mut Vec<(u64, u32)>| -> Result<()> {
        if page == 0 || page >= npages {
            return Err(Error::corruption("tree", format!("page {page}"), "node pointer outside the file"));
        }
        match node_refs.get_mut(&page) {
            Some((l, _)) if *l != level => {
                Err(Error::corruption("tree", format!("page {page}"), "node shared at two different levels"))
            }
            Some((_, n)) => {
                *n += 1;
                Ok(())
            }
            None => {
                node_refs.insert(page, (level, 1));
                stack.push((page, level));
                Ok(())
            }
        }
    };
    let roots: Vec<(u64, u32)> = st.all_roots().into_iter().filter_map(|(c, l)| c.page().map(|p| (p, l))).collect();
    for (p, l) in roots {
        visit(p, l, &mut stack)?;
    }
    while let Some((page, level)) = stack.pop() {
        let node = st.nodes.load(NodeAddr::whole(page), level)?;
        match &node.body {
            tree::Body::Leaf(entries) => {
                for e in entries {
                    if e.page >= npages {
                        return Err(Error::corruption(
                            "tree node",
                            format!("tree node at page {page}"),
                            format!("points to page {} outside the file", e.page),
                        ));
                    }
                    if st.space.is_reserved(e.page) {
                        return Err(Error::corruption(
                            "tree",
                            format!("page {}", e.page),
                            "a data page is also metadata",
                        ));
                    }
                    st.space.inc(e.page);
                }
            }
            tree::Body::Interior(children) => {
                for c in children.refs() {
                    visit(c.page().unwrap_or(0), level - 1, &mut stack)?;
                }
            }
        }
    }
    for (&page, &(_, refs)) in &node_refs {
        if st.space.refcount(page)? != 0 || st.space.is_reserved(page) {
            return Err(Error::corruption("tree", format!("page {page}"), "a data page is also metadata"));
        }
        st.space.set_node_refcount(page, refs);
    }
    Ok(())
}

fn cache_budget(opts: &StoreOptions) -> usize {
    usize::try_from(opts.node_cache_bytes).unwrap_or(usize::MAX)
}
