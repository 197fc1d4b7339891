//! The JSON the API speaks: request and answer types of their own,
//! converted from and to the engine's types here and nowhere else.

use cowvol::{
    AccessMode, SnapshotInfo, SnapshotKind, SnapshotPolicy, SnapshotStatus, TemplateInfo, VolumeInfo, VolumeOrigin,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Whole numbers on the wire. JSON Schema counts `597.0` as an integer, so
/// the API takes it too; a fraction or a negative number is refused.
mod whole {
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    /// At most i64::MAX: the OpenAPI `int64` format's range.
    fn from_number(n: serde_json::Number) -> Option<u64> {
        let whole = n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.3e18).map(|f| f as u64));
        whole.filter(|&w| w <= i64::MAX as u64)
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        from_number(serde_json::Number::deserialize(d)?)
            .ok_or_else(|| D::Error::custom("expected a whole number from 0 to 9223372036854775807"))
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => from_number(n)
                .map(Some)
                .ok_or_else(|| D::Error::custom("expected a whole number from 0 to 9223372036854775807")),
        }
    }
}

/// A successful answer: `{"success": true, "data": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success<T: ToSchema> {
    /// Always true.
    pub success: bool,
    /// The answer.
    pub data: T,
}

/// Who may write to a volume at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum AccessModeJson {
    /// Read-write-once: one writer at a time.
    #[serde(rename = "RWO")]
    Rwo,
    /// Read-only-many: no writes.
    #[serde(rename = "ROX")]
    Rox,
    /// Read-write-many: any number of writers.
    #[serde(rename = "RWX")]
    Rwx,
}

impl From<AccessMode> for AccessModeJson {
    fn from(m: AccessMode) -> Self {
        match m {
            AccessMode::ReadWriteOnce => AccessModeJson::Rwo,
            AccessMode::ReadOnlyMany => AccessModeJson::Rox,
            AccessMode::ReadWriteMany => AccessModeJson::Rwx,
        }
    }
}

impl From<AccessModeJson> for AccessMode {
    fn from(m: AccessModeJson) -> Self {
        match m {
            AccessModeJson::Rwo => AccessMode::ReadWriteOnce,
            AccessModeJson::Rox => AccessMode::ReadOnlyMany,
            AccessModeJson::Rwx => AccessMode::ReadWriteMany,
        }
    }
}

/// `POST /api/v1/sandboxvolumes`. Every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// Unique among live volumes, 1 to 63 characters, no control
    /// characters; generated when absent.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028-\\u202E\\u2066-\\u2069]+$"
    )]
    pub name: Option<String>,
    /// Logical (thin) size in bytes; the server's default when absent. Must
    /// match the source's size (or be absent) with `snapshot_id`/`template_id`.
    #[schema(minimum = 1, maximum = 1152921504606846976_u64)]
    #[serde(default, deserialize_with = "whole::optional")]
    pub size_bytes: Option<u64>,
    /// RWO (default), ROX or RWX.
    pub access_mode: Option<AccessModeJson>,
    /// Read cache budget as a size string, e.g. "128M".
    #[schema(example = "128M", pattern = "^([0-9]{1,4}[BKMGTbkmgt]?|[0-9]{1,12})$")]
    pub cache_size: Option<String>,
    /// Unflushed bytes after which the volume flushes itself, e.g. "64M".
    #[schema(example = "64M", pattern = "^([0-9]{1,4}[BKMGTbkmgt]?|[0-9]{1,12})$")]
    pub buffer_size: Option<String>,
    /// Start with this snapshot's data (`snap-N`).
    pub snapshot_id: Option<String>,
    /// Start with this template's data (`tmpl-N`).
    pub template_id: Option<String>,
}

/// `POST /api/v1/sandboxvolumes/{id}/fork`. Every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// Name of the fork (rules as for volumes); generated when absent.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028-\\u202E\\u2066-\\u2069]+$"
    )]
    pub name: Option<String>,
    /// The source's access mode when absent.
    pub access_mode: Option<AccessModeJson>,
    /// Fork this snapshot of the source instead of its live state.
    pub snapshot_id: Option<String>,
}

/// A volume.
#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeJson {
    /// `vol-N`.
    pub id: String,
    /// Unique among live volumes.
    pub name: String,
    /// Who created it.
    pub owner: String,
    /// Logical size in bytes.
    pub size_bytes: u64,
    /// RWO, ROX or RWX.
    pub access_mode: AccessModeJson,
    /// Read cache budget in bytes.
    pub cache_size_bytes: u64,
    /// Unflushed bytes after which it flushes itself.
    pub buffer_size_bytes: u64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The volume it was forked from (directly, or through one of its snapshots).
    pub source_volume_id: Option<String>,
    /// The snapshot it was made from.
    pub source_snapshot_id: Option<String>,
    /// The template it was made from.
    pub source_template_id: Option<String>,
    /// Its automatic snapshot policy.
    pub policy: Option<PolicyJson>,
}

