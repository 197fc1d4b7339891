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

/// The pages of the live reference table in a data file's image, as
/// `(page, kind)` with kind `"index"`, `"group"` or `"changes"` (a page of
/// the change log): what the live catalog's table root and its index pages
/// name. Empty when the image has no valid
/// superblock or catalog, or a catalog of a version without the table.
pub fn table_pages(image: &[u8]) -> Vec<(u64, &'static str)> {
    let Some(sb) = live_superblock(image) else {
        return Vec::new();
    };
    let bs = sb.block_size as usize;
    let start = crate::format::data_start(sb.block_size) as usize;
    let page_bytes = |page: u64| image.get(start + page as usize * bs..start + (page as usize + 1) * bs);
    let catalog_at = start + sb.catalog_page as usize * bs;
    let Some(catalog) = image.get(catalog_at..catalog_at + sb.catalog_len as usize) else {
        return Vec::new();
    };
    let Ok(img) = crate::catalog::CatalogImage::decode(catalog, sb.catalog_crc, "image", sb.version) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let table = img.table.unwrap_or_default();
    for c in &table.changes {
        out.extend(c.pages().map(|p| (p, "changes")));
    }
    for r in table.index.into_iter().filter(|r| r.page != 0) {
        out.push((r.page, "index"));
        let Some(bytes) = page_bytes(r.page) else { continue };
        for entry in bytes.chunks_exact(16) {
            let page = u64::from_le_bytes(entry[..8].try_into().expect("eight bytes"));
            if page != 0 {
                out.push((page, "group"));
            }
        }
    }
    out
}
