//! Templates from snapshots, volumes made from snapshots and templates,
//! and idempotent template deletes.

mod common;
use common::*;
use serde_json::json;

#[test]
fn templates_and_volumes_from_snapshots_and_templates() {
    let s = TestServer::start();
    let vol = s.volume(ALICE, "base", 2 << 20);
    let h = s.store.open_volume(vol.parse().unwrap()).unwrap();
    h.write_at(b"image", 0).unwrap();
    let sid = s.snapshot(ALICE, &vol, "v1");

    let (st, t) =
        s.post("/api/v1/templates", ALICE, json!({"snapshot_id": sid, "name": "debian", "description": "base image"}));
    assert_eq!(st, 201, "{t}");
    let t = &t["data"];
    assert_eq!(
        (t["source_snapshot_id"].as_str(), t["size_bytes"].as_u64(), t["owner"].as_str()),
        (Some(sid.as_str()), Some(2 << 20), Some("alice"))
    );
    let tid = t["id"].as_str().unwrap().to_string();
    assert_eq!(s.get("/api/v1/templates", ALICE).1["data"].as_array().unwrap().len(), 1);
    assert_eq!(s.get(&format!("/api/v1/templates/{tid}"), ALICE).1["data"]["name"], "debian");
    let (st, v) = s.post("/api/v1/templates", ALICE, json!({"snapshot_id": sid, "name": "debian"}));
    assert_eq!((st, code(&v)), (409, "already_exists"));

    for (body, key, want) in [
        (json!({"name": "from-snap", "snapshot_id": sid}), "source_snapshot_id", sid.clone()),
        (json!({"name": "from-tmpl", "template_id": tid}), "source_template_id", tid.clone()),
    ] {
        let (st, v) = s.post("/api/v1/sandboxvolumes", ALICE, body);
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["data"][key], want.as_str());
        assert_eq!(v["data"]["size_bytes"], 2 << 20);
        let mut buf = [0u8; 5];
        s.store.open_volume(v["data"]["id"].as_str().unwrap().parse().unwrap()).unwrap().read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"image");
    }
    let (st, v) = s.post("/api/v1/sandboxvolumes", ALICE, json!({"snapshot_id": "snap-999"}));
    assert_eq!((st, code(&v)), (404, "not_found"));
    let (st, v) = s.post("/api/v1/sandboxvolumes", ALICE, json!({"snapshot_id": sid, "template_id": tid}));
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("template_id")));

    let (st, v) = s.delete(&format!("/api/v1/templates/{tid}"), ALICE);
    assert_eq!((st, &v["data"]), (200, &json!({"deleted": true, "existed": true})));
    let (st, v) = s.delete(&format!("/api/v1/templates/{tid}"), ALICE);
    assert_eq!((st, &v["data"]), (200, &json!({"deleted": true, "existed": false})));
    assert_eq!(s.get(&format!("/api/v1/templates/{tid}"), ALICE).0, 404);
}
