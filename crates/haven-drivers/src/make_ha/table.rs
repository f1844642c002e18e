//! Table tests for checks 1–7 on hand-built facts: no files, mounts, loop devices or
//! processes. Each case states the facts a node would show and the exact report entry
//! (the real-file tests in `crates/haven/tests/make_ha_checks.rs` cover the gathering).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use haven_model::{CheckResult, DiskBackend, DiskParams, HaCheck, HaPathFix, ImageFormat, VmDefinition};

use super::checks::{self, Decision};
use super::facts::{Backing, Entry, Facts, Located, PassThrough, Role, User, Via};
use super::{FixPlan, WizardGroup, WizardInput, WizardVolume, check, judge};

use CheckResult::{Fail, Pass, Skip, Warn};

const DEF: &str = "/s/volumes/vol1/web/web.toml";

/// A `dir` volume online on this node ("n1").
fn vol(name: &str, group: &str) -> WizardVolume {
    WizardVolume {
        resource: format!("disk-{name}"),
        group: group.into(),
        params: DiskParams {
            backend: DiskBackend::Dir,
            volume_id: format!("id-{name}"),
            volume_name: name.into(),
            path: Some(format!("/shared/{name}")),
            uuid: None,
        },
        online_here: true,
        state: "online on node \"n1\"".into(),
    }
}

/// A `block` volume online on this node.
fn block(name: &str, group: &str, uuid: &str) -> WizardVolume {
    let mut v = vol(name, group);
    v.params.backend = DiskBackend::Block;
    v.params.path = None;
    v.params.uuid = Some(uuid.into());
    v
}

fn with_state(mut v: WizardVolume, state: &str) -> WizardVolume {
    v.online_here = false;
    v.state = state.into();
    v
}

fn grp(vms: &[&str], only_disks: bool) -> WizardGroup {
    WizardGroup { name: String::new(), vms: vms.iter().map(|s| s.to_string()).collect(), only_disks }
}

/// On volume `vol`, reached by its cluster path.
fn on(vol: usize, rel: &str) -> Located {
    via(vol, rel, Via::Cluster)
}

fn via(vol: usize, rel: &str, via: Via) -> Located {
    Located {
        volume: Some(vol),
        rel: rel.into(),
        via,
        outer: vec![],
        canonical: Path::new("/canonical").join(format!("v{vol}")).join(rel),
    }
}

fn nested(mut at: Located, outer: usize) -> Located {
    at.outer.push(outer);
    at
}

/// On no cluster volume.
fn nowhere(path: &str) -> Located {
    Located { volume: None, rel: path.into(), via: Via::Cluster, outer: vec![], canonical: path.into() }
}

struct Lab {
    f: Facts,
}

impl Lab {
    /// The definition at `DEF`, on volume 0 (which the test names `vol1`).
    fn new(volumes: Vec<WizardVolume>, groups: &[(&str, WizardGroup)]) -> Lab {
        Lab::with_definition(volumes, groups, DEF, Some(on(0, "web/web.toml")))
    }

    fn with_definition(
        volumes: Vec<WizardVolume>,
        groups: &[(&str, WizardGroup)],
        def: &str,
        at: Option<Located>,
    ) -> Lab {
        let text = "name = \"web\"\nvcpus = 1\nmemory_mib = 32\n[boot]\ndisk = 0\n[[disks]]\npath = \"web.img\"\n";
        let definition = VmDefinition::parse_file(text, def).expect("the test definition parses");
        let groups: BTreeMap<String, WizardGroup> =
            groups.iter().map(|(n, g)| (n.to_string(), WizardGroup { name: n.to_string(), ..g.clone() })).collect();
        Lab {
            f: Facts {
                input: WizardInput {
                    node: "n1".into(),
                    state_dir: "/s".into(),
                    definition: def.into(),
                    volumes,
                    groups,
                    group: None,
                    fix: false,
                },
                definition,
                entries: vec![Entry {
                    field: "definition".into(),
                    written: def.into(),
                    path: def.into(),
                    local: def.into(),
                    role: Role::Definition,
                    at,
                }],
                backings: vec![],
                chain_errors: vec![],
                pass: vec![],
                users: vec![],
                whole_disks: vec![],
            },
        }
    }

    fn group(mut self, g: &str) -> Lab {
        self.f.input.group = Some(g.into());
        self
    }

    fn fix(mut self) -> Lab {
        self.f.input.fix = true;
        self
    }

    /// A file the definition names (written as `written`, absolute at `path`).
    fn file(mut self, written: &str, path: &str, role: Role, at: Located) -> Lab {
        let field = match role {
            Role::Boot => "boot.kernel".to_string(),
            _ => format!("disks[{}].path", self.disks()),
        };
        self.f.entries.push(Entry {
            field,
            written: written.into(),
            path: path.into(),
            local: path.into(),
            role,
            at: Some(at),
        });
        self
    }

