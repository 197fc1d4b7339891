//! The panel in a real browser (Debian's chromium through chromedriver):
//! log in, list, search, revert a snapshot (and see the data roll back),
//! create a volume from a snapshot, delete a snapshot. Saves a screenshot
//! of the panel to target/panel.png, or to docs/panel.png with
//! COWVOL_UPDATE_SCREENSHOT=1.

mod common;
use common::*;
use cowvol::{SnapshotKind, SnapshotOptions};
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEPS: &str = "install Debian's `chromium` and `chromium-driver` packages (run .ci/deps-server.sh)";

fn require(bin: &str) -> String {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(bin))
        .find(|p| p.is_file());
    match found {
        Some(p) => p.to_string_lossy().into_owned(),
        None => panic!("`{bin}` is not installed: the panel's browser test needs it; {DEPS}"),
    }
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver(bin: &str) -> (Driver, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}; {DEPS}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start listening; {DEPS}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Driver(child), port)
}

async fn connect(port: u16, chromium: &str) -> Client {
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1360,900", "--lang=en-US"],
        }
    });
    let caps = match caps {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    };
    let conn = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(conn)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("cannot open a chromium session: {e}; {DEPS}"))
}

/// Polls until `f` answers true (the panel updates asynchronously).
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a script answering strings in one step, so a table the panel
/// re-renders meanwhile cannot leave stale element handles behind.
async fn strings(c: &Client, script: &str) -> Vec<String> {
    let v = c.execute(script, vec![]).await.unwrap();
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect()
}

/// The snapshot ids of the table's rows, top to bottom.
async fn rows(c: &Client) -> Vec<String> {
    strings(c, "return [...document.querySelectorAll('#snapshots tbody tr')].map(r => r.dataset.id)").await
}

async fn message(c: &Client) -> String {
    strings(c, "return [document.getElementById('message').textContent]").await.remove(0)
}

async fn row_action(c: &Client, snap: &str, class: &str) {
    let sel = format!("tr[data-id='{snap}'] .{class}");
    c.find(Locator::Css(&sel)).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css("dialog[open]")).await.unwrap();
}

