//! Reads work with and without structured replies; with them a read of a
//! hole comes back as a hole chunk and block status is available, without
//! them every reply is simple and block status is refused.

mod common;
use common::{nbdsh, TestServer, VOLUME};

#[test]
fn reads_work_with_and_without_structured_replies() {
    let s = TestServer::start(8 << 20);
    let v = s.store().open_volume(s.volume).expect("open");
    v.write_at(&[7u8; 4096], 8192).expect("write");
    drop(v);
    for uri in s.uris(VOLUME) {
        let out = nbdsh(&format!(
            r#"
for structured in (True, False):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri("{uri}")
    assert h.get_structured_replies_negotiated() == structured
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION) == structured
    buf = h.pread(16384, 0)
    assert buf[:8192] == bytes(8192) and buf[8192:12288] == b"\x07" * 4096, "read contents"
    if structured:
        chunks = []
        def chunk(sub, off, status, err):
            chunks.append((status, off, len(sub)))
            return 0
        h.pread_structured(16384, 0, chunk)
        kinds = [c[0] for c in chunks]
        assert nbd.READ_HOLE in kinds and nbd.READ_DATA in kinds, chunks
        seen = []
        def extents(meta, off, entries, err):
            seen.extend(entries)
            return 0
        h.block_status(16384, 0, extents)
        assert seen[:6] == [8192, 3, 4096, 0, 4096, 3], seen
    else:
        try:
            h.block_status(4096, 0, lambda *a: 0)
            raise AssertionError("block status without structured replies")
        except nbd.Error:
            pass
    h.shutdown()
print("ok")
"#
        ));
        assert!(out.contains("ok"), "{out}");
    }
}