    fn raw(self, path: &str, at: Located) -> Lab {
        let written = path.rsplit('/').next().unwrap_or(path).to_string();
        self.file(&written, path, Role::Image(ImageFormat::Raw), at)
    }

    fn qcow2(self, path: &str, at: Located) -> Lab {
        let written = path.rsplit('/').next().unwrap_or(path).to_string();
        self.file(&written, path, Role::Image(ImageFormat::Qcow2), at)
    }

    fn disks(&self) -> usize {
        self.f.entries.iter().filter(|e| matches!(e.role, Role::Image(_) | Role::PassThrough)).count()
    }

    /// A backing file of the last entry's image.
    fn backing(mut self, stored: &str, file: &str, at: Located, reaches: bool) -> Lab {
        let top = self.f.entries.len() - 1;
        let child = self.f.entries[top].path.clone();
        let child_at = self.f.entries[top].at.clone();
        self.f.backings.push(Backing {
            top,
            child,
            stored: stored.into(),
            format: "qcow2".into(),
            file: file.into(),
            at: Some(at),
            child_at,
            rebase_reaches_file: reaches,
        });
        self
    }

    /// A block device given whole to the guest, written as `written`.
    fn pass(mut self, written: &str, device: &str, volume: Option<usize>, uuid: Option<&str>, stable: bool) -> Lab {
        let field = format!("disks[{}].path", self.disks());
        self.f.pass.push(PassThrough {
            entry: self.f.entries.len(),
            volume,
            device: device.into(),
            uuid: uuid.map(String::from),
            stable_name_here: stable,
        });
        self.f.entries.push(Entry {
            field,
            written: written.into(),
            path: written.into(),
            local: written.into(),
            role: Role::PassThrough,
            at: None,
        });
        self
    }

    fn whole_disks(mut self, disks: &[Option<(&str, &str)>]) -> Lab {
        self.f.whole_disks =
            disks.iter().map(|d| d.map(|(dev, disk)| (PathBuf::from(dev), disk.to_string()))).collect();
        self
    }

    fn user(mut self, pid: i32, file: &str, how: &'static str) -> Lab {
        self.f.users.push(User {
            pid,
            command: format!("qemu-system-x86_64 -drive file={file}"),
            file: file.into(),
            how,
        });
        self
    }

    fn decision(&self) -> Decision {
        checks::decide(&self.f)
    }

    /// Check `id`'s report entry for these facts.
    fn verdict(&self, id: u8) -> HaCheck {
        let d = self.decision();
        let f = &self.f;
        match id {
            1 => checks::vm_stopped(f),
            2 => checks::shared_storage(f, &d),
            3 => checks::shared_volume(f, &d),
            4 => checks::backing_chain(f, &d),
            5 => checks::cluster_path(f).check,
            6 => checks::nested_volume(f, &d),
            7 => checks::pass_through(f, &d),
            _ => panic!("no check {id}"),
        }
    }
}

/// vol1 in group g1 (nothing but disks, no VM), online here; the definition and a raw
/// image on it, by their cluster paths.
fn simple() -> Lab {
    Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))])
        .raw("/s/volumes/vol1/web/web.img", on(0, "web/web.img"))
}

fn assert_check(lab: &Lab, id: u8, result: CheckResult, message: &str) {
    assert_eq!(lab.verdict(id), check(id, result, message));
}

// 1. vm-stopped

#[test]
fn check1_skips_a_vm_without_disk_images() {
    let lab = Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))]).file(
        "vmlinuz",
        "/s/volumes/vol1/web/vmlinuz",
        Role::Boot,
        on(0, "web/vmlinuz"),
    );
    assert_check(&lab, 1, Skip, "the VM has no disk image, so no process can be running it from its disks");
}

#[test]
fn check1_passes_when_no_process_uses_an_image_or_backing_file() {
    let lab = Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))])
        .qcow2("/s/volumes/vol1/web/web.qcow2", on(0, "web/web.qcow2"))
        .backing("../base.qcow2", "/s/volumes/vol1/base.qcow2", on(0, "base.qcow2"), true);
    assert_check(
        &lab,
        1,
        Pass,
        "no process on node \"n1\" has /s/volumes/vol1/web/web.qcow2, /s/volumes/vol1/base.qcow2 open or names it on \
         its command line (a saved state is fine)",
    );
}

