//! The catalog: which volumes and snapshots exist, their names, sizes and
//! the roots of their extent trees. It is saved whole at every checkpoint;
//! between checkpoints its changes travel through the WAL.

use crate::error::{Error, Result};
use crate::format::{Crc, Dec, Enc};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

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

impl AccessMode {
    fn code(self) -> u8 {
        match self {
            AccessMode::ReadWriteOnce => 0,
            AccessMode::ReadWriteMany => 1,
            AccessMode::ReadOnlyMany => 2,
        }
    }
    fn from_code(c: u8, d: &Dec<'_>) -> Result<Self> {
        Ok(match c {
            0 => AccessMode::ReadWriteOnce,
            1 => AccessMode::ReadWriteMany,
            2 => AccessMode::ReadOnlyMany,
            _ => return Err(d.bad(format!("unknown access mode {c}"))),
        })
    }
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
    /// The volume or snapshot it was forked from, if any.
    pub origin: Option<(VolumeId, Option<SnapshotId>)>,
}

/// What a snapshot is, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its id, unique in the store.
    pub id: SnapshotId,
    /// The volume it was taken of. The snapshot outlives that volume.
    pub volume_id: VolumeId,
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
        let (ov, os) = self.origin.map_or((0, 0), |(v, s)| (v.0, s.map_or(0, |s| s.0)));
        e.u64(ov);
        e.u64(os);
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<VolumeInfo> {
        let id = VolumeId(d.u64()?);
        let name = d.str()?;
        let size_bytes = d.u64()?;
        let access_mode = AccessMode::from_code(d.u8()?, d)?;
        let cache_bytes = d.u64()?;
        let write_buffer_bytes = d.u64()?;
        let created_at = d.u64()?;
        let ov = d.u64()?;
        let os = d.u64()?;
        let origin = (ov != 0).then(|| (VolumeId(ov), (os != 0).then_some(SnapshotId(os))));
        Ok(VolumeInfo { id, name, size_bytes, access_mode, cache_bytes, write_buffer_bytes, created_at, origin })
    }
}

impl SnapshotInfo {
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u64(self.id.0);
        e.u64(self.volume_id.0);
        e.str(&self.name);
        e.str(&self.description);
        e.u64(self.size_bytes);
        e.u64(self.created_at);
        e.str(&self.owner);
        e.u32(self.labels.len() as u32);
        for (k, v) in &self.labels {
            e.str(k);
            e.str(v);
        }
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<SnapshotInfo> {
        let id = SnapshotId(d.u64()?);
        let volume_id = VolumeId(d.u64()?);
        let name = d.str()?;
        let description = d.str()?;
        let size_bytes = d.u64()?;
        let created_at = d.u64()?;
        let owner = d.str()?;
        let n = d.u32()?;
        let mut labels = BTreeMap::new();
        for _ in 0..n {
            let k = d.str()?;
            let v = d.str()?;
            labels.insert(k, v);
        }
        Ok(SnapshotInfo { id, volume_id, name, description, size_bytes, created_at, owner, labels })
    }
}

/// The catalog as saved at a checkpoint: every record plus the page of its
/// tree root (0 for an empty tree).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CatalogImage {
    pub(crate) next_volume: u64,
    pub(crate) next_snapshot: u64,
    pub(crate) volumes: Vec<(VolumeInfo, u64)>,
    pub(crate) snapshots: Vec<(SnapshotInfo, u64)>,
}

const CATALOG_MAGIC: u32 = u32::from_le_bytes(*b"CVCT");

impl CatalogImage {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u32(CATALOG_MAGIC);
        e.u64(self.next_volume);
        e.u64(self.next_snapshot);
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
        e.buf
    }

    pub(crate) fn decode(buf: &[u8], crc: u32, location: &str) -> Result<CatalogImage> {
        Crc(crc).verify(buf, "catalog", || location.to_string())?;
        let mut d = Dec::new(buf, "catalog");
        if d.u32()? != CATALOG_MAGIC {
            return Err(d.bad("bad magic"));
        }
        let next_volume = d.u64()?;
        let next_snapshot = d.u64()?;
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
        if d.remaining() != 0 {
            return Err(d.bad("trailing bytes"));
        }
        Ok(CatalogImage { next_volume, next_snapshot, volumes, snapshots })
    }
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
            origin: Some((VolumeId(4), Some(SnapshotId(2)))),
        };
        let s = SnapshotInfo {
            id: SnapshotId(2),
            volume_id: VolumeId(1),
            name: "s".into(),
            description: "before upgrade".into(),
            size_bytes: 1 << 30,
            created_at: 18,
            owner: "ops".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
        };
        let img = CatalogImage { next_volume: 2, next_snapshot: 3, volumes: vec![(v, 9)], snapshots: vec![(s, 0)] };
        let bytes = img.encode();
        let crc = Crc::of(&bytes).0;
        assert_eq!(CatalogImage::decode(&bytes, crc, "t").unwrap(), img);
        assert!(CatalogImage::decode(&bytes[..bytes.len() - 1], Crc::of(&bytes[..bytes.len() - 1]).0, "t").is_err());
    }
}
