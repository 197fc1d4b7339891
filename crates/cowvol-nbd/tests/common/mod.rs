//! A real server on a temporary store, listening on a unix socket and on
//! 127.0.0.1 with an ephemeral port, plus helpers to run client tools.
#![allow(dead_code, reason = "each test file uses a different part of the harness")]

use cowvol::{Restored, RestoreOptions, SnapshotId, Store, StoreOptions, VolumeId, VolumeOptions};
use cowvol_nbd::{BoundAddr, ListenAddr, Server, ServerOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The volume every test server starts with.
pub const VOLUME: &str = "disk";

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub port: u16,
    pub server: Server,
    pub volume: VolumeId,
    rt: tokio::runtime::Runtime,
}

impl TestServer {
    /// A server with default options and one volume of `size` bytes.
    pub fn start(size: u64) -> TestServer {
        Self::start_with(size, |_| {})
    }

    /// A server whose options `tweak` adjusts.
    pub fn start_with(size: u64, tweak: impl FnOnce(&mut ServerOptions)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path().join("store"), StoreOptions::default()).expect("open store");
        let volume = store.create_volume(VolumeOptions::new(VOLUME, size)).expect("create volume").id;
        let sock = dir.path().join("nbd.sock");
        let mut opts = ServerOptions::new(vec![ListenAddr::Unix(sock.clone()), ListenAddr::Tcp("127.0.0.1:0".into())]);
        opts.handshake_timeout = Duration::from_secs(5);
        tweak(&mut opts);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let server = rt.block_on(Server::start(store, opts)).expect("start server");
        let port = server
            .local_addrs()
            .iter()
            .find_map(|a| match a {
                BoundAddr::Tcp(a) => Some(a.port()),
                BoundAddr::Unix(_) => None,
            })
            .unwrap_or(0);
        TestServer { dir, sock, port, server, volume, rt }
    }

    pub fn store(&self) -> &Store {
        self.server.store()
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock.display())
    }

    pub fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// Both URIs of an export: every client test runs on each transport.
    pub fn uris(&self, export: &str) -> [String; 2] {
        [self.unix_uri(export), self.tcp_uri(export)]
    }

    pub fn restore(&self, snapshot: SnapshotId, timeout: Duration) -> cowvol::Result<Restored> {
        let opts = RestoreOptions { timeout, ..Default::default() };
        self.rt.block_on(self.server.restore_snapshot(self.volume, snapshot, opts))
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Reads the volume through the library.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let v = self.store().open_volume_with(self.volume, cowvol::OpenMode::ReadOnly).expect("open read-only");
        let mut b = vec![0u8; len];
        v.read_at(&mut b, offset).expect("read");
        b
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let r = self.rt.block_on(self.server.shutdown(Duration::from_secs(10)));
        if !std::thread::panicking() {
            r.expect("graceful shutdown");
            let report = self.server.store().check().expect("check");
            assert!(report.is_clean(), "store check after the test: {report:?}");
        }
    }
}

/// The path of a client tool, or a failure naming the package that has it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: install the Debian package `{package}` (.ci/deps-nbd.sh installs every tool the NBD tests use)")
        })
}

/// Runs a command and fails the test, with its output, unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new(tool("qemu-io", "qemu-utils"));
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri);
    let out = run(&mut c);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // qemu-io reports failed commands (a pattern mismatch included) on
    // stdout and still exits 0.
    assert!(!text.contains("failed") && !text.contains("Pattern verification"), "qemu-io {cmds:?}:\n{text}");
    text
}

/// Runs a Python script with libnbd's bindings (what `nbdsh` runs) and
/// returns its stdout. The system interpreter is used because the bindings
/// are a Debian package, invisible to other Pythons on the PATH.
pub fn nbdsh(script: &str) -> String {
    let python = Path::new("/usr/bin/python3");
    let probe = Command::new(python).args(["-c", "import nbd"]).output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        panic!("libnbd's Python bindings are not installed: install the Debian package `python3-libnbd` (.ci/deps-nbd.sh installs every tool the NBD tests use)");
    }
    let out = run(Command::new(python).args(["-c", &format!("import nbd\n{script}")]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write file");
}