#[test]
fn check1_fails_naming_each_process_and_how_it_uses_the_disk() {
    let lab = simple().user(42, "/s/volumes/vol1/web/web.img", "open").user(43, "/s/volumes/vol1/web/web.img", "named");
    assert_check(
        &lab,
        1,
        Fail,
        "the VM is running on node \"n1\": /s/volumes/vol1/web/web.img is open by pid 42 (qemu-system-x86_64 -drive \
         file=/s/volumes/vol1/web/web.img); /s/volumes/vol1/web/web.img is named by pid 43 (qemu-system-x86_64 \
         -drive file=/s/volumes/vol1/web/web.img); shut the VM down (or save its state) and run the wizard again",
    );
}

// 2. shared-storage

#[test]
fn check2_passes_for_files_on_volumes_online_here() {
    assert_check(
        &simple(),
        2,
        Pass,
        "web.toml on volume vol1, web.img on volume vol1 (volume(s) vol1 online on node \"n1\")",
    );
}

#[test]
fn check2_passes_for_an_offline_dir_volume_that_moves_into_the_group() {
    let lab = Lab::new(
        vec![vol("vol1", "g1"), with_state(vol("vol2", "d2"), "offline")],
        &[("g1", grp(&[], true)), ("d2", grp(&[], true))],
    )
    .raw("/s/volumes/vol2/web.img", on(1, "web.img"));
    assert_check(
        &lab,
        2,
        Pass,
        "web.toml on volume vol1, web.img on volume vol2 (volume(s) vol1 online on node \"n1\"; volume(s) vol2 \
         offline, read through the shared directory, moving into group \"g1\")",
    );
}

#[test]
fn check2_fails_for_files_on_no_cluster_volume() {
    let lab = Lab::with_definition(
        vec![vol("vol1", "g1")],
        &[("g1", grp(&[], true))],
        "/home/me/web.toml",
        Some(nowhere("/home/me/web.toml")),
    )
    .raw("/home/me/web.img", nowhere("/home/me/web.img"));
    let fix = "copy it onto a disk resource's volume (under /s/volumes/<volume>/) or, if its filesystem is shared, \
               make that a disk resource: `haven resource create vol1 --group <group> --type disk --params-json \
               '{\"backend\":\"dir\",\"volume_id\":\"<id>\",\"volume_name\":\"vol1\",\"path\":\"<shared directory>\"}'` \
               (the directory needs a .haven-volume file holding <id>)";
    assert_check(
        &lab,
        2,
        Fail,
        &format!(
            "the definition /home/me/web.toml is not on any cluster volume; {fix}; disks[0].path /home/me/web.img is \
             not on any cluster volume; {fix}"
        ),
    );
}

#[test]
fn check2_fails_for_a_volume_that_must_move_while_it_runs() {
    let lab = Lab::new(vec![vol("vol1", "g1"), vol("vol2", "d2")], &[("g1", grp(&[], true)), ("d2", grp(&[], true))])
        .raw("/s/volumes/vol2/web.img", on(1, "web.img"));
    assert_check(
        &lab,
        2,
        Fail,
        "disks[0].path /s/volumes/vol2/web.img is on volume vol2 (disk resource \"disk-vol2\", group \"d2\"), which \
         must move into group \"g1\"; the cluster moves a disk resource only while it is not running (online on node \
         \"n1\"): take group \"d2\" offline (`haven group offline d2`) and run the wizard again (it reads an offline \
         dir volume through its shared directory)",
    );
}

#[test]
fn check2_fails_for_an_offline_block_volume_that_must_move() {
    let lab = Lab::new(
        vec![vol("vol1", "g1"), with_state(block("vol2", "d2", "u-2"), "offline")],
        &[("g1", grp(&[], true)), ("d2", grp(&[], true))],
    )
    .raw("/s/volumes/vol2/web.img", on(1, "web.img"));
    assert_check(
        &lab,
        2,
        Fail,
        "disks[0].path /s/volumes/vol2/web.img is on block volume vol2 (disk resource \"disk-vol2\", group \"d2\"), \
         which is offline and must move into group \"g1\"; the wizard can read a block volume only while it is \
         mounted: keep the VM in group \"d2\"",
    );
}

#[test]
fn check2_fails_for_a_volume_of_the_group_that_is_not_online_here() {
    let lab = Lab::new(
        vec![vol("vol1", "g1"), with_state(vol("vol2", "g1"), "online on node \"n2\"")],
        &[("g1", grp(&[], true))],
    )
    .raw("/s/volumes/vol2/web.img", on(1, "web.img"));
    assert_check(
        &lab,
        2,
        Fail,
        "disks[0].path /s/volumes/vol2/web.img is on volume vol2 (disk resource \"disk-vol2\", group \"g1\"), which \
         is online on node \"n2\", not online on node \"n1\": bring it online there (`haven group move g1 --to n1` \
         and `haven group online g1`) and run the wizard again",
    );
}

