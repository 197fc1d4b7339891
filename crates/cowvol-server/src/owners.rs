//! Who owns each volume and template.
//!
//! The engine records an owner on snapshots but not yet on volumes and
//! templates; until it does, the server remembers the owners of what it
//! created in memory. Every owner question goes through `volume_owner` and
//! `template_owner`, so moving to the engine's field changes only them.
//! Objects of unknown owner (made before this server started) answer to
//! admins only.

use cowvol::{TemplateId, TemplateInfo, VolumeId, VolumeInfo};
use std::collections::HashMap;
use std::sync::Mutex;

/// The owners the server has recorded.
#[derive(Debug, Default)]
pub struct Owners {
    volumes: Mutex<HashMap<VolumeId, String>>,
    templates: Mutex<HashMap<TemplateId, String>>,
}

impl Owners {
    /// The owner of a volume; empty when unknown.
    pub fn volume_owner(&self, v: &VolumeInfo) -> String {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner()).get(&v.id).cloned().unwrap_or_default()
    }

    /// The owner of a template; empty when unknown.
    pub fn template_owner(&self, t: &TemplateInfo) -> String {
        self.templates.lock().unwrap_or_else(|p| p.into_inner()).get(&t.id).cloned().unwrap_or_default()
    }

    /// Records the owner of a volume the server just created.
    pub fn set_volume_owner(&self, id: VolumeId, owner: &str) {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, owner.to_string());
    }

    /// Records the owner of a template the server just created.
    pub fn set_template_owner(&self, id: TemplateId, owner: &str) {
        self.templates.lock().unwrap_or_else(|p| p.into_inner()).insert(id, owner.to_string());
    }
}