#[test]
fn panel_lists_searches_reverts_creates_and_deletes() {
    let chromium = require("chromium");
    let chromedriver = require("chromedriver");
    let s = TestServer::start();

    // A volume with data, a snapshot of it, then newer data.
    let vol = s.volume(ALICE, "web-frontend", 64 << 20);
    let vid = vol.parse().unwrap();
    let h = s.store.open_volume(vid).unwrap();
    h.write_at(b"release-1", 0).unwrap();
    h.flush().unwrap();
    let golden = s.snapshot(ALICE, &vol, "golden-image");
    h.write_at(b"release-2", 0).unwrap();
    h.flush().unwrap();
    // More rows to show every kind and status.
    let db = s.volume(ALICE, "postgres-data", 256 << 20);
    let dbid = db.parse().unwrap();
    s.snapshot(ALICE, &db, "before-migration");
    let auto = SnapshotOptions {
        name: "nightly-2026-12-02".into(),
        owner: "alice".into(),
        kind: SnapshotKind::Auto,
        ..Default::default()
    };
    s.store.create_snapshot(dbid, auto).unwrap();
    let pending = SnapshotOptions { name: "pre-upgrade".into(), owner: "alice".into(), ..Default::default() };
    s.store.begin_snapshot(dbid, pending).unwrap();
    let broken = SnapshotOptions { name: "interrupted".into(), owner: "alice".into(), ..Default::default() };
    let b = s.store.begin_snapshot(vid, broken).unwrap();
    s.store.abort_snapshot(vid, b.id).unwrap();
    s.snapshot(ALICE, &vol, "doomed");
    // Bob's snapshot must never show for Alice.
    let bobs = s.volume(BOB, "bob-disk", 1 << 20);
    s.snapshot(BOB, &bobs, "bob-private");

    let (_driver, port) = start_driver(&chromedriver);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = connect(port, &chromium).await;
        c.goto(&s.url("/ui")).await.unwrap();

        // Log in.
        c.find(Locator::Id("token")).await.unwrap().send_keys(ALICE).await.unwrap();
        c.find(Locator::Id("login-button")).await.unwrap().click().await.unwrap();
        until("the table", || async { rows(&c).await.len() == 6 }).await;
        let text = c.find(Locator::Id("snapshots")).await.unwrap().text().await.unwrap();
        for shown in ["golden-image", "web-frontend", "MANUAL", "AUTO", "Ready", "In Progress (Creating)", "Failed"] {
            assert!(text.contains(shown), "{shown:?} missing from the table:\n{text}");
        }
        assert!(!text.contains("bob-private"));

        // A screenshot with every status on show; it replaces the one in
        // the docs only when asked, so test runs leave the tree clean.
        let png = c.screenshot().await.unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let to = match std::env::var_os("COWVOL_UPDATE_SCREENSHOT") {
            Some(_) => root.join("docs/panel.png"),
            None => root.join("target/panel.png"),
        };
        std::fs::write(&to, png).unwrap();

        // Search by name, then by volume id.
        let search = c.find(Locator::Id("search")).await.unwrap();
        search.send_keys("golden").await.unwrap();
        until("the name search", || async { rows(&c).await == vec![golden.clone()] }).await;
        search.clear().await.unwrap();
        search.send_keys(&db).await.unwrap();
        until("the volume search", || async { rows(&c).await.len() == 3 }).await;
        search.clear().await.unwrap();
        c.find(Locator::Id("refresh")).await.unwrap().click().await.unwrap();
        until("the full table", || async { rows(&c).await.len() == 6 }).await;

        // Revert: the dialog warns, the safety snapshot is on by default.
        row_action(&c, &golden, "act-revert").await;
        let warning = c.find(Locator::Id("dialog-text")).await.unwrap().text().await.unwrap();
        assert!(warning.contains("cannot be undone"), "{warning}");
        assert!(c.find(Locator::Id("dialog-safety")).await.unwrap().is_selected().await.unwrap());
        c.find(Locator::Id("dialog-ok")).await.unwrap().click().await.unwrap();
        until("the revert", || async { message(&c).await.starts_with("Reverted") }).await;
        let mut buf = [0u8; 9];
        h.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"release-1", "the volume's data did not roll back");
        let (_, page) = s.get(&format!("/api/v1/sandboxvolumes/{vol}/snapshots?search=before-restore"), ALICE);
        assert_eq!(page["data"]["total"], 1, "no safety snapshot: {page}");

        // A volume from the snapshot.
        row_action(&c, &golden, "act-volume").await;
        let name = c.find(Locator::Id("dialog-name")).await.unwrap();
        name.clear().await.unwrap();
        name.send_keys("from-golden").await.unwrap();
        c.find(Locator::Id("dialog-ok")).await.unwrap().click().await.unwrap();
        until("the new volume", || async { message(&c).await.starts_with("Created volume from-golden") }).await;
        let (_, vols) = s.get("/api/v1/sandboxvolumes", ALICE);
        let made = vols["data"].as_array().unwrap().iter().find(|v| v["name"] == "from-golden").cloned();
        assert_eq!(made.expect("volume not created")["source_snapshot_id"], golden.as_str());

        // Delete a snapshot.
        let first = strings(
            &c,
            "const r = document.querySelector('#snapshots tbody tr'); return [r.dataset.id, r.dataset.volume]",
        )
        .await;
        let (doomed, doomed_vol) = (first[0].clone(), first[1].clone());
        row_action(&c, &doomed, "act-delete").await;
        c.find(Locator::Id("dialog-ok")).await.unwrap().click().await.unwrap();
        until("the delete", || async { message(&c).await.starts_with("Deleted") }).await;
        until("the row to go", || async { !rows(&c).await.contains(&doomed) }).await;
        let (st, _) = s.get(&format!("/api/v1/sandboxvolumes/{doomed_vol}/snapshots/{doomed}"), ALICE);
        assert_eq!(st, 404, "the deleted snapshot is still there");
        c.close().await.unwrap();
    });
}
