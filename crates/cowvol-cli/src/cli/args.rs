//! The command line grammar (clap derive).

use super::fmt::{parse_duration, parse_label, parse_size};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Where the store lives when neither `--store` nor `COWVOL_STORE` says.
pub const DEFAULT_STORE: &str = "./cowvol-data";

/// cowvol: copy-on-write block volumes with instant snapshots, forks and restore.
#[derive(Debug, Parser)]
#[command(name = "cowvol", version, about, long_about = None)]
#[command(after_help = "Volumes, snapshots and templates can be named by name or by id (vol-3, snap-7, tmpl-2).\n\
Sizes accept binary suffixes: 512, 64K, 10G, 1T (K = 1024).\n\
Durations accept s, m, h, d and w suffixes: 90s, 15m, 1h30m, 7d (a plain number is seconds).\n\
Exit codes: 0 ok, 1 failure or problems found, 2 bad usage, 3 not found,\n\
4 busy/locked/timeout, 5 corruption, 6 no space, 7 snapshot held.")]
pub struct Cli {
    /// Store directory [env: COWVOL_STORE] [default: ./cowvol-data]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars and no confirmation messages; errors still go to stderr.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a guided tour in a temporary store (or in --store DIR, which is kept).
    Demo,
    /// Create the store directory (or report the existing one).
    Init(InitArgs),
    /// Create, list, inspect, fork, import, export, read, write and delete volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Create, search, inspect, hold, release, restore and delete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Create, list, inspect and delete templates (read-only base images).
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Set, show, clear and run automatic snapshot policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Back snapshots up to a directory or S3 bucket; list, restore, verify, delete, prune, collect garbage.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Verify every reference count and tree node; exits 1 when a problem is found.
    Check,
    /// Read every data block and verify its checksum; exits 1 when a block is damaged.
    Scrub,
    /// Space used, shared and free.
    Stats,
    /// Measure cowvol against raw pwrite/pread/fdatasync in the same directory.
    Bench(BenchArgs),
    /// One probe of `bench --only scale`, in a process of its own: open the
    /// keyed store in DIR, read, snapshot, close; print the figures as JSON.
    #[command(hide = true)]
    BenchProbe {
        /// The store directory `bench` built.
        dir: std::path::PathBuf,
        /// Build the keyed store of N blocks in DIR instead (to profile one
        /// size by hand: `cowvol bench-probe DIR --build N`, then probes).
        #[arg(long, value_name = "N")]
        build: Option<u64>,
        /// Overwrite BYTES of the built store's volume in 4 KiB writes at
        /// random offsets instead (a flush every 1 MiB, then a checkpoint),
        /// and print the metadata the engine wrote, by kind, as JSON.
        #[arg(long, value_name = "BYTES", value_parser = parse_size, conflicts_with = "build")]
        overwrite: Option<u64>,
        /// Seed of the overwrite's random offsets: the same seed overwrites
        /// the same blocks in the same order (a run of many seeds spreads
        /// the overwrites over the whole volume).
        #[arg(long, default_value_t = 41, requires = "overwrite")]
        seed: u64,
    },
    /// Serve volumes and snapshots as NBD exports (qemu, nbdfuse, nbd-client) until SIGINT/SIGTERM.
    Nbd(NbdArgs),
    /// Serve the platform HTTP API and the snapshot panel (/ui) until SIGINT or SIGTERM.
    Serve(ServeArgs),
}

