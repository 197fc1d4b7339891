//! Each owner sees and touches only its own volumes, snapshots and
//! templates: another owner's ids answer 404 and change nothing; an admin
//! sees everything.

mod common;
use common::*;
use serde_json::json;

#[test]
fn another_owners_ids_answer_404_and_change_nothing() {
    let s = TestServer::start();
    let vol = s.volume(ALICE, "alice-disk", 4 << 20);
    let sid = s.snapshot(ALICE, &vol, "mine");
    let (st, t) = s.post("/api/v1/templates", ALICE, json!({"snapshot_id": sid, "name": "alice-base"}));
    assert_eq!(st, 201, "{t}");
    let tid = t["data"]["id"].as_str().unwrap().to_string();
    let v = format!("/api/v1/sandboxvolumes/{vol}");
    let snap = format!("{v}/snapshots/{sid}");

    let attempts: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("GET", v.clone(), None),
        ("DELETE", v.clone(), None),
        ("POST", format!("{v}/fork"), Some(json!({}))),
        ("POST", format!("{v}/snapshots"), Some(json!({"name": "theirs"}))),
        ("GET", format!("{v}/snapshots"), None),
        ("GET", snap.clone(), None),
        ("DELETE", snap.clone(), None),
        ("POST", format!("{snap}/restore"), Some(json!({}))),
        ("POST", format!("{snap}/hold"), None),
        ("POST", format!("{snap}/release"), None),
        ("GET", format!("{v}/policy"), None),
        ("PUT", format!("{v}/policy"), Some(json!({"interval_secs": 60}))),
        ("DELETE", format!("{v}/policy"), None),
        ("POST", "/api/v1/sandboxvolumes".into(), Some(json!({"snapshot_id": sid}))),
        ("POST", "/api/v1/sandboxvolumes".into(), Some(json!({"template_id": tid}))),
        ("POST", "/api/v1/templates".into(), Some(json!({"snapshot_id": sid, "name": "stolen"}))),
        ("GET", format!("/api/v1/templates/{tid}"), None),
        ("DELETE", format!("/api/v1/templates/{tid}"), None),
    ];
    for (method, path, body) in &attempts {
        let body = body.as_ref().map(|b| b.to_string());
        let (st, resp) = s.call(method, path, Some(BOB), body.as_deref());
        assert_eq!(st, 404, "bob {method} {path}: {resp}");
        assert_eq!(code(&resp), "not_found");
    }

    // Bob's listings are empty; Alice's objects are all still there, unchanged.
    assert_eq!(s.get("/api/v1/sandboxvolumes", BOB).1["data"], json!([]));
    assert_eq!(s.get("/api/v1/snapshots", BOB).1["data"]["total"], 0);
    assert_eq!(s.get("/api/v1/templates", BOB).1["data"], json!([]));
    assert_eq!(s.get("/api/v1/sandboxvolumes", ALICE).1["data"].as_array().unwrap().len(), 1);
    let (_, page) = s.get("/api/v1/snapshots", ALICE);
    assert_eq!(page["data"]["total"], 1, "{page}");
    assert_eq!(page["data"]["items"][0]["held"], false);
    assert_eq!(s.get(&v, ALICE).1["data"]["policy"], json!(null));
    assert_eq!(s.get("/api/v1/templates", ALICE).1["data"].as_array().unwrap().len(), 1);

    // The admin sees everyone's.
    assert_eq!(s.get(&v, ADMIN).0, 200);
    assert_eq!(s.get(&snap, ADMIN).0, 200);
    assert_eq!(s.get("/api/v1/snapshots", ADMIN).1["data"]["total"], 1);
}
