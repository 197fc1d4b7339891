//! Parsing and formatting of sizes, durations and times, and aligned tables.

use std::io::{self, Write};
use std::time::Duration;

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Parses a byte count: `512`, `64K`, `64KiB`, `10G`, `1.5T` (binary multiples,
/// case-insensitive; `B`, `iB` and `i` suffixes optional). Rejects results
/// that are not a whole number of bytes or do not fit in 64 bits.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size (use a number with an optional binary suffix: 512, 64K, 10G, 1T)");
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let num: String = num.chars().filter(|&c| c != '_').collect();
    let mut unit = suffix.trim().to_ascii_lowercase();
    if unit.ends_with('b') {
        unit.pop();
    }
    if unit.len() == 2 && unit.ends_with('i') {
        unit.pop();
    }
    let shift = match unit.as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return Err(bad()),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num.as_str(), ""),
    };
    if int.is_empty() && frac.is_empty() || frac.len() > 18 {
        return Err(bad());
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
    let frac_val: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
    let denom = 10u128.pow(frac.len() as u32);
    let mult = 1u128 << shift;
    let whole = int.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))?;
    let part = frac_val * mult;
    if !part.is_multiple_of(denom) {
        return Err(format!("{s:?} is not a whole number of bytes"));
    }
    u64::try_from(whole + part / denom).map_err(|_| format!("{s:?} is too large"))
}

/// `4 KiB`, `1 GiB`, `1.50 GiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    let mut unit = 0;
    let mut div = 1u64;
    while unit + 1 < UNITS.len() && n >= div << 10 {
        div <<= 10;
        unit += 1;
    }
    if n.is_multiple_of(div) {
        format!("{} {}", n / div, UNITS[unit])
    } else {
        format!("{:.2} {}", n as f64 / div as f64, UNITS[unit])
    }
}

/// `850 µs`, `12.3 ms`, `1.24 s`.
pub fn duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us} µs")
    } else if us < 10_000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Bytes per second over `d`, as `412 MiB/s`.
pub fn rate(n: u64, d: Duration) -> String {
    let secs = d.as_secs_f64().max(1e-9);
    let per = n as f64 / secs;
    let mut unit = 0;
    let mut v = per;
    while unit + 1 < UNITS.len() && v >= 1024.0 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}/s", UNITS[unit])
    } else {
        format!("{v:.0} {}/s", UNITS[unit])
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn timestamp(secs: u64) -> String {
    let t = cowvol::UtcTime::from_unix(secs);
    format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC", t.year, t.month, t.day, t.hour, t.minute, t.second)
}

/// True when every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    for c in &mut chunks {
        if u128::from_ne_bytes(c.try_into().expect("16 bytes")) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table printed with aligned columns and an upper-case header.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(cols: &[(&'static str, Align)]) -> Table {
        Table {
            headers: cols.iter().map(|c| c.0).collect(),
            align: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// Prints the table; an empty one prints `empty` instead.
    pub fn print(&self, out: &mut dyn Write, empty: &str) -> io::Result<()> {
        if self.rows.is_empty() {
            return writeln!(out, "{empty}");
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        self.line(out, &header, &widths)?;
        for r in &self.rows {
            self.line(out, r, &widths)?;
        }
        Ok(())
    }

    fn line(&self, out: &mut dyn Write, cells: &[String], widths: &[usize]) -> io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(width(c));
            let last = i + 1 == cells.len();
            if i > 0 {
                s.push_str("  ");
            }
            match self.align[i] {
                Align::Right => {
                    s.extend(std::iter::repeat_n(' ', pad));
                    s.push_str(c);
                }
                Align::Left => {
                    s.push_str(c);
                    if !last {
                        s.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
        }
        writeln!(out, "{}", s.trim_end())
    }
}

/// Prints `key: value` lines with the values aligned.
pub fn key_values(out: &mut dyn Write, rows: &[(&str, String)]) -> io::Result<()> {
    let w = rows.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<w$}  {v}", k = format!("{k}:"), w = w + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("7B"), Ok(7));
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("16E").is_err());
        assert!(parse_size("99999999999999999999999").is_err());
    }

    #[test]
    fn sizes_format() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(3 << 29), "1.50 GiB");
    }

    #[test]
    fn times_format() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(duration(Duration::from_micros(850)), "850 µs");
        assert_eq!(duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(duration(Duration::from_millis(1_240)), "1.24 s");
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4099]));
        let mut b = [0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[17] = 1;
        assert!(!is_zero(&b));
    }
}
