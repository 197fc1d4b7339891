//! A full store through the real HTTP stack: a change that finds no room
//! answers 507 `no_space` and leaves nothing half made; deleting snapshots
//! still works at the full store and makes room, so creates work again.
//! The store sits on the simulated disk, which can be given a capacity;
//! the server, its sockets and the client are real.

mod common;
use common::{code, TestServer, ALICE};
use cowvol::testing::SimDir;
use cowvol::{Error, Store, StoreOptions};
use cowvol_server::ServerConfig;
use serde_json::json;
use std::sync::Arc;

#[test]
fn a_full_store_answers_507_changes_nothing_and_recovers_when_space_is_freed() {
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), StoreOptions::default()).unwrap();
    let srv = TestServer::start_on(store.clone(), ServerConfig::default(), tempfile::tempdir().unwrap());
    let vol = srv.volume(ALICE, "data", 64 << 20);
    let vid: cowvol::VolumeId = vol.parse().unwrap();
    // Fill the disk with data written through the library.
    disk.set_capacity(Some(disk.used_bytes() + (6 << 20)));
    let handle = store.open_volume(vid).unwrap();
    let chunk = vec![0x5au8; 256 << 10];
    let mut at = 0;
    loop {
        match handle.write_at(&chunk, at).and_then(|()| handle.flush()) {
            Ok(()) => at += chunk.len() as u64,
            Err(Error::NoSpace { .. }) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
        assert!(at < 64 << 20, "the disk never filled up");
    }
    // Snapshots until the store has no room for one more.
    let path = format!("/api/v1/sandboxvolumes/{vol}/snapshots");
    let mut taken = Vec::new();
    let refused = loop {
        assert!(taken.len() < 20_000, "20,000 snapshots and no 507");
        let (st, body) = srv.post(&path, ALICE, json!({"name": format!("s{}", taken.len())}));
        match st {
            201 => taken.push(body["data"]["id"].as_str().unwrap().to_string()),
            507 => break body,
            other => panic!("snapshot {}: {other} {body}", taken.len()),
        }
    };
    println!("{} snapshots taken at the full disk, then 507", taken.len());
    assert_eq!(code(&refused), "no_space", "{refused}");
    // The refused snapshot does not exist, and the ones before it do.
    let (st, list) = srv.get(&format!("{path}?limit=1000"), ALICE);
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["data"]["total"].as_u64(), Some(taken.len() as u64), "{list}");
    // Deletes work at the full store and make room.
    for id in taken.iter().rev().take(taken.len() / 2) {
        let (st, body) = srv.delete(&format!("{path}/{id}"), ALICE);
        assert_eq!(st, 200, "deleting {id} at a full store: {body}");
    }
    let (st, body) = srv.post(&path, ALICE, json!({"name": "after-freeing"}));
    assert_eq!(st, 201, "{body}");
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}
