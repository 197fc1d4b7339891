//! Operation sequences against the public API, compared with a model: the
//! input's bytes decode into at most 64 operations
//! (`cowvol::testing::model::Op::decode_all`), which the shared model
//! harness applies to a store on a simulated disk and to its model. The same
//! harness drives `tests/model.rs`; see `cowvol::testing::model` for what
//! is checked after every operation.
#![no_main]

use cowvol::testing::model::{run, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    run(&Op::decode_all(data));
});