// 3. shared-volume

#[test]
fn check3_passes_for_a_group_without_other_vms() {
    assert_check(&simple(), 3, Pass, "no other VM shares the VM's volumes; group \"g1\" holds no other VM");
}

#[test]
fn check3_passes_for_a_new_group() {
    assert_check(&simple().group("app"), 3, Pass, "no other VM shares the VM's volumes; group \"app\" is new");
}

#[test]
fn check3_warns_that_the_vm_joins_a_group_with_vms() {
    let lab = Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&["db"], false))])
        .raw("/s/volumes/vol1/web/web.img", on(0, "web/web.img"));
    assert_check(
        &lab,
        3,
        Warn,
        "group \"g1\" already holds VM(s) \"db\" on volume(s) vol1; the VM joins it: these VMs will always move \
         together",
    );
}

#[test]
fn check3_fails_for_files_in_two_groups_with_vms() {
    let lab = Lab::new(
        vec![vol("vol1", "g1"), vol("vol2", "g2")],
        &[("g1", grp(&["db"], false)), ("g2", grp(&["mail", "log"], false))],
    )
    .raw("/s/volumes/vol2/web.img", on(1, "web.img"));
    assert_eq!(lab.decision().target, None);
    assert_check(
        &lab,
        3,
        Fail,
        "the VM's files are on volumes of group \"g1\" (VMs \"db\") and group \"g2\" (VMs \"mail\", \"log\"); a VM \
         lives in one group, and these groups already hold other VMs: keep the VM's files on the volumes of one of \
         them",
    );
}

#[test]
fn check3_fails_for_a_group_asked_for_against_a_group_with_vms() {
    let lab =
        Lab::new(vec![vol("vol1", "g1"), vol("vol2", "g2")], &[("g1", grp(&[], true)), ("g2", grp(&["db"], false))])
            .raw("/s/volumes/vol2/web.img", on(1, "web.img"))
            .group("g1");
    assert_check(
        &lab,
        3,
        Fail,
        "--group \"g1\" was asked for, but the VM's files are on volumes of group(s) \"g2\" that already hold VMs; a \
         disk resource moves only out of a group that holds nothing but disks: run without --group; volume vol2 \
         (disk resource \"disk-vol2\", group \"g2\") is in group \"g2\", which holds other resources than disks, so \
         it cannot move into group \"g1\": keep the VM's files on the volumes of one group",
    );
}

#[test]
fn check3_fails_for_a_disk_resource_that_cannot_move() {
    let lab = Lab::new(vec![vol("vol1", "g1"), vol("vol2", "g2")], &[("g1", grp(&[], true)), ("g2", grp(&[], false))])
        .raw("/s/volumes/vol2/web.img", on(1, "web.img"));
    assert!(lab.decision().moves.is_empty());
    assert_check(
        &lab,
        3,
        Fail,
        "volume vol2 (disk resource \"disk-vol2\", group \"g2\") is in group \"g2\", which holds other resources than \
         disks, so it cannot move into group \"g1\": keep the VM's files on the volumes of one group",
    );
}

#[test]
fn check3_warns_for_a_partition_of_the_same_disk_in_the_group() {
    let lab = Lab::new(
        vec![block("vol1", "g1", "u-1"), block("vol3", "g1", "u-3"), block("vol4", "g1", "u-4")],
        &[("g1", grp(&[], true))],
    )
    .raw("/s/volumes/vol1/web/web.img", on(0, "web/web.img"))
    .whole_disks(&[Some(("/dev/sdb1", "sdb")), Some(("/dev/sdb2", "sdb")), Some(("/dev/sdc1", "sdc"))]);
    assert_check(
        &lab,
        3,
        Warn,
        "volume vol1 (/dev/sdb1) and volume vol3 (/dev/sdb2, disk resource \"disk-vol3\") are partitions of the same \
         disk sdb, both in group \"g1\": they will always move together",
    );
}

#[test]
fn check3_fails_for_a_partition_of_the_same_disk_in_another_group() {
    let lab = Lab::new(
        vec![block("vol1", "g1", "u-1"), block("vol3", "g3", "u-3")],
        &[("g1", grp(&[], true)), ("g3", grp(&[], true))],
    )
    .raw("/s/volumes/vol1/web/web.img", on(0, "web/web.img"))
    .whole_disks(&[Some(("/dev/sdb1", "sdb")), Some(("/dev/sdb2", "sdb"))]);
    assert_check(
        &lab,
        3,
        Fail,
        "volume vol1 (/dev/sdb1) and volume vol3 (/dev/sdb2, disk resource \"disk-vol3\") are partitions of the same \
         disk sdb, in group \"g3\": a disk moves whole, so both volumes must be in group \"g1\"; put \"disk-vol3\" in \
         it (or keep the VM's files off this disk)",
    );
}

