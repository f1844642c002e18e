//! The I/O half of the wizard: it reads this node's files, mounts, block devices and
//! processes, and `qemu-img info --backing-chain`, and records what it saw as plain data
//! ([`Facts`]). It judges nothing: the checks in `checks` decide over these facts alone,
//! so they can be tested on hand-built facts without mounts or loop devices.
//!
//! How a path is placed on a volume: the file is canonicalized and its ancestors compared
//! by (device, inode) with each volume's root (a `dir` volume's shared directory, or a
//! `block` volume's mount at `<state-dir>/volumes/<name>`). The deepest match is the
//! volume that holds the file; a shallower one is a volume it is nested in. The name used
//! to reach it decides whether it is the cluster path (`<state-dir>/volumes/<name>/…`) or a
//! node-local alias (the `dir` backend's directory, a symlink, another mount point).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use haven_model::{DiskBackend, ImageFormat, InvalidInput, VmDefinition};

use super::{WizardInput, display, qemu_img, relative};
use crate::procfs;

/// Everything the seven checks need to know about this node, gathered once.
#[derive(Clone, Debug)]
pub(super) struct Facts {
    /// The cluster as the caller described it, and the operator's options.
    pub input: WizardInput,
    /// The definition as read (paths as written in the file).
    pub definition: VmDefinition,
    /// The definition file first, then every file it names, in file order.
    pub entries: Vec<Entry>,
    /// The images below the top of each qcow2 chain, top first.
    pub backings: Vec<Backing>,
    /// qcow2 images whose chain could not be read: `<field> (<path>): <why>`.
    pub chain_errors: Vec<String>,
    /// The pass-through disks (entries that are block devices), in file order.
    pub pass: Vec<PassThrough>,
    /// Processes on this node that use one of the VM's images or devices.
    pub users: Vec<User>,
    /// Per volume (same index as `input.volumes`): a `block` volume's device on this node
    /// and the whole disk it is a partition of, where its UUID names a device here.
    pub whole_disks: Vec<Option<(PathBuf, String)>>,
}

/// How a path reaches the volume that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Via {
    /// `<state-dir>/volumes/<name>/…` of the volume itself.
    Cluster,
    /// The `dir` backend's shared directory (`params.path`).
    DirPath,
    /// A symlink elsewhere.
    Symlink,
    /// Another mount point of the same filesystem (a bind mount), at this path.
    OtherMount(PathBuf),
    /// The cluster path of another volume (the file is on a volume mounted inside it, or a
    /// symlink on it points here).
    Through(usize),
}

/// Where a file is: on which volume, by which name.
#[derive(Clone, Debug)]
pub(super) struct Located {
    /// The volume whose filesystem holds the file.
    pub volume: Option<usize>,
    /// The path below that volume's root.
    pub rel: PathBuf,
    pub via: Via,
    /// Volumes it is nested in (their root is an ancestor of the volume's root), or reached
    /// through.
    pub outer: Vec<usize>,
    pub canonical: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Definition,
    Boot,
    Image(ImageFormat),
    PassThrough,
}

/// One file the VM needs.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// `definition`, `boot.kernel`, `disks[0].path`.
    pub field: String,
    /// As written in the definition (or given for the definition file).
    pub written: String,
    /// Absolute, in the cluster form when the definition is on a volume.
    pub path: PathBuf,
    /// Where to read it on this node.
    pub local: PathBuf,
    pub role: Role,
    /// None for a pass-through device (see [`PassThrough`]) or a file that vanished.
    pub at: Option<Located>,
}

/// One image of a backing chain below the top one.
#[derive(Clone, Debug)]
pub(super) struct Backing {
    /// The disk entry at the top of the chain.
    pub top: usize,
    /// The image that refers to it, on this node.
    pub child: PathBuf,
    /// The reference as stored in the child.
    pub stored: String,
    pub format: String,
    pub file: PathBuf,
    pub at: Option<Located>,
    /// Where the child itself is.
    pub child_at: Option<Located>,
    /// The reference `--fix` would store instead ([`rebase_reference`]) reaches this very
    /// file on this node.
    pub rebase_reaches_file: bool,
}

/// A block device given whole to the guest.
#[derive(Clone, Debug)]
pub(super) struct PassThrough {
    /// Its entry.
    pub entry: usize,
    /// The `block` disk resource whose UUID names the same device here.
    pub volume: Option<usize>,
    /// The device, canonical.
    pub device: PathBuf,
    /// Its filesystem UUID (`blkid`), read only when no disk resource is the device.
    pub uuid: Option<String>,
    /// `/dev/disk/by-uuid/<the volume's uuid>` exists on this node.
    pub stable_name_here: bool,
}

