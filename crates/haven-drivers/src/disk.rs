//! The `disk` driver: a shared volume (`DiskParams`) owned by one node at a time.
//!
//! Start checks the volume's identity (`.haven-volume` holds `volume_id`), reads the claim
//! file `.haven-claim` on the volume and refuses if a claim with a *higher* placement
//! generation exists (this node is a stale owner: the group was placed elsewhere since),
//! writes its own claim (node, generation), then exposes the volume at
//! `<state-dir>/volumes/<volume_name>`: a symlink for the `dir` backend, a mount for
//! `block`. Stop removes the exposure; the claim stays as history. Monitor checks that the
//! exposure is there and the claim is still ours.
//!
//! The claim is a fencing token checked by the owner, not a lock: it stops an owner that
//! the cluster has already replaced, which is what the generation orders. I/O on the
//! shared volume runs on blocking threads with a timeout, so a hung network filesystem
//! makes the operation fail instead of hanging the agent.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use haven_model::{DiskBackend, DiskParams, InvalidInput, ResourceKind, ResourceSpec};
use serde::{Deserialize, Serialize};

use crate::{Depth, DriverError, Health, ResourceCtx, ResourceDriver, procfs, sys};

/// The file at the root of a volume that holds its id.
const VOLUME_ID_FILE: &str = ".haven-volume";
/// The file at the root of a volume that names its current (or last) owner.
pub const CLAIM_FILE: &str = ".haven-claim";
/// Longest one I/O step on the shared volume may take.
const VOLUME_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Who claimed a volume, as recorded in its `.haven-claim` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    /// The placement generation of the claiming group.
    pub generation: u64,
    /// The `disk` resource that claimed it.
    pub resource: String,
    /// Wall-clock time of the claim, milliseconds since the epoch (for operators).
    pub claimed_at_ms: u64,
}

/// The driver for `disk` resources. Stateless: everything is on the volume and in the
/// state directory.
#[derive(Default)]
pub struct DiskDriver;

/// `<state-dir>/volumes/<volume_name>`: where a volume is exposed on its owner.
fn exposure_path(state_dir: &Path, volume_name: &str) -> PathBuf {
    state_dir.join("volumes").join(volume_name)
}

/// Reads a volume's claim; `Ok(None)` if it was never claimed.
pub fn read_claim(volume_root: &Path) -> io::Result<Option<Claim>> {
    let path = volume_root.join(CLAIM_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a Haven claim ({e})", path.display()))
    })
}