// 4. backing-chain

#[test]
fn check4_skips_without_qcow2_images() {
    assert_check(&simple(), 4, Skip, "no qcow2 image, so no differencing chain");
}

#[test]
fn check4_passes_for_a_qcow2_image_without_backing_file() {
    let lab = Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))])
        .qcow2("/s/volumes/vol1/web/web.qcow2", on(0, "web/web.qcow2"));
    assert_check(&lab, 4, Pass, "the qcow2 image(s) have no backing file");
}

#[test]
fn check4_passes_for_a_chain_on_volumes_of_the_group() {
    let lab = Lab::new(vec![vol("vol1", "g1"), vol("vol2", "d2")], &[("g1", grp(&[], true)), ("d2", grp(&[], true))])
        .qcow2("/s/volumes/vol1/web/web.qcow2", on(0, "web/web.qcow2"))
        .backing("../../vol2/base.qcow2", "/s/volumes/vol2/base.qcow2", on(1, "base.qcow2"), true);
    // vol2's group holds only disks: it moves in, so the chain is in the group.
    assert_eq!(lab.decision().moves, vec!["disk-vol2".to_string()]);
    assert_check(
        &lab,
        4,
        Pass,
        "every backing file is on a volume of the group: web.qcow2 → ../../vol2/base.qcow2 (volume vol2)",
    );
}

#[test]
fn check4_fails_for_a_backing_file_on_no_volume() {
    let lab = Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))])
        .qcow2("/s/volumes/vol1/web/web.qcow2", on(0, "web/web.qcow2"))
        .backing("/images/base.qcow2", "/images/base.qcow2", nowhere("/images/base.qcow2"), false);
    assert_check(
        &lab,
        4,
        Fail,
        "/images/base.qcow2 (backing file of /s/volumes/vol1/web/web.qcow2, from disks[0].path) is not on any cluster \
         volume: the VM would fail to start after a move; copy it onto a volume of group \"g1\" and point the image \
         at it (`qemu-img rebase -u -F qcow2 -b <new path> /s/volumes/vol1/web/web.qcow2`)",
    );
}

#[test]
fn check4_fails_for_a_backing_file_on_a_volume_outside_the_group() {
    let lab = Lab::new(vec![vol("vol1", "g1"), vol("vol2", "g2")], &[("g1", grp(&[], true)), ("g2", grp(&[], false))])
        .qcow2("/s/volumes/vol1/web/web.qcow2", on(0, "web/web.qcow2"))
        .backing("../../vol2/base.qcow2", "/s/volumes/vol2/base.qcow2", on(1, "base.qcow2"), true);
    assert_check(
        &lab,
        4,
        Fail,
        "/s/volumes/vol2/base.qcow2 (backing file of /s/volumes/vol1/web/web.qcow2, from disks[0].path) is on volume \
         vol2 (disk resource \"disk-vol2\", group \"g2\"), not in group \"g1\": the VM would fail to start after a \
         move; keep the whole chain on volumes of one group",
    );
}

#[test]
fn check4_fails_for_a_chain_that_cannot_be_read() {
    let mut lab = Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))])
        .qcow2("/s/volumes/vol1/web/web.qcow2", on(0, "web/web.qcow2"));
    lab.f.chain_errors.push("disks[0].path (/s/volumes/vol1/web/web.qcow2): `qemu-img info` failed".into());
    assert_check(&lab, 4, Fail, "disks[0].path (/s/volumes/vol1/web/web.qcow2): `qemu-img info` failed");
}

// 5. cluster-path

#[test]
fn check5_passes_for_cluster_paths_and_relative_backing_references() {
    let lab = Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))])
        .qcow2("/s/volumes/vol1/web/web.qcow2", on(0, "web/web.qcow2"))
        .backing("../base.qcow2", "/s/volumes/vol1/base.qcow2", via(0, "base.qcow2", Via::DirPath), true);
    assert_check(
        &lab,
        5,
        Pass,
        "every path uses the cluster-managed volume path (or a path relative to the definition)",
    );
    assert!(checks::cluster_path(&lab.f).fixes.is_empty());
}

/// disks[0] through the dir backend's directory, disks[1] through a symlink, disks[2]
/// through a bind mount.
fn aliases() -> Lab {
    Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))])
        .file(
            "/shared/vol1/web/a.img",
            "/shared/vol1/web/a.img",
            Role::Image(ImageFormat::Raw),
            via(0, "web/a.img", Via::DirPath),
        )
        .file("/srv/b.img", "/srv/b.img", Role::Image(ImageFormat::Raw), via(0, "b.img", Via::Symlink))
        .file(
            "/mnt/v1/c.img",
            "/mnt/v1/c.img",
            Role::Image(ImageFormat::Raw),
            via(0, "c.img", Via::OtherMount("/mnt/v1".into())),
        )
}

