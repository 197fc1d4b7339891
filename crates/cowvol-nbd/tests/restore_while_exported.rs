//! Restores while a volume is exported: a restore waits for in-flight
//! requests (a held request with a short timeout gives Timeout and changes
//! nothing), clients see the restored data on their next read, and with
//! `disconnect_on_restore` the volume's connections are closed cleanly first.

mod common;
use common::raw::Client;
use common::{TestServer, VOLUME};
use cowvol::SnapshotOptions;
use std::time::Duration;

#[test]
fn a_restore_waits_for_in_flight_requests_and_times_out_changing_nothing() {
    let s = TestServer::start(1 << 20);
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    assert_eq!(c.write(1, 0, &[0xaa; 65536]), 0);
    let snap = s.store().create_snapshot(s.volume, SnapshotOptions::named("a")).expect("snapshot");
    assert_eq!(c.write(2, 0, &[0xbb; 65536]), 0);

    // Hold a request in flight: its header and part of its payload are sent.
    c.request(0, common::raw::CMD_WRITE, 3, 65536, 65536);
    c.send(&[0xcc; 1000]);
    std::thread::sleep(Duration::from_millis(200));
    let err = s.restore(snap.id, Duration::from_millis(300)).expect_err("the held request blocks the restore");
    assert!(matches!(err, cowvol::Error::Timeout { .. }), "{err}");
    assert_eq!(s.read(0, 65536), vec![0xbb; 65536], "a timed-out restore changed nothing");

    // The request completes; now the restore goes through.
    c.send(&[0xcc; 65536 - 1000]);
    assert_eq!(c.simple_reply(), (0, 3));
    s.restore(snap.id, Duration::from_secs(10)).expect("restore");
    // The same connection reads the restored data on its next read.
    assert_eq!(c.read(4, 0, 65536), Ok(vec![0xaa; 65536]));
    assert_eq!(c.read(5, 65536, 4096), Ok(vec![0; 4096]));
    c.disconnect();
}

#[test]
fn requests_arriving_during_a_restore_wait_for_it() {
    let s = TestServer::start(1 << 20);
    let snap = s.store().create_snapshot(s.volume, SnapshotOptions::named("empty")).expect("snapshot");
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    for i in 0..20u64 {
        assert_eq!(c.write(i, 0, &[i as u8 + 1; 4096]), 0);
        s.restore(snap.id, Duration::from_secs(10)).expect("restore");
        assert_eq!(c.read(100 + i, 0, 4096), Ok(vec![0; 4096]));
    }
    c.disconnect();
}

#[test]
fn disconnect_on_restore_closes_connections_cleanly_first() {
    let s = TestServer::start_with(1 << 20, |o| o.disconnect_on_restore = true);
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    let snap = s.store().create_snapshot(s.volume, SnapshotOptions::named("empty")).expect("snapshot");
    assert_eq!(c.write(1, 0, &[7; 4096]), 0);
    // A snapshot export of the same volume is not affected.
    let (mut other, _) = Client::attach_unix(&s.sock, "disk@empty");
    s.restore(snap.id, Duration::from_secs(10)).expect("restore");
    assert!(c.closed_by_server(), "the volume's connection was closed");
    assert_eq!(other.read(1, 0, 4096), Ok(vec![0; 4096]));
    other.disconnect();
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    assert_eq!(c.read(2, 0, 4096), Ok(vec![0; 4096]));
    c.disconnect();
}
