//! The `vm-config` driver: a VM definition file on a cluster volume, registered on the
//! node that will run the VM.
//!
//! Start reads and validates the definition (`load_definition`), checks that its file is
//! on a volume exposed here (`<state-dir>/volumes/<volume>/…`, the path that is the same on
//! every node), and registers it as `<state-dir>/vms/<vm-name>.json` with the text it was
//! read from. Stop removes the registration. Monitor: registered, and the file unchanged.
//! The `vm` driver starts QEMU from the registration, never from the file itself.
//!
//! Rules about *editing* a definition (only while the VM is offline) live elsewhere.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use haven_model::{InvalidInput, ResourceKind, ResourceSpec, VmConfigParams, VmDefinition};
use serde::{Deserialize, Serialize};

use crate::{Depth, DriverError, Health, ResourceCtx, ResourceDriver};

/// A definition registered on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Registration {
    /// The `vm-config` resource that registered it.
    pub resource: String,
    /// The definition file.
    pub path: String,
    /// The file's text when it was registered (to notice edits).
    pub text: String,
    /// The definition, with every file path made absolute.
    pub definition: VmDefinition,
}

/// Largest VM definition file read (a definition is a few hundred bytes of TOML or JSON;
/// anything much larger is some other file, and is not read into memory).
pub(crate) const MAX_DEFINITION_BYTES: usize = 64 * 1024;

