//! Target wrappers for tests (feature `testing`): one that counts what is
//! asked of a target, and one that fails every operation after the first
//! N, the way a crash would stop a backup between two requests.

use crate::error::{Error, Result};
use crate::target::Target;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counts the operations and bytes that pass through to `inner`.
pub struct Counting<T> {
    /// The wrapped target.
    pub inner: T,
    /// Keys put, in order.
    pub puts: Mutex<Vec<String>>,
    /// Bytes put.
    pub bytes_put: AtomicU64,
    /// Gets (whole and ranged).
    pub gets: AtomicU64,
    /// Keys deleted.
    pub deletes: Mutex<Vec<String>>,
}

impl<T: Target> Counting<T> {
    /// Wraps `inner` with every count at zero.
    pub fn new(inner: T) -> Counting<T> {
        Counting {
            inner,
            puts: Mutex::default(),
            bytes_put: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            deletes: Mutex::default(),
        }
    }

    /// Keys put in `folder` so far.
    pub fn puts_in(&self, folder: &str) -> usize {
        let prefix = format!("{folder}/");
        self.puts.lock().unwrap().iter().filter(|k| k.starts_with(&prefix)).count()
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        self.puts.lock().unwrap().clear();
        self.deletes.lock().unwrap().clear();
        self.bytes_put.store(0, Ordering::Relaxed);
        self.gets.store(0, Ordering::Relaxed);
    }
}

impl<T: Target> Target for Counting<T> {
    fn url(&self) -> &str {
        self.inner.url()
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.puts.lock().unwrap().push(key.to_string());
        self.bytes_put.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(key, offset, len)
    }
    fn list(&self, folder: &str) -> Result<Vec<String>> {
        self.inner.list(folder)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.deletes.lock().unwrap().push(key.to_string());
        self.inner.delete(key)
    }
    fn remove_leftovers(&self) -> Result<u64> {
        self.inner.remove_leftovers()
    }
}

/// Lets the first `budget` operations through to `inner`, then fails every
/// one, as if the process had died there. A write that fails did not
/// happen; with `apply_failing_write`, the write that crosses the budget
/// happens but is reported failed (the process died after the target
/// stored the object, before it heard back).
pub struct FailAfter<T> {
    /// The wrapped target.
    pub inner: T,
    left: AtomicU64,
    apply_failing_write: bool,
    /// Whether an operation has failed.
    pub tripped: AtomicBool,
    /// Only the first failing write may land: later ones come after the
    /// "crash".
    landed: AtomicBool,
}

impl<T: Target> FailAfter<T> {
    /// Lets `budget` operations through.
    pub fn new(inner: T, budget: u64, apply_failing_write: bool) -> FailAfter<T> {
        FailAfter {
            inner,
            left: AtomicU64::new(budget),
            apply_failing_write,
            tripped: false.into(),
            landed: false.into(),
        }
    }

    /// Takes one operation from the budget; false when it is spent.
    fn pass(&self) -> bool {
        let ok = self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if !ok {
            self.tripped.store(true, Ordering::SeqCst);
        }
        ok
    }

    fn crash(&self, op: &'static str, key: &str) -> Error {
        Error::Target {
            target: self.inner.url().to_string(),
            op,
            key: key.to_string(),
            detail: "injected crash".into(),
        }
    }
}

impl<T: Target> Target for FailAfter<T> {
    fn url(&self) -> &str {
        self.inner.url()
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        if self.pass() {
            return self.inner.put(key, bytes);
        }
        if self.apply_failing_write && !self.landed.swap(true, Ordering::SeqCst) {
            self.inner.put(key, bytes)?;
        }
        Err(self.crash("put", key))
    }
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        if self.pass() {
            self.inner.get(key)
        } else {
            Err(self.crash("get", key))
        }
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if self.pass() {
            self.inner.get_range(key, offset, len)
        } else {
            Err(self.crash("get", key))
        }
    }
    fn list(&self, folder: &str) -> Result<Vec<String>> {
        if self.pass() {
            self.inner.list(folder)
        } else {
            Err(self.crash("list", folder))
        }
    }
    fn delete(&self, key: &str) -> Result<()> {
        if self.pass() {
            return self.inner.delete(key);
        }
        if self.apply_failing_write && !self.landed.swap(true, Ordering::SeqCst) {
            self.inner.delete(key)?;
        }
        Err(self.crash("delete", key))
    }
    fn remove_leftovers(&self) -> Result<u64> {
        if self.pass() {
            self.inner.remove_leftovers()
        } else {
            Err(self.crash("remove", "leftovers"))
        }
    }
}

