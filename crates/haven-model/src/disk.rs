//! Parameters of the `disk` resource: a shared volume with a stable id, owned by one node
//! at a time and exposed at `<state-dir>/volumes/<volume_name>` on its owner.
//!
//! Pure: only the shape and validation of what an operator writes; finding, claiming and
//! exposing the volume is the `disk` driver's job.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{InvalidInput, validate_name};

/// Where a volume lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBackend {
    /// A directory on a filesystem every node mounts (NFS, CephFS, a bind mount in the lab),
    /// identified by the id in its `.haven-volume` file.
    Dir,
    /// A block device found by its filesystem UUID and mounted by its owner (needs root).
    Block,
}

/// Parameters of a `disk` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskParams {
    pub backend: DiskBackend,
    /// The volume's stable identity, as written in its `.haven-volume` file. The driver
    /// refuses a volume whose file holds another id.
    pub volume_id: String,
    /// The name it is exposed under: `<state-dir>/volumes/<volume_name>`, the same path on
    /// every node. VM definitions refer to their files through this path.
    pub volume_name: String,
    /// `dir` backend: the shared directory (absolute path) holding `.haven-volume`.
    #[serde(default)]
    pub path: Option<String>,
    /// `block` backend: the filesystem UUID (as `blkid` shows it).
    #[serde(default)]
    pub uuid: Option<String>,
}

/// Longest volume id accepted.
pub const MAX_VOLUME_ID_LEN: usize = 128;

impl DiskParams {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate_volume_id(&self.volume_id).map_err(|m| InvalidInput::new("params.volume_id", m))?;
        validate_name("params.volume_name", &self.volume_name)?;
        match self.backend {
            DiskBackend::Dir => {
                if self.uuid.is_some() {
                    return Err(InvalidInput::new(
                        "params.uuid",
                        "is only for backend \"block\"; a dir volume is found by params.path",
                    ));
                }
                match &self.path {
                    None => Err(InvalidInput::new(
                        "params.path",
                        "is missing; backend \"dir\" needs the shared directory that holds the .haven-volume file",
                    )),
                    Some(p) if !p.starts_with('/') => Err(InvalidInput::new(
                        "params.path",
                        format!("{p:?} is not an absolute path; write it like \"/srv/shared/vol1\""),
                    )),
                    Some(_) => Ok(()),
                }
            }
            DiskBackend::Block => {
                if self.path.is_some() {
                    return Err(InvalidInput::new(
                        "params.path",
                        "is only for backend \"dir\"; a block volume is found by params.uuid and mounted at \
                         <state-dir>/volumes/<volume_name>",
                    ));
                }
                match &self.uuid {
                    None => Err(InvalidInput::new(
                        "params.uuid",
                        "is missing; backend \"block\" needs the filesystem UUID (see `blkid`)",
                    )),
                    Some(u) if u.is_empty() || !u.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => {
                        Err(InvalidInput::new(
                            "params.uuid",
                            format!("{u:?} is not a filesystem UUID; copy it from `blkid`, e.g. \"0f3c…-…\""),
                        ))
                    }
                    Some(_) => Ok(()),
                }
            }
        }
    }
}

/// A volume id: 1–128 characters of letters, digits, `-`, `_`, `.`, `:`.
pub fn validate_volume_id(id: &str) -> Result<(), String> {
    let fix = "use 1-128 characters of letters, digits, '-', '_', '.' or ':'";
    if id.is_empty() {
        return Err(format!("is empty; {fix}"));
    }
    if id.len() > MAX_VOLUME_ID_LEN {
        return Err(format!("{id:?} is {} characters long; {fix}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))) {
        return Err(format!("{id:?} contains {c:?}; {fix}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<(), InvalidInput> {
        serde_json::from_value::<DiskParams>(v).map_err(|e| InvalidInput::new("params", e.to_string()))?.validate()
    }

    #[test]
    fn fields_are_named() {
        let ok = serde_json::json!({"backend": "dir", "volume_id": "v-1", "volume_name": "vol1", "path": "/srv/v"});
        assert_eq!(parse(ok), Ok(()));
        let e = parse(serde_json::json!({"backend": "dir", "volume_id": "v-1", "volume_name": "vol1"})).unwrap_err();
        assert_eq!(e.field, "params.path");
        let e = parse(serde_json::json!({"backend": "dir", "volume_id": "v 1", "volume_name": "vol1", "path": "/x"}))
            .unwrap_err();
        assert_eq!(e.field, "params.volume_id");
        let e = parse(serde_json::json!({"backend": "block", "volume_id": "v", "volume_name": "vol1"})).unwrap_err();
        assert_eq!(e.field, "params.uuid");
        let e = parse(serde_json::json!({"backend": "dir", "volume_id": "v", "volume_name": "Vol", "path": "/x"}))
            .unwrap_err();
        assert_eq!(e.field, "params.volume_name");
    }
}
