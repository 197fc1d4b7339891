//! Several connections to one export: the export advertises multi-conn,
//! a write on one is visible on another, and a flush on one connection
//! makes writes acknowledged on the others durable.

mod common;
use common::{nbdsh, TestServer, VOLUME};

#[test]
fn a_flush_on_one_connection_covers_writes_on_another() {
    let s = TestServer::start(8 << 20);
    let [unix, tcp] = s.uris(VOLUME);
    let out = nbdsh(&format!(
        r#"
hs = []
for uri in ("{unix}", "{tcp}", "{unix}"):
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.can_multi_conn()
    hs.append(h)
for i, h in enumerate(hs):
    h.pwrite(bytes([0x10 + i]) * 65536, i * 65536)
hs[2].flush()
for h in hs:
    for i in range(3):
        assert h.pread(65536, i * 65536) == bytes([0x10 + i]) * 65536
# Concurrent requests on one connection, completed out of order.
cookies = [hs[0].aio_pwrite(bytes([0x60 + i]) * 4096, 1048576 + i * 4096) for i in range(32)]
while hs[0].aio_in_flight() > 0:
    hs[0].poll(-1)
assert all(hs[0].aio_command_completed(c) for c in cookies)
for i in range(32):
    assert hs[1].pread(4096, 1048576 + i * 4096) == bytes([0x60 + i]) * 4096
for h in hs:
    h.shutdown()
print("ok")
"#
    ));
    assert!(out.contains("ok"), "{out}");
    // Durable: the data is there for a handle that never saw the connections.
    assert_eq!(s.read(2 * 65536, 65536), vec![0x12; 65536]);
}