/// A process that uses one of the VM's disks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct User {
    pub pid: i32,
    pub command: String,
    /// The file or device it uses.
    pub file: String,
    /// `open` (a file descriptor) or `named` (on its command line).
    pub how: &'static str,
}

#[derive(Clone, Debug)]
struct Root {
    canonical: PathBuf,
    dev: u64,
    ino: u64,
}

struct Ctx<'a> {
    input: &'a WizardInput,
    roots: Vec<Option<Root>>,
}

impl Ctx<'_> {
    /// Where to read `p` on this node: a cluster path of a `dir` volume that is not exposed
    /// here is read through the volume's shared directory.
    fn local(&self, p: &Path) -> PathBuf {
        if let Some((i, rest)) = self.input.lexical(p)
            && fs::symlink_metadata(self.input.cluster_root(i)).is_err()
            && self.input.volumes[i].params.backend == DiskBackend::Dir
            && let Some(dir) = &self.input.volumes[i].params.path
        {
            return Path::new(dir).join(rest);
        }
        p.to_path_buf()
    }

    fn locate(&self, given: &Path) -> Option<Located> {
        let canonical = fs::canonicalize(self.local(given)).ok()?;
        let mut matches: Vec<(usize, PathBuf)> = Vec::new();
        for anc in canonical.ancestors() {
            let Ok(m) = fs::metadata(anc) else { continue };
            for (i, r) in self.roots.iter().enumerate() {
                if let Some(r) = r
                    && r.dev == m.dev()
                    && r.ino == m.ino()
                    && !matches.iter().any(|(j, _)| *j == i)
                {
                    matches.push((i, anc.to_path_buf()));
                }
            }
        }
        let lexical = self.input.lexical(given).map(|(i, _)| i);
        let Some((w, anc)) = matches.first().cloned() else {
            return Some(Located { volume: None, rel: canonical.clone(), via: Via::Cluster, outer: vec![], canonical });
        };
        let rel = canonical.strip_prefix(&anc).map(Path::to_path_buf).unwrap_or_default();
        let mut outer: Vec<usize> = matches.iter().skip(1).map(|(i, _)| *i).collect();
        let via = match lexical {
            Some(l) if l == w => Via::Cluster,
            Some(l) => {
                if !outer.contains(&l) {
                    outer.push(l);
                }
                Via::Through(l)
            }
            None => {
                let dir = self.input.volumes[w].params.path.as_deref().map(Path::new);
                let root = self.roots[w].as_ref().map(|r| r.canonical.clone()).unwrap_or_default();
                if dir.is_some_and(|d| given.starts_with(d)) {
                    Via::DirPath
                } else if canonical.starts_with(&root) {
                    Via::Symlink
                } else {
                    Via::OtherMount(anc)
                }
            }
        };
        Some(Located { volume: Some(w), rel, via, outer, canonical })
    }
}

fn root_of(v: &super::WizardVolume, volumes_dir: &Path) -> Option<Root> {
    let path = match v.params.backend {
        DiskBackend::Dir => PathBuf::from(v.params.path.as_deref()?),
        DiskBackend::Block => {
            // Mounted only while online here: a mount point differs in device from its parent.
            let at = volumes_dir.join(&v.params.volume_name);
            let m = fs::metadata(&at).ok()?;
            let parent = fs::metadata(at.parent()?).ok()?;
            if m.dev() == parent.dev() {
                return None;
            }
            at
        }
    };
    let canonical = fs::canonicalize(&path).ok()?;
    let m = fs::metadata(&canonical).ok()?;
    Some(Root { canonical, dev: m.dev(), ino: m.ino() })
}

