//! What each endpoint does, as synchronous calls on the engine: these run
//! on the blocking pool, never on the async workers. Owner checks happen
//! here; an object the caller may not see is reported as not found.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::size::parse_size;
use crate::wire::*;
use cowvol::{
    AccessMode, ForkOptions, RestoreOptions, SnapshotId, SnapshotInfo, SnapshotOptions, SnapshotQuery, Store,
    TemplateId, TemplateInfo, TemplateOptions, VolumeId, VolumeInfo, VolumeOptions,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default and largest page of a snapshot listing.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// Restore drain timeouts: the default, and the most a request may ask for
/// (it must stay below the request timeout).
const DEFAULT_RESTORE_TIMEOUT_MS: u64 = 10_000;
pub(crate) const MAX_RESTORE_TIMEOUT_MS: u64 = 30_000;

/// The engine and what the server keeps beside it.
pub struct App {
    /// The store, opened once.
    pub store: Store,
    default_volume_size: u64,
    names: AtomicU64,
}

type R<T> = Result<T, ApiError>;

impl App {
    /// Serves `store`; volumes created without a size get `default_volume_size`.
    pub fn new(store: Store, default_volume_size: u64) -> Self {
        App { store, default_volume_size, names: AtomicU64::new(0) }
    }

    /// A fresh name for an object created without one.
    fn fresh_name(&self, prefix: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        format!("{prefix}-{:x}{:x}", nanos as u64, self.names.fetch_add(1, Ordering::Relaxed))
    }

    fn volume_json(&self, v: &VolumeInfo) -> VolumeJson {
        VolumeJson::new(v)
    }

    fn snapshot_json(&self, s: &SnapshotInfo) -> SnapshotJson {
        // The figure is advisory; a snapshot deleted in between counts 0.
        let exclusive = self.store.snapshot_exclusive_bytes(s.id).unwrap_or(0);
        SnapshotJson::new(s, exclusive)
    }

    // ---- ownership -------------------------------------------------------

    /// The live volume `id` names, if the caller may see it.
    fn visible_volume(&self, caller: &Caller, id: &str) -> R<VolumeInfo> {
        let vid: VolumeId = id.parse().map_err(|_| ApiError::not_found(format!("volume {id}")))?;
        match self.store.volume(vid) {
            Ok(v) if caller.owns(&v.owner) => Ok(v),
            Ok(_) => Err(ApiError::not_found(format!("volume {vid}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// A snapshot is the caller's when they took it or own its live volume
    /// (automatic snapshots carry no owner of their own).
    fn may_see_snapshot(&self, caller: &Caller, s: &SnapshotInfo) -> bool {
        caller.owns(&s.owner) || self.store.volume(s.volume_id).is_ok_and(|v| caller.owns(&v.owner))
    }

    /// The snapshot `sid` of volume `vid`, if the caller may see it. Works
    /// for snapshots whose volume was deleted.
    fn visible_snapshot(&self, caller: &Caller, vid: &str, sid: &str) -> R<Option<SnapshotInfo>> {
        let missing = || ApiError::not_found(format!("snapshot {sid} of volume {vid}"));
        let volume: VolumeId = vid.parse().map_err(|_| missing())?;
        let snap: SnapshotId = sid.parse().map_err(|_| missing())?;
        match self.store.get_snapshot(volume, snap) {
            Ok(s) if self.may_see_snapshot(caller, &s) => Ok(Some(s)),
            Ok(_) => Err(missing()),
            Err(cowvol::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn existing_snapshot(&self, caller: &Caller, vid: &str, sid: &str) -> R<SnapshotInfo> {
        self.visible_snapshot(caller, vid, sid)?
            .ok_or_else(|| ApiError::not_found(format!("snapshot {sid} of volume {vid}")))
    }

    /// A snapshot by id alone (for volumes and templates made from one).
    fn visible_snapshot_by_id(&self, caller: &Caller, field: &str, sid: &str) -> R<SnapshotInfo> {
        let missing = || ApiError::not_found(format!("snapshot {sid} ({field})"));
        let snap: SnapshotId = sid.parse().map_err(|_| missing())?;
        match self.store.snapshot(snap) {
            Ok(s) if self.may_see_snapshot(caller, &s) => Ok(s),
            Ok(_) | Err(cowvol::Error::NotFound { .. }) => Err(missing()),
            Err(e) => Err(e.into()),
        }
    }

    fn visible_template(&self, caller: &Caller, id: &str) -> R<TemplateInfo> {
        let missing = || ApiError::not_found(format!("template {id}"));
        let tid: TemplateId = id.parse().map_err(|_| missing())?;
        match self.store.template(tid) {
            Ok(t) if caller.owns(&t.owner) => Ok(t),
            Ok(_) | Err(cowvol::Error::NotFound { .. }) => Err(missing()),
            Err(e) => Err(e.into()),
        }
    }

    // ---- volumes ---------------------------------------------------------

    /// `POST /api/v1/sandboxvolumes`.
    pub fn create_volume(&self, caller: &Caller, req: CreateVolumeRequest) -> R<VolumeJson> {
        // Missing sources are reported (404) before a bad combination (400).
        let snapshot =
            req.snapshot_id.as_deref().map(|s| self.visible_snapshot_by_id(caller, "snapshot_id", s)).transpose()?;
        let template = req.template_id.as_deref().map(|t| self.visible_template(caller, t)).transpose()?;
        if snapshot.is_some() && template.is_some() {
            return Err(ApiError::bad_request("template_id", "give snapshot_id or template_id, not both"));
        }
        let from_source = req.snapshot_id.is_some() || req.template_id.is_some();
        // A volume made from a source has the source's size; asking for
        // another contradicts the source, like a taken name does.
        let source_size = snapshot.as_ref().map(|s| s.size_bytes).or(template.as_ref().map(|t| t.size_bytes));
        if let (Some(have), Some(want)) = (source_size, req.size_bytes) {
            if have != want {
                return Err(ApiError::conflict(
                    "size_mismatch",
                    format!("the source is {have} bytes; size_bytes must be absent or {have}"),
                ));
            }
        }
        if let Some(name) = &req.name {
            check_name("name", name)?;
        }
        if req.size_bytes.is_some_and(|n| n > MAX_VOLUME_BYTES) {
            return Err(ApiError::bad_request("size_bytes", format!("size_bytes must be at most {MAX_VOLUME_BYTES}")));
        }
        let opts = VolumeOptions {
            name: req.name.unwrap_or_else(|| self.fresh_name("sandbox")),
            size_bytes: req.size_bytes.unwrap_or(if from_source { 0 } else { self.default_volume_size }),
            access_mode: req.access_mode.map_or(AccessMode::default(), AccessMode::from),
            cache_bytes: size_field("cache_size", req.cache_size.as_deref())?.unwrap_or(0),
            write_buffer_bytes: size_field("buffer_size", req.buffer_size.as_deref())?.unwrap_or(0),
            owner: caller.owner.clone(),
        };
        if !from_source && opts.size_bytes == 0 {
            return Err(ApiError::bad_request("size_bytes", "size_bytes must be at least 1"));
        }
        let info = if let Some(snap) = snapshot {
            self.store.create_volume_from_snapshot(snap.id, opts)?
        } else if let Some(t) = template {
            self.store.create_volume_from_template(t.id, opts)?
        } else {
            self.store.create_volume(opts)?
        };
        Ok(self.volume_json(&info))
    }

    /// `GET /api/v1/sandboxvolumes`.
    pub fn list_volumes(&self, caller: &Caller) -> Vec<VolumeJson> {
        let mut vols: Vec<VolumeInfo> = self.store.list_volumes();
        vols.retain(|v| caller.owns(&v.owner));
        vols.sort_by_key(|v| v.id);
        vols.iter().map(|v| self.volume_json(v)).collect()
    }

    /// `GET /api/v1/sandboxvolumes/{id}`.
    pub fn get_volume(&self, caller: &Caller, id: &str) -> R<VolumeJson> {
        Ok(self.volume_json(&self.visible_volume(caller, id)?))
    }

    /// `DELETE /api/v1/sandboxvolumes/{id}`; its snapshots stay.
    pub fn delete_volume(&self, caller: &Caller, id: &str) -> R<DeletedJson> {
        let v = self.visible_volume(caller, id)?;
        self.store.delete_volume(v.id)?;
        Ok(DeletedJson { deleted: true, existed: true })
    }

    /// `POST /api/v1/sandboxvolumes/{id}/fork`.
    pub fn fork_volume(&self, caller: &Caller, id: &str, req: ForkRequest) -> R<VolumeJson> {
        let source = self.visible_volume(caller, id)?;
        if let Some(name) = &req.name {
            check_name("name", name)?;
        }
        let from_snapshot = match &req.snapshot_id {
            Some(sid) => Some(self.existing_snapshot(caller, id, sid)?.id),
            None => None,
        };
        let opts = ForkOptions {
            name: req.name.unwrap_or_else(|| self.fresh_name(&format!("{}-fork", source.id))),
            from_snapshot,
            access_mode: req.access_mode.map_or(source.access_mode, AccessMode::from),
            // Empty: the fork belongs to whoever owns the source.
            owner: String::new(),
        };
        let info = self.store.fork_volume(source.id, opts)?;
        Ok(self.volume_json(&info))
    }

    // ---- snapshots -------------------------------------------------------

    /// `POST /api/v1/sandboxvolumes/{id}/snapshots`.
    pub fn create_snapshot(&self, caller: &Caller, id: &str, req: CreateSnapshotRequest) -> R<SnapshotJson> {
        let v = self.visible_volume(caller, id)?;
        check_name("name", &req.name)?;
        check_text(&req.description, &req.labels)?;
        let opts = SnapshotOptions {
            name: req.name,
            description: req.description,
            owner: v.owner.clone(),
            labels: req.labels,
            kind: cowvol::SnapshotKind::Manual,
            ..Default::default()
        };
        let s = self.store.create_snapshot(v.id, opts)?;
        Ok(self.snapshot_json(&s))
    }

    /// `GET /api/v1/sandboxvolumes/{id}/snapshots/{sid}`.
    pub fn get_snapshot(&self, caller: &Caller, id: &str, sid: &str) -> R<SnapshotJson> {
        Ok(self.snapshot_json(&self.existing_snapshot(caller, id, sid)?))
    }

    /// `DELETE /api/v1/sandboxvolumes/{id}/snapshots/{sid}`: idempotent.
    pub fn delete_snapshot(&self, caller: &Caller, id: &str, sid: &str) -> R<DeletedJson> {
        let Some(s) = self.visible_snapshot(caller, id, sid)? else {
            return Ok(DeletedJson { deleted: true, existed: false });
        };
        let d = self.store.delete_snapshot(s.volume_id, s.id)?;
        Ok(DeletedJson { deleted: true, existed: d.existed })
    }

    /// `POST .../snapshots/{sid}/restore`.
    pub fn restore(&self, caller: &Caller, id: &str, sid: &str, req: RestoreRequest) -> R<RestoreJson> {
        let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_RESTORE_TIMEOUT_MS);
        if timeout_ms > MAX_RESTORE_TIMEOUT_MS {
            return Err(ApiError::bad_request(
                "timeout_ms",
                format!("timeout_ms must be at most {MAX_RESTORE_TIMEOUT_MS}"),
            ));
        }
        let v = self.visible_volume(caller, id)?;
        let s = self.existing_snapshot(caller, id, sid)?;
        let safety_snapshot = req.safety_snapshot.then(|| SnapshotOptions {
            name: self.fresh_name(&format!("before-restore-to-{}", s.name.chars().take(20).collect::<String>())),
            description: format!("state of {} before it was restored to {} ({})", v.name, s.name, s.id),
            owner: v.owner.clone(),
            ..Default::default()
        });
        let opts = RestoreOptions { timeout: Duration::from_millis(timeout_ms), safety_snapshot };
        let done = self.store.restore_snapshot(v.id, s.id, opts)?;
        Ok(RestoreJson {
            status: "restored".into(),
            volume_id: done.volume_id.to_string(),
            snapshot_id: done.snapshot_id.to_string(),
            safety_snapshot: done.safety_snapshot.as_ref().map(|s| self.snapshot_json(s)),
        })
    }

    /// `POST .../snapshots/{sid}/hold` (`hold = true`) and `/release`.
    pub fn set_hold(&self, caller: &Caller, id: &str, sid: &str, hold: bool) -> R<SnapshotJson> {
        let s = self.existing_snapshot(caller, id, sid)?;
        let s = if hold {
            self.store.hold_snapshot(s.volume_id, s.id)?
        } else {
            self.store.release_snapshot(s.volume_id, s.id)?
        };
        Ok(self.snapshot_json(&s))
    }

    /// `GET /api/v1/sandboxvolumes/{id}/snapshots`: one live volume's snapshots.
    pub fn list_volume_snapshots(&self, caller: &Caller, id: &str, q: SnapshotSearch) -> R<SnapshotPageJson> {
        let v = self.visible_volume(caller, id)?;
        self.search(caller, q, Some(&v.id.to_string()))
    }

    /// `GET /api/v1/snapshots` and `GET .../{id}/snapshots`: newest first.
    pub fn search(&self, caller: &Caller, mut q: SnapshotSearch, volume: Option<&str>) -> R<SnapshotPageJson> {
        // An empty text parameter means "not given", as forms send them.
        for p in [&mut q.search, &mut q.volume] {
            if p.as_deref() == Some("") {
                *p = None;
            }
        }
        let limit = match q.limit {
            None => DEFAULT_PAGE,
            Some(n @ 1..) if n as usize <= MAX_PAGE => n as usize,
            Some(_) => return Err(ApiError::bad_request("limit", format!("limit must be 1 to {MAX_PAGE}"))),
        };
        let offset = match &q.cursor {
            None => 0,
            Some(c) if !c.is_empty() && c.len() <= 9 && c.bytes().all(|b| b.is_ascii_digit()) => {
                c.parse::<usize>().unwrap_or(0)
            }
            Some(_) => return Err(ApiError::bad_request("cursor", "cursor is not one this server gave")),
        };
        let mut query = SnapshotQuery {
            kind: q.kind.map(Into::into),
            status: q.status.map(Into::into),
            newest_first: true,
            ..Default::default()
        };
        if let Some(label) = &q.label {
            let (k, v) = label
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| ApiError::bad_request("label", "label must be key=value"))?;
            query.labels.insert(k.to_string(), v.to_string());
        }
        if let Some(vol) = volume.or(q.volume.as_deref()) {
            // A malformed volume id matches nothing, like an unknown one.
            let Ok(vid) = vol.parse::<VolumeId>() else {
                return Ok(SnapshotPageJson { items: vec![], total: 0, next_cursor: None });
            };
            query.volume = Some(vid);
        }
        if let Some(text) = q.search.as_deref().filter(|t| !t.is_empty()) {
            match text.parse::<VolumeId>() {
                Ok(vid) if text.starts_with("vol-") => query.volume = Some(vid),
                _ => query.name_contains = Some(text.to_string()),
            }
        }
        Ok(self.page(caller, query, offset, limit))
    }

    fn page(&self, caller: &Caller, mut query: SnapshotQuery, offset: usize, limit: usize) -> SnapshotPageJson {
        let (items, total) = if caller.admin {
            // Admins see everything: let the engine page.
            query.offset = offset;
            query.limit = Some(limit);
            let page = self.store.search_snapshots(&query);
            (page.snapshots, page.total)
        } else {
            let mut all = self.store.search_snapshots(&query).snapshots;
            all.retain(|s| self.may_see_snapshot(caller, s));
            let total = all.len();
            (all.into_iter().skip(offset).take(limit).collect(), total)
        };
        let end = offset.saturating_add(items.len());
        SnapshotPageJson {
            items: items.iter().map(|s| self.snapshot_json(s)).collect(),
            total: total as u64,
            next_cursor: (end < total).then(|| end.to_string()),
        }
    }

    // ---- templates -------------------------------------------------------

    /// `POST /api/v1/templates`.
    pub fn create_template(&self, caller: &Caller, req: CreateTemplateRequest) -> R<TemplateJson> {
        check_name("name", &req.name)?;
        check_text(&req.description, &req.labels)?;
        let s = self.visible_snapshot_by_id(caller, "snapshot_id", &req.snapshot_id)?;
        let opts = TemplateOptions {
            name: req.name,
            description: req.description,
            labels: req.labels,
            owner: caller.owner.clone(),
        };
        let t = self.store.create_template(s.id, opts)?;
        Ok(TemplateJson::new(&t))
    }

    /// `GET /api/v1/templates`.
    pub fn list_templates(&self, caller: &Caller) -> Vec<TemplateJson> {
        let mut ts = self.store.list_templates();
        ts.sort_by_key(|t| t.id);
        ts.iter().filter(|t| caller.owns(&t.owner)).map(TemplateJson::new).collect()
    }

    /// `GET /api/v1/templates/{id}`.
    pub fn get_template(&self, caller: &Caller, id: &str) -> R<TemplateJson> {
        let t = self.visible_template(caller, id)?;
        Ok(TemplateJson::new(&t))
    }

    /// `DELETE /api/v1/templates/{id}`: idempotent like snapshot deletes.
    pub fn delete_template(&self, caller: &Caller, id: &str) -> R<DeletedJson> {
        let t = match self.visible_template(caller, id) {
            Ok(t) => t,
            Err(_) if self.template_is_gone(id) => return Ok(DeletedJson { deleted: true, existed: false }),
            Err(e) => return Err(e),
        };
        let d = self.store.delete_template(t.id)?;
        Ok(DeletedJson { deleted: true, existed: d.existed })
    }

    fn template_is_gone(&self, id: &str) -> bool {
        id.parse::<TemplateId>().is_ok_and(|t| matches!(self.store.template(t), Err(cowvol::Error::NotFound { .. })))
    }

    // ---- policies --------------------------------------------------------

    /// `PUT /api/v1/sandboxvolumes/{id}/policy` (`Some`) and `DELETE` (`None`).
    pub fn set_policy(&self, caller: &Caller, id: &str, policy: Option<PolicyJson>) -> R<PolicyStateJson> {
        let v = self.visible_volume(caller, id)?;
        if let Some(p) = policy {
            if p.interval_secs == 0 {
                return Err(ApiError::bad_request("interval_secs", "interval_secs must be at least 1"));
            }
            if p.keep_last == Some(0) {
                return Err(ApiError::bad_request("keep_last", "keep_last must be at least 1"));
            }
            if p.keep_for_secs == Some(0) {
                return Err(ApiError::bad_request("keep_for_secs", "keep_for_secs must be at least 1"));
            }
        }
        let engine = match policy {
            Some(p) => Some(
                p.to_engine()
                    .ok_or_else(|| ApiError::bad_request("keep_last", "keep_last must be at most 4294967295"))?,
            ),
            None => None,
        };
        let v = self.store.set_policy(v.id, engine)?;
        Ok(PolicyStateJson { volume_id: v.id.to_string(), policy: v.policy.map(Into::into) })
    }

    /// `GET /api/v1/sandboxvolumes/{id}/policy`. A volume without a policy
    /// answers 404, like any other resource that was never made or was
    /// deleted; the volume object's `policy` field says null instead.
    pub fn get_policy(&self, caller: &Caller, id: &str) -> R<PolicyStateJson> {
        let v = self.visible_volume(caller, id)?;
        let policy = v.policy.ok_or_else(|| ApiError::not_found(format!("a policy of volume {}", v.id)))?;
        Ok(PolicyStateJson { volume_id: v.id.to_string(), policy: Some(policy.into()) })
    }
}

/// Names on the wire: 1 to 63 characters (so at most 252 bytes, within the
/// engine's 255), no control characters. The OpenAPI pattern says the same.
fn check_name(field: &str, name: &str) -> R<()> {
    let chars = name.chars().count();
    if chars == 0 || chars > 63 || !name.chars().all(identifier_char) {
        return Err(ApiError::bad_request(
            field,
            format!("{field} must be 1 to 63 characters without control characters"),
        ));
    }
    Ok(())
}

/// The engine's identifier rule: no control, line or paragraph separator,
/// or bidirectional formatting character.
fn identifier_char(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Descriptions and labels within the limits the OpenAPI schema states.
fn check_text(description: &str, labels: &std::collections::BTreeMap<String, String>) -> R<()> {
    let free = |c: char| !c.is_control() || c == '\t' || c == '\n';
    if description.chars().count() > 1024 || !description.chars().all(free) {
        return Err(ApiError::bad_request(
            "description",
            "description must be at most 1024 characters; tab and line feed are the only control characters allowed",
        ));
    }
    if labels.len() > 64 {
        return Err(ApiError::bad_request("labels", "at most 64 labels"));
    }
    for (k, v) in labels {
        let key_ok = (1..=15).contains(&k.chars().count()) && k.chars().all(identifier_char);
        if !key_ok {
            return Err(ApiError::bad_request(
                "labels",
                format!("label key {k:?} must be 1 to 15 characters without control or bidirectional characters"),
            ));
        }
        if v.chars().count() > 63 || v.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                format!("labels.{k}"),
                "label values must be at most 63 characters without control characters",
            ));
        }
    }
    Ok(())
}

/// The largest volume the API accepts: 2^60 bytes (the engine's limit at
/// the smallest block size).
const MAX_VOLUME_BYTES: u64 = 1 << 60;

fn size_field(field: &str, value: Option<&str>) -> R<Option<u64>> {
    value
        .map(|s| {
            parse_size(s)
                .ok_or_else(|| ApiError::bad_request(field, format!("{s:?} is not a size (e.g. 512, 64K, 128M, 1G)")))
        })
        .transpose()
}
