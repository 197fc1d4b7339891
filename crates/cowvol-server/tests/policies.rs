//! A volume's snapshot policy: set, read, clear.

mod common;
use common::*;
use serde_json::json;

#[test]
fn policies_are_set_read_and_cleared() {
    let s = TestServer::start();
    let vol = s.volume(ALICE, "p", 1 << 20);
    let path = format!("/api/v1/sandboxvolumes/{vol}/policy");
    let (st, v) = s.get(&path, ALICE);
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "no policy yet: {v}");
    let policy = json!({"interval_secs": 3600, "keep_last": 24, "keep_for_secs": null});
    let (st, v) = s.call("PUT", &path, Some(ALICE), Some(&policy.to_string()));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["policy"], policy);
    assert_eq!(s.get(&path, ALICE).1["data"]["policy"], policy);
    assert_eq!(s.get(&format!("/api/v1/sandboxvolumes/{vol}"), ALICE).1["data"]["policy"], policy);
    let (st, v) = s.delete(&path, ALICE);
    assert_eq!((st, &v["data"]["policy"]), (200, &json!(null)));
    // Deleted means gone: reading it again is a 404, and deleting again still succeeds.
    assert_eq!(s.get(&path, ALICE).0, 404);
    assert_eq!(s.get(&format!("/api/v1/sandboxvolumes/{vol}"), ALICE).1["data"]["policy"], json!(null));
    assert_eq!(s.delete(&path, ALICE).0, 200);
    let (st, v) = s.call("PUT", &path, Some(ALICE), Some(r#"{"interval_secs": 60, "keep_last": 0}"#));
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("keep_last")));
    assert_eq!(s.get("/api/v1/sandboxvolumes/vol-999/policy", ALICE).0, 404);
}
