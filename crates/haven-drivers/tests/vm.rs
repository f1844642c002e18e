//! The `disk`, `vm-config` and `vm` drivers against real files and a real QEMU guest (the
//! test guest of `scripts/build-test-guest`, built when missing): volume claims and stale
//! owners, definition errors that name the field, and a VM's life: boot to heartbeat,
//! accelerator choice, a frozen guest seen by the thorough check only, adoption by a fresh
//! `Drivers`, a bounded stop, and a killed QEMU. Every wait polls with a deadline.
//!
//! The VM test skips (with a message) only when `qemu-system-x86_64` is not installed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use haven_drivers::disk::{CLAIM_FILE, read_claim};
use haven_drivers::{Depth, DriverError, Drivers, Health, ResourceCtx, load_definition, vm_status};
use haven_model::{Accel, ResourceKind, ResourceProps, ResourceSpec};
use serde_json::json;

#[path = "../../haven/tests/common/guest_console.rs"]
mod guest_console;
use guest_console::assert_guest_found_its_disk;
use tokio::time::{Instant, sleep};

const PATIENCE: Duration = Duration::from_secs(40);

fn spec(name: &str, kind: ResourceKind, params: serde_json::Value) -> ResourceSpec {
    ResourceSpec {
        name: name.into(),
        group: "g".into(),
        kind,
        params,
        props: ResourceProps::default(),
        depends_on: vec![],
    }
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what} after {PATIENCE:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

async fn health(drivers: &Drivers, ctx: &ResourceCtx, depth: Depth) -> Health {
    drivers.get(ctx.spec.kind).monitor(ctx, depth).await.expect("monitor")
}

/// A shared directory marked as volume `id`.
fn make_volume(root: &Path, id: &str) -> PathBuf {
    let dir = root.join("shared").join(id);
    std::fs::create_dir_all(&dir).expect("mkdir volume");
    std::fs::write(dir.join(".haven-volume"), format!("{id}\n")).expect("write .haven-volume");
    dir
}

fn disk_spec(volume: &Path, id: &str) -> ResourceSpec {
    spec(
        "vol1-disk",
        ResourceKind::Disk,
        json!({"backend": "dir", "volume_id": id, "volume_name": "vol1", "path": volume.to_string_lossy()}),
    )
}

#[tokio::test]
async fn dir_volume_is_claimed_exposed_and_refused_to_a_stale_owner() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let volume = make_volume(tmp.path(), "vol-1");
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let drivers = Drivers::new();
    let disk = drivers.get(ResourceKind::Disk);
    let a = ResourceCtx::new("node-a", disk_spec(&volume, "vol-1"), &state_a).with_generation(1);
    let b = ResourceCtx::new("node-b", disk_spec(&volume, "vol-1"), &state_b).with_generation(2);

    assert_eq!(health(&drivers, &a, Depth::Cheap).await, Health::Stopped);
    disk.start(&a).await.expect("start on a");
    let exposed = state_a.join("volumes/vol1");
    assert_eq!(std::fs::read_link(&exposed).expect("symlink"), volume);
    assert!(exposed.join(".haven-volume").exists(), "the volume is reachable through the exposure");
    let claim = read_claim(&volume).expect("read claim").expect("claimed");
    assert_eq!((claim.node.as_str(), claim.generation), ("node-a", 1));
    assert_eq!(health(&drivers, &a, Depth::Thorough).await, Health::Running);
    disk.start(&a).await.expect("starting a started disk is fine");

    // The wrong volume behind the path.
    let wrong = ResourceCtx::new("node-a", disk_spec(&volume, "vol-2"), &tmp.path().join("c"));
    let e = disk.start(&wrong).await.unwrap_err().to_string();
    assert!(e.contains("holds volume id \"vol-1\", not \"vol-2\""), "{e}");

    // The group moves to b (generation 2): a's claim is no longer the current one.
    disk.start(&b).await.expect("start on b");
    let Health::Failed(why) = health(&drivers, &a, Depth::Cheap).await else {
        panic!("a should see it lost the claim")
    };
    assert!(why.contains("claimed by node \"node-b\" at generation 2"), "{why}");
    disk.stop(&a).await.expect("stop on a");
    assert!(std::fs::symlink_metadata(&exposed).is_err(), "stop removes the exposure");
    assert_eq!(health(&drivers, &a, Depth::Cheap).await, Health::Stopped);

    // a, still at generation 1, must not take it back.
    let e = disk.start(&a).await.unwrap_err();
    assert!(matches!(e, DriverError::Volume { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("stale owner") && e.contains("generation 2"), "{e}");
    assert!(std::fs::symlink_metadata(&exposed).is_err(), "a refused volume is not exposed");

    disk.stop(&b).await.expect("stop on b");
    assert!(volume.join(CLAIM_FILE).exists(), "the claim stays as history");
    assert_eq!(read_claim(&volume).expect("claim").expect("claimed").node, "node-b");
}

const DEFINITION: &str = r#"
name = "t1"
vcpus = 1
memory_mib = 256
heartbeat = true
[boot]
kernel = "KERNEL"
initrd = "INITRD"
cmdline = "console=ttyS0 haven.name=t1 quiet"
[[disks]]
path = "data.img"
"#;

fn definition(guest: &Path) -> String {
    DEFINITION
        .replace("KERNEL", &guest.join("vmlinuz").to_string_lossy())
        .replace("INITRD", &guest.join("initrd.img").to_string_lossy())
}

#[tokio::test]
async fn definitions_are_validated_and_registered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let volume = make_volume(tmp.path(), "vol-1");
    let fake_guest = tmp.path().join("guest");
    std::fs::create_dir_all(&fake_guest).expect("mkdir");
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(fake_guest.join(f), b"x").expect("write");
    }
    let def_path = volume.join("t1.toml");
    let write = |text: &str| std::fs::write(&def_path, text).expect("write definition");

    // A missing disk image, named by its field; then the file appears and the path is resolved.
    write(&definition(&fake_guest));
    let e = load_definition(&def_path).unwrap_err();
    assert_eq!(e.field, "disks[0].path");
    assert_eq!(e.message, format!("{} does not exist", volume.join("data.img").display()));
    std::fs::write(volume.join("data.img"), b"").expect("image");
    let def = load_definition(&def_path).expect("valid");
    assert_eq!(def.disks[0].path, volume.join("data.img").to_string_lossy());
    assert_eq!(def.accel, Accel::Auto);

    for (edit, field, message) in [
        (("memory_mib = 256", "memory_mib = 0"), "memory_mib", "0 is too small; the least allowed is 16"),
        (("vcpus = 1", "vcpus = 0"), "vcpus", "0 is too small; the least allowed is 1"),
        (("path = \"data.img\"", "path = \"data.img\"\nformat = \"vhd\""), "disks[0].format", "unknown variant"),
        (("heartbeat = true", "heartbeat = true\nballoon = 1"), "definition", "unknown field; expected one of"),
    ] {
        write(&definition(&fake_guest).replace(edit.0, edit.1));
        let e = load_definition(&def_path).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(message), "{e}");
    }

    // The vm-config resource: only from a volume exposed here.
    write(&definition(&fake_guest));
    let state = tmp.path().join("state");
    let drivers = Drivers::new();
    let off_volume = ResourceCtx::new(
        "n1",
        spec("t1-config", ResourceKind::VmConfig, json!({"path": def_path.to_string_lossy()})),
        &state,
    );
    let e = drivers.get(ResourceKind::VmConfig).start(&off_volume).await.unwrap_err().to_string();
    assert!(e.contains("is not on a cluster volume"), "{e}");

    let on_volume = state.join("volumes/vol1/t1.toml");
    let cfg = ResourceCtx::new("n1", spec("t1-config", ResourceKind::VmConfig, json!({"path": on_volume})), &state);
    let e = drivers.get(ResourceKind::VmConfig).start(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("volume \"vol1\" is not online on node \"n1\""), "{e}");

    let disk = ResourceCtx::new("n1", disk_spec(&volume, "vol-1"), &state);
    drivers.get(ResourceKind::Disk).start(&disk).await.expect("disk");
    drivers.get(ResourceKind::VmConfig).start(&cfg).await.expect("register");
    assert!(state.join("vms/t1.json").exists());
    assert_eq!(health(&drivers, &cfg, Depth::Cheap).await, Health::Running);
    write(&definition(&fake_guest).replace("vcpus = 1", "vcpus = 2"));
    let Health::Failed(why) = health(&drivers, &cfg, Depth::Cheap).await else { panic!("an edited file is noticed") };
    assert!(why.contains("changed since it was registered"), "{why}");
    drivers.get(ResourceKind::VmConfig).stop(&cfg).await.expect("unregister");
    assert!(!state.join("vms/t1.json").exists());
    assert_eq!(health(&drivers, &cfg, Depth::Cheap).await, Health::Stopped);
}

