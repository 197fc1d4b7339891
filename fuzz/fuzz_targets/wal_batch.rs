//! Feeds arbitrary bytes to the WAL batch decoder recovery uses
//! (`BatchHeader::decode` + `parse_batch`), and to the log reader over a
//! segment holding them (batches, links, seals, the search past the end):
//! any input must give an answer, never a panic, an overflow, a hang or an
//! unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(n) = cowvol::testing::decode_wal_batch(data) {
        // A batch with records needs at least a 40-byte header and one tag
        // byte per record, all inside the input.
        assert!(n >= 1, "a decoded batch has at least one record");
        assert!(40 + n <= data.len(), "{n} records decoded from {} bytes", data.len());
    }
    let _ = cowvol::testing::decode_wal_log(data);
});
