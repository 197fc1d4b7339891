//! The JSON shapes printed with `--json`. Field names are part of the CLI's
//! stable interface (see docs/cli.md): add fields, never rename them.

use cowvol::{
    AccessMode, CheckReport, DamagedBlock, Problem, ScrubReport, SnapshotInfo, SnapshotPolicy, Store, StoreStats,
    TemplateInfo, VolumeInfo, VolumeOrigin,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// `rwo`, `rwx` or `rox`.
pub fn access_str(m: AccessMode) -> &'static str {
    match m {
        AccessMode::ReadWriteOnce => "rwo",
        AccessMode::ReadWriteMany => "rwx",
        AccessMode::ReadOnlyMany => "rox",
    }
}

/// Where a volume's data came from.
#[derive(Debug, Serialize)]
pub struct OriginJson {
    /// Source volume id (null for a volume made from a template).
    pub volume_id: Option<String>,
    /// Source snapshot id, or null for a fork of the live volume.
    pub snapshot_id: Option<String>,
    /// Source template id, when made from one.
    pub template_id: Option<String>,
}

impl OriginJson {
    fn new(o: VolumeOrigin) -> OriginJson {
        let (v, s, t) = match o {
            VolumeOrigin::Volume(v) => (Some(v.to_string()), None, None),
            VolumeOrigin::Snapshot(v, s) => (Some(v.to_string()), Some(s.to_string()), None),
            VolumeOrigin::Template(t) => (None, None, Some(t.to_string())),
        };
        OriginJson { volume_id: v, snapshot_id: s, template_id: t }
    }
}

/// A volume.
#[derive(Debug, Serialize)]
pub struct VolumeJson {
    /// `vol-N`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Logical size in bytes.
    pub size_bytes: u64,
    /// `rwo`, `rwx` or `rox`.
    pub access_mode: &'static str,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Set for forks and for volumes made from a snapshot or template.
    pub origin: Option<OriginJson>,
    /// Its automatic snapshot policy, if any.
    pub policy: Option<PolicyJson>,
    /// Snapshots taken of it.
    pub snapshot_count: usize,
    /// Read cache budget as recorded at creation.
    pub cache_bytes: u64,
    /// Unflushed bytes after which the engine flushes by itself.
    pub write_buffer_bytes: u64,
    /// Free-form owner; empty when unset.
    pub owner: String,
}

impl VolumeJson {
    /// From the library's record.
    pub fn new(v: &VolumeInfo, snapshot_count: usize) -> VolumeJson {
        VolumeJson {
            id: v.id.to_string(),
            name: v.name.clone(),
            size_bytes: v.size_bytes,
            access_mode: access_str(v.access_mode),
            created_at: v.created_at,
            origin: v.origin.map(OriginJson::new),
            policy: v.policy.map(PolicyJson::new),
            snapshot_count,
            cache_bytes: v.cache_bytes,
            write_buffer_bytes: v.write_buffer_bytes,
            owner: v.owner.clone(),
        }
    }

    /// Looks up the snapshot count in the store.
    pub fn of(store: &Store, v: &VolumeInfo) -> VolumeJson {
        VolumeJson::new(v, store.list_snapshots(v.id).len())
    }
}

/// A snapshot.
#[derive(Debug, Serialize)]
pub struct SnapshotJson {
    /// `snap-N`.
    pub id: String,
    /// The volume it was taken of (`vol-N`).
    pub volume_id: String,
    /// That volume's name, or null when the volume was deleted.
    pub volume_name: Option<String>,
    /// Name, unique among the volume's snapshots.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The volume's size when it was taken.
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Free-form owner; empty when unset.
    pub owner: String,
    /// Free key/value labels.
    pub labels: BTreeMap<String, String>,
    /// The volume's name when the snapshot was taken (kept after it is deleted).
    pub recorded_volume_name: String,
    /// `manual` or `auto`.
    pub kind: String,
    /// `creating`, `ready` or `failed`.
    pub status: String,
    /// True while the snapshot is held (it cannot be deleted).
    pub held: bool,
    /// When the policy run deletes it (seconds since the Unix epoch), or null.
    pub expires_at: Option<u64>,
    /// The calendar schedule that took it, or null.
    pub schedule: Option<String>,
    /// The idempotency key it was created with, or null.
    pub idempotency_key: Option<String>,
    /// Its last backup, or null.
    pub backup: Option<BackupRecordJson>,
}

/// A snapshot's last backup.
#[derive(Debug, Serialize)]
pub struct BackupRecordJson {
    /// `backing-up`, `backed-up` or `backup-failed`.
    pub state: String,
    /// The target's URL.
    pub target: String,
    /// The backup's id on the target.
    pub backup_id: String,
    /// Why it failed; empty otherwise.
    pub reason: String,
    /// When the state was set (seconds since the Unix epoch).
    pub at: u64,
}

