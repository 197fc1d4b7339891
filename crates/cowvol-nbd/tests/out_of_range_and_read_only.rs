//! Requests past the end get EINVAL, writes to read-only exports (a
//! snapshot export, or a `read_only` server) get EPERM, and a missing
//! export is refused during the handshake.

mod common;
use common::{nbdsh, TestServer, VOLUME};
use cowvol::SnapshotOptions;

fn expect_errno(uri: &str, body: &str) -> String {
    nbdsh(&format!(
        r#"
import errno
h = nbd.NBD()
h.connect_uri("{uri}")
def fails(code, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errnum == code, (e.errnum, e.string)
        return
    raise AssertionError("no error")
{body}
h.shutdown()
print("ok")
"#
    ))
}

#[test]
fn out_of_range_gets_einval_and_read_only_gets_eperm() {
    let s = TestServer::start(1 << 20);
    let v = s.store().open_volume(s.volume).expect("open");
    v.write_at(&[9u8; 512], 0).expect("write");
    drop(v);
    let snap = s.store().create_snapshot(s.volume, SnapshotOptions::named("s1")).expect("snapshot");
    for uri in s.uris(VOLUME) {
        let out = expect_errno(
            &uri,
            r#"
size = h.get_size()
# libnbd checks ranges itself unless told not to.
h.set_strict_mode(0)
fails(errno.EINVAL, h.pread, 4096, size - 1024)
fails(errno.EINVAL, h.pwrite, b"x" * 4096, size)
fails(errno.EINVAL, h.trim, 4096, size)
fails(errno.EINVAL, h.zero, 4096, 1 << 62)
assert h.pread(1024, size - 1024) == bytes(1024)
"#,
        );
        assert!(out.contains("ok"), "{out}");
    }
    for uri in s.uris(&format!("{VOLUME}@s1")) {
        let out = expect_errno(
            &uri,
            r#"
assert h.is_read_only()
assert h.pread(512, 0) == b"\x09" * 512
h.set_strict_mode(0)
fails(errno.EPERM, h.pwrite, b"x" * 512, 0)
fails(errno.EPERM, h.trim, 4096, 0)
fails(errno.EPERM, h.zero, 4096, 0)
"#,
        );
        assert!(out.contains("ok"), "{out}");
    }
    // By snapshot id as well as by name.
    let out = expect_errno(&s.unix_uri(&format!("vol-1@{}", snap.id)), "assert h.is_read_only()");
    assert!(out.contains("ok"), "{out}");
    let out = nbdsh(&format!(
        r#"
h = nbd.NBD()
try:
    h.connect_uri("{}")
    raise AssertionError("connected to a missing export")
except nbd.Error as e:
    print("refused", e.string)
"#,
        s.unix_uri("no-such-volume")
    ));
    assert!(out.contains("refused"), "{out}");
}

#[test]
fn a_read_only_server_refuses_writes() {
    let s = TestServer::start_with(1 << 20, |o| o.read_only = true);
    let out = expect_errno(
        &s.tcp_uri(VOLUME),
        r#"
assert h.is_read_only()
h.set_strict_mode(0)
fails(errno.EPERM, h.pwrite, b"x" * 512, 0)
"#,
    );
    assert!(out.contains("ok"), "{out}");
}
