//! nbdinfo describes the export (flags, block sizes, --map holes, --list)
//! and nbdcopy copies in and out of it.

mod common;
use common::{run, tool, TestServer, VOLUME};
use std::process::Command;

#[test]
fn nbdinfo_and_nbdcopy_see_flags_holes_and_data() {
    let s = TestServer::start(16 << 20);
    let v = s.store().open_volume(s.volume).expect("open");
    v.write_at(&vec![0x33; 1 << 20], 4 << 20).expect("write");
    drop(v);
    let nbdinfo = tool("nbdinfo", "libnbd-bin");
    for uri in s.uris(VOLUME) {
        let info = String::from_utf8_lossy(&run(Command::new(&nbdinfo).arg(&uri)).stdout).into_owned();
        for want in [
            "export-size: 16777216",
            "base:allocation",
            "can_multi_conn: true",
            "can_fua: true",
            "can_trim: true",
            "can_zero: true",
            "is_read_only: false",
            "block_size_minimum: 1",
            "block_size_preferred: 4096",
            "block_size_maximum: 33554432",
            "using structured packets",
        ] {
            assert!(info.contains(want), "nbdinfo lacks {want:?}:\n{info}");
        }
        let map = String::from_utf8_lossy(&run(Command::new(&nbdinfo).arg("--map").arg(&uri)).stdout).into_owned();
        let rows: Vec<Vec<&str>> = map.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0][..3], ["0", "4194304", "3"], "{map}");
        assert_eq!(rows[1][..3], ["4194304", "1048576", "0"], "{map}");
        assert_eq!(rows[2][..3], ["5242880", "11534336", "3"], "{map}");
    }
    let list = run(Command::new(&nbdinfo).arg("--list").arg(s.unix_uri("")));
    assert!(String::from_utf8_lossy(&list.stdout).contains("export=\"disk\""));

    let nbdcopy = tool("nbdcopy", "libnbd-bin");
    let out = s.dir.path().join("out.raw");
    run(Command::new(&nbdcopy).arg(s.tcp_uri(VOLUME)).arg(&out));
    let copied = std::fs::read(&out).expect("read copy");
    assert_eq!(copied.len(), 16 << 20);
    assert_eq!(copied[4 << 20..5 << 20], vec![0x33; 1 << 20][..]);
    assert!(copied[..4 << 20].iter().all(|&b| b == 0));

    let src = s.dir.path().join("in.raw");
    std::fs::write(&src, vec![0x44; 16 << 20]).expect("write source");
    run(Command::new(&nbdcopy).arg(&src).arg(s.unix_uri(VOLUME)));
    assert_eq!(s.read(15 << 20, 4096), vec![0x44; 4096]);
}