/// Where backups go: `--target URL`, else `COWVOL_BACKUP_TARGET`.
#[derive(Debug, Args)]
#[command(after_help = "Targets: file:///PATH or a plain path (a directory), or s3://BUCKET[/PREFIX]\n\
[?endpoint=http://HOST:PORT&region=NAME]. S3 credentials come from AWS_ACCESS_KEY_ID and\n\
AWS_SECRET_ACCESS_KEY, or from the file COWVOL_S3_CREDENTIALS_FILE names (lines\n\
`access_key_id = ...` and `secret_access_key = ...`); never from the command line.")]
pub struct TargetArg {
    /// The backup target [env: COWVOL_BACKUP_TARGET].
    #[arg(long, value_name = "URL", env = "COWVOL_BACKUP_TARGET")]
    pub target: String,
}

/// `cowvol backup ...`.
#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Back a snapshot up: only the chunks the target lacks are uploaded; the snapshot becomes backed-up.
    Create {
        /// Volume name or id.
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
        #[command(flatten)]
        target: TargetArg,
        /// Chunk size, the unit of deduplication (a power of two, 4K to 16M).
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256K")]
        chunk_size: u64,
        /// Upload a pack once it holds this much new data.
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
        pack_size: u64,
        /// Packs uploaded at the same time.
        #[arg(long, value_name = "N", default_value_t = 4)]
        uploads: usize,
        /// Read and hash every mapped block instead of only what changed since the last backup.
        #[arg(long)]
        full: bool,
    },
    /// List the backups on a target, oldest snapshot first.
    List {
        #[command(flatten)]
        target: TargetArg,
        /// Only backups of volumes of this name.
        #[arg(long, value_name = "NAME")]
        volume: Option<String>,
    },
    /// Restore a backup into a new volume of this store (with a snapshot of the backed-up name).
    Restore {
        /// Backup id (from `backup list`).
        backup: String,
        #[command(flatten)]
        target: TargetArg,
        /// Name of the new volume.
        #[arg(long = "as", value_name = "NEW_VOLUME")]
        as_volume: String,
        /// Ranged reads in flight.
        #[arg(long, value_name = "N", default_value_t = 4)]
        downloads: usize,
    },
    /// Delete backups (their chunks go at the next `backup gc`).
    Delete {
        /// Backup ids.
        #[arg(required = true)]
        backups: Vec<String>,
        #[command(flatten)]
        target: TargetArg,
    },
    /// Retention: keep the newest N backups of each volume, delete the others, then collect garbage.
    Prune {
        #[command(flatten)]
        target: TargetArg,
        /// How many backups of each volume to keep.
        #[arg(long, value_name = "N")]
        keep_last: usize,
        /// Only this volume's backups (by name).
        #[arg(long, value_name = "NAME")]
        volume: Option<String>,
        /// Only delete the manifests; leave garbage collection for later.
        #[arg(long)]
        no_gc: bool,
    },
    /// Check backups: manifests, pack indexes, and (unless --quick) every chunk's hash; exits 1 on a problem.
    Verify {
        /// Only this backup [default: all].
        backup: Option<String>,
        #[command(flatten)]
        target: TargetArg,
        /// Check that every chunk is indexed, without downloading data.
        #[arg(long)]
        quick: bool,
    },
    /// Delete packs no backup references, and packs interrupted backups left.
    Gc {
        #[command(flatten)]
        target: TargetArg,
        /// First delete every lock (only when no backup or gc is running: a killed process left them).
        #[arg(long)]
        break_locks: bool,
    },
}

/// `cowvol nbd`.
#[derive(Debug, Args)]
#[command(after_help = "Export names are volume names or ids; VOL@SNAP exports a snapshot read-only.\n\
While serving, other cowvol commands on the same --store are forwarded to this process over\n\
DIR/cowvol.ctl. Before a restore, clients must unmount or freeze their file systems.")]
pub struct NbdArgs {
    /// Where to listen: unix:PATH or tcp:HOST:PORT (repeatable).
    #[arg(long, value_name = "ADDR", required = true, value_parser = parse_listen)]
    pub listen: Vec<cowvol_nbd::ListenAddr>,
    /// Serve every export read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Serve only these exports (volume, volume id, or VOL@SNAP) [default: every volume].
    #[arg(long, value_name = "NAME", num_args = 1..)]
    pub export: Vec<String>,
    /// Close a volume's connections cleanly (finish in-flight requests, flush) before restoring it.
    #[arg(long)]
    pub disconnect_on_restore: bool,
    /// Open connections at most.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client has to finish the handshake.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub handshake_timeout: u64,
}

fn parse_listen(s: &str) -> Result<cowvol_nbd::ListenAddr, String> {
    s.parse()
}

/// `cowvol serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7480")]
    pub listen: std::net::SocketAddr,
    /// Tokens file, one `TOKEN OWNER [admin]` a line, mode 600 [default: a one-off admin token, printed].
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// Size of volumes created without size_bytes (thin).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "10G")]
    pub default_volume_size: u64,
}

