//! Store-wide snapshot search: filters (name, volume id, kind, status,
//! label) and cursor paging through every row exactly once.

mod common;
use common::*;
use serde_json::json;
use std::collections::BTreeSet;

#[test]
fn search_filters_and_pages_through_every_snapshot_once() {
    let s = TestServer::start();
    let a = s.volume(ALICE, "alpha", 1 << 20);
    let b = s.volume(ALICE, "beta", 1 << 20);
    for i in 0..130 {
        let vol = if i % 2 == 0 { &a } else { &b };
        let body =
            json!({"name": format!("snap-{i:03}"), "labels": {"parity": if i % 2 == 0 { "even" } else { "odd" }}});
        assert_eq!(s.post(&format!("/api/v1/sandboxvolumes/{vol}/snapshots"), ALICE, body).0, 201);
    }
    s.store
        .create_snapshot(
            a.parse().unwrap(),
            cowvol::SnapshotOptions {
                name: "auto-1".into(),
                owner: "alice".into(),
                kind: cowvol::SnapshotKind::Auto,
                ..Default::default()
            },
        )
        .unwrap();

    // Paging: 50 + 50 + 31, newest first, no row twice.
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = cursor.as_ref().map_or(String::new(), |c| format!("&cursor={c}"));
        let (st, v) = s.get(&format!("/api/v1/snapshots?limit=50{q}"), ALICE);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["data"]["total"], 131);
        for item in v["data"]["items"].as_array().unwrap() {
            assert!(seen.insert(item["id"].as_str().unwrap().to_string()));
        }
        pages += 1;
        match v["data"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 131));

    let total = |q: &str| s.get(&format!("/api/v1/snapshots?{q}"), ALICE).1["data"]["total"].as_u64().unwrap();
    assert_eq!(total("search=snap-12"), 10); // snap-120 .. snap-129
    assert_eq!(total(&format!("search={b}")), 65);
    assert_eq!(total(&format!("volume={a}")), 66);
    assert_eq!(total("kind=auto"), 1);
    assert_eq!(total("kind=manual&label=parity=odd"), 65);
    assert_eq!(total("status=failed"), 0);
    assert_eq!(total("volume=vol-999"), 0);
    // The per-volume listing pages the same way.
    let (_, v) = s.get(&format!("/api/v1/sandboxvolumes/{a}/snapshots?limit=10"), ALICE);
    assert_eq!((v["data"]["items"].as_array().unwrap().len(), v["data"]["total"].as_u64()), (10, Some(66)));
    assert_eq!(v["data"]["items"][0]["name"], "auto-1");
}
