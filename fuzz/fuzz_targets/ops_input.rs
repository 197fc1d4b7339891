//! The input of the `ops` target: one operation of a sequence, decoded by
//! `arbitrary` (the target takes a `Vec<Op>`). Shared with
//! `examples/write_seeds.rs`, which encodes scripted sequences into seeds;
//! its encoder follows the order of the variants and fields here and checks
//! that every seed decodes back to its script, so a change here that it
//! does not follow makes it fail instead of writing wrong seeds.
//!
//! Indices (`vol`, `snap`, `tmpl`) pick among the live objects modulo
//! their number.

use arbitrary::Arbitrary;

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A volume of `1 + blocks % 64` blocks, less `tail % 4096` bytes.
    Create {
        blocks: u8,
        tail: u16,
    },
    Write {
        vol: u8,
        offset: u32,
        len: u16,
        seed: u8,
    },
    Discard {
        vol: u8,
        offset: u32,
        len: u32,
    },
    Flush {
        vol: u8,
    },
    /// A one-step snapshot, manual or (by hand) automatic.
    Snapshot {
        vol: u8,
        auto: bool,
    },
    /// Restore one of the volume's snapshots (it may not be ready). With
    /// `safety`, a safety snapshot is taken: `Some(true)` reuses the name
    /// of one of the volume's snapshots, so the restore must fail.
    Restore {
        vol: u8,
        snap: u8,
        safety: Option<bool>,
    },
    /// Fork a live volume, or one of its snapshots.
    Fork {
        vol: u8,
        snap: Option<u8>,
    },
    /// Fork any snapshot, also one whose volume was deleted.
    ForkSnapshot {
        snap: u8,
    },
    /// `create_volume_from_snapshot`; `size`: `None` passes 0,
    /// `Some(true)` the snapshot's size, `Some(false)` a wrong size.
    FromSnapshot {
        snap: u8,
        size: Option<bool>,
    },
    DeleteSnapshot {
        snap: u8,
    },
    /// Hold (`true`) or release a snapshot.
    Hold {
        snap: u8,
        hold: bool,
    },
    /// First step of a two-step snapshot.
    Begin {
        vol: u8,
        auto: bool,
    },
    /// Commit a snapshot: a creating one, or with `any` any snapshot.
    Commit {
        snap: u8,
        any: bool,
    },
    /// Abort a snapshot: a creating one, or with `any` any snapshot.
    Abort {
        snap: u8,
        any: bool,
    },
    /// Group snapshot of two volumes (the same one twice must fail); with
    /// `clash` the name is one the first volume's snapshots already use.
    Group {
        a: u8,
        b: u8,
        clash: bool,
    },
    /// A template from a snapshot; with `clash` under a taken name.
    Template {
        snap: u8,
        clash: bool,
    },
    /// `create_volume_from_template`; `size` as in `FromSnapshot`.
    FromTemplate {
        tmpl: u8,
        size: Option<bool>,
    },
    DeleteTemplate {
        tmpl: u8,
    },
    /// Set (`Some`) or clear a volume's policy. Zero intervals and zero
    /// retention rules must be refused.
    SetPolicy {
        vol: u8,
        policy: Option<(u16, Option<u8>, Option<u16>)>,
    },
    /// Advance the simulated clock by `advance` seconds and run every
    /// policy.
    RunPolicies {
        advance: u16,
    },
    DeleteVolume {
        vol: u8,
    },
    Checkpoint,
    Reopen,
    /// Flush (through one volume's handle: a flush is store-wide), then cut
    /// the power losing every unsynced write, and reopen what survived.
    CrashAfterFlush {
        vol: u8,
        seed: u8,
    },
}
