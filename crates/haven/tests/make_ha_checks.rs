//! The HA wizard's seven storage checks (`haven vm make-ha`), one test each, through the
//! CLI against a real one-node cluster with real files: `dir` volumes, qcow2 chains made by
//! `qemu-img create -b`, a symlink and a bind mount onto a volume, an ext4 loop device
//! mounted inside a volume, a loop device given to the guest whole, and a real QEMU holding
//! an image open. Each asserts the exact report entry and, when a check fails, that the
//! cluster's groups and resources did not change and the refused run is in the history.
//!
//! Mounts and loop devices need root; without it (or without loop devices) those tests
//! print why and pass. `qemu-img` and `qemu-system-x86_64` are required.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Lab;
use haven_api::{HistoryQuery, specs};
use haven_drivers::procfs;
use haven_model::{
    CheckResult, DiskBackend, DiskParams, GroupSpec, HaCheck, HaReport, ResourceKind, ResourceSpec, ResourceState,
};

/// A one-node lab with group `g` (online on the node) holding `vol1`, a `dir` volume at
/// `<lab>/shared/vol1`, online.
struct Fixture {
    lab: Lab,
    shared: PathBuf,
    /// `<state-dir>/volumes`: the cluster path of every volume.
    volumes: PathBuf,
}

impl Fixture {
    async fn new() -> Fixture {
        let lab = Lab::start(1).await;
        let shared = lab.dir().join("shared");
        let volumes = lab.node(0).state_dir().join("volumes");
        let f = Fixture { lab, shared, volumes };
        f.group("g", true).await;
        f.volume("g", "vol1").await;
        f.wait_online("vol1").await;
        f
    }

    async fn group(&self, name: &str, online: bool) {
        let spec = GroupSpec { online, ..common::group_preferring(name, &[self.lab.name(0)]) };
        self.lab.client(0).create_group(&spec).await.expect("create group");
    }

    /// A `dir` volume `<shared>/<name>` (or `path`) with its disk resource `name` in `group`.
    async fn volume_at(&self, group: &str, name: &str, path: &Path) {
        std::fs::create_dir_all(path).expect("volume directory");
        std::fs::write(path.join(".haven-volume"), format!("id-{name}\n")).expect(".haven-volume");
        let disk = specs::dir_disk(name, group, &format!("id-{name}"), name, &path.to_string_lossy());
        self.lab.client(0).create_resource(&disk).await.expect("create disk resource");
    }

    async fn volume(&self, group: &str, name: &str) -> PathBuf {
        let path = self.shared.join(name);
        self.volume_at(group, name, &path).await;
        path
    }

    async fn wait_online(&self, resource: &str) {
        self.lab
            .wait_until(&format!("{resource} online"), 30, async || {
                self.lab.resource(0, resource).await.is_some_and(|r| r.status.state == ResourceState::Online)
            })
            .await;
    }

    /// `<state-dir>/volumes/<volume>/<rest>`.
    fn cluster(&self, volume: &str, rest: &str) -> PathBuf {
        self.volumes.join(volume).join(rest)
    }

    /// Groups (spec, owner) and resources (spec): what the wizard may change.
    async fn snapshot(&self) -> (Vec<(GroupSpec, Option<String>)>, Vec<ResourceSpec>) {
        let groups = self.lab.client(0).groups().await.expect("groups");
        let resources = self.lab.client(0).resources().await.expect("resources");
        (
            groups.into_iter().map(|g| (g.group.spec, g.group.owner)).collect(),
            resources.into_iter().map(|r| r.spec).collect(),
        )
    }

    /// `haven -o json vm make-ha <args>`: exit status and report.
    fn wizard(&self, args: &[&str]) -> (Option<i32>, HaReport, String) {
        let out = self.lab.cli(0).args(["-o", "json", "vm", "make-ha"]).args(args).output().expect("run haven");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("no report ({e}): {}{stderr}", String::from_utf8_lossy(&out.stdout));
        });
        (out.status.code(), report, stderr)
    }

    /// Runs the wizard expecting a refusal: exit 1, nothing changed, the report recorded.
    async fn refused(&self, args: &[&str]) -> HaReport {
        let before = self.snapshot().await;
        let (code, report, stderr) = self.wizard(args);
        assert_eq!(code, Some(1), "{report:#?}\n{stderr}");
        assert!(!report.ok && !report.applied, "{report:#?}");
        assert!(stderr.contains("nothing was changed"), "{stderr}");
        assert_eq!(self.snapshot().await, before, "a refused wizard run changed the cluster");
        let recorded = self.last_report(&report.vm).await;
        assert_eq!(recorded, report, "the history keeps the refused run's report");
        report
    }

    async fn last_report(&self, vm: &str) -> HaReport {
        let events = self.lab.client(0).history(&HistoryQuery::resource(vm).limit(500)).await.expect("history");
        let e = events.iter().rev().find(|e| e.kind == "ha-wizard").expect("an ha-wizard history entry");
        *e.report.clone().expect("the entry carries the report")
    }
}

