//! qemu-img convert into an export, compare against the source, and
//! `map --output=json` shows the holes the server reports.

mod common;
use common::{run, tool, TestServer, VOLUME};
use std::process::Command;

#[test]
fn qemu_img_converts_compares_and_maps_holes() {
    let s = TestServer::start(32 << 20);
    let img = s.dir.path().join("src.raw");
    let mut data = vec![0u8; 32 << 20];
    data[..1 << 20].fill(0xaa);
    data[(8 << 20)..(9 << 20)].fill(0xbb);
    std::fs::write(&img, &data).expect("write source");
    let qemu_img = tool("qemu-img", "qemu-utils");
    for uri in s.uris(VOLUME) {
        run(Command::new(&qemu_img).args(["convert", "-n", "-f", "raw", "-O", "raw"]).arg(&img).arg(&uri));
        run(Command::new(&qemu_img).args(["compare", "-f", "raw", "-F", "raw"]).arg(&img).arg(&uri));
        let out = run(Command::new(&qemu_img).args(["map", "--output=json", "-f", "raw"]).arg(&uri));
        let map = String::from_utf8_lossy(&out.stdout);
        // Data where the source had data, holes between and after.
        assert!(
            map.contains(r#""start": 0, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true"#),
            "{map}"
        );
        assert!(
            map.contains(
                r#""start": 1048576, "length": 7340032, "depth": 0, "present": true, "zero": true, "data": false"#
            ),
            "{map}"
        );
        assert!(
            map.contains(
                r#""start": 8388608, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true"#
            ),
            "{map}"
        );
        assert!(
            map.contains(
                r#""start": 9437184, "length": 24117248, "depth": 0, "present": true, "zero": true, "data": false"#
            ),
            "{map}"
        );
    }
    assert_eq!(s.read(8 << 20, 4096), vec![0xbb; 4096]);
}