const ALIASES: &str = "disks[0].path /shared/vol1/web/a.img reaches volume vol1 (disk resource \"disk-vol1\", group \
                       \"g1\") through the dir backend's shared directory, a name other nodes do not have: use the \
                       cluster path /s/volumes/vol1/web/a.img (written relative to the definition: \"a.img\"); \
                       disks[1].path /srv/b.img reaches volume vol1 (disk resource \"disk-vol1\", group \"g1\") \
                       through a symlink, a name other nodes do not have: use the cluster path \
                       /s/volumes/vol1/b.img (written relative to the definition: \"../b.img\"); disks[2].path \
                       /mnt/v1/c.img reaches volume vol1 (disk resource \"disk-vol1\", group \"g1\") through another \
                       mount point of the same filesystem (/mnt/v1), a name other nodes do not have: use the cluster \
                       path /s/volumes/vol1/c.img (written relative to the definition: \"../c.img\")";

#[test]
fn check5_fails_for_node_local_names_and_offers_fix() {
    let lab = aliases();
    assert_check(&lab, 5, Fail, &format!("{ALIASES}; `haven vm make-ha --fix` rewrites them"));
    let paths = checks::cluster_path(&lab.f);
    let fix = |field: &str, before: &str, after: &str| HaPathFix {
        file: DEF.into(),
        field: field.into(),
        before: before.into(),
        after: after.into(),
        applied: false,
    };
    assert_eq!(
        paths.fixes,
        vec![
            fix("disks[0].path", "/shared/vol1/web/a.img", "a.img"),
            fix("disks[1].path", "/srv/b.img", "../b.img"),
            fix("disks[2].path", "/mnt/v1/c.img", "../c.img"),
        ]
    );
    assert_eq!(
        paths.plan,
        FixPlan {
            definition: Some(DEF.into()),
            text_edits: vec![
                ("/shared/vol1/web/a.img".into(), "a.img".into()),
                ("/srv/b.img".into(), "../b.img".into()),
                ("/mnt/v1/c.img".into(), "../c.img".into()),
            ],
            rebases: vec![],
        }
    );
}

#[test]
fn check5_warns_for_node_local_names_that_fix_rewrites() {
    assert_check(&aliases().fix(), 5, Warn, &format!("--fix rewrites 3 path(s) to the cluster path: {ALIASES}"));
}

/// The definition is on no volume: the aliases have no path relative to it.
fn unfixable() -> Lab {
    Lab::with_definition(
        vec![vol("vol1", "g1")],
        &[("g1", grp(&[], true))],
        "/home/me/web.toml",
        Some(nowhere("/home/me/web.toml")),
    )
    .file("/srv/b.img", "/srv/b.img", Role::Image(ImageFormat::Raw), via(0, "b.img", Via::Symlink))
}

const UNFIXABLE: &str = "disks[0].path /srv/b.img reaches volume vol1 (disk resource \"disk-vol1\", group \"g1\") \
                         through a symlink, a name other nodes do not have: use the cluster path \
                         /s/volumes/vol1/b.img";

#[test]
fn check5_fails_without_a_hint_when_fix_cannot_rewrite() {
    assert_check(&unfixable(), 5, Fail, UNFIXABLE);
    assert!(checks::cluster_path(&unfixable().f).fixes.is_empty());
}

#[test]
fn check5_fails_when_fix_was_asked_for_but_cannot_rewrite() {
    assert_check(
        &unfixable().fix(),
        5,
        Fail,
        &format!("{UNFIXABLE}; --fix cannot rewrite all of them safely: edit them by hand"),
    );
}

#[test]
fn check5_the_definition_itself_may_be_reached_by_an_alias() {
    let lab = Lab::with_definition(
        vec![vol("vol1", "g1")],
        &[("g1", grp(&[], true))],
        "/shared/vol1/web/web.toml",
        Some(via(0, "web/web.toml", Via::DirPath)),
    );
    assert_check(
        &lab,
        5,
        Pass,
        "every path uses the cluster-managed volume path (or a path relative to the definition)",
    );
}

#[test]
fn check5_fails_for_a_pass_through_device_by_a_node_local_name() {
    let lab = simple_block().pass("/dev/sdb", "/dev/sdb", Some(1), None, true);
    assert_check(
        &lab,
        5,
        Fail,
        "disks[1].path /dev/sdb (device /dev/sdb) is a node-local name of pass-through disk resource \"disk-blk\": use \
         /dev/disk/by-uuid/u-blk, the name that is the same on every node; `haven vm make-ha --fix` rewrites them",
    );
    assert_eq!(
        checks::cluster_path(&lab.f).plan.text_edits,
        vec![("/dev/sdb".to_string(), "/dev/disk/by-uuid/u-blk".to_string())]
    );
}

