//! Model test: random sequences of operations applied to the engine and to
//! a plain model, compared after every step, with a clean `check()` after
//! every step. The operations, the model and the comparison are
//! `cowvol::testing::model`, which the `ops` fuzz target runs too; proptest
//! generates the input bytes and shrinks a failing sequence.
//!
//! `COWVOL_MODEL_CASES=N` runs N cases (default 64).

use cowvol::testing::model::{run, Op};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("COWVOL_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(bytes in proptest::collection::vec(any::<u8>(), 1..800)) {
        run(&Op::decode_all(&bytes));
    }
}

/// Every operation kind, scripted, so the test covers each at least once
/// whatever the random cases draw.
#[test]
fn a_scripted_walk_through_every_operation_matches_the_model() {
    use Op::*;
    let ops = [
        Create { blocks: 20, tail: 100 },
        Create { blocks: 5, tail: 0 },
        Write { vol: 0, offset: 1000, len: 20_000, seed: 1 },
        Snapshot { vol: 0, auto: false },
        Write { vol: 0, offset: 5000, len: 3000, seed: 2 },
        Discard { vol: 0, offset: 100, len: 9000 },
        Flush { vol: 0 },
        Hold { snap: 0, hold: true },
        DeleteSnapshot { snap: 0 },
        Hold { snap: 0, hold: false },
        Restore { vol: 0, snap: 0, safety: Some(false) },
        Restore { vol: 0, snap: 0, safety: Some(true) },
        Fork { vol: 0, snap: Some(0) },
        Fork { vol: 1, snap: None },
        ForkSnapshot { snap: 1 },
        FromSnapshot { snap: 0, size: Some(true) },
        FromSnapshot { snap: 0, size: Some(false) },
        Begin { vol: 1, auto: false },
        Commit { snap: 0, any: false },
        Begin { vol: 1, auto: true },
        Abort { snap: 0, any: false },
        Commit { snap: 0, any: true },
        Group { a: 0, b: 1, clash: false },
        Group { a: 0, b: 0, clash: false },
        Group { a: 0, b: 1, clash: true },
        Template { snap: 0, clash: false },
        Template { snap: 1, clash: true },
        FromTemplate { tmpl: 0, size: None },
        FromTemplate { tmpl: 0, size: Some(false) },
        SetPolicy { vol: 0, policy: Some((60, Some(2), None)) },
        SetPolicy { vol: 1, policy: Some((0, None, None)) },
        RunPolicies { advance: 0 },
        RunPolicies { advance: 61 },
        RunPolicies { advance: 61 },
        AddSchedule { vol: 0, name: 0, daily: false, at: 5, keep: Some(2) },
        AddSchedule { vol: 0, name: 1, daily: true, at: 90, keep: None },
        AddSchedule { vol: 0, name: 0, daily: true, at: 0, keep: None },
        AddSchedule { vol: 1, name: 2, daily: false, at: 0, keep: Some(0) },
        SnapshotWith { vol: 0, expires: Some(100), key: Some(1) },
        SnapshotWith { vol: 0, expires: None, key: Some(1) },
        SnapshotWith { vol: 1, expires: None, key: Some(1) },
        RunPolicies { advance: 3600 },
        RunPolicies { advance: 3600 },
        RunPolicies { advance: 65_535 },
        RemoveSchedule { vol: 0, name: 0 },
        RemoveSchedule { vol: 0, name: 0 },
        RunPolicies { advance: 3600 },
        Checkpoint,
        Begin { vol: 0, auto: false },
        Reopen,
        Write { vol: 2, offset: 0, len: 4096, seed: 3 },
        CrashAfterFlush { vol: 2, seed: 7 },
        DeleteTemplate { tmpl: 0 },
        DeleteVolume { vol: 0 },
        ForkSnapshot { snap: 0 },
    ];
    run(&ops);
}
