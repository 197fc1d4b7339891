//! Without a valid token every API call answers 401; health, OpenAPI and
//! the panel need none. A tokens file others can read is refused.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn api_calls_without_a_valid_token_answer_401() {
    let s = TestServer::start();
    for token in [None, Some("wrong-token-000000000"), Some("")] {
        for (m, p) in [
            ("GET", "/api/v1/sandboxvolumes"),
            ("POST", "/api/v1/sandboxvolumes"),
            ("GET", "/api/v1/snapshots"),
            ("DELETE", "/api/v1/templates/tmpl-1"),
        ] {
            let (st, v) = s.call(m, p, token, None);
            assert_eq!((st, code(&v)), (401, "unauthorized"), "{m} {p} {token:?}");
        }
    }
    assert_eq!(s.call("GET", "/healthz", None, None).0, 200);
    assert_eq!(s.call("GET", "/openapi.json", None, None).0, 200);
    assert_eq!(s.call("GET", "/api/v1/sandboxvolumes", Some(ALICE), None).0, 200);
}

#[test]
fn a_tokens_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "aaaaaaaaaaaaaaaaaaaa alice\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = cowvol_server::Tokens::load(&path).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(cowvol_server::Tokens::load(&path).is_ok());
}
