//! The HA wizard's storage checks (`haven vm make-ha`), run on the node where the VM is
//! defined: they read that node's files, mounts and processes, and the cluster's `disk`
//! resources as the caller describes them ([`WizardInput`]). They decide which group the
//! VM joins and which disk resources it needs; they change nothing, except
//! [`apply_fixes`], which rewrites node-local paths to their cluster-managed form.
//!
//! Blocking I/O (`/proc`, `stat`, `qemu-img`): call from a blocking thread. Building the
//! cluster change (the state commands) is the agent's job, not this module's.
//!
//! How a path is placed on a volume: the file is canonicalized and its ancestors compared
//! by (device, inode) with each volume's root (a `dir` volume's shared directory, or a
//! `block` volume's mount at `<state-dir>/volumes/<name>`). The deepest match is the
//! volume that holds the file; a shallower one is a volume it is nested in. The name used
//! to reach it decides whether it is the cluster path (`<state-dir>/volumes/<name>/…`) or a
//! node-local alias (the `dir` backend's directory, a symlink, another mount point).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use haven_model::{CheckResult, DiskBackend, DiskParams, HaCheck, HaPathFix, ImageFormat, InvalidInput, VmDefinition};

/// A `disk` resource of the cluster, as the wizard needs to know it.
#[derive(Clone, Debug)]
pub struct WizardVolume {
    /// The disk resource's name.
    pub resource: String,
    pub group: String,
    pub params: DiskParams,
    /// The cluster state says it is online on the wizard's node.
    pub online_here: bool,
    /// Its state for messages: `online on "node2"`, `offline`.
    pub state: String,
}

/// A group of the cluster, as the wizard needs to know it.
#[derive(Clone, Debug, Default)]
pub struct WizardGroup {
    pub name: String,
    /// Its `vm` resources.
    pub vms: Vec<String>,
    /// It holds nothing but `disk` resources (so they may move into the VM's group).
    pub only_disks: bool,
}

/// What the wizard checks: a definition file on this node, against the cluster's volumes.
#[derive(Clone, Debug)]
pub struct WizardInput {
    /// This node's name.
    pub node: String,
    pub state_dir: PathBuf,
    /// The definition file, absolute, as the operator gave it.
    pub definition: PathBuf,
    pub volumes: Vec<WizardVolume>,
    pub groups: BTreeMap<String, WizardGroup>,
    /// `--group`: the group the VM must join (created if it does not exist).
    pub group: Option<String>,
    /// `--fix`: plan rewrites of node-local paths.
    pub fix: bool,
}

/// What the checks found and decided.
#[derive(Clone, Debug, Default)]
pub struct WizardOutcome {
    /// Checks 1–7, in order.
    pub checks: Vec<HaCheck>,
    /// The definition as read (paths as written in the file).
    pub definition: Option<VmDefinition>,
    /// The group the VM joins.
    pub group: Option<String>,
    /// That group does not exist yet.
    pub new_group: bool,
    /// The disk resources the VM needs (its `vm-config` depends on them), in file order.
    pub disks: Vec<String>,
    /// Those of them that move into the group.
    pub moves: Vec<String>,
    /// The definition's `vm-config` path, `<volume-name>/<file>`.
    pub config_path: Option<String>,
    /// The rewrites `--fix` makes.
    pub fixes: Vec<HaPathFix>,
    fix_plan: FixPlan,
}

impl WizardOutcome {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.result == CheckResult::Fail)
    }
}

#[derive(Clone, Debug, Default)]
struct FixPlan {
    /// The definition file on this node, and (quoted text before, after) replacements.
    definition: Option<PathBuf>,
    text_edits: Vec<(String, String)>,
    /// qcow2 images whose backing reference changes: (image on this node, new reference, format).
    rebases: Vec<(PathBuf, String, String)>,
}

pub const CHECK_TITLES: [(&str, &str); 8] = [
    ("vm-stopped", "The VM is stopped (no process uses its disks)"),
    ("shared-storage", "Definition and disk images are on cluster volumes online on this node"),
    ("shared-volume", "VMs sharing a volume or a disk are in one group"),
    ("backing-chain", "Every image of a differencing chain is on a volume of the group"),
    ("cluster-path", "Paths use the cluster-managed volume path, not a node-local name"),
    ("nested-volume", "A volume mounted inside another is in the same group"),
    ("pass-through", "Pass-through block devices are disk resources of the group"),
    ("cluster-changes", "The cluster accepts the changes (one request, all or nothing)"),
];

/// A check's report entry.
pub fn check(id: u8, result: CheckResult, message: impl Into<String>) -> HaCheck {
    let (slug, title) = CHECK_TITLES[usize::from(id - 1)];
    HaCheck { id, check: slug.into(), title: title.into(), result, message: message.into() }
}

