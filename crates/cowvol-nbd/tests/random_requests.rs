//! Random requests and random bytes, after a valid handshake and in place
//! of one: the server answers or closes, never panics, keeps serving, and
//! the store stays consistent (the harness checks it at the end).

mod common;
use common::raw::{self, Client};
use common::{TestServer, VOLUME};
use std::io::Read;
use std::time::Duration;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Reads whatever the server sends until it goes quiet or closes.
fn drain(c: &mut Client) {
    let mut buf = [0u8; 65536];
    while let Ok(n) = c.s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// `NBD_OPT_GO` on the test volume, asked again while the server still
/// holds the previous client's read-write handle: that client hung up, but
/// the server may still be finishing its last request (a large write on a
/// busy machine), and the volume admits one writer.
fn go_when_free(c: &mut Client) {
    for _ in 0..100 {
        match c.try_go(VOLUME) {
            Ok(_) => return,
            Err((_, why)) if why.contains("busy") => std::thread::sleep(Duration::from_millis(100)),
            Err((kind, why)) => panic!("NBD_OPT_GO failed with reply {kind:#x}: {why}"),
        }
    }
    panic!("the volume stayed busy for 10 s after the previous client hung up");
}

#[test]
fn random_requests_never_hurt_the_server() {
    let s = TestServer::start(4 << 20);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..150u64 {
        let sock = std::os::unix::net::UnixStream::connect(&s.sock).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let ctl = sock.try_clone().expect("clone");
        let mut c = Client { s: Box::new(sock) };
        c.read_n(18);
        if i.is_multiple_of(5) {
            // Garbage in place of the handshake.
            let n = 1 + (rng.next() % 300) as usize;
            let junk = rng.bytes(n);
            let _ = std::io::Write::write_all(&mut c.s, &junk);
        } else {
            c.client_flags();
            go_when_free(&mut c);
            for _ in 0..4 {
                let cmd = (rng.next() % 10) as u16;
                let flags = if rng.next().is_multiple_of(3) { rng.next() as u16 } else { 0 };
                let offset = match rng.next() % 3 {
                    0 => rng.next(),
                    _ => rng.next() % (5 << 20),
                };
                let len = match rng.next() % 3 {
                    0 => rng.next() as u32,
                    _ => (rng.next() % (1 << 20)) as u32,
                };
                let mut b = Vec::new();
                b.extend_from_slice(&raw::REQUEST_MAGIC.to_be_bytes());
                b.extend_from_slice(&flags.to_be_bytes());
                b.extend_from_slice(&cmd.to_be_bytes());
                b.extend_from_slice(&i.to_be_bytes());
                b.extend_from_slice(&offset.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                if cmd == raw::CMD_WRITE && len <= 1 << 20 {
                    b.extend_from_slice(&rng.bytes(len as usize));
                }
                // The server may have closed already (an oversized write, say).
                let _ = std::io::Write::write_all(&mut c.s, &b);
            }
        }
        // Take what the server answers until it closes or goes quiet, then hang up.
        ctl.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        drain(&mut c);
    }
    // Still serving, and a well-behaved client sees consistent data.
    let (mut c, _) = Client::attach_unix(&s.sock, VOLUME);
    assert_eq!(c.write(1, 0, &[5; 4096]), 0);
    assert_eq!(c.read(2, 0, 4096), Ok(vec![5; 4096]));
    c.disconnect();
}