/// `cowvol bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Smaller volumes and fewer repetitions (a few minutes on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// Scratch directory on the disk to measure [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Mapped-block counts for the snapshot latency table [default: 1000,100000,1000000].
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    pub sizes: Option<Vec<u64>>,
    /// Also draw snapshot, fork, restore and delete latency against volume size as an SVG chart.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Mapped-block counts for the scale figures (open time, memory) [default: 1000 to 10000000; --quick: to 100000].
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    pub scale_sizes: Option<Vec<u64>>,
    /// Run only these parts [default: all]: random, sequential, durable, admin, names, sparse, punch, check, cache, scale, amplification.
    #[arg(long, value_name = "PART,...", value_delimiter = ',', value_parser = ["random", "sequential", "durable", "admin", "names", "sparse", "punch", "check", "cache", "scale", "amplification"])]
    pub only: Option<Vec<String>>,
}

/// `cowvol init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Block size of a new store: a power of two from 4K to 1M [default: 4K].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub block_size: Option<u64>,
}

/// Who may write to a volume at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessArg {
    /// Read-write-once: one writable handle at a time.
    Rwo,
    /// Read-write-many: any number of writable handles.
    Rwx,
    /// Read-only-many: every write is refused.
    Rox,
}

/// `cowvol volume ...`.
#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create an empty volume (reads as zeroes), or one made from a snapshot or template.
    Create {
        /// Name of the new volume.
        name: String,
        /// Logical size, e.g. 10G; optional with --from-snapshot or --from-template (it must then match).
        #[arg(long, value_name = "SIZE", value_parser = parse_size,
              required_unless_present_any = ["from_snapshot", "from_template"])]
        size: Option<u64>,
        /// Start with the data of this snapshot (name or id; a name may need --volume).
        #[arg(long, value_name = "SNAP", conflicts_with = "from_template")]
        from_snapshot: Option<String>,
        /// The volume whose snapshot --from-snapshot names.
        #[arg(long, value_name = "VOL", requires = "from_snapshot")]
        volume: Option<String>,
        /// Start with the data of this template (name or id).
        #[arg(long, value_name = "TEMPLATE")]
        from_template: Option<String>,
        /// Who may write.
        #[arg(long, value_enum, default_value_t = AccessArg::Rwo)]
        access_mode: AccessArg,
        /// Owner of the new volume (a tenant or team); empty means none, or the owner of what it is made from.
        #[arg(long, value_name = "OWNER", default_value = "")]
        owner: String,
    },
    /// List the live volumes.
    List,
    /// Show one volume and its snapshots.
    Info {
        /// Volume name or id.
        volume: String,
    },
    /// Delete a volume (its snapshots stay; its forks are untouched).
    Delete {
        /// Volume name or id.
        volume: String,
    },
    /// Create a writable copy of a volume or of one of its snapshots (O(1)).
    Fork {
        /// Source volume name or id (an id also works for a deleted volume with --from-snapshot).
        volume: String,
        /// Name of the new volume.
        new: String,
        /// Fork this snapshot of the source instead of its live state.
        #[arg(long, value_name = "SNAP")]
        from_snapshot: Option<String>,
        /// Who may write to the new volume.
        #[arg(long, value_enum, default_value_t = AccessArg::Rwo)]
        access_mode: AccessArg,
        /// Owner of the new volume (a tenant or team); empty means the source volume's owner.
        #[arg(long, value_name = "OWNER", default_value = "")]
        owner: String,
    },
    /// Create a volume from a raw disk image; all-zero blocks are not stored.
    Import {
        /// Name of the new volume.
        name: String,
        /// Raw image file (its size becomes the volume's size).
        file: PathBuf,
    },
    /// Write a volume (or one of its snapshots) to a raw image file, sparse where it reads zero.
    Export {
        /// Volume name or id.
        volume: String,
        /// Output file (replaced).
        file: PathBuf,
        /// Export this snapshot of the volume instead of its live state.
        #[arg(long, value_name = "SNAP")]
        snapshot: Option<String>,
    },
    /// Write the contents of FILE (or stdin with `-`) into a volume at an offset.
    Write {
        /// Volume name or id.
        volume: String,
        /// Byte offset in the volume, e.g. 1M.
        #[arg(long, value_name = "N", value_parser = parse_size)]
        offset: u64,
        /// Input file, or `-` for stdin.
        file: PathBuf,
    },
    /// Read a byte range of a volume (or snapshot) to FILE, or to stdout.
    Read {
        /// Volume name or id.
        volume: String,
        /// Byte offset, e.g. 4K.
        #[arg(long, value_name = "N", value_parser = parse_size)]
        offset: u64,
        /// Number of bytes, e.g. 64K.
        #[arg(long, value_name = "N", value_parser = parse_size)]
        length: u64,
        /// Read this snapshot of the volume instead of its live state.
        #[arg(long, value_name = "SNAP")]
        snapshot: Option<String>,
        /// Output file; stdout when absent.
        file: Option<PathBuf>,
    },
}