/// How a path reaches the volume that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Via {
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

#[derive(Clone, Debug)]
struct Located {
    /// The volume whose filesystem holds the file.
    volume: Option<usize>,
    /// The path below that volume's root.
    rel: PathBuf,
    via: Via,
    /// Volumes it is nested in (their root is an ancestor of the volume's root), or reached
    /// through.
    outer: Vec<usize>,
    canonical: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Definition,
    Boot,
    Image(ImageFormat),
    PassThrough,
}

/// One file the VM needs.
#[derive(Clone, Debug)]
struct Entry {
    /// `definition`, `boot.kernel`, `disks[0].path`.
    field: String,
    /// As written in the definition (or given for the definition file).
    written: String,
    /// Absolute, in the cluster form when the definition is on a volume.
    path: PathBuf,
    /// Where to read it on this node.
    local: PathBuf,
    role: Role,
    at: Option<Located>,
}

#[derive(Clone, Debug)]
struct Root {
    canonical: PathBuf,
    dev: u64,
    ino: u64,
}

/// One image of a backing chain below the top one.
#[derive(Clone, Debug)]
struct Backing {
    /// The disk entry at the top of the chain.
    top: usize,
    /// The image that refers to it, on this node.
    child: PathBuf,
    /// The reference as stored in the child.
    stored: String,
    format: String,
    file: PathBuf,
    at: Option<Located>,
}

struct Ctx<'a> {
    input: &'a WizardInput,
    volumes_dir: PathBuf,
    roots: Vec<Option<Root>>,
}

fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

impl Ctx<'_> {
    fn vol(&self, i: usize) -> &WizardVolume {
        &self.input.volumes[i]
    }

    /// `<state-dir>/volumes/<name>`.
    fn cluster_root(&self, i: usize) -> PathBuf {
        self.volumes_dir.join(&self.vol(i).params.volume_name)
    }

    /// The volume a path names lexically (`<state-dir>/volumes/<name>/rest`), with `rest`.
    fn lexical(&self, p: &Path) -> Option<(usize, PathBuf)> {
        let p = normalize(p);
        let rest = p.strip_prefix(&self.volumes_dir).ok()?;
        if !rest.components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        let mut parts = rest.components();
        let name = parts.next()?.as_os_str().to_string_lossy().into_owned();
        let i = self.input.volumes.iter().position(|v| v.params.volume_name == name)?;
        Some((i, parts.as_path().to_path_buf()))
    }

    /// Where to read `p` on this node: a cluster path of a `dir` volume that is not exposed
    /// here is read through the volume's shared directory.
    fn local(&self, p: &Path) -> PathBuf {
        if let Some((i, rest)) = self.lexical(p)
            && fs::symlink_metadata(self.cluster_root(i)).is_err()
            && self.vol(i).params.backend == DiskBackend::Dir
            && let Some(dir) = &self.vol(i).params.path
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
        let lexical = self.lexical(given).map(|(i, _)| i);
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
                let dir = self.vol(w).params.path.as_deref().map(Path::new);
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

    /// A file's cluster path: `<state-dir>/volumes/<name>/<rel>`.
    fn cluster_path(&self, at: &Located) -> Option<PathBuf> {
        at.volume.map(|w| self.cluster_root(w).join(&at.rel))
    }

    fn describe_volume(&self, i: usize) -> String {
        let v = self.vol(i);
        format!("volume {} (disk resource {:?}, group {:?})", v.params.volume_name, v.resource, v.group)
    }
}

/// `p` with `.` and `..` resolved by name (a relative path in a definition climbs from
/// the definition's directory the same way on every node).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `to` relative to directory `from` (both absolute, without `..`).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

