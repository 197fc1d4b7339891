//! `Volume::cursor()` adapts a volume to `std::io::{Read, Write, Seek}`:
//! data copied in with `std::io::copy` reads back after a seek, reads stop
//! at the end of the volume, writes past it fail, and `flush` is durable.

use cowvol::testing::{LossMode, SimDir};
use cowvol::*;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

mod common;
use common::*;

const BS: u64 = 4096;
const SIZE: u64 = 256 * BS + 333;

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
}

fn setup() -> (tempfile::TempDir, Store, Volume) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", SIZE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    (dir, store, vol)
}

#[test]
fn copy_in_seek_and_read_back() {
    let (_dir, store, vol) = setup();
    let data = pattern(300_001);
    let start = 1000u64;
    let mut cur = vol.cursor();
    assert_eq!(cur.stream_position().unwrap(), 0, "a cursor starts at byte 0");
    assert_eq!(cur.seek(SeekFrom::Start(start)).unwrap(), start);
    let copied = io::copy(&mut io::Cursor::new(&data), &mut cur).unwrap();
    assert_eq!(copied, data.len() as u64);
    assert_eq!(cur.stream_position().unwrap(), start + data.len() as u64);

    // Back to the start of the data and read it all.
    cur.seek(SeekFrom::Start(start)).unwrap();
    let mut back = vec![0u8; data.len()];
    cur.read_exact(&mut back).unwrap();
    assert!(back == data, "data read through the cursor differs from what was copied in");

    // The same bytes through the plain API, and zeroes around them.
    let mut direct = vec![0u8; data.len() + 2000];
    vol.read_at(&mut direct, start - 1000).unwrap();
    assert!(direct[..1000].iter().all(|&b| b == 0));
    assert!(direct[1000..1000 + data.len()] == data[..]);
    assert!(direct[1000 + data.len()..].iter().all(|&b| b == 0));

    // Relative seeks land where expected.
    cur.seek(SeekFrom::Start(start + 5000)).unwrap();
    cur.seek(SeekFrom::Current(-17)).unwrap();
    let mut few = [0u8; 64];
    cur.read_exact(&mut few).unwrap();
    assert_eq!(few[..], data[5000 - 17..5000 - 17 + 64]);
    assert_eq!(cur.stream_position().unwrap(), start + 5000 - 17 + 64);

    // Overwrite a middle piece through the cursor.
    cur.seek(SeekFrom::Start(start + 4090)).unwrap();
    cur.write_all(b"OVERWRITTEN").unwrap();
    cur.flush().unwrap();
    let mut want = data.clone();
    want[4090..4101].copy_from_slice(b"OVERWRITTEN");
    cur.seek(SeekFrom::Start(start)).unwrap();
    let mut back = vec![0u8; data.len()];
    cur.read_exact(&mut back).unwrap();
    assert!(back == want);
    assert_clean(&store);
}