fn qemu_installed() -> bool {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The test guest's directory, built by `scripts/build-test-guest` if missing.
fn test_guest() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-guest");
    let out = std::process::Command::new(&script).output().expect("run scripts/build-test-guest");
    assert!(out.status.success(), "building the test guest failed: {}", String::from_utf8_lossy(&out.stderr));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default());
    assert!(dir.join("vmlinuz").exists(), "no vmlinuz in {}", dir.display());
    dir
}

fn alive(pid: i32) -> bool {
    haven_drivers::procfs::is_alive(pid)
}

#[tokio::test]
async fn vm_boots_heartbeats_freezes_is_adopted_stops_and_dies() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
        return;
    }
    let guest = test_guest();
    let tmp = tempfile::tempdir().expect("tempdir");
    let volume = make_volume(tmp.path(), "vol-1");
    let image = volume.join("data.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(16 << 20)).expect("data image");
    let _ = std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status();
    std::fs::write(volume.join("t1.toml"), definition(&guest)).expect("definition");
    let state = tmp.path().join("state");

    let disk = ResourceCtx::new("n1", disk_spec(&volume, "vol-1"), &state).with_generation(1);
    let cfg = ResourceCtx::new(
        "n1",
        spec("t1-config", ResourceKind::VmConfig, json!({"path": state.join("volumes/vol1/t1.toml")})),
        &state,
    );
    let vm = ResourceCtx::new(
        "n1",
        spec(
            "t1",
            ResourceKind::Vm,
            json!({"config": "t1-config", "heartbeat_timeout": "2s", "shutdown_timeout": "2s"}),
        ),
        &state,
    );
    let drivers = Drivers::new();
    drivers.get(ResourceKind::Disk).start(&disk).await.expect("disk");
    drivers.get(ResourceKind::VmConfig).start(&cfg).await.expect("vm-config");
    let started = Instant::now();
    drivers.get(ResourceKind::Vm).start(&vm).await.expect("vm start");
    eprintln!("vm start took {:?}", started.elapsed());

    // Accelerator and first heartbeat.
    let status = vm_status(&vm).expect("status of a running VM");
    eprintln!("accel {:?}: {}", status.accel, status.reason_for_accel);
    assert!(matches!(status.accel, Accel::Kvm | Accel::Tcg));
    assert!(status.reason_for_accel.contains("KVM probe"), "{}", status.reason_for_accel);
    let seq = eventually("the first heartbeat", || async { vm_status(&vm).and_then(|s| s.last_heartbeat_seq) }).await;
    eprintln!("first heartbeat (seq {seq}) {:?} after start", started.elapsed());
    let boot_id = vm_status(&vm).and_then(|s| s.guest_boot_id).expect("a heartbeat carries the guest's boot id");
    assert_guest_found_its_disk(&vm.run_dir, &boot_id).await;
    assert_eq!(health(&drivers, &vm, Depth::Cheap).await, Health::Running);
    assert_eq!(health(&drivers, &vm, Depth::Thorough).await, Health::Running);

    // A frozen guest: QEMU runs, the heartbeat stops.
    drivers.vm().send_guest_control(&vm, "freeze").await.expect("freeze");
    let why = eventually("the thorough check to see the frozen guest", || async {
        match health(&drivers, &vm, Depth::Thorough).await {
            Health::Failed(why) => Some(why),
            _ => None,
        }
    })
    .await;
    assert!(why.contains("sent no heartbeat for"), "{why}");
    assert_eq!(health(&drivers, &vm, Depth::Cheap).await, Health::Running, "the cheap check only asks QEMU");
    drivers.vm().send_guest_control(&vm, "thaw").await.expect("thaw");
    eventually("heartbeats after thaw", || async {
        (health(&drivers, &vm, Depth::Thorough).await == Health::Running).then_some(())
    })
    .await;

    // A restarted agent: a fresh Drivers finds the VM through its pid file.
    let pid = vm_status(&vm).expect("status").pid;
    drop(drivers);
    let drivers = Drivers::new();
    assert!(alive(pid), "dropping the drivers leaves the VM running");
    assert_eq!(health(&drivers, &vm, Depth::Cheap).await, Health::Running);
    assert_eq!(health(&drivers, &vm, Depth::Thorough).await, Health::Running);
    let seq = vm_status(&vm).and_then(|s| s.last_heartbeat_seq).expect("seq");
    eventually("heartbeats through the new watcher", || async {
        vm_status(&vm).and_then(|s| s.last_heartbeat_seq).filter(|s2| *s2 > seq)
    })
    .await;
    drivers.get(ResourceKind::Vm).start(&vm).await.expect("starting a running VM is fine");
    assert_eq!(vm_status(&vm).expect("status").pid, pid, "and keeps it");

    // Stop: the test guest ignores the ACPI power button, so it is quit after 2s.
    let stopping = Instant::now();
    drivers.get(ResourceKind::Vm).stop(&vm).await.expect("stop");
    let took = stopping.elapsed();
    eprintln!("stop took {took:?}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(12), "stop took {took:?}");
    assert!(!alive(pid));
    assert_eq!(health(&drivers, &vm, Depth::Cheap).await, Health::Stopped);
    assert!(vm_status(&vm).is_none());

    // A QEMU killed behind our back is a failure, with the reason.
    drivers.get(ResourceKind::Vm).start(&vm).await.expect("second start");
    let pid = vm_status(&vm).expect("status").pid;
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    // (QEMU's threads take a moment to die after its main thread, and while the process
    // exists a QMP that does not answer still counts as running; the reason names the
    // signal once the kernel hands over the exit status.)
    let why = eventually("the killed QEMU to be seen", || async {
        match health(&drivers, &vm, Depth::Cheap).await {
            Health::Failed(why) if why.contains("SIGKILL") => Some(why),
            Health::Failed(_) | Health::Running => None,
            other => panic!("a killed QEMU is a failure, got {other:?}"),
        }
    })
    .await;
    assert!(why.contains(&format!("process {pid} was killed by signal 9 (SIGKILL)")), "{why}");
    drivers.get(ResourceKind::Vm).stop_within(&vm, Duration::ZERO).await.expect("clean up");
    assert_eq!(health(&drivers, &vm, Depth::Cheap).await, Health::Stopped);

    // The guest found its data disk on the volume (the second run was killed too early to
    // write its own line). Neither run unmounted it: its records may still be in the ext4
    // journal only, which debugfs does not read, so a copy gets the journal replayed first.
    let copy = tmp.path().join("inspect.img");
    std::fs::copy(&image, &copy).expect("copy data.img");
    let fsck = std::process::Command::new("e2fsck").args(["-f", "-y"]).arg(&copy).output().expect("run e2fsck");
    assert!(matches!(fsck.status.code(), Some(0 | 1)), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));
    let out = std::process::Command::new("debugfs").arg("-R").arg("cat /boots.log").arg(&copy).output();
    let out = out.expect("run debugfs (Debian: e2fsprogs)");
    let boots = String::from_utf8_lossy(&out.stdout);
    assert!(
        boots.lines().any(|l| l.starts_with(&format!("boot {boot_id} ")) && l.ends_with(" t1")),
        "no boot record of guest {boot_id} on its disk: {boots:?} ({})",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    drivers.get(ResourceKind::VmConfig).stop(&cfg).await.expect("unregister");
    drivers.get(ResourceKind::Disk).stop(&disk).await.expect("release the volume");
}
