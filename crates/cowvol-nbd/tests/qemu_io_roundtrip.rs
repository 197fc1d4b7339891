//! qemu-io writes, reads with pattern checks, aio, flush, discard and
//! write -z over both transports, and the data lands in the volume.

mod common;
use common::{qemu_io, TestServer, VOLUME};

#[test]
fn qemu_io_reads_back_what_it_wrote_over_unix_and_tcp() {
    let s = TestServer::start(64 << 20);
    for (i, uri) in s.uris(VOLUME).iter().enumerate() {
        let base = (i as u64) << 24;
        let p = 0x40 + i as u8;
        qemu_io(
            uri,
            &[
                &format!("write -P {p} {base} 1M"),
                &format!("read -P {p} {base} 1M"),
                &format!("read -P 0 {} 1M", base + (1 << 20)),
                &format!("aio_write -P 0x5a {} 64k", base + (2 << 20)),
                &format!("aio_write -P 0x5b {} 64k", base + (3 << 20)),
                "aio_flush",
                &format!("read -P 0x5a {} 64k", base + (2 << 20)),
                &format!("read -P 0x5b {} 64k", base + (3 << 20)),
                // Unaligned I/O: the minimum block size is 1.
                &format!("write -P 0x77 {} 100", base + (5 << 20) + 4095),
                &format!("read -P 0x77 {} 100", base + (5 << 20) + 4095),
                &format!("discard {base} 64k"),
                &format!("read -P 0 {base} 64k"),
                &format!("write -z {} 64k", base + (2 << 20)),
                &format!("read -P 0 {} 64k", base + (2 << 20)),
                &format!("write -z -u {} 64k", base + (3 << 20)),
                &format!("read -P 0 {} 64k", base + (3 << 20)),
                "flush",
            ],
        );
        assert_eq!(s.read(base + (64 << 10), 4096), vec![p; 4096]);
        assert_eq!(s.read(base + (5 << 20) + 4095, 100), vec![0x77; 100]);
        assert_eq!(s.read(base, 4096), vec![0; 4096]);
    }
    let out = qemu_io(&s.unix_uri(VOLUME), &["read -v 16842752 16"]);
    assert!(out.contains("01010000:  41 41 41 41"), "read -v shows the bytes written over tcp:\n{out}");
}
