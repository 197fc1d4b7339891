//! Broken and hostile clients get the protocol's error or a closed
//! connection, and never hurt the store or the other clients: the harness
//! checks the store at the end of each test.

mod common;
use common::raw::{self, Client};
use common::{qemu_io, TestServer, VOLUME};
use std::time::Duration;

/// A well-behaved client still works: the server survived.
fn still_serves(s: &TestServer) {
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    assert_eq!(c.write(1, 0, &[0xee; 4096]), 0);
    assert_eq!(c.read(2, 0, 4096), Ok(vec![0xee; 4096]));
    c.disconnect();
    qemu_io(&s.tcp_uri(VOLUME), &["read -P 0xee 0 4k"]);
}

#[test]
fn handshake_violations_close_the_connection() {
    let s = TestServer::start(1 << 20);
    // Unknown client flags.
    let mut c = Client::connect_unix(&s.sock);
    c.send(&0xffff_ffffu32.to_be_bytes());
    assert!(c.closed_by_server());
    // Bad option magic.
    let mut c = Client::connect_tcp(s.port);
    c.client_flags();
    c.send(&[0x55; 16]);
    assert!(c.closed_by_server());
    // An option claiming a gigabyte of data.
    let mut c = Client::connect_unix(&s.sock);
    c.client_flags();
    c.send(&raw::IHAVEOPT.to_be_bytes());
    c.send(&raw::OPT_GO.to_be_bytes());
    c.send(&(1u32 << 30).to_be_bytes());
    assert!(c.closed_by_server());
    // NBD_OPT_GO data whose lengths do not add up: an error reply, not a crash.
    let mut c = Client::connect_unix(&s.sock);
    c.client_flags();
    c.option(raw::OPT_GO, &[0, 0, 0, 200, b'x']);
    let (_, kind, _) = c.option_reply();
    assert_eq!(kind, (1 << 31) | 3, "NBD_REP_ERR_INVALID");
    // Hanging up half way through an option.
    let mut c = Client::connect_unix(&s.sock);
    c.client_flags();
    c.send(&raw::IHAVEOPT.to_be_bytes()[..5]);
    drop(c);
    still_serves(&s);
}

#[test]
fn unknown_options_get_unsup_and_the_handshake_goes_on() {
    let s = TestServer::start(1 << 20);
    let mut c = Client::connect_unix(&s.sock);
    c.client_flags();
    c.option(99, b"whatever");
    assert_eq!(c.option_reply(), (99, raw::REP_ERR_UNSUP, b"option not supported by this server".to_vec()));
    c.option(raw::OPT_STRUCTURED_REPLY, b"junk");
    assert_eq!(c.option_reply().1, (1 << 31) | 3, "structured reply with data is invalid");
    let (size, _) = c.go(VOLUME);
    assert_eq!(size, 1 << 20);
    assert_eq!(c.read(1, 0, 512), Ok(vec![0; 512]));
    c.disconnect();
}

#[test]
fn bad_requests_get_errors_or_a_closed_connection() {
    let s = TestServer::start(1 << 20);
    let (mut c, size) = Client::attach_unix(&s.sock, VOLUME);
    // Past the end, and wrapping around u64.
    assert_eq!(c.read(1, size - 10, 20), Err(raw::EINVAL));
    assert_eq!(c.read(2, u64::MAX - 5, 20), Err(raw::EINVAL));
    assert_eq!(c.write(3, size, &[1; 512]), raw::EINVAL);
    // Larger than the maximum block size (32 MiB): a read is refused...
    assert_eq!(c.read(4, 0, 64 << 20), Err(raw::EINVAL));
    // ...unknown commands and flags are refused...
    c.request(0, 42, 5, 0, 0);
    assert_eq!(c.simple_reply(), (raw::EINVAL, 5));
    c.request(1 << 9, raw::CMD_FLUSH, 6, 0, 0);
    assert_eq!(c.simple_reply(), (raw::EINVAL, 6));
    // ...and the connection is still in sync.
    assert_eq!(c.write(7, 0, &[3; 512]), 0);
    assert_eq!(c.read(8, 0, 512), Ok(vec![3; 512]));
    // An oversized write cannot be skipped without reading it: closed.
    c.request(0, raw::CMD_WRITE, 9, 0, 64 << 20);
    assert!(c.closed_by_server());
    // A bad request magic: closed.
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    c.send(&[0u8; 28]);
    assert!(c.closed_by_server());
    still_serves(&s);
}

#[test]
fn writes_to_a_snapshot_export_get_eperm() {
    let s = TestServer::start(1 << 20);
    s.store().create_snapshot(s.volume, cowvol::SnapshotOptions::named("s")).expect("snapshot");
    let (mut c, _) = Client::attach_unix(&s.sock, "disk@s");
    assert_eq!(c.write(1, 0, &[1; 4096]), raw::EPERM);
    assert_eq!(c.read(2, 0, 4096), Ok(vec![0; 4096]));
    c.disconnect();
}

#[test]
fn a_disconnect_in_the_middle_of_a_request_is_harmless() {
    let s = TestServer::start(1 << 20);
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    c.request(0, raw::CMD_WRITE, 1, 0, 65536);
    c.send(&[9; 1000]);
    drop(c);
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    c.request(0, raw::CMD_READ, 1, 0, 65536);
    drop(c);
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    c.send(&raw::REQUEST_MAGIC.to_be_bytes());
    drop(c);
    still_serves(&s);
    // The half-sent write never reached the volume.
    assert_eq!(s.read(8192, 4096), vec![0; 4096]);
}

#[test]
fn idle_connections_are_bounded_by_a_limit_and_a_handshake_timeout() {
    let s = TestServer::start_with(1 << 20, |o| {
        o.max_connections = 16;
        o.handshake_timeout = Duration::from_millis(500);
    });
    // Hundreds of clients that connect and say nothing.
    let mut idle: Vec<std::os::unix::net::UnixStream> =
        (0..300).map(|_| std::os::unix::net::UnixStream::connect(&s.sock).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Every one of them has been closed by now: over the limit at once,
    // the others when their handshake timed out.
    for c in &mut idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut b = Vec::new();
        use std::io::Read;
        let _ = c.read_to_end(&mut b);
        assert!(b.len() <= 18, "only the greeting was sent");
    }
    drop(idle);
    still_serves(&s);
}