impl VolumeJson {
    /// The wire form of a volume.
    pub fn new(v: &VolumeInfo) -> Self {
        let (source_volume_id, source_snapshot_id, source_template_id) = match v.origin {
            Some(VolumeOrigin::Volume(src)) => (Some(src.to_string()), None, None),
            Some(VolumeOrigin::Snapshot(src, snap)) => (Some(src.to_string()), Some(snap.to_string()), None),
            Some(VolumeOrigin::Template(t)) => (None, None, Some(t.to_string())),
            None => (None, None, None),
        };
        VolumeJson {
            id: v.id.to_string(),
            name: v.name.clone(),
            owner: v.owner.clone(),
            size_bytes: v.size_bytes,
            access_mode: v.access_mode.into(),
            cache_size_bytes: v.cache_bytes,
            buffer_size_bytes: v.write_buffer_bytes,
            created_at: rfc3339(v.created_at),
            source_volume_id,
            source_snapshot_id,
            source_template_id,
            policy: v.policy.map(PolicyJson::from),
        }
    }
}

/// `POST /api/v1/sandboxvolumes/{id}/snapshots`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Unique among the volume's snapshots, 1 to 63 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028-\\u202E\\u2066-\\u2069]+$"
    )]
    pub name: String,
    /// Free text: up to 1024 characters; tab and line feed are the only
    /// control characters allowed.
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")]
    pub description: String,
    /// Up to 64 labels; keys 1 to 15 characters (rules as for names),
    /// values up to 63 characters without control characters.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub labels: BTreeMap<String, String>,
}

/// Manual (asked for) or automatic (taken by a policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KindJson {
    /// Asked for.
    Manual,
    /// Taken by a policy; retention may delete it.
    Auto,
}

/// Where a snapshot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusJson {
    /// Registered, not yet captured.
    Creating,
    /// Captured and durable.
    Ready,
    /// Never captured.
    Failed,
}

impl From<SnapshotKind> for KindJson {
    fn from(k: SnapshotKind) -> Self {
        match k {
            SnapshotKind::Manual => KindJson::Manual,
            SnapshotKind::Auto => KindJson::Auto,
        }
    }
}

impl From<KindJson> for SnapshotKind {
    fn from(k: KindJson) -> Self {
        match k {
            KindJson::Manual => SnapshotKind::Manual,
            KindJson::Auto => SnapshotKind::Auto,
        }
    }
}

impl From<SnapshotStatus> for StatusJson {
    fn from(s: SnapshotStatus) -> Self {
        match s {
            SnapshotStatus::Creating => StatusJson::Creating,
            SnapshotStatus::Ready => StatusJson::Ready,
            // The engine may grow states; until the API names them, they
            // show as what they are closest to: not usable.
            _ => StatusJson::Failed,
        }
    }
}

impl From<StatusJson> for SnapshotStatus {
    fn from(s: StatusJson) -> Self {
        match s {
            StatusJson::Creating => SnapshotStatus::Creating,
            StatusJson::Ready => SnapshotStatus::Ready,
            StatusJson::Failed => SnapshotStatus::Failed,
        }
    }
}

/// A snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotJson {
    /// `snap-N`.
    pub id: String,
    /// The volume it was taken of (which may since have been deleted).
    pub volume_id: String,
    /// That volume's name when the snapshot was taken.
    pub volume_name: String,
    /// Unique among the volume's snapshots.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The volume's logical size at that point in time.
    pub size_bytes: u64,
    /// The bytes only this snapshot holds: what deleting it frees.
    pub exclusive_bytes: u64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// manual or auto.
    pub kind: KindJson,
    /// creating, ready or failed.
    pub status: StatusJson,
    /// Who took it.
    pub owner: String,
    /// Free key/value labels.
    pub labels: BTreeMap<String, String>,
    /// A held snapshot cannot be deleted.
    pub held: bool,
}

impl SnapshotJson {
    /// The wire form of a snapshot, with the space it alone holds.
    pub fn new(s: &SnapshotInfo, exclusive_bytes: u64) -> Self {
        SnapshotJson {
            id: s.id.to_string(),
            volume_id: s.volume_id.to_string(),
            volume_name: s.volume_name.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            size_bytes: s.size_bytes,
            exclusive_bytes,
            created_at: rfc3339(s.created_at),
            kind: s.kind.into(),
            status: s.status.into(),
            owner: s.owner.clone(),
            labels: s.labels.clone(),
            held: s.held,
        }
    }
}

