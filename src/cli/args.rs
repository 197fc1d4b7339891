//! The command line grammar (clap derive).

use super::fmt::parse_size;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Where the store lives when neither `--store` nor `COWVOL_STORE` says.
pub const DEFAULT_STORE: &str = "./cowvol-data";

/// cowvol: copy-on-write block volumes with instant snapshots, forks and restore.
#[derive(Debug, Parser)]
#[command(name = "cowvol", version, about, long_about = None)]
#[command(after_help = "Volumes and snapshots can be named by name or by id (vol-3, snap-7).\n\
Sizes accept binary suffixes: 512, 64K, 10G, 1T (K = 1024).\n\
Exit codes: 0 ok, 1 failure or problems found, 2 bad usage, 3 not found,\n\
4 busy/locked/timeout, 5 corruption, 6 no space.")]
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
    /// Create, list, inspect, restore and delete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Verify every reference count and tree node; exits 1 when a problem is found.
    Check,
    /// Read every data block and verify its checksum; exits 1 when a block is damaged.
    Scrub,
    /// Space used, shared and free.
    Stats,
    /// Measure cowvol against raw pwrite/pread/fdatasync in the same directory.
    Bench(BenchArgs),
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
    /// Create an empty volume (reads as zeroes).
    Create {
        /// Name of the new volume.
        name: String,
        /// Logical size, e.g. 10G.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: u64,
        /// Who may write.
        #[arg(long, value_enum, default_value_t = AccessArg::Rwo)]
        access_mode: AccessArg,
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

/// `cowvol snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take an O(1), crash-consistent snapshot of a volume.
    Create {
        /// Volume name or id.
        volume: String,
        /// Snapshot name, unique among the volume's snapshots.
        name: String,
        /// Free text kept with the snapshot.
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
    },
    /// List snapshots, of one volume or of all.
    List {
        /// Volume name or id (an id also works for a deleted volume).
        volume: Option<String>,
        /// Only snapshots whose name contains TEXT (case-insensitive).
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
    },
    /// Show one snapshot.
    Info {
        /// Volume name or id.
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
    },
    /// Roll a volume back to a snapshot (atomic, irreversible).
    Restore {
        /// Volume name or id.
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
        /// Seconds to wait for in-flight I/O to drain [default: 30].
        #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
        timeout: Option<f64>,
    },
    /// Delete a snapshot; succeeds when it is already gone.
    Delete {
        /// Volume name or id (an id also works for a deleted volume).
        volume: String,
        /// Snapshot name or id.
        snapshot: String,
    },
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
