//! A real server on loopback over a temporary store, and a small blocking
//! JSON client for the tests.

#![allow(dead_code, reason = "each test binary uses a different part of this module")]

use cowvol::{Store, StoreOptions};
use cowvol_server::{Server, ServerConfig, Tokens};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

pub const ALICE: &str = "alice-token-0000000000";
pub const BOB: &str = "bob-token-000000000000";
pub const ADMIN: &str = "admin-token-0000000000";

pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<Store>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(ServerConfig::default())
    }

    pub fn start_with(config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        Self::start_on(store, config, dir)
    }

    /// A server over `store`; `dir` is kept until the server is dropped.
    pub fn start_on(store: Store, mut config: ServerConfig, dir: tempfile::TempDir) -> TestServer {
        let tokens = Tokens::parse(&format!("{ALICE} alice\n{BOB} bob\n{ADMIN} root admin\n")).unwrap();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.default_volume_size = 64 << 20;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = rt.block_on(Server::bind(store.clone(), tokens, &config)).unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(server.run(async {
                let _ = rx.await;
            }))
            .unwrap()
        });
        TestServer { addr, store, stop: Some(tx), thread: Some(thread), _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server gracefully and returns the store it handed back.
    pub fn stop(&mut self) -> Option<Store> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }

    /// Sends a request; answers (status, JSON body or Null).
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        let mut req = agent.request(method, &self.url(path));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("GET", path, Some(token), None)
    }

    pub fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(token), Some(&body.to_string()))
    }

    pub fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("DELETE", path, Some(token), None)
    }

    /// Creates a volume and answers its id.
    pub fn volume(&self, token: &str, name: &str, size: u64) -> String {
        let (st, v) = self.post("/api/v1/sandboxvolumes", token, json!({"name": name, "size_bytes": size}));
        assert_eq!(st, 201, "{v}");
        v["data"]["id"].as_str().unwrap().to_string()
    }

    /// Takes a snapshot and answers its id.
    pub fn snapshot(&self, token: &str, vol: &str, name: &str) -> String {
        let (st, v) = self.post(&format!("/api/v1/sandboxvolumes/{vol}/snapshots"), token, json!({"name": name}));
        assert_eq!(st, 201, "{v}");
        v["data"]["id"].as_str().unwrap().to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The error code of a failed answer.
pub fn code(v: &Value) -> &str {
    assert_eq!(v["success"], false, "{v}");
    v["error"]["code"].as_str().unwrap_or("")
}

/// Threads that keep large writes in flight on a volume until dropped.
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// `n` threads writing `chunk` bytes at a time into their own region
    /// (after the first MiB, which the tests keep for markers).
    pub fn start(vol: &cowvol::Volume, n: usize, chunk: usize) -> Writers {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|i| {
                let (vol, stop) = (vol.clone(), stop.clone());
                std::thread::spawn(move || {
                    let data = vec![i as u8 + 1; chunk];
                    let at = (1 << 20) + (i * chunk) as u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Errors (e.g. the volume deleted) end the loop.
                        if vol.write_at(&data, at).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Writers { stop, threads }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