fn write_claim(volume_root: &Path, claim: &Claim) -> io::Result<()> {
    // A temporary file per node, so two nodes never write the same temporary file.
    let tmp = volume_root.join(format!("{CLAIM_FILE}.{}.tmp", claim.node));
    let text = serde_json::to_string(claim).map_err(io::Error::other)?;
    let mut f = fs::File::create(&tmp)?;
    writeln!(f, "{text}")?;
    f.sync_all()?;
    fs::rename(&tmp, volume_root.join(CLAIM_FILE))?;
    // Make the rename durable too.
    fs::File::open(volume_root)?.sync_all()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why a volume cannot be checked, claimed or watched. The driver reports the message as
/// the resource's failure (`DriverError::Volume`).
#[derive(Debug, thiserror::Error)]
enum VolumeError {
    #[error("{what}: internal error: {detail}")]
    Internal { what: &'static str, detail: String },
    #[error(
        "{what} did not finish within {:?}; the shared filesystem is not responding (check the NFS/cluster \
         filesystem mount on this node)",
        VOLUME_IO_TIMEOUT
    )]
    Hung { what: &'static str },
    #[error(
        "{} holds volume id {found:?}, not {expected:?}: this is another volume; point the resource at the right \
         one or fix params.volume_id",
        id_file.display()
    )]
    OtherVolume { id_file: PathBuf, found: String, expected: String },
    #[error("{} does not exist on this node; mount the shared filesystem here (or fix the path)", root.display())]
    Missing { root: PathBuf },
    #[error(
        "{} is not a Haven volume: it has no {VOLUME_ID_FILE} file; mark it with `echo {volume_id} > {}`",
        root.display(),
        root.join(VOLUME_ID_FILE).display()
    )]
    Unmarked { root: PathBuf, volume_id: String },
    #[error("cannot read {}: {source}", path.display())]
    ReadId {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the claim on {}: {source}", root.display())]
    ReadClaim {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "volume at {} was claimed by node {node:?} at placement generation {theirs}, newer than this node's \
         generation {ours}: this node is a stale owner and must not use it",
        root.display()
    )]
    StaleOwner { root: PathBuf, node: String, theirs: u64, ours: u64 },
    #[error(
        "volume at {} is claimed by node {node:?} at the same placement generation {generation}: two nodes think \
         they own it; move the group again to give it a new generation",
        root.display()
    )]
    SameGeneration { root: PathBuf, node: String, generation: u64 },
    #[error("cannot write the claim {}: {source}", path.display())]
    WriteClaim {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Monitor could not read the claim it watches.
    #[error("cannot read the claim: {0}")]
    WatchClaim(#[source] io::Error),
}

/// Runs `f` on a blocking thread, giving up after `VOLUME_IO_TIMEOUT`.
async fn on_volume<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, VolumeError> {
    match tokio::time::timeout(VOLUME_IO_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(VolumeError::Internal { what, detail: e.to_string() }),
        Err(_) => Err(VolumeError::Hung { what }),
    }
}

/// Checks that `root` is the volume `volume_id`.
fn check_identity(root: &Path, volume_id: &str) -> Result<(), VolumeError> {
    let id_file = root.join(VOLUME_ID_FILE);
    match fs::read_to_string(&id_file) {
        Ok(text) if text.trim() == volume_id => Ok(()),
        Ok(text) => {
            Err(VolumeError::OtherVolume { id_file, found: text.trim().to_string(), expected: volume_id.to_string() })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && !root.exists() => {
            Err(VolumeError::Missing { root: root.to_path_buf() })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(VolumeError::Unmarked { root: root.to_path_buf(), volume_id: volume_id.to_string() })
        }
        Err(source) => Err(VolumeError::ReadId { path: id_file, source }),
    }
}

/// Checks the claim and writes ours: refuses if a newer generation (or another node at the
/// same generation) holds the volume.
fn claim(root: &Path, ours: &Claim) -> Result<(), VolumeError> {
    let existing = read_claim(root).map_err(|source| VolumeError::ReadClaim { root: root.to_path_buf(), source })?;
    if let Some(c) = existing {
        if c.generation > ours.generation {
            return Err(VolumeError::StaleOwner {
                root: root.to_path_buf(),
                node: c.node,
                theirs: c.generation,
                ours: ours.generation,
            });
        }
        if c.generation == ours.generation && c.node != ours.node {
            return Err(VolumeError::SameGeneration {
                root: root.to_path_buf(),
                node: c.node,
                generation: c.generation,
            });
        }
    }
    write_claim(root, ours).map_err(|source| VolumeError::WriteClaim { path: root.join(CLAIM_FILE), source })
}

impl DiskDriver {
    fn params(spec: &ResourceSpec) -> Result<DiskParams, DriverError> {
        let invalid = |source| DriverError::InvalidParams { resource: spec.name.clone(), source };
        let params = spec.disk_params().map_err(invalid)?;
        params.validate().map_err(invalid)?;
        Ok(params)
    }

    fn err(ctx: &ResourceCtx, message: impl Into<String>) -> DriverError {
        DriverError::Volume { resource: ctx.spec.name.clone(), message: message.into() }
    }

    /// The volume's root directory on this node (for `block`, where it is mounted).
    fn root(ctx: &ResourceCtx, params: &DiskParams) -> PathBuf {
        match params.backend {
            DiskBackend::Dir => PathBuf::from(params.path.as_deref().unwrap_or("/")),
            DiskBackend::Block => exposure_path(&ctx.state_dir, &params.volume_name),
        }
    }

    /// Whether the volume is exposed here, and if not, why (for the `dir` backend, a
    /// symlink to `params.path`; for `block`, a mount).
    fn exposed(ctx: &ResourceCtx, params: &DiskParams) -> Result<bool, DriverError> {
        let at = exposure_path(&ctx.state_dir, &params.volume_name);
        match params.backend {
            DiskBackend::Dir => match fs::read_link(&at) {
                Ok(target) => Ok(target == Self::root(ctx, params)),
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidInput) => Ok(false),
                Err(e) => Err(Self::err(ctx, format!("cannot read {}: {e}", at.display()))),
            },
            DiskBackend::Block => procfs::is_mount_point(&at)
                .map_err(|e| Self::err(ctx, format!("cannot read /proc/self/mountinfo: {e}"))),
        }
    }

    async fn mount_block(ctx: &ResourceCtx, params: &DiskParams) -> Result<(), DriverError> {
        let at = exposure_path(&ctx.state_dir, &params.volume_name);
        let uuid = params.uuid.clone().unwrap_or_default();
        let uid = sys::effective_uid();
        if uid != 0 {
            return Err(Self::err(
                ctx,
                format!(
                    "backend \"block\" mounts filesystem UUID {uuid} at {}, which needs root, but the agent runs as \
                     uid {uid}; run the agent as root or use backend \"dir\" on a shared filesystem",
                    at.display()
                ),
            ));
        }
        if Self::exposed(ctx, params)? {
            return Ok(());
        }
        fs::create_dir_all(&at).map_err(|e| Self::err(ctx, format!("cannot create {}: {e}", at.display())))?;
        let out = tokio::process::Command::new("mount")
            .arg("-U")
            .arg(&uuid)
            .arg(&at)
            .output()
            .await
            .map_err(|e| Self::err(ctx, format!("cannot run `mount`: {e}; install util-linux")))?;
        if !out.status.success() {
            return Err(Self::err(
                ctx,
                format!(
                    "`mount -U {uuid} {}` failed: {}; check that the device with that filesystem UUID is visible \
                     on this node (`blkid`)",
                    at.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }

    async fn unexpose(ctx: &ResourceCtx, params: &DiskParams) -> Result<(), DriverError> {
        let at = exposure_path(&ctx.state_dir, &params.volume_name);
        match params.backend {
            DiskBackend::Dir => match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    fs::remove_file(&at).map_err(|e| Self::err(ctx, format!("cannot remove {}: {e}", at.display())))
                }
                Ok(_) => Err(Self::err(
                    ctx,
                    format!("{} is not a symlink Haven made; move it away so the volume can be managed", at.display()),
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Self::err(ctx, format!("cannot look at {}: {e}", at.display()))),
            },
            DiskBackend::Block => {
                if Self::exposed(ctx, params)? {
                    let out = tokio::process::Command::new("umount")
                        .arg(&at)
                        .output()
                        .await
                        .map_err(|e| Self::err(ctx, format!("cannot run `umount`: {e}")))?;
                    if !out.status.success() {
                        return Err(Self::err(
                            ctx,
                            format!(
                                "`umount {}` failed: {}; something still uses the volume (see `fuser -vm {}`)",
                                at.display(),
                                String::from_utf8_lossy(&out.stderr).trim(),
                                at.display()
                            ),
                        ));
                    }
                }
                match fs::remove_dir(&at) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        tracing::warn!(resource = %ctx.spec.name, "cannot remove mount point {}: {e}", at.display());
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

#[async_trait]
impl ResourceDriver for DiskDriver {
    async fn start(&self, ctx: &ResourceCtx) -> Result<(), DriverError> {
        let params = Self::params(&ctx.spec)?;
        let at = exposure_path(&ctx.state_dir, &params.volume_name);
        let volumes = ctx.state_dir.join("volumes");
        fs::create_dir_all(&volumes).map_err(|source| DriverError::RunDir {
            resource: ctx.spec.name.clone(),
            path: volumes.clone(),
            source,
        })?;
        if params.backend == DiskBackend::Block {
            Self::mount_block(ctx, &params).await?;
        }
        let root = Self::root(ctx, &params);
        let ours = Claim {
            node: ctx.node.clone(),
            generation: ctx.generation,
            resource: ctx.spec.name.clone(),
            claimed_at_ms: now_ms(),
        };
        let id = params.volume_id.clone();
        let checked = {
            let root = root.clone();
            on_volume("checking and claiming the volume", move || {
                check_identity(&root, &id)?;
                claim(&root, &ours)
            })
            .await
        };
        if let Err(e) = checked {
            if params.backend == DiskBackend::Block {
                let _ = Self::unexpose(ctx, &params).await;
            }
            return Err(Self::err(ctx, e.to_string()));
        }
        if params.backend == DiskBackend::Dir && !Self::exposed(ctx, &params)? {
            // Replace whatever symlink is there in one step: a new link, then rename over.
            let tmp = volumes.join(format!(".{}.tmp", params.volume_name));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&root, &tmp)
                .and_then(|()| match fs::symlink_metadata(&at) {
                    Ok(m) if !m.file_type().is_symlink() => Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a symlink; move it away", at.display()),
                    )),
                    _ => fs::rename(&tmp, &at),
                })
                .map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    Self::err(ctx, format!("cannot expose the volume at {}: {e}", at.display()))
                })?;
        }
        tracing::info!(resource = %ctx.spec.name, generation = ctx.generation, "volume {} exposed at {}", params.volume_id, at.display());
        Ok(())
    }

    async fn stop(&self, ctx: &ResourceCtx) -> Result<(), DriverError> {
        let params = Self::params(&ctx.spec)?;
        Self::unexpose(ctx, &params).await
    }

    async fn monitor(&self, ctx: &ResourceCtx, depth: Depth) -> Result<Health, DriverError> {
        let params = Self::params(&ctx.spec)?;
        if !Self::exposed(ctx, &params)? {
            return Ok(Health::Stopped);
        }
        let root = Self::root(ctx, &params);
        let (node, generation, id) = (ctx.node.clone(), ctx.generation, params.volume_id.clone());
        let look = on_volume("reading the volume's claim", move || {
            if depth == Depth::Thorough {
                check_identity(&root, &id)?;
            }
            match read_claim(&root) {
                Ok(Some(c)) if c.node == node && c.generation == generation => Ok(None),
                Ok(Some(c)) => Ok(Some(format!(
                    "the volume is now claimed by node {:?} at generation {} (this node holds generation {}); \
                     another node owns it",
                    c.node, c.generation, generation
                ))),
                Ok(None) => Ok(Some(format!("the claim file {} is gone", root.join(CLAIM_FILE).display()))),
                Err(e) => Err(VolumeError::WatchClaim(e)),
            }
        })
        .await;
        Ok(match look {
            Ok(None) => Health::Running,
            Ok(Some(reason)) => Health::Failed(reason),
            Err(e) => Health::Failed(e.to_string()),
        })
    }

    fn validate(&self, spec: &ResourceSpec) -> Result<(), InvalidInput> {
        if spec.kind != ResourceKind::Disk {
            return Err(InvalidInput::new("type", format!("{:?} is not a disk resource", spec.kind.as_str())));
        }
        spec.disk_params()?.validate()
    }
}