/// Free-form metadata kept with a snapshot.
#[derive(Debug, Args)]
pub struct SnapshotMeta {
    /// Free text kept with the snapshot.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
    /// Free-form owner.
    #[arg(long, value_name = "OWNER", default_value = "")]
    pub owner: String,
    /// A key=value label; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Delete the snapshot in the first policy run this long after now (unless it is held then), e.g. 7d.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<u64>,
    /// Makes a retry safe: a second create with the same key on the same volume within 24 hours returns the first snapshot.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// Which snapshots `snapshot list` shows.
#[derive(Debug, Args)]
pub struct SnapshotFilter {
    /// Volume name or id; a deleted volume by its id or by the name it had.
    pub volume: Option<String>,
    /// Only snapshots whose name contains TEXT (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// Only manual or only automatic snapshots.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub kind: Option<cowvol::SnapshotKind>,
    /// Only snapshots in this status.
    #[arg(long, value_name = "STATUS", value_parser = parse_status)]
    pub status: Option<cowvol::SnapshotStatus>,
    /// Only snapshots whose last backup is backed-up, backup-failed or backing-up.
    #[arg(long, value_name = "STATE", value_parser = parse_backup_state)]
    pub backup: Option<cowvol::BackupState>,
    /// Only snapshots with exactly this owner.
    #[arg(long, value_name = "OWNER")]
    pub owner: Option<String>,
    /// Only snapshots carrying this key=value label; repeat to require several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only held snapshots.
    #[arg(long, conflicts_with = "not_held")]
    pub held: bool,
    /// Only snapshots that are not held.
    #[arg(long)]
    pub not_held: bool,
    /// Newest first instead of oldest first.
    #[arg(long)]
    pub newest_first: bool,
    /// Show at most N snapshots.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Skip the first N matches (for paging).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,
}

/// `cowvol snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take an O(1), crash-consistent snapshot of a volume.
    Create {
        /// Volume name or id.
        volume: String,
        /// Snapshot name, unique among the volume's snapshots.
        name: String,
        #[command(flatten)]
        meta: SnapshotMeta,
    },
    /// Snapshot several volumes at the same instant, in one atomic step.
    CreateGroup {
        /// Snapshot name, given to the snapshot of every volume.
        name: String,
        /// Volume names or ids (at least one, no repeats).
        #[arg(required = true, value_name = "VOL")]
        volumes: Vec<String>,
        #[command(flatten)]
        meta: SnapshotMeta,
    },
    /// Search snapshots, of one volume or of all.
    List(SnapshotFilter),
    /// Show one snapshot.
    Info {
        /// Volume name or id.
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
    },
    /// Hold (protect) a snapshot: it cannot be deleted, by hand or by a policy, until released.
    Hold {
        /// Volume name or id.
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
    },
    /// Release a snapshot's hold.
    Release {
        /// Volume name or id.
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
    },
    /// Roll a volume back to a snapshot (atomic; irreversible unless --safety-snapshot).
    Restore {
        /// Volume name or id.
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
        /// Seconds to wait for in-flight I/O to drain [default: 30].
        #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
        timeout: Option<f64>,
        /// Keep the state being discarded as a snapshot of this name, taken in the same atomic step.
        #[arg(long, value_name = "NAME")]
        safety_snapshot: Option<String>,
    },
    /// Delete a snapshot; succeeds when it is already gone, refused (exit 7) while it is held.
    Delete {
        /// Volume name or id (an id also works for a deleted volume).
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
    },
    /// Show the extents that differ between two snapshots, or a snapshot and the live volume.
    Diff {
        /// Volume name or id (an id or recorded name also works for a deleted volume).
        volume: String,
        /// The earlier side: a snapshot name or id.
        from: String,
        /// The later side: a snapshot name or id, or `-` for the volume's live state.
        to: String,
        /// Read TO from this volume instead (a fork or another volume with a common ancestor).
        #[arg(long, value_name = "VOL")]
        to_volume: Option<String>,
    },
    /// Write a snapshot as a stream (to stdout, or -o FILE) for `snapshot receive` in another store.
    Send {
        /// Volume name or id (an id or recorded name also works for a deleted volume).
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
        /// Send only the changes since this snapshot (an incremental stream).
        #[arg(long, value_name = "SNAP")]
        from: Option<String>,
        /// Write the stream to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Leave out the frames before N, for a receiver resuming at frame N (see `receive --pending`).
        #[arg(long, value_name = "N", default_value_t = 0)]
        resume_from_frame: u64,
    },
    /// Read a stream (from stdin, or -i FILE) and land it as a snapshot in this store.
    Receive {
        /// Read the stream from FILE instead of stdin.
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// File the snapshot under this volume name instead of the sender's.
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
        /// Continue an interrupted receive of the same stream from its last acknowledged frame.
        #[arg(long)]
        resume: bool,
        /// List interrupted receives (key, next frame, acknowledged bytes) and exit.
        #[arg(long, conflicts_with_all = ["resume", "abort", "input", "as_name"])]
        pending: bool,
        /// Discard the interrupted receive with this key and exit.
        #[arg(long, value_name = "KEY", conflicts_with_all = ["resume", "input", "as_name"])]
        abort: Option<String>,
    },
}