/// Reads the definition and everything the checks look at. `Err` is bad input (no such
/// file, a definition that does not parse, a named file that cannot be read), with the
/// field named.
pub(super) fn gather(input: &WizardInput) -> Result<Facts, InvalidInput> {
    if !input.definition.is_absolute() {
        return Err(InvalidInput::new(
            "path",
            format!(
                "{:?} is not an absolute path; give the definition file's full path on node {:?}",
                input.definition.display().to_string(),
                input.node
            ),
        ));
    }
    let volumes_dir = input.volumes_dir();
    let roots = input.volumes.iter().map(|v| root_of(v, &volumes_dir)).collect();
    let cx = Ctx { input, roots };
    let def_local = cx.local(&input.definition);
    let text = crate::vm_config::read_definition(&def_local).map_err(|e| {
        InvalidInput::new(
            "path",
            format!(
                "{} (on node {:?}); give the path of a VM definition file (TOML, or JSON ending in .json) on that node",
                e.message.replace(&def_local.display().to_string(), &input.definition.display().to_string()),
                input.node
            ),
        )
    })?;
    let def = VmDefinition::parse_file(&text, &input.definition.to_string_lossy())?;

    // The definition itself, then every file it names, resolved against the definition's
    // directory in its cluster form (so relative paths never look like aliases).
    let def_at = cx.locate(&input.definition);
    let def_cluster = def_at
        .as_ref()
        .and_then(|a| input.cluster_path(a))
        .filter(|_| def_at.as_ref().is_some_and(|a| a.volume.is_some()));
    let base = def_cluster.as_deref().unwrap_or(&input.definition).parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut entries = vec![Entry {
        field: "definition".into(),
        written: display(&input.definition),
        path: input.definition.clone(),
        local: def_local,
        role: Role::Definition,
        at: def_at,
    }];
    let mut named: Vec<(String, String, Role)> = Vec::new();
    if let Some(k) = &def.boot.kernel {
        named.push(("boot.kernel".into(), k.clone(), Role::Boot));
    }
    if let Some(i) = &def.boot.initrd {
        named.push(("boot.initrd".into(), i.clone(), Role::Boot));
    }
    for (i, d) in def.disks.iter().enumerate() {
        named.push((format!("disks[{i}].path"), d.path.clone(), Role::Image(d.format)));
    }
    for (field, written, mut role) in named {
        let path = base.join(&written);
        let local = cx.local(&path);
        let m = fs::metadata(&local).map_err(|e| {
            InvalidInput::new(
                field.clone(),
                format!(
                    "{} ({written:?} in {}) cannot be read on node {:?}: {e}; fix the definition",
                    path.display(),
                    input.definition.display(),
                    input.node
                ),
            )
        })?;
        if m.file_type().is_block_device() && matches!(role, Role::Image(_)) {
            role = Role::PassThrough;
        } else if !m.is_file() {
            return Err(InvalidInput::new(
                field,
                format!("{} is not a file (nor, for a disk, a block device); fix the definition", path.display()),
            ));
        }
        let at = if role == Role::PassThrough { None } else { cx.locate(&path) };
        entries.push(Entry { field, written, path, local, role, at });
    }

    // Backing chains of the qcow2 images.
    let mut backings: Vec<Backing> = Vec::new();
    let mut chain_errors: Vec<String> = Vec::new();
    for (idx, e) in entries.iter().enumerate() {
        if e.role != Role::Image(ImageFormat::Qcow2) {
            continue;
        }
        match qemu_img::backing_chain(&e.local) {
            Ok(chain) => {
                for (child, stored, format, file) in chain {
                    let at = cx.locate(&file);
                    let child_at = cx.locate(&child);
                    let mut b =
                        Backing { top: idx, child, stored, format, file, at, child_at, rebase_reaches_file: false };
                    b.rebase_reaches_file = rebase_reference(input, &b).is_some_and(|r| {
                        fs::metadata(b.child.parent().unwrap_or(Path::new("/")).join(&r))
                            .ok()
                            .zip(fs::metadata(&b.file).ok())
                            .is_some_and(|(x, y)| x.dev() == y.dev() && x.ino() == y.ino())
                    });
                    backings.push(b);
                }
            }
            Err(m) => chain_errors.push(format!("{} ({}): {m}", e.field, e.path.display())),
        }
    }

    // Pass-through devices: the block disk resource with the same device.
    let mut pass = Vec::new();
    for (idx, e) in entries.iter().enumerate().filter(|(_, e)| e.role == Role::PassThrough) {
        let device = fs::canonicalize(&e.local).unwrap_or_else(|_| e.local.clone());
        let rdev = fs::metadata(&device).map(|m| m.rdev()).unwrap_or(0);
        let volume = input.volumes.iter().position(|v| {
            v.params.backend == DiskBackend::Block
                && v.params.uuid.as_deref().and_then(uuid_device).is_some_and(|(_, r)| r == rdev)
        });
        let uuid = if volume.is_none() { blkid_uuid(&device) } else { None };
        let stable_name_here = volume.is_some_and(|v| {
            Path::new(&format!("/dev/disk/by-uuid/{}", input.volumes[v].params.uuid.as_deref().unwrap_or(""))).exists()
        });
        pass.push(PassThrough { entry: idx, volume, device, uuid, stable_name_here });
    }

    let users = processes_using(&super::checks::image_files(&entries, &backings));
    // Partitions of one shared disk move together.
    let whole_disks = input
        .volumes
        .iter()
        .map(|v| {
            v.params
                .uuid
                .as_deref()
                .filter(|_| v.params.backend == DiskBackend::Block)
                .and_then(uuid_device)
                .and_then(|(dev, _)| parent_disk(&dev).map(|d| (dev, d)))
        })
        .collect();
    Ok(Facts { input: input.clone(), definition: def, entries, backings, chain_errors, pass, users, whole_disks })
}

