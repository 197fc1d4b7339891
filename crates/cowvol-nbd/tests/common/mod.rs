//! A real server on a temporary store, listening on a unix socket and on
//! 127.0.0.1 with an ephemeral port, plus helpers to run client tools.
#![allow(dead_code, reason = "each test file uses a different part of the harness")]

use cowvol::{RestoreOptions, Restored, SnapshotId, Store, StoreOptions, VolumeId, VolumeOptions};
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

/// A hand-rolled NBD client on a raw socket, for what real clients never send.
pub mod raw {
    use std::io::{Read, Write};
    use std::path::Path;
    use std::time::Duration;

    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    pub const OPT_GO: u32 = 7;
    pub const OPT_STRUCTURED_REPLY: u32 = 8;
    pub const REP_ACK: u32 = 1;
    pub const REP_INFO: u32 = 3;
    pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
    pub const CMD_READ: u16 = 0;
    pub const CMD_WRITE: u16 = 1;
    pub const CMD_DISC: u16 = 2;
    pub const CMD_FLUSH: u16 = 3;
    pub const EPERM: u32 = 1;
    pub const EINVAL: u32 = 22;

    pub trait Stream: Read + Write + Send {}
    impl<T: Read + Write + Send> Stream for T {}

    pub struct Client {
        pub s: Box<dyn Stream>,
    }

    impl Client {
        /// Connects and reads the greeting (without answering it).
        pub fn connect_unix(path: &Path) -> Client {
            let s = std::os::unix::net::UnixStream::connect(path).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut c = Client { s: Box::new(s) };
            let g = c.read_n(18);
            assert_eq!(g[..8], *b"NBDMAGIC");
            assert_eq!(g[8..16], *b"IHAVEOPT");
            c
        }

        pub fn connect_tcp(port: u16) -> Client {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut c = Client { s: Box::new(s) };
            let g = c.read_n(18);
            assert_eq!(g[..8], *b"NBDMAGIC");
            c
        }

        pub fn read_n(&mut self, n: usize) -> Vec<u8> {
            let mut b = vec![0u8; n];
            self.s.read_exact(&mut b).expect("read from server");
            b
        }

        pub fn send(&mut self, b: &[u8]) {
            self.s.write_all(b).expect("write to server");
        }

        /// True when the server has closed the connection (EOF, or reset).
        pub fn closed_by_server(&mut self) -> bool {
            let mut b = [0u8; 1];
            matches!(self.s.read(&mut b), Ok(0) | Err(_))
        }

        /// Fixed newstyle, no zeroes.
        pub fn client_flags(&mut self) {
            self.send(&3u32.to_be_bytes());
        }

        pub fn option(&mut self, opt: u32, data: &[u8]) {
            let mut b = Vec::new();
            b.extend_from_slice(&IHAVEOPT.to_be_bytes());
            b.extend_from_slice(&opt.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            self.send(&b);
        }

        /// One option reply: (option, type, data).
        pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
            let h = self.read_n(20);
            let opt = u32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
            let kind = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes"));
            (opt, kind, self.read_n(len as usize))
        }

        /// `NBD_OPT_GO`; returns (size, transmission flags).
        pub fn go(&mut self, export: &str) -> (u64, u16) {
            self.try_go(export).unwrap_or_else(|(kind, why)| panic!("NBD_OPT_GO failed with reply {kind:#x}: {why}"))
        }

        /// `NBD_OPT_GO`; returns (size, transmission flags), or the error
        /// reply's type and message (the negotiation then goes on).
        pub fn try_go(&mut self, export: &str) -> Result<(u64, u16), (u32, String)> {
            let mut d = Vec::new();
            d.extend_from_slice(&(export.len() as u32).to_be_bytes());
            d.extend_from_slice(export.as_bytes());
            d.extend_from_slice(&0u16.to_be_bytes());
            self.option(OPT_GO, &d);
            let mut export_info = None;
            loop {
                let (_, kind, data) = self.option_reply();
                match kind {
                    REP_INFO if data[..2] == [0, 0] => {
                        let size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                        let flags = u16::from_be_bytes(data[10..12].try_into().expect("2 bytes"));
                        export_info = Some((size, flags));
                    }
                    REP_INFO => {}
                    REP_ACK => return Ok(export_info.expect("NBD_INFO_EXPORT before the ACK")),
                    other => return Err((other, String::from_utf8_lossy(&data).into_owned())),
                }
            }
        }

        /// Handshake through `NBD_OPT_GO` with simple replies.
        pub fn attach_unix(path: &Path, export: &str) -> (Client, u64) {
            let mut c = Client::connect_unix(path);
            c.client_flags();
            let (size, _) = c.go(export);
            (c, size)
        }

        pub fn request(&mut self, flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) {
            let mut b = Vec::with_capacity(28);
            b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            b.extend_from_slice(&flags.to_be_bytes());
            b.extend_from_slice(&cmd.to_be_bytes());
            b.extend_from_slice(&handle.to_be_bytes());
            b.extend_from_slice(&offset.to_be_bytes());
            b.extend_from_slice(&len.to_be_bytes());
            self.send(&b);
        }

        /// A simple reply header: (error, handle).
        pub fn simple_reply(&mut self) -> (u32, u64) {
            let h = self.read_n(16);
            assert_eq!(h[..4], 0x6744_6698u32.to_be_bytes(), "simple reply magic");
            let err = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
            let handle = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
            (err, handle)
        }

        pub fn write(&mut self, handle: u64, offset: u64, data: &[u8]) -> u32 {
            self.request(0, CMD_WRITE, handle, offset, data.len() as u32);
            self.send(data);
            let (err, h) = self.simple_reply();
            assert_eq!(h, handle);
            err
        }

        pub fn read(&mut self, handle: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
            self.request(0, CMD_READ, handle, offset, len);
            let (err, h) = self.simple_reply();
            assert_eq!(h, handle);
            if err != 0 {
                return Err(err);
            }
            Ok(self.read_n(len as usize))
        }

        pub fn disconnect(mut self) {
            self.request(0, CMD_DISC, 0, 0, 0);
        }
    }
}
