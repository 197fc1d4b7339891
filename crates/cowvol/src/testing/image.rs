//! Reading a data file's image from the outside, for tests that damage or
//! inspect stores on disk.

/// The valid superblock with the highest generation in a data file's image.
fn live_superblock(image: &[u8]) -> Option<crate::format::Superblock> {
    crate::format::SUPERBLOCK_SLOTS
        .iter()
        .filter_map(|&slot| image.get(slot as usize..slot as usize + crate::format::SUPERBLOCK_LEN))
        .filter_map(|b| crate::format::Superblock::decode(b).ok().flatten())
        .max_by_key(|sb| sb.generation)
}

/// Byte offset of the live catalog in a data file's image: the one the valid
/// superblock with the highest generation points at. `None` when neither
/// slot holds a valid superblock.
pub fn catalog_offset(image: &[u8]) -> Option<u64> {
    let sb = live_superblock(image)?;
    Some(crate::format::data_start(sb.block_size) + sb.catalog_page * sb.block_size as u64)
}

/// The format version of the live superblock in a data file's image.
pub fn format_version(image: &[u8]) -> Option<u32> {
    live_superblock(image).map(|sb| sb.version)
}