#[test]
fn check5_keeps_a_device_name_when_this_node_has_no_stable_name() {
    let lab = simple_block().pass("/dev/sdb", "/dev/sdb", Some(1), None, false);
    assert_check(
        &lab,
        5,
        Pass,
        "every path uses the cluster-managed volume path (or a path relative to the definition)",
    );
}

fn backing_alias(reaches: bool) -> Lab {
    Lab::new(vec![vol("vol1", "g1")], &[("g1", grp(&[], true))])
        .qcow2("/s/volumes/vol1/web/web.qcow2", on(0, "web/web.qcow2"))
        .backing("/shared/vol1/base.qcow2", "/shared/vol1/base.qcow2", via(0, "base.qcow2", Via::DirPath), reaches)
}

const BACKING_ALIAS: &str = "backing file \"/shared/vol1/base.qcow2\" of /s/volumes/vol1/web/web.qcow2 reaches volume \
                             vol1 (disk resource \"disk-vol1\", group \"g1\") through the dir backend's shared \
                             directory: use the cluster path /s/volumes/vol1/base.qcow2 (relative to the image: \
                             \"../base.qcow2\")";

#[test]
fn check5_fails_for_an_absolute_backing_reference_by_a_node_local_name() {
    let lab = backing_alias(true);
    assert_check(&lab, 5, Fail, &format!("{BACKING_ALIAS}; `haven vm make-ha --fix` rewrites them"));
    let paths = checks::cluster_path(&lab.f);
    assert_eq!(
        paths.plan.rebases,
        vec![(PathBuf::from("/s/volumes/vol1/web/web.qcow2"), "../base.qcow2".to_string(), "qcow2".to_string())]
    );
    assert_eq!(
        paths.fixes,
        vec![HaPathFix {
            file: "/s/volumes/vol1/web/web.qcow2".into(),
            field: "backing file".into(),
            before: "/shared/vol1/base.qcow2".into(),
            after: "../base.qcow2".into(),
            applied: false,
        }]
    );
}

#[test]
fn check5_does_not_rebase_to_a_reference_that_reaches_another_file() {
    let lab = backing_alias(false).fix();
    assert_check(
        &lab,
        5,
        Fail,
        &format!("{BACKING_ALIAS}; --fix cannot rewrite all of them safely: edit them by hand"),
    );
    assert!(checks::cluster_path(&lab.f).plan.rebases.is_empty());
}

// 6. nested-volume

#[test]
fn check6_skips_when_no_volume_is_mounted_inside_another() {
    assert_check(&simple(), 6, Skip, "no file is on a volume mounted inside another volume");
}

#[test]
fn check6_passes_for_nested_volumes_of_one_group_naming_each_pair_once() {
    let lab = Lab::new(vec![vol("vol1", "g1"), vol("vol2", "g1")], &[("g1", grp(&[], true))])
        .qcow2("/s/volumes/vol1/inner/web.qcow2", nested(on(1, "web.qcow2"), 0))
        .backing("base.qcow2", "/s/volumes/vol1/inner/base.qcow2", nested(on(1, "base.qcow2"), 0), true);
    assert_check(
        &lab,
        6,
        Pass,
        "disks[0].path /s/volumes/vol1/inner/web.qcow2 is on volume vol2 (disk resource \"disk-vol2\", group \"g1\"), \
         mounted inside volume vol1 (disk resource \"disk-vol1\", group \"g1\"): both in group \"g1\"",
    );
}

#[test]
fn check6_fails_for_nested_volumes_of_two_groups() {
    let lab = Lab::new(vec![vol("vol1", "g1"), vol("vol2", "g2")], &[("g1", grp(&[], true)), ("g2", grp(&[], false))])
        .raw("/s/volumes/vol1/inner/web.img", nested(on(1, "web.img"), 0));
    assert_check(
        &lab,
        6,
        Fail,
        "disks[0].path /s/volumes/vol1/inner/web.img is on volume vol2 (disk resource \"disk-vol2\", group \"g2\"), \
         mounted inside volume vol1 (disk resource \"disk-vol1\", group \"g1\"): a volume mounted inside another \
         needs both disk resources in one group; put \"disk-vol2\" and \"disk-vol1\" in one group (the wizard moves \
         disk resources of groups that hold only disks, while offline)",
    );
}

// 7. pass-through

