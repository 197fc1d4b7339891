//! Bad input answers 400 with the field at fault: malformed JSON, unknown
//! fields, wrong types, bad sizes and bad query parameters.

mod common;
use common::*;

#[test]
fn bad_input_answers_400_naming_the_field() {
    let s = TestServer::start();
    let vol = s.volume(ALICE, "v", 1 << 20);
    let cases = [
        ("POST", "/api/v1/sandboxvolumes".to_string(), r#"{"name": "x""#, "body"),
        ("POST", "/api/v1/sandboxvolumes".to_string(), r#"{"name": "x", "colour": "red"}"#, "colour"),
        ("POST", "/api/v1/sandboxvolumes".to_string(), r#"{"size_bytes": "big"}"#, "size_bytes"),
        ("POST", "/api/v1/sandboxvolumes".to_string(), r#"{"size_bytes": 0}"#, "size_bytes"),
        ("POST", "/api/v1/sandboxvolumes".to_string(), r#"{"access_mode": "RWZ"}"#, "access_mode"),
        ("POST", "/api/v1/sandboxvolumes".to_string(), r#"{"cache_size": "lots"}"#, "cache_size"),
        ("POST", "/api/v1/sandboxvolumes".to_string(), r#"[1, 2]"#, "body"),
        ("POST", format!("/api/v1/sandboxvolumes/{vol}/snapshots"), r#"{"name": "s", "labels": {"a": 1}}"#, "labels.a"),
        ("POST", format!("/api/v1/sandboxvolumes/{vol}/snapshots"), "", "body"),
        ("PUT", format!("/api/v1/sandboxvolumes/{vol}/policy"), r#"{"interval_secs": 0}"#, "interval_secs"),
        ("POST", "/api/v1/templates".to_string(), r#"{"name": "t"}"#, "snapshot_id"),
    ];
    for (method, path, body, field) in cases {
        let (st, v) = s.call(method, &path, Some(ALICE), Some(body));
        assert_eq!(st, 400, "{method} {path} {body}: {v}");
        assert_eq!(code(&v), "invalid_argument");
        assert_eq!(v["error"]["field"], field, "{method} {path} {body}: {v}");
    }
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("kind=weird", "kind"),
        ("label=nokey", "label"),
        ("cursor=zz", "cursor"),
        ("bogus=1", "bogus"),
    ] {
        let (st, v) = s.get(&format!("/api/v1/snapshots?{query}"), ALICE);
        assert_eq!(st, 400, "{query}: {v}");
        assert!(v["error"]["field"].as_str().unwrap().contains(field) || field == "bogus", "{query}: {v}");
    }
}

/// Found by schemathesis: a body of only whitespace is not JSON. An empty
/// body means the defaults; whitespace is refused, and nothing is created.
#[test]
fn a_whitespace_body_is_refused_not_taken_for_the_defaults() {
    let s = TestServer::start();
    let vol = s.volume(ALICE, "ws", 16 << 20);
    let (status, _) = s.call("POST", &format!("/api/v1/sandboxvolumes/{vol}/fork"), Some(ALICE), Some("\n"));
    assert_eq!(status, 400);
    let (status, _) = s.call("POST", &format!("/api/v1/sandboxvolumes/{vol}/fork"), Some(ALICE), Some(""));
    assert_eq!(status, 201, "an empty body still means the defaults");
}