fn entry(r: &HaReport, id: u8) -> &HaCheck {
    r.checks.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no check {id} in {r:#?}"))
}

fn definition(file: &Path, name: &str, disks: &[(&str, &str)]) {
    let mut text = format!("name = \"{name}\"\nvcpus = 1\nmemory_mib = 32\n[boot]\ndisk = 0\n");
    for (path, format) in disks {
        text.push_str(&format!("[[disks]]\npath = \"{path}\"\nformat = \"{format}\"\n"));
    }
    std::fs::create_dir_all(file.parent().expect("parent")).expect("definition directory");
    std::fs::write(file, text).expect("write definition");
}

fn raw_image(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("image directory");
    std::fs::File::create(path).and_then(|f| f.set_len(1 << 20)).expect("raw image");
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "`{program} {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn qcow2(path: &Path, backing: Option<&str>) {
    let p = path.to_string_lossy();
    match backing {
        Some(b) => run("qemu-img", &["create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", &p]),
        None => run("qemu-img", &["create", "-q", "-f", "qcow2", &p, "1M"]),
    };
}

/// A fixture and an ext4 loop device on a file `name` in the lab directory, or `None` (with
/// a printed reason: `what` needs root) where that cannot be had.
async fn with_loop_device(what: &str, name: &str) -> Option<(Fixture, LoopDev)> {
    if !is_root() {
        eprintln!("SKIPPED: {what} needs root");
        return None;
    }
    let f = Fixture::new().await;
    match LoopDev::ext4(&f.lab.dir().join(name)) {
        Ok(d) => Some((f, d)),
        Err(e) => {
            eprintln!("SKIPPED: no loop device here ({e})");
            None
        }
    }
}

fn is_root() -> bool {
    procfs::effective_uid() == Some(0)
}

/// Unmounts on drop (lazily, so a failed test never leaves a busy mount behind).
struct Mount(PathBuf);
impl Mount {
    fn bind(from: &Path, to: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
        let out = Command::new("mount").arg("--bind").arg(from).arg(to).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Mount(to.to_path_buf()))
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A loop device over a fresh ext4 image; detached on drop.
struct LoopDev(String);
impl LoopDev {
    fn ext4(image: &Path) -> Result<LoopDev, String> {
        std::fs::File::create(image).and_then(|f| f.set_len(16 << 20)).map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", &image.to_string_lossy()]);
        let out =
            Command::new("losetup").args(["-f", "--show"]).arg(image).output().map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(LoopDev(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}
impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check1_a_running_vm_is_refused_naming_the_process() {
    let f = Fixture::new().await;
    let def = f.cluster("vol1", "web/vm.toml");
    definition(&def, "web", &[("web.img", "raw")]);
    let image = f.cluster("vol1", "web/web.img");
    raw_image(&image);
    // A real QEMU with the image open, paused before the guest runs.
    let drive = format!("file={},format=raw,if=none,id=d0", image.display());
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-M", "none", "-nodefaults", "-display", "none", "-S", "-drive", &drive])
        .spawn()
        .expect("start qemu-system-x86_64");
    let pid = qemu.id();
    f.lab
        .wait_until("QEMU has the image open", 20, async || {
            procfs::open_files(pid as i32)
                .iter()
                .any(|fd| std::fs::read_link(fd).is_ok_and(|l| l.ends_with("web/web.img")))
        })
        .await;
    let r = f.refused(&[&def.to_string_lossy()]).await;
    let c = entry(&r, 1);
    assert_eq!(c.result, CheckResult::Fail);
    let canonical = std::fs::canonicalize(&image).expect("canonical");
    assert_eq!(
        c.message,
        format!(
            "the VM is running on node {:?}: {} is open by pid {pid} (qemu-system-x86_64 -M none -nodefaults -display \
             none -S -drive {drive}); shut the VM down (or save its state) and run the wizard again",
            f.lab.name(0),
            image.display()
        ),
        "canonical {}",
        canonical.display()
    );
    assert_eq!(entry(&r, 8).result, CheckResult::Skip);

    let _ = qemu.kill();
    let _ = qemu.wait();
    let (code, r, err) = f.wizard(&["--dry-run", &def.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    assert_eq!(entry(&r, 1).result, CheckResult::Pass, "{r:#?}");
    assert!(r.ok && !r.applied && r.dry_run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check2_files_off_cluster_storage_or_on_an_offline_volume_are_refused() {
    let f = Fixture::new().await;
    let local = f.lab.dir().join("local/data.img");
    raw_image(&local);
    let def = f.cluster("vol1", "web/vm.toml");
    definition(&def, "web", &[(&local.to_string_lossy(), "raw")]);
    let r = f.refused(&[&def.to_string_lossy()]).await;
    let c = entry(&r, 2);
    assert_eq!(c.result, CheckResult::Fail);
    assert_eq!(
        c.message,
        format!(
            "disks[0].path {} is not on any cluster volume; copy it onto a disk resource's volume (under {}/<volume>/) \
             or, if its filesystem is shared, make that a disk resource: `haven resource create vol1 --group <group> \
             --type disk --params-json '{{\"backend\":\"dir\",\"volume_id\":\"<id>\",\"volume_name\":\"vol1\",\"path\":\
             \"<shared directory>\"}}'` (the directory needs a .haven-volume file holding <id>)",
            local.display(),
            f.volumes.display()
        )
    );

    // On the volume, but the volume is offline: read through its shared directory, refused.
    definition(&def, "web", &[("web.img", "raw")]);
    raw_image(&f.cluster("vol1", "web/web.img"));
    f.lab.client(0).set_group_online("g", false).await.expect("offline");
    f.lab
        .wait_until("vol1 offline", 30, async || {
            f.lab.resource(0, "vol1").await.is_some_and(|r| r.status.state == ResourceState::Offline)
        })
        .await;
    let r = f.refused(&[&def.to_string_lossy()]).await;
    let c = entry(&r, 2);
    assert_eq!(
        c.message,
        format!(
            "definition {def} is on volume vol1 (disk resource \"vol1\", group \"g\"), which is offline, not online on \
             node {node:?}: bring it online there (`haven group move g --to {node}` and `haven group online g`) and run \
             the wizard again; disks[0].path {img} is on volume vol1 (disk resource \"vol1\", group \"g\"), which is \
             offline, not online on node {node:?}: bring it online there (`haven group move g --to {node}` and `haven \
             group online g`) and run the wizard again",
            def = def.display(),
            img = f.cluster("vol1", "web/web.img").display(),
            node = f.lab.name(0)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check3_vms_sharing_a_volume_join_one_group_with_a_warning() {
    let f = Fixture::new().await;
    let old = f.cluster("vol1", "old/vm.toml");
    definition(&old, "old", &[("old.img", "raw")]);
    raw_image(&f.cluster("vol1", "old/old.img"));
    let (code, r, err) = f.wizard(&[&old.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    assert_eq!(entry(&r, 3).result, CheckResult::Pass);
    assert_eq!(entry(&r, 3).message, "no other VM shares the VM's volumes; group \"g\" holds no other VM");
    assert!(r.applied && r.group.as_deref() == Some("g"));

    let web = f.cluster("vol1", "web/vm.toml");
    definition(&web, "web", &[("web.img", "raw")]);
    raw_image(&f.cluster("vol1", "web/web.img"));
    let (code, r, err) = f.wizard(&[&web.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    let c = entry(&r, 3);
    assert_eq!(c.result, CheckResult::Warn);
    assert_eq!(
        c.message,
        "group \"g\" already holds VM(s) \"old\" on volume(s) vol1; the VM joins it: these VMs will always move together"
    );
    assert_eq!((r.errors, r.warnings, r.applied), (0, 1, true));
    let web_vm = f.lab.client(0).resource("web").await.expect("web");
    assert_eq!(web_vm.spec.group, "g");
    assert_eq!(f.last_report("web").await, r);

    // Files on volumes of two groups that both hold VMs: refused, naming both.
    f.group("h", true).await;
    let vol2 = f.volume("h", "vol2").await;
    f.wait_online("vol2").await;
    let other = f.cluster("vol2", "other/vm.toml");
    definition(&other, "other", &[("other.img", "raw")]);
    raw_image(&vol2.join("other/other.img"));
    let (code, r, err) = f.wizard(&[&other.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    let both = f.cluster("vol2", "both/vm.toml");
    definition(&both, "both", &[("../../vol1/web/web.img", "raw")]);
    let r = f.refused(&[&both.to_string_lossy()]).await;
    assert_eq!(
        entry(&r, 3).message,
        "the VM's files are on volumes of group \"h\" (VMs \"other\") and group \"g\" (VMs \"old\", \"web\"); a VM \
         lives in one group, and these groups already hold other VMs: keep the VM's files on the volumes of one of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check4_every_backing_file_outside_the_group_is_named() {
    let f = Fixture::new().await;
    // vol2 belongs to a group that holds more than disks: it cannot move into "g".
    f.group("other", true).await;
    f.volume("other", "vol2").await;
    let svc =
        ResourceSpec { depends_on: vec!["vol2".into()], ..specs::process("svc", "other", &["sleep", "infinity"]) };
    f.lab.client(0).create_resource(&svc).await.expect("process");
    f.wait_online("vol2").await;
    let local = f.lab.dir().join("local");
    std::fs::create_dir_all(&local).expect("local dir");
    let base = local.join("base.qcow2");
    qcow2(&base, None);
    let mid = f.cluster("vol2", "mid.qcow2");
    qcow2(&mid, Some(&base.to_string_lossy()));
    let top = f.cluster("vol1", "web/top.qcow2");
    std::fs::create_dir_all(top.parent().expect("dir")).expect("web dir");
    qcow2(&top, Some(&mid.to_string_lossy()));
    let def = f.cluster("vol1", "web/vm.toml");
    definition(&def, "web", &[("top.qcow2", "qcow2")]);
    let r = f.refused(&[&def.to_string_lossy()]).await;
    let c = entry(&r, 4);
    assert_eq!(c.result, CheckResult::Fail);
    // qemu-img names each image by the path it was reached by: the cluster paths here.
    let mid_real = mid.clone();
    let top_real = top.clone();
    assert_eq!(
        c.message,
        format!(
            "{mid} (backing file of {top}, from disks[0].path) is on volume vol2 (disk resource \"vol2\", group \
             \"other\"), not in group \"g\": the VM would fail to start after a move; keep the whole chain on volumes \
             of one group; {base} (backing file of {mid_real}, from disks[0].path) is not on any cluster volume: the VM \
             would fail to start after a move; copy it onto a volume of group \"g\" and point the image at it \
             (`qemu-img rebase -u -F qcow2 -b <new path> {mid_real}`)",
            mid = mid.display(),
            top = top_real.display(),
            base = base.display(),
            mid_real = mid_real.display(),
        ),
        "{r:#?}"
    );

    // The whole chain on the group's volume: it passes (dry run).
    let base2 = f.cluster("vol1", "web/base.qcow2");
    qcow2(&base2, None);
    run("qemu-img", &["rebase", "-u", "-F", "qcow2", "-b", "base.qcow2", &top.to_string_lossy()]);
    let (code, r, err) = f.wizard(&["--dry-run", &def.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    assert_eq!(
        entry(&r, 4).message,
        "every backing file is on a volume of the group: top.qcow2 → base.qcow2 (volume vol1)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check5_node_local_names_of_a_volume_are_named_and_fixed() {
    if !is_root() {
        eprintln!("SKIPPED: the bind mount onto the volume needs root");
        return;
    }
    let f = Fixture::new().await;
    let vol1 = f.shared.join("vol1");
    let link = f.lab.dir().join("link");
    std::os::unix::fs::symlink(&vol1, &link).expect("symlink");
    let bind_at = f.lab.dir().join("bind");
    let _bind = match Mount::bind(&vol1, &bind_at) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot bind-mount here ({e})");
            return;
        }
    };
    let web = vol1.join("web");
    for i in ["a", "b", "c"] {
        raw_image(&web.join(format!("{i}.img")));
    }
    let base = web.join("base.qcow2");
    qcow2(&base, None);
    qcow2(&web.join("d.qcow2"), Some(&base.to_string_lossy())); // the dir backend's path, absolute
    let (a, b, c) = (link.join("web/a.img"), bind_at.join("web/b.img"), vol1.join("web/c.img"));
    let def = f.cluster("vol1", "web/vm.toml");
    definition(
        &def,
        "web",
        &[
            (&a.to_string_lossy(), "raw"),
            (&b.to_string_lossy(), "raw"),
            (&c.to_string_lossy(), "raw"),
            ("d.qcow2", "qcow2"),
        ],
    );
    let r = f.refused(&[&def.to_string_lossy()]).await;
    let e = entry(&r, 5);
    assert_eq!(e.result, CheckResult::Fail);
    let vol = "volume vol1 (disk resource \"vol1\", group \"g\")";
    let cp = |n: &str| f.cluster("vol1", &format!("web/{n}")).display().to_string();
    assert_eq!(
        e.message,
        format!(
            "disks[0].path {a} reaches {vol} through a symlink, a name other nodes do not have: use the cluster path \
             {ca} (written relative to the definition: \"a.img\"); disks[1].path {b} reaches {vol} through another \
             mount point of the same filesystem ({bind}), a name other nodes do not have: use the cluster path {cb} \
             (written relative to the definition: \"b.img\"); disks[2].path {c} reaches {vol} through the dir \
             backend's shared directory, a name other nodes do not have: use the cluster path {cc} (written relative \
             to the definition: \"c.img\"); backing file {base:?} of {d} reaches {vol} through the dir backend's shared \
             directory: use the cluster path {cbase} (relative to the image: \"base.qcow2\"); `haven vm make-ha --fix` \
             rewrites them",
            a = a.display(),
            b = b.display(),
            c = c.display(),
            bind = bind_at.display(),
            ca = cp("a.img"),
            cb = cp("b.img"),
            cc = cp("c.img"),
            base = base.display().to_string(),
            d = cp("d.qcow2"),
            cbase = cp("base.qcow2"),
        )
    );

    // --fix --dry-run shows the rewrites and writes nothing.
    let text = std::fs::read_to_string(&def).expect("definition");
    let (code, r, err) = f.wizard(&["--fix", "--dry-run", &def.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    assert_eq!(entry(&r, 5).result, CheckResult::Warn);
    let shown: Vec<(String, String, String, bool)> =
        r.fixes.iter().map(|x| (x.field.clone(), x.before.clone(), x.after.clone(), x.applied)).collect();
    assert_eq!(
        shown,
        [
            ("disks[0].path".into(), a.display().to_string(), "a.img".into(), false),
            ("disks[1].path".into(), b.display().to_string(), "b.img".into(), false),
            ("disks[2].path".into(), c.display().to_string(), "c.img".into(), false),
            ("backing file".into(), base.display().to_string(), "base.qcow2".into(), false),
        ]
    );
    assert_eq!(std::fs::read_to_string(&def).expect("definition"), text, "a dry run rewrote the definition");

    // --fix writes them and makes the VM highly available.
    let (code, r, err) = f.wizard(&["--fix", &def.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    assert!(r.applied && r.fixes.iter().all(|x| x.applied), "{r:#?}");
    let text = std::fs::read_to_string(&def).expect("definition");
    for want in ["path = \"a.img\"", "path = \"b.img\"", "path = \"c.img\"", "path = \"d.qcow2\""] {
        assert!(text.contains(want), "{want} missing from {text}");
    }
    let info = run("qemu-img", &["info", "-U", "--output=json", &web.join("d.qcow2").to_string_lossy()]);
    assert!(info.contains("\"backing-filename\": \"base.qcow2\""), "{info}");
    // (The VM may already run in the online group, so only check 5 is looked at.)
    let (_, r, _) = f.wizard(&["--dry-run", "--name", "web2", &def.to_string_lossy()]);
    assert_eq!(entry(&r, 5).result, CheckResult::Pass, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check6_a_volume_mounted_inside_another_needs_the_same_group() {
    let Some((f, dev)) = with_loop_device("mounting a loop device inside a volume", "inner.ext4").await else {
        return;
    };
    let inner = f.shared.join("vol1/inner");
    std::fs::create_dir_all(&inner).expect("mount point");
    run("mount", &[&dev.0, &inner.to_string_lossy()]);
    let _mount = Mount(inner.clone());
    // vol2 is the filesystem mounted at vol1/inner, in a group that also runs a process.
    f.group("other", true).await;
    f.volume_at("other", "vol2", &inner).await;
    let svc =
        ResourceSpec { depends_on: vec!["vol2".into()], ..specs::process("svc", "other", &["sleep", "infinity"]) };
    f.lab.client(0).create_resource(&svc).await.expect("process");
    f.wait_online("vol2").await;
    raw_image(&inner.join("data.img"));
    let def = f.cluster("vol1", "web/vm.toml");
    definition(&def, "web", &[("../inner/data.img", "raw")]);
    let r = f.refused(&[&def.to_string_lossy()]).await;
    let c = entry(&r, 6);
    assert_eq!(c.result, CheckResult::Fail);
    assert_eq!(
        c.message,
        format!(
            "disks[0].path {} is on volume vol2 (disk resource \"vol2\", group \"other\"), mounted inside volume vol1 \
             (disk resource \"vol1\", group \"g\"): a volume mounted inside another needs both disk resources in one \
             group; put \"vol2\" and \"vol1\" in one group (the wizard moves disk resources of groups that hold only \
             disks, while offline)",
            f.cluster("vol1", "web/../inner/data.img").display()
        )
    );

    // Both volumes in one group: it passes (dry run).
    f.lab.client(0).set_group_online("other", false).await.expect("offline");
    f.lab
        .wait_until("vol2 offline", 30, async || {
            f.lab.resource(0, "vol2").await.is_some_and(|r| r.status.state == ResourceState::Offline)
        })
        .await;
    for r in ["svc", "vol2"] {
        f.lab.client(0).delete_resource(r).await.expect("delete");
    }
    f.volume_at("g", "vol2", &inner).await;
    f.wait_online("vol2").await;
    let (code, r, err) = f.wizard(&["--dry-run", &def.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    assert_eq!(
        entry(&r, 6).message,
        format!(
            "disks[0].path {} is on volume vol2 (disk resource \"vol2\", group \"g\"), mounted inside volume vol1 \
             (disk resource \"vol1\", group \"g\"): both in group \"g\"",
            f.cluster("vol1", "web/../inner/data.img").display()
        )
    );
    assert!(r.plan.iter().any(|p| p.contains("depends on vol1, vol2")), "{:#?}", r.plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check7_a_pass_through_device_must_be_a_disk_resource_of_the_group() {
    let Some((f, dev)) = with_loop_device("using a loop device", "pt.ext4").await else {
        return;
    };
    let uuid = run("blkid", &["-s", "UUID", "-o", "value", &dev.0]);
    let def = f.cluster("vol1", "web/vm.toml");
    definition(&def, "web", &[(&dev.0, "raw")]);
    let r = f.refused(&[&def.to_string_lossy()]).await;
    let c = entry(&r, 7);
    assert_eq!(c.result, CheckResult::Fail);
    assert_eq!(
        c.message,
        format!(
            "disks[0].path {d} (device {d}) is a whole block device given to the guest, and no disk resource of the \
             cluster is that device; create it: `haven resource create <name> --group g --type disk --params-json \
             '{{\"backend\":\"block\",\"volume_id\":\"<id>\",\"volume_name\":\"<name>\",\"uuid\":\"{uuid}\"}}'`",
            d = dev.0
        )
    );
    // As a disk resource of an offline, disk-only group it moves into "g": it passes (dry run).
    f.group("ptg", false).await;
    let block = DiskParams {
        backend: DiskBackend::Block,
        volume_id: "pt-1".into(),
        volume_name: "pt".into(),
        path: None,
        uuid: Some(uuid.to_string()),
    };
    let pt = specs::resource("pt", "ptg", ResourceKind::Disk, &block);
    f.lab.client(0).create_resource(&pt).await.expect("block disk resource");
    let (code, r, err) = f.wizard(&["--dry-run", &def.to_string_lossy()]);
    assert_eq!(code, Some(0), "{r:#?} {err}");
    let c = entry(&r, 7);
    assert_eq!(c.result, CheckResult::Pass);
    assert!(
        c.message.starts_with(&format!(
            "disks[0].path {} is pass-through volume pt (disk resource \"pt\", group \"ptg\")",
            dev.0
        )),
        "{}",
        c.message
    );
    assert!(
        r.plan.iter().any(|p| p == "move disk resource \"pt\" from group \"ptg\" into group \"g\""),
        "{:#?}",
        r.plan
    );
}
