//! The checkpoint metadata decoders on arbitrary bytes:
//!
//! * the catalog, with its CRC computed over the input so the checksum passes
//!   and the parser proper (volumes with their origin and policy, snapshots
//!   with kind, status and hold, templates, labels, strings) is exercised;
//! * a superblock slot (the first 112 bytes, and the whole input);
//! * a tree node page, read as if at the page and level taken from the first
//!   bytes of the input;
//! * a chunk of the reference table's change log, its entry count taken from
//!   the first bytes of the input;
//! * a delta record of a node (format 10), its address, base page and level
//!   taken from the first bytes of the input and the rest its page.
//!
//! Every decoder must return `Ok` or `Err`, never panic.
#![no_main]

use cowvol::testing::{
    crc32, decode_catalog, decode_change_chunk, decode_node_delta, decode_superblock, decode_tree_node,
};
use libfuzzer_sys::fuzz_target;

/// Superblock length (`format::SUPERBLOCK_LEN`).
const SUPERBLOCK_LEN: usize = 112;

fuzz_target!(|data: &[u8]| {
    // Catalog: the CRC matches, so only structure can fail.
    if let Ok((nv, ns)) = decode_catalog(data, crc32(data)) {
        // The header is 40 bytes (magic, three id counters, three counts);
        // every volume record is at least 47 bytes and every snapshot 55,
        // plus an 8-byte root each: the counts are bounded by the input.
        assert!(40 + nv * 55 + ns * 63 <= data.len(), "{nv} volumes, {ns} snapshots from {} bytes", data.len());
    }
    // A wrong CRC must always be refused.
    assert!(decode_catalog(data, crc32(data) ^ 1).is_err(), "catalog accepted with a wrong CRC");

    // Superblock slot: the first 112 bytes, and the whole input (the decoder
    // reads only its prefix).
    let sb = decode_superblock(&data[..data.len().min(SUPERBLOCK_LEN)]);
    let _ = decode_superblock(data);
    if data.len() < SUPERBLOCK_LEN {
        assert!(matches!(sb, Ok(None)), "a short slot holds no superblock");
    }

    // Tree node: page (u64) and level (u8, as stored on disk) from the first
    // 9 bytes, the rest is the page image.
    if data.len() >= 9 {
        let page = u64::from_le_bytes(data[..8].try_into().unwrap());
        let level = data[8] as u32;
        let node = &data[9..];
        if let Ok(n) = decode_tree_node(node, page, level) {
            assert!(24 + n * 8 <= node.len(), "{n} entries from a {}-byte node", node.len());
        }
    }
    // Change log chunk: 12 bytes an entry, in whole pages after the count.
    if let Ok(n) = decode_change_chunk(data) {
        assert!(n * 12 <= data.len(), "{n} change log entries from {} bytes", data.len());
    }
    // Node delta: 17 bytes of address, base and level, then the page; what
    // it applies to an empty node is bounded by a record's entries.
    if let Ok(n) = decode_node_delta(data) {
        assert!(n * 12 <= data.len(), "{n} entries from a {}-byte delta page", data.len());
    }
    // The whole input as the node, at page 1 / level 0 and at page 1 / level 1.
    let _ = decode_tree_node(data, 1, 0);
    let _ = decode_tree_node(data, 1, 1);
});
