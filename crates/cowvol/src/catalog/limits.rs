//! Limits on the text the catalog stores, checked once here for every
//! operation that creates a catalog record (volume, fork, volume from a
//! snapshot or template, snapshot, two-step and group snapshot, restore's
//! safety snapshot, template, policy snapshot).
//!
//! They bound every record: a snapshot or template at every limit encodes
//! to about 26 KB, far below the smallest WAL batch (about 1 MiB), so no
//! single object can be refused by the log after passing here. They do not
//! bound the catalog, whose size grows with the number of objects; recovery
//! reads a catalog of any size that lies inside the data file, so whatever
//! a checkpoint writes opens again.
//!
//! Characters: names, owners and label keys are identifiers that end up in
//! listings, logs and shell pipelines, so they may not hold control
//! characters (C0, DEL, C1: NUL, CR and LF included), line or paragraph
//! separators (U+2028, U+2029) nor bidirectional formatting characters
//! (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), which can
//! make one name display as another. Label values are one-line text: no
//! control characters. Descriptions are free text and may also hold tab and
//! line feed (LF); bidirectional characters stay allowed in both, since
//! right-to-left text needs them.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Longest name of a volume, snapshot or template, in bytes (UTF-8). Names
/// are at least one byte.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest owner, in bytes; empty means none.
pub const MAX_OWNER_BYTES: usize = 255;
/// Longest description of a snapshot or template, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most labels one snapshot or template may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes; keys are at least one byte.
pub const MAX_LABEL_KEY_BYTES: usize = 63;
/// Longest label value, in bytes; values may be empty.
pub const MAX_LABEL_VALUE_BYTES: usize = 255;
/// Longest schedule name, in bytes: short enough that the names of the
/// snapshots it takes (the schedule's name, a local time stamp and a
/// collision suffix) stay within [`MAX_NAME_BYTES`].
pub const MAX_SCHEDULE_NAME_BYTES: usize = 63;

/// Longest backup target URL or failure reason a snapshot's backup record
/// keeps, in bytes; a longer reason is cut at a character boundary.
pub const MAX_BACKUP_TEXT_BYTES: usize = 1024;

/// What a character may be used for.
#[derive(Clone, Copy, PartialEq)]
enum Text {
    /// Names, owners, label keys.
    Identifier,
    /// Label values.
    Line,
    /// Descriptions.
    Free,
}

impl Text {
    fn allows(self, c: char) -> bool {
        match self {
            Text::Identifier => !c.is_control() && !is_separator_or_bidi(c),
            Text::Line => !c.is_control(),
            Text::Free => !c.is_control() || c == '\t' || c == '\n',
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Text::Identifier => {
                "control characters, line or paragraph separators and bidirectional formatting characters"
            }
            Text::Line => "control characters",
            Text::Free => "control characters other than tab and line feed",
        }
    }
}

fn is_separator_or_bidi(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Checks one field: `field` names it in the error ("snapshot name").
fn check(field: &str, value: &str, min: usize, max: usize, text: Text) -> Result<()> {
    if value.len() < min || value.len() > max {
        let shown: String = value.chars().take(40).collect();
        let more = if shown.len() < value.len() { "..." } else { "" };
        return Err(Error::invalid(format!(
            "{field} {shown:?}{more} is {} bytes; it must be {min} to {max} bytes",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|&c| !text.allows(c)) {
        return Err(Error::invalid(format!(
            "{field} {value:?} contains {c:?} (U+{:04X}); it may not contain {}",
            c as u32,
            text.rule()
        )));
    }
    Ok(())
}

/// A volume, snapshot or template name (`kind` is which).
pub(crate) fn name(kind: &str, name: &str) -> Result<()> {
    check(&format!("{kind} name"), name, 1, MAX_NAME_BYTES, Text::Identifier)
}

/// A schedule name.
pub(crate) fn schedule_name(name: &str) -> Result<()> {
    check("schedule name", name, 1, MAX_SCHEDULE_NAME_BYTES, Text::Identifier)
}

/// An owner; empty is allowed and means none (or inherited).
pub(crate) fn owner(kind: &str, owner: &str) -> Result<()> {
    check(&format!("{kind} owner"), owner, 0, MAX_OWNER_BYTES, Text::Identifier)
}

/// Volume names the engine keeps for its own hidden volumes (a receive in
/// progress stages its data in one); users cannot create them and listings
/// leave them out.
pub(crate) const RESERVED_VOLUME_PREFIX: &str = ".cowvol-";

/// Whether a volume name is one of the engine's hidden volumes.
pub(crate) fn is_reserved_volume(name: &str) -> bool {
    name.starts_with(RESERVED_VOLUME_PREFIX)
}

/// The fields of a new volume.
pub(crate) fn volume(name: &str, owner: &str) -> Result<()> {
    self::name("volume", name)?;
    if is_reserved_volume(name) {
        return Err(Error::invalid(format!(
            "volume name {name:?} starts with {RESERVED_VOLUME_PREFIX:?}, which cowvol keeps for its own volumes"
        )));
    }
    self::owner("volume", owner)
}

/// The fields of a new snapshot or template (`kind` is which).
pub(crate) fn described(
    kind: &str,
    name: &str,
    description: &str,
    owner: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    self::name(kind, name)?;
    check(&format!("{kind} description"), description, 0, MAX_DESCRIPTION_BYTES, Text::Free)?;
    self::owner(kind, owner)?;
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(format!(
            "{kind} labels: {} labels given; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    for (k, v) in labels {
        check(&format!("{kind} label key"), k, 1, MAX_LABEL_KEY_BYTES, Text::Identifier)?;
        check(&format!("{kind} label {k:?} value"), v, 0, MAX_LABEL_VALUE_BYTES, Text::Line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_classes() {
        for c in ['\0', '\r', '\n', '\t', '\u{7f}', '\u{85}', '\u{9f}', '\u{2028}', '\u{2029}', '\u{202E}', '\u{2066}']
        {
            assert!(name("volume", &format!("a{c}b")).is_err(), "{c:?}");
        }
        assert!(name("volume", "données-ünï-名前 with spaces").is_ok());
        assert!(described("snapshot", "s", "line one\n\tline two \u{202E}rtl", "", &BTreeMap::new()).is_ok());
        assert!(described("snapshot", "s", "a\rb", "", &BTreeMap::new()).is_err());
        let labels = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
        assert!(described("snapshot", "s", "", "", &labels("k", "a\nb")).is_err());
        assert!(described("snapshot", "s", "", "", &labels("k", "\u{202E}ok")).is_ok());
        assert!(described("snapshot", "s", "", "", &labels("k\u{202E}", "v")).is_err());
        assert!(described("snapshot", "s", "", "", &labels("", "v")).is_err());
    }

    #[test]
    fn errors_name_the_field_and_stay_short() {
        let e = described("template", "t", &"x".repeat(500_000), "", &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("template description") && e.contains("500000 bytes") && e.len() < 200, "{e}");
        let e = owner("volume", "a\u{0}b").unwrap_err().to_string();
        assert!(e.contains("volume owner") && e.contains("U+0000"), "{e}");
    }
}