/// vol1 (the definition) and block volume blk (uuid u-blk), both in g1.
fn simple_block() -> Lab {
    Lab::new(vec![vol("vol1", "g1"), block("blk", "g1", "u-blk")], &[("g1", grp(&[], true))])
        .raw("/s/volumes/vol1/web/web.img", on(0, "web/web.img"))
}

const BLK: &str = "volume blk (disk resource \"disk-blk\", group \"g1\")";

#[test]
fn check7_skips_without_pass_through_disks() {
    assert_check(&simple(), 7, Skip, "no pass-through disk (every disk is an image file)");
}

#[test]
fn check7_passes_for_a_disk_resource_of_the_group_by_its_stable_name() {
    let lab = simple_block().pass("/dev/disk/by-uuid/u-blk", "/dev/sdb", Some(1), None, true);
    assert_check(&lab, 7, Pass, &format!("disks[1].path /dev/disk/by-uuid/u-blk is pass-through {BLK}"));
    assert_eq!(lab.decision().needed, vec![0, 1]);
}

#[test]
fn check7_passes_noting_a_node_local_name_without_udev() {
    let lab = simple_block().pass("/dev/sdb", "/dev/sdb", Some(1), None, false);
    assert_check(
        &lab,
        7,
        Pass,
        &format!(
            "disks[1].path /dev/sdb is pass-through {BLK} (this node has no /dev/disk/by-uuid/u-blk, so the \
             definition keeps the node-local name /dev/sdb: make sure every node gives the device that name, or run \
             udev)"
        ),
    );
}

#[test]
fn check7_fails_for_a_device_that_is_no_disk_resource_naming_its_uuid() {
    let lab = simple().pass("/dev/sdc", "/dev/sdc", None, Some("u-c"), false);
    assert_check(
        &lab,
        7,
        Fail,
        "disks[1].path /dev/sdc (device /dev/sdc) is a whole block device given to the guest, and no disk resource \
         of the cluster is that device; create it: `haven resource create <name> --group g1 --type disk \
         --params-json '{\"backend\":\"block\",\"volume_id\":\"<id>\",\"volume_name\":\"<name>\",\"uuid\":\"u-c\"}'`",
    );
}

#[test]
fn check7_fails_for_a_device_without_filesystem_uuid() {
    let lab = simple().pass("/dev/sdc", "/dev/sdc", None, None, false);
    assert_check(
        &lab,
        7,
        Fail,
        "disks[1].path /dev/sdc (device /dev/sdc) is a whole block device given to the guest, and no disk resource \
         of the cluster is that device; it has no filesystem UUID (`blkid` shows none), so it cannot be a disk \
         resource yet: give it a filesystem with a UUID, or share it another way",
    );
}

#[test]
fn check7_fails_for_a_disk_resource_of_another_group() {
    let lab = Lab::new(
        vec![vol("vol1", "g1"), block("blk", "g2", "u-blk")],
        &[("g1", grp(&[], true)), ("g2", grp(&[], false))],
    )
    .raw("/s/volumes/vol1/web/web.img", on(0, "web/web.img"))
    .pass("/dev/disk/by-uuid/u-blk", "/dev/sdb", Some(1), None, true);
    assert_check(
        &lab,
        7,
        Fail,
        "disks[1].path /dev/disk/by-uuid/u-blk is pass-through volume blk (disk resource \"disk-blk\", group \"g2\"), \
         not of group \"g1\"; a pass-through disk moves with its VM: keep it in the VM's group",
    );
}

// The decision and the outcome.

#[test]
fn the_outcome_carries_group_disks_moves_and_config_path_in_check_order() {
    let lab = Lab::new(
        vec![vol("vol1", "g1"), with_state(vol("vol2", "d2"), "offline")],
        &[("g1", grp(&[], true)), ("d2", grp(&[], true))],
    )
    .raw("/s/volumes/vol2/web.img", on(1, "web.img"));
    let out = judge(&lab.f);
    assert_eq!(out.checks.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(out.checks[1], lab.verdict(2));
    assert!(!out.failed());
    assert_eq!(out.group.as_deref(), Some("g1"));
    assert!(!out.new_group);
    assert_eq!(out.disks, vec!["disk-vol1".to_string(), "disk-vol2".to_string()]);
    assert_eq!(out.moves, vec!["disk-vol2".to_string()]);
    assert_eq!(out.config_path.as_deref(), Some("vol1/web/web.toml"));
}

#[test]
fn a_definition_off_the_volumes_has_no_config_path() {
    let lab = Lab::with_definition(
        vec![vol("vol1", "g1")],
        &[("g1", grp(&[], true))],
        "/home/me/web.toml",
        Some(nowhere("/home/me/web.toml")),
    );
    let out = judge(&lab.f);
    assert!(out.failed());
    assert_eq!(out.config_path, None);
    assert_eq!(out.group, None);
}
