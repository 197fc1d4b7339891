//! Restore answers `{"status": "restored"}` and the volume's data rolls
//! back; a safety snapshot keeps the discarded state.

mod common;
use common::*;
use serde_json::json;

#[test]
fn restore_rolls_the_data_back_and_keeps_a_safety_snapshot() {
    let s = TestServer::start();
    let vol = s.volume(ALICE, "root", 4 << 20);
    let h = s.store.open_volume(vol.parse().unwrap()).unwrap();
    h.write_at(b"before", 0).unwrap();
    h.flush().unwrap();
    let sid = s.snapshot(ALICE, &vol, "before");
    h.write_at(b"after!", 0).unwrap();
    h.flush().unwrap();

    let path = format!("/api/v1/sandboxvolumes/{vol}/snapshots/{sid}/restore");
    let (st, v) = s.post(&path, ALICE, json!({"safety_snapshot": true, "timeout_ms": 5000}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["status"], "restored");
    let mut buf = [0u8; 6];
    h.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"before");

    // The safety snapshot holds what the restore discarded.
    let safety = v["data"]["safety_snapshot"]["id"].as_str().unwrap().parse().unwrap();
    let snap = s.store.open_snapshot(vol.parse().unwrap(), safety).unwrap();
    snap.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"after!");

    // No body at all is fine too.
    let (st, v) = s.call("POST", &path, Some(ALICE), None);
    assert_eq!((st, v["data"]["safety_snapshot"].is_null()), (200, true), "{v}");

    let (st, v) = s.post(&path, ALICE, json!({"timeout_ms": 999_999}));
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("timeout_ms")));
    let (st, _) = s.post(&format!("/api/v1/sandboxvolumes/{vol}/snapshots/snap-999/restore"), ALICE, json!({}));
    assert_eq!(st, 404);
}
