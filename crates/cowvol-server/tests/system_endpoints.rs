//! /healthz, /openapi.json (generated from the handlers: every route is
//! there), /metrics (request series by route and code, store gauges), the
//! panel's assets, and the envelope for unknown routes and methods.

mod common;
use common::*;

#[test]
fn health_openapi_metrics_and_panel_are_served() {
    let s = TestServer::start();
    let (st, v) = s.call("GET", "/healthz", None, None);
    assert_eq!((st, v["data"]["status"].as_str()), (200, Some("ok")));

    let (st, doc) = s.call("GET", "/openapi.json", None, None);
    assert_eq!(st, 200);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/sandboxvolumes",
        "/api/v1/sandboxvolumes/{id}",
        "/api/v1/sandboxvolumes/{id}/fork",
        "/api/v1/sandboxvolumes/{id}/snapshots",
        "/api/v1/sandboxvolumes/{id}/snapshots/{sid}",
        "/api/v1/sandboxvolumes/{id}/snapshots/{sid}/restore",
        "/api/v1/sandboxvolumes/{id}/snapshots/{sid}/hold",
        "/api/v1/sandboxvolumes/{id}/snapshots/{sid}/release",
        "/api/v1/sandboxvolumes/{id}/policy",
        "/api/v1/snapshots",
        "/api/v1/templates",
        "/api/v1/templates/{id}",
    ] {
        assert!(paths.contains_key(p), "{p} missing from /openapi.json");
    }
    let restore = &doc["paths"]["/api/v1/sandboxvolumes/{id}/snapshots/{sid}/restore"]["post"]["responses"];
    for code in ["200", "404", "409", "504"] {
        assert!(restore.get(code).is_some(), "restore does not document {code}");
    }

    let vol = s.volume(ALICE, "m", 1 << 20);
    s.snapshot(ALICE, &vol, "one");
    let (st, _) = s.get("/api/v1/sandboxvolumes/vol-404", ALICE);
    assert_eq!(st, 404);
    let resp = ureq::get(&s.url("/metrics")).call().unwrap();
    assert!(resp.content_type().starts_with("text/plain"));
    let text = resp.into_string().unwrap();
    for want in [
        r#"cowvol_http_requests_total{method="POST",route="/api/v1/sandboxvolumes/{id}/snapshots",code="201"} 1"#,
        r#"cowvol_http_requests_total{method="GET",route="/api/v1/sandboxvolumes/{id}",code="404"} 1"#,
        "cowvol_http_request_duration_seconds_bucket{",
        "cowvol_volumes 1",
        r#"cowvol_snapshots{kind="manual",status="ready"} 1"#,
        "cowvol_store_physical_bytes ",
        "# TYPE cowvol_store_written_bytes_total counter",
        r#"cowvol_store_written_bytes_total{kind="nodes"} "#,
        r#"cowvol_store_written_bytes_total{kind="deltas"} "#,
        "cowvol_store_syncs_total ",
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }
    // The snapshot was logged and synced: the log and the syncs counted.
    let counter = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(counter(r#"cowvol_store_written_bytes_total{kind="log"}"#) > 0);
    assert!(counter("cowvol_store_syncs_total") > 0);

    let page = ureq::get(&s.url("/ui")).call().unwrap().into_string().unwrap();
    assert!(page.contains("/ui/panel.js") && !page.contains("http://") && !page.contains("https://"));
    assert_eq!(ureq::get(&s.url("/ui/panel.js")).call().unwrap().status(), 200);
    assert_eq!(ureq::get(&s.url("/ui/panel.css")).call().unwrap().status(), 200);

    let (st, v) = s.call("GET", "/nowhere", Some(ALICE), None);
    assert_eq!((st, code(&v)), (404, "not_found"));
    let (st, v) = s.call("PATCH", "/api/v1/sandboxvolumes", Some(ALICE), Some("{}"));
    assert_eq!((st, code(&v)), (405, "method_not_allowed"));
}

/// A scrape reads the cheap figures every time and the tree figures from a
/// walk that later scrapes share: ten scrapes in a row walk the trees once,
/// and what they report is what `Store::stats` counts.
#[test]
fn scrapes_share_one_walk_of_the_trees() {
    let s = TestServer::start();
    let vol = s.store.create_volume(cowvol::VolumeOptions::new("w", 1 << 20)).unwrap().id;
    let h = s.store.open_volume(vol).unwrap();
    h.write_at(&[7u8; 64 << 10], 0).unwrap();
    h.flush().unwrap();
    let want = s.store.stats();
    let gauge = |text: &str, name: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    for scrape in 1..=10 {
        let text = ureq::get(&s.url("/metrics")).call().unwrap().into_string().unwrap();
        assert_eq!(gauge(&text, "cowvol_store_tree_walks_total"), 1.0, "scrape {scrape}");
        assert_eq!(gauge(&text, "cowvol_store_mapped_bytes"), want.mapped_bytes as f64);
        assert_eq!(gauge(&text, "cowvol_store_physical_bytes"), want.physical_bytes as f64);
        assert_eq!(gauge(&text, "cowvol_store_file_bytes"), s.store.quick_stats().file_bytes as f64);
        assert!(gauge(&text, "cowvol_store_tree_figures_age_seconds") < 60.0);
    }
}