#[test]
fn read_at_the_end_returns_zero() {
    let (_dir, store, vol) = setup();
    vol.write_at(b"tail!", SIZE - 5).unwrap();
    let mut cur = vol.cursor();

    assert_eq!(cur.seek(SeekFrom::End(0)).unwrap(), SIZE);
    let mut buf = [0u8; 100];
    assert_eq!(cur.read(&mut buf).unwrap(), 0);

    // A read straddling the end is short, then 0.
    cur.seek(SeekFrom::End(-5)).unwrap();
    assert_eq!(cur.read(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"tail!");
    assert_eq!(cur.read(&mut buf).unwrap(), 0);

    // read_to_end stops at the end of the volume.
    cur.seek(SeekFrom::End(-10)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(cur.read_to_end(&mut rest).unwrap(), 10);
    assert_eq!(&rest[5..], b"tail!");
    assert!(rest[..5].iter().all(|&b| b == 0));

    // Reading the whole volume yields exactly its size.
    cur.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    assert_eq!(cur.read_to_end(&mut all).unwrap() as u64, SIZE);
    assert_clean(&store);
}

/// Like `std::fs::File` and `std::io::Cursor`: seeking beyond the end is
/// allowed, and a read there is end-of-file (0 bytes), not an error.
#[test]
fn read_after_seeking_beyond_the_end_returns_zero() {
    let (_dir, store, vol) = setup();
    let mut cur = vol.cursor();
    assert_eq!(cur.seek(SeekFrom::End(1000)).unwrap(), SIZE + 1000);
    let mut buf = [0u8; 100];
    assert_eq!(cur.read(&mut buf).unwrap(), 0);
    let mut rest = Vec::new();
    assert_eq!(cur.read_to_end(&mut rest).unwrap(), 0);
    assert_clean(&store);
}

#[test]
fn write_past_the_end_errors() {
    let (_dir, store, vol) = setup();
    let mut cur = vol.cursor();

    cur.seek(SeekFrom::End(0)).unwrap();
    assert!(cur.write(b"x").is_err(), "a write at the end must fail");
    assert!(cur.write_all(b"x").is_err());
    cur.seek(SeekFrom::End(50)).unwrap();
    assert!(cur.write(b"x").is_err(), "a write beyond the end must fail");

    // write_all across the end fails, after filling up to the end.
    cur.seek(SeekFrom::End(-10)).unwrap();
    let err = cur.write_all(&[0xEE; 20]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WriteZero, "{err}");
    let mut tail = [0u8; 10];
    vol.read_at(&mut tail, SIZE - 10).unwrap();
    assert_eq!(tail, [0xEE; 10]);

    // io::copy of more than fits fails too.
    cur.seek(SeekFrom::Start(SIZE - 3000)).unwrap();
    assert!(io::copy(&mut io::Cursor::new(pattern(10_000)), &mut cur).is_err());

    // An empty write at the end is not an error.
    cur.seek(SeekFrom::End(0)).unwrap();
    assert_eq!(cur.write(&[]).unwrap(), 0);
    assert_clean(&store);
}

#[test]
fn seek_before_the_start_is_invalid_input() {
    let (_dir, store, vol) = setup();
    let mut cur = vol.cursor();
    cur.seek(SeekFrom::Start(10)).unwrap();
    assert_eq!(cur.seek(SeekFrom::Current(-11)).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    let end = i64::try_from(SIZE).unwrap();
    assert_eq!(cur.seek(SeekFrom::End(-end - 1)).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    // The failed seeks did not move the cursor.
    assert_eq!(cur.stream_position().unwrap(), 10);
    assert_eq!(cur.seek(SeekFrom::End(-end)).unwrap(), 0);
    assert_clean(&store);
}

#[test]
fn cursor_errors_map_to_io_error_kinds() {
    let (_dir, store, vol) = setup();
    let id = vol.volume_id().unwrap();
    let ro = store.open_volume_with(id, OpenMode::ReadOnly).unwrap();
    let err = ro.cursor().write(b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(matches!(err.get_ref().and_then(|e| e.downcast_ref::<Error>()), Some(Error::ReadOnly { .. })));
    drop(ro);
    drop(vol);
    store.delete_volume(id).unwrap();
    assert_clean(&store);
}

#[test]
fn cursor_flush_is_durable() {
    let opts = || StoreOptions { background_checkpoints: false, ..Default::default() };
    let disk = SimDir::new();
    let store = Store::open_in(Arc::new(disk.clone()), opts()).unwrap();
    let info = store.create_volume(VolumeOptions::new("v", SIZE)).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let data = pattern(50_000);
    let mut cur = vol.cursor();
    cur.seek(SeekFrom::Start(777)).unwrap();
    io::copy(&mut io::Cursor::new(&data), &mut cur).unwrap();
    cur.flush().unwrap();

    let after = disk.crash(LossMode::DropAll, 3);
    drop((cur, vol, store));
    let store = Store::open_in(Arc::new(after), opts()).unwrap();
    let vol = store.open_volume(info.id).unwrap();
    let mut back = vec![0u8; data.len()];
    let mut cur = vol.cursor();
    cur.seek(SeekFrom::Start(777)).unwrap();
    cur.read_exact(&mut back).unwrap();
    assert!(back == data, "flushed cursor writes were lost in a power cut");
    assert_clean(&store);
}
