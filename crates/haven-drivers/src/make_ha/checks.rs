//! The pure half of the wizard: the group decision ([`decide`]) and one function per
//! check (1–7) over gathered [`Facts`], each returning its report entry. No filesystem, no
//! processes: everything they know is in the facts, so table tests reach every message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use haven_model::{CheckResult, DiskBackend, HaCheck, HaPathFix, ImageFormat};

use super::facts::{Backing, Entry, Facts, Role, Via};
use super::{FixPlan, check, display, quoted, relative};

/// Which group the VM joins and which disk resources it needs, decided before the checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Decision {
    /// The volumes (indices into `input.volumes`) the VM's files are on or nested in, in
    /// file order.
    pub needed: Vec<usize>,
    /// Groups among those of `needed` that already hold VMs.
    pub with_vms: Vec<String>,
    /// The group the VM joins.
    pub target: Option<String>,
    pub new_group: bool,
    /// Disk resources that move into the target group.
    pub moves: Vec<String>,
    /// Why no group (or not `--group`) could be chosen.
    pub group_errors: Vec<String>,
    /// Needed volumes that cannot move into the target group, and why.
    pub cannot_move: BTreeMap<usize, String>,
}

impl Decision {
    /// The volume is in the target group, or moves into it.
    fn in_group(&self, f: &Facts, i: usize) -> bool {
        let v = &f.input.volumes[i];
        self.target.as_ref().is_some_and(|t| &v.group == t) || self.moves.contains(&v.resource)
    }

    fn target(&self) -> &str {
        self.target.as_deref().unwrap_or("-")
    }
}

/// The group the VM joins, the disk resources it needs and those that move.
pub(super) fn decide(f: &Facts) -> Decision {
    let input = &f.input;
    let mut d = Decision::default();
    let mut add = |i: usize| {
        if !d.needed.contains(&i) {
            d.needed.push(i);
        }
    };
    let located = f.entries.iter().filter_map(|e| e.at.as_ref()).chain(f.backings.iter().filter_map(|b| b.at.as_ref()));
    for a in located {
        if let Some(w) = a.volume {
            add(w);
            a.outer.iter().for_each(|o| add(*o));
        }
    }
    for p in &f.pass {
        if let Some(v) = p.volume {
            add(v);
        }
    }

    let mut groups_needed: Vec<String> = Vec::new();
    for i in &d.needed {
        let g = input.volumes[*i].group.clone();
        if !groups_needed.contains(&g) {
            groups_needed.push(g);
        }
    }
    d.with_vms =
        groups_needed.iter().filter(|g| input.groups.get(*g).is_some_and(|g| !g.vms.is_empty())).cloned().collect();
    d.target = match &input.group {
        Some(g) => Some(g.clone()),
        None if d.with_vms.len() >= 2 => {
            let list = d
                .with_vms
                .iter()
                .map(|g| format!("group {g:?} (VMs {})", quoted(&input.groups[g].vms)))
                .collect::<Vec<_>>()
                .join(" and ");
            d.group_errors.push(format!(
                "the VM's files are on volumes of {list}; a VM lives in one group, and these groups already hold other \
                 VMs: keep the VM's files on the volumes of one of them"
            ));
            None
        }
        None => d.with_vms.first().or(groups_needed.first()).cloned(),
    };
    d.new_group = d.target.as_ref().is_some_and(|t| !input.groups.contains_key(t));
    if let (Some(t), Some(g)) = (&d.target, &input.group)
        && t == g
        && !d.new_group
        && d.with_vms.iter().any(|w| w != g)
    {
        let others: Vec<String> = d.with_vms.iter().filter(|w| *w != g).cloned().collect();
        d.group_errors.push(format!(
            "--group {g:?} was asked for, but the VM's files are on volumes of group(s) {} that already hold VMs; \
             a disk resource moves only out of a group that holds nothing but disks: run without --group",
            quoted(&others)
        ));
    }
    // Disk resources in another group move in, if their group holds nothing else.
    if let Some(t) = &d.target {
        for i in &d.needed {
            let v = &input.volumes[*i];
            if &v.group == t {
                continue;
            }
            if input.groups.get(&v.group).is_some_and(|g| g.only_disks) {
                d.moves.push(v.resource.clone());
            } else {
                d.cannot_move.insert(
                    *i,
                    format!(
                        "{} is in group {:?}, which holds other resources than disks, so it cannot move into group \
                         {t:?}: keep the VM's files on the volumes of one group",
                        input.describe_volume(*i),
                        v.group
                    ),
                );
            }
        }
    }
    d
}

/// The VM's images and devices, each with the spellings a command line may use for it:
/// what check 1 looks for among this node's processes.
pub(super) fn image_files(entries: &[Entry], backings: &[Backing]) -> Vec<(PathBuf, Vec<String>)> {
    entries
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
        .collect()
}