/// Bytes that differ from seed to seed and along the buffer (xorshift), so
/// that no two written ranges deduplicate by accident.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A single-node Garage server on loopback ports with its data in a
/// temporary directory, for tests and benches against a real S3 server.
/// Dropping it stops the server.
pub struct Garage {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// A key allowed to read and write [`Garage::bucket`].
    pub credentials: crate::S3Credentials,
    /// The bucket made for the tests.
    pub bucket: String,
}

/// Where the Garage binary is looked for: `COWVOL_GARAGE`, else `garage`
/// on `PATH`, else `~/.cargo/bin/garage` (where `.ci/deps-s3.sh` installs
/// it with `cargo install`).
pub fn garage_binary() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let candidates = std::env::var_os("COWVOL_GARAGE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).map(|d| d.join("garage")).collect::<Vec<_>>()),
        )
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/garage")));
    candidates.into_iter().find(|p| p.is_file())
}

/// Whether S3 tests must run here: in CI (`CI` set) or when
/// `COWVOL_REQUIRE_S3` is set, a missing server is a failure, not a skip.
pub fn s3_required() -> bool {
    ["CI", "COWVOL_REQUIRE_S3"].iter().any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "false"))
}

impl Garage {
    /// Starts a server, assigns its layout, and makes a bucket and a key.
    /// `None` (after a loud message on stderr) when no Garage binary is
    /// installed and [`s3_required`] is false.
    ///
    /// # Panics
    /// When the binary is missing and S3 is required, or the server does
    /// not come up.
    pub fn start() -> Option<Garage> {
        let Some(bin) = garage_binary() else {
            assert!(
                !s3_required(),
                "no Garage binary (COWVOL_GARAGE, PATH, ~/.cargo/bin) and S3 tests are required here: run .ci/deps-s3.sh"
            );
            eprintln!("\n*** S3 TESTS SKIPPED: no Garage binary; run .ci/deps-s3.sh (cargo install garage) ***\n");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("cowvol-garage-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("garage temp dir");
        let (rpc, s3) = (free_port(), free_port());
        let secret: String = blake3::hash(dir.to_string_lossy().as_bytes()).to_hex().to_string();
        let config = format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
             [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n",
            d = dir.display()
        );
        let conf = dir.join("garage.toml");
        std::fs::write(&conf, config).expect("garage config");
        let log = std::fs::File::create(dir.join("server.log")).expect("garage log");
        let child = std::process::Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .arg("server")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting garage");
        let mut g = Garage {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
            credentials: crate::S3Credentials { access_key_id: String::new(), secret_access_key: String::new() },
            bucket: "cowvol-tests".into(),
        };
        g.set_up(&bin, &conf);
        Some(g)
    }

    /// The layout, key and bucket, through Garage's own command line.
    fn set_up(&mut self, bin: &std::path::Path, conf: &std::path::Path) {
        let cli = |args: &[&str]| -> std::result::Result<String, String> {
            let out =
                std::process::Command::new(bin).arg("-c").arg(conf).args(args).output().map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                Ok(text)
            } else {
                Err(text)
            }
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let node = loop {
            match cli(&["node", "id", "-q"]) {
                Ok(id) => break id.trim().split('@').next().unwrap_or_default().to_string(),
                Err(e) if std::time::Instant::now() > deadline => panic!("garage did not start: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
        };
        let must = |args: &[&str]| cli(args).unwrap_or_else(|e| panic!("garage {args:?}: {e}"));
        must(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        must(&["layout", "apply", "--version", "1"]);
        let key = must(&["key", "create", "cowvol-tests"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name:?} in {key}"))
        };
        self.credentials =
            crate::S3Credentials { access_key_id: field("Key ID:"), secret_access_key: field("Secret key:") };
        must(&["bucket", "create", &self.bucket]);
        must(&["bucket", "allow", "--read", "--write", "--owner", &self.bucket, "--key", "cowvol-tests"]);
    }

    /// A target on the test bucket under `prefix`.
    pub fn target(&self, prefix: &str) -> crate::S3Target {
        let location = format!("{}/{prefix}?endpoint={}&region=garage", self.bucket, self.endpoint);
        crate::S3Target::open(&location, self.credentials.clone()).expect("S3 target")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
