//! Shutdown stops accepting, lets a request in progress finish, and hands
//! the store back so it can be closed cleanly.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn shutdown_drains_requests_and_returns_the_store() {
    let mut s = TestServer::start();
    let vol = s.volume(ALICE, "drain", 64 << 20);
    let h = s.store.open_volume(vol.parse().unwrap()).unwrap();
    let sid = s.snapshot(ALICE, &vol, "base");
    let addr = s.addr;

    // A restore that has to wait for writes in flight is still running
    // when the shutdown begins; it must complete, not be cut off.
    let writers = Writers::start(&h, 2, 8 << 20);
    let slow = std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new().build();
        agent
            .post(&format!("http://{addr}/api/v1/sandboxvolumes/{vol}/snapshots/{sid}/restore"))
            .set("Authorization", &format!("Bearer {ALICE}"))
            .send_string(&json!({"timeout_ms": 20000}).to_string())
            .map(|r| r.status())
            .unwrap_or_else(|e| match e {
                ureq::Error::Status(c, _) => c,
                other => panic!("restore cut off by shutdown: {other}"),
            })
    });
    std::thread::sleep(Duration::from_millis(20));
    let store = s.stop();
    assert!(matches!(slow.join().unwrap(), 200 | 504), "the request in progress did not finish normally");
    drop(writers);
    drop(h);
    // The server is gone, and it handed the store back for a clean close.
    assert!(std::net::TcpStream::connect(addr).is_err());
    let store = store.expect("the server kept the store after shutdown");
    assert!(store.check().unwrap().is_clean());
}