/// 1. Not running: no process uses the VM's disks.
pub(super) fn vm_stopped(f: &Facts) -> HaCheck {
    let image_files = image_files(&f.entries, &f.backings);
    if image_files.is_empty() {
        check(1, CheckResult::Skip, "the VM has no disk image, so no process can be running it from its disks")
    } else if f.users.is_empty() {
        check(
            1,
            CheckResult::Pass,
            format!(
                "no process on node {:?} has {} open or names it on its command line (a saved state is fine)",
                f.input.node,
                image_files.iter().map(|(p, _)| display(p)).collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        let list = f
            .users
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
                f.input.node
            ),
        )
    }
}

/// 2. The definition and the images are on cluster volumes, online on this node (or
///    offline `dir` volumes that move into the group).
pub(super) fn shared_storage(f: &Facts, d: &Decision) -> HaCheck {
    let input = &f.input;
    let mut problems: Vec<String> = Vec::new();
    let mut fine: Vec<String> = Vec::new();
    for e in f.entries.iter().filter(|e| e.role != Role::PassThrough) {
        match e.at.as_ref().and_then(|a| a.volume) {
            None => {
                let what = if e.role == Role::Definition { "the definition".to_string() } else { e.field.clone() };
                let sample = input.volumes.first().map(|v| v.params.volume_name.clone()).unwrap_or("vol1".into());
                problems.push(format!(
                    "{what} {} is not on any cluster volume; copy it onto a disk resource's volume (under {}/<volume>/) \
                     or, if its filesystem is shared, make that a disk resource: `haven resource create {sample} --group \
                     <group> --type disk --params-json '{{\"backend\":\"dir\",\"volume_id\":\"<id>\",\"volume_name\":\"{sample}\",\
                     \"path\":\"<shared directory>\"}}'` (the directory needs a .haven-volume file holding <id>)",
                    e.path.display(),
                    input.volumes_dir().display()
                ));
            }
            Some(w) => {
                let v = &input.volumes[w];
                let moving = d.moves.contains(&v.resource);
                if moving && !matches!(v.state.as_str(), "offline" | "failed") {
                    problems.push(format!(
                        "{} {} is on {}, which must move into group {:?}; the cluster moves a disk resource only \
                         while it is not running ({}): take group {:?} offline (`haven group offline {}`) and run the \
                         wizard again (it reads an offline dir volume through its shared directory)",
                        e.field,
                        e.path.display(),
                        input.describe_volume(w),
                        d.target(),
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
                        input.describe_volume(w),
                        d.target(),
                        v.group
                    ));
                } else if !moving && !v.online_here {
                    problems.push(format!(
                        "{} {} is on {}, which is {}, not online on node {:?}: bring it online there (`haven group \
                         move {} --to {}` and `haven group online {}`) and run the wizard again",
                        e.field,
                        e.path.display(),
                        input.describe_volume(w),
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
    if !problems.is_empty() {
        return check(2, CheckResult::Fail, problems.join("; "));
    }
    let (moving, online): (Vec<usize>, Vec<usize>) =
        d.needed.iter().partition(|i| d.moves.contains(&input.volumes[**i].resource));
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
            d.target()
        ));
    }
    check(2, CheckResult::Pass, format!("{} ({})", fine.join(", "), states.join("; ")))
}

/// 3. VMs sharing a volume, or partitions of one disk, end up in one group.
pub(super) fn shared_volume(f: &Facts, d: &Decision) -> HaCheck {
    let input = &f.input;
    let mut fails = d.group_errors.clone();
    fails.extend(d.cannot_move.values().cloned());
    let mut warns: Vec<String> = Vec::new();
    if let Some(t) = &d.target {
        if let Some(g) = input.groups.get(t)
            && !g.vms.is_empty()
        {
            let vols: Vec<String> = d
                .needed
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
        let disk_of = |i: usize| f.whole_disks.get(i).cloned().flatten();
        for i in &d.needed {
            let Some((dev, disk)) = disk_of(*i) else { continue };
            for (j, other) in input.volumes.iter().enumerate() {
                if j == *i || d.needed.contains(&j) {
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
    if !fails.is_empty() {
        check(3, CheckResult::Fail, fails.join("; "))
    } else if !warns.is_empty() {
        check(3, CheckResult::Warn, warns.join("; "))
    } else {
        check(
            3,
            CheckResult::Pass,
            format!(
                "no other VM shares the VM's volumes; group {:?} {}",
                d.target(),
                if d.new_group { "is new" } else { "holds no other VM" }
            ),
        )
    }
}

/// 4. Every image of a differencing chain is on a volume of the group.
pub(super) fn backing_chain(f: &Facts, d: &Decision) -> HaCheck {
    let qcow2 = f.entries.iter().any(|e| e.role == Role::Image(ImageFormat::Qcow2));
    let mut outside: Vec<String> = f.chain_errors.clone();
    let mut chain_text: Vec<String> = Vec::new();
    for b in &f.backings {
        let top = &f.entries[b.top];
        match b.at.as_ref().and_then(|a| a.volume) {
            None => outside.push(format!(
                "{} (backing file of {}, from {}) is not on any cluster volume: the VM would fail to start after a move; \
                 copy it onto a volume of group {:?} and point the image at it (`qemu-img rebase -u -F {} -b <new path> \
                 {}`)",
                b.file.display(),
                b.child.display(),
                top.field,
                d.target(),
                b.format,
                b.child.display()
            )),
            Some(w) if !d.in_group(f, w) => outside.push(format!(
                "{} (backing file of {}, from {}) is on {}, not in group {:?}: the VM would fail to start after a \
                 move; keep the whole chain on volumes of one group",
                b.file.display(),
                b.child.display(),
                top.field,
                f.input.describe_volume(w),
                d.target()
            )),
            Some(w) => chain_text.push(format!(
                "{} → {} (volume {})",
                b.child.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                b.stored,
                f.input.volumes[w].params.volume_name
            )),
        }
    }
    if !qcow2 {
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
    }
}

/// Check 5's verdict with the rewrites `--fix` makes (or would make).
#[derive(Clone, Debug)]
pub(super) struct ClusterPaths {
    pub check: HaCheck,
    pub fixes: Vec<HaPathFix>,
    pub plan: FixPlan,
}

/// 5. Paths use the cluster-managed volume path, not a node-local name; and what `--fix`
///    would rewrite.
pub(super) fn cluster_path(f: &Facts) -> ClusterPaths {
    let input = &f.input;
    let entries = &f.entries;
    let mut aliases: Vec<String> = Vec::new();
    let mut fixes: Vec<HaPathFix> = Vec::new();
    let def_cluster = entries[0].at.as_ref().filter(|a| a.volume.is_some()).and_then(|a| input.cluster_path(a));
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
    for e in entries {
        let Some(a) = &e.at else { continue };
        if !matches!(a.via, Via::DirPath | Via::Symlink | Via::OtherMount(_)) {
            continue;
        }
        let Some(right) = input.cluster_path(a) else { continue };
        if e.role == Role::Definition {
            // The vm-config resource names it by its volume anyway.
            continue;
        }
        let rel = def_dir.as_ref().map(|d| relative(d, &right));
        aliases.push(format!(
            "{} {} reaches {} through {}, a name other nodes do not have: use the cluster path {}{}",
            e.field,
            e.written,
            input.describe_volume(a.volume.unwrap_or_default()),
            how(&a.via),
            right.display(),
            rel.as_ref()
                .map(|r| format!(" (written relative to the definition: {:?})", display(r)))
                .unwrap_or_default()
        ));
        if let Some(r) = rel {
            let after = display(&r);
            plan.text_edits.push((e.written.clone(), after.clone()));
            fixes.push(HaPathFix {
                file: display(&entries[0].path),
                field: e.field.clone(),
                before: e.written.clone(),
                after,
                applied: false,
            });
        }
    }
    for p in &f.pass {
        let e = &entries[p.entry];
        let Some(v) = p.volume else { continue };
        let uuid = input.volumes[v].params.uuid.clone().unwrap_or_default();
        let right = format!("/dev/disk/by-uuid/{uuid}");
        // Only where udev made the stable name: rewriting to a name that does not exist
        // here would break the VM.
        if e.written != right && p.stable_name_here {
            aliases.push(format!(
                "{} {} (device {}) is a node-local name of pass-through disk resource {:?}: use {right}, the name that \
                 is the same on every node",
                e.field,
                e.written,
                p.device.display(),
                input.volumes[v].resource
            ));
            plan.text_edits.push((e.written.clone(), right.clone()));
            fixes.push(HaPathFix {
                file: display(&entries[0].path),
                field: e.field.clone(),
                before: e.written.clone(),
                after: right,
                applied: false,
            });
        }
    }
    for b in &f.backings {
        let Some(a) = &b.at else { continue };
        if !Path::new(&b.stored).is_absolute() || !matches!(a.via, Via::DirPath | Via::Symlink | Via::OtherMount(_)) {
            continue;
        }
        let Some(right) = input.cluster_path(a) else { continue };
        // The child refers to its backing file relative to its own directory: the same on
        // every node, whatever the state directory.
        let rel = super::facts::rebase_reference(input, b);
        aliases.push(format!(
            "backing file {:?} of {} reaches {} through {}: use the cluster path {}{}",
            b.stored,
            b.child.display(),
            input.describe_volume(a.volume.unwrap_or_default()),
            how(&a.via),
            right.display(),
            rel.as_ref().map(|r| format!(" (relative to the image: {:?})", display(r))).unwrap_or_default()
        ));
        // Safe only if the new reference reaches the very same file.
        if let Some(r) = rel
            && b.rebase_reaches_file
        {
            plan.rebases.push((b.child.clone(), display(&r), b.format.clone()));
            fixes.push(HaPathFix {
                file: display(&b.child),
                field: "backing file".into(),
                before: b.stored.clone(),
                after: display(&r),
                applied: false,
            });
        }
    }
    let fixable = fixes.len() == aliases.len() && def_dir.is_some();
    let check = if aliases.is_empty() {
        check(
            5,
            CheckResult::Pass,
            "every path uses the cluster-managed volume path (or a path relative to the definition)",
        )
    } else if input.fix && fixable {
        check(
            5,
            CheckResult::Warn,
            format!("--fix rewrites {} path(s) to the cluster path: {}", fixes.len(), aliases.join("; ")),
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
    };
    ClusterPaths { check, fixes, plan }
}

/// 6. A volume mounted inside another is in the same group.
pub(super) fn nested_volume(f: &Facts, d: &Decision) -> HaCheck {
    let input = &f.input;
    let mut nested_fail: Vec<String> = Vec::new();
    let mut nested_ok: Vec<String> = Vec::new();
    let all_located =
        f.entries.iter().filter_map(|e| e.at.as_ref().map(|a| (e.field.clone(), e.path.clone(), a))).chain(
            f.backings.iter().filter_map(|b| b.at.as_ref().map(|a| ("backing file".to_string(), b.file.clone(), a))),
        );
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
                input.describe_volume(w),
                input.describe_volume(*o)
            );
            if d.in_group(f, w) && d.in_group(f, *o) {
                nested_ok.push(format!("{what}: both in group {:?}", d.target()));
            } else {
                nested_fail.push(format!(
                    "{what}: a volume mounted inside another needs both disk resources in one group; put {:?} and {:?} \
                     in one group (the wizard moves disk resources of groups that hold only disks, while offline)",
                    input.volumes[w].resource, input.volumes[*o].resource
                ));
            }
        }
    }
    if !nested_fail.is_empty() {
        check(6, CheckResult::Fail, nested_fail.join("; "))
    } else if !nested_ok.is_empty() {
        check(6, CheckResult::Pass, nested_ok.join("; "))
    } else {
        check(6, CheckResult::Skip, "no file is on a volume mounted inside another volume")
    }
}

/// 7. Pass-through block devices are disk resources of the group.
pub(super) fn pass_through(f: &Facts, d: &Decision) -> HaCheck {
    let input = &f.input;
    let mut pt_fail: Vec<String> = Vec::new();
    let mut pt_ok: Vec<String> = Vec::new();
    for p in &f.pass {
        let e = &f.entries[p.entry];
        match p.volume {
            None => {
                let fix = match &p.uuid {
                    Some(u) => format!(
                        "create it: `haven resource create <name> --group {} --type disk --params-json \
                         '{{\"backend\":\"block\",\"volume_id\":\"<id>\",\"volume_name\":\"<name>\",\"uuid\":\"{u}\"}}'`",
                        d.target.as_deref().unwrap_or("<group>")
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
                    p.device.display()
                ));
            }
            Some(v) if !d.in_group(f, v) => pt_fail.push(format!(
                "{} {} is pass-through {}, not of group {:?}; a pass-through disk moves with its VM: keep it in the \
                 VM's group",
                e.field,
                e.written,
                input.describe_volume(v),
                d.target()
            )),
            Some(v) => {
                let stable = format!("/dev/disk/by-uuid/{}", input.volumes[v].params.uuid.as_deref().unwrap_or(""));
                let note = if p.stable_name_here {
                    String::new()
                } else {
                    format!(
                        " (this node has no {stable}, so the definition keeps the node-local name {}: make sure every \
                         node gives the device that name, or run udev)",
                        e.written
                    )
                };
                pt_ok.push(format!("{} {} is pass-through {}{note}", e.field, e.written, input.describe_volume(v)))
            }
        }
    }
    if f.pass.is_empty() {
        check(7, CheckResult::Skip, "no pass-through disk (every disk is an image file)")
    } else if !pt_fail.is_empty() {
        check(7, CheckResult::Fail, pt_fail.join("; "))
    } else {
        check(7, CheckResult::Pass, pt_ok.join("; "))
    }
}
