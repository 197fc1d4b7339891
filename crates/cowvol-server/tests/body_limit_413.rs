//! Bodies over the limit answer 413, whether announced by Content-Length
//! or sent chunked.

mod common;
use common::*;
use std::io::{Read, Write};

fn raw(s: &TestServer, head: &str, body: &[u8]) -> String {
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before reading it all.
    let _ = conn.write_all(body);
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out);
    out
}

#[test]
fn huge_bodies_answer_413() {
    let s = TestServer::start();
    let big = vec![b' '; cowvol_server::BODY_LIMIT_BYTES + 1];
    let head = format!(
        "POST /api/v1/sandboxvolumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let resp = raw(&s, &head, &big);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");

    // Announcing a gigabyte is refused without reading it.
    let head = format!("POST /api/v1/sandboxvolumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n");
    assert!(raw(&s, &head, b"{").starts_with("HTTP/1.1 413"));

    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunked.extend_from_slice(&[b' '; 8192]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!("POST /api/v1/sandboxvolumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    assert!(raw(&s, &head, &chunked).starts_with("HTTP/1.1 413"));
    // Nothing was created.
    assert_eq!(s.get("/api/v1/sandboxvolumes", ALICE).1["data"], serde_json::json!([]));
}
