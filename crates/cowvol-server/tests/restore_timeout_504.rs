//! A restore whose in-flight I/O does not drain in time answers 504, says
//! nothing was applied, and indeed changes nothing.

mod common;
use common::*;
use serde_json::json;

#[test]
fn restore_with_io_in_flight_times_out_with_504_and_applies_nothing() {
    let s = TestServer::start();
    let vol = s.volume(ALICE, "busy", 64 << 20);
    let h = s.store.open_volume(vol.parse().unwrap()).unwrap();
    h.write_at(b"snapshot", 0).unwrap();
    let sid = s.snapshot(ALICE, &vol, "base");
    h.write_at(b"current!", 0).unwrap();

    let writers = Writers::start(&h, 3, 8 << 20);
    let path = format!("/api/v1/sandboxvolumes/{vol}/snapshots/{sid}/restore");
    let mut timed_out = None;
    for _ in 0..200 {
        let (st, v) = s.post(&path, ALICE, json!({"timeout_ms": 0}));
        match st {
            504 => {
                timed_out = Some(v);
                break;
            }
            // The drain may win the race now and then; put the marker back.
            200 => h.write_at(b"current!", 0).unwrap(),
            _ => panic!("unexpected {st}: {v}"),
        }
    }
    drop(writers);
    let v = timed_out.expect("no restore timed out while writes were in flight");
    assert_eq!(code(&v), "timeout");
    assert!(v["error"]["message"].as_str().unwrap().contains("nothing was changed"), "{v}");
    let mut buf = [0u8; 8];
    h.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"current!", "a timed-out restore changed the volume");
}
