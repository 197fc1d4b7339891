//! The testing surface, compiled with the `testing` feature (off by
//! default) and for the crate's own tests: a simulated disk for crash and
//! fault-injection tests (`sim`), the operation model the model test and the
//! `ops` fuzz target share (`model`), decoders and seeds for the other fuzz
//! targets, a generator, and readers of data-file images.
//!
//! [`SimDir`] is a [`crate::backend::StorageDir`] that keeps every file in
//! memory with a durable image and a volatile write cache. Open a store on it
//! with [`crate::Store::open_in`], cut the power with [`SimDir::crash`], and
//! reopen the surviving image to check what recovery makes of it.

mod fuzz;
mod image;
mod keyed;
pub mod model;
mod rng;
pub mod sim;

pub use fuzz::{
    crc32, decode_catalog, decode_change_chunk, decode_node_delta, decode_superblock, decode_tree_node,
    decode_wal_batch, decode_wal_log, sample_catalog_inputs, sample_wal_batches,
};
pub use image::{catalog_offset, format_version, table_pages};
pub use keyed::{keyed_block, KeyedDir, KeyedWrites};
pub use rng::SplitMix64;
pub use sim::{LossMode, SimDir, SimStats};

/// Drops a store the way a crashed process leaves it: no final checkpoint,
/// and the open WAL batch (records not yet written) is lost. What was
/// written to the files stays, as it does in the page cache after `kill -9`.
/// Volume handles still open on the store fail from now on.
pub fn abandon(store: crate::Store) {
    store.engine.abandon();
    drop(store);
}

/// The WAL since the last checkpoint: (segments it spans, bytes of batches
/// in it). Open carries a short log on rather than checkpointing, and close
/// leaves it for the next open; these say how much such an open replays.
pub fn log_since_checkpoint(store: &crate::Store) -> (usize, u64) {
    let wal = store.engine.wal.lock();
    (wal.segments_since_checkpoint(), wal.bytes_since_checkpoint)
}

/// Tree nodes the store has read from the disk so far (node cache misses),
/// without the walk of every tree that `Store::stats` makes.
pub fn nodes_read(store: &crate::Store) -> u64 {
    store.engine.state.lock().nodes.stats().misses
}

/// Bytes the node cache holds now, without the walk of every tree that
/// `Store::stats` makes.
pub fn node_cache_bytes(store: &crate::Store) -> u64 {
    store.engine.state.lock().nodes.bytes() as u64
}

/// Pages of the reference table's groups the store has read so far, and
/// groups of counts it holds in RAM now (see `space::counts`).
pub fn count_groups(store: &crate::Store) -> (u64, u64) {
    let st = store.engine.state.lock();
    (st.space.group_reads(), st.space.groups_in_ram())
}

/// The reference table's change log as the store holds it now: changes
/// kept in RAM, chunks on the disk and the entries they hold (see
/// `space::changes`).
pub fn change_log(store: &crate::Store) -> (u64, usize, u64) {
    store.engine.state.lock().space.change_log_figures()
}

/// Extents in the free map (holes included), and whether every group of
/// the file has been discovered (see `space::discover`).
pub fn free_map_extents(store: &crate::Store) -> (u64, bool) {
    let st = store.engine.state.lock();
    (st.space.free_extents(), st.space.fully_discovered())
}

/// Each chunk of the reference table's change log: the entries it holds,
/// its pages, and the runs they lie in.
pub fn change_log_chunks(store: &crate::Store) -> Vec<(u64, u64, usize)> {
    store.engine.state.lock().space.change_log_chunks()
}

/// Pages of the reference table's change log the store has read since it
/// was opened.
pub fn change_log_page_reads(store: &crate::Store) -> u64 {
    store.engine.state.lock().space.change_log_page_reads()
}

/// Whether the store holds the whole change log in RAM (read whole since
/// open, or empty), rather than only some groups' changes.
pub fn change_log_read_whole(store: &crate::Store) -> bool {
    store.engine.state.lock().space.change_log_read()
}

/// Changes the store read from its change log a group at a time and keeps
/// for groups whose counts are not in RAM (none: they leave with the
/// group).
pub fn logged_changes_outside_ram(store: &crate::Store) -> u64 {
    store.engine.state.lock().space.rereadable_changes_outside_ram()
}

/// A pinned view of every tree, as `check` holds one, until it is dropped
/// (tests of what a checkpoint does while a view lives).
pub struct HeldView<'a>(#[allow(dead_code)] crate::engine::PinnedView<'a>);

/// Pins a view of every tree of `store` and holds it until the result is
/// dropped.
pub fn hold_view(store: &crate::Store) -> HeldView<'_> {
    let mut st = store.engine.state.lock();
    HeldView(store.engine.pin(&mut st))
}

/// Pages whose counts as the table on the disk gives them (group pages
/// with the change log applied) differ from the counts in RAM, as `(page,
/// on the disk, in RAM)`: none right after a checkpoint with nothing
/// changed since.
pub fn counts_differing_on_disk(store: &crate::Store) -> Vec<(u64, u32, u32)> {
    store.engine.state.lock().space.counts_differing_on_disk().expect("the table reads back")
}

/// Index pages of the reference table the store has read so far (open
/// reads none; see `space/discover.rs`).
pub fn index_reads(store: &crate::Store) -> u64 {
    store.engine.state.lock().space.index_reads()
}

/// Pages of the reference table the store knows as the table's own so far:
/// the index pages, and the group pages it has met by reading groups.
pub fn table_pages_known(store: &crate::Store) -> u64 {
    store.engine.state.lock().space.table_pages_known()
}

/// Adds one to the stored reference count of the page that logical block
/// `lblock` of volume `volume` maps to, as a bookkeeping bug would, and
/// returns that page (`None` when the block is unmapped or the volume does
/// not exist). For tests that `check` finds such damage.
pub fn damage_refcount(store: &crate::Store, volume: crate::VolumeId, lblock: u64) -> Option<u64> {
    let mut st = store.engine.state.lock();
    let v = st.volumes.get(&volume.0)?;
    let page = crate::tree::lookup(&v.root, v.geo, lblock, &st.nodes).ok()??.page;
    st.space.inc(page);
    Some(page)
}