/// `cowvol template ...`.
#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Make a read-only template from a snapshot; it outlives the snapshot and its volume.
    Create {
        /// Name of the new template.
        name: String,
        /// The snapshot (name or id; a name may need --volume).
        #[arg(long, value_name = "SNAP")]
        from_snapshot: String,
        /// The volume whose snapshot --from-snapshot names.
        #[arg(long, value_name = "VOL")]
        volume: Option<String>,
        /// Free text kept with the template.
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
        /// A key=value label; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Owner of the new template (a tenant or team); empty means the snapshot's owner.
        #[arg(long, value_name = "OWNER", default_value = "")]
        owner: String,
    },
    /// List the templates.
    List,
    /// Show one template.
    Info {
        /// Template name or id.
        template: String,
    },
    /// Delete a template; volumes made from it keep their data. Succeeds when it is already gone.
    Delete {
        /// Template name or id.
        template: String,
    },
}

/// `cowvol policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Set a volume's automatic snapshot policy (replacing any previous one).
    Set {
        /// Volume name or id.
        volume: String,
        /// Time between automatic snapshots, e.g. 15m, 1h, 1d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        interval: u64,
        /// Keep at least the newest N automatic snapshots.
        #[arg(long, value_name = "N")]
        keep_last: Option<u32>,
        /// Keep automatic snapshots younger than this, e.g. 7d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        keep_for: Option<u64>,
    },
    /// Show one volume's interval policy and schedules, or every volume that has either.
    Show {
        /// Volume name or id.
        volume: Option<String>,
    },
    /// Add a calendar schedule to a volume, e.g. `policy add db --daily 02:00 --tz Europe/Berlin --keep 7`.
    Add(ScheduleArgs),
    /// List the calendar schedules of one volume, or of every volume, with their last run and next slot.
    List {
        /// Volume name or id.
        volume: Option<String>,
    },
    /// Remove a calendar schedule (the snapshots it took stay).
    Remove {
        /// Volume name or id.
        volume: String,
        /// Schedule name.
        name: String,
    },
    /// Remove a volume's policy (its automatic snapshots stay).
    Clear {
        /// Volume name or id.
        volume: String,
    },
    /// Take the snapshots that policies and schedules have due, prune what retention lets go, delete expired snapshots.
    Run {
        /// The time to run as of: seconds since the Unix epoch, or RFC 3339 such as 2027-03-28T01:30:00Z [default: now].
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        now: Option<u64>,
    },
}

