//! Restores of one volume racing from many requests: while one holds the
//! volume (waiting for writes in flight to drain), the others answer 409
//! at once, and every answer is either 200 or 409.

mod common;
use common::*;
use serde_json::json;
use std::sync::{Arc, Barrier};

#[test]
fn concurrent_restores_of_one_volume_answer_200_or_409() {
    let s = Arc::new(TestServer::start());
    let vol = s.volume(ALICE, "contended", 64 << 20);
    let h = s.store.open_volume(vol.parse().unwrap()).unwrap();
    let sid = s.snapshot(ALICE, &vol, "base");
    // Writes in flight make each restore wait a little for the drain,
    // holding the volume meanwhile.
    let writers = Writers::start(&h, 2, 16 << 20);
    let path = format!("/api/v1/sandboxvolumes/{vol}/snapshots/{sid}/restore");
    let (mut ok, mut busy) = (0, 0);
    for _round in 0..20 {
        let barrier = Arc::new(Barrier::new(6));
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let (s, path, barrier) = (s.clone(), path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.post(&path, ALICE, json!({"timeout_ms": 20000}))
                })
            })
            .collect();
        for c in calls {
            let (st, v) = c.join().unwrap();
            match st {
                200 => ok += 1,
                409 => {
                    assert_eq!(code(&v), "busy", "{v}");
                    busy += 1;
                }
                _ => panic!("unexpected {st}: {v}"),
            }
        }
        if ok > 0 && busy > 0 {
            break;
        }
    }
    drop(writers);
    assert!(ok > 0, "no restore succeeded");
    assert!(busy > 0, "no restore was refused as busy while another held the volume");
}
