//! The HA wizard's storage checks (`haven vm make-ha`), run on the node where the VM is
//! defined: they read that node's files, mounts and processes, and the cluster's `disk`
//! resources as the caller describes them ([`WizardInput`]). They decide which group the
//! VM joins and which disk resources it needs; they change nothing, except
//! [`apply_fixes`], which rewrites node-local paths to their cluster-managed form.
//!
//! Two halves: `facts` gathers what this node shows into plain data (blocking I/O:
//! `/proc`, `stat`, `blkid`, `qemu-img`; call [`run`] from a blocking thread), and
//! `checks` judges those facts in pure functions, one per check. Building the cluster
//! change (the state commands) is the agent's job, not this module's.

mod checks;
mod facts;
mod qemu_img;
#[cfg(test)]
mod table;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use haven_model::{CheckResult, DiskParams, HaCheck, HaPathFix, InvalidInput, VmDefinition};

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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FixPlan {
    /// The definition file on this node, and (quoted text before, after) replacements.
    definition: Option<PathBuf>,
    text_edits: Vec<(String, String)>,
    /// qcow2 images whose backing reference changes: (image on this node, new reference, format).
    rebases: Vec<(PathBuf, String, String)>,
}

const CHECK_TITLES: [(&str, &str); 8] = [
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

fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// How the cluster names a volume's files: pure, from the state directory and the
/// volumes' parameters.
impl WizardInput {
    /// `<state-dir>/volumes`.
    fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }

    /// `<state-dir>/volumes/<name>`.
    fn cluster_root(&self, i: usize) -> PathBuf {
        self.volumes_dir().join(&self.volumes[i].params.volume_name)
    }

    /// The volume a path names lexically (`<state-dir>/volumes/<name>/rest`), with `rest`.
    fn lexical(&self, p: &Path) -> Option<(usize, PathBuf)> {
        let p = normalize(p);
        let rest = p.strip_prefix(self.volumes_dir()).ok()?;
        if !rest.components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        let mut parts = rest.components();
        let name = parts.next()?.as_os_str().to_string_lossy().into_owned();
        let i = self.volumes.iter().position(|v| v.params.volume_name == name)?;
        Some((i, parts.as_path().to_path_buf()))
    }

    /// A file's cluster path: `<state-dir>/volumes/<name>/<rel>`.
    fn cluster_path(&self, at: &facts::Located) -> Option<PathBuf> {
        at.volume.map(|w| self.cluster_root(w).join(&at.rel))
    }

    fn describe_volume(&self, i: usize) -> String {
        let v = &self.volumes[i];
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

/// Reads the definition and runs checks 1–7. `Err` is bad input (no such file, a
/// definition that does not parse), with the field named.
pub fn run(input: &WizardInput) -> Result<WizardOutcome, InvalidInput> {
    Ok(judge(&facts::gather(input)?))
}

/// Checks 1–7 over gathered facts, in order, with the group decision and the `--fix` plan.
fn judge(f: &facts::Facts) -> WizardOutcome {
    let d = checks::decide(f);
    let paths = checks::cluster_path(f);
    let config_path = f.entries[0]
        .at
        .as_ref()
        .and_then(|a| a.volume.map(|w| format!("{}/{}", f.input.volumes[w].params.volume_name, display(&a.rel))));
    WizardOutcome {
        checks: vec![
            checks::vm_stopped(f),
            checks::shared_storage(f, &d),
            checks::shared_volume(f, &d),
            checks::backing_chain(f, &d),
            paths.check,
            checks::nested_volume(f, &d),
            checks::pass_through(f, &d),
        ],
        definition: Some(f.definition.clone()),
        group: d.target.clone(),
        new_group: d.new_group,
        disks: d.needed.iter().map(|i| f.input.volumes[*i].resource.clone()).collect(),
        moves: d.moves,
        config_path,
        fixes: paths.fixes,
        fix_plan: paths.plan,
    }
}

/// Why `--fix` could not write its rewrites. What was written before the failure stays
/// (the definition is replaced in one rename, before any backing reference changes).
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot rewrite {quoted} in {} safely (it is not there exactly once); edit it by hand", file.display())]
    Ambiguous { quoted: String, file: PathBuf },
    #[error("the rewritten definition does not parse ({source}); nothing was written")]
    Reparse {
        #[source]
        source: InvalidInput,
    },
    #[error("cannot write {}: {source}", file.display())]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    QemuImg(#[from] qemu_img::QemuImgError),
}

/// Writes the `--fix` rewrites: the definition's paths (each written value replaced once,
/// then the file parsed again) and qcow2 backing references (`qemu-img rebase -u`, only
/// where the new reference was checked to reach the same file). Marks them applied.
pub fn apply_fixes(out: &mut WizardOutcome) -> Result<(), FixError> {
    let plan = out.fix_plan.clone();
    if let Some(file) = &plan.definition
        && !plan.text_edits.is_empty()
    {
        let mut text = fs::read_to_string(file).map_err(|source| FixError::Read { file: file.clone(), source })?;
        for (before, after) in &plan.text_edits {
            let quoted = format!("\"{before}\"");
            if text.matches(&quoted).count() != 1 {
                return Err(FixError::Ambiguous { quoted, file: file.clone() });
            }
            text = text.replacen(&quoted, &format!("\"{after}\""), 1);
        }
        VmDefinition::parse_file(&text, &file.to_string_lossy()).map_err(|source| FixError::Reparse { source })?;
        let tmp = file.with_extension("haven-fix.tmp");
        fs::write(&tmp, &text)
            .and_then(|()| fs::rename(&tmp, file))
            .map_err(|source| FixError::Write { file: file.clone(), source })?;
    }
    for (image, reference, format) in &plan.rebases {
        qemu_img::rebase_unsafe(image, reference, format)?;
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
}
