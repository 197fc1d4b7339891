//! A real process crash: the test runs its own binary again as a child that
//! writes blocks encoding (block, generation) to a store in a real directory,
//! flushes every few writes and prints `ACK <block> <generation>` for each
//! write a returned flush covered. The parent kills the child with SIGKILL
//! after a random number of acknowledgements, reopens the store and checks
//! that every block holds an intact generation (never garbage) no older than
//! its last acknowledged one, and that `check()` is clean. Several rounds run
//! on the same store, the generations continuing.
//!
//! `COWVOL_KILL_SEED=N` replays a seed.

use cowvol::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BS: usize = 4096;
const BLOCKS: u64 = 96;
const ROUNDS: u64 = 5;
/// Generations of round `r` are `r * GEN_SPAN + 1 ..`.
const GEN_SPAN: u64 = 1 << 32;
const TEST_NAME: &str = "writer_killed_with_sigkill_recovers";

fn opts() -> StoreOptions {
    // Small enough that the child checkpoints in the background now and then.
    StoreOptions { checkpoint_wal_bytes: 256 << 10, ..Default::default() }
}

/// The contents of block `b` at generation `g`.
fn block(b: u64, g: u64) -> Vec<u8> {
    let mut v = vec![0u8; BS];
    v[..8].copy_from_slice(&b.to_le_bytes());
    v[8..16].copy_from_slice(&g.to_le_bytes());
    let mut x = b.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ g;
    for c in v[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    v
}

/// The generation a block holds (0 for never written), or `None` for garbage.
fn decode(v: &[u8], b: u64) -> Option<u64> {
    if v.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let g = u64::from_le_bytes(v[8..16].try_into().unwrap());
    (u64::from_le_bytes(v[..8].try_into().unwrap()) == b && block(b, g) == v).then_some(g)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The child: writes and acknowledges until killed (or for 30 s at most, in
/// case the parent is gone).
fn child(dir: &str, base: u64, seed: u64) {
    let store = Store::open(dir, opts()).expect("child: open");
    let info = store.volume_by_name("kill").expect("child: volume");
    let vol = store.open_volume(info.id).expect("child: open volume");
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    let mut rng = Rng(seed | 1);
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut gen = base;
    let start = Instant::now();
    let mut until_flush = 1 + rng.below(4);
    while start.elapsed() < Duration::from_secs(30) && gen < base + GEN_SPAN - 10 {
        let b = rng.below(BLOCKS);
        let n = (1 + rng.below(3)).min(BLOCKS - b);
        let buf: Vec<u8> = (b..b + n).flat_map(|x| block(x, gen)).collect();
        vol.write_at(&buf, b * BS as u64).expect("child: write");
        pending.extend((b..b + n).map(|x| (x, gen)));
        gen += 1;
        until_flush -= 1;
        if until_flush == 0 {
            vol.flush().expect("child: flush");
            for (x, g) in pending.drain(..) {
                writeln!(out, "ACK {x} {g}").unwrap();
            }
            out.flush().unwrap();
            until_flush = 1 + rng.below(4);
        }
    }
}

#[test]
fn writer_killed_with_sigkill_recovers() {
    if let Ok(dir) = std::env::var("COWVOL_KILL_CHILD") {
        let base = std::env::var("COWVOL_KILL_BASE").unwrap().parse().unwrap();
        let seed = std::env::var("COWVOL_KILL_SEED").unwrap().parse().unwrap();
        child(&dir, base, seed);
        return;
    }
    let seed: u64 = std::env::var("COWVOL_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("kill seed {seed} (COWVOL_KILL_SEED={seed} replays the kill points)");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let store = Store::open(&dir, opts()).unwrap();
        store.create_volume(VolumeOptions::new("kill", BLOCKS * BS as u64)).unwrap();
        store.close().unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    // The lowest generation each block may show from now on.
    let mut floor = vec![0u64; BLOCKS as usize];
    let mut total_acks = 0u64;
    for round in 0..ROUNDS {
        let base = round * GEN_SPAN + 1;
        let kill_after = 1 + rng.below(400);
        let stderr_path = tmp.path().join(format!("child-{round}.stderr"));
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env("COWVOL_KILL_CHILD", &dir)
            .env("COWVOL_KILL_BASE", base.to_string())
            .env("COWVOL_KILL_SEED", (seed ^ round.wrapping_mul(0x1234_5679)).to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = vec![0u64; BLOCKS as usize];
        let mut acks = 0u64;
        let record = |line: &str, acked: &mut Vec<u64>| -> bool {
            let Some(rest) = line.strip_prefix("ACK ") else { return false };
            let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
            let (b, g) = (it.next().unwrap(), it.next().unwrap());
            acked[b as usize] = acked[b as usize].max(g);
            true
        };
        let mut killed = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if record(&line, &mut acked) {
                acks += 1;
                if acks >= kill_after {
                    // Let it run on a little sometimes, so the kill lands anywhere.
                    if rng.below(2) == 0 {
                        std::thread::sleep(Duration::from_micros(rng.below(5_000)));
                    }
                    child.kill().unwrap();
                    killed = true;
                    break;
                }
            }
        }
        let status = child.wait().unwrap();
        // Acknowledgements the child printed before it died count too.
        for line in lines {
            if record(&line.unwrap(), &mut acked) {
                acks += 1;
            }
        }
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        assert!(killed, "round {round}: the child ended on its own ({status}) after {acks} acks:\n{stderr}");
        total_acks += acks;

        let store = Store::open(&dir, opts()).unwrap_or_else(|e| panic!("round {round}: reopen after kill: {e}"));
        let report = store.check().unwrap();
        assert!(report.is_clean(), "round {round}: check: {:?}", report.problems);
        let info = store.volume_by_name("kill").unwrap();
        let vol = store.open_volume(info.id).unwrap();
        let mut buf = vec![0u8; BLOCKS as usize * BS];
        vol.read_at(&mut buf, 0).unwrap();
        let mut newer = 0;
        for b in 0..BLOCKS {
            let v = &buf[b as usize * BS..(b as usize + 1) * BS];
            let g = decode(v, b).unwrap_or_else(|| panic!("round {round}: block {b} holds garbage"));
            let want = floor[b as usize].max(acked[b as usize]);
            assert!(g >= want, "round {round}: block {b} shows generation {g}, acknowledged {want}");
            assert!(g < base + GEN_SPAN, "round {round}: block {b} shows generation {g} that was never written");
            if g > acked[b as usize] && acked[b as usize] > 0 {
                newer += 1;
            }
            floor[b as usize] = g;
        }
        println!(
            "round {round}: killed after {acks} acks (asked {kill_after}), {newer} blocks newer than acked, reopened clean"
        );
        drop(vol);
        store.close().unwrap();
    }
    println!("{ROUNDS} kill rounds, {total_acks} acknowledged writes checked");
}