/// `cowvol policy add`: one calendar schedule.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("every").required(true).args(["hourly", "daily", "weekly", "monthly"])))]
pub struct ScheduleArgs {
    /// Volume name or id.
    pub volume: String,
    /// Every hour at this minute (0 to 59; `:15` works too).
    #[arg(long, value_name = "MINUTE", value_parser = parse_minute)]
    pub hourly: Option<u8>,
    /// Every day at this time (HH:MM).
    #[arg(long, value_name = "HH:MM", value_parser = parse_time_of_day)]
    pub daily: Option<cowvol::TimeOfDay>,
    /// Every week at this time (HH:MM), on the day given by --on (mon to sun).
    #[arg(long, value_name = "HH:MM", value_parser = parse_time_of_day, requires = "on")]
    pub weekly: Option<cowvol::TimeOfDay>,
    /// Every month at this time (HH:MM), on the day given by --on (1 to 31; the last day in shorter months).
    #[arg(long, value_name = "HH:MM", value_parser = parse_time_of_day, requires = "on")]
    pub monthly: Option<cowvol::TimeOfDay>,
    /// The day for --weekly (mon to sun) or --monthly (1 to 31).
    #[arg(long, value_name = "DAY")]
    pub on: Option<String>,
    /// The IANA time zone of the times, e.g. Europe/Berlin.
    #[arg(long, value_name = "ZONE", default_value = "UTC")]
    pub tz: String,
    /// Keep at least the newest N snapshots this schedule took.
    #[arg(long, value_name = "N")]
    pub keep: Option<u32>,
    /// Keep this schedule's snapshots younger than this, e.g. 30d.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_for: Option<u64>,
    /// The schedule's name, unique on the volume [default: hourly, daily, weekly or monthly].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// A key=value label every snapshot it takes carries; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Snapshot even when the volume has not changed since this schedule's last snapshot.
    #[arg(long)]
    pub take_unchanged: bool,
    /// The time the schedule is added at (as for `policy run --now`): its first slot is the first after it [default: now].
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub now: Option<u64>,
}

fn parse_minute(s: &str) -> Result<u8, String> {
    let t = s.strip_prefix(':').unwrap_or(s);
    t.parse::<u8>().ok().filter(|&m| m < 60).ok_or_else(|| format!("{s:?} is not a minute (0 to 59)"))
}

fn parse_time_of_day(s: &str) -> Result<cowvol::TimeOfDay, String> {
    s.parse().map_err(|e: cowvol::Error| e.to_string())
}

/// Seconds since the Unix epoch, or an RFC 3339 time with its offset.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let t: jiff::Timestamp = s.parse().map_err(|_| {
        format!("{s:?} is not a time (seconds since the Unix epoch, or RFC 3339 such as 2027-03-28T01:30:00Z)")
    })?;
    u64::try_from(t.as_second()).map_err(|_| format!("{s:?} is before 1970"))
}

fn parse_kind(s: &str) -> Result<cowvol::SnapshotKind, String> {
    s.parse().map_err(|_| format!("{s:?} is not a snapshot kind (manual or auto)"))
}

fn parse_status(s: &str) -> Result<cowvol::SnapshotStatus, String> {
    s.parse().map_err(|_| format!("{s:?} is not a snapshot status (creating, ready or failed)"))
}

fn parse_backup_state(s: &str) -> Result<cowvol::BackupState, String> {
    s.parse().map_err(|_| format!("{s:?} is not a backup state (backed-up, backup-failed or backing-up)"))
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let t = s.trim().strip_suffix('s').unwrap_or(s.trim());
    match t.parse::<f64>() {
        Ok(v) if (0.0..=1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds (e.g. 30 or 2.5)")),
    }
}

impl Cli {
    /// The store directory: `--store`, else `COWVOL_STORE` (when not empty),
    /// else [`DEFAULT_STORE`].
    pub fn store_dir(&self) -> PathBuf {
        if let Some(s) = &self.store {
            return s.clone();
        }
        match std::env::var_os("COWVOL_STORE") {
            Some(s) if !s.is_empty() => PathBuf::from(s),
            _ => PathBuf::from(DEFAULT_STORE),
        }
    }
}
