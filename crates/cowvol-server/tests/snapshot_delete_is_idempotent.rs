//! Snapshots: create, get (all fields), hold makes delete 409, release,
//! delete answers 200 `deleted: true` twice.

mod common;
use common::*;
use serde_json::json;

#[test]
fn snapshot_fields_holds_and_idempotent_delete() {
    let s = TestServer::start();
    let vol = s.volume(ALICE, "data", 8 << 20);
    let h = s.store.open_volume(vol.parse().unwrap()).unwrap();
    h.write_at(&[7u8; 65536], 0).unwrap();
    h.flush().unwrap();

    let body = json!({"name": "golden", "description": "clean", "labels": {"env": "ci"}});
    let (st, v) = s.post(&format!("/api/v1/sandboxvolumes/{vol}/snapshots"), ALICE, body);
    assert_eq!(st, 201, "{v}");
    let d = &v["data"];
    let sid = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["volume_id"], vol.as_str());
    assert_eq!((d["name"].as_str(), d["description"].as_str()), (Some("golden"), Some("clean")));
    assert_eq!(d["size_bytes"], 8 << 20);
    assert_eq!(
        (d["kind"].as_str(), d["status"].as_str(), d["owner"].as_str()),
        (Some("manual"), Some("ready"), Some("alice"))
    );
    assert_eq!(d["labels"]["env"], "ci");
    assert_eq!(d["held"], false);
    assert!(d["created_at"].as_str().unwrap().contains('T'));

    // Overwriting the volume leaves the old blocks to the snapshot alone.
    h.write_at(&[9u8; 65536], 0).unwrap();
    h.flush().unwrap();
    let (st, v) = s.get(&format!("/api/v1/sandboxvolumes/{vol}/snapshots/{sid}"), ALICE);
    assert_eq!(st, 200);
    assert_eq!(v["data"]["exclusive_bytes"], 65536);

    let (st, v) = s.get(&format!("/api/v1/sandboxvolumes/{vol}/snapshots"), ALICE);
    assert_eq!((st, v["data"]["total"].as_u64()), (200, Some(1)));

    // Name is required.
    let (st, v) = s.post(&format!("/api/v1/sandboxvolumes/{vol}/snapshots"), ALICE, json!({}));
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("name")), "{v}");

    let path = format!("/api/v1/sandboxvolumes/{vol}/snapshots/{sid}");
    let (st, v) = s.post(&format!("{path}/hold"), ALICE, json!({}));
    assert_eq!((st, &v["data"]["held"]), (200, &json!(true)));
    let (st, v) = s.delete(&path, ALICE);
    assert_eq!((st, code(&v)), (409, "held"));
    let (st, v) = s.post(&format!("{path}/release"), ALICE, json!({}));
    assert_eq!((st, &v["data"]["held"]), (200, &json!(false)));

    let (st, v) = s.delete(&path, ALICE);
    assert_eq!((st, &v["data"]), (200, &json!({"deleted": true, "existed": true})));
    let (st, v) = s.delete(&path, ALICE);
    assert_eq!((st, &v["data"]), (200, &json!({"deleted": true, "existed": false})));
    let (st, _) = s.get(&path, ALICE);
    assert_eq!(st, 404);
}