impl SnapshotJson {
    /// From the library's record and the volume's name if it is alive.
    pub fn new(s: &SnapshotInfo, volume_name: Option<String>) -> SnapshotJson {
        SnapshotJson {
            id: s.id.to_string(),
            volume_id: s.volume_id.to_string(),
            volume_name,
            name: s.name.clone(),
            description: s.description.clone(),
            size_bytes: s.size_bytes,
            created_at: s.created_at,
            owner: s.owner.clone(),
            labels: s.labels.clone(),
            recorded_volume_name: s.volume_name.clone(),
            kind: s.kind.to_string(),
            status: s.status.to_string(),
            held: s.held,
            expires_at: s.expires_at,
            schedule: s.schedule.clone(),
            idempotency_key: s.idempotency_key.clone(),
            backup: s.backup.as_ref().map(|b| BackupRecordJson {
                state: b.state.to_string(),
                target: b.target.clone(),
                backup_id: b.backup_id.clone(),
                reason: b.reason.clone(),
                at: b.at,
            }),
        }
    }

    /// Looks up the volume's name in the store.
    pub fn of(store: &Store, s: &SnapshotInfo) -> SnapshotJson {
        SnapshotJson::new(s, store.volume(s.volume_id).ok().map(|v| v.name))
    }
}

/// A volume's automatic snapshot policy.
#[derive(Debug, Serialize)]
pub struct PolicyJson {
    /// Seconds between automatic snapshots.
    pub interval_secs: u64,
    /// Keep at least the newest N automatic snapshots (null: no count rule).
    pub keep_last: Option<u32>,
    /// Keep automatic snapshots younger than this many seconds (null: no age rule).
    pub keep_for_secs: Option<u64>,
}

impl PolicyJson {
    /// From the library's record.
    pub fn new(p: SnapshotPolicy) -> PolicyJson {
        PolicyJson { interval_secs: p.interval_secs, keep_last: p.keep_last, keep_for_secs: p.keep_for_secs }
    }
}

/// A template.
#[derive(Debug, Serialize)]
pub struct TemplateJson {
    /// `tmpl-N`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Logical size in bytes.
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The volume it was made from (`vol-N`; it may since be gone).
    pub source_volume_id: String,
    /// The snapshot it was made from (`snap-N`; it may since be gone).
    pub source_snapshot_id: String,
    /// Free key/value labels.
    pub labels: BTreeMap<String, String>,
    /// Live volumes made from it.
    pub volume_count: usize,
    /// Free-form owner; empty when unset.
    pub owner: String,
}

impl TemplateJson {
    /// From the library's record; counts the live volumes made from it.
    pub fn of(store: &Store, t: &TemplateInfo) -> TemplateJson {
        TemplateJson {
            id: t.id.to_string(),
            name: t.name.clone(),
            description: t.description.clone(),
            size_bytes: t.size_bytes,
            created_at: t.created_at,
            source_volume_id: t.source.0.to_string(),
            source_snapshot_id: t.source.1.to_string(),
            labels: t.labels.clone(),
            owner: t.owner.clone(),
            volume_count: store
                .list_volumes()
                .iter()
                .filter(|v| v.origin == Some(VolumeOrigin::Template(t.id)))
                .count(),
        }
    }
}

/// `stats`.
#[derive(Debug, Serialize)]
pub struct StatsJson {
    /// Block size of the store.
    pub block_size: u32,
    /// Live volumes.
    pub volumes: usize,
    /// Snapshots.
    pub snapshots: usize,
    /// Templates.
    pub templates: usize,
    /// Sum of the live volumes' sizes.
    pub logical_bytes: u64,
    /// Data mapped by live volumes, each counted in full.
    pub mapped_bytes: u64,
    /// Distinct data blocks referenced, in bytes.
    pub physical_bytes: u64,
    /// Data blocks seen by more than one volume or snapshot.
    pub shared_blocks: u64,
    /// Distinct data blocks referenced.
    pub data_blocks: u64,
    /// Distinct tree nodes.
    pub tree_nodes: u64,
    /// Memory held by the metadata.
    pub metadata_memory_bytes: u64,
    /// Of it, written tree nodes in the node cache.
    pub node_cache_bytes: u64,
    /// Size of the data file.
    pub file_bytes: u64,
    /// Free space inside the data file.
    pub free_bytes: u64,
    /// Bytes of the data file in use (blocks, metadata, WAL).
    pub used_bytes: u64,
    /// Free bytes given back to the file system (punched).
    pub punched_bytes: u64,
    /// Bytes the file system has allocated to the data file.
    pub allocated_bytes: u64,
}

impl StatsJson {
    /// From the library's figures.
    pub fn new(s: &StoreStats, block_size: u32) -> StatsJson {
        StatsJson {
            block_size,
            volumes: s.volumes,
            snapshots: s.snapshots,
            templates: s.templates,
            logical_bytes: s.logical_bytes,
            mapped_bytes: s.mapped_bytes,
            physical_bytes: s.physical_bytes,
            shared_blocks: s.shared_blocks,
            data_blocks: s.data_blocks,
            tree_nodes: s.tree_nodes,
            metadata_memory_bytes: s.metadata_memory_bytes,
            node_cache_bytes: s.node_cache_bytes,
            file_bytes: s.file_bytes,
            free_bytes: s.free_bytes,
            used_bytes: s.used_bytes,
            punched_bytes: s.punched_bytes,
            allocated_bytes: s.allocated_bytes,
        }
    }
}