/// One page of snapshots.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotPageJson {
    /// This page, newest first.
    pub items: Vec<SnapshotJson>,
    /// How many match in all.
    pub total: u64,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /api/v1/snapshots` and `GET .../snapshots`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SnapshotSearch {
    /// A volume id (`vol-N`) matches that volume's snapshots; anything else
    /// matches snapshot names containing it (case-insensitive).
    pub search: Option<String>,
    /// Only this volume's snapshots (`vol-N`).
    pub volume: Option<String>,
    /// manual or auto.
    pub kind: Option<KindJson>,
    /// creating, ready or failed.
    pub status: Option<StatusJson>,
    /// `key=value`: only snapshots with that label.
    #[param(pattern = "^[^=]+=")]
    pub label: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// From a previous page's `next_cursor`.
    #[param(pattern = "^[0-9]{1,9}$")]
    pub cursor: Option<String>,
}

/// `POST .../snapshots/{sid}/restore`. Every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Snapshot the current state first, in the same atomic step (default false).
    #[serde(default)]
    pub safety_snapshot: bool,
    /// How long to wait for in-flight I/O to drain, 0 to 30000 ms (default 10000).
    #[schema(minimum = 0, maximum = 30000)]
    #[serde(default, deserialize_with = "whole::optional")]
    pub timeout_ms: Option<u64>,
}

/// What a restore did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RestoreJson {
    /// Always `restored`.
    pub status: String,
    /// The volume rolled back.
    pub volume_id: String,
    /// The snapshot it now matches.
    pub snapshot_id: String,
    /// The snapshot of the discarded state, when one was asked for.
    pub safety_snapshot: Option<SnapshotJson>,
}

/// What a delete did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedJson {
    /// Always true: the object is gone.
    pub deleted: bool,
    /// False when it was already gone.
    pub existed: bool,
}

/// `POST /api/v1/templates`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// The ready snapshot to make it from (`snap-N`).
    pub snapshot_id: String,
    /// Unique among templates, 1 to 63 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028-\\u202E\\u2066-\\u2069]+$"
    )]
    pub name: String,
    /// Free text: up to 1024 characters; tab and line feed are the only
    /// control characters allowed.
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")]
    pub description: String,
    /// Up to 64 labels; keys 1 to 15 characters (rules as for names),
    /// values up to 63 characters without control characters.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub labels: BTreeMap<String, String>,
}

/// A template: a named read-only base image.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateJson {
    /// `tmpl-N`.
    pub id: String,
    /// Unique among templates.
    pub name: String,
    /// Who created it.
    pub owner: String,
    /// Free text.
    pub description: String,
    /// Logical size in bytes.
    pub size_bytes: u64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The volume its snapshot was of.
    pub source_volume_id: String,
    /// The snapshot it was made from.
    pub source_snapshot_id: String,
    /// Free key/value labels.
    pub labels: BTreeMap<String, String>,
}

impl TemplateJson {
    /// The wire form of a template.
    pub fn new(t: &TemplateInfo) -> Self {
        TemplateJson {
            id: t.id.to_string(),
            name: t.name.clone(),
            owner: t.owner.clone(),
            description: t.description.clone(),
            size_bytes: t.size_bytes,
            created_at: rfc3339(t.created_at),
            source_volume_id: t.source.0.to_string(),
            source_snapshot_id: t.source.1.to_string(),
            labels: t.labels.clone(),
        }
    }
}

/// A volume's automatic snapshots: how often, and how long they are kept.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyJson {
    /// Seconds between automatic snapshots (at least 1).
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole::required")]
    pub interval_secs: u64,
    /// Keep at least the newest N automatic snapshots (at most 4294967295).
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub keep_last: Option<u64>,
    /// Keep automatic snapshots younger than this many seconds.
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 1)]
    pub keep_for_secs: Option<u64>,
}

impl From<SnapshotPolicy> for PolicyJson {
    fn from(p: SnapshotPolicy) -> Self {
        PolicyJson {
            interval_secs: p.interval_secs,
            keep_last: p.keep_last.map(u64::from),
            keep_for_secs: p.keep_for_secs,
        }
    }
}

impl PolicyJson {
    /// The engine's policy; `None` when `keep_last` does not fit (the
    /// caller reports it).
    pub fn to_engine(self) -> Option<SnapshotPolicy> {
        let keep_last = self.keep_last.map(u32::try_from).transpose().ok()?;
        Some(SnapshotPolicy { interval_secs: self.interval_secs, keep_last, keep_for_secs: self.keep_for_secs })
    }
}

/// A volume's policy, or null when it has none.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyStateJson {
    /// The volume.
    pub volume_id: String,
    /// Its policy, null when none is set.
    pub policy: Option<PolicyJson>,
}

/// `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthJson {
    /// `ok`.
    pub status: String,
}

/// Characters allowed in names and label keys (the engine's identifier
/// rule): no control, line-separator or bidirectional-formatting characters.
pub(crate) const IDENTIFIER: &str =
    "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028-\\u202E\\u2066-\\u2069]+$";

/// The labels map of snapshot and template requests, with its limits.
fn labels_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(15))
        .pattern(Some(IDENTIFIER));
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(63))
        .pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]*$"));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(64))
        .property_names(Some(key))
        .additional_properties(Some(value))
        .build()
}

/// Seconds since the Unix epoch as RFC 3339 in UTC.
pub fn rfc3339(secs: u64) -> String {
    let t = cowvol::UtcTime::from_unix(secs);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year, t.month, t.day, t.hour, t.minute, t.second)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
