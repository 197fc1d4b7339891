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

/// Parses a duration in whole seconds: `90`, `90s`, `15m`, `1h`, `7d`, `2w`,
/// or a sequence such as `1h30m` (case-insensitive). A plain number is seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration (use e.g. 90s, 15m, 1h, 7d or 1h30m; a plain number is seconds)");
    let t = s.trim().to_ascii_lowercase();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let mut total: u64 = 0;
    let mut rest = t.as_str();
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = rest[digits..].chars().next().ok_or_else(bad)?;
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        total = n.checked_mul(mult).and_then(|x| total.checked_add(x)).ok_or_else(|| format!("{s:?} is too long"))?;
        rest = &rest[digits + 1..];
    }
    Ok(total)
}

/// Whole seconds as the largest units that divide them: `90s` → `1m30s`,
/// `86400` → `1d`, `0` → `0s`.
pub fn secs(n: u64) -> String {
    if n == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut left = n;
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if left >= size {
            out.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    out
}

/// Parses a `KEY=VALUE` label (the key must not be empty).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not a label (use KEY=VALUE)")),
    }
}

/// Labels as `k=v, k2=v2`, or `-` when there are none.
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// The text, or `-` when it is empty.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
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
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1H"), Ok(3600));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        for bad in ["", "h", "1x", "1.5h", "-1", "1h30", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(secs(0), "0s");
        assert_eq!(secs(90), "1m30s");
        assert_eq!(secs(86_400), "1d");
        assert_eq!(secs(90_061), "1d1h1m1s");
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_label("note=a=b"), Ok(("note".into(), "a=b".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
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
