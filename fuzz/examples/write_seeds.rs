//! Writes the seed corpus of every fuzz target to `corpus/<target>/seed-*`.
//!
//!     cd fuzz && cargo run --example write_seeds
//!
//! The `wal_batch` and `catalog` seeds come from
//! `cowvol::testing::sample_wal_batches` and `sample_catalog_inputs`, which
//! build them with the library's own encoders, so rerunning this after a
//! format change brings them up to date. Each is checked to decode before
//! it is written. The `ops` seeds are scripted operation sequences (see
//! `ops_scripts`) encoded with `Op::encode_all`, the inverse of the
//! `Op::decode_all` the target runs.
use cowvol::testing::model::Op;
use cowvol::testing::{
    crc32, decode_catalog, decode_change_chunk, decode_node_delta, decode_superblock, decode_tree_node,
    decode_wal_batch,
};
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("{:>6} bytes  {}", bytes.len(), path.display());
}

fn main() {
    for (name, bytes) in cowvol::testing::sample_wal_batches() {
        let n = decode_wal_batch(&bytes).unwrap_or_else(|| panic!("sample batch {name} does not decode"));
        assert!(n >= 1);
        write("wal_batch", name, &bytes);
    }
    for (name, bytes) in cowvol::testing::sample_catalog_inputs() {
        let ok = match name {
            "superblock" => matches!(decode_superblock(&bytes), Ok(Some(_))),
            "change-chunk" => decode_change_chunk(&bytes).is_ok_and(|n| n > 0),
            "node-delta" => decode_node_delta(&bytes).is_ok_and(|n| n > 0),
            "leaf" | "interior" | "wide-leaf" => {
                let page = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                decode_tree_node(&bytes[9..], page, bytes[8] as u32).is_ok()
            }
            _ => decode_catalog(&bytes, crc32(&bytes)).is_ok(),
        };
        assert!(ok, "sample {name} does not decode");
        write("catalog", name, &bytes);
    }
    for (name, script) in ops_scripts() {
        let bytes = Op::encode_all(&script);
        let back = Op::decode_all(&bytes);
        assert_eq!(back, script, "seed {name} does not decode to its script");
        write("ops", name, &bytes);
    }
}

/// Scripts that walk the snapshot lifecycle, so fuzzing starts from inputs
/// that reach every operation with objects to act on.
fn ops_scripts() -> Vec<(&'static str, Vec<Op>)> {
    use Op::*;
    let write = |vol, seed| Write { vol, offset: 4096 * u32::from(seed), len: 9000, seed };
    vec![
        (
            "holds-templates",
            vec![
                Create { blocks: 7, tail: 100 },
                write(0, 1),
                Snapshot { vol: 0, auto: false },
                Hold { snap: 0, hold: true },
                DeleteSnapshot { snap: 0 },
                write(0, 2),
                Template { snap: 0, clash: false },
                Template { snap: 0, clash: true },
                FromTemplate { tmpl: 0, size: None },
                FromTemplate { tmpl: 0, size: Some(false) },
                FromSnapshot { snap: 0, size: Some(true) },
                DeleteVolume { vol: 0 },
                DeleteTemplate { tmpl: 0 },
                ForkSnapshot { snap: 0 },
                Hold { snap: 0, hold: false },
                DeleteSnapshot { snap: 0 },
                Reopen,
            ],
        ),
        (
            "two-step",
            vec![
                Create { blocks: 3, tail: 0 },
                write(0, 1),
                Begin { vol: 0, auto: false },
                write(0, 2),
                Commit { snap: 0, any: false },
                Commit { snap: 0, any: true },
                Begin { vol: 0, auto: true },
                Abort { snap: 0, any: false },
                Begin { vol: 0, auto: false },
                Hold { snap: 2, hold: true },
                CrashAfterFlush { vol: 0, seed: 7 },
                Begin { vol: 0, auto: false },
                Reopen,
                Begin { vol: 0, auto: false },
                DeleteVolume { vol: 0 },
                Restore { vol: 0, snap: 0, safety: None },
                FromSnapshot { snap: 1, size: None },
            ],
        ),
        (
            "group-restore",
            vec![
                Create { blocks: 4, tail: 0 },
                Create { blocks: 9, tail: 4000 },
                write(0, 1),
                write(1, 2),
                Group { a: 0, b: 1, clash: false },
                Group { a: 0, b: 0, clash: false },
                Group { a: 1, b: 0, clash: true },
                write(0, 3),
                Restore { vol: 0, snap: 0, safety: Some(false) },
                Restore { vol: 0, snap: 1, safety: Some(true) },
                Discard { vol: 1, offset: 0, len: 20000 },
                Restore { vol: 1, snap: 0, safety: None },
                Fork { vol: 0, snap: Some(1) },
                Checkpoint,
                CrashAfterFlush { vol: 1, seed: 3 },
            ],
        ),
        (
            "policies",
            vec![
                Create { blocks: 5, tail: 0 },
                Create { blocks: 2, tail: 0 },
                SetPolicy { vol: 0, policy: Some((60, Some(2), Some(150))) },
                SetPolicy { vol: 1, policy: Some((0, None, None)) },
                SetPolicy { vol: 1, policy: Some((30, None, Some(100))) },
                RunPolicies { advance: 0 },
                write(0, 1),
                RunPolicies { advance: 59 },
                RunPolicies { advance: 1 },
                Hold { snap: 0, hold: true },
                Snapshot { vol: 0, auto: false },
                write(1, 2),
                RunPolicies { advance: 60 },
                RunPolicies { advance: 200 },
                Begin { vol: 0, auto: true },
                Reopen,
                RunPolicies { advance: 60 },
                SetPolicy { vol: 0, policy: None },
                RunPolicies { advance: 1000 },
                CrashAfterFlush { vol: 0, seed: 1 },
                RunPolicies { advance: 1000 },
            ],
        ),
        (
            "schedules",
            vec![
                Create { blocks: 9, tail: 0 },
                write(0, 1),
                SetPolicy { vol: 0, policy: Some((3600, Some(1), None)) },
                AddSchedule { vol: 0, name: 0, daily: false, at: 15, keep: Some(2) },
                AddSchedule { vol: 0, name: 1, daily: true, at: 120, keep: Some(1) },
                SnapshotWith { vol: 0, expires: Some(600), key: Some(0) },
                SnapshotWith { vol: 0, expires: None, key: Some(0) },
                RunPolicies { advance: 3600 },
                write(0, 2),
                RunPolicies { advance: 3600 },
                RunPolicies { advance: 65_000 },
                RemoveSchedule { vol: 0, name: 0 },
                CrashAfterFlush { vol: 0, seed: 3 },
                RunPolicies { advance: 3600 },
            ],
        ),
    ]
}
