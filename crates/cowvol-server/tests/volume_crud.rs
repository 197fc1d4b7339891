//! Volumes: create (defaults, sizes, access modes), list, get, fork
//! (inheriting the access mode), delete, and 404 once gone.

mod common;
use common::*;
use serde_json::json;

#[test]
fn volumes_are_created_listed_forked_and_deleted() {
    let s = TestServer::start();

    // Every field is optional: an empty body gets a generated name and the default size.
    let (st, v) = s.call("POST", "/api/v1/sandboxvolumes", Some(ALICE), None);
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["data"]["size_bytes"], 64 << 20);
    assert_eq!(v["data"]["access_mode"], "RWO");
    assert_eq!(v["data"]["owner"], "alice");
    assert!(v["data"]["created_at"].as_str().unwrap().ends_with('Z'));

    let body =
        json!({"name": "db", "size_bytes": 1 << 30, "access_mode": "RWX", "cache_size": "128M", "buffer_size": "16M"});
    let (st, v) = s.post("/api/v1/sandboxvolumes", ALICE, body);
    assert_eq!(st, 201, "{v}");
    let d = &v["data"];
    assert_eq!((d["name"].as_str(), d["size_bytes"].as_u64()), (Some("db"), Some(1 << 30)));
    assert_eq!((d["cache_size_bytes"].as_u64(), d["buffer_size_bytes"].as_u64()), (Some(128 << 20), Some(16 << 20)));
    let id = d["id"].as_str().unwrap().to_string();

    // A taken name is a conflict.
    let (st, v) = s.post("/api/v1/sandboxvolumes", ALICE, json!({"name": "db"}));
    assert_eq!((st, code(&v)), (409, "already_exists"));

    let (st, v) = s.get("/api/v1/sandboxvolumes", ALICE);
    assert_eq!(st, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let (st, v) = s.get(&format!("/api/v1/sandboxvolumes/{id}"), ALICE);
    assert_eq!((st, v["data"]["name"].as_str()), (200, Some("db")));

    // A fork inherits the access mode unless told otherwise.
    let (st, f) = s.call("POST", &format!("/api/v1/sandboxvolumes/{id}/fork"), Some(ALICE), None);
    assert_eq!(st, 201, "{f}");
    assert_eq!(f["data"]["access_mode"], "RWX");
    assert_eq!(f["data"]["source_volume_id"], id.as_str());
    let (st, f2) =
        s.post(&format!("/api/v1/sandboxvolumes/{id}/fork"), ALICE, json!({"name": "ro", "access_mode": "ROX"}));
    assert_eq!(st, 201, "{f2}");
    assert_eq!((f2["data"]["access_mode"].as_str(), f2["data"]["name"].as_str()), (Some("ROX"), Some("ro")));

    let (st, v) = s.delete(&format!("/api/v1/sandboxvolumes/{id}"), ALICE);
    assert_eq!((st, &v["data"]["deleted"]), (200, &json!(true)));
    let (st, v) = s.get(&format!("/api/v1/sandboxvolumes/{id}"), ALICE);
    assert_eq!((st, code(&v)), (404, "not_found"));
    let (st, _) = s.delete(&format!("/api/v1/sandboxvolumes/{id}"), ALICE);
    assert_eq!(st, 404);
    let (st, _) = s.get("/api/v1/sandboxvolumes/not-an-id", ALICE);
    assert_eq!(st, 404);
}