/// One problem found by `check`.
#[derive(Debug, Serialize)]
pub struct ProblemJson {
    /// `wrong_refcount`, `referenced_but_free`, `double_owned`, `leaked`,
    /// `unreadable_node` or `other`.
    pub kind: &'static str,
    /// The page concerned, when known.
    pub page: Option<u64>,
    /// Stored reference count (`wrong_refcount` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<u32>,
    /// Reference count the trees imply (`wrong_refcount` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<u32>,
    /// Human-readable description.
    pub message: String,
}

impl ProblemJson {
    /// From the library's problem.
    pub fn new(p: &Problem) -> ProblemJson {
        let mut j = ProblemJson { kind: "other", page: None, stored: None, actual: None, message: String::new() };
        match p {
            Problem::WrongRefcount { page, stored, actual } => {
                j.kind = "wrong_refcount";
                j.page = Some(*page);
                j.stored = Some(*stored);
                j.actual = Some(*actual);
                j.message = format!("page {page}: reference count is {stored}, the trees reference it {actual} times");
            }
            Problem::ReferencedButFree { page } => {
                j.kind = "referenced_but_free";
                j.page = Some(*page);
                j.message = format!("page {page}: referenced by a tree but listed as free");
            }
            Problem::DoubleOwned { page } => {
                j.kind = "double_owned";
                j.page = Some(*page);
                j.message = format!("page {page}: owned twice (data and metadata, or free and reserved)");
            }
            Problem::Leaked { page } => {
                j.kind = "leaked";
                j.page = Some(*page);
                j.message = format!("page {page}: leaked (neither referenced, free, reserved nor waiting for reuse)");
            }
            Problem::UnreadableNode { page, detail } => {
                j.kind = "unreadable_node";
                j.page = Some(*page);
                j.message = format!("page {page}: tree node unreadable: {detail}");
            }
            other => {
                j.message = format!("{other:?}");
            }
        }
        j
    }
}

/// `check`.
#[derive(Debug, Serialize)]
pub struct CheckJson {
    /// True when no problem was found.
    pub clean: bool,
    /// Live volumes.
    pub volumes: usize,
    /// Snapshots.
    pub snapshots: usize,
    /// Templates.
    pub templates: usize,
    /// Distinct tree nodes visited.
    pub nodes: u64,
    /// Distinct data pages referenced.
    pub data_pages: u64,
    /// Every problem found.
    pub problems: Vec<ProblemJson>,
}

impl CheckJson {
    /// From the library's report.
    pub fn new(r: &CheckReport) -> CheckJson {
        CheckJson {
            clean: r.is_clean(),
            volumes: r.volumes,
            snapshots: r.snapshots,
            templates: r.templates,
            nodes: r.nodes,
            data_pages: r.data_pages,
            problems: r.problems.iter().map(ProblemJson::new).collect(),
        }
    }
}

/// Who sees a damaged block.
#[derive(Debug, Serialize)]
pub struct SeenByJson {
    /// `vol-N` or `snap-N`.
    pub id: String,
    /// The logical block number there.
    pub block: u64,
}

/// One damaged block found by `scrub`.
#[derive(Debug, Serialize)]
pub struct DamagedJson {
    /// The page that fails its checksum.
    pub page: u64,
    /// Volumes that see it.
    pub volumes: Vec<SeenByJson>,
    /// Snapshots that see it.
    pub snapshots: Vec<SeenByJson>,
    /// Templates that see it.
    pub templates: Vec<SeenByJson>,
}

impl DamagedJson {
    /// From the library's record.
    pub fn new(d: &DamagedBlock) -> DamagedJson {
        DamagedJson {
            page: d.page,
            volumes: d.volumes.iter().map(|(v, b)| SeenByJson { id: v.to_string(), block: *b }).collect(),
            snapshots: d.snapshots.iter().map(|(s, b)| SeenByJson { id: s.to_string(), block: *b }).collect(),
            templates: d.templates.iter().map(|(t, b)| SeenByJson { id: t.to_string(), block: *b }).collect(),
        }
    }
}

/// `scrub`.
#[derive(Debug, Serialize)]
pub struct ScrubJson {
    /// True when every block verified.
    pub clean: bool,
    /// Data blocks read and verified.
    pub blocks_checked: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Every damaged block.
    pub damaged: Vec<DamagedJson>,
}

impl ScrubJson {
    /// From the library's report.
    pub fn new(r: &ScrubReport) -> ScrubJson {
        ScrubJson {
            clean: r.is_clean(),
            blocks_checked: r.blocks_checked,
            bytes_read: r.bytes_read,
            damaged: r.damaged.iter().map(DamagedJson::new).collect(),
        }
    }
}