/// The reference `--fix` would store in a backing file's child: the backing file's cluster
/// path relative to the child's directory in its cluster form (the same on every node,
/// whatever the state directory). None where either has no cluster path.
pub(super) fn rebase_reference(input: &WizardInput, b: &Backing) -> Option<PathBuf> {
    let right = input.cluster_path(b.at.as_ref()?)?;
    let child = input.cluster_path(b.child_at.as_ref()?)?;
    Some(relative(child.parent()?, &right))
}

/// The device a block volume's filesystem UUID names on this node (`/dev/disk/by-uuid/<uuid>`).
/// Without udev's links (containers), `blkid -U` finds it.
fn uuid_device(uuid: &str) -> Option<(PathBuf, u64)> {
    let link = Path::new("/dev/disk/by-uuid").join(uuid);
    let dev = match fs::canonicalize(&link) {
        Ok(d) => d,
        Err(_) => {
            let out = Command::new("blkid").arg("-U").arg(uuid).output().ok()?;
            let d = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || d.is_empty() {
                return None;
            }
            PathBuf::from(d)
        }
    };
    let rdev = fs::metadata(&dev).ok()?.rdev();
    Some((dev, rdev))
}

/// The whole disk a block device belongs to: itself, or the parent of a partition
/// (`/sys/class/block/<dev>/..`).
fn parent_disk(device: &Path) -> Option<String> {
    let name = device.file_name()?.to_string_lossy().into_owned();
    let sys = fs::canonicalize(Path::new("/sys/class/block").join(&name)).ok()?;
    if sys.join("partition").exists() {
        return sys.parent()?.file_name().map(|n| n.to_string_lossy().into_owned());
    }
    Some(name)
}

/// A block device's filesystem UUID, from `blkid`.
fn blkid_uuid(device: &Path) -> Option<String> {
    let out = Command::new("blkid").args(["-s", "UUID", "-o", "value"]).arg(device).output().ok()?;
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !uuid.is_empty()).then_some(uuid)
}

/// Processes on this node that have one of `files` open (same device and inode, or the
/// same block device) or name it on their command line. `names` are the spellings to look
/// for on command lines.
fn processes_using(files: &[(PathBuf, Vec<String>)]) -> Vec<User> {
    let me = std::process::id() as i32;
    let ids: Vec<(u64, u64, u64, String)> = files
        .iter()
        .filter_map(|(p, _)| {
            let m = fs::metadata(p).ok()?;
            let rdev = if m.file_type().is_block_device() { m.rdev() } else { 0 };
            Some((m.dev(), m.ino(), rdev, display(p)))
        })
        .collect();
    let mut users = Vec::new();
    let Ok(pids) = procfs::pids() else { return users };
    for pid in pids {
        if pid == me {
            continue;
        }
        let Some(args) = procfs::cmdline(pid) else { continue };
        let mut command = args.join(" ");
        if command.chars().count() > 400 {
            command = command.chars().take(397).collect::<String>() + "...";
        }
        let mut found: Option<(String, &'static str)> = None;
        for fd in procfs::open_files(pid) {
            let Ok(m) = fs::metadata(fd) else { continue };
            let rdev = if m.file_type().is_block_device() { m.rdev() } else { 0 };
            if let Some((_, _, _, name)) = ids
                .iter()
                .find(|(dev, ino, r, _)| (*r != 0 && *r == rdev) || (*r == 0 && *dev == m.dev() && *ino == m.ino()))
            {
                found = Some((name.clone(), "open"));
                break;
            }
        }
        if found.is_none() {
            'outer: for (p, names) in files {
                for n in names {
                    if args.iter().skip(1).any(|a| names_path(a, n)) {
                        found = Some((display(p), "named"));
                        break 'outer;
                    }
                }
            }
        }
        if let Some((file, how)) = found {
            users.push(User { pid, command, file, how });
        }
    }
    users.sort_by_key(|u| u.pid);
    users
}

/// Whether command-line argument `arg` names `path` (whole, or as a `file=` style value).
fn names_path(arg: &str, path: &str) -> bool {
    let mut from = 0;
    while let Some(i) = arg[from..].find(path) {
        let start = from + i;
        let end = start + path.len();
        let before_ok = start == 0 || matches!(arg.as_bytes()[start - 1], b'=' | b',' | b':');
        let after_ok = end == arg.len() || matches!(arg.as_bytes()[end], b',' | b':');
        if before_ok && after_ok {
            return true;
        }
        from = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_name_a_path_only_as_a_whole_value() {
        assert!(names_path("file=/v/web.qcow2,format=qcow2", "/v/web.qcow2"));
        assert!(names_path("/v/web.qcow2", "/v/web.qcow2"));
        assert!(!names_path("file=/v/web.qcow2.bak", "/v/web.qcow2"));
        assert!(!names_path("/old/v/web.qcow2", "/v/web.qcow2"));
    }
}
