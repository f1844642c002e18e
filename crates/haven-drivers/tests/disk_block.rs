//! The `disk` driver's `block` backend on a real loop device: the volume is mounted (by
//! filesystem UUID) on its owner only, at `<state-dir>/volumes/<name>`, carries the owner's
//! claim, is unmounted on stop, and a stale owner (lower generation) is refused and left
//! unmounted. Needs root and loop devices; without them it says why and passes.

use std::path::Path;
use std::process::Command;

use haven_drivers::{Depth, Drivers, Health, ResourceCtx};
use haven_model::{ResourceKind, ResourceProps, ResourceSpec};
use serde_json::json;

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn mounted_at(path: &Path) -> bool {
    haven_drivers::procfs::is_mount_point(path).expect("mountinfo")
}

/// Detaches the loop device (and unmounts what a failed test left) on drop.
struct Loop {
    device: String,
    mounts: Vec<std::path::PathBuf>,
}

impl Drop for Loop {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = run("umount", &[&m.to_string_lossy()]);
        }
        let _ = run("losetup", &["-d", &self.device]);
    }
}

fn block_spec(uuid: &str) -> ResourceSpec {
    ResourceSpec {
        name: "vol-disk".into(),
        group: "g".into(),
        kind: ResourceKind::Disk,
        params: json!({"backend": "block", "volume_id": "vol-blk-1", "volume_name": "blk", "uuid": uuid}),
        props: ResourceProps::default(),
        depends_on: vec![],
    }
}

#[tokio::test]
async fn block_volume_is_mounted_on_its_owner_only() {
    // Root, from the effective uid in /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("SKIPPED: the block backend mounts filesystems, which needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("volume.img");
    let uuid = "0b9a1c9e-5a53-4f43-9a56-6d1f0a7e1b21";
    std::fs::File::create(&image).and_then(|f| f.set_len(32 << 20)).expect("image");
    run("mkfs.ext4", &["-q", "-F", "-U", uuid, &image.to_string_lossy()]).expect("mkfs.ext4");
    // Write the volume's identity file into the filesystem without mounting it.
    let id_file = tmp.path().join("id");
    std::fs::write(&id_file, "vol-blk-1\n").expect("id file");
    run("debugfs", &["-w", "-R", &format!("write {} .haven-volume", id_file.display()), &image.to_string_lossy()])
        .expect("debugfs write");
    let device = match run("losetup", &["-f", "--show", &image.to_string_lossy()]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: no loop device available here ({e})");
            return;
        }
    };
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (at_a, at_b) = (state_a.join("volumes/blk"), state_b.join("volumes/blk"));
    let _guard = Loop { device, mounts: vec![at_a.clone(), at_b.clone()] };
    let _ = run("udevadm", &["settle"]);

    let drivers = Drivers::new();
    let disk = drivers.get(ResourceKind::Disk);
    let a1 = ResourceCtx::new("node-a", block_spec(uuid), &state_a).with_generation(1);
    disk.start(&a1).await.expect("node a mounts the volume");
    assert!(mounted_at(&at_a), "mounted at {}", at_a.display());
    assert!(!mounted_at(&at_b), "not mounted on node b");
    assert_eq!(disk.monitor(&a1, Depth::Thorough).await.expect("monitor"), Health::Running);
    let claim = std::fs::read_to_string(at_a.join(".haven-claim")).expect("claim on the volume");
    assert!(claim.contains("node-a") && claim.contains("\"generation\":1"), "{claim}");
    disk.stop(&a1).await.expect("stop");
    assert!(!mounted_at(&at_a), "unmounted on stop");

    // The group moves: node b (generation 2) mounts it; node a's stale claim is refused.
    let b2 = ResourceCtx::new("node-b", block_spec(uuid), &state_b).with_generation(2);
    disk.start(&b2).await.expect("node b mounts the volume");
    assert!(mounted_at(&at_b) && !mounted_at(&at_a));
    disk.stop(&b2).await.expect("stop b");
    let err = disk.start(&a1).await.expect_err("a stale owner must be refused");
    assert!(err.to_string().contains("generation"), "{err}");
    assert!(!mounted_at(&at_a), "a refused owner leaves the volume unmounted");
}