/// Reads the text of the definition file at `path`: a regular file of at most
/// [`MAX_DEFINITION_BYTES`] of UTF-8. The errors name the file, never its content.
pub(crate) fn read_definition(path: &Path) -> Result<String, InvalidInput> {
    use std::io::Read;
    let invalid = |why: String| InvalidInput::new("path", why);
    // Looked at before it is opened: opening a FIFO would wait for a writer.
    let meta = fs::metadata(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(invalid(format!("{} is not a regular file, so not a VM definition", path.display())));
    }
    let file = fs::File::open(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_DEFINITION_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() > MAX_DEFINITION_BYTES {
        return Err(invalid(format!(
            "{} is larger than {MAX_DEFINITION_BYTES} bytes, so not a VM definition (a definition is a small TOML \
             or JSON file)",
            path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        invalid(format!(
            "{} is not a VM definition: it is not UTF-8 text (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Reads, parses and validates a VM definition. Relative paths in it (kernel, initrd,
/// disks) are taken relative to the file's directory and returned absolute; every file it
/// names must exist. The error's field is the path inside the file (`disks[0].path`).
pub fn load_definition(path: &Path) -> Result<VmDefinition, InvalidInput> {
    definition_from_text(path, &read_definition(path)?)
}

/// Parses and validates definition `text` as if it were the file at `path` (relative paths
/// are resolved against its directory and must exist). Errors never quote the text
/// (`VmDefinition::parse_file`).
pub fn definition_from_text(path: &Path, text: &str) -> Result<VmDefinition, InvalidInput> {
    if text.len() > MAX_DEFINITION_BYTES {
        return Err(InvalidInput::new(
            "definition",
            format!("is {} bytes, more than the {MAX_DEFINITION_BYTES} a VM definition may have", text.len()),
        ));
    }
    let mut def = VmDefinition::parse_file(text, &path.to_string_lossy())?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let resolve = |field: String, p: &mut String| -> Result<(), InvalidInput> {
        let full = base.join(&*p);
        // A disk may also be a whole block device handed to the guest (pass-through).
        let device = field.starts_with("disks[")
            && fs::metadata(&full).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
        if !full.is_file() && !device {
            let what = if full.exists() { "is not a file (nor, for a disk, a block device)" } else { "does not exist" };
            return Err(InvalidInput::new(field, format!("{} {what}", full.display())));
        }
        *p = full.to_string_lossy().into_owned();
        Ok(())
    };
    if let Some(k) = def.boot.kernel.as_mut() {
        resolve("boot.kernel".into(), k)?;
    }
    if let Some(i) = def.boot.initrd.as_mut() {
        resolve("boot.initrd".into(), i)?;
    }
    for (i, d) in def.disks.iter_mut().enumerate() {
        resolve(format!("disks[{i}].path"), &mut d.path)?;
    }
    Ok(def)
}

/// `<state-dir>/vms`: where definitions are registered.
fn registry_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("vms")
}

/// The registration made by the `vm-config` resource `resource`, if it is registered here.
pub(crate) fn find_registration(state_dir: &Path, resource: &str) -> io::Result<Option<Registration>> {
    let dir = registry_dir(state_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        if let Some(reg) = read_registration(&path)?
            && reg.resource == resource
        {
            return Ok(Some(reg));
        }
    }
    Ok(None)
}

fn read_registration(path: &Path) -> io::Result<Option<Registration>> {
    match fs::read_to_string(path) {
        // The error gives the position only: a registration holds a definition's text.
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a VM registration (JSON error at line {}, column {}); remove it",
                    path.display(),
                    e.line(),
                    e.column()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The driver for `vm-config` resources. Stateless: registrations are files.
#[derive(Default)]
pub struct VmConfigDriver;

impl VmConfigDriver {
    fn params(spec: &ResourceSpec) -> Result<VmConfigParams, DriverError> {
        let invalid = |source| DriverError::InvalidParams { resource: spec.name.clone(), source };
        let params = spec.vm_config_params().map_err(invalid)?;
        params.validate().map_err(invalid)?;
        Ok(params)
    }

    fn err(ctx: &ResourceCtx, message: impl Into<String>) -> DriverError {
        DriverError::VmDefinition { resource: ctx.spec.name.clone(), message: message.into() }
    }

    /// The file must be under `<state-dir>/volumes/<volume>/` and that volume online here.
    fn check_on_volume(ctx: &ResourceCtx, path: &Path) -> Result<(), DriverError> {
        let volumes = ctx.state_dir.join("volumes");
        let on_volume = path.strip_prefix(&volumes).ok().filter(|rest| {
            rest.components().count() >= 2 && rest.components().all(|c| matches!(c, Component::Normal(_)))
        });
        let Some(rest) = on_volume else {
            return Err(Self::err(
                ctx,
                format!(
                    "definition {} is not on a cluster volume: write params.path as {}/<volume-name>/…, the path \
                     that is the same on every node, and keep the file on that volume",
                    path.display(),
                    volumes.display()
                ),
            ));
        };
        let volume = rest.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
        let volume = volume.unwrap_or_default();
        if !volumes.join(&volume).exists() {
            return Err(Self::err(
                ctx,
                format!(
                    "volume {volume:?} is not online on node {:?}, so definition {} cannot be read; bring its disk \
                     resource online first (make this resource depend on it)",
                    ctx.node,
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    fn registration_path(ctx: &ResourceCtx, vm_name: &str) -> PathBuf {
        registry_dir(&ctx.state_dir).join(format!("{vm_name}.json"))
    }

    fn find(ctx: &ResourceCtx) -> Result<Option<(PathBuf, Registration)>, DriverError> {
        let reg = find_registration(&ctx.state_dir, &ctx.spec.name)
            .map_err(|e| Self::err(ctx, format!("cannot read the VM registrations: {e}")))?;
        Ok(reg.map(|r| (Self::registration_path(ctx, &r.definition.name), r)))
    }
}

/// Where `params.path` is on this node: a relative path (`<volume-name>/…`) is under this
/// node's `<state-dir>/volumes/`, so one definition works on every node whatever its
/// state directory; an absolute path is taken as it is.
fn definition_path(ctx: &ResourceCtx, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() { p.to_path_buf() } else { ctx.state_dir.join("volumes").join(p) }
}

#[async_trait]
impl ResourceDriver for VmConfigDriver {
    async fn start(&self, ctx: &ResourceCtx) -> Result<(), DriverError> {
        let params = Self::params(&ctx.spec)?;
        let path = definition_path(ctx, &params.path);
        Self::check_on_volume(ctx, &path)?;
        let text = read_definition(&path).map_err(|e| Self::err(ctx, e.message))?;
        let definition = definition_from_text(&path, &text).map_err(|e| Self::err(ctx, e.to_string()))?;
        let reg_path = Self::registration_path(ctx, &definition.name);
        if let Some(other) = read_registration(&reg_path)
            .map_err(|e| Self::err(ctx, format!("cannot read {}: {e}", reg_path.display())))?
            && other.resource != ctx.spec.name
        {
            return Err(Self::err(
                ctx,
                format!(
                    "VM {:?} is already registered on node {:?} by resource {:?} (from {}); VM names must be unique \
                     on a node: rename one of them, or remove {} if that resource no longer exists",
                    definition.name,
                    ctx.node,
                    other.resource,
                    other.path,
                    reg_path.display()
                ),
            ));
        }
        // A registration of ours under an older VM name (the file was edited) goes away.
        if let Some((old_path, _)) = Self::find(ctx)?
            && old_path != reg_path
        {
            let _ = fs::remove_file(&old_path);
        }
        let path = path.to_string_lossy().into_owned();
        let reg = Registration { resource: ctx.spec.name.clone(), path, text, definition };
        let write = || -> io::Result<()> {
            let dir = registry_dir(&ctx.state_dir);
            fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{}.tmp", reg.definition.name));
            let mut f = fs::File::create(&tmp)?;
            f.write_all(serde_json::to_string_pretty(&reg).map_err(io::Error::other)?.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &reg_path)
        };
        write().map_err(|e| Self::err(ctx, format!("cannot register the VM at {}: {e}", reg_path.display())))?;
        tracing::info!(resource = %ctx.spec.name, "VM {:?} registered from {}", reg.definition.name, reg.path);
        Ok(())
    }

    async fn stop(&self, ctx: &ResourceCtx) -> Result<(), DriverError> {
        if let Some((path, _)) = Self::find(ctx)? {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Self::err(ctx, format!("cannot unregister {}: {e}", path.display())));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn monitor(&self, ctx: &ResourceCtx, _depth: Depth) -> Result<Health, DriverError> {
        let Some((_, reg)) = Self::find(ctx)? else { return Ok(Health::Stopped) };
        Ok(match fs::read_to_string(&reg.path) {
            Ok(text) if text == reg.text => Health::Running,
            Ok(_) => Health::Failed(format!(
                "definition {} changed since it was registered; restart this resource to load the new one",
                reg.path
            )),
            Err(e) => Health::Failed(format!(
                "definition {} cannot be read any more ({e}); is its volume still online?",
                reg.path
            )),
        })
    }

    fn validate(&self, spec: &ResourceSpec) -> Result<(), InvalidInput> {
        if spec.kind != ResourceKind::VmConfig {
            return Err(InvalidInput::new("type", format!("{:?} is not a vm-config resource", spec.kind.as_str())));
        }
        spec.vm_config_params()?.validate()
    }
}