fn root_of(v: &WizardVolume, volumes_dir: &Path) -> Option<Root> {
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
pub fn parent_disk(device: &Path) -> Option<String> {
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

/// A process that uses one of the VM's disks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub pid: i32,
    pub command: String,
    /// The file or device it uses.
    pub file: String,
    /// `open` (a file descriptor) or `named` (on its command line).
    pub how: &'static str,
}

/// Processes on this node that have one of `files` open (same device and inode, or the
/// same block device) or name it on their command line. `names` are the spellings to look
/// for on command lines.
pub fn processes_using(files: &[(PathBuf, Vec<String>)]) -> Vec<User> {
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
    let Ok(entries) = fs::read_dir("/proc") else { return users };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> =
            raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let mut command = args.join(" ");
        if command.chars().count() > 400 {
            command = command.chars().take(397).collect::<String>() + "...";
        }
        let mut found: Option<(String, &'static str)> = None;
        if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                let Ok(m) = fs::metadata(fd.path()) else { continue };
                let rdev = if m.file_type().is_block_device() { m.rdev() } else { 0 };
                if let Some((_, _, _, name)) = ids
                    .iter()
                    .find(|(dev, ino, r, _)| (*r != 0 && *r == rdev) || (*r == 0 && *dev == m.dev() && *ino == m.ino()))
                {
                    found = Some((name.clone(), "open"));
                    break;
                }
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

/// The backing chain of a qcow2 image, from `qemu-img info --backing-chain`:
/// (image, stored backing reference, backing format) for each image that has a backing
/// file, top first.
pub fn backing_chain(image: &Path) -> Result<Vec<(PathBuf, String, String, PathBuf)>, String> {
    let out = Command::new("qemu-img")
        .args(["info", "--backing-chain", "--output=json", "-U"])
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run `qemu-img` ({e}); install it (Debian: qemu-utils)"))?;
    if !out.status.success() {
        return Err(format!(
            "`qemu-img info --backing-chain {}` failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`qemu-img info` printed no JSON for {} ({e})", image.display()))?;
    let list = match v {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    let mut chain = Vec::new();
    for item in &list {
        let Some(stored) = item["backing-filename"].as_str() else { continue };
        let file = item["filename"].as_str().unwrap_or_default();
        let full = item["full-backing-filename"].as_str().unwrap_or(stored);
        let format = item["backing-filename-format"].as_str().unwrap_or("qcow2");
        chain.push((PathBuf::from(file), stored.to_string(), format.to_string(), PathBuf::from(full)));
    }
    Ok(chain)
}

/// Reads the definition and runs checks 1–7. `Err` is bad input (no such file, a
/// definition that does not parse), with the field named.
pub fn run(input: &WizardInput) -> Result<WizardOutcome, InvalidInput> {
    let volumes_dir = input.state_dir.join("volumes");
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
    let roots = input.volumes.iter().map(|v| root_of(v, &volumes_dir)).collect();
    let cx = Ctx { input, volumes_dir, roots };
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
        .and_then(|a| cx.cluster_path(a))
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
        match backing_chain(&e.local) {
            Ok(chain) => {
                for (child, stored, format, file) in chain {
                    let at = cx.locate(&file);
                    backings.push(Backing { top: idx, child, stored, format, file, at });
                }
            }
            Err(m) => chain_errors.push(format!("{} ({}): {m}", e.field, e.path.display())),
        }
    }

    let mut out = WizardOutcome { definition: Some(def.clone()), ..Default::default() };

    // Which disk resources the VM needs, and which group it joins.
    let mut needed: Vec<usize> = Vec::new();
    let mut add = |i: usize| {
        if !needed.contains(&i) {
            needed.push(i);
        }
    };
    for e in &entries {
        if let Some(a) = &e.at
            && let Some(w) = a.volume
        {
            add(w);
            a.outer.iter().for_each(|o| add(*o));
        }
    }
    for b in &backings {
        if let Some(a) = &b.at
            && let Some(w) = a.volume
        {
            add(w);
            a.outer.iter().for_each(|o| add(*o));
        }
    }
    // Pass-through devices: the block disk resource with the same device.
    let mut pass: Vec<(usize, Option<usize>, PathBuf)> = Vec::new(); // (entry, volume, device)
    for (idx, e) in entries.iter().enumerate().filter(|(_, e)| e.role == Role::PassThrough) {
        let dev = fs::canonicalize(&e.local).unwrap_or_else(|_| e.local.clone());
        let rdev = fs::metadata(&dev).map(|m| m.rdev()).unwrap_or(0);
        let vol = input.volumes.iter().position(|v| {
            v.params.backend == DiskBackend::Block
                && v.params.uuid.as_deref().and_then(uuid_device).is_some_and(|(_, r)| r == rdev)
        });
        if let Some(v) = vol {
            add(v);
        }
        pass.push((idx, vol, dev));
    }

    let group_of = |i: usize| input.volumes[i].group.clone();
    let mut groups_needed: Vec<String> = Vec::new();
    for i in &needed {
        let g = group_of(*i);
        if !groups_needed.contains(&g) {
            groups_needed.push(g);
        }
    }
    let with_vms: Vec<String> =
        groups_needed.iter().filter(|g| input.groups.get(*g).is_some_and(|g| !g.vms.is_empty())).cloned().collect();
    let mut group_errors: Vec<String> = Vec::new();
    let target: Option<String> = match &input.group {
        Some(g) => Some(g.clone()),
        None if with_vms.len() >= 2 => {
            let list = with_vms
                .iter()
                .map(|g| format!("group {g:?} (VMs {})", quoted(&input.groups[g].vms)))
                .collect::<Vec<_>>()
                .join(" and ");
            group_errors.push(format!(
                "the VM's files are on volumes of {list}; a VM lives in one group, and these groups already hold other \
                 VMs: keep the VM's files on the volumes of one of them"
            ));
            None
        }
        None => with_vms.first().or(groups_needed.first()).cloned(),
    };
    out.new_group = target.as_ref().is_some_and(|t| !input.groups.contains_key(t));
    if let (Some(t), Some(g)) = (&target, &input.group)
        && t == g
        && !out.new_group
        && with_vms.iter().any(|w| w != g)
    {
        let others: Vec<String> = with_vms.iter().filter(|w| *w != g).cloned().collect();
        group_errors.push(format!(
            "--group {g:?} was asked for, but the VM's files are on volumes of group(s) {} that already hold VMs; \
             a disk resource moves only out of a group that holds nothing but disks: run without --group",
            quoted(&others)
        ));
    }
    // Disk resources in another group move in, if their group holds nothing else.
    let mut cannot_move: BTreeMap<usize, String> = BTreeMap::new();
    if let Some(t) = &target {
        for i in &needed {
            let v = &input.volumes[*i];
            if &v.group == t {
                continue;
            }
            let only_disks = input.groups.get(&v.group).is_some_and(|g| g.only_disks);
            if only_disks {
                out.moves.push(v.resource.clone());
            } else {
                cannot_move.insert(
                    *i,
                    format!(
                        "{} is in group {:?}, which holds other resources than disks, so it cannot move into group \
                         {t:?}: keep the VM's files on the volumes of one group",
                        cx.describe_volume(*i),
                        v.group
                    ),
                );
            }
        }
    }
    out.group = target.clone();
    out.disks = needed.iter().map(|i| input.volumes[*i].resource.clone()).collect();
    let in_group = |i: usize| {
        target.as_ref().is_some_and(|t| &input.volumes[i].group == t) || {
            out.moves.contains(&input.volumes[i].resource)
        }
    };

    // 1. Not running.
    let image_files: Vec<(PathBuf, Vec<String>)> = entries
        .iter()
        .filter(|e| matches!(e.role, Role::Image(_) | Role::PassThrough))
        .map(|e| {
            let mut names = vec![display(&e.path), display(&e.local)];
            if let Some(a) = &e.at {
                names.push(display(&a.canonical));
            }
            names.dedup();
            (e.local.clone(), names)
        })
        .chain(backings.iter().map(|b| (b.file.clone(), vec![display(&b.file)])))
        .collect();
    let users = processes_using(&image_files);
    out.checks.push(if image_files.is_empty() {
        check(1, CheckResult::Skip, "the VM has no disk image, so no process can be running it from its disks")
    } else if users.is_empty() {
        check(
            1,
            CheckResult::Pass,
            format!(
                "no process on node {:?} has {} open or names it on its command line (a saved state is fine)",
                input.node,
                image_files.iter().map(|(p, _)| display(p)).collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        let list = users
            .iter()
            .map(|u| {
                format!(
                    "{} is {} by pid {} ({})",
                    u.file,
                    if u.how == "open" { "open" } else { "named" },
                    u.pid,
                    u.command
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        check(
            1,
            CheckResult::Fail,
            format!(
                "the VM is running on node {:?}: {list}; shut the VM down (or save its state) and run the wizard again",
                input.node
            ),
        )
    });

    // 2. On cluster storage, online here.
    let mut problems: Vec<String> = Vec::new();
    let mut fine: Vec<String> = Vec::new();
    for e in entries.iter().filter(|e| e.role != Role::PassThrough) {
        let a = e.at.as_ref();
        match a.and_then(|a| a.volume) {
            None => {
                let what = if e.role == Role::Definition { "the definition".to_string() } else { e.field.clone() };
                let sample = input.volumes.first().map(|v| v.params.volume_name.clone()).unwrap_or("vol1".into());
                problems.push(format!(
                    "{what} {} is not on any cluster volume; copy it onto a disk resource's volume (under {}/<volume>/) \
                     or, if its filesystem is shared, make that a disk resource: `haven resource create {sample} --group \
                     <group> --type disk --params-json '{{\"backend\":\"dir\",\"volume_id\":\"<id>\",\"volume_name\":\"{sample}\",\
                     \"path\":\"<shared directory>\"}}'` (the directory needs a .haven-volume file holding <id>)",
                    e.path.display(),
                    cx.volumes_dir.display()
                ));
            }
            Some(w) => {
                let v = &input.volumes[w];
                let moving = out.moves.contains(&v.resource);
                if moving && !matches!(v.state.as_str(), "offline" | "failed") {
                    problems.push(format!(
                        "{} {} is on {}, which must move into group {:?}; the cluster moves a disk resource only \
                         while it is not running ({}): take group {:?} offline (`haven group offline {}`) and run the \
                         wizard again (it reads an offline dir volume through its shared directory)",
                        e.field,
                        e.path.display(),
                        cx.describe_volume(w),
                        target.as_deref().unwrap_or("-"),
                        v.state,
                        v.group,
                        v.group
                    ));
                } else if moving && v.params.backend == DiskBackend::Block {
                    problems.push(format!(
                        "{} {} is on block {}, which is offline and must move into group {:?}; the wizard can read a \
                         block volume only while it is mounted: keep the VM in group {:?}",
                        e.field,
                        e.path.display(),
                        cx.describe_volume(w),
                        target.as_deref().unwrap_or("-"),
                        v.group
                    ));
                } else if !moving && !v.online_here {
                    problems.push(format!(
                        "{} {} is on {}, which is {}, not online on node {:?}: bring it online there (`haven group \
                         move {} --to {}` and `haven group online {}`) and run the wizard again",
                        e.field,
                        e.path.display(),
                        cx.describe_volume(w),
                        v.state,
                        input.node,
                        v.group,
                        input.node,
                        v.group
                    ));
                } else {
                    fine.push(format!(
                        "{} on volume {}",
                        e.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                        v.params.volume_name
                    ));
                }
            }
        }
    }
    out.checks.push(if problems.is_empty() {
        let (moving, online): (Vec<usize>, Vec<usize>) =
            needed.iter().partition(|i| out.moves.contains(&input.volumes[**i].resource));
        let names = |list: &[usize]| {
            let set: BTreeSet<String> = list.iter().map(|i| input.volumes[*i].params.volume_name.clone()).collect();
            set.into_iter().collect::<Vec<_>>().join(", ")
        };
        let mut states = Vec::new();
        if !online.is_empty() {
            states.push(format!("volume(s) {} online on node {:?}", names(&online), input.node));
        }
        if !moving.is_empty() {
            states.push(format!(
                "volume(s) {} offline, read through the shared directory, moving into group {:?}",
                names(&moving),
                target.as_deref().unwrap_or("-")
            ));
        }
        check(2, CheckResult::Pass, format!("{} ({})", fine.join(", "), states.join("; ")))
    } else {
        check(2, CheckResult::Fail, problems.join("; "))
    });

    // 3. Sharing a volume or a disk: one group.
    let mut fails = group_errors.clone();
    fails.extend(cannot_move.values().cloned());
    let mut warns: Vec<String> = Vec::new();
    if let Some(t) = &target {
        if let Some(g) = input.groups.get(t)
            && !g.vms.is_empty()
        {
            let vols: Vec<String> = needed
                .iter()
                .filter(|i| &input.volumes[**i].group == t)
                .map(|i| input.volumes[*i].params.volume_name.clone())
                .collect();
            warns.push(format!(
                "group {t:?} already holds VM(s) {} on volume(s) {}; the VM joins it: these VMs will always move \
                 together",
                quoted(&g.vms),
                vols.join(", ")
            ));
        }
        // Partitions of one shared disk move together.
        let disk_of = |i: usize| {
            input.volumes[i]
                .params
                .uuid
                .as_deref()
                .filter(|_| input.volumes[i].params.backend == DiskBackend::Block)
                .and_then(uuid_device)
                .and_then(|(dev, _)| parent_disk(&dev).map(|d| (dev, d)))
        };
        for i in &needed {
            let Some((dev, disk)) = disk_of(*i) else { continue };
            for (j, other) in input.volumes.iter().enumerate() {
                if j == *i || needed.contains(&j) {
                    continue;
                }
                let Some((odev, odisk)) = disk_of(j) else { continue };
                if odisk != disk {
                    continue;
                }
                let what = format!(
                    "volume {} ({}) and volume {} ({}, disk resource {:?}) are partitions of the same disk {disk}",
                    input.volumes[*i].params.volume_name,
                    dev.display(),
                    other.params.volume_name,
                    odev.display(),
                    other.resource
                );
                if &other.group == t {
                    warns.push(format!("{what}, both in group {t:?}: they will always move together"));
                } else {
                    fails.push(format!(
                        "{what}, in group {:?}: a disk moves whole, so both volumes must be in group {t:?}; put {:?} in \
                         it (or keep the VM's files off this disk)",
                        other.group, other.resource
                    ));
                }
            }
        }
    }
    out.checks.push(if !fails.is_empty() {
        check(3, CheckResult::Fail, fails.join("; "))
    } else if !warns.is_empty() {
        check(3, CheckResult::Warn, warns.join("; "))
    } else {
        check(
            3,
            CheckResult::Pass,
            format!(
                "no other VM shares the VM's volumes; group {:?} {}",
                target.as_deref().unwrap_or("-"),
                if out.new_group { "is new" } else { "holds no other VM" }
            ),
        )
    });

    // 4. Differencing chains.
    let qcow2 = entries.iter().any(|e| e.role == Role::Image(ImageFormat::Qcow2));
    let mut outside: Vec<String> = chain_errors;
    let mut chain_text: Vec<String> = Vec::new();
    for b in &backings {
        let top = &entries[b.top];
        match b.at.as_ref().and_then(|a| a.volume) {
            None => outside.push(format!(
                "{} (backing file of {}, from {}) is not on any cluster volume: the VM would fail to start after a move; \
                 copy it onto a volume of group {:?} and point the image at it (`qemu-img rebase -u -F {} -b <new path> \
                 {}`)",
                b.file.display(),
                b.child.display(),
                top.field,
                target.as_deref().unwrap_or("-"),
                b.format,
                b.child.display()
            )),
            Some(w) if !in_group(w) => outside.push(format!(
                "{} (backing file of {}, from {}) is on {}, not in group {:?}: the VM would fail to start after a \
                 move; keep the whole chain on volumes of one group",
                b.file.display(),
                b.child.display(),
                top.field,
                cx.describe_volume(w),
                target.as_deref().unwrap_or("-")
            )),
            Some(w) => chain_text.push(format!(
                "{} → {} (volume {})",
                b.child.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                b.stored,
                input.volumes[w].params.volume_name
            )),
        }
    }
    out.checks.push(if !qcow2 {
        check(4, CheckResult::Skip, "no qcow2 image, so no differencing chain")
    } else if !outside.is_empty() {
        check(4, CheckResult::Fail, outside.join("; "))
    } else if chain_text.is_empty() {
        check(4, CheckResult::Pass, "the qcow2 image(s) have no backing file")
    } else {
        check(
            4,
            CheckResult::Pass,
            format!("every backing file is on a volume of the group: {}", chain_text.join("; ")),
        )
    });

    // 5. Cluster paths, not node-local names.
    let mut aliases: Vec<String> = Vec::new();
    let def_dir = def_cluster.as_ref().and_then(|d| d.parent().map(Path::to_path_buf));
    let mut plan = FixPlan { definition: Some(entries[0].local.clone()), ..Default::default() };
    let how = |via: &Via| -> String {
        match via {
            Via::DirPath => "the dir backend's shared directory".into(),
            Via::Symlink => "a symlink".into(),
            Via::OtherMount(m) => format!("another mount point of the same filesystem ({})", m.display()),
            _ => String::new(),
        }
    };
    for e in &entries {
        let Some(a) = &e.at else { continue };
        if !matches!(a.via, Via::DirPath | Via::Symlink | Via::OtherMount(_)) {
            continue;
        }
        let Some(right) = cx.cluster_path(a) else { continue };
        if e.role == Role::Definition {
            // The vm-config resource names it by its volume anyway.
            continue;
        }
        let rel = def_dir.as_ref().map(|d| relative(d, &right));
        aliases.push(format!(
            "{} {} reaches {} through {}, a name other nodes do not have: use the cluster path {}{}",
            e.field,
            e.written,
            cx.describe_volume(a.volume.unwrap_or_default()),
            how(&a.via),
            right.display(),
            rel.as_ref()
                .map(|r| format!(" (written relative to the definition: {:?})", display(r)))
                .unwrap_or_default()
        ));
        if let Some(r) = rel {
            let after = display(&r);
            plan.text_edits.push((e.written.clone(), after.clone()));
            out.fixes.push(HaPathFix {
                file: display(&entries[0].path),
                field: e.field.clone(),
                before: e.written.clone(),
                after,
                applied: false,
            });
        }
    }
    for (idx, e, vol, dev) in pass.iter().map(|(i, v, d)| (*i, &entries[*i], v, d)) {
        let Some(v) = vol else { continue };
        let uuid = input.volumes[*v].params.uuid.clone().unwrap_or_default();
        let right = format!("/dev/disk/by-uuid/{uuid}");
        // Only where udev made the stable name: rewriting to a name that does not exist
        // here would break the VM.
        if e.written != right && Path::new(&right).exists() {
            aliases.push(format!(
                "{} {} (device {}) is a node-local name of pass-through disk resource {:?}: use {right}, the name that \
                 is the same on every node",
                e.field,
                e.written,
                dev.display(),
                input.volumes[*v].resource
            ));
            plan.text_edits.push((e.written.clone(), right.clone()));
            out.fixes.push(HaPathFix {
                file: display(&entries[0].path),
                field: entries[idx].field.clone(),
                before: e.written.clone(),
                after: right,
                applied: false,
            });
        }
    }
    for b in &backings {
        let Some(a) = &b.at else { continue };
        if !Path::new(&b.stored).is_absolute() || !matches!(a.via, Via::DirPath | Via::Symlink | Via::OtherMount(_)) {
            continue;
        }
        let Some(right) = cx.cluster_path(a) else { continue };
        // The child refers to its backing file relative to its own directory: the same on
        // every node, whatever the state directory.
        let child_at = cx.locate(&b.child).and_then(|c| cx.cluster_path(&c));
        let rel = child_at.as_ref().and_then(|c| c.parent()).map(|d| relative(d, &right));
        aliases.push(format!(
            "backing file {:?} of {} reaches {} through {}: use the cluster path {}{}",
            b.stored,
            b.child.display(),
            cx.describe_volume(a.volume.unwrap_or_default()),
            how(&a.via),
            right.display(),
            rel.as_ref().map(|r| format!(" (relative to the image: {:?})", display(r))).unwrap_or_default()
        ));
        if let Some(r) = rel {
            // Safe only if the new reference reaches the very same file.
            let same = fs::metadata(b.child.parent().unwrap_or(Path::new("/")).join(&r))
                .ok()
                .zip(fs::metadata(&b.file).ok())
                .is_some_and(|(x, y)| x.dev() == y.dev() && x.ino() == y.ino());
            if same {
                plan.rebases.push((b.child.clone(), display(&r), b.format.clone()));
                out.fixes.push(HaPathFix {
                    file: display(&b.child),
                    field: "backing file".into(),
                    before: b.stored.clone(),
                    after: display(&r),
                    applied: false,
                });
            }
        }
    }
    let fixable = out.fixes.len() == aliases.len() && def_dir.is_some();
    out.checks.push(if aliases.is_empty() {
        check(
            5,
            CheckResult::Pass,
            "every path uses the cluster-managed volume path (or a path relative to the definition)",
        )
    } else if input.fix && fixable {
        check(
            5,
            CheckResult::Warn,
            format!("--fix rewrites {} path(s) to the cluster path: {}", out.fixes.len(), aliases.join("; ")),
        )
    } else {
        let hint = if fixable {
            "; `haven vm make-ha --fix` rewrites them"
        } else if input.fix {
            "; --fix cannot rewrite all of them safely: edit them by hand"
        } else {
            ""
        };
        check(5, CheckResult::Fail, format!("{}{hint}", aliases.join("; ")))
    });
    out.fix_plan = plan;

    // 6. Nested volumes.
    let mut nested_fail: Vec<String> = Vec::new();
    let mut nested_ok: Vec<String> = Vec::new();
    let all_located = entries
        .iter()
        .filter_map(|e| e.at.as_ref().map(|a| (e.field.clone(), e.path.clone(), a)))
        .chain(backings.iter().filter_map(|b| b.at.as_ref().map(|a| ("backing file".to_string(), b.file.clone(), a))));
    let mut seen: BTreeSet<(usize, usize)> = BTreeSet::new();
    for (field, path, a) in all_located {
        let Some(w) = a.volume else { continue };
        for o in &a.outer {
            if !seen.insert((w, *o)) {
                continue;
            }
            let what = format!(
                "{field} {} is on {}, mounted inside {}",
                path.display(),
                cx.describe_volume(w),
                cx.describe_volume(*o)
            );
            if in_group(w) && in_group(*o) {
                nested_ok.push(format!("{what}: both in group {:?}", target.as_deref().unwrap_or("-")));
            } else {
                nested_fail.push(format!(
                    "{what}: a volume mounted inside another needs both disk resources in one group; put {:?} and {:?} \
                     in one group (the wizard moves disk resources of groups that hold only disks, while offline)",
                    input.volumes[w].resource, input.volumes[*o].resource
                ));
            }
        }
    }
    out.checks.push(if !nested_fail.is_empty() {
        check(6, CheckResult::Fail, nested_fail.join("; "))
    } else if !nested_ok.is_empty() {
        check(6, CheckResult::Pass, nested_ok.join("; "))
    } else {
        check(6, CheckResult::Skip, "no file is on a volume mounted inside another volume")
    });

    // 7. Pass-through disks.
    let mut pt_fail: Vec<String> = Vec::new();
    let mut pt_ok: Vec<String> = Vec::new();
    for (idx, vol, dev) in &pass {
        let e = &entries[*idx];
        match vol {
            None => {
                let uuid = blkid_uuid(dev);
                let fix = match &uuid {
                    Some(u) => format!(
                        "create it: `haven resource create <name> --group {} --type disk --params-json \
                         '{{\"backend\":\"block\",\"volume_id\":\"<id>\",\"volume_name\":\"<name>\",\"uuid\":\"{u}\"}}'`",
                        target.as_deref().unwrap_or("<group>")
                    ),
                    None => "it has no filesystem UUID (`blkid` shows none), so it cannot be a disk resource yet: \
                             give it a filesystem with a UUID, or share it another way"
                        .to_string(),
                };
                pt_fail.push(format!(
                    "{} {} (device {}) is a whole block device given to the guest, and no disk resource of the cluster \
                     is that device; {fix}",
                    e.field,
                    e.written,
                    dev.display()
                ));
            }
            Some(v) if !in_group(*v) => pt_fail.push(format!(
                "{} {} is pass-through {}, not of group {:?}; a pass-through disk moves with its VM: keep it in the \
                 VM's group",
                e.field,
                e.written,
                cx.describe_volume(*v),
                target.as_deref().unwrap_or("-")
            )),
            Some(v) => {
                let stable = format!("/dev/disk/by-uuid/{}", input.volumes[*v].params.uuid.as_deref().unwrap_or(""));
                let note = if Path::new(&stable).exists() {
                    String::new()
                } else {
                    format!(
                        " (this node has no {stable}, so the definition keeps the node-local name {}: make sure every \
                         node gives the device that name, or run udev)",
                        e.written
                    )
                };
                pt_ok.push(format!("{} {} is pass-through {}{note}", e.field, e.written, cx.describe_volume(*v)))
            }
        }
    }
    out.checks.push(if pass.is_empty() {
        check(7, CheckResult::Skip, "no pass-through disk (every disk is an image file)")
    } else if !pt_fail.is_empty() {
        check(7, CheckResult::Fail, pt_fail.join("; "))
    } else {
        check(7, CheckResult::Pass, pt_ok.join("; "))
    });

    if let Some(a) = &entries[0].at
        && let Some(w) = a.volume
    {
        out.config_path = Some(format!("{}/{}", input.volumes[w].params.volume_name, display(&a.rel)));
    }
    Ok(out)
}

/// Writes the `--fix` rewrites: the definition's paths (each written value replaced once,
/// then the file parsed again) and qcow2 backing references (`qemu-img rebase -u`, only
/// where the new reference was checked to reach the same file). Marks them applied.
pub fn apply_fixes(out: &mut WizardOutcome) -> Result<(), String> {
    let plan = out.fix_plan.clone();
    if let Some(file) = &plan.definition
        && !plan.text_edits.is_empty()
    {
        let mut text = fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        for (before, after) in &plan.text_edits {
            let quoted_before = format!("\"{before}\"");
            if text.matches(&quoted_before).count() != 1 {
                return Err(format!(
                    "cannot rewrite {quoted_before} in {} safely (it is not there exactly once); edit it by hand",
                    file.display()
                ));
            }
            text = text.replacen(&quoted_before, &format!("\"{after}\""), 1);
        }
        VmDefinition::parse_file(&text, &file.to_string_lossy())
            .map_err(|e| format!("the rewritten definition does not parse ({e}); nothing was written"))?;
        let tmp = file.with_extension("haven-fix.tmp");
        fs::write(&tmp, &text)
            .and_then(|()| fs::rename(&tmp, file))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    for (image, reference, format) in &plan.rebases {
        let out = Command::new("qemu-img")
            .args(["rebase", "-u", "-F", format, "-b", reference])
            .arg(image)
            .output()
            .map_err(|e| format!("cannot run `qemu-img rebase` ({e})"))?;
        if !out.status.success() {
            return Err(format!(
                "`qemu-img rebase -u -F {format} -b {reference} {}` failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    for f in &mut out.fixes {
        f.applied = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        let rel = relative(Path::new("/s/volumes/vol1/web"), Path::new("/s/volumes/vol2/data.img"));
        assert_eq!(rel, Path::new("../../vol2/data.img"));
        assert_eq!(
            relative(Path::new("/s/volumes/vol1/web"), Path::new("/s/volumes/vol1/web/a.img")),
            Path::new("a.img")
        );
    }

    #[test]
    fn command_lines_name_a_path_only_as_a_whole_value() {
        assert!(names_path("file=/v/web.qcow2,format=qcow2", "/v/web.qcow2"));
        assert!(names_path("/v/web.qcow2", "/v/web.qcow2"));
        assert!(!names_path("file=/v/web.qcow2.bak", "/v/web.qcow2"));
        assert!(!names_path("/old/v/web.qcow2", "/v/web.qcow2"));
    }
}
