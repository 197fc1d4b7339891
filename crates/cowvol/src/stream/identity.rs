//! Which snapshot is which across stores.
//!
//! A snapshot's identity is the store that first took it and its id there,
//! plus a digest of its contents. A received snapshot carries the identity
//! it had on the sender in the label [`ORIGIN_LABEL`], so that sending it on
//! (A to B to C) keeps the identity, and C can take incrementals from B
//! against snapshots that came from A. Labels are part of the catalog as it
//! is; no format change is needed.
//!
//! The digest is FNV-1a (64 bits) over the size in bytes (u64), the block
//! size (u32), then for each mapped block in ascending order its logical
//! block number (u64) and the CRC32 of its contents (u32), all little-endian.
//! It tells apart two snapshots whose blocks differ, or where one maps a
//! block the other leaves a hole; it needs only the tree (no data is read).
//! It guards against mistakes (the wrong base, a diverged copy), not against
//! an adversary: it is not a cryptographic hash.

use super::frame::Identity;
use crate::catalog::SnapshotInfo;
use crate::engine::State;
use crate::error::Result;
use crate::tree::{self, Geometry, Root};

/// Label a received snapshot carries: `<store id, 16 hex digits>/<snapshot id>`.
pub const ORIGIN_LABEL: &str = "cowvol.origin";

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over a sequence of byte strings.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl Fnv {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(FNV_PRIME);
        }
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// The digest of one tree's block map (see the module documentation).
/// Cost: one pass over the mapped blocks' tree entries.
pub(crate) fn tree_digest(
    root: &Root,
    geo: Geometry,
    size_bytes: u64,
    block_size: u32,
    nodes: &tree::NodeCache,
) -> Result<u64> {
    let mut h = Fnv::default();
    h.update(&size_bytes.to_le_bytes());
    h.update(&block_size.to_le_bytes());
    tree::for_each_mapping(root, geo, nodes, |lb, m| {
        h.update(&lb.to_le_bytes());
        h.update(&m.crc.0.to_le_bytes());
    })?;
    Ok(h.finish())
}

/// The origin label's value for an identity.
pub(crate) fn origin_label(store_id: u64, snapshot_id: u64) -> String {
    format!("{store_id:016x}/{snapshot_id}")
}

/// Parses an origin label; `None` when it is not one.
fn parse_origin(value: &str) -> Option<(u64, u64)> {
    let (store, snap) = value.split_once('/')?;
    if store.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(store, 16).ok()?, snap.parse().ok()?))
}

/// Where a snapshot came from: its origin label, or this store.
pub(crate) fn origin_of(info: &SnapshotInfo, this_store: u64) -> (u64, u64) {
    info.labels.get(ORIGIN_LABEL).and_then(|v| parse_origin(v)).unwrap_or((this_store, info.id.0))
}

/// The full identity of a ready snapshot in the locked state.
pub(crate) fn identity_of(st: &State, info: &SnapshotInfo, this_store: u64) -> Option<Identity> {
    let s = st.snapshots.get(&info.id.0).filter(|s| s.info.is_ready())?;
    let (store_id, snapshot_id) = origin_of(info, this_store);
    // A tree that cannot be read has no identity to offer; check reports it.
    let digest = tree_digest(&s.root, s.geo, s.info.size_bytes, st.block_size as u32, &st.nodes).ok()?;
    Some(Identity { store_id, snapshot_id, digest })
}

/// The ready snapshot of this store whose origin is `(store_id, snapshot_id)`.
pub(crate) fn find_by_origin(st: &State, this_store: u64, store_id: u64, snapshot_id: u64) -> Option<SnapshotInfo> {
    st.snapshots
        .values()
        .map(|s| &s.info)
        .find(|i| i.is_ready() && origin_of(i, this_store) == (store_id, snapshot_id))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_labels_round_trip() {
        let v = origin_label(0xdead_beef, 42);
        assert_eq!(v, "00000000deadbeef/42");
        assert_eq!(parse_origin(&v), Some((0xdead_beef, 42)));
        assert_eq!(parse_origin("deadbeef/42"), None);
        assert_eq!(parse_origin("00000000deadbeef"), None);
    }

    #[test]
    fn fnv_matches_its_reference_values() {
        let mut h = Fnv::default();
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.update(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
